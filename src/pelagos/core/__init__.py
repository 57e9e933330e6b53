"""pelagos.core — differentiable numerics shared by every model (imports no model)."""

from .errors import (
    ConfigError,
    ForcingError,
    Interrupted,
    ObservationError,
    PelagosError,
    ShapeError,
    SolverError,
    StabilityError,
)
from .gradcheck import GradCheckReport, check_directional, check_jvp_vjp, rollout_gradient_report
from .linsolve import CGInfo, solve_cg
from .model import Model, State
from .params import ParameterSpec, Prior
from .rollout import Trajectory, rollout
from .safe import (
    clamp_st,
    positive_part,
    safe_div,
    safe_pow,
    safe_sqrt,
    smooth_max,
    smooth_min,
    smooth_step,
    softclamp,
)
from .simulation import MemoryWriter, RestartPolicy, Simulation, SimulationResult
from .tridiagonal import solve_tridiagonal

__all__ = [
    "CGInfo",
    "ConfigError",
    "ForcingError",
    "GradCheckReport",
    "Interrupted",
    "MemoryWriter",
    "Model",
    "ObservationError",
    "ParameterSpec",
    "PelagosError",
    "Prior",
    "RestartPolicy",
    "ShapeError",
    "Simulation",
    "SimulationResult",
    "SolverError",
    "StabilityError",
    "State",
    "Trajectory",
    "check_directional",
    "check_jvp_vjp",
    "clamp_st",
    "positive_part",
    "rollout",
    "rollout_gradient_report",
    "safe_div",
    "safe_pow",
    "safe_sqrt",
    "smooth_max",
    "smooth_min",
    "smooth_step",
    "softclamp",
    "solve_cg",
    "solve_tridiagonal",
]
