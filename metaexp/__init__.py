"""metaexp: config-driven meta-learning experiments."""
__version__ = "0.1.0"
