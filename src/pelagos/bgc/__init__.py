"""pelagos.bgc — FABM-style biogeochemical models: base class, registry, fabm.yaml reader, NPZD, ECOSMO."""

from .base import BGCModel, Dependency, DiagnosticVariable, StateDependency, StateVariable, mean_key

__all__ = ["BGCModel", "Dependency", "DiagnosticVariable", "StateDependency", "StateVariable", "mean_key"]
