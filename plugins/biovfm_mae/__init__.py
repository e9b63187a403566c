"""biovfm built-in plugin: mae."""
