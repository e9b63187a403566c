"""An example biovfm plugin: registers the ``barlow_twins`` objective."""
