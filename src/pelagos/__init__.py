"""pelagos — differentiable ocean and geoscience models in PyTorch."""

__version__ = "0.1.0.dev0"
