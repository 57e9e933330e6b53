"""Building inverse problems from YAML-style dicts (the ``pelagos calibrate`` / ``assimilate`` CLI).

Generic over models: ``model.factory`` is an importable ``"module:callable"`` returning a pelagos Model. The
observations are read by :func:`pelagos.core.obsio.read_observations` (operators from
``model.observation_operator(variable, at)``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ..core.errors import ConfigError
from ..core.observations import ObservationSet
from ..core.obsio import read_observations, synthetic_observations
from ..core.operators import IndexOperator

KNOWN = {
    "model",
    "initial_state",
    "observations",
    "free",
    "priors",
    "set",
    "optimizer",
    "uncertainty",
    "output",
    "method",
    "background",
    "ensemble",
    "dtype",
    "window",
}


def load_config(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"configuration file {path} does not exist")
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping")
    unknown = set(cfg) - KNOWN
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; valid: {sorted(KNOWN)}")
    cfg["_dir"] = str(path.parent)
    return cfg


def build_model(cfg: dict):
    m = cfg.get("model")
    if not isinstance(m, dict) or "factory" not in m:
        raise ConfigError(
            "model: give a mapping with factory: 'module:callable' (e.g. pelagos.models:Lorenz63)"
        )
    mod, _, fn = str(m["factory"]).partition(":")
    try:
        factory = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"model.factory {m['factory']!r} cannot be imported: {err}") from err
    model = factory(**(m.get("args") or {}))
    for name, v in (cfg.get("set") or {}).items():
        model.set_parameter_value(name, float(v))
    return model


def build_state(cfg: dict, model) -> torch.Tensor:
    dtype = getattr(torch, cfg.get("dtype", "float64"))
    init = cfg.get("initial_state", {}) or {}
    if isinstance(init, list):
        return torch.tensor(init, dtype=dtype)
    if not isinstance(init, dict):
        raise ConfigError("initial_state: a list of values or a mapping of initial_state() keyword arguments")
    state = model.initial_state(**init)
    return state.to(dtype) if torch.is_tensor(state) else state


def build_observations(cfg: dict, model, state) -> tuple[ObservationSet, dict | None]:
    o = cfg.get("observations")
    if not isinstance(o, dict):
        raise ConfigError("observations: give file: PATH (+ start) or synthetic: {...}")
    log = bool(o.get("log", False))
    if "file" in o:
        path = Path(cfg.get("_dir", ".")) / o["file"]
        if "start" not in o:
            raise ConfigError("observations.start (ISO date-time of model time 0) is required for a file")
        if (
            getattr(model, "epoch", None) is None
        ):  # adapter: `start` gives the model an epoch (date of time 0)
            from datetime import datetime

            model.epoch = datetime.fromisoformat(str(o["start"]))
        obs = read_observations(path, model, stop=o.get("end"), log=log)
        return obs, None
    if "synthetic" in o:
        s = o["synthetic"]
        dt = model.dt
        every = int(s.get("every", 1))
        times = torch.arange(1, int(s["n"]) + 1, dtype=torch.float64) * every * dt
        truth = {n: float(model.get_parameter_value(n).detach()) for n in model.parameter_names()}
        obs = synthetic_observations(
            model,
            state,
            times,
            sigma=float(s.get("sigma", 1.0)),
            noise=s.get("noise", "gaussian"),
            generator=torch.Generator().manual_seed(int(s.get("seed", 0))),
        )
        if "index" in s:  # observe only these entries of the tensor state
            idx = torch.as_tensor(s["index"], dtype=torch.long)
            obs = ObservationSet(
                obs.times, obs.values[..., idx], obs.sigma[..., idx], operator=IndexOperator(idx), log=obs.log
            )
        return obs, truth
    raise ConfigError("observations: give file: PATH (+ start) or synthetic: {n, every, sigma, ...}")
