"""biovfm built-in plugin: augment."""
