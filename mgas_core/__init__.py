"""The science: search space, supernets, the four search methods, retraining, metrics, data."""

__version__ = "0.1.0"
