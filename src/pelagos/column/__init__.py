"""pelagos.column — GOTM-style water column: grid, diffusion, advection, light (numerics) and driver."""

from .advection import LIMITERS, advect_center, courant_substeps, face_reconstruct, face_velocities
from .diffusion import diffuse_center, diffusion_matrix
from .grid import ColumnGrid, centre_depth, gotm_sigma_fractions

__all__ = [
    "LIMITERS",
    "ColumnGrid",
    "advect_center",
    "centre_depth",
    "courant_substeps",
    "diffuse_center",
    "diffusion_matrix",
    "face_reconstruct",
    "face_velocities",
    "gotm_sigma_fractions",
]
