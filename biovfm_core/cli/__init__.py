"""The ``biovfm`` command line (click). Heavy imports live inside the commands."""
