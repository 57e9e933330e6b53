"""pelagos.column — GOTM-style water column: grid, diffusion, advection, light (numerics) and driver."""

from ..core.running_mean import running_mean_init, running_mean_update
from .advection import LIMITERS, advect_center, courant_substeps, face_reconstruct, face_velocities
from .diffusion import diffuse_center, diffusion_matrix
from .forcing import ColumnForcing, compact_forcing_path
from .grid import ColumnGrid, centre_depth, gotm_sigma_fractions
from .light import JERLOV, gotm_light, jerlov
from .model import ColumnModel, run_column

__all__ = [
    "JERLOV",
    "LIMITERS",
    "ColumnForcing",
    "ColumnGrid",
    "ColumnModel",
    "advect_center",
    "centre_depth",
    "compact_forcing_path",
    "courant_substeps",
    "diffuse_center",
    "diffusion_matrix",
    "face_reconstruct",
    "face_velocities",
    "gotm_light",
    "gotm_sigma_fractions",
    "jerlov",
    "run_column",
    "running_mean_init",
    "running_mean_update",
]
