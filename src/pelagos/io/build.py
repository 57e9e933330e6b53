"""From a validated :class:`~pelagos.io.config.Config` to a model, its initial state, a time window, a run.

Every command goes through here: ``pelagos run`` (:func:`run`), ``pelagos calibrate|assimilate``
(:mod:`pelagos.io.inverse_run`), whatever the model kind. :func:`run` hands the model to the one run loop
(:class:`pelagos.core.simulation.Simulation`); the only place that knows how is :func:`_simulate`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.timeaxis import format_time
from ..core.timeaxis import model_time as _model_time
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


def model_time(model, value: Any, where: str) -> float:
    """Model seconds of a configured time (a number, or an ISO date through the model's epoch)."""
    return _model_time(model, value, what=where, error=ConfigError)


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
    """``model.initial_state(batch, **initial options)`` (or the state of the restart file
    ``initial.restart``, read on that template), then ``time.spinup`` of model time run from it.

    ``batch``: ``initial.batch`` (the column: also ``numerics.columns``); ``None``: the model's single member.
    """
    from ..column.model import ColumnModel

    batch = cfg.batch if batch is None else batch
    dtype = getattr(torch, cfg.dtype)
    opts = to_mapping(cfg.initial) if cfg.initial is not None else {}
    if isinstance(model, ColumnModel):
        batch = batch or getattr(cfg.numerics, "columns", None) or 1
        profiles = opts.get("profiles", opts) if isinstance(opts, Mapping) else {}
        state = model.initial_state(batch, profiles=profiles or None, t0=t0, dtype=dtype)
    else:
        state = _cast(model.initial_state(batch, **opts), dtype)
    if cfg.initial_restart:
        state = _restart_state(cfg, state)
    return _spinup(cfg, model, state, t0)


def _restart_state(cfg: Config, template):
    """The state stored in the restart file ``initial.restart`` (e.g. the end of a spin-up written by
    ``pelagos run`` with ``restart.file``), rebuilt on ``template`` (same kind, grid, batch and dtype)."""
    from ..core.restart import load_restart

    path = cfg.resolve(cfg.initial_restart)
    if not path.exists():
        raise ConfigError(
            f"initial.restart: {path} not found; write it first with `pelagos run` and restart.file "
            "(e.g. the spin-up configuration)"
        )
    try:
        return load_restart(path, template).state
    except ConfigError as err:
        raise ConfigError(
            f"initial.restart: {str(err).replace('; use --fresh to start over', '')} (the restart must come "
            "from the same model kind, resolution, initial.batch and model.dtype)"
        ) from None


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
    stop_after: float | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Run a configuration of any model kind to CF-NetCDF through the one run loop; returns the files
    written (output first, then plots and the restart).

    ``output``/``restart`` override ``output.file``/``restart.file`` (with ``output`` and a ``restart.file``
    but no ``restart``, the restart goes next to the output: ``<output stem>.restart.pt``); ``fresh``: ignore
    an existing restart;
    ``state``: start from this state instead of the configured one (the analysed run of an inverse method);
    ``stop_after``: stop cleanly (restart written) once this much model time has run (tests).
    """
    cfg = source if isinstance(source, Config) else load_config(source, overrides=overrides)
    out = Path(output) if output is not None else default_output(cfg)
    if restart is not None:
        rs = Path(restart)
    elif not cfg.restart.file:
        rs = None
    elif output is not None:  # another output, its own restart (the configured one left alone)
        rs = out.with_name(f"{out.stem}.restart.pt")
    else:
        rs = cfg.resolve(cfg.restart.file)
    out.parent.mkdir(parents=True, exist_ok=True)
    if rs is not None:
        rs.parent.mkdir(parents=True, exist_ok=True)
    return _simulate(
        cfg,
        out,
        rs,
        fresh=fresh,
        progress=show_progress(progress),
        state=state,
        stop_after=stop_after,
        log=log,
    )


def _simulate(
    cfg: Config, out: Path, rs: Path | None, *, fresh, progress, state, stop_after, log
) -> list[Path]:
    """THE place that runs a configured model: :class:`~pelagos.core.simulation.Simulation` with a
    :class:`~pelagos.io.netcdf_writer.ModelNetCDFWriter` of the model's declared variables."""
    from ..column.model import ColumnModel
    from ..core.simulation import CFLCheck, RestartPolicy, Simulation
    from .netcdf_writer import ModelNetCDFWriter

    model = build_model(cfg)
    t0, _, n_steps = window(cfg, model)
    if state is None:  # the configured initial state (and spin-up) only when no state is given
        state = initial_state(cfg, model, t0)
    dt = float(model.dt)
    every = round(float(cfg.output.interval) / dt) if cfg.output.interval else 1
    if every < 1 or (cfg.output.interval and abs(every * dt - cfg.output.interval) > 1e-6 * dt):
        raise ConfigError(f"output.interval ({cfg.output.interval:g} s) must be a multiple of dt ({dt:g} s)")
    attrs = {"pelagos_model_kind": cfg.kind.name}
    for name in model.parameter_names():  # the parameter values of the run, for the record
        v = model.get_parameter_value(name).detach()
        if v.numel() == 1:
            attrs[name] = float(v)
    kw: dict[str, Any] = {}
    if isinstance(model, ColumnModel):
        kw["batch_dims"] = ("column",)
    writer = ModelNetCDFWriter(
        out,
        model,
        precision="f8" if cfg.output.precision == "float64" else "f4",
        title=cfg.title or f"pelagos {cfg.kind.name}",
        variables=cfg.output.variables,
        attrs=attrs,
        **kw,
    )
    policy = None
    if rs is not None:
        rs_every = cfg.restart.every
        policy = RestartPolicy(rs, every_steps=max(1, round(rs_every / dt)) if rs_every else None)
    callbacks: list[Any] = []
    if hasattr(model, "check_cfl") or hasattr(model, "cfl"):
        callbacks.append(CFLCheck())
    if stop_after is not None:

        def stop_once_reached(sim, state, t, step):
            if step * dt >= stop_after:
                sim.request_stop()

        callbacks.append(stop_once_reached)
    extras = cfg.kind.run_extras(model, n_steps) if cfg.kind.run_extras is not None else None
    if extras is not None:
        callbacks.append(extras[0])
    sim = Simulation(
        model,
        state,
        start=t0,
        n_steps=n_steps,
        output_every=every,
        writers=[writer],
        callbacks=callbacks,
        restart=policy,
        progress=progress,
        fingerprint=_fingerprint(cfg),
        resume=not fresh,
        label=out.name,
        log=log,
    )
    result = sim.run()
    files = [out]
    if extras is not None:
        files += extras[1](out, result.state)
    files += [Path(p) for p in (result.written_files or []) if Path(p) != out]
    return files


def _fingerprint(cfg: Config) -> dict:
    from .config import fingerprint_mapping

    return fingerprint_mapping(cfg)
