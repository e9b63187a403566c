"""biovfm built-in plugin: readers."""
