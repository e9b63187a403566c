"""biovfm built-in plugin: supervised."""
