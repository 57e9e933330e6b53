"""pelagos.column — GOTM-style water column: grid, diffusion, advection, light (numerics) and driver."""

from .diffusion import diffuse_center, diffusion_matrix
from .grid import ColumnGrid, centre_depth, gotm_sigma_fractions

__all__ = [
    "ColumnGrid",
    "centre_depth",
    "diffuse_center",
    "diffusion_matrix",
    "gotm_sigma_fractions",
]
