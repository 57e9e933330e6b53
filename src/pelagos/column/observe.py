"""Observations of water columns: operators, long-format CSV files, synthetic observations for twins.

Observed quantities ("columns" of an :class:`~pelagos.core.observations.ObservationSet`) are pairs
``(variable, where)`` with ``variable`` a global state name (``"npzd_phy"``; the local name ``"phy"`` is
accepted when unambiguous) and ``where``:

- a depth in m (positive down from the surface): linear interpolation between the layer centres, the centres
  at ``z_k = Σ_{j>k} h_j + h_k/2`` (index 0 = bottom); above the top centre the top layer's value, below the
  bottom centre the bottom layer's value (each layer is well mixed at its own scale);
- ``"surface"``: the top layer's value;
- ``"integral"``: the column integral ``Σ_k h_k c_k`` (units × m, e.g. mmol m-2).

Every operator here is a fixed linear map ``H(x) = W x`` of the stacked state ``(…, V, nz)`` (or of the dict
state), so it is exact on linear profiles and its gradient is Wᵀ. The layer thicknesses are those of the
forcing at the observation times; a forcing whose ``h`` changes over the observed period is refused (the
generic forward map hands the operator no time), which holds for GOTM's fixed grids such as the NNS case.

Long-format CSV (one observed value per row)::

    time,depth,variable,value,sigma
    1998-03-08 00:00:00,surface,npzd_phy,0.41,0.08
    1998-03-31 00:00:00,25,npzd_nut,6.2,0.9

``time``: ISO date (needs the forcing's epoch) or model seconds; ``depth``: metres, ``surface`` or
``integral``; ``sigma``: error std in the units of ``value`` (or of ``log(value)`` with ``log=True``).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ObservationError
from ..core.observations import ObservationSet

__all__ = [
    "ColumnObservationOperator",
    "SamplingPattern",
    "column_where",
    "observations_from_csv",
    "observations_to_csv",
    "synthetic_observations",
]

Where = float | str  # depth in m, "surface" or "integral"


def column_where(depth: Any) -> Where:
    """Normalise a depth entry: a number (m, >= 0), ``"surface"`` or ``"integral"``."""
    if isinstance(depth, str):
        s = depth.strip().lower()
        if s in ("surface", "surf", "top", "s"):
            return "surface"
        if s in ("integral", "column", "int", "depth-integrated", "depth_integrated", "total"):
            return "integral"
        try:
            depth = float(s)
        except ValueError:
            raise ObservationError(
                f"depth {depth!r} is neither a number of metres nor 'surface' / 'integral'"
            ) from None
    d = float(depth)
    if not math.isfinite(d) or d < 0:
        raise ObservationError(f"depth must be a finite number of metres >= 0 (positive down); got {depth!r}")
    return d


def _centre_depths(h: torch.Tensor) -> torch.Tensor:
    """Centre depths (m, positive down) of layers ``h`` (nz,), index 0 = bottom."""
    above = torch.flip(torch.cumsum(torch.flip(h, [0]), 0), [0]) - h  # thickness of the layers above
    return above + 0.5 * h


def _fixed_h(forcing: Any, times: Iterable[float]) -> torch.Tensor:
    """The forcing's (single column) layer thickness, checked constant over ``times``."""
    ts = [float(t) for t in times]
    h0 = forcing.sample(ts[0] if ts else forcing.t_start, ["h"])["h"]
    if h0.shape[0] != 1:
        raise ObservationError(
            "column observations are defined for a forcing shared by all columns (n_columns=1); build one "
            "ObservationSet per column forcing and stack them"
        )
    for t in ts[1:]:
        h = forcing.sample(t, ["h"])["h"]
        if not torch.allclose(h, h0, rtol=1e-9, atol=0.0):
            raise ObservationError(
                f"the layer thickness h changes between t={ts[0]:g} s and t={t:g} s; column observation "
                "operators need a fixed grid over the observed period (use a forcing with fixed h)"
            )
    return h0[0].detach().to(torch.float64)


class ColumnObservationOperator:
    """``H(x) = W x`` for observed columns ``[(variable, where), ...]`` (see module docstring).

    Args:
        columns: pairs ``(variable, depth m | "surface" | "integral")``.
        variables: the state's interior variable names, in stacked order.
        h: layer thicknesses (m), ``(nz,)``, index 0 = bottom.
    Calling it on a stacked state ``(..., V, nz)`` or a dict ``{name: (..., nz)}`` gives ``(..., m)``.
    """

    def __init__(self, columns: Sequence[tuple[str, Any]], variables: Sequence[str], h: torch.Tensor) -> None:
        self.variables = list(variables)
        h = torch.as_tensor(h, dtype=torch.float64).flatten()
        nz = h.numel()
        if nz < 1 or not bool((h > 0).all()):
            raise ObservationError(f"layer thicknesses must be > 0; got {h.tolist()}")
        self.h, self.nz = h, nz
        self.z = _centre_depths(h)
        total = float(h.sum())
        self.columns = []
        W = torch.zeros(len(columns), len(self.variables), nz, dtype=torch.float64)
        for j, (var, where) in enumerate(columns):
            name = resolve_variable(var, self.variables)
            where = column_where(where)
            self.columns.append((name, where))
            v = self.variables.index(name)
            if where == "surface":
                W[j, v, nz - 1] = 1.0
            elif where == "integral":
                W[j, v] = h
            else:
                if where > total + 1e-9:
                    raise ObservationError(
                        f"observation of {name} at {where:g} m is below the column bottom ({total:g} m)"
                    )
                zs = torch.flip(self.z, [0])  # surface first: increasing depth
                if nz == 1 or where <= float(zs[0]):
                    W[j, v, nz - 1] = 1.0
                elif where >= float(zs[-1]):
                    W[j, v, 0] = 1.0
                else:
                    i1 = int(torch.searchsorted(zs, torch.tensor(where, dtype=torch.float64)))
                    i0 = i1 - 1
                    w = (where - float(zs[i0])) / float(zs[i1] - zs[i0])
                    W[j, v, nz - 1 - i0] += 1.0 - w
                    W[j, v, nz - 1 - i1] += w
        self.W = W.reshape(len(columns), -1)  # (m, V*nz)

    @property
    def m(self) -> int:
        return len(self.columns)

    def __call__(self, state: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(state, Mapping):
            state = torch.stack([state[n] for n in self.variables], dim=-2)
        if state.shape[-2:] != (len(self.variables), self.nz):
            raise ObservationError(
                f"column state has shape {tuple(state.shape)}; expected (..., V={len(self.variables)}, "
                f"nz={self.nz})"
            )
        x = state.reshape(*state.shape[:-2], -1)
        return x @ self.W.to(x).T


def resolve_variable(var: str, variables: Sequence[str]) -> str:
    """Global name of ``var`` among ``variables`` (exact global name, or an unambiguous local suffix)."""
    if var in variables:
        return var
    hits = [v for v in variables if v.endswith("_" + var)]
    if len(hits) == 1:
        return hits[0]
    raise ObservationError(
        f"unknown observed variable {var!r}"
        + (f" (ambiguous: {hits})" if hits else "")
        + f"; the model's state variables are: {', '.join(variables)}"
    )


def _variables(model: Any) -> list[str]:
    return list(getattr(model, "variables", None) or model.interior)


# -- CSV -------------------------------------------------------------------------------------------------
@dataclass
class _Row:
    line: int
    time: float
    where: Where
    variable: str
    value: float
    sigma: float


def _parse_time(s: str, forcing: Any, line: int) -> float:
    s = s.strip()
    try:
        return float(s)
    except ValueError:
        pass
    try:
        return float(forcing.seconds(s))
    except Exception as err:
        raise ObservationError(f"row {line}: cannot read time {s!r}: {err}") from None


def observations_from_csv(
    path: str | os.PathLike,
    model: Any,
    *,
    log: bool | Mapping[str, bool] = False,
    t0: float | None = None,
    t_end: float | None = None,
) -> ObservationSet:
    """Read a long-format observation CSV (see module docstring) for ``model`` (a ColumnModel or a
    :class:`~pelagos.column.stacked.StackedColumn`).

    ``log``: compare log values (multiplicative errors; ``sigma`` is then the std of the log): a bool or per
    variable. ``t0``/``t_end``: the run's window (s); rows outside it are an error (default: the forcing's
    span). The result's operator is a :class:`ColumnObservationOperator`; ``columns`` lists ``(variable,
    where)``; rows at the same time share one row of ``values`` (others are NaN).
    """
    path = Path(path)
    if not path.exists():
        raise ObservationError(f"observation file {str(path)!r} does not exist")
    forcing = model.forcing
    variables = _variables(model)
    lo = forcing.t_start if t0 is None else float(t0)
    hi = forcing.t_stop if t_end is None else float(t_end)
    rows: list[_Row] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        need = ["time", "depth", "variable", "value", "sigma"]
        have = [c.strip().lower() for c in (reader.fieldnames or [])]
        if any(c not in have for c in need):
            raise ObservationError(
                f"{path}: header {reader.fieldnames} lacks columns {[c for c in need if c not in have]}; "
                "expected time,depth,variable,value,sigma"
            )
        for k, raw in enumerate(reader, start=2):  # line 1 is the header
            r = {str(a).strip().lower(): (b or "").strip() for a, b in raw.items() if a is not None}
            try:
                t = _parse_time(r["time"], forcing, k)
                column_where(r["depth"] or "surface")
                var = resolve_variable(r["variable"], variables)
                value, sigma = float(r["value"]), float(r["sigma"])
            except (ObservationError, ValueError) as err:
                raise ObservationError(f"{path}, row {k} ({raw}): {err}") from None
            if not math.isfinite(value):
                raise ObservationError(
                    f"{path}, row {k}: value is {r['value']!r}; drop the row or give a number"
                )
            if not (math.isfinite(sigma) and sigma > 0):
                raise ObservationError(
                    f"{path}, row {k}: sigma must be a finite number > 0; got {r['sigma']!r}"
                )
            if t < lo - 1e-6 or t > hi + 1e-6:
                raise ObservationError(
                    f"{path}, row {k}: time {r['time']!r} ({t:g} s) is outside the run [{lo:g}, {hi:g}] s"
                )
            rows.append(_Row(k, t, column_where(r["depth"] or "surface"), var, value, sigma))
    if not rows:
        raise ObservationError(f"{path}: no observation rows")
    return _assemble(rows, model, variables, log, source=str(path))


def _assemble(rows: list[_Row], model: Any, variables: list[str], log: Any, *, source: str) -> ObservationSet:
    cols: list[tuple[str, Where]] = []
    for r in rows:
        if (r.variable, r.where) not in cols:
            cols.append((r.variable, r.where))
    times = sorted({r.time for r in rows})
    ti = {t: i for i, t in enumerate(times)}
    ci = {c: j for j, c in enumerate(cols)}
    vals = torch.full((len(times), len(cols)), float("nan"), dtype=torch.float64)
    sig = torch.ones_like(vals)
    seen: dict[tuple[int, int], int] = {}
    for r in rows:
        key = (ti[r.time], ci[(r.variable, r.where)])
        if key in seen:
            raise ObservationError(
                f"{source}: rows {seen[key]} and {r.line} observe {r.variable} at {r.where} at the same time "
                f"{r.time:g} s; average them or drop one"
            )
        seen[key] = r.line
        vals[key], sig[key] = r.value, r.sigma
    h = _fixed_h(model.forcing, times)
    op = ColumnObservationOperator(cols, variables, h)
    if isinstance(log, Mapping):
        lm = torch.tensor([bool(log.get(v, log.get(v.split("_", 1)[-1], False))) for v, _ in cols])
    else:
        lm = bool(log)
    return ObservationSet(
        torch.tensor(times, dtype=torch.float64), vals, sig, operator=op, log=lm, columns=cols
    )


def observations_to_csv(obs: ObservationSet, path: str | os.PathLike, *, epoch: Any = None) -> Path:
    """Write an ObservationSet with ``(variable, where)`` columns as a long-format CSV (NaN rows skipped).

    ``epoch`` (a datetime): write ISO dates instead of model seconds.
    """
    import datetime as _dt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if obs.columns is None:
        raise ObservationError("observations_to_csv needs obs.columns = [(variable, where), ...]")
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "depth", "variable", "value", "sigma"])
        for i, t in enumerate(obs.times.tolist()):
            ts = (epoch + _dt.timedelta(seconds=t)).strftime("%Y-%m-%d %H:%M:%S") if epoch else repr(t)
            for j, (var, where) in enumerate(obs.columns):
                v = float(obs.values[i, j])
                if math.isfinite(v):
                    d = where if isinstance(where, str) else f"{where:g}"
                    w.writerow([ts, d, var, f"{v:.8g}", f"{float(obs.sigma[i, j]):.6g}"])
    return path


# -- synthetic observations for twin experiments -------------------------------------------------------
@dataclass
class SamplingPattern:
    """Observe ``variable`` at ``depths`` (m, ``"surface"``, ``"integral"``) every ``every`` seconds,
    starting ``offset`` seconds after the window start (the start itself is never observed)."""

    variable: str
    depths: Sequence[Where]
    every: float
    offset: float | None = None


def synthetic_observations(
    model: Any,
    state: Any,
    patterns: Sequence[SamplingPattern],
    *,
    t0: float,
    t_end: float,
    noise: str = "lognormal",
    rel: float = 0.2,
    abs_floor: float = 0.0,
    generator: torch.Generator | None = None,
) -> ObservationSet:
    """Observations of a truth run of ``model`` from ``state`` at ``t0``, sampled as ``patterns``.

    ``noise``: ``"lognormal"`` (y = H·exp(rel·ε); compared in log space with σ = rel), ``"relative"``
    (additive Gaussian, σ = rel·|H| + abs_floor), ``"none"`` (noise-free; σ as for ``relative``).
    Sampling times are rounded down to the model step grid. The truth values go to ``meta["truth"]``.
    """
    from ..inverse.forward import predict

    if noise not in ("lognormal", "relative", "none"):
        raise ObservationError(f"noise must be 'lognormal', 'relative' or 'none'; got {noise!r}")
    if not rel > 0:
        raise ObservationError(f"relative noise level rel must be > 0; got {rel}")
    dt = float(model.dt)
    variables = _variables(model)
    cols: list[tuple[str, Where]] = []
    entries: dict[int, list[int]] = {}  # step -> observed column indices
    for p in patterns:
        first = len(cols)
        name = resolve_variable(p.variable, variables)
        for d in p.depths:
            cols.append((name, column_where(d)))
        k_every = max(round(p.every / dt), 1)
        k = round((p.offset if p.offset is not None else p.every) / dt)
        while t0 + k * dt <= t_end + 1e-6:
            if k > 0:
                entries.setdefault(k, []).extend(range(first, len(cols)))
            k += k_every
    steps = sorted(entries)
    if not steps:
        raise ObservationError("the sampling patterns give no observation inside the window")
    times = torch.tensor([t0 + k * dt for k in steps], dtype=torch.float64)
    h = _fixed_h(model.forcing, times.tolist())
    op = ColumnObservationOperator(cols, variables, h)
    mask = torch.zeros(len(steps), len(cols), dtype=torch.bool)
    for i, k in enumerate(steps):
        mask[i, entries[k]] = True
    probe = ObservationSet(times, torch.zeros(len(steps), len(cols)), 1.0, operator=op)
    with torch.no_grad():
        truth = predict(model, state, probe, t0=t0, dt=dt)
    truth = truth.reshape(len(steps), -1, len(cols))[:, 0].to(torch.float64)
    eps = torch.randn(truth.shape, generator=generator, dtype=torch.float64)
    if noise == "lognormal":
        vals = truth.clamp(min=0) * torch.exp(rel * eps)
        sig = torch.full_like(truth, rel)
    else:
        sig = rel * truth.abs() + abs_floor
        if bool((sig <= 0).any()):
            raise ObservationError("a zero true value with relative noise gives sigma = 0; set abs_floor > 0")
        vals = truth + (sig * eps if noise == "relative" else 0.0)
    vals = torch.where(mask, vals, torch.full_like(vals, float("nan")))
    obs = ObservationSet(times, vals, sig, operator=op, log=noise == "lognormal", columns=cols)
    obs.meta["truth"] = torch.where(mask, truth, torch.full_like(truth, float("nan")))
    obs.meta["noise"] = {"kind": noise, "rel": rel, "abs_floor": abs_floor}
    return obs
