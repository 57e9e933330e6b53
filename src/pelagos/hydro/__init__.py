"""Differentiable hydrology: HBV 1.0 (batched, nmul components, static or dynamic parameters), gamma
unit-hydrograph routing, Hargreaves PET, CAMELS-US and CSV loaders, and the registered model kind ``hbv``.

See docs/hydro.md. Submodules are imported lazily by users (``from pelagos.hydro.hbv import run_hbv``).
"""

from .hbv import (
    DEFAULTS,
    HBV_PARAMETER_NAMES,
    PARAMETER_NAMES,
    PARAMETERS,
    HBVOutput,
    ParamSpec,
    initial_state,
    run_hbv,
    scale_parameters,
    unscale_parameters,
)
from .pet import hargreaves
from .unit_hydrograph import gamma_weights, route

__all__ = [
    "DEFAULTS",
    "HBV_PARAMETER_NAMES",
    "PARAMETERS",
    "PARAMETER_NAMES",
    "HBVOutput",
    "ParamSpec",
    "gamma_weights",
    "hargreaves",
    "initial_state",
    "route",
    "run_hbv",
    "scale_parameters",
    "unscale_parameters",
]
