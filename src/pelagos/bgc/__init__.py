"""pelagos.bgc — FABM-style biogeochemical models: base class, registry, fabm.yaml reader, NPZD, ECOSMO.

Models are imported lazily by the registry; ``BGCSystem.from_yaml(path)`` builds a coupled system.
"""

from .base import BGCModel, Dependency, DiagnosticVariable, StateDependency, StateVariable, mean_key
from .box import BoxDriver, BoxModel, run_box
from .fabm_yaml import load_system, packaged_yaml
from .gotm_light import GotmLight
from .integrate import METHODS, ODE_METHODS, integrate_sources
from .npzd import NPZD
from .registry import available_models, get_model_class, register_model
from .system import BGCSystem, DiagnosticInfo, VariableInfo

__all__ = [
    "METHODS",
    "NPZD",
    "ODE_METHODS",
    "BGCModel",
    "BGCSystem",
    "BoxDriver",
    "BoxModel",
    "Dependency",
    "DiagnosticInfo",
    "DiagnosticVariable",
    "GotmLight",
    "StateDependency",
    "StateVariable",
    "VariableInfo",
    "available_models",
    "get_model_class",
    "integrate_sources",
    "load_system",
    "mean_key",
    "packaged_yaml",
    "register_model",
    "run_box",
]
