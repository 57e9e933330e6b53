"""Reader for FABM's ``fabm.yaml`` (the format of ``src/fabm_config.F90``) into a :class:`BGCSystem`.

Accepted layout::

    require_initialization: false        # optional: every state variable must appear under initialization
    check_conservation: false            # optional: hosts report conserved quantities
    instances:
      <instance>:
        model: <institute>/<model>       # required; looked up in pelagos.bgc.registry
        long_name: ...                   # optional
        use: true                        # optional; false skips the instance
        parameters: {<name>: value}      # in the yaml units; names matched case-insensitively (as FABM)
        initialization: {<variable>: value}
        coupling: {<dependency>: <instance>/<variable> | <instance>_<variable> | <standard name> | number}

Any other key, an unknown model, parameter, variable or coupling target raises ``ConfigError`` naming it,
listing what is valid and suggesting close matches.

**Instances pelagos cannot run** (e.g. ``pml/carbonate``) raise an error unless dropped: ``drop=("CO2",)``
(instance names, case-insensitive) or ``drop_unsupported=True``. A coupling to a dropped (or ``use: false``)
instance is then resolved as follows:

1. a value given in ``couplings={"ECO/dic_target": 2150.0}`` holds the dependency at that constant;
2. otherwise, an *optional* state dependency is left uncoupled (the model sees it as absent);
3. otherwise, if the dropped instance's ``initialization`` gives the target variable a value, the dependency
   is held at that value — the dropped instance is frozen at its initial state — and a note is recorded
   (``system.notes``, also issued as a warning);
4. otherwise ``ConfigError``.

Sources a model puts on a dependency held constant leave the system (so e.g. ECOSMO's DIC budget is not
tracked when the carbonate model is dropped).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from ..core.errors import ConfigError
from .base import close_matches
from .registry import UnsupportedModelError, canonical_name, get_model_class
from .system import BGCSystem

TOP_KEYS = ("instances", "require_initialization", "check_conservation")
INSTANCE_KEYS = ("model", "long_name", "use", "parameters", "initialization", "coupling")
UNSUPPORTED_INSTANCE_KEYS = ("background", "schedule")


def packaged_yaml(name: str = "fabm-gotm-npzd.yaml") -> Path:
    """Path of a fabm.yaml shipped with pelagos (``src/pelagos/data/fabm/``; FABM's published test cases)."""
    from importlib.resources import files

    p = Path(str(files("pelagos") / "data" / "fabm" / name))
    if not p.exists():
        raise ConfigError(f"no packaged fabm.yaml {name!r}; available: fabm-gotm-npzd.yaml")
    return p


def read_yaml(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The yaml as a dict: ``source`` is a path, yaml text, or a dict already."""
    if isinstance(source, Mapping):
        return dict(source)
    text: str
    where = "<text>"
    if isinstance(source, Path) or (
        isinstance(source, str)
        and "\n" not in source
        and (source.endswith((".yaml", ".yml")) or _is_file(source))
    ):
        p = Path(source)
        if not p.exists():
            raise ConfigError(f"fabm.yaml file {str(p)!r} does not exist")
        text, where = p.read_text(), str(p)
    else:
        text = str(source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping with an 'instances:' section")
    return data


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # e.g. a long one-line yaml text is no file name
        return False


def _number(v: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``1e-15`` as a string; FABM reads it as a number."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _check_keys(what: str, d: Mapping[str, Any], valid: Sequence[str]) -> None:
    for k in d:
        if k not in valid:
            raise ConfigError(
                f"{what}: unknown key {k!r}{close_matches(str(k), list(valid))}; valid: {', '.join(valid)}"
            )


def _as_mapping(what: str, v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{what} must be a mapping; got {type(v).__name__} {v!r}")
    return dict(v)


def load_system(
    source: str | Path | Mapping[str, Any],
    *,
    drop: Sequence[str] = (),
    drop_unsupported: bool = False,
    couplings: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
) -> BGCSystem:
    """Build a :class:`BGCSystem` from a fabm.yaml (path, text or dict).

    Args:
        drop: instance names to leave out (case-insensitive).
        drop_unsupported: leave out every instance whose model pelagos does not have.
        couplings: extra/overriding couplings ``{"instance/dependency": target or constant}``.
        parameters: overriding parameter values ``{instance: {name: value}}`` (yaml units).
        dtype: dtype the parameters are stored in (default: torch's default dtype). Give ``torch.float64``
            for float64 runs: converting afterwards with ``.double()`` keeps float32-rounded values.
    """
    cfg = read_yaml(source)
    _check_keys("fabm.yaml", cfg, TOP_KEYS)
    instances_cfg = _as_mapping("fabm.yaml 'instances'", cfg.get("instances"))
    if not instances_cfg:
        raise ConfigError("fabm.yaml has no instances (expected an 'instances:' mapping)")
    names = list(instances_cfg)
    dropped_names: dict[str, str] = {}
    for d in drop:
        hits = [n for n in names if n == d] or [n for n in names if n.lower() == str(d).lower()]
        if not hits:
            raise ConfigError(
                f"drop: no instance {d!r}{close_matches(str(d), names)}; instances: {', '.join(names)}"
            )
        dropped_names[hits[0]] = "dropped on request"

    overrides = {k: dict(v) for k, v in (parameters or {}).items()}
    for k in overrides:
        if k not in instances_cfg:
            raise ConfigError(f"parameters override for unknown instance {k!r}{close_matches(k, names)}")

    models, inits, couplings_all = {}, {}, {}
    dropped_info: list[tuple[str, str, str]] = []
    for inst, icfg in instances_cfg.items():
        what = f"instance {inst!r}"
        icfg = _as_mapping(what, icfg)
        for k in UNSUPPORTED_INSTANCE_KEYS:
            if k in icfg:
                raise ConfigError(f"{what}: key {k!r} is valid FABM but not supported by pelagos; remove it")
        _check_keys(what, icfg, INSTANCE_KEYS)
        if "model" not in icfg:
            raise ConfigError(f"{what} has no 'model:' key (e.g. model: gotm/npzd)")
        model_name = str(icfg["model"])
        if inst in dropped_names:
            dropped_info.append((inst, model_name, dropped_names[inst]))
            continue
        use = icfg.get("use", True)
        if not isinstance(use, bool):
            raise ConfigError(f"{what}: 'use' must be true or false; got {use!r}")
        if not use:
            dropped_names[inst] = "use: false"
            dropped_info.append((inst, model_name, "use: false"))
            continue
        try:
            cls = get_model_class(model_name)
        except UnsupportedModelError as e:
            if drop_unsupported:
                dropped_names[inst] = str(e)
                dropped_info.append((inst, model_name, str(e)))
                continue
            raise UnsupportedModelError(
                f"{what}: {e}. To run without it, pass drop=({inst!r},) or drop_unsupported=True "
                f"(couplings to it then need a constant, see pelagos.bgc.fabm_yaml)"
            ) from None
        params = {k: _number(v) for k, v in _as_mapping(f"{what} parameters", icfg.get("parameters")).items()}
        params.update(overrides.get(inst, {}))
        try:
            model = cls.from_config(params, dtype=dtype)
        except ConfigError as e:
            raise type(e)(f"{what} (model {canonical_name(model_name)}): {e}") from None
        models[inst] = model
        init = _as_mapping(f"{what} initialization", icfg.get("initialization"))
        for var, value in init.items():
            value = _number(value)
            if var not in model.state_variables:
                valid = list(model.state_variables)
                raise ConfigError(
                    f"{what} initialization: model {canonical_name(model_name)} has no state variable "
                    f"{var!r}{close_matches(str(var), valid)}; valid: {', '.join(valid)}"
                )
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{what} initialization: {var} must be a number; got {value!r}")
            inits[f"{inst}/{var}"] = float(value)
        for dep, target in _as_mapping(f"{what} coupling", icfg.get("coupling")).items():
            couplings_all[f"{inst}/{dep}"] = (
                _number(target) if not isinstance(target, str) or "/" not in target else target
            )

    if not models:
        raise ConfigError("fabm.yaml: every instance was dropped or disabled; nothing to run")

    # Couplings that point at dropped instances (see module docstring for the rules).
    user = dict(couplings or {})
    notes: list[str] = []
    resolved: dict[str, Any] = {}
    for key, target in couplings_all.items():
        inst, _, dep = key.partition("/")
        if key in user:
            continue
        tgt_inst, tgt_var = _split_target(target, instances_cfg)
        if tgt_inst is None or tgt_inst not in dropped_names:
            resolved[key] = target
            continue
        m = models[inst]
        sd = m.state_dependencies.get(dep)
        if sd is not None and not sd.required:
            notes.append(f"{key}: optional coupling to dropped instance {tgt_inst!r} left uncoupled")
            continue
        init = _as_mapping("", _as_mapping("", instances_cfg[tgt_inst]).get("initialization"))
        if tgt_var in init and isinstance(_number(init[tgt_var]), float | int):
            resolved[key] = float(_number(init[tgt_var]))
            notes.append(
                f"{key}: coupled to {target!r} of dropped instance {tgt_inst!r}; held constant at its "
                f"initial value {resolved[key]:g} (sources on it are discarded)"
            )
            continue
        raise ConfigError(
            f"{key} is coupled to {target!r} of dropped instance {tgt_inst!r} ({dropped_names[tgt_inst]}); "
            f"give it a constant with couplings={{{key!r}: <value>}}"
        )
    resolved.update(user)

    system = BGCSystem(
        models,
        resolved,
        initialization=inits,
        require_initialization=bool(cfg.get("require_initialization", False)),
        check_conservation=bool(cfg.get("check_conservation", False)),
    )
    system.dropped = dropped_info
    system.notes = notes
    for n in notes:
        if "held constant" in n:
            warnings.warn(n, stacklevel=2)
    return system


def _split_target(target: Any, instances_cfg: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(instance, variable) of a target given as ``inst/var`` or ``inst_var``; (None, None) otherwise."""
    if not isinstance(target, str):
        return None, None
    if "/" in target:
        a, _, b = target.partition("/")
        return a, b
    # Global name inst_var: the longest instance name that prefixes it.
    for inst in sorted(instances_cfg, key=len, reverse=True):
        if target.startswith(f"{inst}_"):
            return inst, target[len(inst) + 1 :]
    return None, None
