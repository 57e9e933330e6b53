"""Small reference models (Lorenz-63, Lorenz-96) for tests, tutorials and data-assimilation benchmarks."""

from .lorenz import Lorenz63, Lorenz96

__all__ = ["Lorenz63", "Lorenz96"]
