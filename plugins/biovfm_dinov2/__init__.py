"""biovfm built-in plugin: dinov2."""
