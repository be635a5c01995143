"""HD-VILA models, training recipes and the `hdvila` command line."""
__version__ = "0.1.0"
