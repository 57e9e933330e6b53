"""``Simulation``: the one run loop for every model (writers, callbacks, restarts, progress, Ctrl-C).

::

    from pelagos.core.simulation import Simulation, RestartPolicy, MemoryWriter, CheckFinite
    from pelagos.io.netcdf_writer import ModelNetCDFWriter

    sim = Simulation(model, model.initial_state(), start=0.0, stop=86400.0 * 30, output_every=24,
                     writers=[ModelNetCDFWriter("out.nc", model)], callbacks=[CheckFinite()],
                     restart=RestartPolicy("out.restart.pt", every_steps=240))
    result = sim.run()          # SimulationResult(state, t, step, n_steps, interrupted, written_files)

What it does, in this order:

1. **Window.** Model time runs from ``start`` (model seconds, or a date when the model has an ``epoch``) for
   ``n_steps`` steps of ``model.dt`` (or up to ``stop``, which must be a whole number of steps away).
2. **Resume.** With a ``restart`` policy whose file exists (and ``resume=True``), the run continues from it:
   the state is rebuilt on the given ``state`` (the template), the fingerprint of the configuration must
   match (else a :class:`ConfigError` that names ``--fresh``), every writer reopens its output at the
   restart's record, and ``"resuming from restart at <date>"`` is logged. The continued run equals the
   uninterrupted one bit for bit: the restart holds the exact state tensors, the step is deterministic and
   restarts are only written at output times, where no interval mean is half-accumulated.
3. **Loop.** Output at step 0 and after every ``output_every`` steps (and after the last step); between
   outputs the state advances with :func:`pelagos.core.rollout` (``checkpoint`` passed on; with interval
   means, one ``model.step`` at a time, or ``model.step_block(state, times, means)`` when the model has it and
   takes the call: several steps and their interval means at once). Variables the model declares with
   ``Variable(mean=True)`` are written as the mean over the output interval of their values after each step
   (GOTM's mean output: a PAR or primary production at midnight says little; its daily mean does); the
   record at step 0 holds the instantaneous value. Callbacks run after each output.
4. **Restart** files are written every ``every_steps`` steps (at the first output at or after each multiple),
   at the end, and on any interruption.
5. **Stops.** Ctrl-C (``KeyboardInterrupt``) or an exception (a callback's ``StabilityError``, a crash):
   the writers are closed (files readable), a restart is written at the last completed output, and Ctrl-C
   is re-raised as :class:`~pelagos.core.errors.Interrupted` ("interrupted at <date>; output and restart are
   valid; rerun to resume"). A callback may call ``sim.request_stop()`` for a clean early stop
   (``result.interrupted`` is then ``True``).

Gradients are off by default (``grad=False``: a long run builds no graph); ``grad=True`` keeps them, e.g. to
differentiate the outputs a :class:`MemoryWriter` keeps (``MemoryWriter(detach=False)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import inspect
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from .errors import ConfigError, Interrupted, StabilityError
from .model import Coordinate, Model, Variable, declared_variables
from .restart import config_fingerprint, load_restart, save_restart
from .rollout import _register_dataclasses, rollout
from .timeaxis import format_time, model_epoch, model_time

__all__ = [
    "CFLCheck",
    "Callback",
    "CheckFinite",
    "MemoryWriter",
    "RestartPolicy",
    "Simulation",
    "SimulationResult",
    "Writer",
    "declared_variables",
    "format_time",
]


# -- writers and callbacks -----------------------------------------------------------------------------------
class Writer:
    """What :class:`Simulation` needs from an output writer (subclass it, or duck-type these members).

    ``key`` identifies the writer in restart files (its path for a file writer); ``record`` counts the records
    written. ``open(sim, record)`` is called before the loop (``record=None``: a new output; an int: continue
    an existing one at that record, after ``can_resume(record)`` said yes); ``write(t, values)`` gets the
    model time (model seconds) and ``{name: tensor (*batch, *dims)}`` of the names ``variable_names(sim)``
    asked for (``None``: all the model outputs); ``flush()`` puts every record taken so far on disk (called
    before each restart file, so a restart never counts records that are not there); ``close()`` must flush,
    leave a readable output and may be called twice.
    """

    key: str = "writer"
    path: Path | None = None
    record: int = 0

    def variable_names(self, sim: Simulation) -> list[str] | None:
        return None

    def mean_names(self, sim: Simulation) -> list[str]:
        """Names this writer wants as interval means (default: those the model declares ``mean=True``)."""
        decl = declared_variables(sim.model) or []
        names = self.variable_names(sim)
        return [v.name for v in decl if v.mean and (names is None or v.name in names)]

    def can_resume(self, record: int) -> bool:
        return True

    def open(self, sim: Simulation, record: int | None) -> None:
        self.record = int(record or 0)

    def write(self, t: float, values: Mapping[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryWriter(Writer):
    """Keeps every record in memory: ``times``, ``records`` (list of dicts), ``stacked()``, ``to_dataset()``.

    ``variables``: names to keep (default: every declared variable, or every output when the model declares
    none), or :class:`Variable` descriptions (for a model that does not declare its own; their ``mean`` flags
    are honoured). ``detach=False`` keeps the autograd graph (with ``Simulation(grad=True)``).
    """

    key = "memory"

    def __init__(self, variables: Sequence[str | Variable] | None = None, *, detach: bool = True) -> None:
        given = None if variables is None else list(variables)
        self.described = [v for v in given or [] if isinstance(v, Variable)]
        self.variables = None if given is None else [v.name if isinstance(v, Variable) else v for v in given]
        self.detach = bool(detach)
        self.times: list[float] = []
        self.records: list[dict[str, torch.Tensor]] = []
        self.model: Any = None
        self._names: list[str] | None = None

    def variable_names(self, sim: Simulation) -> list[str] | None:
        if self.variables is not None:
            return self.variables
        decl = declared_variables(sim.model)
        return None if decl is None else [v.name for v in decl]

    def mean_names(self, sim: Simulation) -> list[str]:
        if self.described:
            return [v.name for v in self.described if v.mean]
        return super().mean_names(sim)

    def open(self, sim: Simulation, record: int | None) -> None:
        self.model = sim.model
        self.record = int(record or 0)
        self._names = self.variable_names(sim)

    def write(self, t: float, values: Mapping[str, torch.Tensor]) -> None:
        keep = (lambda x: x.detach()) if self.detach else (lambda x: x)
        names = self._names if self._names is not None else list(values)
        self.times.append(float(t))
        self.records.append({k: keep(torch.as_tensor(values[k])) for k in names})
        self.record += 1

    def stacked(self) -> dict[str, torch.Tensor]:
        """``{"time": float64 (n,), name: (n, *batch, *dims)}``."""
        out: dict[str, torch.Tensor] = {"time": torch.tensor(self.times, dtype=torch.float64)}
        if self.records:
            for k in self.records[0]:
                out[k] = torch.stack([r[k] for r in self.records])
        return out

    def to_dataset(
        self,
        *,
        variables: Sequence[Variable] | None = None,
        coordinates: Mapping[str, Coordinate] | None = None,
        batch_dims: Sequence[str] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ):
        """The records as an ``xarray.Dataset`` (dims time, batch, the variables' dims; CF attributes)."""
        import numpy as np
        import xarray as xr

        model = self.model
        if variables is not None:
            decl = list(variables)
        else:
            decl = self.described or declared_variables(model) or []
        info = {v.name: v for v in decl}
        coords_in = dict(coordinates) if coordinates is not None else _coordinates(model)
        stacked = self.stacked()
        names = [k for k in stacked if k != "time"]
        bnames = _batch_names(model, batch_dims)
        data = {}
        for name in names:
            a = stacked[name].detach().cpu().numpy()
            v = info.get(name)
            vd = tuple(v.dims) if v is not None else ()
            if v is None:  # undeclared output: generic dims after a guessed batch
                dims = ("time", *[f"{name}_dim{i}" for i in range(1, a.ndim)])
            else:
                nb = a.ndim - 1 - len(vd)
                if nb < 0:
                    raise ConfigError(f"output {name!r} has shape {a.shape[1:]}, fewer dims than {vd}")
                dims = ("time", *_batch_for(bnames, nb), *vd)
            attrs_v = {}
            if v is not None:
                attrs_v = {"units": v.units, "long_name": v.long_name or v.name}
                attrs_v["cell_methods"] = "time: mean" if v.mean else "time: point"
            data[name] = (dims, a, attrs_v)
        time_attrs = {"units": _time_units(model), "standard_name": "time"}
        cds: dict[str, Any] = {"time": ("time", np.asarray(self.times, dtype=np.float64), time_attrs)}
        for d, c in coords_in.items():
            cdims = tuple(c.dims) if c.dims else (d,)
            vals = c.values.detach().cpu().numpy() if torch.is_tensor(c.values) else np.asarray(c.values)
            cds[d] = (cdims, vals, {"units": c.units, "long_name": c.long_name or d})
        ds = xr.Dataset(data, coords=cds, attrs=dict(attrs or {}))
        with contextlib.suppress(Exception):  # decode "seconds since <date>" like a file opened with xarray
            ds = xr.decode_cf(ds)
        return ds


class Callback:
    """A callback is any callable ``(sim, state, t, step)``, called after each output (not at step 0)."""

    def __call__(self, sim: Simulation, state: Any, t: float, step: int) -> None:  # pragma: no cover
        raise NotImplementedError


class CheckFinite(Callback):
    """Raise :class:`StabilityError` when any state array holds NaN/Inf, naming the array and the date."""

    def __call__(self, sim: Simulation, state: Any, t: float, step: int) -> None:
        for path, x in pytree.tree_flatten_with_path(state)[0]:
            if torch.is_tensor(x) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
                where = pytree.keystr(path) or "state"
                raise StabilityError(
                    f"the state became non-finite ({where}) by {format_time(sim.model, t)} (step {step}); "
                    f"reduce the time step (now {sim.dt:g}) or check forcing and parameters"
                )


class CFLCheck(Callback):
    """Courant-number check: ``model.check_cfl(state, limit)`` when the model has it, else
    ``model.cfl(state)`` compared with ``limit``; raises :class:`StabilityError`. Models with neither are not
    checked."""

    def __init__(self, limit: float = 1.0) -> None:
        self.limit = float(limit)

    def __call__(self, sim: Simulation, state: Any, t: float, step: int) -> None:
        model = sim.model
        if hasattr(model, "check_cfl"):
            try:
                model.check_cfl(state, limit=self.limit)
            except StabilityError as err:
                raise StabilityError(f"{err} (at {format_time(model, t)}, step {step})") from None
        elif hasattr(model, "cfl"):
            c = float(torch.as_tensor(model.cfl(state)).detach().max())
            if not c < self.limit:
                raise StabilityError(
                    f"CFL number {c:.3g} >= {self.limit:g} at {format_time(model, t)} (step {step}); "
                    f"reduce dt (now {sim.dt:g})"
                )


# -- coordinates / names used by the writers -------------------------------------------------------------
def _takes_names(output: Callable) -> bool:
    """Whether a model's ``output`` takes ``names`` (only those fields; see :meth:`Model.output`)."""
    try:
        return "names" in inspect.signature(output).parameters
    except (TypeError, ValueError):  # pragma: no cover - a builtin or C callable
        return False


def _coordinates(model: Any) -> dict[str, Coordinate]:
    fn = getattr(model, "output_coordinates", None)
    if fn is None:
        return {}
    try:
        return dict(fn())
    except NotImplementedError:
        return {}


def _batch_names(model: Any, batch_dims: Sequence[str] | None) -> tuple[str, ...]:
    if batch_dims is not None:
        return tuple(batch_dims)
    given = getattr(model, "batch_dims", None)
    return tuple(given) if given else ("member",)


def _batch_for(names: tuple[str, ...], n: int) -> tuple[str, ...]:
    """Names of ``n`` leading batch dims: the last ``n`` of ``names``, numbered when there are too few."""
    if n <= len(names):
        return names[len(names) - n :] if n else ()
    return tuple(f"{names[0]}_{i}" for i in range(n))


def _time_units(model: Any) -> str:
    epoch = model_epoch(model)
    if epoch is not None:
        return f"seconds since {epoch:%Y-%m-%d %H:%M:%S}"
    return str(getattr(model, "time_units", "s"))


# -- the run -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RestartPolicy:
    """Where restarts go and how often: ``every_steps`` (``None``: only at the end and on interruption)."""

    path: str | os.PathLike
    every_steps: int | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        e = self.every_steps
        if e is not None and (isinstance(e, bool) or not isinstance(e, int) or e < 1):
            raise ConfigError(f"restart every_steps must be a positive int or None; got {e!r}")


@dataclasses.dataclass
class SimulationResult:
    """Where a run ended: the final ``state`` at model time ``t`` after ``step`` of ``n_steps`` steps;
    ``interrupted``: stopped early (``request_stop``); ``written_files``: outputs and restart on disk."""

    state: Any
    t: float
    step: int
    n_steps: int
    interrupted: bool
    written_files: list[Path]


class Simulation:
    """One model run over a time window with writers, callbacks and restarts (see the module docstring).

    Args:
        model: any :class:`~pelagos.core.Model` (``step``, ``dt``; ``output`` and ``output_variables`` for
            writers).
        state: the initial state (also the template a restart is rebuilt on).
        start: model time of ``state`` (model seconds; a date string/datetime when the model has an
            ``epoch``).
        stop: end of the window (same kinds as ``start``); or give ``n_steps``.
        n_steps: number of steps (checked against ``stop`` when both are given).
        output_every: steps between outputs (and callbacks).
        writers: output writers (:class:`Writer`: ``ModelNetCDFWriter``, :class:`MemoryWriter`, ...).
        callbacks: callables ``(sim, state, t, step)`` run after each output (:class:`CheckFinite`,
            :class:`CFLCheck`, your own; ``sim.request_stop()`` ends the run cleanly).
        restart: a :class:`RestartPolicy` (or a path: restarts only at the end and on interruption).
        progress: ``None``: a progress bar when stderr is a terminal; ``True``/``False``: always / never.
        fingerprint: identifies the configuration (a string, or anything JSON-able, hashed); a restart written
            with another fingerprint is refused with a message naming ``--fresh``.
        resume: continue from the restart file when it exists (``False``: start fresh, overwrite).
        label: name on the progress bar.
        checkpoint: passed to :func:`pelagos.core.rollout` (gradient checkpointing inside an output interval).
        grad: keep autograd on (default off: the run builds no graph).
        log: where messages go ("resuming from restart at ..."); default ``print`` to stderr.
    """

    def __init__(
        self,
        model: Model,
        state: Any,
        *,
        start: float | str | _dt.datetime = 0.0,
        stop: float | str | _dt.datetime | None = None,
        n_steps: int | None = None,
        output_every: int = 1,
        writers: Iterable[Writer] = (),
        callbacks: Iterable[Callable[..., Any]] = (),
        restart: RestartPolicy | str | os.PathLike | None = None,
        progress: bool | None = None,
        fingerprint: Any = None,
        resume: bool = True,
        label: str = "",
        checkpoint: int | str | None = None,
        grad: bool = False,
        log: Callable[[str], Any] | None = None,
    ) -> None:
        self.model = model
        self.template = state
        self.dt = float(model.dt)
        if not math.isfinite(self.dt) or self.dt <= 0:
            raise ConfigError(f"{type(model).__name__}.dt must be a finite positive number; got {model.dt!r}")
        self.start = model_time(model, start, what="start", error=ConfigError)
        self.n_steps = self._n_steps(stop, n_steps)
        self.stop = self.start + self.n_steps * self.dt
        if isinstance(output_every, bool) or not isinstance(output_every, int) or output_every < 1:
            raise ConfigError(f"output_every must be a positive number of steps; got {output_every!r}")
        self.output_every = output_every
        self.writers = list(writers)
        keys = [w.key for w in self.writers]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"two writers share a key ({keys}); give each file writer its own path")
        self.callbacks = list(callbacks)
        if restart is not None and not isinstance(restart, RestartPolicy):
            restart = RestartPolicy(restart)
        self.restart = restart
        if fingerprint is not None and not isinstance(fingerprint, str):
            fingerprint = config_fingerprint(fingerprint)
        self.fingerprint = fingerprint
        self.progress = progress
        self.resume = bool(resume)
        self.label = label
        self.checkpoint = checkpoint
        self.grad = bool(grad)
        self.log = log if log is not None else (lambda msg: print(msg, file=sys.stderr))
        self.step = 0
        self.t = self.start
        self.state = state
        self._stop_requested = False
        self._written: list[Path] = []

    # -- window ----------------------------------------------------------------------------------------------
    def _n_steps(self, stop: Any, n_steps: int | None) -> int:
        if n_steps is not None and (isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0):
            raise ConfigError(f"n_steps must be a non-negative int; got {n_steps!r}")
        if stop is None:
            if n_steps is None:
                raise ConfigError("give the end of the run: stop (model time or date) or n_steps")
            return n_steps
        t1 = model_time(self.model, stop, what="stop", error=ConfigError)
        span = t1 - self.start
        if span < 0:
            t0 = format_time(self.model, self.start)
            raise ConfigError(f"stop ({format_time(self.model, t1)}) is before start ({t0})")
        n = round(span / self.dt)
        if abs(n * self.dt - span) > 1e-6 * self.dt:
            raise ConfigError(
                f"stop - start ({span:g}) must be a whole number of steps of dt = {self.dt:g}; it is "
                f"{span / self.dt:.4g} steps"
            )
        if n_steps is not None and n_steps != n:
            raise ConfigError(f"n_steps = {n_steps} but start..stop holds {n} steps of {self.dt:g}")
        return n

    def time_of(self, step: int) -> float:
        """Model time (model seconds) after ``step`` steps: ``start + step * dt``."""
        return self.start + step * self.dt

    def request_stop(self) -> None:
        """End the run after the current output (a restart is written; ``result.interrupted`` is True)."""
        self._stop_requested = True

    # -- outputs ---------------------------------------------------------------------------------------------
    def _plan_outputs(self) -> tuple[set[str] | None, list[str]]:
        """(names the writers need, ``None`` = every output; names written as interval means)."""
        if not self.writers:
            return set(), []
        needed: set[str] | None = set()
        for w in self.writers:
            names = w.variable_names(self)
            if names is None:
                needed = None
                break
            needed |= set(names)
        means: list[str] = []
        for w in self.writers:
            fn = getattr(w, "mean_names", None)
            for name in fn(self) if fn is not None else []:
                if name not in means:
                    means.append(name)
        return needed, means

    def _outputs(
        self,
        state: Any,
        t: float,
        needed: set[str] | None,
        out: Mapping[str, Any] | None = None,
        means: Sequence[str] = (),
    ) -> dict[str, torch.Tensor]:
        """The ``needed`` outputs at ``(state, t)``; ``out``: ``model.output(state, t)`` if known already (it
        may leave out the interval-mean fields ``means``, which the caller adds)."""
        if needed is not None and not needed:
            return {}
        if out is None:
            out = self.model.output(state, t)
        if needed is None:
            return dict(out)
        missing = sorted(needed - set(out) - set(means))
        if missing:
            raise ConfigError(
                f"{type(self.model).__name__}.output() lacks {missing} (declared or asked for by a writer)"
            )
        return {k: out[k] for k in out if k in needed}

    # -- restarts --------------------------------------------------------------------------------------------
    def _save_restart(self, state: Any, step: int, records: dict[str, int]) -> None:
        if self.restart is None:
            return
        for w in self.writers:  # records first: the restart must not point past what is on disk
            flush = getattr(w, "flush", None)
            if flush is not None:
                flush()
        p = save_restart(
            self.restart.path,
            state,
            step=step,
            t=self.time_of(step),
            fingerprint=self.fingerprint,
            records=records,
            extra={"start": self.start, "dt": self.dt, "n_steps": self.n_steps},
        )
        if p not in self._written:
            self._written.append(p)

    def _try_resume(self) -> tuple[Any, int, dict[str, int]] | None:
        if self.restart is None or not self.resume or not Path(self.restart.path).exists():
            return None
        r = load_restart(self.restart.path, self.template, fingerprint=self.fingerprint)
        if abs(r.t - self.time_of(r.step)) > 1e-6 * self.dt or r.step > self.n_steps:
            raise ConfigError(
                f"restart file {r.path} is at step {r.step} (t = {r.t:g}), which is not on this run's window "
                f"(start {self.start:g}, {self.n_steps} steps of {self.dt:g}); use --fresh to start over"
            )
        records = dict(r.records)
        for w in self.writers:
            rec = records.get(w.key)
            if rec is None and getattr(w, "path", None) is None:
                records[w.key] = rec = 0  # an in-memory writer added since: it keeps what is run from here
            if rec is None or not w.can_resume(rec):
                where = f" ({w.path})" if w.path is not None else ""
                self.log(
                    f"restart {r.path} ignored: output{where} is missing or shorter than the restart says; "
                    "starting from the beginning"
                )
                return None
        return r.state, r.step, records

    # -- the loop --------------------------------------------------------------------------------------------
    def _advance(
        self, state: Any, k: int, n: int, means: list[str]
    ) -> tuple[Any, dict[str, torch.Tensor], Mapping[str, Any] | None]:
        """``n`` steps from step ``k``; with ``means``: their mean over the steps (after each step), and the
        ``model.output`` of the final state (``None`` without means: it was not computed)."""
        t = self.time_of(k)
        if not means:
            traj = rollout(
                self.model,
                state,
                n,
                t0=t,
                dt=self.dt,
                save_every=n + 1,  # save nothing: only the final state is wanted
                checkpoint=self.checkpoint,
                include_initial=False,
            )
            return traj.final, {}, None
        block = getattr(self.model, "step_block", None)  # several steps per call (see core.rollout)
        res = block(state, [self.time_of(k + j) for j in range(n)], means) if block is not None else None
        if res is not None:
            return res
        acc: dict[str, torch.Tensor] = {}
        only = _takes_names(self.model.output)
        for j in range(n):  # one step at a time (a 1-step rollout is this call plus per-call overhead)
            state = self.model.step(state, self.time_of(k + j))
            t1 = self.time_of(k + j + 1)
            # inside the interval only the mean fields are needed (when the model can give only those);
            # after the last step every field (the caller writes the instantaneous ones from it)
            inside = only and j < n - 1
            out = self.model.output(state, t1, names=means) if inside else self.model.output(state, t1)
            for name in means:
                x = torch.as_tensor(out[name])
                x64 = x.to(torch.float64) if x.is_floating_point() else x
                acc[name] = x64 if name not in acc else acc[name] + x64
        dtypes = {name: torch.as_tensor(out[name]).dtype for name in means}
        return state, {name: (acc[name] / n).to(dtypes[name]) for name in means}, out

    def _bar(self, initial: int):
        show = sys.stderr.isatty() if self.progress is None else bool(self.progress)
        if not show:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.n_steps,
            initial=initial,
            unit="step",
            desc=self.label or type(self.model).__name__,
            dynamic_ncols=True,
        )

    def run(self) -> SimulationResult:
        """Run the window (or what is left of it after a restart); see the module docstring."""
        _register_dataclasses(self.template)
        state, k, records = self.template, 0, None
        resumed = self._try_resume()
        if resumed is not None:
            state, k, records = resumed
            self.log(f"resuming from restart at {format_time(self.model, self.time_of(k))}")
        needed, means = self._plan_outputs()
        self._stop_requested = False
        opened: list[Writer] = []
        bar = None
        last = (state, k)  # the last completed output: where a restart after an interruption resumes

        def recs() -> dict[str, int]:
            return {w.key: int(w.record) for w in self.writers}

        last_records: dict[str, int] = {}
        grad_ctx = contextlib.nullcontext() if self.grad else torch.no_grad()
        try:
            for w in self.writers:
                w.open(self, None if records is None else records[w.key])
                opened.append(w)
                p = getattr(w, "path", None)
                if p is not None and Path(p) not in self._written:
                    self._written.append(Path(p))
            bar = self._bar(k)
            with grad_ctx:
                if resumed is None:
                    values = self._outputs(state, self.start, needed)
                    for w in self.writers:
                        w.write(self.start, values)
                self.step, self.t, self.state = k, self.time_of(k), state
                last, last_records = (state, k), recs()
                every = self.restart.every_steps if self.restart is not None else None
                while k < self.n_steps and not self._stop_requested:
                    n = min(self.output_every, self.n_steps - k)
                    state, mean_values, last_out = self._advance(state, k, n, means)
                    k_prev, k = k, k + n
                    t = self.time_of(k)
                    self.step, self.t, self.state = k, t, state
                    if self.writers:
                        values = self._outputs(state, t, needed, last_out, mean_values)
                        values.update(mean_values)
                        for w in self.writers:
                            w.write(t, values)
                    for cb in self.callbacks:
                        cb(self, state, t, k)
                    last, last_records = (state, k), recs()
                    if every is not None and k < self.n_steps and k // every > k_prev // every:
                        self._save_restart(state, k, last_records)
                    if bar is not None:
                        bar.update(n)
                        bar.set_postfix_str(format_time(self.model, t), refresh=False)
            self._save_restart(state, k, last_records)
        except KeyboardInterrupt:
            self._after_failure(last, last_records, opened, bar)
            where = format_time(self.model, self.time_of(last[1]))
            what = "output and restart are valid" if self.restart is not None else "output is valid"
            hint = "rerun to resume" if self.restart is not None else "no restart file was configured"
            raise Interrupted(
                f"interrupted at {where}; {what}; {hint}", t=self.time_of(last[1]), step=last[1]
            ) from None
        except BaseException:
            self._after_failure(last, last_records, opened, bar)
            raise
        self._close(opened, bar)
        return SimulationResult(
            state=state,
            t=self.time_of(k),
            step=k,
            n_steps=self.n_steps,
            interrupted=k < self.n_steps,
            written_files=list(self._written),
        )

    def _close(self, opened: list[Writer], bar: Any) -> None:
        if bar is not None:
            bar.close()
        for w in opened:
            with contextlib.suppress(Exception):
                w.close()

    def _after_failure(
        self, last: tuple[Any, int], records: dict[str, int], opened: list[Writer], bar
    ) -> None:
        """Close every writer (files readable) and write a restart at the last completed output."""
        self._close(opened, bar)
        if records or not self.writers:
            with contextlib.suppress(Exception):
                self._save_restart(last[0], last[1], records)
