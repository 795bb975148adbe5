"""wsss_core: the shared library of the wsss-sweep system (data, models, training, evaluation)."""

__version__ = "0.1.0"
