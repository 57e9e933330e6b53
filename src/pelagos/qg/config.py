"""YAML configurations of QG runs (``pelagos qg run|train-closure|evaluate CONFIG.yaml``).

Sections (all optional except where said)::

    model:   {type: QGModel | LayeredModel | BTModel, nx: 64, dt: 7200, <pyqg parameter names>...}
    closure: {type: Smagorinsky | BackscatterBiharmonic | ZannaBolton2020, <its arguments>}   # run only
    run:     {years: 1, batch: 1, seed: 0, save_every_days: 30, threads: 1}
    hybrid:  {<HybridConfig fields>, gpu_defaults: false}                               # train/evaluate
    output:  {dir: qg_out, name: qg}                   # relative to the YAML file
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import torch
import yaml

from ..core.errors import ConfigError
from . import parameterizations as P
from .models import BTModel, LayeredModel, QGModel

MODELS = {"QGModel": QGModel, "LayeredModel": LayeredModel, "BTModel": BTModel}
CLOSURES = {
    "Smagorinsky": P.Smagorinsky,
    "BackscatterBiharmonic": P.BackscatterBiharmonic,
    "ZannaBolton2020": P.ZannaBolton2020,
}
SECTIONS = ("model", "closure", "run", "hybrid", "output", "title")
RUN_DEFAULTS = {
    "years": 1.0,
    "batch": 1,
    "seed": 0,
    "save_every_days": 30.0,
    "threads": 1,
    "check_every": 500,
}


def load(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read and check a QG configuration; adds ``_base`` (the YAML file's folder)."""
    if isinstance(source, Mapping):
        cfg, base = dict(source), pathlib.Path.cwd()
    else:
        path = pathlib.Path(source)
        if not path.exists():
            raise ConfigError(f"QG configuration {str(path)!r} does not exist")
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        base = path.resolve().parent
    if not isinstance(cfg, Mapping):
        raise ConfigError("a QG configuration must be a YAML mapping")
    unknown = set(cfg) - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"unknown QG configuration sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}"
        )
    run = {**RUN_DEFAULTS, **(cfg.get("run") or {})}
    bad = set(run) - set(RUN_DEFAULTS)
    if bad:
        raise ConfigError(f"unknown keys in run: {sorted(bad)}; valid: {sorted(RUN_DEFAULTS)}")
    out = {"dir": "qg_out", "name": "qg", **(cfg.get("output") or {})}
    return {**cfg, "run": run, "output": out, "_base": base}


def build_model(cfg: Mapping[str, Any]):
    spec = dict(cfg.get("model") or {})
    kind = spec.pop("type", "QGModel")
    if kind not in MODELS:
        raise ConfigError(f"unknown model type {kind!r}; valid: {', '.join(MODELS)}")
    if "dtype" in spec:
        spec["dtype"] = getattr(torch, str(spec["dtype"]))
    closure = cfg.get("closure")
    if closure:
        c = dict(closure)
        ctype = c.pop("type", None)
        if ctype not in CLOSURES:
            raise ConfigError(f"unknown closure type {ctype!r}; valid: {', '.join(CLOSURES)}")
        spec["parameterization"] = CLOSURES[ctype](**c)
    try:
        return MODELS[kind](**spec)
    except TypeError as err:
        raise ConfigError(f"model section: {err}") from err


def output_dir(cfg: Mapping[str, Any]) -> pathlib.Path:
    d = pathlib.Path(cfg["output"]["dir"])
    d = d if d.is_absolute() else cfg["_base"] / d
    d.mkdir(parents=True, exist_ok=True)
    return d


def run(cfg: Mapping[str, Any], log=print) -> pathlib.Path:
    """Run the model through :class:`~pelagos.core.simulation.Simulation` (the one run loop; CFL checked at
    every save) and write NetCDF (snapshots in pyqg's layout + time-mean diagnostics of the second half) and
    a plot. On Ctrl-C the snapshots so far are written before :class:`~pelagos.core.errors.Interrupted`."""
    import xarray as xr

    from ..core.errors import Interrupted
    from ..core.simulation import CFLCheck, Simulation
    from .dataset import to_dataset
    from .diagnostics import diagnostics

    r = cfg["run"]
    torch.set_num_threads(int(r["threads"]))
    m = build_model(cfg)
    st = m.initial_state(batch=int(r["batch"]), seed=int(r["seed"]))
    n = round(float(r["years"]) * 360 * 86400 / m.dt)
    every = max(1, round(float(r["save_every_days"]) * 86400 / m.dt))
    snaps, times = [], []
    acc: dict[str, Any] = {"sum": None, "count": 0}

    def snapshot(sim, state, t, step):
        snaps.append(to_dataset(m, state, time=t))
        times.append(t)
        if step >= n // 2:
            d = diagnostics(m, state)
            acc["sum"] = d if acc["sum"] is None else {x: acc["sum"][x] + d[x] for x in d}
            acc["count"] += 1

    out = output_dir(cfg) / f"{cfg['output']['name']}.nc"

    def write(state) -> None:
        ds = xr.concat(snaps, dim="time").assign_coords(time=("time", times, {"units": "s"}))
        if acc["sum"]:
            mean = to_dataset(m, state, diagnostics=True)
            for name in acc["sum"]:
                ds[name + "_mean"] = (mean[name].dims, (acc["sum"][name] / acc["count"]).numpy())
        ds.to_netcdf(out)
        log(f"wrote {out}")
        plot_run(m, ds, out.with_suffix(".png"))
        log(f"wrote {out.with_suffix('.png')}")

    sim = Simulation(
        m,
        st,
        n_steps=n,
        output_every=every,
        callbacks=[CFLCheck(), snapshot],
        label=f"QG {m.nx}²",
        progress=None,  # a bar on a terminal
    )
    t0 = time.time()
    try:
        result = sim.run()
    except Interrupted:
        if snaps:
            write(sim.state)
        raise
    log(f"{n} steps of {m.nx}² x {int(r['batch'])} in {time.time() - t0:.1f} s")
    write(result.state)
    return out


def plot_run(model, ds, path: pathlib.Path) -> None:
    """PV snapshots and the KE spectrum of a run, with units (:func:`pelagos.qg.plots.plot_run`)."""
    import matplotlib.pyplot as plt

    from .plots import plot_run as _plot_run

    plt.close(_plot_run(model, ds, path))


def hybrid_config(cfg: Mapping[str, Any]):
    from .hybrid import HybridConfig

    h = dict(cfg.get("hybrid") or {})
    base = HybridConfig.gpu() if h.pop("gpu_defaults", False) else HybridConfig()
    merged = {**base.__dict__, **h}
    if cfg.get("model"):
        merged["model"] = {
            **merged["model"],
            **{k: v for k, v in cfg["model"].items() if k not in ("type", "nx", "dt")},
        }
    return HybridConfig.from_dict(merged)


def train_closure(cfg: Mapping[str, Any], log=print) -> pathlib.Path:
    """Data + offline + online training; writes weights (.pt), curves and the evaluation table (JSON/md)."""
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
    return d / f"{name}_closures.pt"


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
