"""pelagos.column — GOTM-style water column: grid, diffusion, advection, light (numerics) and driver."""

from .advection import LIMITERS, advect_center, courant_substeps, face_reconstruct, face_velocities
from .diffusion import diffuse_center, diffusion_matrix
from .grid import ColumnGrid, centre_depth, gotm_sigma_fractions
from .light import JERLOV, gotm_light, jerlov

__all__ = [
    "JERLOV",
    "LIMITERS",
    "ColumnGrid",
    "advect_center",
    "centre_depth",
    "courant_substeps",
    "diffuse_center",
    "diffusion_matrix",
    "face_reconstruct",
    "face_velocities",
    "gotm_light",
    "gotm_sigma_fractions",
    "jerlov",
]
