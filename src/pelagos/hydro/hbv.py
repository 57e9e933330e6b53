"""HBV 1.0, the conceptual rainfall–runoff model of the δHBV papers, batched and differentiable.

Daily, explicit, operator-split (one process after the other within a day), for ``n_basins`` basins each with
``nmul`` parallel components that share the forcing and differ in their parameters; basin outputs are the mean
over the components. Stores (mm), all started at 0.001 mm: ``SNOWPACK`` (frozen), ``MELTWATER`` (liquid water
held in the snow), ``SM`` (soil moisture), ``SUZ`` (upper zone), ``SLZ`` (lower zone). One day, with P
(mm/d), T (°C), PET (mm/d) (Bergström 1992; Seibert 2005 HBV-light; Beck et al. 2020; Feng et al. 2022):

snow
    rain = P·[T ≥ TT],  snow = P − rain;                         SNOWPACK += snow
    melt = min(CFMAX·max(T − TT, 0), SNOWPACK);                  SNOWPACK −= melt,   MELTWATER += melt
    refreeze = min(CFR·CFMAX·max(TT − T, 0), MELTWATER);         MELTWATER −= refreeze, SNOWPACK += refreeze
    tosoil = max(MELTWATER − CWH·SNOWPACK, 0);                   MELTWATER −= tosoil
soil
    recharge = (rain + tosoil)·clamp((SM/FC)^BETA, 0, 1);       SM += rain + tosoil − recharge
    excess = max(SM − FC, 0);                                    SM −= excess
    ET = min(SM, PET·clamp(SM/(LP·FC), 0, 1));                   SM = max(SM − ET, 1e-5)
response
    SUZ += recharge + excess;  perc = min(SUZ, PERC);            SUZ −= perc
    Q0 = K0·max(SUZ − UZL, 0);  SUZ −= Q0;   Q1 = K1·SUZ;  SUZ −= Q1
    SLZ += perc;  Q2 = K2·SLZ;  SLZ −= Q2;                       Q = Q0 + Q1 + Q2

then Q (mean over the components) is routed by a gamma unit hydrograph (:mod:`.unit_hydrograph`, parameters
``route_a``, ``route_b``). The floor ``SM ≥ 1e-5`` is the one place water can appear; the amount is returned
(``sm_floor``) so that the balance ``P = ET + Q + ΔS − sm_floor`` closes to round-off.

Parameters are physical values (bounds and units in :data:`PARAMETERS`); each HBV parameter may be

- a number or ``(n_basins,)``: the same for every component,
- ``(n_basins, nmul)``: static,
- ``(n_days, n_basins, nmul)``: dynamic (the value of each day, e.g. from an LSTM),

and ``route_a``, ``route_b`` are ``(n_basins,)`` (or numbers). Networks usually produce values in (0, 1):
:func:`scale_parameters` maps them linearly onto the bounds.

``smooth=s`` (> 0, in 1/°C for the temperature thresholds and 1/mm or 1/(mm/d) for the storage thresholds)
replaces the thresholds by smooth functions with that sharpness: the rain/snow step by a logistic
``σ(s·(T − TT))``, each ``max(x, 0)`` ramp (melt, refreezing, snow outflow, excess over FC, the UZL threshold)
by ``softplus(s·x)/s`` and the ET limit ``min(SM, LP·FC)`` by ``LP·FC − softplus(s·(LP·FC − SM))/s``; the
limits by the available water (``min(·, store)``) stay exact, so stores never go negative and the balance
still closes. ``softplus(s·x)/s − max(x, 0) ∈ (0, log 2/s]``, so the smooth model tends to the hard one as
``s`` grows. Default ``None``: the hard thresholds of the reference implementation.

``process={"ET": f, ...}`` replaces a flux by a user function (e.g. a neural network) called every day with
a dict of the local quantities (see :data:`PROCESS_FLUXES`); its result is limited to the water available, as
the default flux is, and enters the water balance like it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.errors import ConfigError, ForcingError, ShapeError
from .unit_hydrograph import UH_LENGTH, gamma_weights
from .unit_hydrograph import route as route_runoff


class ParamSpec(NamedTuple):
    """Published bounds (δHBV), units and meaning of one parameter."""

    lo: float
    hi: float
    units: str
    long_name: str


PARAMETERS: dict[str, ParamSpec] = {
    "BETA": ParamSpec(1.0, 6.0, "1", "shape exponent of the soil-moisture recharge curve"),
    "FC": ParamSpec(50.0, 1000.0, "mm", "field capacity (maximum soil moisture)"),
    "K0": ParamSpec(0.05, 0.9, "d-1", "recession coefficient of near-surface flow (SUZ above UZL)"),
    "K1": ParamSpec(0.01, 0.5, "d-1", "recession coefficient of the upper zone"),
    "K2": ParamSpec(0.001, 0.2, "d-1", "recession coefficient of the lower zone (baseflow)"),
    "LP": ParamSpec(0.2, 1.0, "1", "fraction of FC above which ET is potential"),
    "PERC": ParamSpec(0.0, 10.0, "mm d-1", "maximum percolation from the upper to the lower zone"),
    "UZL": ParamSpec(0.0, 100.0, "mm", "upper-zone threshold of near-surface flow"),
    "TT": ParamSpec(-2.5, 2.5, "degC", "threshold temperature of snowfall and melt"),
    "CFMAX": ParamSpec(0.5, 10.0, "mm degC-1 d-1", "degree-day factor of melt"),
    "CFR": ParamSpec(0.0, 0.1, "1", "refreezing coefficient (fraction of CFMAX)"),
    "CWH": ParamSpec(0.0, 0.2, "1", "water-holding capacity of snow (fraction of SNOWPACK)"),
    "route_a": ParamSpec(0.0, 2.9, "1", "gamma unit-hydrograph shape, a = route_a + 0.1"),
    "route_b": ParamSpec(0.0, 6.5, "d", "gamma unit-hydrograph scale, theta = route_b + 0.5 d"),
}
PARAMETER_NAMES: tuple[str, ...] = tuple(PARAMETERS)
HBV_PARAMETER_NAMES: tuple[str, ...] = PARAMETER_NAMES[:12]
ROUTING_PARAMETER_NAMES: tuple[str, ...] = ("route_a", "route_b")

# Typical values (inside the bounds) for examples and the registered kind's defaults.
DEFAULTS: dict[str, float] = {
    "BETA": 2.0, "FC": 250.0, "K0": 0.3, "K1": 0.1, "K2": 0.02, "LP": 0.6, "PERC": 2.0, "UZL": 20.0,
    "TT": 0.0, "CFMAX": 3.0, "CFR": 0.05, "CWH": 0.1, "route_a": 1.5, "route_b": 2.0,
}  # fmt: skip

STORES: tuple[str, ...] = ("SNOWPACK", "MELTWATER", "SM", "SUZ", "SLZ")
INITIAL_STORE = 0.001  # mm, every store at a cold start
SM_FLOOR = 1e-5  # mm, SM never drops below this after ET

#: Fluxes a ``process`` function may replace, with the store that limits each (mm/d).
PROCESS_FLUXES: dict[str, str] = {
    "melt": "SNOWPACK",
    "refreeze": "MELTWATER",
    "recharge": "rain + tosoil",
    "ET": "SM",
    "perc": "SUZ",
    "Q0": "SUZ",
    "Q1": "SUZ",
    "Q2": "SLZ",
}


def scale_parameters(
    raw: Tensor, names: tuple[str, ...] | list[str] = PARAMETER_NAMES, *, apply_sigmoid: bool = False
) -> dict[str, Tensor]:
    """Map values in [0, 1] (the last dim of ``raw``, one entry per name) linearly onto the published bounds.

    ``p = lo + raw·(hi − lo)``; with ``apply_sigmoid=True`` ``raw`` is unbounded and goes through a sigmoid
    first.
    Returns ``{name: raw[..., i] scaled}`` (shape ``raw.shape[:-1]``).
    """
    names = tuple(names)
    if raw.shape[-1] != len(names):
        raise ShapeError(
            f"scale_parameters: raw has {raw.shape[-1]} entries in its last dim, names {len(names)}"
        )
    unknown = [n for n in names if n not in PARAMETERS]
    if unknown:
        raise ConfigError(f"scale_parameters: unknown HBV parameter(s) {unknown}; valid: {list(PARAMETERS)}")
    s = torch.sigmoid(raw) if apply_sigmoid else raw
    return {
        n: PARAMETERS[n].lo + s[..., i] * (PARAMETERS[n].hi - PARAMETERS[n].lo) for i, n in enumerate(names)
    }


def unscale_parameters(
    params: Mapping[str, Tensor], names: tuple[str, ...] | list[str] = PARAMETER_NAMES
) -> Tensor:
    """Inverse of :func:`scale_parameters` (no sigmoid): physical values -> [0, 1], stacked on a last dim."""
    out = []
    for n in names:
        lo, hi = PARAMETERS[n].lo, PARAMETERS[n].hi
        out.append((torch.as_tensor(params[n]) - lo) / (hi - lo))
    return torch.stack(torch.broadcast_tensors(*out), dim=-1)


def initial_state(
    n_basins: int,
    nmul: int = 1,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Cold start: every store 0.001 mm ``(n_basins, nmul)`` and an empty routing history ``Qhist``
    ``(n_basins, 14)`` (mm/d, the last 14 days of unrouted runoff, oldest first)."""
    st = {k: torch.full((n_basins, nmul), INITIAL_STORE, dtype=dtype, device=device) for k in STORES}
    st["Qhist"] = torch.zeros(n_basins, UH_LENGTH - 1, dtype=dtype, device=device)
    return st


@dataclass
class HBVOutput:
    """Daily basin values (mean over the ``nmul`` components), ``(n_days − warmup, n_basins)``.

    Fluxes in mm/d, stores in mm (end of day). ``Q`` is routed; every other flux is unrouted. ``SWE`` =
    SNOWPACK + MELTWATER (frozen and liquid water in the snow). ``state`` is the final state (pass it as
    ``state=`` to continue the run); ``uh`` the unit-hydrograph weights ``(n_basins, 15)`` (``None`` without
    routing).
    """

    Q: Tensor
    Q_unrouted: Tensor
    ET: Tensor
    SWE: Tensor
    SM: Tensor
    SUZ: Tensor
    SLZ: Tensor
    Q0: Tensor
    Q1: Tensor
    Q2: Tensor
    recharge: Tensor
    perc: Tensor
    excess: Tensor
    rain: Tensor
    snow: Tensor
    melt: Tensor
    refreeze: Tensor
    tosoil: Tensor
    sm_floor: Tensor
    SNOWPACK: Tensor
    MELTWATER: Tensor
    state: dict[str, Tensor]
    initial_storage: Tensor  # (n_basins,) mm: total storage at the start of the kept period
    uh: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    @property
    def storage(self) -> Tensor:
        """Total storage at the end of each day (mm): SWE + SM + SUZ + SLZ."""
        return self.SWE + self.SM + self.SUZ + self.SLZ


def _relu(x: Tensor, s: float | None) -> Tensor:
    return torch.relu(x) if s is None else F.softplus(x, beta=s)


FLUXES: tuple[str, ...] = (
    "rain", "snow", "melt", "refreeze", "tosoil", "recharge", "excess", "ET", "sm_floor", "perc",
    "Q0", "Q1", "Q2",
)  # fmt: skip


def _replace(proc: Mapping[str, Callable], name: str, default: Tensor, ctx: dict, limit: Tensor) -> Tensor:
    ctx = dict(ctx)
    ctx["default"] = default
    val = proc[name](ctx)
    return torch.minimum(torch.clamp(val, min=0.0), limit)


def hbv_day(
    stores: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    Pt: Tensor,
    Tt: Tensor,
    Et: Tensor,
    p: Mapping[str, Tensor],
    smooth: float | None = None,
    process: Mapping[str, Callable[[dict], Tensor]] | None = None,
    day: int = 0,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """One day of HBV for any batch shape (the module docstring's equations; no routing).

    Args:
        stores: ``(SNOWPACK, MELTWATER, SM, SUZ, SLZ)`` (mm), each ``(..., nmul)``, e.g. ``(n_basins, nmul)``.
        Pt, Tt, Et: the day's P (mm/d), T (°C), PET (mm/d), broadcasting against the stores (``(..., 1)``).
        p: the 12 HBV parameters of the day, broadcasting against the stores.
        smooth, process: as in :func:`run_hbv`; ``day`` is handed to the process functions.

    Returns:
        ``(new stores, fluxes)`` with the fluxes (mm/d) in the order of :data:`FLUXES`.
    """
    snowpack, meltwater, sm, suz, slz = stores
    s = smooth
    proc = process or {}
    replace = functools.partial(_replace, proc)
    TT, CFMAX, FC, LP, BETA = p["TT"], p["CFMAX"], p["FC"], p["LP"], p["BETA"]
    ctx = None
    if proc:
        ctx = {"day": day, "P": Pt, "T": Tt, "PET": Et, **p}
    # -- snow
    if s is None:
        rain = Pt * (Tt >= TT).to(Pt.dtype)
    else:
        rain = Pt * torch.sigmoid(s * (Tt - TT))
    snow = Pt - rain
    snowpack = snowpack + snow
    melt = torch.minimum(_relu(CFMAX * (Tt - TT), s), snowpack)
    if "melt" in proc:
        melt = replace("melt", melt, {**ctx, "SNOWPACK": snowpack, "MELTWATER": meltwater}, snowpack)
    meltwater = meltwater + melt
    snowpack = snowpack - melt
    refreeze = torch.minimum(_relu(p["CFR"] * CFMAX * (TT - Tt), s), meltwater)
    if "refreeze" in proc:
        refreeze = replace("refreeze", refreeze, {**ctx, "SNOWPACK": snowpack, "MELTWATER": meltwater},
                           meltwater)  # fmt: skip
    snowpack = snowpack + refreeze
    meltwater = meltwater - refreeze
    if s is None:
        tosoil = torch.relu(meltwater - p["CWH"] * snowpack)
    else:
        tosoil = torch.minimum(_relu(meltwater - p["CWH"] * snowpack, s), meltwater)
    meltwater = meltwater - tosoil
    # -- soil moisture
    wet = torch.clamp((sm / FC) ** BETA, 0.0, 1.0)
    inflow = rain + tosoil
    recharge = inflow * wet
    if "recharge" in proc:
        recharge = replace("recharge", recharge, {**ctx, "SM": sm, "rain": rain, "tosoil": tosoil}, inflow)
    sm = sm + rain + tosoil - recharge  # this order of additions, as in the reference
    if s is None:
        excess = torch.relu(sm - FC)
    else:
        excess = torch.minimum(_relu(sm - FC, s), sm)
    sm = sm - excess
    if s is None:
        ef = torch.clamp(sm / (LP * FC), 0.0, 1.0)
    else:
        lpfc = LP * FC
        ef = torch.clamp((lpfc - F.softplus(lpfc - sm, beta=s)) / lpfc, 0.0, 1.0)
    et = torch.minimum(sm, Et * ef)
    if "ET" in proc:
        et = replace("ET", et, {**ctx, "SM": sm, "SNOWPACK": snowpack, "SUZ": suz, "SLZ": slz}, sm)
    sm_after = sm - et
    sm = torch.clamp(sm_after, min=SM_FLOOR)
    floor = sm - sm_after
    # -- response
    suz = suz + recharge + excess
    perc = torch.minimum(suz, p["PERC"])
    if "perc" in proc:
        perc = replace("perc", perc, {**ctx, "SUZ": suz, "SLZ": slz}, suz)
    suz = suz - perc
    q0 = p["K0"] * _relu(suz - p["UZL"], s)
    if s is not None or "Q0" in proc:
        if "Q0" in proc:
            q0 = replace("Q0", q0, {**ctx, "SUZ": suz, "SLZ": slz}, suz)
        else:
            q0 = torch.minimum(q0, suz)
    suz = suz - q0
    q1 = p["K1"] * suz
    if "Q1" in proc:
        q1 = replace("Q1", q1, {**ctx, "SUZ": suz, "SLZ": slz}, suz)
    suz = suz - q1
    slz = slz + perc
    q2 = p["K2"] * slz
    if "Q2" in proc:
        q2 = replace("Q2", q2, {**ctx, "SUZ": suz, "SLZ": slz}, slz)
    slz = slz - q2
    stores = (snowpack, meltwater, sm, suz, slz)
    return stores, (rain, snow, melt, refreeze, tosoil, recharge, excess, et, floor, perc, q0, q1, q2)


def _param_table(
    params: Mapping[str, Tensor | float], n_days: int, n_basins: int, dtype: torch.dtype, device
) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
    """Split into static ``(n_basins, nmul|1)`` and dynamic ``(n_days, n_basins, nmul|1)`` tensors; nmul."""
    missing = [n for n in HBV_PARAMETER_NAMES if n not in params]
    if missing:
        raise ConfigError(f"run_hbv: missing parameter(s) {missing}; give all of {list(HBV_PARAMETER_NAMES)}")
    unknown = [n for n in params if n not in PARAMETERS]
    if unknown:
        raise ConfigError(f"run_hbv: unknown parameter(s) {unknown}; valid: {list(PARAMETERS)}")
    static, dynamic, nmul = {}, {}, 1
    for n in HBV_PARAMETER_NAMES:
        v = torch.as_tensor(params[n], device=device)
        v = v.to(dtype) if v.dtype != dtype else v
        if v.ndim == 0:
            v = v.expand(n_basins).reshape(n_basins, 1)
        elif v.ndim == 1:
            if v.shape[0] != n_basins:
                raise ShapeError(f"run_hbv: parameter {n} has shape {tuple(v.shape)}; expected ({n_basins},)")
            v = v[:, None]
        if v.ndim == 2:
            if v.shape[0] != n_basins:
                raise ShapeError(
                    f"run_hbv: static {n} must be (n_basins={n_basins}, nmul); got {tuple(v.shape)}"
                )
            static[n] = v
        elif v.ndim == 3:
            if v.shape[:2] != (n_days, n_basins):
                raise ShapeError(
                    f"run_hbv: dynamic {n} must be (n_days={n_days}, n_basins={n_basins}, nmul); "
                    f"got {tuple(v.shape)}"
                )
            dynamic[n] = v
        else:
            raise ShapeError(f"run_hbv: parameter {n} has {v.ndim} dims; expected 0 to 3")
        if v.shape[-1] != 1:
            if nmul not in (1, v.shape[-1]):
                raise ShapeError(f"run_hbv: parameters disagree on nmul ({nmul} vs {v.shape[-1]} for {n})")
            nmul = v.shape[-1]
    return static, dynamic, nmul


def _check_forcing(name: str, x: Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = torch.nonzero(~torch.isfinite(x))[0].tolist()
        raise ForcingError(
            f"run_hbv: {name} contains NaN/Inf (first at day {bad[0]}, basin {bad[1]}); fill gaps first"
        )


def run_hbv(
    P: Tensor,
    T: Tensor,
    PET: Tensor,
    params: Mapping[str, Tensor | float],
    *,
    state: Mapping[str, Tensor] | None = None,
    warmup: int = 0,
    route: bool = True,
    smooth: float | None = None,
    process: Mapping[str, Callable[[dict], Tensor]] | None = None,
    check: bool = True,
) -> HBVOutput:
    """Run HBV 1.0 over ``n_days`` for ``n_basins`` basins (see the module docstring for the equations).

    Args:
        P, T, PET: ``(n_days, n_basins)``: precipitation (mm/d), mean air temperature (°C), potential
            evapotranspiration (mm/d).
        params: physical values of the 12 HBV parameters (number, ``(n_basins,)``, ``(n_basins, nmul)``
            static or ``(n_days, n_basins, nmul)`` dynamic) and, when ``route``, ``route_a``, ``route_b``
            (number or ``(n_basins,)``).
        state: the state to start from (as :func:`initial_state` or a previous ``HBVOutput.state``);
            default a cold start with every store at 0.001 mm.
        warmup: number of leading days that are run but left out of the returned series (the routing
            history they build up is kept).
        route: apply the gamma unit hydrograph to Q (else ``Q`` equals ``Q_unrouted``).
        smooth: sharpness of the smooth thresholds; ``None`` (default) = the hard thresholds.
        process: ``{flux: f}`` replacing fluxes (keys in :data:`PROCESS_FLUXES`);
            ``f(ctx) -> (n_basins, nmul)`` mm/d with ``ctx`` holding ``day`` (int), ``P``, ``T``, ``PET``
            ``(n_basins, 1)``, the stores and the parameters of the day ``(n_basins, nmul|1)``, ``rain``,
            ``tosoil`` and ``default`` (the flux HBV would use). The result is clipped to
            ``[0, available water]``.
        check: validate the forcing (finite, P ≥ 0, PET ≥ 0); turn off inside training loops for speed.

    Returns:
        :class:`HBVOutput`.
    """
    if P.ndim != 2 or T.shape != P.shape or PET.shape != P.shape:
        raise ShapeError(
            f"run_hbv: P, T, PET must all be (n_days, n_basins); got {tuple(P.shape)}, {tuple(T.shape)}, "
            f"{tuple(PET.shape)}"
        )
    n_days, n_basins = P.shape
    if not 0 <= warmup < n_days:
        raise ConfigError(f"run_hbv: warmup={warmup} must be in [0, n_days={n_days})")
    if smooth is not None and not smooth > 0:
        raise ConfigError(f"run_hbv: smooth (the sharpness) must be > 0 or None; got {smooth}")
    unknown = [k for k in (process or {}) if k not in PROCESS_FLUXES]
    if unknown:
        raise ConfigError(f"run_hbv: process {unknown} cannot be replaced; valid: {list(PROCESS_FLUXES)}")
    dtype = torch.promote_types(P.dtype, torch.as_tensor(params["FC"]).dtype) if "FC" in params else P.dtype
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    device = P.device
    P, T, PET = (x.to(dtype) for x in (P, T, PET))
    if check:
        for name, x in (("P", P), ("T", T), ("PET", PET)):
            _check_forcing(name, x)
        if bool((P < 0).any()):
            raise ForcingError(
                f"run_hbv: negative precipitation (min {float(P.min()):g} mm/d); P must be >= 0"
            )
        if bool((PET < 0).any()):
            raise ForcingError(f"run_hbv: negative PET (min {float(PET.min()):g} mm/d); PET must be >= 0")
    static, dynamic, nmul = _param_table(params, n_days, n_basins, dtype, device)
    if state is None:
        state = initial_state(n_basins, nmul, dtype=dtype, device=device)
    st = {}
    for k in STORES:
        if k not in state:
            raise ConfigError(f"run_hbv: state lacks {k!r}; expected the keys {list(STORES)} and 'Qhist'")
        st[k] = state[k].to(dtype).expand(n_basins, nmul)
    s = smooth
    proc = dict(process or {})
    names = FLUXES + STORES
    rec: dict[str, list[Tensor]] = {n: [] for n in names}
    snowpack, meltwater, sm, suz, slz = (st[k] for k in STORES)
    storage0 = None

    for t in range(n_days):
        p = dict(static)
        for n, v in dynamic.items():
            p[n] = v[t]
        if t == warmup:
            storage0 = (snowpack + meltwater + sm + suz + slz).mean(-1)
        stores, fluxes = hbv_day(
            (snowpack, meltwater, sm, suz, slz), P[t, :, None], T[t, :, None], PET[t, :, None], p, s, proc, t
        )
        snowpack, meltwater, sm, suz, slz = stores
        for n, v in zip(names, fluxes + stores):
            rec[n].append(v)

    def series(n: str) -> Tensor:  # (n_days, n_basins): mean over the components
        return torch.stack(rec[n]).mean(-1)

    out = {n: series(n) for n in names}
    # the components' total runoff, then their mean (the reference's order of operations)
    q_unrouted = (torch.stack(rec["Q0"]) + torch.stack(rec["Q1"]) + torch.stack(rec["Q2"])).mean(-1)
    hist = state.get("Qhist") if isinstance(state, Mapping) else None
    uh = None
    if route:
        for n in ROUTING_PARAMETER_NAMES:
            if n not in params:
                raise ConfigError(f"run_hbv: route=True needs {n!r} in params (or pass route=False)")
        ra = torch.as_tensor(params["route_a"], device=device).to(dtype).expand(n_basins)
        rb = torch.as_tensor(params["route_b"], device=device).to(dtype).expand(n_basins)
        uh = gamma_weights(ra, rb)
        q_routed, new_hist = route_runoff(q_unrouted, uh, None if hist is None else hist.to(dtype))
    else:
        q_routed = q_unrouted
        prev = q_unrouted.new_zeros(n_basins, UH_LENGTH - 1) if hist is None else hist.to(dtype)
        new_hist = torch.cat([prev, q_unrouted.transpose(0, 1)], 1)[:, -(UH_LENGTH - 1) :]
    final = {
        "SNOWPACK": snowpack,
        "MELTWATER": meltwater,
        "SM": sm,
        "SUZ": suz,
        "SLZ": slz,
        "Qhist": new_hist,
    }
    w = warmup
    return HBVOutput(
        Q=q_routed[w:],
        Q_unrouted=q_unrouted[w:],
        ET=out["ET"][w:],
        SWE=(out["SNOWPACK"] + out["MELTWATER"])[w:],
        SM=out["SM"][w:],
        SUZ=out["SUZ"][w:],
        SLZ=out["SLZ"][w:],
        Q0=out["Q0"][w:],
        Q1=out["Q1"][w:],
        Q2=out["Q2"][w:],
        recharge=out["recharge"][w:],
        perc=out["perc"][w:],
        excess=out["excess"][w:],
        rain=out["rain"][w:],
        snow=out["snow"][w:],
        melt=out["melt"][w:],
        refreeze=out["refreeze"][w:],
        tosoil=out["tosoil"][w:],
        sm_floor=out["sm_floor"][w:],
        SNOWPACK=out["SNOWPACK"][w:],
        MELTWATER=out["MELTWATER"][w:],
        state=final,
        initial_storage=storage0,
        uh=uh,
    )
