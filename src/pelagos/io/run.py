"""Run a water-column configuration to a NetCDF file, incrementally, with restart files.

``run_config(cfg)`` is what ``pelagos run CONFIG.yaml`` calls. Output records are flushed as they are written;
a restart file (written atomically every ``restart.every`` seconds of model time, at output times) lets an
interrupted run continue: the continued run reproduces the uninterrupted one bit for bit, because the restart
holds the exact state tensors and the step is deterministic.
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
from .netcdf_writer import NetCDFWriter, VariableMeta
from .restart import config_fingerprint, load_restart, save_restart

_PHYS_META = {
    "h": ("m", "layer thickness"),
    "temp": ("degC", "temperature"),
    "salt": ("PSU", "practical salinity"),
    "nuh": ("m2 s-1", "turbulent diffusivity of heat as used"),
    "I_0": ("W m-2", "net shortwave radiation entering the water"),
    "PAR": ("W m-2", "photosynthetically active radiation"),
}


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


def _output_meta(model, sample: Mapping[str, torch.Tensor]) -> tuple[dict, dict[str, VariableMeta]]:
    nz = model.nz
    meta = {}
    for v in getattr(model.bgc, "variables", []):
        meta[v.name] = (getattr(v, "units", ""), getattr(v, "long_name", ""))
    for d in getattr(model.bgc, "diagnostics", []) or []:
        if hasattr(d, "name"):
            meta[d.name] = (getattr(d, "units", ""), getattr(d, "long_name", ""))
    meta.update(_PHYS_META)
    state_names = {v.name for v in getattr(model.bgc, "variables", [])}
    dims: dict[str, int] = {}
    variables = {}
    for name, x in sample.items():
        shape = tuple(x.shape)
        if len(shape) == 2 and shape[1] == nz:
            d = ("column", "z")
        elif len(shape) == 2 and shape[1] == nz + 1:
            d = ("column", "zi")
        elif len(shape) == 1:
            d = ("column",)
        else:
            continue  # nothing else is written
        units, long_name = meta.get(name, ("", ""))
        if name.startswith("total_"):
            units, long_name = units or "per m2", long_name or f"column integral of {name[6:]}"
        role = "state" if name in state_names else "physics" if name in _PHYS_META else "diagnostic"
        variables[name] = VariableMeta(d, units, long_name, {"pelagos_role": role})
        dims.update({"column": shape[0], "z": nz, "zi": nz + 1})
    return dims, variables


def run_config(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    resume: bool = True,
    progress: bool | None = None,
    stop_after: float | None = None,
) -> Path:
    """Run the configuration; returns the output NetCDF path.

    ``resume``: continue from the restart file when it exists and matches the configuration.
    ``stop_after``: stop (as if interrupted) once model time reaches this many seconds after start
    (for tests).
    """
    from tqdm.auto import tqdm

    from ..core.rollout import rollout

    cfg = load_config(source)
    if not cfg["output"]["file"]:
        raise ConfigError("output.file is required for `pelagos run`")
    base = Path(cfg["_base"]) if cfg.get("_base") else Path.cwd()
    out_path = resolve_path(cfg["output"]["file"], base)
    model = build_model(cfg)
    f = model.forcing
    t0 = f.seconds(cfg["time"]["start"]) if cfg["time"]["start"] is not None else f.t_start
    t1 = f.seconds(cfg["time"]["stop"]) if cfg["time"]["stop"] is not None else f.t_stop
    dt = model.dt
    every = float(cfg["output"]["interval"] or dt)
    n_per = round(every / dt)
    n_steps = round((t1 - t0) / dt)
    if n_per < 1 or abs(n_per * dt - every) > 1e-6 * dt:
        raise ConfigError(f"output.interval ({every:g} s) must be a positive multiple of time.dt ({dt:g} s)")
    if n_steps <= 0 or abs(n_steps * dt - (t1 - t0)) > 1e-6 * dt:
        raise ConfigError(
            f"time.stop - time.start ({t1 - t0:g} s) must be a positive multiple of dt ({dt:g} s)"
        )
    f.check_covers(t0, t1)
    rs_every = cfg["restart"]["every"]
    rs_path = resolve_path(cfg["restart"]["file"], base) if cfg["restart"]["file"] else None
    fingerprint = config_fingerprint(
        {k: v for k, v in cfg.items() if k not in ("output", "restart", "_base")}
    )

    k, record, state = 0, None, None
    if resume and rs_path is not None and rs_path.exists() and out_path.exists():
        payload = load_restart(rs_path, fingerprint)
        k, record, state = payload["step"], payload["record"], payload["state"]
    if state is None:
        state = model.initial_state(cfg["numerics"]["columns"], profiles=cfg["initial"] or None, t0=t0)

    epoch = f.epoch
    tunits = f"seconds since {epoch:%Y-%m-%d %H:%M:%S}" if epoch else "seconds since start of forcing"
    with torch.no_grad():
        sample = model.output(state, t0 + k * dt)
    dims, variables = _output_meta(model, sample)
    c = model.coordinates(t0)
    coords = {
        "z": (("z",), c["z"][0].cpu().numpy(), "m", "depth of layer centres (negative down)"),
        "zi": (("zi",), c["zi"][0].cpu().numpy(), "m", "depth of interfaces (negative down)"),
    }
    attrs = {"Conventions": "CF-1.8", "title": cfg["title"] or "pelagos water column", "source": "pelagos"}
    precision = "f8" if cfg["output"]["precision"] == "float64" else "f4"
    writer = NetCDFWriter(
        out_path,
        dims,
        coords,
        variables,
        time_units=tunits,
        attrs=attrs,
        start_record=record,
        dtype=precision,
    )
    show = cfg["output"]["progress"] if progress is None else progress
    bar = tqdm(total=n_steps, initial=k, disable=not show, unit="step", desc=out_path.name)
    try:
        with torch.no_grad():
            if record is None:
                writer.write(t0, sample)
            while k < n_steps:
                n = min(n_per, n_steps - k)
                state = rollout(
                    model, state, n, t0=t0 + k * dt, dt=dt, save_every=n, include_initial=False
                ).final
                k += n
                t = t0 + k * dt
                writer.write(t, model.output(state, t))
                bar.update(n)
                if rs_path is not None and rs_every and (k * dt) % rs_every < n * dt:
                    save_restart(
                        rs_path, step=k, time=t, state=state, record=writer.record, fingerprint=fingerprint
                    )
                if stop_after is not None and k * dt >= stop_after:
                    break
    finally:
        bar.close()
        writer.close()
    if rs_path is not None and k >= n_steps:
        save_restart(
            rs_path, step=k, time=t0 + k * dt, state=state, record=writer.record, fingerprint=fingerprint
        )
    return out_path


def open_output(path: str | os.PathLike):
    """Open a pelagos output file as an ``xarray.Dataset`` (time decoded)."""
    import xarray as xr

    with contextlib.suppress(Exception):
        return xr.open_dataset(path)
    return xr.open_dataset(path, decode_times=False)
