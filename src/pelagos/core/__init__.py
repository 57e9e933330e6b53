"""pelagos.core — differentiable numerics shared by every model (imports no model)."""

from .errors import (
    ConfigError,
    ForcingError,
    ObservationError,
    PelagosError,
    ShapeError,
    SolverError,
    StabilityError,
)
from .model import Model, State
from .params import ParameterSpec, Prior
from .rollout import Trajectory, rollout
from .tridiagonal import solve_tridiagonal

__all__ = [
    "ConfigError",
    "ForcingError",
    "Model",
    "ObservationError",
    "ParameterSpec",
    "PelagosError",
    "Prior",
    "ShapeError",
    "SolverError",
    "StabilityError",
    "State",
    "Trajectory",
    "rollout",
    "solve_tridiagonal",
]
