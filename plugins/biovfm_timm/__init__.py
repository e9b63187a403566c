"""biovfm built-in plugin: timm."""
