"""``pelagos calibrate|assimilate CONFIG``: every inverse method on every model, from one configuration.

The configuration is a run configuration (:mod:`pelagos.io.config`) plus ``observations:`` and ``method:``.
The same code serves every model kind: the model and its initial state come from :mod:`pelagos.io.build`,
observation operators from the model, the method from :mod:`pelagos.inverse`:

=============  ===================================================================  ====================
method.kind    what                                                                  command
=============  ===================================================================  ====================
calibrate      parameters (+ initial state with ``control_state``), Laplace std;    calibrate
               ``stages``: first on growing windows (continuation)
4dvar          strong-constraint 4D-Var: initial state (+ free parameters)           assimilate
weak4dvar      weak-constraint 4D-Var: + model-error forcing (``model_error``)       assimilate
enkf           ensemble Kalman filter (ETKF / perturbed obs), + free parameters      assimilate
letkf          local ETKF (``radius``)                                               assimilate
esmda          ensemble smoother, multiple data assimilation: parameters             both
=============  ===================================================================  ====================

Outputs: the results file (``method.results`` or ``--output``; default ``results/<config>_<kind>.json``:
estimates, std, 95 % intervals, prior, cost history, model runs, stop reason, wall time), the analysed run's
NetCDF (``output.file``: the window rerun with the estimates and the analysed initial state) and plots
(``method.plots``: cost, parameters, observations vs model before/after, the column's depth–time sections).

Models with a state the methods cannot use as one tensor get a tensor view here (:func:`inverse_view`): the
water column's :class:`~pelagos.column.stacked.StackedColumn` ``(V, nz)``, QG's
:class:`~pelagos.qg.interval.QGInterval` (PV q; one step = the observation interval) for 4D-Var and the
ensemble filters.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from ..core.covariance import Covariance
from ..core.errors import ConfigError
from ..core.timeaxis import format_time
from .build import Setup, model_time, setup, show_progress
from .config import Config, CovarianceSection, load_config

__all__ = ["inverse_view", "run_inverse", "run_inverse_cli"]

CALIBRATE_KINDS = ("calibrate", "esmda")
ASSIMILATE_KINDS = ("4dvar", "weak4dvar", "enkf", "letkf", "esmda")
STATE_KINDS = ("4dvar", "weak4dvar", "enkf", "letkf")


# -- model views -----------------------------------------------------------------------------------------
def _is_column(model) -> bool:
    from ..column.model import ColumnModel

    return isinstance(model, ColumnModel)


def _is_qg(model) -> bool:
    from ..qg.base import SpectralQG

    return isinstance(model, SpectralQG)


def column_view(s: Setup):
    """(StackedColumn, x0 (V, nz)) of a column setup, or (column, dict state) when it cannot be stacked."""
    from ..column.stacked import StackedColumn

    try:
        st = StackedColumn(s.model)
    except ConfigError:
        return s.model, s.state
    return st, st.stack(s.state)[0]


def inverse_view(s: Setup, kind: str, obs=None):
    """``(model, x0)`` the methods work on: tensor views for the column and (state methods) QG."""
    if _is_column(s.model):
        return column_view(s)
    if _is_qg(s.model) and kind in STATE_KINDS and obs is not None:
        from ..qg.interval import QGInterval

        dt = float(s.model.dt)
        k = obs.step_indices(dt, s.t0).tolist()
        n_sub = 0
        for a in [k[0], *(b - a for a, b in itertools.pairwise(k))]:
            n_sub = math.gcd(n_sub, int(a))
        view = QGInterval(s.model, max(1, n_sub))
        return view, s.state["q"]
    return s.model, s.state


# -- observations (through the one observation stack, pelagos.core.obsio) ------------------------------------
def observations(cfg: Config, s: Setup, model, x0):
    """``(ObservationSet, truth parameter values or None)`` from ``observations:``: a file through
    :func:`pelagos.core.obsio.read_observations`, or a twin through its ``synthetic_observations``."""
    from ..core import obsio

    o = cfg.observations
    if o.file is not None:
        obs = obsio.read_observations(cfg.resolve(o.file), model, start=s.t0, stop=s.t1, log=o.log)
        return _squeezed(obs), None
    syn = o.synthetic
    truth = {k: float(v) for k, v in (syn.truth or {}).items()}
    raw = {
        n: model.parameter_spec(n).transform.inverse(torch.tensor(v, dtype=torch.float64))
        for n, v in truth.items()
    }
    x_true = x0
    if syn.initial_error:
        g = torch.Generator().manual_seed(int(syn.seed) + 1)
        e = float(syn.initial_error)
        if _is_qg(model) and isinstance(x0, Mapping):  # QG: perturb the PV, rebuild the state
            q = x0["q"]
            x_true = model.state_from_q(q + e * torch.randn(q.shape, generator=g, dtype=q.dtype))
        elif not torch.is_tensor(x0):
            raise ConfigError("observations.synthetic.initial_error needs a tensor state")
        else:
            x_true = x0 + e * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
            if _is_column(getattr(model, "model", model)):
                x_true = x_true.clamp(min=0)
    with model.using(raw) if raw else contextlib.nullcontext():
        obs = _synthetic(obsio, syn, model, x_true, s)
    if syn.write:
        path = cfg.resolve(syn.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        obsio.write_observations(obs, path)
        obs.meta["written"] = str(path)
    return obs, truth


def _synthetic(obsio, syn, model, x0, s: Setup):
    dt = float(model.dt)
    samplings = []
    for i, p in enumerate(syn.patterns):
        at = dict(p.at) if p.at else None
        if p.depths is not None:
            at = {**(at or {}), "depth": list(p.depths)}
        if at and "random" in at:
            at = _random_points(model, p.variable, int(at["random"]), int(at.get("seed", 0)))
        elif not at:
            at = _all_points(model, p.variable) or None
        times = obsio.regular_times(model, s.t0, s.t1, p.every or dt, offset=p.offset)
        if not times:
            raise ConfigError(f"observations.synthetic.patterns[{i}] gives no time inside the window")
        samplings.append(obsio.Sampling(p.variable, at, times))
    noise, sigma, rel = syn.noise, syn.sigma, syn.rel
    if noise == "relative":
        noise = "gaussian"
    elif noise == "lognormal":
        sigma, rel = syn.rel, 0.0
    obs = obsio.synthetic_observations(
        model, x0, None, samplings, start=s.t0, noise=noise, sigma=sigma, rel_sigma=rel,
        generator=torch.Generator().manual_seed(int(syn.seed)),
    )  # fmt: skip
    return _squeezed(obs)


def _all_points(model, variable: str) -> dict:
    """Every grid point of ``variable`` as ``{dim: [coordinate values]}`` (C order); ``{}`` without dims."""
    var = model.variable(variable)
    coords = model.output_coordinates()
    if not var.dims:
        return {}
    axes = []
    for d in var.dims:
        if d not in coords:
            raise ConfigError(f"observing all of {variable!r} needs coordinates along {d!r}; give at:")
        axes.append(torch.as_tensor(coords[d].values, dtype=torch.float64).reshape(-1))
    mesh = torch.meshgrid(*axes, indexing="ij")
    return {d: m.reshape(-1).tolist() for d, m in zip(var.dims, mesh, strict=True)}


def _random_points(model, variable: str, m: int, seed: int) -> dict:
    """``m`` distinct grid points of ``variable`` (seeded), as ``{dim: [coordinate values]}``."""
    pts = _all_points(model, variable)
    if not pts:
        raise ConfigError(f"at: {{random: ...}}: {variable!r} has no dims to sample")
    n = len(next(iter(pts.values())))
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m].tolist()
    return {d: [v[k] for k in pick] for d, v in pts.items()}


def _squeezed(obs):
    """Values ``(n_t, 1, m)`` (a state with a batch of one) as ``(n_t, m)``: what every method takes."""
    if obs.values.ndim == 3 and obs.values.shape[1] == 1:
        import dataclasses

        sig = obs.sigma if torch.is_tensor(obs.sigma) else torch.as_tensor(obs.sigma)
        obs = dataclasses.replace(
            obs,
            values=obs.values.reshape(obs.n_times, -1),
            sigma=sig.reshape(obs.n_times, -1) if sig.ndim > 1 else sig,
        )
    return obs


# -- priors and covariances ---------------------------------------------------------------------------------
def set_priors(model, meth) -> None:
    """Gaussian priors (unconstrained space) of the free parameters, centred on their configured values
    unless ``mean`` is given; ``rel_std`` converts a relative std to the unconstrained space at the mean."""
    for n in meth.free:
        spec = model.parameter_spec(n)
        p = meth.priors.get(n)
        mean = (
            float(p.mean)
            if p is not None and p.mean is not None
            else float(model.get_parameter_value(n).detach())
        )
        if p is not None and p.std is not None:
            std = float(p.std)
        else:
            rel = float(p.rel_std) if p is not None and p.rel_std is not None else float(meth.prior_rel_std)
            u = spec.transform.inverse(torch.tensor(mean, dtype=torch.float64)).requires_grad_(True)
            (dx,) = torch.autograd.grad(spec.transform.forward(u), u)
            std = rel * max(abs(mean), 1e-12) / max(abs(float(dx)), 1e-300)
        model.set_prior(n, mean, std)
        model.set_parameter_value(n, mean)
    unknown = set(meth.priors) - set(meth.free)
    if unknown:
        raise ConfigError(
            f"method.priors for parameters that are not free: {sorted(unknown)} (add them to free)"
        )


def _state_std(x: torch.Tensor, c: CovarianceSection) -> torch.Tensor:
    x = x.detach().to(torch.float64)
    if c.std is not None:
        return torch.full_like(x, float(c.std))
    return float(c.rel_std) * x.abs() + float(c.floor)


def covariance(model, x0: torch.Tensor, c: CovarianceSection, periodic: bool = False):
    """B (or Q) of the configuration for the state ``x0``."""
    from ..core.covariance import CorrelatedCovariance, DiagonalCovariance

    if not torch.is_tensor(x0):
        raise ConfigError("a background covariance needs a tensor state (this model's state is not one)")
    std = _state_std(x0, c)
    if not bool((std > 0).all()):
        raise ConfigError("background/model-error std must be > 0 everywhere: set floor > 0 (or std)")
    from ..column.stacked import StackedColumn

    if isinstance(model, StackedColumn):
        from ..column.background import ColumnBackground
        from ..column.observe import _centre_depths

        f = model.forcing
        h = f.sample(0.0 if f.t_start <= 0 <= f.t_stop else f.t_start, ["h"])["h"][0].to(torch.float64)
        z = _centre_depths(h)
        return ColumnBackground(std, z, float(c.length_scale or 1e-3))
    n = x0.numel()
    if c.length_scale and x0.ndim == 1:
        return CorrelatedCovariance(
            torch.arange(n, dtype=torch.float64), std.flatten(), float(c.length_scale),
            period=float(n) if periodic else None,
        )  # fmt: skip
    return DiagonalCovariance(std.flatten(), n) if x0.ndim == 1 else _ShapedDiagonal(std)


class _ShapedDiagonal(Covariance):
    """Diagonal covariance of a state of any shape (``sqrt_apply`` keeps the shape)."""

    def __init__(self, std: torch.Tensor) -> None:
        self.std, self.n = std, std.shape[-1]

    def sqrt_apply(self, v: torch.Tensor) -> torch.Tensor:
        return v * self.std.to(v)


def _contract_grid(model):
    """``(dims, coordinate values per dim)`` of the state variable of a model with declared variables."""
    inner = getattr(model, "qg", model)
    try:
        variables = inner.output_variables()
        coords = inner.output_coordinates()
    except (NotImplementedError, AttributeError):
        return None
    state = [v for v in variables if v.role == "state"] or variables
    dims = state[0].dims
    if not dims or any(d not in coords for d in dims):
        return None
    return dims, [torch.as_tensor(coords[d].values, dtype=torch.float64).reshape(-1) for d in dims]


def _state_coords(model, x0: torch.Tensor) -> tuple[torch.Tensor, float | None]:
    """Positions of the state entries for LETKF (and the period of the last coordinate, when regular)."""
    from ..column.stacked import StackedColumn

    if isinstance(model, StackedColumn):
        from ..column.observe import _centre_depths

        f = model.forcing
        z = _centre_depths(f.sample(f.t_start, ["h"])["h"][0].to(torch.float64))
        return z.repeat(model.V), None
    grid = _contract_grid(model)
    if grid is not None and math.prod(len(v) for v in grid[1]) == x0.numel():
        mesh = torch.meshgrid(*grid[1], indexing="ij")
        c = torch.stack([m.reshape(-1) for m in mesh], -1)
        last = grid[1][-1]
        period = float(len(last) * (last[1] - last[0])) if len(last) > 1 else None
        return (c[:, 0] if c.shape[1] == 1 else c), period
    if x0.ndim >= 3:  # QG q (…, nz, ny, nx), grid indices
        nz, ny, nx = x0.shape[-3:]
        lev, y, x = torch.meshgrid(torch.arange(nz), torch.arange(ny), torch.arange(nx), indexing="ij")
        return torch.stack([lev, y, x], -1).reshape(-1, 3).to(torch.float64), float(nx)
    return torch.arange(x0.numel(), dtype=torch.float64), float(x0.shape[-1])


def _obs_coords(obs, model) -> torch.Tensor:
    c = obs.meta.get("coords")
    if c is not None and not bool(torch.isnan(c).any()):
        return c.squeeze(-1) if c.ndim == 2 and c.shape[1] == 1 else c
    rows = []
    for _, w in obs.columns or []:
        if isinstance(w, Mapping):  # {coordinate: value} (core/obsio); the column: depth, surface = 0
            vals = [0.0 if v == "surface" else v for v in w.values()]
        else:
            vals = [0.0 if w == "surface" else w]
        try:
            rows.append([float(v) for v in vals])
        except (TypeError, ValueError):
            rows.append([float("nan")] * len(vals))
    try:
        t = torch.tensor(rows, dtype=torch.float64)
    except ValueError:
        t = torch.full((obs.m, 1), float("nan"))
    if t.shape[0] != obs.m or bool(torch.isnan(t).any()):
        raise ConfigError("LETKF needs a position for every observation (integrals have none); use enkf")
    return t[:, 0] if t.shape[1] == 1 else t


# -- the driver ----------------------------------------------------------------------------------------------
def _expand(x, n: int):
    if torch.is_tensor(x):
        return x.expand(n, *x.shape).clone()
    return {k: (v.expand(n, *v.shape[1:]).clone() if torch.is_tensor(v) and v.ndim and v.shape[0] == 1 else v)
            for k, v in x.items()}  # fmt: skip


def _predict(model, x, obs, t0):
    from ..inverse.forward import predict

    with torch.no_grad():
        return predict(model, x, obs, t0=t0)


def _stage_ends(meth, s: Setup, obs) -> list[float]:
    """The end times (model s) of ``method.stages``, checked: strictly increasing, after ``time.start``,
    before the last observation, each stage holding observations."""
    where = "method.stages"
    ends = [model_time(s.model, v, f"{where}[{i}]") for i, v in enumerate(meth.stages)]
    t_last = float(obs.times.max())
    fix = (
        f"list the end dates of the stages before the last, increasing, between time.start "
        f"({format_time(s.model, s.t0)}) and the last observation ({format_time(s.model, t_last)})"
    )
    for i, (v, t) in enumerate(zip(meth.stages, ends, strict=True)):
        if not t > s.t0:
            raise ConfigError(f"{where}[{i}] = {v!r} is not after time.start: {fix}")
        if not t < t_last:
            raise ConfigError(
                f"{where}[{i}] = {v!r} is not before the last observation (the last stage always uses "
                f"them all): {fix}"
            )
        if i and not t > ends[i - 1]:
            raise ConfigError(
                f"{where}[{i}] = {v!r} is not after {where}[{i - 1}] = {meth.stages[i - 1]!r}: {fix}"
            )
        if obs.window(-math.inf, t).n_obs == 0:
            raise ConfigError(f"{where}[{i}] = {v!r}: no observation up to then; {fix}")
    return ends


def _stage_record(end: Any, t_end: float, obs, res) -> dict[str, Any]:
    """One stage of a continuation for the results file (costs: the optimiser's J, dimensionless)."""
    return {
        "end": end,
        "end_time": float(t_end),
        "n_obs": int(obs.n_obs),
        "cost_start": float(res.history[0]) if res.history else None,
        "cost_end": float(res.cost),
        "model_runs": int(res.n_evals),
        "n_iter": int(res.n_iter),
        "converged": bool(res.converged),
        "estimates": dict(res.estimates),
    }


def _stage_line(k: int, n: int, end: str, rec: Mapping[str, Any]) -> str:
    return (
        f"stage {k}/{n}: observations up to {end} ({rec['n_obs']} values): J {rec['cost_start']:.6g} -> "
        f"{rec['cost_end']:.6g}, {rec['model_runs']} model runs"
    )


def _stages(meth, s: Setup, obs, fit: Callable[[Any], Any], log) -> list[dict[str, Any]]:
    """``method.stages``: continuation in the window length. ``fit(observations)`` (the command's
    ``calibrate`` call, without uncertainty) on the observations up to each end in turn (the model run stops
    at the last of them), each stage from the previous estimate (``calibrate`` writes it back into the
    model's free parameters, where the next starts); priors, free parameters and optimiser settings are
    those of the last stage, which the caller runs on all the observations."""
    ends = _stage_ends(meth, s, obs)
    out = []
    for k, (v, t) in enumerate(zip(meth.stages, ends, strict=True), start=1):
        o = obs.window(-math.inf, t)
        out.append(_stage_record(v, t, o, fit(o)))
        log(_stage_line(k, len(ends) + 1, format_time(s.model, t), out[-1]))
    return out


def run_inverse(
    source: str | os.PathLike | Mapping[str, Any] | Config,
    *,
    mode: str | None = None,
    overrides: Sequence[str] | None = None,
    output: str | os.PathLike | None = None,
    progress: bool | None = False,
    log: Callable[[str], None] = lambda *_: None,
) -> dict[str, Any]:
    """Run the method a configuration describes; returns the results dict (also written to the results file).

    ``mode``: ``"calibrate"`` or ``"assimilate"`` (checks that ``method.kind`` fits the command);
    ``output``: the results file (overrides ``method.results``).
    """
    cfg = (
        source
        if isinstance(source, Config)
        else load_config(source, overrides=overrides, require=("observations", "method"))
    )
    if cfg.observations is None or cfg.method is None:
        raise ConfigError("calibrate/assimilate need `observations:` and `method:` sections")
    meth = cfg.method
    kind = meth.kind
    if mode == "calibrate" and kind not in CALIBRATE_KINDS:
        raise ConfigError(
            f"`pelagos calibrate` runs method.kind calibrate or esmda; use `pelagos assimilate` for {kind}"
        )
    if mode == "assimilate" and kind not in ASSIMILATE_KINDS:
        raise ConfigError(
            f"`pelagos assimilate` runs method.kind {', '.join(ASSIMILATE_KINDS)}; "
            f"use `pelagos calibrate` for {kind}"
        )
    progress = show_progress(progress)
    wall0 = time.perf_counter()
    s = setup(cfg)
    model, x0 = inverse_view(s, "calibrate")  # column: stacked; QG: the full state (observations)
    obs, truth = observations(cfg, s, model, x0)
    if kind in STATE_KINDS and _is_qg(s.model):
        model, x0 = inverse_view(s, kind, obs)
    truth = truth or (meth.truth or None)
    model.select_free(meth.free)
    set_priors(model, meth)
    names = model.free_parameter_names()
    u_prior = model.free_vector().clone()
    pred_before = None  # calibrate: the optimiser's own first-guess run gives it (res.predictions)
    if kind != "calibrate":
        with model.using(u_prior) if names else contextlib.nullcontext():
            pred_before = _predict(model, x0, obs, s.t0)
    result: dict[str, Any] = {
        "method": kind,
        "model": cfg.kind.name,
        "config": str(cfg.path) if cfg.path is not None else None,
    }
    g = torch.Generator().manual_seed(int(meth.seed))
    x_an = x0
    pred_after = None
    if kind in ("calibrate", "4dvar", "weak4dvar"):
        uncertainty = None if meth.uncertainty == "none" else meth.uncertainty
        if kind == "calibrate":
            from ..inverse.calibrate import calibrate

            B = covariance(model, x0, meth.background) if meth.control_state else None
            settings = dict(t0=s.t0, optimizer=meth.optimizer, max_iter=int(meth.max_iter), lr=float(meth.lr),
                            gtol=float(meth.gtol), progress=progress)  # fmt: skip
            stages = None
            if meth.stages:  # control_state is refused with stages: the parameters alone are warm-started

                def fit(o):  # one stage: the same calibration on a window of the observations
                    return calibrate(model, o, x0, uncertainty=None, **settings)

                stages = _stages(meth, s, obs, fit, log)
            res = calibrate(
                model, obs, x0, control_state=meth.control_state, B=B,
                uncertainty=uncertainty if names else None, **settings,
            )  # fmt: skip
            if meth.control_state and res.initial_state is not None:
                x_an = res.initial_state.detach()
            pred_before, pred_after = res.predictions["initial"], res.predictions["final"]
            if stages is not None:  # before/after span the whole continuation: from the first guess
                t_last = float(obs.times.max())
                stages.append(_stage_record("all", t_last, obs, res))
                log(_stage_line(len(stages), len(stages), format_time(s.model, t_last), stages[-1]))
                result["stages"] = stages
                with model.using(u_prior):
                    pred_before = _predict(model, x0, obs, s.t0)
            pres, hist, n_evals, n_iter = res, res.history, res.n_evals, res.n_iter
            converged, message = res.converged, res.message
        else:
            from ..inverse.fourdvar import fourdvar

            periodic = False  # a periodic Gaussian kernel is not positive definite in general
            B = covariance(model, x0, meth.background, periodic)
            Q = covariance(model, x0, meth.model_error, periodic) if kind == "weak4dvar" else None
            r = fourdvar(
                model, obs, x0, B, t0=s.t0, params=bool(names), Q=Q,
                model_error_every=int(getattr(meth, "model_error_every", 1)), method=meth.optimizer,
                max_iter=int(meth.max_iter), gtol=float(meth.gtol), uncertainty=uncertainty,
                progress=progress,
            )  # fmt: skip
            x_an, pres = r.analysis, r.params
            hist, n_evals, n_iter, converged, message = r.history, r.n_evals, r.n_iter, r.converged, r.message
            if pres is not None:
                model.load_free_vector(pres.z[: len(names)].to(model.free_vector().dtype))
            result["cost_terms"] = {k: float(v) for k, v in (r.cost_terms or {}).items()}
            if r.model_error is not None:
                result["model_error_rms"] = float(r.model_error.pow(2).mean().sqrt())
        result.update(cost_history=hist, n_evals=n_evals, n_iter=n_iter, converged=converged,
                      stop_reason=_reason(message, converged))  # fmt: skip
        if pres is not None:
            d = pres.to_dict()
            if "stages" in result:  # the start of the whole continuation, not that of its last stage
                d["initial"] = {n: float(model.parameter_spec(n).transform.forward(u_prior[i]))
                                for i, n in enumerate(names)}  # fmt: skip
            keys = (
                "names",
                "estimates",
                "std",
                "interval95",
                "prior",
                "initial",
                "parameter_history",
                "cost_terms",
            )
            result.update(
                {k: d[k] for k in keys if k in d and not (k == "cost_terms" and "cost_terms" in result)}
            )
    elif kind in ("enkf", "letkf"):
        from ..inverse.ensemble import ensemble_filter, sample_prior

        if not torch.is_tensor(x0):
            raise ConfigError(f"{kind} needs a tensor state; model kind {cfg.kind.name!r} has none here")
        Ne = int(meth.members)
        xe = x0[0] if _is_qg(getattr(model, "qg", None)) else x0  # QG: members replace the batch dim of q
        E0 = xe + _state_std(xe, meth.spread).to(xe) * torch.randn(Ne, *xe.shape, generator=g, dtype=xe.dtype)
        U0 = sample_prior(model, Ne, generator=g) if names else None
        loc = None
        if kind == "letkf":
            if names:
                raise ConfigError("LETKF estimates the state only: leave method.free empty (or use enkf)")
            sc, period = _state_coords(model, xe)
            loc = {
                "state_coords": sc,
                "obs_coords": _obs_coords(obs, model),
                "radius": float(meth.radius),
                "period": period if meth.periodic else None,
            }
        r = ensemble_filter(
            model, obs, E0, method="letkf" if kind == "letkf" else meth.variant, infl=float(meth.inflation),
            rot=bool(meth.rotate), params=U0, localization=loc, t0=s.t0, generator=g, progress=progress,
        )  # fmt: skip
        with torch.no_grad():
            pred_after = torch.stack(
                [obs.operator(r.mean[i].reshape(x0.shape).to(x0)) for i in range(len(r.times))]
            )
        result.update(
            times=r.times.tolist(), spread=r.spread.tolist(), members=Ne, n_evals=Ne * len(r.times),
            final_mean=r.mean[-1].tolist() if r.mean.shape[-1] <= 10000 else None,
        )  # fmt: skip
        x_an = None
        if names and r.params is not None:
            U = r.params[-1]
            model.load_free_vector(U.mean(0).to(model.free_vector().dtype))
            phys = {n: model.parameter_spec(n).transform.forward(U[:, i]) for i, n in enumerate(names)}
            result.update(names=names, estimates={n: float(v.mean()) for n, v in phys.items()},
                          std={n: float(v.std()) for n, v in phys.items()})  # fmt: skip
    else:  # ES-MDA
        from ..inverse.ensemble import esmda, sample_prior

        if not names:
            raise ConfigError("ES-MDA estimates parameters: list them in method.free")
        Ne = int(meth.members)
        U = sample_prior(model, Ne, generator=g)
        X0 = _expand(x0, Ne)
        if meth.control_state:
            X0 = X0 + _state_std(x0, meth.spread).to(x0) * torch.randn(X0.shape, generator=g, dtype=x0.dtype)
        E = esmda(model, obs, X0, U, alphas=meth.alphas, control_state=meth.control_state, t0=s.t0,
                  generator=g, progress=progress)  # fmt: skip
        model.load_free_vector(E.params.mean(0).to(model.free_vector().dtype))
        if meth.control_state and E.initial_state is not None:
            x_an = E.initial_state.mean(0)
        result.update(
            names=names, estimates=E.mean, std=E.std, cost_history=E.history, n_evals=E.n_evals * Ne,
            members=Ne,
            stop_reason=f"{len(E.history) - 1} assimilations done (alphas)",
            prior={n: {"mean": float(model.parameter_spec(n).transform.forward(
                torch.tensor(model.parameter_spec(n).prior.mean)))} for n in names},
        )  # fmt: skip
    if pred_after is None:
        pred_after = _predict(model, x_an, obs, s.t0)
    result["misfit"] = {"before": float(obs.nll(pred_before)), "after": float(obs.nll(pred_after))}
    result["n_obs"] = int(obs.n_obs)
    result["wall_time"] = time.perf_counter() - wall0
    if truth:
        result["truth"] = truth
    files: list[Path] = []
    if "written" in obs.meta:
        files.append(Path(obs.meta["written"]))
    if cfg.output.file and x_an is not None:
        files += _analysed_run(cfg, s, model, x_an, names)
    if meth.plots:
        nc = next((f for f in files if f.suffix == ".nc"), None)
        files += _plots(cfg.resolve(meth.plots), result, obs, pred_before, pred_after, s, truth, nc)
    dest = Path(output) if output is not None else (
        cfg.resolve(meth.results) if meth.results else Path("results") / f"{cfg.stem}_{kind}.json"
    )  # fmt: skip
    dest.parent.mkdir(parents=True, exist_ok=True)
    result["files"] = [str(f) for f in files] + [str(dest)]
    clean = json.loads(json.dumps(result, default=_jsonable))
    dest.write_text(
        json.dumps(clean, indent=2)
        if dest.suffix != ".yaml" and dest.suffix != ".yml"
        else yaml.safe_dump(clean, sort_keys=False)
    )
    return result


def _jsonable(x):
    if torch.is_tensor(x):
        return x.tolist()
    return float(x)


def _reason(message: str, converged: bool) -> str:
    m = (message or "").strip()
    words = {
        "max_iter reached": "stopped after max_iter iterations (not converged: raise method.max_iter)",
        "gradient norm below gtol": "converged: the gradient norm fell below gtol",
        "cost change below ftol": "converged: the cost stopped changing (below ftol)",
        "step or cost change below tolerance": "converged: step or cost change below tolerance",
    }
    if m in words:
        return words[m]
    if m.upper().startswith("ABNORMAL"):
        return "the line search could not decrease the cost further (ABNORMAL_TERMINATION_IN_LNSRCH)"
    return m or ("converged" if converged else "stopped")


def _analysed_run(cfg: Config, s: Setup, model, x_an, names) -> list[Path]:
    """The window rerun with the estimates (and the analysed initial state) to ``output.file``."""
    import dataclasses

    from .build import run

    estimates = {n: float(model.get_parameter_value(n).detach()) for n in names}
    cfg2 = dataclasses.replace(cfg, parameters={**cfg.parameters, **estimates}, restart=type(cfg.restart)())
    state = x_an
    if _is_column(s.model):
        from ..column.stacked import StackedColumn

        if isinstance(model, StackedColumn) and torch.is_tensor(x_an):
            # dense copies with the strides of every later step's state (a view of one column has strides
            # (V·nz, 1) and counts as contiguous): the compiled step and output are specialised on strides,
            # and views of the stacked state would cost each a second compilation
            state = {
                k: v.clone(memory_format=torch.contiguous_format)
                for k, v in model.unstack(x_an.reshape(-1, *x_an.shape[-2:])).items()
            }
    elif _is_qg(s.model):
        state = s.model.state_from_q(x_an) if torch.is_tensor(x_an) else x_an
    return run(cfg2, fresh=True, progress=False, state=state)


def _plots(folder: Path, result: Mapping, obs, before, after, s: Setup, truth, nc_path) -> list[Path]:
    from ..core.model import declared_variables
    from ..core.timeaxis import model_epoch
    from .plots import _plt, plot_cost, plot_observation_fit, plot_parameter_history

    plt = _plt()

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    if result.get("cost_history"):
        files.append(folder / "cost.png")
        ylabel = "ensemble-mean misfit (dimensionless)" if result["method"] == "esmda" else None
        plt.close(plot_cost(result["cost_history"], ylabel=ylabel, out=files[-1]))
    ph = result.get("parameter_history") or {}
    if ph:
        files.append(folder / "parameters.png")
        units = {n: s.model.parameter_spec(n).units for n in ph}
        fig = plot_parameter_history(ph, units=units, prior=result.get("prior"), truth=truth, out=files[-1])
        plt.close(fig)
    cols = obs.columns or [(f"obs{j}", "") for j in range(obs.m)]
    var_units = {v.name: v.units for v in declared_variables(s.model) or []}
    files.append(folder / "obs_vs_model.png")
    fig = plot_observation_fit(
        obs.times.numpy(),
        obs.values.reshape(obs.n_times, -1, obs.m)[:, 0],
        before.reshape(obs.n_times, -1, obs.m)[:, 0],
        after.reshape(obs.n_times, -1, obs.m)[:, 0],
        titles=[f"{v} @ {_where(w)}" for v, w in cols],
        units=[var_units.get(v, "") for v, _ in cols],
        epoch=model_epoch(s.model),
        out=files[-1],
    )
    plt.close(fig)
    if nc_path is not None and _is_column(s.model):
        from .plots import plot_output

        files += list(plot_output(nc_path, folder))
    return files


def _where(w) -> str:
    if isinstance(w, Mapping):
        return ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in w.items())
    return w if isinstance(w, str) else f"{w:g}"


def run_inverse_cli(source, *, mode: str, overrides=None, output=None, progress=None, log=print) -> int:
    """Run :func:`run_inverse` and print a short summary (the CLI entry point)."""
    res = run_inverse(source, mode=mode, overrides=overrides, output=output, progress=progress, log=log)
    log(
        f"{res['method']} on {res['model']}: misfit {res['misfit']['before']:.4g} -> "
        f"{res['misfit']['after']:.4g} "
        f"({res['n_obs']} observations), {res.get('n_evals', '?')} model runs"
        + (f" ({sum(st['model_runs'] for st in res['stages'])} over the stages)" if "stages" in res else "")
        + f", {res['wall_time']:.1f} s"
    )
    if res.get("stop_reason"):
        log(f"  {res['stop_reason']}")
    for n in res.get("names", []):
        sd = (res.get("std") or {}).get(n)
        log(f"  {n:24s} {res['estimates'][n]:.6g}" + (f" ± {sd:.3g}" if sd is not None else ""))
    for f in res.get("files", []):
        log(f"wrote {f}")
    return 0


# -- pelagos sensitivity: the misfit on a grid of two free parameters ----------------------------------------
def _axis_range(spec, u_c: float, u_t: float | None, span: float, given: tuple[float, float] | None):
    """Unconstrained ``(lo, hi)`` of one axis: ``given`` physical bounds, else the configured value (and the
    truth, when known) widened by ``log(span)`` on each side (×/÷ span for log-transformed parameters)."""
    if given is not None:
        lo, hi = (float(spec.transform.inverse(torch.tensor(v, dtype=torch.float64))) for v in given)
        return min(lo, hi), max(lo, hi)
    w = math.log(span)
    lo, hi = (u_c, u_c) if u_t is None else (min(u_c, u_t), max(u_c, u_t))
    return lo - w, hi + w


def run_sensitivity(
    source: str | os.PathLike | Mapping[str, Any] | Config,
    *,
    grid: int = 9,
    span: float = 2.0,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    overrides: Sequence[str] | None = None,
    output: str | os.PathLike | None = None,
    plot: bool = True,
    progress: bool | None = False,
) -> dict[str, Any]:
    """``pelagos sensitivity CONFIG``: the observation misfit of a calibrate configuration (its model, window,
    ``observations:`` and the two parameters of ``method.free``) on a ``grid × grid`` tensor grid of the two
    parameters, evenly spaced in their unconstrained (log) space, with the forward-mode gradient at every node
    (:func:`pelagos.inverse.sensitivity.loss_map`). Priors are left out: the map is the data misfit
    ``½ Σ ((H(x) − y)/σ)²``.

    ``ranges``: ``{name: (lo, hi)}`` physical bounds of an axis; default: the configured value and the truth
    of a twin (``observations.synthetic.truth`` or ``method.truth``), widened by ×/÷ ``span``. Writes the JSON
    (``output``, else ``results/<config>_sensitivity.json``) and the quiver plot next to it (``.png``).
    """
    from ..inverse.problem import VariationalProblem
    from ..inverse.sensitivity import loss_map

    cfg = (
        source
        if isinstance(source, Config)
        else load_config(source, overrides=overrides, require=("observations", "method"))
    )
    meth = cfg.method
    if cfg.observations is None or meth is None:
        raise ConfigError("sensitivity needs `observations:` and `method:` (with free: [two parameters])")
    if len(meth.free) != 2:
        raise ConfigError(
            f"sensitivity maps two parameters: method.free lists {len(meth.free)} ({meth.free}); "
            "give exactly two (e.g. --set 'method.free=[A_h, r_bot]')"
        )
    if grid < 2:
        raise ConfigError(f"--grid must be >= 2 nodes per axis; got {grid}")
    if not span > 1:
        raise ConfigError(f"--span must be > 1 (a factor); got {span}")
    ranges = dict(ranges or {})
    unknown = set(ranges) - set(meth.free)
    if unknown:
        raise ConfigError(f"--range for {sorted(unknown)}, which are not in method.free {meth.free}")
    progress = show_progress(progress)
    wall0 = time.perf_counter()
    s = setup(cfg)
    model, x0 = inverse_view(s, "calibrate")
    obs, truth = observations(cfg, s, model, x0)
    truth = truth or (meth.truth or {})
    model.select_free(meth.free)
    set_priors(model, meth)
    names = model.free_parameter_names()
    specs = [model.parameter_spec(n) for n in names]
    u_c = model.free_vector().detach().to(torch.float64)
    if cfg.observations.synthetic is not None:  # a twin: parameters without a truth value keep the configured
        truth = {n: float(truth.get(n, model.get_parameter_value(n).detach())) for n in names}
    axes = []
    for i, (n, sp) in enumerate(zip(names, specs, strict=True)):
        u_t = None
        if n in truth:
            u_t = float(sp.transform.inverse(torch.tensor(float(truth[n]), dtype=torch.float64)))
        lo, hi = _axis_range(sp, float(u_c[i]), u_t, span, ranges.get(n))
        axes.append(torch.linspace(lo, hi, grid, dtype=torch.float64))
    prob = VariationalProblem(model, obs, x0, t0=s.t0, include_prior=False)

    def cost(u: torch.Tensor) -> torch.Tensor:
        return prob.cost(u.to(prob.dtype))

    def physical(i: int, u: torch.Tensor) -> torch.Tensor:
        return specs[i].transform.forward(u)

    smap = loss_map(cost, axes[0], axes[1], names=names, to_physical=physical, progress=progress)
    result: dict[str, Any] = {
        "command": "sensitivity",
        "model": cfg.kind.name,
        "config": str(cfg.path) if cfg.path is not None else None,
        **smap.to_dict(),
        "units": {n: sp.units for n, sp in zip(names, specs, strict=True)},
        "transforms": {n: sp.transform.name for n, sp in zip(names, specs, strict=True)},
        "configured": {n: float(physical(i, u_c[i])) for i, n in enumerate(names)},
        "loss_definition": "0.5 * sum(((H(x) - y) / sigma)**2) over all observations (no prior)",
        "n_obs": int(obs.n_obs),
        "window_steps": int(s.n_steps),
        "wall_time": time.perf_counter() - wall0,
    }
    result["marks_unconstrained"] = {"configured": u_c.tolist()}
    if truth:
        result["truth"] = {n: float(truth[n]) for n in names if n in truth}
        if len(result["truth"]) == 2:
            result["marks_unconstrained"]["truth"] = [
                float(sp.transform.inverse(torch.tensor(result["truth"][n], dtype=torch.float64)))
                for n, sp in zip(names, specs, strict=True)
            ]
    dest = Path(output) if output is not None else Path("results") / f"{cfg.stem}_sensitivity.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    files = [dest]
    if plot:
        from .plots import _plt, plot_sensitivity_map

        fig = plot_sensitivity_map(result, out=dest.with_suffix(".png"), title=cfg.title or None)
        _plt().close(fig)
        files.insert(0, dest.with_suffix(".png"))
    result["files"] = [str(f) for f in files]
    dest.write_text(json.dumps(json.loads(json.dumps(result, default=_jsonable)), indent=1))
    return result
