"""0-D box: run a :class:`BGCSystem` alone, as FABM's ``fabm0d`` does (:class:`BoxModel`, :func:`run_box`).

The box is one well-mixed layer of thickness ``depth`` whose biogeochemistry sits at its centre (depth/2).
Each step n (time t_n = start + n·dt) FABM's 0-D driver

1. reads the environment at t_n (linear interpolation of the forcing file in time),
2. computes light from the state at the start of the step — with ``swr`` the surface shortwave (W m-2):

       PAR_sf = par_fraction · swr
       k      = k_bio(state) + background_extinction        (k_bio only if apply_self_shading)
       PAR    = PAR_sf · exp(−k · depth/2)                  (the box centre)

   (this light is held fixed through the stages of a multi-stage integrator, as in FABM),
3. integrates the sources over dt with the chosen scheme: interior rates plus (surface + bottom fluxes)/depth
   for interior variables, bottom/surface fluxes as own sources for bottom/surface variables.

FABM's default test case (``env_nns_annual.dat``, the Northern North Sea in 1998) uses depth 10 m, background
extinction 0.05 m-1, par_fraction 1, dt 1800 s. Its run.nml says ``swr_method = 0``, with which fabm0d would
*replace* the file's radiation by a clear-sky astronomical value; pelagos always uses the file's measured
shortwave (FABM's ``swr_method = 1``), the documented meaning of that column.

If the system holds a ``gotm/light`` instance, PAR and surface PAR come from it instead (one layer of
thickness ``depth``, see :mod:`pelagos.bgc.gotm_light`). Running means (``mean_key``) that models request
follow FABM's ``temporal_mean`` (samples every ``resolution`` seconds on the run clock, started from the first
value; :mod:`pelagos.core.running_mean`).
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError, ForcingError
from ..core.model import Model, Variable
from ..core.registry import BuildContext, ModelKind
from ..core.running_mean import running_mean_init, running_mean_update
from .base import STANDARD_VARIABLES, BGCModel, mean_key
from .integrate import integrate_sources, merge_transfers, method_name, transfers_from_rates
from .system import BGCSystem

PAR = "downwelling_photosynthetic_radiative_flux"
SURFACE_PAR = "surface_downwelling_photosynthetic_radiative_flux"
SWR_SF = "surface_downwelling_shortwave_flux"
EXTINCTION = "attenuation_coefficient_of_photosynthetic_radiative_flux"
FORCING_COLUMNS = (SWR_SF, "temperature", "practical_salinity")
TOTAL_UNITS = "per m2 (state units x m)"


def read_env_file(path: str | Path) -> dict[str, np.ndarray]:
    """FABM 0-D forcing: lines ``YYYY-MM-DD hh:mm:ss swr temperature salinity``.

    Returns ``time`` (datetime64[s]) and float64 arrays under the standard names of the three columns.
    """
    p = Path(path)
    if not p.exists():
        raise ForcingError(f"0-D forcing file {str(p)!r} does not exist")
    times, rows = [], []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 5:
            raise ForcingError(f"{p}:{i}: expected 'date time swr temperature salinity', got {line!r}")
        try:
            times.append(np.datetime64(f"{parts[0]}T{parts[1]}", "s"))
            rows.append([float(x) for x in parts[2:5]])
        except ValueError as e:
            raise ForcingError(f"{p}:{i}: cannot parse {line!r}: {e}") from None
    t = np.array(times)
    if len(t) < 2 or np.any(np.diff(t) <= np.timedelta64(0, "s")):
        raise ForcingError(f"{p}: times must be at least two and strictly increasing")
    a = np.array(rows)
    return {"time": t, **{k: a[:, j] for j, k in enumerate(FORCING_COLUMNS)}}


def _interp(times_s: np.ndarray, t_file: np.ndarray, values: np.ndarray, name: str) -> np.ndarray:
    if times_s[0] < t_file[0] or times_s[-1] > t_file[-1]:
        raise ForcingError(
            f"forcing {name!r} covers {t_file[0]:g}..{t_file[-1]:g} s but the run needs "
            f"{times_s[0]:g}..{times_s[-1]:g}"
            " s; shorten the run or extend the forcing"
        )
    return np.interp(times_s, t_file, values)


# -- forcing: a function of model time t ---------------------------------------------------------------------
class BoxForcing:
    """Forcing of the 0-D box as a function of model time ``t`` [s]: linear interpolation between records.

    ``values``: ``{standard name: (n,) array}`` at ``times`` (s, increasing), or constants (floats) when
    ``times`` is ``None``. ``epoch``: calendar date of ``t = 0`` (then the day of the year is provided too).
    """

    def __init__(
        self,
        values: Mapping[str, Any],
        times: Any = None,
        *,
        epoch: _dt.datetime | None = None,
        name: str = "box forcing",
    ) -> None:
        self.name, self.epoch = name, epoch
        self.times = None if times is None else np.asarray(times, dtype=np.float64).reshape(-1)
        self.values = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
        for k, v in self.values.items():
            want = () if self.times is None else self.times.shape
            if v.shape != want:
                raise ForcingError(f"{name}: {k!r} has shape {v.shape}; expected {want} (one value per time)")
        if self.times is not None and (self.times.size < 2 or np.any(np.diff(self.times) <= 0)):
            raise ForcingError(f"{name}: times must be at least two and strictly increasing")

    @classmethod
    def from_file(cls, path: str | Path) -> BoxForcing:
        """A FABM 0-D env file (``date time swr temperature salinity``); t = 0 at its first record."""
        data = read_env_file(path)
        t = data["time"]
        sec = (t - t[0]) / np.timedelta64(1, "s")
        epoch = _dt.datetime.fromisoformat(str(np.datetime_as_string(t[0], unit="s")))
        return cls({k: data[k] for k in FORCING_COLUMNS}, sec, epoch=epoch, name=str(path))

    @classmethod
    def constant(cls, **values: float) -> BoxForcing:
        """Constant forcing, e.g. ``BoxForcing.constant(surface_downwelling_shortwave_flux=200.0,
        temperature=12.0, practical_salinity=35.0)``."""
        return cls(values)

    def seconds(self, when: float | str | _dt.datetime) -> float:
        """Model time (s) of ``when``: seconds as given, or an ISO date / datetime (needs the epoch)."""
        if isinstance(when, int | float):
            return float(when)
        if self.epoch is None:
            raise ConfigError(
                f"{self.name}: a date ({when}) was given but the forcing has no epoch; give seconds"
            )
        d = when if isinstance(when, _dt.datetime) else _dt.datetime.fromisoformat(str(when))
        return (d - self.epoch).total_seconds()

    def sample(self, t: float, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """The forcing at model time ``t`` (s) as 0-d tensors (and the day of the year with an epoch)."""
        t = float(t)
        if self.times is None:
            out = {k: torch.tensor(float(v), dtype=dtype) for k, v in self.values.items()}
        else:
            lo, hi = self.times[0], self.times[-1]
            if t < lo - 1e-6 or t > hi + 1e-6:
                raise ForcingError(
                    f"{self.name}: covers t = [{lo:g}, {hi:g}] s but t = {t:g} s was asked for"
                )
            out = {
                k: torch.tensor(float(np.interp(t, self.times, v)), dtype=dtype)
                for k, v in self.values.items()
            }
        if self.epoch is not None:
            now = self.epoch + _dt.timedelta(seconds=t)
            start = _dt.datetime(now.year, 1, 1, tzinfo=now.tzinfo)
            doy = (now - start).total_seconds() / 86400.0
            out.setdefault("number_of_days_since_start_of_the_year", torch.tensor(doy, dtype=dtype))
        return out


class StepForcing:
    """Forcing given per step: ``values[k]`` is ``(n_steps, ...)`` (a tensor, kept as is: the run is
    differentiable w.r.t. it) or a constant. The step ending at ``t0 + n·dt`` (n = 1 … n_steps) uses index
    ``n - 1``, as FABM's 0-D driver reads the environment at the end of each step.
    """

    def __init__(
        self,
        values: Mapping[str, Any],
        dt: float,
        *,
        t0: float = 0.0,
        n_steps: int | None = None,
        epoch: _dt.datetime | None = None,
        name: str = "box forcing",
    ) -> None:
        self.name, self.epoch, self.dt, self.t0 = name, epoch, float(dt), float(t0)
        self.values = {k: torch.as_tensor(v) for k, v in values.items()}
        lens = {int(v.shape[0]) for v in self.values.values() if v.ndim}
        if n_steps is None:
            if len(lens) > 1:
                raise ForcingError(f"{name}: the series have different lengths {sorted(lens)}; give n_steps")
            n_steps = lens.pop() if lens else None
        for k, v in self.values.items():
            if v.ndim and v.shape[0] != n_steps:
                raise ForcingError(
                    f"forcing {k!r} has {v.shape[0]} steps; expected {n_steps} (or a constant)"
                )
        self.n_steps = n_steps

    def sample(self, t: float, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """The values of the step that ends at model time ``t`` (s)."""
        n = round((float(t) - self.t0) / self.dt)
        if (
            abs(self.t0 + n * self.dt - float(t)) > 1e-6 * self.dt
            or n < 1
            or (self.n_steps is not None and n > self.n_steps)
        ):
            raise ForcingError(
                f"{self.name}: covers the ends of steps 1..{self.n_steps} of {self.dt:g} s from "
                f"t = {self.t0:g} s but t = {float(t):g} s was asked for"
            )
        return {k: (v[n - 1] if v.ndim else v).to(dtype) for k, v in self.values.items()}


# -- the box: a Model ----------------------------------------------------------------------------------------
class BoxModel(Model):
    """The 0-D box (see the module docstring) as a :class:`~pelagos.core.model.Model`: run, calibrate,
    assimilate and gradcheck it; :func:`run_box` runs it through :class:`~pelagos.core.simulation.Simulation`.

    One step ``t -> t + dt``: the environment from the forcing at ``t + dt`` and the light of the state at
    ``t``, then the sources over ``dt``. State: ``{global name: (*batch, 1)}`` for interior variables,
    ``(*batch,)`` for bottom/surface ones, ``"_means"`` (running-mean buffers) when a model asks for temporal
    means, and ``"_diag"`` with ``step_diagnostics``. Parameters: those of the system (``"npzd.rmax"``, …).

    Args:
        system: a :class:`BGCSystem`.
        forcing: a :class:`BoxForcing`, a :class:`StepForcing`, a FABM 0-D env file path, or a dict of
            constants (``None``: no forcing; :meth:`environment` of given values still works).
        depth: box thickness (m); the biology sits at its centre.
        background_extinction: PAR extinction of clear water (m-1).
        par_fraction: PAR / shortwave at the surface.
        apply_self_shading: add the biology's extinction ``k_bio`` to the background.
        method: source integrator (``euler``, ``rk2``, ``rk4``, ``mp``, ``mprk2``, …).
        dt: time step (s).
        step_diagnostics: ``False`` (default): :meth:`output` computes the diagnostics and ``PAR`` of the
            state it is given. ``True``: as FABM's 0-D driver, the diagnostics of each step (its first source
            evaluation, at the state at its start), ``PAR`` and ``surface_PAR`` of the step are carried in the
            state (``"_diag"``, NaN before the first step) and output from there.
    """

    def __init__(
        self,
        system: BGCSystem,
        forcing: BoxForcing | StepForcing | str | Path | Mapping[str, float] | None = None,
        *,
        depth: float = 10.0,
        background_extinction: float = 0.05,
        par_fraction: float = 1.0,
        apply_self_shading: bool = True,
        method: str | int = "euler",
        dt: float = 1800.0,
        step_diagnostics: bool = False,
    ) -> None:
        super().__init__()
        if forcing is None:
            forcing = BoxForcing({})  # none: only :meth:`environment` of given forcing values works
        elif isinstance(forcing, str | Path):
            forcing = BoxForcing.from_file(forcing)
        elif isinstance(forcing, Mapping):
            forcing = BoxForcing(dict(forcing))
        if not isinstance(forcing, BoxForcing | StepForcing):
            raise ForcingError(
                f"box forcing must be a BoxForcing, a StepForcing, an env file or a dict; got {type(forcing)}"
            )
        if depth <= 0:
            raise ConfigError(f"box depth must be > 0 m; got {depth}")
        if dt <= 0:
            raise ConfigError(f"dt must be > 0 s; got {dt}")
        method_name(method)  # fail early on a bad name
        self.system = system
        self.forcing = forcing
        self.depth = float(depth)
        self.background_extinction = float(background_extinction)
        self.par_fraction = float(par_fraction)
        self.apply_self_shading = bool(apply_self_shading)
        self.method = method
        self.dt = float(dt)
        self.step_diagnostics = bool(step_diagnostics)
        # Running means the models ask for: key -> (variable, period, resolution) (FABM temporal_mean).
        self.means: dict[str, tuple[str, float, float]] = {}
        for m in system.models.values():
            for dep in m.dependencies.values():
                if dep.mean_period is not None:
                    self.means[dep.key] = (dep.standard_name, dep.mean_period, dep.mean_resolution or 3600.0)
        # Skip the surface/bottom calls when no instance implements them.
        self._has_boundary = any(
            type(m).do_surface is not BGCModel.do_surface or type(m).do_bottom is not BGCModel.do_bottom
            for m in system.models.values()
        )

    @property
    def epoch(self) -> _dt.datetime | None:
        return self.forcing.epoch

    def _dtype(self) -> torch.dtype:
        p = next(iter(self.system.parameters()), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    # -- environment -----------------------------------------------------------------------------------------
    def environment(self, state: Mapping[str, torch.Tensor], forcing: Mapping[str, torch.Tensor]) -> dict:
        """Box environment (interior ``(..., 1)``, horizontal ``(...,)``) from one step's forcing values."""
        ref = state[self.system.interior_names[0]]
        f = {k: torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for k, v in forcing.items()}
        col = lambda x: x.unsqueeze(-1)  # noqa: E731 - horizontal (...,) -> interior (..., 1)
        env: dict[str, Any] = {k: (col(v) if _domain(k) == "interior" else v) for k, v in f.items()}
        k_bio = self.system.light_extinction(state, env) if self.apply_self_shading else torch.zeros_like(ref)
        light = self.system.light_model
        if PAR not in f:
            if SWR_SF not in f and SURFACE_PAR not in f:
                raise ForcingError(f"box forcing needs {SWR_SF!r} (W m-2) or {PAR!r}")
            if light is not None:
                h = torch.full_like(ref, self.depth)
                out = light.column_light(f[SWR_SF], h, k_bio)
                env.setdefault(SURFACE_PAR, out["par0"])
                env[PAR] = out["par"]
                env["downwelling_shortwave_flux"] = out["swr"]
            else:
                par_sf = f[SURFACE_PAR] if SURFACE_PAR in f else self.par_fraction * f[SWR_SF]
                env.setdefault(SURFACE_PAR, par_sf)
                k = k_bio + self.background_extinction
                env[PAR] = col(par_sf) * torch.exp(-0.5 * self.depth * k)
        env[EXTINCTION] = k_bio + self.background_extinction
        env.setdefault("cell_thickness", torch.full_like(ref, self.depth))
        env.setdefault("depth", torch.full_like(ref, 0.5 * self.depth))
        env.setdefault("pressure", torch.full_like(ref, 0.5 * self.depth))  # dbar ~ m, as fabm0d
        env.setdefault("bottom_depth", torch.full_like(ref[..., 0], self.depth))
        return env

    def _svars(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {v.name: state[v.name] for v in self.system.variables}

    def _env(self, svars: Mapping[str, torch.Tensor], t: float) -> dict:
        ref = svars[self.system.interior_names[0]]
        return self.environment(svars, self.forcing.sample(t, ref.dtype))

    # -- sources of one step ---------------------------------------------------------------------------------
    def _rates(
        self, st: Mapping[str, torch.Tensor], env: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        rates, dg = self.system.interior_sources(st, env)
        if self._has_boundary:
            for k, v in self._boundary_rates(st, env).items():
                rates[k] = rates[k] + v if k in rates else v
        return rates, dg

    def _boundary_rates(self, st, env):
        sysm = self.system
        top = {k: (v[..., 0] if k in sysm.interior_names else v) for k, v in st.items()}
        env_b = {
            k: (v[..., 0] if _domain(k) == "interior" and torch.is_tensor(v) else v) for k, v in env.items()
        }
        out: dict[str, torch.Tensor] = {}
        for fn in (sysm.surface_fluxes, sysm.bottom_fluxes):
            fl, _ = fn(top, env_b)
            for k, v in fl.items():
                if k in sysm.interior_names:
                    v = v.unsqueeze(-1) / self.depth  # flux per m2 into the one layer
                out[k] = out[k] + v if k in out else v
        return out

    def sources_step(
        self, svars: Mapping[str, torch.Tensor], env: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """One source step over ``dt`` with a fixed environment (light already in ``env``).

        Returns (new variables, the interior diagnostics of the first source evaluation at the state at the
        start of the step; ``None`` for the Patankar schemes, which do not evaluate the rates).
        """
        first: list[dict[str, torch.Tensor]] = []

        def rhs(st):
            rates, dg = self._rates(st, env)
            if not first:
                first.append(dg)
            return rates

        ppdd = None
        if method_name(self.method) in ("mp", "mprk2"):

            def ppdd(st):
                t = self.system.production_destruction(st, env)
                if not self._has_boundary:
                    return t
                return merge_transfers(t, transfers_from_rates(self._boundary_rates(st, env)))

        new = integrate_sources(rhs, dict(svars), self.dt, self.method, ppdd=ppdd)
        return new, (first[0] if first else None)

    # -- the Model contract ----------------------------------------------------------------------------------
    def initial_state(
        self,
        batch: int | None = None,
        *,
        values: Mapping[str, Any] | None = None,
        t0: float = 0.0,
        dtype: torch.dtype | None = None,
    ) -> dict:
        """The system's initial values (+ ``values``: name -> number or ``(B,)``); ``batch=None``: no batch
        dim.

        ``t0`` (s): the model time the run starts at (running means start from the environment of the first
        step, as FABM's 0-D driver).
        """
        state = dict(self.system.initial_state(batch, nz=1, dtype=dtype or self._dtype()))
        for n, v in (values or {}).items():
            if n not in state:
                raise ConfigError(f"initial value for unknown variable {n!r}; valid: {', '.join(state)}")
            v = torch.as_tensor(v, dtype=state[n].dtype)
            if state[n].shape[-1:] == (1,) and n in self.system.interior_names and v.ndim:
                v = v.unsqueeze(-1)
            state[n] = torch.broadcast_to(v, state[n].shape).clone()
        return self.with_buffers(state, t0=t0)

    def with_buffers(self, svars: Mapping[str, torch.Tensor], *, t0: float = 0.0) -> dict:
        """A state of this model from the variables ``svars`` at model time ``t0``: adds the running-mean
        buffers (started from the environment of the first step) and, with ``step_diagnostics``, the (NaN)
        diagnostics."""
        state = dict(self._svars(svars))
        if not self.means and not self.step_diagnostics:
            return state
        env = self._env(state, float(t0) + self.dt)
        if self.means:
            state["_means"] = {
                key: running_mean_init(env[base], period=per, resolution=res)
                for key, (base, per, res) in self.means.items()
            }
            for key, buf in state["_means"].items():
                env[key] = buf["mean"]
        if self.step_diagnostics:
            _, dg = self.system.interior_sources(state, env)
            state["_diag"] = {k: torch.full_like(v, math.nan) for k, v in self._step_diag(dg, env).items()}
        return state

    @staticmethod
    def _step_diag(dg: Mapping[str, torch.Tensor], env: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = {**dg, "PAR": env[PAR]}
        if SURFACE_PAR in env:
            out["surface_PAR"] = env[SURFACE_PAR]
        return out

    def step(self, state: Mapping[str, Any], t: float | torch.Tensor) -> dict:
        t = float(t)
        svars = self._svars(state)
        env = self._env(svars, t + self.dt)
        means = None
        if self.means:
            means = {}
            for key, (base, per, res) in self.means.items():
                means[key] = running_mean_update(
                    state["_means"][key], env[base], t + self.dt, t, period=per, resolution=res
                )
                env[key] = means[key]["mean"]
        new, dg = self.sources_step(svars, env)
        new = dict(new)
        if means is not None:
            new["_means"] = means
        if self.step_diagnostics:
            if dg is None:  # Patankar schemes do not evaluate the rates
                _, dg = self.system.interior_sources(svars, env)
            new["_diag"] = self._step_diag(dg, env)
        return new

    # -- variables -------------------------------------------------------------------------------------------
    def output_variables(self) -> list[Variable]:
        """The system's variables and diagnostics, ``PAR`` at the box centre (and ``surface_PAR`` with
        ``step_diagnostics``) and the box totals (per m², ``total_<quantity>`` as the column's)."""
        sysm = self.system
        mean = not self.step_diagnostics  # step diagnostics are the values of the last step
        out = [Variable(v.name, v.units, v.long_name or v.name, (), "state") for v in sysm.variables]
        out += [
            Variable(d.name, d.units, d.long_name or d.name, (), "diagnostic", mean=mean)
            for d in sysm.diagnostics
            if d.domain == "interior"
        ]
        out.append(Variable("PAR", "W m-2", "photosynthetically active radiation at the box centre", (),
                            "diagnostic", mean=mean))  # fmt: skip
        if self.step_diagnostics:
            out.append(Variable("surface_PAR", "W m-2", "photosynthetically active radiation at the surface",
                                (), "diagnostic"))  # fmt: skip
        for q in self._conserved_names():
            out.append(Variable(_total(q), TOTAL_UNITS, f"box total of {q} (per m2)", (), "diagnostic"))
        return out

    def _conserved_names(self) -> list[str]:
        names: list[str] = []
        for m in self.system.models.values():
            for v in m.state_variables.values():
                names += [q for q in getattr(v, "conserved", {}) or {} if q not in names]
        return names

    def output(self, state: Mapping[str, Any], t: float) -> dict[str, torch.Tensor]:
        sysm = self.system
        svars = self._svars(state)
        out = {n: (x[..., 0] if n in sysm.interior_names else x) for n, x in svars.items()}
        ref = out[sysm.interior_names[0]]
        if "_diag" in state:
            diag = dict(state["_diag"])
            par = diag.pop("PAR")
            surface = diag.pop("surface_PAR", None)
            if surface is not None:
                out["surface_PAR"] = surface
        else:
            env = self._env(svars, float(t))
            if "_means" in state:
                for key, buf in state["_means"].items():
                    env[key] = buf["mean"]
            _, diag = sysm.interior_sources(svars, env)
            par = env[PAR]
        interior = {d.name for d in sysm.diagnostics if d.domain == "interior"}
        for name in diag:  # in the order the system returns them
            if name in interior:
                x = torch.as_tensor(diag[name])
                x = x[..., 0] if x.ndim and x.shape[-1] == 1 else x
                out[name] = torch.broadcast_to(x, ref.shape)
        out["PAR"] = torch.broadcast_to(par[..., 0], ref.shape)
        h = torch.full_like(svars[sysm.interior_names[0]], self.depth)
        for q, tot in sysm.conserved_quantities(svars, h=h).items():
            out[_total(q)] = tot
        return out


def _total(q: str) -> str:
    """Name of the box total of conserved quantity ``q`` (as the column's: ``total_<q>``)."""
    return q if q.startswith("total_") else f"total_{q}"


def _domain(key: str) -> str:
    """interior | horizontal | global of an environment key (running means as their variable)."""
    base = key.partition("@mean")[0]
    return STANDARD_VARIABLES.get(base, ("", "interior"))[1]


# -- running the box: the one run loop -----------------------------------------------------------------------
def _run(model: BoxModel, state: Mapping[str, Any], n_steps: int, save_every: int, *, grad: bool):
    """``Simulation`` of ``model`` from ``state`` (model time 0) with a MemoryWriter of every output, saved
    every ``save_every`` steps: ``{name: (n_save, ...)}`` (a last partial interval is not kept)."""
    from ..core.simulation import MemoryWriter, Simulation

    writer = MemoryWriter(list(model.output(state, 0.0)), detach=not grad)
    Simulation(
        model, state, n_steps=n_steps, output_every=save_every, writers=[writer], grad=grad, progress=False
    ).run()
    n_save = 1 + n_steps // save_every
    return {k: v[:n_save] for k, v in writer.stacked().items() if k != "time"}


def run_box(
    system: BGCSystem,
    forcing: str | Path | Mapping[str, Any] | None = None,
    *,
    dt: float = 1800.0,
    n_steps: int | None = None,
    start: str | np.datetime64 | None = None,
    stop: str | np.datetime64 | None = None,
    depth: float = 10.0,
    background_extinction: float = 0.05,
    par_fraction: float = 1.0,
    apply_self_shading: bool = True,
    method: str | int = "euler",
    state0: Mapping[str, torch.Tensor] | None = None,
    save_every: int = 1,
    dtype: torch.dtype = torch.float64,
    extra_env: Mapping[str, Any] | None = None,
):
    """Run the box (:class:`BoxModel` through :class:`~pelagos.core.simulation.Simulation`) and return an
    ``xarray.Dataset`` of the trajectory.

    ``forcing``: a FABM 0-D env file (default: none; then pass tensors), or a dict of per-step tensors
    ``(n_steps, ...)``/constants keyed by standard names (``surface_downwelling_shortwave_flux``,
    ``temperature``, ``practical_salinity``, or PAR directly). ``extra_env`` adds constants/tensors such as
    ``bottom_stress``. Times: from the file (``start``/``stop`` default to its first/last record) or
    ``n_steps`` steps of ``dt`` seconds.

    The dataset holds the state variables, the diagnostics of each step with ``PAR`` (box centre) and
    ``surface_PAR`` (as FABM's 0-D driver: NaN at the initial time), and the box totals per m²
    ``total_<quantity>`` (as the column's).
    """

    times = None
    if forcing is None:
        raise ConfigError("run_box needs forcing: a FABM 0-D env file path or a dict of tensors")
    if isinstance(forcing, str | Path):
        data = read_env_file(forcing)
        t_file = data["time"]
        t0 = np.datetime64(start, "s") if start is not None else t_file[0]
        t1 = np.datetime64(stop, "s") if stop is not None else t_file[-1]
        if n_steps is None:
            n_steps = int((t1 - t0) / np.timedelta64(1, "s") // dt)
        if n_steps < 1:
            raise ConfigError(f"run_box: start {t0} .. stop {t1} holds no step of {dt} s")
        sec = lambda t: (t - t_file[0]) / np.timedelta64(1, "s")  # noqa: E731
        step_s = sec(t0) + dt * np.arange(1, n_steps + 1)
        f_file = sec(t_file).astype(float)
        forcing_t = {
            k: torch.tensor(_interp(step_s, f_file, data[k], k), dtype=dtype) for k in FORCING_COLUMNS
        }
        times = t0 + (dt * np.arange(0, n_steps + 1)).astype("timedelta64[s]")
        doy = (times[1:] - times[1:].astype("datetime64[Y]")) / np.timedelta64(1, "D")
        forcing_t["number_of_days_since_start_of_the_year"] = torch.tensor(doy.astype(float), dtype=dtype)
    else:
        forcing_t = {k: torch.as_tensor(v, dtype=dtype) for k, v in forcing.items()}
        if n_steps is None:
            lens = {int(v.shape[0]) for v in forcing_t.values() if v.ndim}
            if len(lens) != 1:
                raise ConfigError("run_box: give n_steps (forcing tensors have no common length)")
            n_steps = lens.pop()
    for k, v in (extra_env or {}).items():
        forcing_t[k] = torch.as_tensor(v, dtype=dtype)
    model = BoxModel(
        system,
        StepForcing(forcing_t, dt, n_steps=n_steps),
        depth=depth,
        background_extinction=background_extinction,
        par_fraction=par_fraction,
        apply_self_shading=apply_self_shading,
        method=method,
        dt=dt,
        step_diagnostics=True,
    )
    if state0 is None:
        state0 = system.initial_state((), nz=1, dtype=dtype)
    out = _run(model, model.with_buffers(state0), n_steps, save_every, grad=False)
    return _dataset(model, out, times, save_every)


def _dataset(model: BoxModel, out: Mapping[str, torch.Tensor], times, save_every: int):
    """The records of a box run as an ``xarray.Dataset`` (CF-style attributes, global FABM names)."""
    import xarray as xr

    system = model.system
    n_save = next(iter(out.values())).shape[0]
    if times is not None:
        tcoord = times[::save_every][:n_save]
    else:
        tcoord = model.dt * save_every * np.arange(n_save)
    ds = xr.Dataset(coords={"time": tcoord})
    if times is None:
        ds["time"].attrs["units"] = "s"

    def put(name, attrs):
        a = out[name].detach().cpu().numpy()
        ds[name] = xr.DataArray(a, dims=("time", *[f"batch{i}" for i in range(a.ndim - 1)]), attrs=attrs)

    for v in system.variables:
        put(v.name, {"units": v.units, "long_name": v.long_name or v.local})
    dinfo = {d.name: d for d in system.diagnostics}
    for k in [*(n for n in out if n in dinfo), "PAR", "surface_PAR"]:
        if k in out:
            d = dinfo.get(k)
            put(k, {"units": d.units, "long_name": d.long_name} if d else {"units": "W m-2"})
    for q in model._conserved_names():
        if _total(q) in out:
            put(_total(q), {"units": TOTAL_UNITS, "long_name": f"box total of {q}"})
    ds.attrs.update(
        {
            "title": "pelagos 0-D box run",
            "depth_m": model.depth,
            "dt_s": model.dt,
            "method": str(model.method),
            "background_extinction_per_m": model.background_extinction,
            "par_fraction": model.par_fraction,
        }
    )
    return ds


class BoxDriver:
    """Deprecated: use :class:`BoxModel` (with :class:`StepForcing` for per-step tensors) and
    :func:`run_box` or :func:`pelagos.core.rollout`. A thin wrapper kept for compatibility."""

    def __init__(self, system: BGCSystem, **options: Any) -> None:
        warnings.warn(
            "BoxDriver is deprecated: use BoxModel (bgc.box) with run_box, Simulation or core.rollout",
            DeprecationWarning,
            stacklevel=2,
        )
        self.system = system
        self.options = options
        self.model = BoxModel(system, **options)
        self.depth, self.dt, self.method = self.model.depth, self.model.dt, self.model.method

    def environment(self, state: Mapping[str, torch.Tensor], forcing: Mapping[str, torch.Tensor]) -> dict:
        """:meth:`BoxModel.environment`."""
        return self.model.environment(state, forcing)

    def simulate(
        self,
        state0: Mapping[str, torch.Tensor],
        forcing: Mapping[str, torch.Tensor],
        n_steps: int,
        *,
        save_every: int = 1,
        diagnostics: bool = True,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run :class:`BoxModel` over per-step ``forcing`` through the run loop (differentiable): (states at
        the saved times ``(n_save, ...)`` including the initial one, step diagnostics with PAR and surface PAR
        at the saved steps ``(n_save - 1, ...)``)."""
        model = BoxModel(
            self.system, StepForcing(forcing, self.dt, n_steps=n_steps), step_diagnostics=True, **self.options
        )
        state = model.with_buffers(state0)
        traj = {k: [] for k in state0}
        diags: dict[str, list] = {}
        from ..core.simulation import Simulation

        def keep(sim, st, t, step):
            if step % save_every == 0:
                for k in traj:
                    traj[k].append(st[k])
                if diagnostics:
                    for k, v in st["_diag"].items():
                        diags.setdefault(k, []).append(v)

        for k in traj:
            traj[k].append(state0[k])
        Simulation(model, state, n_steps=n_steps, output_every=save_every, callbacks=[keep], grad=True,
                   progress=False).run()  # fmt: skip
        return {k: torch.stack(v) for k, v in traj.items()}, {k: torch.stack(v) for k, v in diags.items()}


@dataclass
class BoxOptions:
    """``model:`` options of kind ``box``: the biology (a fabm.yaml) and the box geometry and light."""

    fabm_yaml: str | None = "builtin:fabm/fabm-gotm-npzd.yaml"
    instances: dict | None = None
    depth: float = 10.0
    background_extinction: float = 0.05
    par_fraction: float = 1.0
    apply_self_shading: bool = True


@dataclass
class BoxForcingOptions:
    """``forcing:`` section of kind ``box``: a FABM 0-D env file, or constants (W m-2, degC, PSU)."""

    file: str | None = None
    swr: float = 200.0
    temperature: float = 12.0
    salinity: float = 35.0


@dataclass
class BoxNumerics:
    """``numerics:`` section of kind ``box``: the source integrator (``euler``, ``rk2``, ``rk4``, ``mp``…)."""

    method: str = "euler"


@dataclass
class BoxInitial:
    """``initial:`` section of kind ``box``: ``values`` {global name: number} over the initial values."""

    values: dict | None = None


def _build(options: BoxOptions, ctx: BuildContext) -> BoxModel:
    dtype = getattr(torch, ctx.dtype)
    fo = ctx.forcing if ctx.forcing is not None else BoxForcingOptions()
    num = ctx.numerics if ctx.numerics is not None else BoxNumerics()
    if fo.file:
        forcing = BoxForcing.from_file(ctx.path(fo.file))
    else:
        forcing = BoxForcing.constant(
            **{SWR_SF: fo.swr, "temperature": fo.temperature, "practical_salinity": fo.salinity}
        )
    source: Any = ctx.path(options.fabm_yaml) if options.fabm_yaml else {"instances": options.instances}
    system = BGCSystem.from_yaml(source, dtype=dtype)
    return BoxModel(
        system,
        forcing,
        depth=options.depth,
        background_extinction=options.background_extinction,
        par_fraction=options.par_fraction,
        apply_self_shading=options.apply_self_shading,
        method=num.method,
        dt=float(ctx.dt) if ctx.dt is not None else 1800.0,
    ).to(dtype)


def _example() -> BoxModel:
    """gotm/npzd in a 10 m box under a light that varies over the day (float64)."""
    from .npzd import NPZD

    t = np.arange(0, 2 * 86400 + 1, 3600.0)
    swr = 50.0 + 250.0 * np.clip(np.sin(2 * np.pi * (t / 86400.0 - 0.25)), 0.0, None)
    forcing = BoxForcing(
        {SWR_SF: swr, "temperature": np.full_like(t, 12.0), "practical_salinity": np.full_like(t, 35.0)}, t
    )
    return BoxModel(BGCSystem({"npzd": NPZD()}), forcing, dt=1800.0).to(torch.float64)


KIND = ModelKind(
    "box",
    _build,
    options=BoxOptions,
    forcing=BoxForcingOptions,
    numerics=BoxNumerics,
    initial=BoxInitial,
    example=_example,
    description="0-D box of FABM-style biogeochemistry (FABM's fabm0d), forced by light and temperature",
    conformance={
        "steps": 3,
        "t0": 6 * 3600.0,
        "free": ["npzd.rmax", "npzd.gmax", "npzd.alpha"],
        "initial": {"values": {"npzd_phy": 1.0, "npzd_zoo": 0.2, "npzd_det": 1.5}},
    },
)

__all__ = [
    "KIND",
    "BoxDriver",
    "BoxForcing",
    "BoxModel",
    "StepForcing",
    "mean_key",
    "read_env_file",
    "run_box",
]
