"""The semi-synthetic dPL benchmark: real CAMELS attributes, a hidden "true" mapping to HBV parameters, real
forcings made into many basins' forcings, synthetic discharge from HBV.

Only 4 CAMELS basins ship with forcing (``../shared/data/camels_us_sample``: Daymet 2000–2003), but the
attribute tables cover all 671. The benchmark keeps every real thing it can and says what it invents:

1. **Attributes** (real): the :data:`ATTRIBUTES` of each basin (climate, topography, land cover, soil,
   geology; no streamflow signature, since an ungauged basin has none), with ``area_gages2``,
   ``soil_conductivity`` and ``soil_depth_pelletier`` taken as log10, missing values replaced by the median
   of all 671 basins, then z-scored over all 671 basins (attributes are known in ungauged basins too).
2. **Hidden mapping** (invented, smooth): each HBV parameter ``k`` in sigmoid space is
   ``s_k = σ(b_k + Σ_j w_kj z_j + c_k z_i²)`` with the weights of :data:`TRUE_MAPPING` (a few physically
   plausible attributes per parameter: field capacity from soil water content and depth, baseflow recession
   from geological permeability, degree-day factor from snow fraction, routing from area…); the physical
   value is ``hbv.scale_parameters`` of ``s`` (the published bounds). One HBV component (``nmul = 1``).
3. **Forcing** (real weather, perturbed to the basin's climate): each basin takes the daily Daymet
   precipitation, mean temperature and Hargreaves PET of the donor among the 4 real basins whose snow
   fraction is closest (all 4 have forcing for 2000–2002), then
   - strings ``n_years`` years of 365 days together, each a random one of the donor's 3 years (a yearly
     block bootstrap: the series are longer than the donors' and differ between basins; the dates are a
     synthetic calendar of 365-day years starting 2000-01-01);
   - rolls the whole series by a random shift of −30…30 days (seasonal shift);
   - multiplies precipitation by a seasonal factor ``1 + δ sin(2π(doy − 105)/365)`` with ``δ`` the basin's
     ``p_seasonality`` (clipped to ±0.9: δ > 0 peaks in mid-July, as CAMELS defines it) and by independent
     daily log-normal noise (σ = ``p_noise``) so that basins with the same donor differ;
   - scales precipitation to the basin's ``p_mean`` and PET to its ``pet_mean`` (mm/d);
   - shifts temperature by the constant (°C, bisection) that makes the fraction of precipitation falling on
     days below 0 °C equal the basin's ``frac_snow``.
   So the climate attributes the network sees agree with the forcing it is driven by.
4. **Discharge**: HBV (float64, the ``hbv`` API, routed) with the true parameters, from the same initial
   state as any model run, times log-normal multiplicative noise ``exp(σε − σ²/2)`` (σ = ``q_noise``).
   The true ET, SWE and soil moisture are kept: they are the "untrained outputs" a dPL model is checked on.
5. **Splits**: a held-out region (``held_out_hucs``, default HUC-02 regions 3 and 6, one of the PUR groups
   of Feng et al. 2023) and, among the rest, a random ``ungauged_fraction`` of basins (PUB); the others are
   gauged (training). Time: the first year is warm-up, the next ``train_years`` train, the last
   ``n_years − 1 − train_years`` test.

:func:`make_benchmark` returns a :class:`~pelagos.hydro.train.BasinData` with ``truth`` filled in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError

__all__ = [
    "ATTRIBUTES",
    "LOG_ATTRIBUTES",
    "TRUE_MAPPING",
    "SyntheticSpec",
    "make_benchmark",
    "true_parameters",
]

DONORS = ("01022500", "01547700", "02064000", "03015500")

ATTRIBUTES = (
    "p_mean", "pet_mean", "p_seasonality", "frac_snow", "aridity", "high_prec_freq", "high_prec_dur",
    "low_prec_freq", "low_prec_dur", "elev_mean", "slope_mean", "area_gages2", "frac_forest", "lai_max",
    "lai_diff", "gvf_max", "gvf_diff", "soil_depth_pelletier", "soil_depth_statsgo", "soil_porosity",
    "soil_conductivity", "max_water_content", "sand_frac", "silt_frac", "clay_frac", "carbonate_rocks_frac",
    "geol_permeability",
)  # fmt: skip
"""The static inputs of the parameter networks (27 CAMELS attributes; no streamflow signatures)."""

LOG_ATTRIBUTES = ("area_gages2", "soil_conductivity", "soil_depth_pelletier")
"""Attributes taken as log10 before z-scoring (skewed over orders of magnitude)."""

# parameter: (bias, {attribute: weight}, (attribute, weight) of a quadratic term or None), in sigmoid space
TRUE_MAPPING: dict[str, tuple[float, dict[str, float], tuple[str, float] | None]] = {
    "BETA": (0.0, {"aridity": 0.8, "clay_frac": 0.5}, None),
    "FC": (0.2, {"max_water_content": 0.8, "soil_depth_statsgo": 0.6, "aridity": -0.4}, ("aridity", -0.2)),
    "K0": (0.0, {"slope_mean": 0.8, "frac_forest": -0.4}, None),
    "K1": (-0.5, {"slope_mean": 0.5, "soil_conductivity": 0.5}, None),
    "K2": (-1.0, {"geol_permeability": 0.7, "carbonate_rocks_frac": 0.4}, None),
    "LP": (0.3, {"frac_forest": 0.5, "lai_max": 0.4}, None),
    "PERC": (-0.5, {"sand_frac": 0.8, "soil_conductivity": 0.4}, None),
    "UZL": (0.0, {"soil_porosity": 0.5, "slope_mean": -0.5}, None),
    "TT": (0.0, {"elev_mean": -0.5, "frac_snow": 0.4}, None),
    "CFMAX": (0.0, {"frac_snow": 0.8, "lai_max": -0.4}, None),
    "CFR": (0.0, {"elev_mean": 0.5}, None),
    "CWH": (0.0, {"frac_snow": -0.5}, None),
    "route_a": (0.0, {"area_gages2": 0.7, "slope_mean": -0.3}, None),
    "route_b": (-0.5, {"area_gages2": 0.6}, None),
}
"""The hidden "true" mapping: ``s_k = σ(bias + Σ weight·z_attr + w2·z_attr2²)`` for every HBV parameter."""


@dataclass
class SyntheticSpec:
    """Settings of :func:`make_benchmark` (the ``data:`` section of ``pelagos hydro`` with ``kind: synthetic``)."""

    root: str = "../shared/data/camels_us_sample"  # CAMELS-US folder (attributes + the 4 donor basins)
    n_basins: int | None = None  # a random subset of the 671 basins (None: all); held-out region kept whole
    held_out_hucs: list[int] = field(default_factory=lambda: [3, 6])  # HUC-02 regions held out (PUR)
    ungauged_fraction: float = 0.2  # fraction of the other basins held out as ungauged (PUB)
    p_noise: float = 0.25  # σ of the daily log-normal precipitation perturbation
    q_noise: float = 0.1  # σ of the multiplicative log-normal discharge noise
    shift_days: int = 30  # seasonal shift drawn from −shift_days…shift_days
    seed: int = 12
    n_years: int = 5  # length of the synthetic series (365-day years): 1 warm-up + train + test
    train_years: int = 3

    def validate(self, where: str = "data") -> None:
        if self.n_basins is not None and self.n_basins < 4:
            raise ConfigError(f"data.n_basins must be at least 4 (or null for all 671); got {self.n_basins}")
        if not 0.0 <= self.ungauged_fraction < 1.0:
            raise ConfigError(f"data.ungauged_fraction must be in [0, 1); got {self.ungauged_fraction}")
        if self.train_years < 1 or self.n_years < self.train_years + 2:
            raise ConfigError(
                f"data.n_years ({self.n_years}) must hold 1 warm-up year, data.train_years ({self.train_years}) "
                "and at least one test year"
            )
        if self.p_noise < 0 or self.q_noise < 0:
            raise ConfigError("data.p_noise and data.q_noise must be >= 0")


def normalise_attributes(values: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, mean, std): log10 of :data:`LOG_ATTRIBUTES`, NaN → column median, z-score over the rows given."""
    v = np.array(values, dtype=float)
    for j, n in enumerate(names):
        if n in LOG_ATTRIBUTES:
            v[:, j] = np.log10(np.maximum(v[:, j], 1e-6))
    med = np.nanmedian(v, axis=0)
    v = np.where(np.isnan(v), med, v)
    mean, std = v.mean(0), v.std(0)
    std = np.where(std > 0, std, 1.0)
    return (v - mean) / std, mean, std


def true_parameters(z: np.ndarray, names: list[str]) -> dict[str, torch.Tensor]:
    """Physical HBV parameters (float64, shape ``(n_basins, 1)``; routing ``(n_basins,)``) of the hidden
    mapping :data:`TRUE_MAPPING` at normalised attributes ``z`` (columns named by ``names``)."""
    from .hbv import scale_parameters

    col = {n: j for j, n in enumerate(names)}
    pnames = list(TRUE_MAPPING)
    s = np.zeros((z.shape[0], len(pnames)))
    for k, p in enumerate(pnames):
        bias, lin, quad = TRUE_MAPPING[p]
        a = bias + sum(w * z[:, col[n]] for n, w in lin.items())
        if quad is not None:
            a = a + quad[1] * z[:, col[quad[0]]] ** 2
        s[:, k] = 1.0 / (1.0 + np.exp(-a))
    phys = scale_parameters(torch.as_tensor(s, dtype=torch.float64), pnames)
    return {n: (v if n.startswith("route_") else v[:, None]) for n, v in phys.items()}


def _t_shift_for_snow(p: np.ndarray, t: np.ndarray, frac: float) -> float:
    """Shift ΔT (°C) with Σ P[T+ΔT < 0] / Σ P = frac (bisection; monotone in ΔT)."""
    tot = p.sum()
    if tot <= 0:
        return 0.0
    lo, hi = -25.0, 25.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        f = p[(t + mid) < 0].sum() / tot
        if f > frac:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def make_benchmark(spec: SyntheticSpec | None = None, *, dtype: torch.dtype = torch.float32):
    """Build the semi-synthetic benchmark (module docstring) → :class:`~pelagos.hydro.train.BasinData`."""
    from .camels import load_attributes, load_basin
    from .hbv import run_hbv
    from .train import BasinData

    spec = spec or SyntheticSpec()
    spec.validate()
    root = Path(spec.root)
    names = list(ATTRIBUTES)
    ids_all, _, vals = load_attributes(root, names=names)
    geo_tab = load_attributes(root, names=["gauge_lat", "gauge_lon"])
    geo = geo_tab.values
    ids_all = [str(g) for g in ids_all]
    z_all, _, _ = normalise_attributes(vals, names)
    rng = np.random.default_rng(spec.seed)
    huc = np.array([int(h) for h in geo_tab.huc02])
    region = np.isin(huc, spec.held_out_hucs)
    idx = np.arange(len(ids_all))
    if spec.n_basins is not None and spec.n_basins < len(idx):
        idx = np.sort(rng.choice(idx, size=spec.n_basins, replace=False))
    n = len(idx)
    donors = [load_basin(root, g) for g in DONORS]
    d_snow = np.array([vals[ids_all.index(g), names.index("frac_snow")] for g in DONORS])
    n_days = 365 * spec.n_years
    dates = np.datetime64("2000-01-01") + np.arange(n_days).astype("timedelta64[D]")
    doy = (np.arange(n_days) % 365 + 1).astype(float)
    season = np.sin(2 * np.pi * (doy - 105.0) / 365.0)
    years = []  # per donor: (3, 365, 3) = year × day × (P, T, PET)
    for d in donors:
        yr = d.dates.astype("datetime64[Y]")
        blocks = []
        for y in np.unique(yr):
            m = np.flatnonzero(yr == y)[:365]
            if len(m) == 365:
                blocks.append(np.stack([d.prcp[m], d.tmean[m], d.pet[m]], -1))
        years.append(np.stack(blocks))
    P = np.zeros((n_days, n))
    T = np.zeros_like(P)
    E = np.zeros_like(P)
    col = {c: j for j, c in enumerate(names)}
    for i, b in enumerate(idx):
        a = vals[b]
        fs = a[col["frac_snow"]] if np.isfinite(a[col["frac_snow"]]) else 0.1
        yrs = years[int(np.argmin(np.abs(d_snow - fs)))]
        series = yrs[rng.integers(0, len(yrs), spec.n_years)].reshape(n_days, 3)
        k = int(rng.integers(-spec.shift_days, spec.shift_days + 1))
        series = np.roll(series, k, axis=0)
        p = series[:, 0] * np.exp(spec.p_noise * rng.standard_normal(n_days) - spec.p_noise**2 / 2)
        delta = float(np.clip(a[col["p_seasonality"]], -0.9, 0.9))
        p = p * (1.0 + delta * season)
        P[:, i] = p * a[col["p_mean"]] / max(p.mean(), 1e-9)
        e = series[:, 2]
        E[:, i] = e * a[col["pet_mean"]] / max(e.mean(), 1e-9)
        t = series[:, 1]
        T[:, i] = t + _t_shift_for_snow(P[:, i], t, fs)
    z = z_all[idx]
    truth = true_parameters(z, names)
    f64 = torch.float64
    with torch.no_grad():
        out = run_hbv(torch.as_tensor(P, dtype=f64), torch.as_tensor(T, dtype=f64),
                      torch.as_tensor(E, dtype=f64), truth)  # fmt: skip
    q_true = out.Q.numpy()
    noise = np.exp(spec.q_noise * rng.standard_normal(q_true.shape) - spec.q_noise**2 / 2)
    q_obs = q_true * noise
    # splits
    reg = region[idx]
    rest = np.flatnonzero(~reg)
    n_ung = int(round(spec.ungauged_fraction * len(rest)))
    ung = np.sort(rng.choice(rest, size=n_ung, replace=False)) if n_ung else np.array([], int)
    gauged = np.setdiff1d(rest, ung)
    if len(gauged) == 0:
        raise ConfigError(
            "the semi-synthetic benchmark has no gauged basin left; lower data.ungauged_fraction"
        )
    return BasinData(
        gauge_ids=[ids_all[b] for b in idx],
        dates=dates,
        forcing=torch.as_tensor(np.stack([P, T, E], -1), dtype=dtype),
        obs=torch.as_tensor(q_obs, dtype=dtype),
        attributes=torch.as_tensor(z, dtype=dtype),
        attribute_names=names,
        attributes_raw=vals[idx],
        lat=geo[idx, 0],
        lon=geo[idx, 1],
        huc02=huc[idx],
        splits={"gauged": gauged, "ungauged": ung, "region": np.flatnonzero(reg)},
        periods={
            "warmup_end": str(dates[364]),
            "train": (str(dates[365]), str(dates[365 * (1 + spec.train_years) - 1])),
            "test": (str(dates[365 * (1 + spec.train_years)]), str(dates[-1])),
        },
        truth={
            "params": {k: v.to(dtype) for k, v in truth.items()},
            "Q": torch.as_tensor(q_true, dtype=dtype),
            "ET": out.ET.to(dtype),
            "SWE": out.SWE.to(dtype),
        },
    )
