"""Run a water-column configuration to a NetCDF file, incrementally, with restart files.

``run_config(cfg)`` is what ``pelagos run CONFIG.yaml`` calls for a water-column configuration. It builds the
model and hands it to the one run loop, :class:`pelagos.core.simulation.Simulation`, with a
:class:`~pelagos.io.netcdf_writer.ModelNetCDFWriter`: records are flushed as they are written, a restart file
(written atomically every ``restart.every`` seconds of model time, at output times, at the end and on Ctrl-C)
lets an interrupted run continue bit for bit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError
from .config import load_config, resolve_path


def build_model(cfg: Mapping[str, Any]):
    """The ``ColumnModel`` a (validated) configuration describes."""
    from ..bgc.system import BGCSystem
    from ..column.forcing import ColumnForcing
    from ..column.model import ColumnModel

    base = Path(cfg["_base"]) if cfg.get("_base") else None
    dtype = getattr(torch, cfg["numerics"]["dtype"])
    fpath = resolve_path(cfg["forcing"]["file"], base)
    forcing = ColumnForcing.from_gotm(fpath, bottom_stress=cfg["forcing"]["bottom_stress"], dtype=dtype)
    b = cfg["bgc"]
    source: Any = resolve_path(b["fabm_yaml"], base) if b["fabm_yaml"] else {"instances": b["instances"]}
    # Parameters are stored in the run's dtype from the start: a float32 value cast to float64 later keeps its
    # float32 rounding (0.0225 -> 0.02250000089...).
    bgc = BGCSystem.from_yaml(
        source, drop=tuple(b["drop"] or ()), drop_unsupported=bool(b["drop_unsupported"]), dtype=dtype
    )
    num = {k: v for k, v in cfg["numerics"].items() if k not in ("dtype", "columns")}
    if isinstance(num.get("light"), list):
        num["light"] = tuple(num["light"])
    model = ColumnModel(bgc, forcing, dt=float(cfg["time"]["dt"]), **num)
    model.to(dtype)
    for name, value in cfg["parameters"].items():
        model.set_parameter_value(name, value)
    return model


def run_config(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    resume: bool = True,
    progress: bool | None = None,
    stop_after: float | None = None,
    log: Any = None,
) -> Path:
    """Run the configuration through :class:`~pelagos.core.simulation.Simulation`; returns the output path.

    ``resume``: continue from the restart file when it exists and matches the configuration (else a
    ``ConfigError`` naming ``--fresh``). ``progress``: ``None`` follows ``output.progress`` (a bar on a
    terminal). ``stop_after``: stop cleanly (restart written) once model time reaches this many seconds after
    start (for tests).
    """
    from ..column.model import column_output_spec
    from ..core.simulation import RestartPolicy, Simulation
    from .netcdf_writer import ModelNetCDFWriter

    cfg = load_config(source)
    if not cfg["output"]["file"]:
        raise ConfigError("output.file is required for `pelagos run`")
    base = Path(cfg["_base"]) if cfg.get("_base") else Path.cwd()
    out_path = resolve_path(cfg["output"]["file"], base)
    model = build_model(cfg)
    f = model.forcing
    if getattr(model, "epoch", None) is None and f.epoch is not None:
        with contextlib.suppress(AttributeError):
            model.epoch = f.epoch
    t0 = f.seconds(cfg["time"]["start"]) if cfg["time"]["start"] is not None else f.t_start
    t1 = f.seconds(cfg["time"]["stop"]) if cfg["time"]["stop"] is not None else f.t_stop
    dt = model.dt
    every = float(cfg["output"]["interval"] or dt)
    n_per = round(every / dt)
    if n_per < 1 or abs(n_per * dt - every) > 1e-6 * dt:
        raise ConfigError(f"output.interval ({every:g} s) must be a positive multiple of time.dt ({dt:g} s)")
    if t1 <= t0:
        raise ConfigError(
            f"time.stop ({cfg['time']['stop'] or t1}) must be after time.start ({cfg['time']['start'] or t0})"
        )
    n_steps = round((t1 - t0) / dt)
    if abs(n_steps * dt - (t1 - t0)) > 1e-6 * dt:
        raise ConfigError(
            f"time.stop - time.start ({t1 - t0:g} s) must be a positive multiple of dt ({dt:g} s)"
        )
    f.check_covers(t0, t1)
    policy = None
    if cfg["restart"]["file"]:
        rs_every = cfg["restart"]["every"]
        every_steps = max(1, round(float(rs_every) / dt)) if rs_every else None
        policy = RestartPolicy(resolve_path(cfg["restart"]["file"], base), every_steps=every_steps)
    fingerprint = {k: v for k, v in cfg.items() if k not in ("output", "restart", "_base")}
    state = model.initial_state(cfg["numerics"]["columns"], profiles=cfg["initial"] or None, t0=t0)
    variables, coords = column_output_spec(model, t0)
    writer = ModelNetCDFWriter(
        out_path,
        model,
        precision=cfg["output"]["precision"],
        title=cfg["title"] or "pelagos water column",
        variables=variables,
        coordinates=coords,
        batch_dims=("column",),
    )
    callbacks = []
    if stop_after is not None:

        def stop_once_reached(sim, state, t, step):
            if step * dt >= stop_after:
                sim.request_stop()

        callbacks.append(stop_once_reached)
    show = progress if progress is not None else (None if cfg["output"]["progress"] else False)
    Simulation(
        model,
        state,
        start=t0,
        n_steps=n_steps,
        output_every=n_per,
        writers=[writer],
        callbacks=callbacks,
        restart=policy,
        progress=show,
        fingerprint=fingerprint,
        resume=resume,
        label=out_path.name,
        log=log,
    ).run()
    return out_path


def open_output(path: str | os.PathLike):
    """Open a pelagos output file as an ``xarray.Dataset`` (time decoded)."""
    import xarray as xr

    with contextlib.suppress(Exception):
        return xr.open_dataset(path)
    return xr.open_dataset(path, decode_times=False)
