"""QG commands on the one configuration (:mod:`pelagos.io.config`): ``pelagos qg run|train-closure|evaluate``.

A QG configuration is an ordinary configuration with ``model: {kind: qg | qg_layered | qg_bt, ...}``; the
hybrid-closure commands read one more section, ``hybrid:`` (the fields of
:class:`~pelagos.qg.hybrid.HybridConfig`, plus ``gpu_defaults: true`` to start from :meth:`HybridConfig.gpu`),
validated by the same strict loader::

    model:   {kind: qg, L: 500000.0, rek: 5.787e-7, closure: {type: Smagorinsky}}
    time:    {duration: 2 years, dt: 7200}
    initial: {batch: 1, seed: 0}
    hybrid:  {nx_hr: 128, nx_lr: 32, ...}                  # train-closure / evaluate
    output:  {file: results/qg_hybrid.nc, interval: 30 days}  # other files go next to it

:func:`load` returns the dict the functions below read. ``pelagos qg run`` is ``pelagos run``
(:func:`pelagos.io.build.run`, the one run loop).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import torch

from ..core.errors import ConfigError

QG_KINDS = ("qg", "qg_layered", "qg_bt")


def hybrid_section(raw: Any, where: str = "hybrid"):
    """The ``hybrid:`` section as a :class:`HybridConfig` (strict: unknown keys, types), or None if absent."""
    from ..io.config import from_mapping
    from .hybrid import HybridConfig

    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping of HybridConfig fields; got {raw!r}")
    raw = dict(raw)
    gpu = raw.pop("gpu_defaults", False)
    if not isinstance(gpu, bool):
        raise ConfigError(f"{where}.gpu_defaults must be true or false; got {gpu!r}")
    from_mapping(HybridConfig, raw, where)  # checks keys and types
    base = HybridConfig.gpu() if gpu else HybridConfig()
    return dataclasses.replace(base, **raw)


def load(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    overrides: list[str] | None = None,
    output: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Read a QG configuration with the one loader; returns the dict :func:`run`, :func:`train_closure` and
    :func:`evaluate_closures` read (``model`` options with ``type``, ``closure``, ``run``, ``hybrid``,
    ``output: {dir, name}``)."""
    from ..io.build import build_model as build
    from ..io.build import default_output, window
    from ..io.config import load_config, to_mapping

    cfg = load_config(source, overrides=overrides, extra_sections={"hybrid": hybrid_section})
    if cfg.kind.name not in QG_KINDS:
        raise ConfigError(f"`pelagos qg` runs the QG kinds ({', '.join(QG_KINDS)}); got {cfg.kind.name!r}")
    opts = to_mapping(cfg.model)
    out = pathlib.Path(output) if output is not None else default_output(cfg)
    h = cfg.extra.get("hybrid")
    run_sec = {"years": 1.0, "batch": cfg.batch or 1, "seed": getattr(cfg.initial, "seed", 0),
               "save_every_days": 30.0, "threads": torch.get_num_threads(), "check_every": 500}  # fmt: skip
    if cfg.time.duration is not None or cfg.time.stop is not None:
        m = build(cfg)
        t0, t1, _ = window(cfg, m)
        run_sec["years"] = (t1 - t0) / (360 * 86400.0)
        run_sec["save_every_days"] = (cfg.output.interval or m.dt) / 86400.0
    if h is not None:  # the model options of the configuration refine the hybrid's model
        given = cfg.raw.get("model") or {}
        extra = {k: v for k, v in opts.items() if k in given and k not in ("nx", "dt", "closure")}
        h = dataclasses.replace(h, model={**h.model, **extra})
    return {
        "run": run_sec,
        "hybrid": h,
        "output": {"dir": str(out.parent), "name": out.stem},
        "_base": pathlib.Path.cwd(),
    }


def output_dir(cfg: Mapping[str, Any]) -> pathlib.Path:
    d = pathlib.Path(cfg["output"]["dir"])
    d = d if d.is_absolute() else pathlib.Path(cfg.get("_base") or ".") / d
    d.mkdir(parents=True, exist_ok=True)
    return d


def hybrid_config(cfg: Mapping[str, Any]):
    """The :class:`HybridConfig` of a loaded configuration (its ``hybrid:`` section; defaults if absent)."""
    from .hybrid import HybridConfig

    h = cfg.get("hybrid")
    return h if h is not None else HybridConfig()


def train_closure(cfg: Mapping[str, Any], log=print) -> list[pathlib.Path]:
    """Data + offline + online training; writes weights (.pt), curves and the evaluation table (JSON/md) and
    returns their paths."""
    from .hybrid import baseline_closures, evaluate, make_data, summary_table, train_offline, train_online

    torch.set_num_threads(int(cfg["run"]["threads"]))
    h = hybrid_config(cfg)
    data = make_data(h, log)
    import copy

    offline, c_off = train_offline(h, data, log=log)
    online, c_on = train_online(h, data, copy.deepcopy(offline), log=log)
    d = output_dir(cfg)
    name = cfg["output"]["name"]
    torch.save({"offline": offline.state_dict(), "online": online.state_dict()}, d / f"{name}_closures.pt")
    res = evaluate(h, data, {**baseline_closures(), "offline CNN": offline, "online CNN": online}, log=log)
    table = summary_table(res)
    (d / f"{name}_evaluation.md").write_text(table + "\n")
    (d / f"{name}_training.json").write_text(
        json.dumps({"curves": {"offline": c_off, "online": c_on}, "results": res}, default=str, indent=1)
    )
    log(table)
    return [d / f"{name}_closures.pt", d / f"{name}_evaluation.md", d / f"{name}_training.json"]


def evaluate_closures(cfg: Mapping[str, Any], log=print) -> pathlib.Path:
    """Re-create the (seeded) data, load the trained closures and write the evaluation table."""
    from .hybrid import baseline_closures, evaluate, make_closure, make_data, summary_table

    torch.set_num_threads(int(cfg["run"]["threads"]))
    h = hybrid_config(cfg)
    d = output_dir(cfg)
    name = cfg["output"]["name"]
    weights = d / f"{name}_closures.pt"
    if not weights.exists():
        raise ConfigError(
            f"no trained closures at {weights}; run `pelagos qg train-closure` with this config first"
        )
    data = make_data(h, log)
    saved = torch.load(weights, weights_only=True)
    closures = dict(baseline_closures())
    for k in ("offline", "online"):
        c = make_closure(h, data)
        c.load_state_dict(saved[k])
        closures[f"{k} CNN"] = c
    res = evaluate(h, data, closures, log=log)
    table = summary_table(res)
    out = d / f"{name}_evaluation.md"
    out.write_text(table + "\n")
    log(table)
    return out
