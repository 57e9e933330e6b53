"""Registry of BGC models by FABM name (``"gotm/npzd"``), imported on demand.

Entries map a FABM model name to ``"module:Class"`` so that a model module is imported only when a
configuration uses it (ECOSMO, for instance, lives in its own module). Users add their own models with
:func:`register_model`. FABM models pelagos knows of but does not implement get a specific error that says how
to drop them (see :func:`pelagos.bgc.fabm_yaml.load_system`).
"""

from __future__ import annotations

import importlib

from ..core.errors import ConfigError
from .base import BGCModel, close_matches

_REGISTRY: dict[str, str | type[BGCModel]] = {
    "gotm/npzd": "pelagos.bgc.npzd:NPZD",
    "gotm/light": "pelagos.bgc.gotm_light:GotmLight",
    "examples/npzd_nut": "pelagos.bgc.examples_npzd:NpzdNut",
    "examples/npzd_phy": "pelagos.bgc.examples_npzd:NpzdPhy",
    "examples/npzd_zoo": "pelagos.bgc.examples_npzd:NpzdZoo",
    "examples/npzd_det": "pelagos.bgc.examples_npzd:NpzdDet",
    "nersc/ecosmo_operational": "pelagos.bgc.ecosmo:ECOSMO",
}

# Older flat names still found in published fabm.yaml files (e.g. the ECOSMO test case).
ALIASES = {"nersc_ecosmo_operational": "nersc/ecosmo_operational"}

# FABM models that exist upstream but not in pelagos: a clearer message than "unknown model".
KNOWN_UNSUPPORTED = {
    "pml/carbonate": "carbonate chemistry (DIC, alkalinity, pCO2)",
    "gotm/ergom": "ERGOM Baltic model",
    "gotm/fasham": "Fasham et al. (1990) model",
    "ersem": "ERSEM",
    "iow/ergom": "ERGOM",
}


class UnsupportedModelError(ConfigError):
    """A fabm.yaml names a FABM model that pelagos does not implement (or that failed to import)."""


def register_model(name: str, target: str | type[BGCModel], *, overwrite: bool = False) -> None:
    """Make ``name`` (e.g. ``"myinst/mymodel"``) available to fabm.yaml.

    ``target`` is a BGCModel subclass or ``"module:Class"`` (imported on first use).
    """
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"model {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = target
    if isinstance(target, type) and not target.fabm_name:
        target.fabm_name = name


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def get_model_class(name: str) -> type[BGCModel]:
    """The class registered under FABM model ``name`` (aliases accepted); ``ConfigError`` if unknown."""
    key = canonical_name(str(name))
    if key not in _REGISTRY:
        if key in KNOWN_UNSUPPORTED:
            raise UnsupportedModelError(
                f"FABM model {name!r} ({KNOWN_UNSUPPORTED[key]}) is not implemented in pelagos"
            )
        raise UnsupportedModelError(
            f"unknown model {name!r}{close_matches(key, list(_REGISTRY))}; "
            f"available: {', '.join(available_models())}"
        )
    target = _REGISTRY[key]
    if isinstance(target, str):
        module, _, cls_name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError) as e:
            raise UnsupportedModelError(
                f"model {name!r} is registered as {target} but could not be loaded: {e}"
            ) from e
        _REGISTRY[key] = cls
        target = cls
    return target
