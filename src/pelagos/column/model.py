"""The water-column model: FABM-style biogeochemistry transported and lit as GOTM does, driven by physics.

One step ``t -> t + dt`` (GOTM+FABM's ``do_gotm_fabm`` order, watercolumn.md §2.6):

1. forcing: ``h``, ``temp``, ``salt``, ``I_0`` (and ``bottom_stress``) at ``t + dt`` (GOTM updates the mean
   flow before the biology), ``nuh`` at ``t`` (GOTM's biology diffuses with the turbulence of the previous
   step: the ``nuh`` written at time t is used for the step t -> t+dt; ``nuh_lag=False`` uses ``t + dt``);
2. sinking/rising of every variable with a vertical velocity: ``advect_center`` (P2_PDM by default,
   conservative), face velocities interpolated from the centres with **zero at the surface and bottom faces**;
3. diffusion of all interior variables with ``nuh_scale · nuh`` (one tridiagonal matrix for all tracers),
   ``cnpar = 1``, no-flux Neumann boundaries, ``posconc`` for variables with minimum >= 0;
4. (optional) repair: clip to the variables' minimum;
5. light: ``gotm_light`` with the bio-extinction of the current state (Jerlov I by default:
   A = 0.58, g1 = 0.35 m, g2 = 23 m); surface PAR handed to the biology = ``I_0`` (GOTM's quirk);
6. running means of PAR / surface PAR (if the biology asks for them) updated to ``t + dt``;
7. sources: interior rates + surface fluxes / h_top in the top layer + bottom fluxes / h_bottom in the
   bottom layer, integrated over ``dt`` with the chosen scheme (``bgc.integrate.integrate_sources``:
   ``euler`` as GOTM's default, ``rk2``, ``rk4``, ``mp``, ...). Light is recomputed at every stage.

The state is a dict: ``{global name: (B, nz)}`` for interior variables, ``(B,)`` for bottom/surface ones, and,
when needed, ``"_means": {key: buffer}`` (see :mod:`pelagos.core.running_mean`). Batch ``B`` = columns.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError, ForcingError
from ..core.model import Coordinate, Model, Variable
from ..core.running_mean import running_mean_apply, running_mean_init, running_mean_update
from .forcing import ColumnForcing

__all__ = ["ColumnModel", "run_column", "to_dataset"]

_PAR = "downwelling_photosynthetic_radiative_flux"
_PAR0 = "surface_downwelling_photosynthetic_radiative_flux"
_SWR0 = "surface_downwelling_shortwave_flux"


def _numerics():
    """The column numerics (advection, diffusion, light), imported on first use."""
    from . import advection, diffusion, light

    return advection, diffusion, light


def _shared_rows(w: torch.Tensor) -> torch.Tensor:
    """``w`` (B, nz) reduced to (1, nz) when every column has the same values and no derivative flows through
    it (constant sinking speeds): advection then works on one velocity row instead of B. Kept whole otherwise,
    so gradients to per-column parameters are never merged."""
    from ._checks import concrete

    # A forward-mode dual tensor (torch.autograd.forward_ad) has requires_grad False but carries a tangent.
    has_tangent = torch.autograd.forward_ad.unpack_dual(w).tangent is not None
    if w.ndim >= 2 and w.shape[-2] > 1 and w.stride(-2) == 0:  # a broadcast view: one row by construction
        return w[..., :1, :]
    if w.ndim >= 2 and w.shape[-2] > 1 and not w.requires_grad and not has_tangent and concrete(w):
        first = w[..., :1, :]
        if torch.equal(w, first.expand_as(w)):
            return first
    return w


class ColumnModel(Model):
    """A batch of ``B`` water columns carrying a :class:`~pelagos.bgc.system.BGCSystem` (see module doc).

    Args:
        bgc: a ``BGCSystem``, or a fabm.yaml path / dict (read with ``BGCSystem.from_yaml``).
        forcing: a :class:`ColumnForcing` (its ``n_columns`` is 1 = shared, or ``B``).
        dt: time step (s). GOTM's NNS case uses 3600.
        ode_method: source integrator name understood by ``bgc.integrate.integrate_sources``.
        sinking_method: advection limiter for sinking (``"P2_PDM"`` as FABM's default ``w_adv_discr``).
        cnpar: implicitness of diffusion (1 = GOTM default).
        light: Jerlov type name (``"I"``, ``"IA"``, ...) or ``(A, g1, g2)``; default Jerlov I, what the
            GOTM nns_annual run used (its ``light_extinction.method`` is ``jerlov-i``).
        nuh_lag: use the forcing's ``nuh`` at the start of the step (GOTM) instead of at its end.
        repair: clip to the variables' minimum after transport (GOTM's ``repair_state``).
        split_factor: number of source sub-steps per step (GOTM's ``split_factor``).
        chunk_columns: advance the columns in chunks of this many (same result; keeps each chunk's working set
            in cache: about 1000 is fastest on one CPU core for the NNS case). ``None``: all at once.
        compile: run the step as one compiled program (``torch.compile``/Inductor: fused C++ loops on CPU);
            ``True``, ``False`` or ``"auto"`` (on when a C++ compiler is found). Same results as the plain
            step; see :mod:`pelagos.column.compiled` for what it costs (compile time) and when it falls back.
        block_steps: with ``compile`` on, the run loop (:func:`pelagos.core.rollout`, ``Simulation``) advances
            up to this many steps per compiled call (:meth:`step_block`; 1: one step per call). Same results;
            fewer calls, so less per-call overhead (docs/column_compiled.md).

    Parameters (declared, so they can be made free and batched with ``using``): ``nuh_scale`` (factor on the
    forcing's ``nuh``) and ``I0_scale`` (factor on ``I_0``), both 1 by default; the BGC parameters appear as
    ``"<instance>.<name>"`` (e.g. ``"npzd.rmax"``).
    """

    def __init__(
        self,
        bgc: Any,
        forcing: ColumnForcing,
        *,
        dt: float = 3600.0,
        ode_method: str = "euler",
        sinking_method: str = "P2_PDM",
        cnpar: float = 1.0,
        light: str | tuple[float, float, float] = "I",
        nuh_lag: bool = True,
        repair: bool = False,
        split_factor: int = 1,
        chunk_columns: int | None = None,
        compile: bool | str = False,
        block_steps: int = 12,
    ) -> None:
        super().__init__()
        if isinstance(bgc, (str, os.PathLike, Mapping)):
            from ..bgc.system import BGCSystem

            bgc = BGCSystem.from_yaml(Path(bgc) if isinstance(bgc, str) else bgc)
        self.bgc = bgc
        if not isinstance(forcing, ColumnForcing):
            raise ForcingError(
                "forcing must be a ColumnForcing (from_gotm, from_dataset, constant, ...); got "
                f"{type(forcing)}"
            )
        self.forcing = forcing
        self.dt = float(dt)
        if not self.dt > 0:
            raise ConfigError(f"dt must be > 0 s; got {dt!r}")
        from ..bgc.integrate import method_name

        self.ode_method = method_name(ode_method)
        self.sinking_method = sinking_method
        self.cnpar = float(cnpar)
        if isinstance(light, str):
            from .light import jerlov

            light = jerlov(light)
        self.A, self.g1, self.g2 = (float(x) for x in light)
        self.nuh_lag = bool(nuh_lag)
        self.repair = bool(repair)
        if int(split_factor) < 1:
            raise ConfigError(f"split_factor must be >= 1; got {split_factor}")
        self.split_factor = int(split_factor)
        if chunk_columns is not None and int(chunk_columns) < 1:
            raise ConfigError(f"chunk_columns must be >= 1 or None; got {chunk_columns}")
        self.chunk_columns = None if chunk_columns is None else int(chunk_columns)
        from .compiled import compile_mode

        self.compile_mode = compile_mode(compile)
        if isinstance(block_steps, bool) or int(block_steps) < 1:
            raise ConfigError(f"block_steps must be an int >= 1 (1: one step per call); got {block_steps!r}")
        self.block_steps = int(block_steps)
        self.declare_parameter(
            "nuh_scale",
            1.0,
            units="-",
            bounds=(0.0, None),
            description="factor on the forcing's diffusivity nuh",
        )
        self.declare_parameter(
            "I0_scale", 1.0, units="-", bounds=(0.0, None), description="factor on the surface shortwave I_0"
        )
        self._setup_variables()

    # -- variables and what the biology needs -------------------------------------------------------------
    def _setup_variables(self) -> None:
        bgc = self.bgc
        self.interior = list(bgc.interior_names)
        self.bottom = list(bgc.bottom_names)
        self.surface = list(bgc.surface_names)
        info = {v.name: v for v in bgc.variables} if hasattr(bgc, "variables") else {}
        self._minimum = {
            n: getattr(info.get(n), "minimum", 0.0) for n in self.interior + self.bottom + self.surface
        }
        self.posconc = all(self._minimum[n] is not None and self._minimum[n] >= 0 for n in self.interior)
        self._surface_flag = self._overrides("do_surface")
        self._bottom_flag = self._overrides("do_bottom")
        req = dict(getattr(bgc, "required_env", {}) or {})
        self.required_env = req
        # running means: keys "standard_name@meanPERIOD"
        self.means: dict[str, tuple[str, float, float]] = {}
        resolution = {}
        for m in getattr(bgc, "models", {}).values():
            for dep in getattr(m, "dependencies", {}).values():
                if getattr(dep, "mean_period", None):
                    resolution[dep.key] = float(dep.mean_resolution or 3600.0)
        for key in req:
            if "@mean" in key:
                std, _, per = key.partition("@mean")
                self.means[key] = (std, float(per), resolution.get(key, 3600.0))
        if "bottom_stress" in req and not self.forcing.has_bottom_stress:
            raise ForcingError(
                f"the biology needs 'bottom_stress' (Pa) but forcing {self.forcing.name!r} has none (no "
                "'taub' in the "
                "file); pass bottom_stress=<Pa, constant or series> to "
                "ColumnForcing.from_gotm/ColumnForcing(...)"
            )

    @property
    def nz(self) -> int:
        return self.forcing.nz

    # -- environment -------------------------------------------------------------------------------------
    def _physics(self, t: float, *, for_step: bool) -> dict[str, torch.Tensor]:
        """Forcing for the step starting at ``t`` (for_step) or at the instant ``t``; scaled by parameters."""
        return self._scale_physics(self._raw_physics(t, for_step=for_step))

    def _raw_physics(self, t: float, *, for_step: bool) -> dict[str, torch.Tensor]:
        """The forcing's fields for :meth:`_physics`, before the parameters scale them (no parameter inside:
        the compiled step takes these as inputs)."""
        f = self.forcing
        t1 = t + self.dt if for_step else t
        names = ["h", "temp", "salt", "I_0"] + (["bottom_stress"] if f.has_bottom_stress else [])
        phys = f.sample(t1, names)
        phys["nuh"] = f.sample(t if (for_step and self.nuh_lag) else t1, ["nuh"])["nuh"]
        phys["doy"] = torch.tensor(f.day_of_year(t1), dtype=phys["h"].dtype)
        return phys

    def _scale_physics(self, raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        phys = dict(raw)
        phys["nuh"] = phys["nuh"] * self.param_b("nuh_scale", 2)  # (Bf or B, nz+1)
        phys["I_0"] = phys["I_0"] * self.param_b("I0_scale", 1)
        return phys

    def _light(self, state: Mapping[str, torch.Tensor], phys: Mapping[str, torch.Tensor], env: dict) -> dict:
        k_bio = self.bgc.light_extinction(state, env)
        if k_bio is None:
            k_bio = torch.zeros_like(phys["h"])
        lm = getattr(self.bgc, "light_model", None)
        if lm is not None:  # a FABM gotm/light instance computes the light (and surface PAR = (1-a) I_0)
            lt = lm.column_light(phys["I_0"], phys["h"], k_bio)
            g2 = lm.p("g2", k_bio.ndim)
            return {"PAR": lt["par"], "SWR": lt["swr"], "k_par": 1.0 / g2 + k_bio, "PAR0": lt["par0"]}
        _, _, light = _numerics()
        return light.gotm_light(phys["I_0"], phys["h"], k_bio, A=self.A, g1=self.g1, g2=self.g2)

    def _base_env(self, phys: Mapping[str, torch.Tensor], names: Any = None) -> dict[str, torch.Tensor]:
        """The biology's environment from the (scaled) physics; ``names``: a collection of the entries
        wanted, the depth sums skipped when none of them needs them (the fused kernel's forcing values)."""
        from .grid import centre_depth

        h = phys["h"]
        env = {
            "temperature": phys["temp"],
            "practical_salinity": phys["salt"],
            "cell_thickness": h,
        }
        if names is None or {"depth", "pressure", "bottom_depth"} & set(names):
            depth = centre_depth(h)
            env["depth"] = depth
            # hydrostatic estimate with rho0 = 1027 kg m-3, g = 9.81 m s-2 (GOTM integrates rho instead)
            env["pressure"] = depth * (1027.0 * 9.81 / 1e4)
            env["bottom_depth"] = h.sum(-1)
        env[_PAR0] = phys["I_0"]  # GOTM links surface PAR to I_0 (total shortwave), see watercolumn.md §2.7
        env[_SWR0] = phys["I_0"]
        env["number_of_days_since_start_of_the_year"] = phys["doy"]
        if "bottom_stress" in phys:
            env["bottom_stress"] = phys["bottom_stress"]
        f = self.forcing
        if f.latitude is not None:
            env["latitude"] = f.latitude
        if f.longitude is not None:
            env["longitude"] = f.longitude
        return env

    def _full_env(self, state: Mapping[str, torch.Tensor], phys: Mapping, means: Mapping | None) -> dict:
        env = self._base_env(phys)
        lt = self._light(state, phys, env)
        env[_PAR] = lt["PAR"]
        env["downwelling_shortwave_flux"] = lt["SWR"]
        env["attenuation_coefficient_of_photosynthetic_radiative_flux"] = lt["k_par"]
        if "PAR0" in lt:
            env[_PAR0] = lt["PAR0"]
        if means:
            for key, buf in means.items():
                env[key] = buf["mean"]
        return env

    # -- sources -----------------------------------------------------------------------------------------
    def _rates(self, s: Mapping[str, torch.Tensor], phys: Mapping, means: Mapping | None):
        """Source rates of every state variable (per s) and the diagnostics, light recomputed from ``s``."""
        bgc = self.bgc
        env = self._full_env(s, phys, means)
        rates, diag = bgc.interior_sources(s, env)
        rates = dict(rates)
        h = phys["h"]
        if self.surface or self._has_surface:
            top = {n: s[n][..., -1] for n in self.interior} | {n: s[n] for n in self.surface}
            etop = {
                k: (v[..., -1] if torch.is_tensor(v) and v.ndim >= 1 and v.shape[-1] == h.shape[-1] else v)
                for k, v in env.items()
            }
            fl, d2 = bgc.surface_fluxes(top, etop)
            self._add_boundary(rates, fl, h[..., -1], -1)
            diag = {**diag, **d2}
        if self.bottom or self._has_bottom:
            bot = {n: s[n][..., 0] for n in self.interior} | {n: s[n] for n in self.bottom}
            ebot = {
                k: (v[..., 0] if torch.is_tensor(v) and v.ndim >= 1 and v.shape[-1] == h.shape[-1] else v)
                for k, v in env.items()
            }
            fl, d2 = bgc.bottom_fluxes(bot, ebot)
            self._add_boundary(rates, fl, h[..., 0], 0)
            diag = {**diag, **d2}
        for n in self.interior + self.bottom + self.surface:
            if n not in rates:
                rates[n] = torch.zeros_like(s[n])
        return rates, diag, env

    def _overrides(self, fn: str) -> bool:
        """Whether any BGC instance implements ``fn`` (``do_surface``/``do_bottom``); skipped otherwise."""
        from ..bgc.base import BGCModel

        models = getattr(self.bgc, "models", None)
        if not models:
            return True
        return any(getattr(type(m), fn, None) is not getattr(BGCModel, fn) for m in models.values())

    @property
    def _has_surface(self) -> bool:
        return self._surface_flag

    @property
    def _has_bottom(self) -> bool:
        return self._bottom_flag

    def _add_boundary(self, rates: dict, fluxes: Mapping, h_cell: torch.Tensor, k: int) -> None:
        nz = self.nz
        for n, F in fluxes.items():
            if n in self.interior:
                onehot = torch.zeros(nz, dtype=h_cell.dtype, device=h_cell.device)
                onehot[k] = 1.0
                rates[n] = rates[n] + (F / h_cell).unsqueeze(-1) * onehot
            else:  # bottom/surface-attached variable: its own source
                rates[n] = rates[n] + F if n in rates else F

    # -- the contract ------------------------------------------------------------------------------------
    @property
    def epoch(self):  # -> datetime | None
        """Calendar date of model time 0: the forcing's epoch (``None`` if the forcing has none)."""
        return self.forcing.epoch

    def initial_state(
        self,
        batch: int | None = None,
        *,
        profiles: Mapping[str, Any] | None = None,
        t0: float = 0.0,
        dtype: torch.dtype | None = None,
    ) -> dict:
        """Initial state from the BGC initial values (+ ``profiles``: name -> scalar, (nz,) or (B, nz)).

        ``batch`` = the number of columns B (every leaf has a leading dim B); ``None``: the forcing's column
        count (1 for a single forcing). ``t0`` (s) is where running means start.
        """
        f = self.forcing
        B = int(batch or f.n_columns)
        if f.n_columns not in (1, B):
            raise ForcingError(f"forcing has {f.n_columns} columns but the model runs {B}; give 1 or {B}")
        dtype = dtype or f.dtype
        state = dict(self.bgc.initial_state(B, nz=self.nz, dtype=dtype, device=f.device))
        for n, v in (profiles or {}).items():
            if n not in state:
                raise ConfigError(f"initial profile for unknown variable {n!r}; valid: {', '.join(state)}")
            v = torch.as_tensor(v, dtype=dtype)
            state[n] = torch.broadcast_to(v, state[n].shape).clone() if v.shape != state[n].shape else v
        if self.means:
            phys = self._physics(float(t0), for_step=False)
            env = self._full_env(state, phys, None)
            state["_means"] = {}
            for key, (std, period, res) in self.means.items():
                x = torch.broadcast_to(env[std], (B, *env[std].shape[1:]))
                state["_means"][key] = running_mean_init(x, period=period, resolution=res)
        return state

    def step(self, state: dict, t: float | torch.Tensor) -> dict:
        """Advance all columns from ``t`` to ``t + dt`` (pure: returns a new dict).

        With ``compile`` on (see :mod:`pelagos.column.compiled`) the step runs as one compiled program; the
        result is that of the plain step (same operations, fused)."""
        t = float(t)
        fast = self._compiled_step(state)
        if fast is not None:
            raw = self._raw_physics(t, for_step=True)
            plans = fast.mean_plans(t)

            def one(s: dict, ph: Mapping) -> dict:
                return fast(s, ph, plans)

            phys = raw
        else:
            phys = self._physics(t, for_step=True)

            def one(s: dict, ph: Mapping) -> dict:
                return self._step_columns(s, t, ph)

        return self._by_chunks(one, state, phys, 0)

    def _by_chunks(self, one: Callable, state: dict, phys: Mapping, phys_dim: int) -> Any:
        """``one(state, phys)`` over all columns, or chunk by chunk (``chunk_columns``) with the results
        joined along the column dim 0; ``phys_dim``: the column dim of the forcing tensors."""
        B = state[(self.interior + self.bottom + self.surface)[0]].shape[0]
        c = self.chunk_columns
        if c is None or c >= B:
            return one(state, phys)
        # Columns in chunks: the working set of a chunk stays in cache. Batched parameter values and
        # per-column forcing are sliced along with the state; chunks are independent: same result.
        snap = self.parameter_overrides()

        def cut(x: Any, sl: slice, dim: int = 0) -> Any:
            if isinstance(x, Mapping):
                return {k: cut(v, sl, dim) for k, v in x.items()}
            if torch.is_tensor(x) and x.ndim > dim and x.shape[dim] == B:
                return x[(slice(None),) * dim + (sl,)]
            return x

        outs = []
        for a in range(0, B, c):
            sl = slice(a, min(a + c, B))
            with self.using_only(cut(snap, sl)):
                outs.append(one(cut(state, sl), cut(phys, sl, phys_dim)))

        def join(parts: list) -> Any:
            if isinstance(parts[0], Mapping):
                return {k: join([p[k] for p in parts]) for k in parts[0]}
            if isinstance(parts[0], tuple):
                return tuple(join([p[i] for p in parts]) for i in range(len(parts[0])))
            if parts[0] is None:
                return None
            if parts[0].ndim == 0:
                return parts[0]
            return torch.cat(parts, dim=0)

        return join(outs)

    def step_block(
        self, state: dict, times: Sequence[float], means: Sequence[str] = ()
    ) -> tuple[dict, dict[str, torch.Tensor], dict | None] | None:
        """Run-loop hook (:func:`pelagos.core.rollout`, ``Simulation``): the steps starting at ``times``
        (model s, consecutive) as compiled blocks of up to ``block_steps`` steps, or ``None`` when this call
        cannot use the compiled step (``compile`` off, ``block_steps`` 1, torch.func transforms, forward-mode
        AD: the caller then calls :meth:`step` per step).

        Returns ``(state after the steps, {name: mean over the steps of output(state_j, t_j + dt)[name]},
        the outputs after the last step)`` for the names in ``means`` (the last outputs are ``None`` without
        ``means``, and may leave out the fields in ``means``). Same results as :meth:`step` (and
        :meth:`output`) step by step: the fused kernel (:mod:`pelagos.column.fused`) takes the steps where it
        can, with a gradient or forward-mode tangents too; otherwise the forcing of all the steps is sampled
        in one call, the running-mean plans are precomputed, and the steps run inside one compiled program
        (see :mod:`pelagos.column.compiled`)."""
        times = [float(t) for t in times]
        n = len(times)
        if self.block_steps < 2 or n < 1 or (n < 2 and not means) or not self._compiling():
            return None
        means = tuple(means)
        # the fused kernel first, as far as it takes the steps (the compiled step is not even built then:
        # no Inductor compilation, no C++ operator build)
        state, sums, done = self._fused_steps(state, times, means)
        if done == n and not means:
            return state, {}, None
        fast = self._compiled_step(state) if done < n else None
        if done < n and (fast is None or not hasattr(fast, "block")):  # plain, or forward mode (compiled jvp)
            # the caller steps one by one; after fused steps (a call the kernel stopped taking part-way),
            # the rest here
            return None if done == 0 else self._finish_per_step(state, times, done, means, sums)
        out = None
        k = self.block_steps
        for a in range(done, n, k):
            ts = times[a : a + k]
            raws = self._raw_block(ts, with_outputs=bool(means))
            plans = tuple(fast.mean_plans(t) for t in ts)

            def one(s: dict, r: Mapping, plans: tuple = plans) -> tuple:
                return fast.block(s, r, plans, means)

            state, part, out = self._by_chunks(one, state, raws, 1)
            sums = part if sums is None else {name: sums[name] + part[name] for name in means}
        if means and out is None:  # every step fused: the outputs after the last one but the means (the
            # run loop writes the means there; leaving them out skips the light and biology here)
            rest = [v.name for v in self.output_variables() if v.name not in means]
            out = self.output(state, times[-1] + self.dt, names=rest)
        dtype = state[self.interior[0]].dtype if self.interior else torch.float64
        mean_values = {name: (sums[name] / n).to(out[name].dtype if name in out else dtype) for name in means}
        return state, mean_values, out

    def _compiling(self) -> bool:
        """Whether ``compile`` is on for this model (``auto`` resolved: a C++ compiler is found)."""
        if self.compile_mode == "off":
            return False
        from .compiled import cxx_available

        return cxx_available()

    def _finish_per_step(self, state: dict, times: list[float], done: int, means: tuple, sums: Any) -> tuple:
        """The steps of ``times`` after the first ``done`` (fused) one by one with :meth:`step`, the means
        continued from the kernel's float64 ``sums``: what :meth:`step_block` returns."""
        sums = {q: sums[q].clone() for q in means} if means else {}
        for t in times[done:]:
            state = self.step(state, t)
            if means:
                o = self.output(state, t + self.dt, names=means)
                for q in means:
                    sums[q] += o[q].to(torch.float64)
        out = self.output(state, times[-1] + self.dt)
        return state, {q: (sums[q] / len(times)).to(out[q].dtype) for q in means}, out if means else None

    def _fused_steps(self, state: dict, times: list[float], means: tuple) -> tuple[dict, dict | None, int]:
        """The first steps of ``times`` through the fused column kernel (:mod:`pelagos.column.fused`), as
        many as it takes (all, when the call has many columns, no gradient and a configuration it supports):
        the state after them, the float64 sums of the ``means`` fields after each (``None``: no step) and
        the number of steps done."""
        from .fused import MIN_COLUMNS, fused_column

        x = state.get(self.interior[0]) if self.interior else None
        if x is None or x.ndim != 2:
            return state, None, 0
        fc = fused_column(self, state)
        if fc is None:
            return state, None, 0
        if x.shape[0] < MIN_COLUMNS and not (fc.grad or fc.tangent):  # a forward of few columns: as compiled
            self.__dict__["_fused_reason"] = f"fewer than {MIN_COLUMNS} columns without a gradient"
            return state, None, 0
        sums = None
        done = 0
        while done < len(times):
            ts = times[done : done + fc.max_steps]
            res = fc.steps(state, self._raw_block(ts, with_outputs=False), means)
            if isinstance(res, str):  # this call's inputs are outside the kernel: the compiled step
                self.__dict__["_fused_reason"] = res
                break
            state, part = res
            sums = part if sums is None else {q: sums[q] + part[q] for q in means}
            done += len(ts)
        return state, sums, done

    def _raw_block(self, times: Sequence[float], *, with_outputs: bool) -> dict[str, torch.Tensor]:
        """:meth:`_raw_physics` of the steps starting at ``times``, stacked on a leading dim (one forcing
        lookup for all); ``with_outputs``: also ``"nuh_out"``, ``nuh`` at each step's end (what
        :meth:`output` there uses)."""
        f, dt = self.forcing, self.dt
        t1 = [t + dt for t in times]
        names = ["h", "temp", "salt", "I_0"] + (["bottom_stress"] if f.has_bottom_stress else [])
        raw = f.sample_many(t1, names)
        raw["nuh"] = f.sample_many(times if self.nuh_lag else t1, ["nuh"])["nuh"]
        if with_outputs:
            raw["nuh_out"] = f.sample_many(t1, ["nuh"])["nuh"] if self.nuh_lag else raw["nuh"]
        raw["doy"] = torch.tensor([f.day_of_year(t) for t in t1], dtype=raw["h"].dtype)
        return raw

    def _compiled_step(self, state: Mapping) -> Any:
        """The compiled step when ``compile`` is on and this call can use it (else ``None``: plain step)."""
        if self.compile_mode == "off":
            return None
        from .compiled import compiled_step

        return compiled_step(self, state)

    def _step_columns(self, state: dict, t: float | None, phys: Mapping, fast: Any = None) -> Any:
        """One step of a batch of columns. ``fast`` (the compiled step's ``(mean plans, sinking loop)``):
        running means from precomputed sampling plans and sinking with a fixed sub-step loop; then returns
        ``(new state, largest sub-step count needed)``."""
        dt = self.dt
        svars = {n: state[n] for n in self.interior + self.bottom + self.surface}
        new, need = self._transport(svars, phys, loop=None if fast is None else fast[1])
        # 4. repair
        if self.repair:
            for n in new:
                lo = self._minimum.get(n)
                if lo is not None:
                    new[n] = torch.clamp(new[n], min=lo)
        # 6. running means of the light seen after transport
        means = None
        if self.means and fast is not None:
            env = self._full_env(new, phys, None)
            means = {
                key: running_mean_apply(
                    state["_means"][key],
                    torch.broadcast_to(env[std], state["_means"][key]["last"].shape),
                    fast[0][key],
                )
                for key, (std, per, res) in self.means.items()
            }
        elif self.means:
            env = self._full_env(new, phys, None)
            means = {
                key: running_mean_update(
                    state["_means"][key],
                    torch.broadcast_to(env[std], state["_means"][key]["last"].shape),
                    t + dt,
                    t,
                    period=per,
                    resolution=res,
                )
                for key, (std, per, res) in self.means.items()
            }
        # 7. sources
        new = self._integrate(new, phys, means)
        if means is not None:
            new["_means"] = means
        return new if fast is None else (new, need)

    def _transport(self, svars: dict, phys: Mapping, loop: int | None = None) -> tuple[dict, Any]:
        """Sinking/rising then diffusion of the interior variables; bottom/surface ones are carried over.
        Returns the new variables and (with ``loop``, a fixed sinking sub-step loop) the largest sub-step
        count the columns needed (a tensor; ``None`` otherwise)."""
        advection, _, _ = _numerics()
        h, dt = phys["h"], self.dt
        env0 = self._base_env(phys)
        # Tracers are stacked as (V, B, nz): each variable is then a contiguous (B, nz) block, and h/nuh of
        # shape (Bf, nz) broadcast over V, so one tridiagonal matrix per column serves every tracer.
        # 2. sinking / rising (only the variables that move)
        ws = self.bgc.vertical_velocities(svars, env0)
        moving = [n for n in self.interior if n in ws]
        still = [n for n in self.interior if n not in ws]
        parts = []
        need = None
        if moving:
            w_rows = [_shared_rows(ws[n]) for n in moving]
            shape = torch.broadcast_shapes(*(w.shape for w in w_rows))
            w_c = torch.stack([torch.broadcast_to(w, shape) for w in w_rows])
            ww = advection.face_velocities(w_c, h)
            kw = {"method": self.sinking_method, "mode": "conservative", "loop": loop}
            if torch.compiler.is_compiling():  # one call per tracer: no stacked copy of the moving states
                parts = [advection.advect_center(svars[n], h, ww[i], dt, **kw) for i, n in enumerate(moving)]
            else:
                Ym = torch.stack([svars[n] for n in moving])
                parts = list(advection.advect_center(Ym, h, ww, dt, **kw).unbind(0))
            if loop is not None:
                need = advection.courant_substeps(ww, h, dt).amax()
        # one stack (not a stack of the still tracers inside a cat): each still tracer is copied once
        tracers = [*parts, *(svars[n] for n in still)]
        shared = all(x.ndim < 2 or x.shape[-2] == 1 for x in (h, phys["nuh"]))  # one matrix for all columns
        if torch.compiler.is_compiling() and not shared:
            # (V, B, nz) seen, (B, V, nz) in memory: the layout the compiled per-column solve takes (no
            # transposed copy); a shared matrix takes the V·B profiles in (V, B, nz) order as they are
            Y = torch.stack(tracers, dim=1).transpose(0, 1)
        else:
            Y = torch.stack(tracers)
        # 3. diffusion of every tracer with the same matrix
        Y = self._diffuse(Y, h, phys["nuh"])
        new = {n: Y[i] for i, n in enumerate(moving + still)}
        for n in self.bottom + self.surface:
            new[n] = svars[n]
        return new, need

    def _diffuse(self, Y: torch.Tensor, h: torch.Tensor, nuh: torch.Tensor) -> torch.Tensor:
        """GOTM's diff_center with no-flux boundaries for all tracers ``Y`` (V, B, nz).

        With ``cnpar = 1`` (GOTM's default) the step is ``A Y_new = Y`` with A built from
        :func:`~pelagos.column.diffusion.diffusion_matrix`; the matrix is laid out contiguously per system,
        which the compiled Thomas kernel solves fastest. The Patankar boundary variant (``posconc``) only acts
        on outgoing fluxes, so it does nothing here. Other ``cnpar`` go through ``diffuse_center``.
        """
        _, diffusion, _ = _numerics()
        if self.cnpar != 1.0:
            return diffusion.diffuse_center(Y, h, nuh, self.dt, cnpar=self.cnpar, posconc=self.posconc)
        a, c = diffusion.diffusion_matrix(h, nuh, self.dt)
        if torch.compiler.is_compiling():
            from .compiled import diffuse_implicit

            return diffuse_implicit(a, c, Y)
        from ..core.tridiagonal import solve_tridiagonal

        if a.ndim < 2 or a.shape[-2] == 1:  # one matrix for all columns: factorised once, V·B rhs
            return solve_tridiagonal(-a, 1.0 + a + c, -c, Y)
        shape = torch.broadcast_shapes(Y.shape, a.shape)
        lower = (-a).expand(shape).contiguous()
        upper = (-c).expand(shape).contiguous()
        diag = (1.0 + a + c).expand(shape).contiguous()
        return solve_tridiagonal(lower, diag, upper, Y.expand(shape))

    def _integrate(self, s: dict, phys: Mapping, means: Mapping | None) -> dict:
        from ..bgc.integrate import integrate_sources

        svars = {n: s[n] for n in self.interior + self.bottom + self.surface}

        def rhs(x: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return self._rates(x, phys, means)[0]

        ppdd = None
        if self.ode_method in ("mp", "mprk2"):
            pd = getattr(self.bgc, "production_destruction", None)
            if pd is None:
                raise ConfigError(f"ode_method {self.ode_method!r} needs bgc.production_destruction")

            def ppdd(x):
                return pd(x, self._full_env(x, phys, means))

        sub = self.dt / self.split_factor
        for _ in range(self.split_factor):
            svars = integrate_sources(rhs, svars, sub, method=self.ode_method, ppdd=ppdd)
        return dict(svars)

    # -- outputs -----------------------------------------------------------------------------------------
    def output(
        self, state: Mapping[str, Any], t: float, names: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Named fields at model time ``t`` for writing: state variables (FABM global names, ``(B, nz)`` or
        ``(B,)``), BGC diagnostics (e.g. ``npzd_PPR``) evaluated on this state with the light of this state,
        the physics (``h``, ``temp``, ``salt``, ``nuh``, ``I_0``), ``PAR`` and the conserved column totals
        (``total_<quantity>``, per m2). Diagnostics are recomputed here rather than carried in the state.

        ``names``: only these fields, in that order (the same values as in the full output); the light and
        the biology are evaluated only when one of them needs it, the totals only when one is asked for. The
        run loop asks for the interval-mean fields alone after the steps inside an output interval."""
        names = None if names is None else tuple(names)
        fast = self._compiled_step(state) if self._compiled_output(state) else None
        if fast is not None:
            return fast.output(state, self._raw_physics(float(t), for_step=False), names)
        return self._output_from(state, self._physics(float(t), for_step=False), names)

    def _compiled_output(self, state: Any) -> bool:
        """Whether :meth:`output` runs the compiled program: with ``compile`` on, for 16 columns or more, or
        when the compiled step is built anyway. One column's output costs 0.6 ms plain and 0.2 ms compiled,
        but the program takes seconds to compile (minutes with a cold cache): a year of daily records does
        not pay that back; 1024 columns cost 7.7 ms plain and 1.3 ms compiled."""
        if not isinstance(state, Mapping) or self.compile_mode == "off":
            return False
        if "_compiled_step_obj" in self.__dict__:
            return True
        x = state.get(self.interior[0]) if self.interior else None
        return x is None or x.ndim != 2 or x.shape[0] >= 16

    def _output_from(
        self, state: Mapping[str, Any], phys: Mapping[str, torch.Tensor], names: Sequence[str] | None = None
    ) -> dict:
        """:meth:`output` given the (scaled) physics at the output time (``names``: only those fields)."""
        svars = {n: state[n] for n in self.interior + self.bottom + self.surface}
        B = next(iter(svars.values())).shape[0]

        def full(x: torch.Tensor) -> torch.Tensor:
            x = torch.as_tensor(x)
            return torch.broadcast_to(x, (B, *x.shape[1:])) if x.ndim >= 1 else x

        forcing = ("h", "temp", "salt", "nuh", "I_0")

        def total(q: str) -> str:
            return q if q.startswith("total_") else f"total_{q}"

        totals = {total(q) for q in self._conserved_names()}
        want = None if names is None else set(names)
        # what the asked-for fields need: anything not a state, forcing or total field comes from the rates
        with_rates = want is None or bool(want - set(svars) - set(forcing) - totals)
        with_totals = want is None or bool(want & totals)

        out = {n: svars[n] for n in svars}
        if with_rates:
            means = state.get("_means") if isinstance(state, Mapping) else None
            with torch.no_grad() if not torch.is_grad_enabled() else contextlib.nullcontext():
                _, diag, env = self._rates(svars, phys, means)
            out.update({k: full(v) for k, v in diag.items()})
        for k in forcing:
            out[k] = full(phys[k])
        if with_rates:
            out["PAR"] = full(env[_PAR])
            lm = getattr(self.bgc, "light_model", None)
            if lm is not None:  # the light instance's declared diagnostics: the light computed here
                light = {"par": env[_PAR], "swr": env["downwelling_shortwave_flux"], "par0": env.get(_PAR0)}
                for d in self.bgc.diagnostics:
                    if self.bgc.models.get(d.instance) is lm and light.get(d.local) is not None:
                        out[d.name] = full(light[d.local])
        if with_totals:
            for q, v in self.bgc.conserved_quantities(svars, h=phys["h"]).items():  # = self.totals(state, t)
                out[total(q)] = v
        if names is None:
            return out
        missing = [n for n in names if n not in out]
        if missing:
            raise ConfigError(f"ColumnModel.output has no field(s) {missing}; it has {sorted(out)}")
        return {n: out[n] for n in names}

    def _salinity_units_and_name(self) -> tuple[str, str, str]:
        if getattr(self.forcing, "salinity_source", "salt_p") == "salt":
            return "salt", "g kg-1", "Absolute Salinity"
        return "salt", "PSU", "practical salinity"

    def output_variables(self) -> list[Variable]:
        """What :meth:`output` gives: the BGC state variables (FABM global names; interior on dim ``z``,
        bottom/surface pools without dims), the BGC diagnostics and ``PAR`` (interval means when written), the
        physics as used (``h``, ``temp``, ``salt`` on ``z``, ``nuh`` on ``zi``, ``I_0``) and the column totals
        of the conserved quantities (``total_<quantity>``, per m²)."""
        bgc = self.bgc
        out = []
        for v in getattr(bgc, "variables", []):
            dims = ("z",) if v.domain == "interior" else ()
            out.append(Variable(v.name, v.units, v.long_name or v.name, dims, "state"))
        for d in getattr(bgc, "diagnostics", []) or []:
            dims = ("z",) if d.domain == "interior" else ()
            out.append(Variable(d.name, d.units, d.long_name or d.name, dims, "diagnostic", mean=True))
        out += [
            Variable("h", "m", "layer thickness", ("z",), "forcing"),
            Variable("temp", "degC", "temperature", ("z",), "forcing"),
            # GOTM's Absolute Salinity (g/kg) when the forcing file has ``salt``, else practical salinity
            Variable(*self._salinity_units_and_name(), ("z",), "forcing"),
            Variable("nuh", "m2 s-1", "turbulent diffusivity of heat (as used, scaled)", ("zi",), "forcing"),
            Variable("I_0", "W m-2", "net shortwave radiation entering the water", (), "forcing"),
            Variable("PAR", "W m-2", "photosynthetically active radiation", ("z",), "diagnostic", mean=True),
        ]
        units = {v.name: v.units for v in getattr(bgc, "variables", [])}
        for q in self._conserved_names():
            name = q if q.startswith("total_") else f"total_{q}"
            u = next((units[v.name] for v in bgc.variables if q in self._conserved_of(v)), "")
            out.append(
                Variable(name, f"{u} m".strip() if u else "", f"column total of {q}", (), "diagnostic")
            )
        return out

    def _conserved_of(self, v: Any) -> dict:
        inst = self.bgc.models[v.instance]
        return dict(getattr(inst.state_variables[v.local], "conserved", {}) or {})

    def _conserved_names(self) -> list[str]:
        names: list[str] = []
        for v in getattr(self.bgc, "variables", []):
            for q in self._conserved_of(v):
                if q not in names:
                    names.append(q)
        return names

    def output_coordinates(self) -> dict[str, Coordinate]:
        """``z`` (layer centres) and ``zi`` (interfaces): GOTM's heights [m], negative below the surface,
        index 0 at the bottom, from the first column's ``h`` at the start of the forcing."""
        c = self.coordinates(self.forcing.t_start)
        return {
            "z": Coordinate(c["z"][0].detach().cpu(), "m", "height of the layer centre (negative down)"),
            "zi": Coordinate(c["zi"][0].detach().cpu(), "m", "height of the interface (negative down)"),
        }

    def totals(self, state: Mapping[str, Any], t: float) -> dict[str, torch.Tensor]:
        """Column totals of the conserved quantities (per m2), shape ``(B,)``, using ``h`` at time ``t``."""
        h = self.forcing.sample(float(t), ["h"])["h"]
        svars = {n: state[n] for n in self.interior + self.bottom + self.surface}
        return dict(self.bgc.conserved_quantities(svars, h=h))

    def coordinates(self, t: float) -> dict[str, torch.Tensor]:
        """GOTM's ``z`` (layer centres) and ``zi`` (interfaces), m, negative down, (Bf, nz) / (Bf, nz+1)."""
        h = self.forcing.sample(float(t), ["h"])["h"]
        zi = torch.cat([torch.zeros_like(h[..., :1]), torch.cumsum(h, -1)], -1)
        zi = zi - zi[..., -1:]
        return {"z": 0.5 * (zi[..., 1:] + zi[..., :-1]), "zi": zi}

    def observation_operator(self, variable: str, at: Mapping[str, Any] | None = None) -> Any:
        """``H(state)`` of a state variable at ``at`` = ``{"depth": m below the surface | "surface" |
        "integral"}`` or ``{"z": m, negative down}`` (lists for several points); no ``at`` for bottom/surface
        pools. See :mod:`pelagos.column.observe`."""
        from .observe import column_observation_operator

        return column_observation_operator(self, variable, at)


OutputHook = Callable[[float, dict], None]


def run_column(
    forcing: ColumnForcing | str | os.PathLike,
    bgc: Any,
    *,
    start: float | str = 0.0,
    stop: float | str | None = None,
    dt: float = 3600.0,
    output_every: float | None = None,
    n_columns: int | None = None,
    parameters: Mapping[str, Any] | None = None,
    profiles: Mapping[str, Any] | None = None,
    state: dict | None = None,
    checkpoint: int | str | None = None,
    on_output: OutputHook | None = None,
    as_xarray: bool = True,
    **options: Any,
) -> Any:
    """Run a batch of water columns and return the outputs every ``output_every`` seconds.

    The loop is :class:`pelagos.core.simulation.Simulation` (the one run loop), with gradients kept: the
    returned tensors are differentiable w.r.t. ``parameters`` and ``state``. BGC diagnostics and PAR are means
    over each output interval (see :meth:`ColumnModel.output_variables`: as GOTM's mean output — a
    production at midnight says nothing about the day); the state variables are snapshots.

    Args:
        forcing: a :class:`ColumnForcing` or a GOTM NetCDF path.
        bgc: a ``BGCSystem`` or fabm.yaml path/dict.
        start, stop: model times (s on the forcing's clock, or ISO dates if the forcing has an epoch);
            ``stop`` defaults to the end of the forcing.
        dt: time step (s). ``output_every``: output interval (s, a multiple of ``dt``; default ``dt``).
        n_columns: batch size (default: the forcing's column count).
        parameters: physical values ``{"npzd.rmax": value or (B,) tensor, "nuh_scale": ...}`` applied for this
            run only (through ``model.using``); the model itself is not changed.
        profiles: initial profiles ``{global name: value, (nz,) or (B, nz)}`` over the BGC initial values.
        state: start from this state instead (e.g. a restart); overrides ``profiles``.
        checkpoint: passed to :func:`pelagos.core.rollout` within each output interval.
        on_output: ``on_output(t, outputs)`` called at ``start`` and after every output interval with the dict
            of outputs (e.g. an incremental writer); runs before the next interval.
        as_xarray: return an ``xarray.Dataset`` (dims time, column, z, zi), else a dict of stacked tensors.
        **options: numerics options of :class:`ColumnModel` (``ode_method``, ``sinking_method``, ``cnpar``,
            ``light``, ``nuh_lag``, ``repair``, ``split_factor``).

    Returns:
        ``xarray.Dataset`` of the outputs, or (``as_xarray=False``) a dict with ``"time"`` (s, float64), every
        output stacked on a leading time dim, and ``"final_state"`` (to continue or write a restart).
    """
    from ..core.simulation import MemoryWriter, Simulation, Writer

    if not isinstance(forcing, ColumnForcing):
        forcing = ColumnForcing.from_gotm(forcing)
    model = ColumnModel(bgc, forcing, dt=dt, **options)
    t0 = forcing.seconds(start)
    t1 = forcing.t_stop if stop is None else forcing.seconds(stop)
    every = float(output_every or dt)
    n_per = round(every / dt)
    n_steps = round((t1 - t0) / dt)
    if n_per < 1 or abs(n_per * dt - every) > 1e-6 * dt:
        raise ConfigError(f"output_every ({every:g} s) must be a positive multiple of dt ({dt:g} s)")
    if n_steps < 0 or abs(n_steps * dt - (t1 - t0)) > 1e-6 * dt:
        raise ConfigError(f"stop - start ({t1 - t0:g} s) must be a non-negative multiple of dt ({dt:g} s)")
    forcing.check_covers(t0, t1)
    raw = {}
    for name, value in (parameters or {}).items():
        spec = model.parameter_spec(name)
        raw[name] = spec.transform.inverse(torch.as_tensor(value, dtype=forcing.dtype))

    class _Hook(Writer):
        key = "on_output"

        def variable_names(self, sim: Any) -> list[str]:
            return [v.name for v in variables]

        def write(self, t: float, values: Mapping[str, torch.Tensor]) -> None:
            on_output(t, dict(values))

    with model.using(raw) if raw else contextlib.nullcontext():
        s = state if state is not None else model.initial_state(n_columns, profiles=profiles, t0=t0)
        variables = model.output_variables()
        memory = MemoryWriter(variables, detach=False)
        writers: list[Any] = [memory] + ([_Hook()] if on_output is not None else [])
        result = Simulation(
            model,
            s,
            start=t0,
            n_steps=n_steps,
            output_every=n_per,
            writers=writers,
            checkpoint=checkpoint,
            grad=True,
            progress=False,
        ).run()
    stacked = memory.stacked()
    times = stacked.pop("time")
    if not as_xarray:
        return {"time": times, **stacked, "final_state": result.state}
    return to_dataset(model, times.tolist(), stacked)


def to_dataset(model: ColumnModel, times: list[float], stacked: Mapping[str, torch.Tensor]) -> Any:
    """Outputs stacked in time as an ``xarray.Dataset``: dims ``time``, ``column``, ``z`` (centres), ``zi``;
    coordinates ``z``/``zi`` of the first output time (GOTM's, m, negative down); units, long names and
    ``cell_methods`` (interval means of the diagnostics) from :meth:`ColumnModel.output_variables`."""
    import numpy as np
    import xarray as xr

    nz = model.nz
    variables = model.output_variables()
    meta = {}
    for v in variables:
        meta[v.name] = {"units": v.units, "long_name": v.long_name or v.name}
        meta[v.name]["cell_methods"] = "time: mean" if v.mean else "time: point"
    data = {}
    for k, v in stacked.items():
        a = v.detach().cpu().numpy()
        if a.ndim == 3 and a.shape[-1] == nz:
            dims = ("time", "column", "z")
        elif a.ndim == 3 and a.shape[-1] == nz + 1:
            dims = ("time", "column", "zi")
        elif a.ndim == 2:
            dims = ("time", "column")
        else:
            dims = ("time", *[f"{k}_dim{i}" for i in range(1, a.ndim)])
        data[k] = (dims, a, meta.get(k, {}))
    c = model.coordinates(times[0])
    epoch = model.forcing.epoch
    tunits = f"seconds since {epoch:%Y-%m-%d %H:%M:%S}" if epoch else "seconds since start"
    coords = {
        "time": ("time", np.asarray(times), {"units": tunits}),
        "z": (
            "z",
            c["z"][0].detach().cpu().numpy(),
            {"units": "m", "positive": "up", "long_name": "layer centre"},
        ),
        "zi": (
            "zi",
            c["zi"][0].detach().cpu().numpy(),
            {"units": "m", "positive": "up", "long_name": "interface"},
        ),
    }
    return xr.Dataset(data, coords=coords, attrs={"source": "pelagos.column.run_column", "dt": model.dt})
