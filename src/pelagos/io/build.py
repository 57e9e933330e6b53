"""From a validated :class:`~pelagos.io.config.Config` to a model, its initial state, a time window, a run.

Every command goes through here: ``pelagos run`` (:func:`run`), ``pelagos calibrate|assimilate``
(:mod:`pelagos.io.inverse_run`), whatever the model kind. :func:`run` hands the model to the one run loop
(:class:`pelagos.core.simulation.Simulation`); the only place that knows how is :func:`_simulate`.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError
from .config import Config, load_config, to_mapping

__all__ = ["Setup", "build_model", "initial_state", "model_time", "run", "setup", "window"]


def build_model(cfg: Config):
    """The model the configuration describes (its kind's ``build``), with ``parameters:`` applied."""
    ctx = cfg.context()
    ctx.time = cfg.time  # builders that need the window
    model = cfg.kind.build(cfg.model, ctx)
    layers = getattr(cfg.numerics, "coarsen_layers", None)
    if layers:
        model = _coarsen_column(cfg, model, int(layers))
    for name, value in cfg.parameters.items():
        model.set_parameter_value(name, value)  # unknown names: ConfigError with "did you mean"
    return model


def _coarsen_column(cfg: Config, col, layers: int):
    """``numerics.coarsen_layers``: merge layers (conservatively) and average the forcing over dt."""
    from ..column.coarsen import coarsen_forcing
    from ..column.model import ColumnModel

    if not isinstance(col, ColumnModel):
        raise ConfigError(f"numerics.coarsen_layers is for the water column, not {cfg.kind.name!r}")
    t0, t1, _ = window(cfg, col)
    f = coarsen_forcing(col.forcing, layers=layers, dt=col.dt, start=t0, stop=t1)
    num = {k: v for k, v in to_mapping(cfg.numerics).items() if k not in ("coarsen_layers", "columns")}
    if isinstance(num.get("light"), list):
        num["light"] = tuple(num["light"])
    return ColumnModel(col.bgc, f, dt=col.dt, **num).to(getattr(torch, cfg.dtype))


def epoch_of(model) -> _dt.datetime | None:
    e = getattr(model, "epoch", None)
    if e is None and getattr(model, "forcing", None) is not None:
        e = getattr(model.forcing, "epoch", None)
    return e


def model_time(model, value: Any, where: str) -> float:
    """Model seconds of a configured time: a number (model time), or an ISO date (needs the model's epoch)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a date or a number; got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    forcing = getattr(model, "forcing", None)
    if forcing is not None and hasattr(forcing, "seconds"):
        try:
            return float(forcing.seconds(value))
        except Exception as err:
            raise ConfigError(f"{where}: cannot read {value!r} as a date: {err}") from None
    epoch = epoch_of(model)
    if epoch is None:
        raise ConfigError(
            f"{where} = {value!r}: this model has no calendar (no epoch); give a number of model seconds"
        )
    try:
        t = value if isinstance(value, _dt.datetime) else _dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an ISO date (YYYY-MM-DD[ HH:MM:SS])") from None
    return (t - epoch).total_seconds()


def format_time(model, t: float) -> str:
    """A model time as a date when the model has an epoch, else as seconds."""
    epoch = epoch_of(model)
    if epoch is not None:
        return (epoch + _dt.timedelta(seconds=float(t))).strftime("%Y-%m-%d %H:%M:%S")
    return f"{t:g} s"


def window(cfg: Config, model) -> tuple[float, float, int]:
    """``(t0, t1, n_steps)`` in model seconds; checks order and that the window is a whole number of steps."""
    forcing = getattr(model, "forcing", None)
    tc = cfg.time
    if tc.start is not None:
        t0 = model_time(model, tc.start, "time.start")
    else:
        t0 = float(getattr(forcing, "t_start", 0.0)) if forcing is not None else 0.0
    if tc.stop is not None:
        t1 = model_time(model, tc.stop, "time.stop")
    elif tc.duration is not None:
        t1 = t0 + float(tc.duration)
    elif forcing is not None and hasattr(forcing, "t_stop"):
        t1 = float(forcing.t_stop)
    else:
        raise ConfigError("time.stop or time.duration is required (e.g. time: {duration: '30 days'})")
    if t1 <= t0:
        raise ConfigError(
            f"time.stop ({format_time(model, t1)}) is not after time.start ({format_time(model, t0)})"
        )
    dt = float(model.dt)
    n = round((t1 - t0) / dt)
    if n < 1 or abs(n * dt - (t1 - t0)) > 1e-6 * dt:
        raise ConfigError(
            f"the window time.start..time.stop ({t1 - t0:g} s) must be a whole number of steps dt ({dt:g} s)"
        )
    if forcing is not None and hasattr(forcing, "check_covers"):
        forcing.check_covers(t0, t1)
    return t0, t1, n


def initial_state(cfg: Config, model, t0: float, batch: int | None = None):
    """``model.initial_state(batch, **initial options)``, then ``time.spinup`` of model time run from it.

    ``batch``: ``initial.batch`` (the column: also ``numerics.columns``); ``None``: the model's single member.
    """
    from ..column.model import ColumnModel
    from ..qg.base import SpectralQG

    batch = cfg.batch if batch is None else batch
    dtype = getattr(torch, cfg.dtype)
    opts = to_mapping(cfg.initial) if cfg.initial is not None else {}
    if isinstance(model, ColumnModel):
        batch = batch or getattr(cfg.numerics, "columns", None) or 1
        profiles = opts.get("profiles", opts) if isinstance(opts, Mapping) else {}
        state = model.initial_state(batch, profiles=profiles or None, t0=t0, dtype=dtype)
    else:
        if batch is None and isinstance(model, SpectralQG):  # GLUE: QG's initial_state takes an int batch
            batch = 1
        state = _cast(model.initial_state(batch, **opts), dtype)
    return _spinup(cfg, model, state, t0)


def _spinup(cfg: Config, model, state, t0: float):
    if not cfg.time.spinup:
        return state
    from ..core.rollout import rollout

    n = round(float(cfg.time.spinup) / float(model.dt))
    with torch.no_grad():
        return rollout(model, state, n, t0=t0 - n * float(model.dt), save_every=max(n, 1),
                       include_initial=False).final  # fmt: skip


def _cast(state, dtype):
    if torch.is_tensor(state) and state.is_floating_point():
        return state.to(dtype)
    return state


@dataclass
class Setup:
    """What every command starts from."""

    cfg: Config
    model: Any
    state: Any
    t0: float
    t1: float
    n_steps: int


def setup(cfg: Config, *, batch: int | None = None) -> Setup:
    model = build_model(cfg)
    t0, t1, n = window(cfg, model)
    return Setup(cfg, model, initial_state(cfg, model, t0, batch), t0, t1, n)


# -- pelagos run ------------------------------------------------------------------------------------------
def default_output(cfg: Config, suffix: str = ".nc") -> Path:
    """``output.file`` (relative to the configuration), else ``results/<config name><suffix>`` (cwd)."""
    if cfg.output.file:
        return cfg.resolve(cfg.output.file)
    return Path("results") / f"{cfg.stem}{suffix}"


def show_progress(progress: bool | None) -> bool:
    """One convention: a bar on a terminal, none otherwise; ``--no-progress`` (False) turns it off."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def run(
    source: str | os.PathLike | Mapping | Config,
    *,
    overrides: Sequence[str] | None = None,
    output: str | os.PathLike | None = None,
    restart: str | os.PathLike | None = None,
    fresh: bool = False,
    progress: bool | None = None,
    state: Any = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Run a configuration of any model kind to CF-NetCDF; returns the files written (output first).

    ``output``/``restart`` override ``output.file``/``restart.file``; ``fresh``: ignore an existing restart;
    ``state``: start from this state instead of the configured one (the analysed run of an inverse method).
    """
    cfg = source if isinstance(source, Config) else load_config(source, overrides=overrides)
    out = Path(output) if output is not None else default_output(cfg)
    rs = (
        Path(restart)
        if restart is not None
        else (cfg.resolve(cfg.restart.file) if cfg.restart.file else None)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if rs is not None:
        rs.parent.mkdir(parents=True, exist_ok=True)
    files = _simulate(cfg, out, rs, fresh=fresh, progress=show_progress(progress), state=state, log=log)
    files += _plots_after_run(cfg, files[0])
    return files


def _plots_after_run(cfg: Config, nc: Path) -> list[Path]:
    if cfg.kind.name.startswith("qg") and nc.exists():
        try:
            import xarray as xr

            from ..qg.config import plot_run

            with xr.open_dataset(nc, decode_times=False) as ds:
                batch = [d for d in ds["q"].dims if d not in ("time", "lev", "y", "x")] if "q" in ds else []
                if batch and batch[0] != "run":
                    ds = ds.rename({batch[0]: "run"})
                if "q" in ds and "run" in ds["q"].dims:
                    png = nc.with_suffix(".png")
                    plot_run(build_model(cfg), ds, png)
                    return [png]
        except Exception:  # a plot never fails a run
            return []
    return []


def _fingerprint(cfg: Config) -> dict:
    from .config import fingerprint_mapping

    return fingerprint_mapping(cfg)


def _simulate(cfg: Config, out: Path, rs: Path | None, *, fresh: bool, progress: bool, state, log):
    """THE place that runs a model: H1's Simulation when present, else the paths that exist today."""
    try:
        from ..core.simulation import RestartPolicy, Simulation
        from .netcdf_writer import ModelNetCDFWriter
    except ImportError:
        return _simulate_legacy(cfg, out, rs, fresh=fresh, progress=progress, state=state, log=log)
    s = setup(cfg)
    model = s.model
    every = round(float(cfg.output.interval) / model.dt) if cfg.output.interval else 1
    if every < 1 or (cfg.output.interval and abs(every * model.dt - cfg.output.interval) > 1e-6 * model.dt):
        raise ConfigError(
            f"output.interval ({cfg.output.interval:g} s) must be a multiple of dt ({model.dt:g} s)"
        )
    writer = ModelNetCDFWriter(
        out,
        model,
        precision="f8" if cfg.output.precision == "float64" else "f4",
        title=cfg.title,
        variables=cfg.output.variables,
    )
    policy = None
    if rs is not None:
        rs_every = cfg.restart.every
        policy = RestartPolicy(rs, every_steps=max(1, round(rs_every / model.dt)) if rs_every else None)
    sim = Simulation(
        model,
        s.state if state is None else state,
        start=s.t0,
        stop=s.t1,
        output_every=every,
        writers=[writer],
        restart=policy,
        progress=progress,
        fingerprint=_fingerprint(cfg),
        resume=not fresh,
        label=out.name,
    )
    result = sim.run()
    files = [Path(p) for p in (getattr(result, "written_files", None) or [out])]
    return files if files and files[0] == out else [out, *[f for f in files if f != out]]


# -- until the Simulation is merged: today's run paths (TEMPORARY GLUE) --------------------------------------
def _simulate_legacy(cfg: Config, out: Path, rs: Path | None, *, fresh: bool, progress: bool, state, log):
    from ..column.model import ColumnModel

    model = build_model(cfg)
    if isinstance(model, ColumnModel):
        from .run import run_config

        legacy = _legacy_column_dict(cfg, out, rs, progress, state)
        return [run_config(legacy, resume=not fresh, progress=progress)]
    if cfg.kind.name.startswith("qg"):
        return [_legacy_qg(cfg, out, state, log)]
    return [_rollout_to_netcdf(cfg, out, state)]


def _legacy_column_dict(cfg: Config, out: Path, rs: Path | None, progress: bool, state) -> dict:
    o, f = cfg.model, cfg.forcing
    num = to_mapping(cfg.numerics) if cfg.numerics is not None else {}
    coarsen = num.pop("coarsen_layers", None)
    init = to_mapping(cfg.initial) if cfg.initial is not None else {}
    initial = dict(init.get("profiles", init) or {})
    if state is not None:
        from ..column.stacked import StackedColumn

        initial = (
            {k: v[0].tolist() if v.ndim > 1 else v.tolist() for k, v in state.items()}
            if isinstance(state, Mapping)
            else {}
        )
        if torch.is_tensor(state) and not coarsen:
            st = StackedColumn(build_model(cfg))
            x = state.reshape(-1, *state.shape[-2:])[0]
            initial = {v: x[i].tolist() for i, v in enumerate(st.variables)}
    if coarsen:  # the configured (fine) grid: no profiles of the coarse grid
        initial = {k: v for k, v in initial.items() if not isinstance(v, list)}
    num["dtype"] = cfg.dtype
    num["columns"] = cfg.batch or 1
    return {
        "_legacy_column": True,
        "title": cfg.title,
        "forcing": {"file": str(cfg.resolve(f.file)), "bottom_stress": f.bottom_stress},
        "bgc": {
            "fabm_yaml": str(cfg.resolve(o.fabm_yaml)) if o.fabm_yaml else None,
            "instances": o.instances,
            "drop": list(o.drop or []),
            "drop_unsupported": o.drop_unsupported,
        },
        "time": {"start": cfg.time.start, "stop": _stop(cfg), "dt": cfg.time.dt or 3600.0},
        "numerics": num,
        "parameters": dict(cfg.parameters),
        "initial": initial,
        "output": {
            "file": str(out.resolve()),
            "interval": cfg.output.interval,
            "progress": progress,
            "precision": cfg.output.precision,
        },
        "restart": {"file": str(rs.resolve()) if rs else None, "every": cfg.restart.every},
        "_base": str(cfg.base) if cfg.base else None,
    }


def _stop(cfg: Config):
    if cfg.time.stop is not None or cfg.time.duration is None:
        return cfg.time.stop
    m = build_model(cfg)
    t0 = model_time(m, cfg.time.start, "time.start") if cfg.time.start is not None else m.forcing.t_start
    return t0 + cfg.time.duration


def _legacy_qg(cfg: Config, out: Path, state, log) -> Path:
    from ..qg import config as qgc

    opts = to_mapping(cfg.model)
    closure = opts.pop("closure", None)
    model = {"type": {"qg": "QGModel", "qg_layered": "LayeredModel", "qg_bt": "BTModel"}[cfg.kind.name]}
    model.update({k: v for k, v in opts.items()})
    if cfg.time.dt:
        model["dt"] = cfg.time.dt
    model["dtype"] = cfg.dtype
    m = build_model(cfg)
    t0, t1, _ = window(cfg, m)
    legacy = {
        "model": model,
        "closure": closure,
        "run": {
            "years": (t1 - t0) / (360 * 86400.0),
            "batch": cfg.batch or 1,
            "seed": getattr(cfg.initial, "seed", 0),
            "save_every_days": (cfg.output.interval or m.dt) / 86400.0,
            "threads": torch.get_num_threads(),
            "check_every": 500,
        },
        "output": {"dir": str(out.parent.resolve()), "name": out.stem},
        "_base": out.parent.resolve(),
    }
    return qgc.run(legacy, log=log)


def _rollout_to_netcdf(cfg: Config, out: Path, state) -> Path:
    """Models without a dedicated writer yet: the trajectory of the state at the output times."""
    import xarray as xr

    from ..core.rollout import rollout

    s = setup(cfg)
    model = s.model
    every = round(float(cfg.output.interval) / model.dt) if cfg.output.interval else 1
    x = s.state if state is None else state
    if not torch.is_tensor(x):
        raise ConfigError(
            f"`pelagos run` of model kind {cfg.kind.name!r} needs the Simulation (core/simulation.py)"
        )
    with torch.no_grad():
        traj = rollout(model, x, s.n_steps, t0=s.t0, save_every=max(1, every), include_initial=True)
    data = traj.states.cpu().numpy()
    dims = ["time"] + [f"dim_{i}" for i in range(data.ndim - 1)]
    if data.ndim >= 2:
        dims[-1] = "x"
    if data.ndim >= 3:
        dims[1] = "member"
    ds = xr.Dataset(
        {"x": (dims, data.astype("float64" if cfg.output.precision == "float64" else "float32"))},
        coords={"time": ("time", traj.times.cpu().numpy(), {"units": "model seconds"})},
        attrs={"title": cfg.title, "source": "pelagos", "model_kind": cfg.kind.name},
    )
    ds.to_netcdf(out)
    return out
