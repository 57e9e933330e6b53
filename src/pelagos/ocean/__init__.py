"""Hydrostatic primitive-equation ocean model (z-levels, spherical C-grid, rigid lid) and its setups."""

from .grid import Grid, acc_grid
from .model import OceanModel
from .setups import acc_model

__all__ = ["Grid", "OceanModel", "acc_grid", "acc_model"]
