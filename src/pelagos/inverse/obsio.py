"""Observation files (long format) and synthetic observations for twin experiments.

Long format, one observed value per row (CSV header ``time,depth,variable,value,sigma``; the same columns as
variables along an ``obs`` dimension in NetCDF):

- ``time``: ISO 8601 date-time (``2002-03-01T12:00:00``); model time = seconds since the run ``start``;
- ``depth``: m, positive down (empty/NaN for a depth-independent quantity);
- ``variable``: an output name of the model (e.g. ``npzd_phy``);
- ``value``: the observed value, in the variable's units;
- ``sigma``: error std (> 0; in log space when the set is read with ``log=True``).

Reading builds the dense ``(n_t, m)`` table of an :class:`ObservationSet` (one column per (variable, depth)
pair, NaN where a time lacks that pair). Every bad row raises ``ObservationError`` naming the file and line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import torch

from ..core.errors import ObservationError, check_choice
from ..core.observations import ObservationSet
from .forward import predict

COLUMNS = ("time", "depth", "variable", "value", "sigma")


class UnboundOperator:
    """Placeholder operator of a set read from a file: the model must supply the mapping state -> columns."""

    def __init__(self, columns: list) -> None:
        self.columns = columns

    def __call__(self, state: object) -> torch.Tensor:
        raise ObservationError(
            "this ObservationSet was read from a file and has no observation operator yet; bind one with "
            "obs.with_operator(ProfileOperator(obs.columns, extract, z)) or pass operator=... when reading"
        )


def _parse_time(s: str, where: str) -> datetime:
    try:
        t = datetime.fromisoformat(s.strip().replace("Z", "+00:00"))
    except ValueError as err:
        raise ObservationError(f"{where}: time {s!r} is not ISO 8601 (e.g. 2002-03-01T12:00:00)") from err
    return t.replace(tzinfo=None) if t.tzinfo is not None else t


def _as_datetime(t: datetime | str | None, what: str) -> datetime | None:
    if t is None or isinstance(t, datetime):
        return t
    return _parse_time(str(t), what)


def _float(s: object, name: str, where: str) -> float:
    if s is None or (isinstance(s, str) and s.strip() == ""):
        return float("nan")
    try:
        return float(s)
    except (TypeError, ValueError) as err:
        raise ObservationError(f"{where}: {name} {s!r} is not a number") from err


def from_records(
    records: Sequence[tuple[datetime, float, str, float, float]],
    *,
    start: datetime | str,
    end: datetime | str | None = None,
    variables: Sequence[str] | None = None,
    missing: str = "error",
    log: bool = False,
    operator: Callable[[list], Callable] | None = None,
    source: str = "observations",
    row_offset: int = 0,
) -> ObservationSet:
    """Build an ObservationSet from long-format records ``(time, depth, variable, value, sigma)``.

    ``operator``: a factory ``columns -> H`` (e.g. ``lambda cols: ProfileOperator(cols, extract, z)``).
    ``missing``: ``"error"`` (a NaN value is an error) or ``"drop"`` (skip such rows).
    """
    check_choice("missing", missing, ["error", "drop"])
    start = _as_datetime(start, "start")
    end = _as_datetime(end, "end")
    if start is None:
        raise ObservationError(
            "reading dated observations needs the run start (start=datetime or ISO string)"
        )
    valid = None if variables is None else set(variables)
    rows: dict[tuple[float, str, float], tuple[float, float]] = {}
    for j, (t, depth, var, val, sig) in enumerate(records):
        where = f"{source}:{j + row_offset}" if row_offset else f"{source} record {j} (obs index)"
        if valid is not None and var not in valid:
            raise ObservationError(f"{where}: unknown variable {var!r}; valid: {', '.join(sorted(valid))}")
        if t < start or (end is not None and t > end):
            span = f"[{start.isoformat()}, {end.isoformat() if end else '...'}]"
            raise ObservationError(f"{where}: time {t.isoformat()} is outside the run {span}")
        if math.isnan(val) or math.isinf(val):
            if missing == "drop" and math.isnan(val):
                continue
            raise ObservationError(f"{where}: value is {val} (remove the row, or read with missing='drop')")
        if not math.isfinite(sig) or sig <= 0:
            raise ObservationError(f"{where}: sigma must be a finite number > 0; got {sig}")
        if not math.isnan(depth) and depth < 0:
            raise ObservationError(f"{where}: depth {depth} m is negative (depth is positive down)")
        if log and val < 0:
            raise ObservationError(f"{where}: value {val} < 0 cannot be log-transformed (log=True)")
        key = ((t - start).total_seconds(), var, depth)
        dkey = (key[0], var, -1.0 if math.isnan(depth) else depth)
        if dkey in rows:
            raise ObservationError(f"{where}: duplicate observation of {var!r} at depth {depth} m, time {t}")
        rows[dkey] = (val, sig)
    if not rows:
        raise ObservationError(f"{source}: no observations")
    times = sorted({k[0] for k in rows})
    cols = sorted({(k[1], k[2]) for k in rows})
    ti = {t: i for i, t in enumerate(times)}
    ci = {c: i for i, c in enumerate(cols)}
    vals = torch.full((len(times), len(cols)), float("nan"), dtype=torch.float64)
    sigs = torch.ones((len(times), len(cols)), dtype=torch.float64)
    for (t, v, d), (val, sig) in rows.items():
        vals[ti[t], ci[(v, d)]] = val
        sigs[ti[t], ci[(v, d)]] = sig
    columns = [(v, float("nan") if d == -1.0 else d) for v, d in cols]
    op = operator(columns) if operator is not None else UnboundOperator(columns)
    return ObservationSet(
        torch.tensor(times, dtype=torch.float64),
        vals,
        sigs,
        operator=op,
        log=log,
        columns=columns,
        start=start,
        meta={"source": source},
    )


def read_csv(path: str | Path, *, start: datetime | str, **kwargs) -> ObservationSet:
    """Read a long-format CSV (see module docstring); keyword arguments as :func:`from_records`."""
    path = Path(path)
    if not path.exists():
        raise ObservationError(f"observation file {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing_cols = [c for c in COLUMNS if c not in header and c != "depth"]
        if missing_cols:
            raise ObservationError(
                f"{path}: missing column(s) {missing_cols}; the header must be {','.join(COLUMNS)}"
            )
        recs = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            where = f"{path}:{line}"
            recs.append(
                (
                    _parse_time(row["time"], where),
                    _float(row.get("depth"), "depth", where),
                    (row["variable"] or "").strip(),
                    _float(row["value"], "value", where),
                    _float(row["sigma"], "sigma", where),
                )
            )
    return from_records(recs, start=start, source=str(path), row_offset=2, **kwargs)


def _records(obs: ObservationSet, start: datetime | None):
    if obs.values.ndim != 2:
        raise ObservationError("only observation sets of shape (n_t, m) can be written (no batch dims)")
    start = start or obs.start
    if start is None:
        raise ObservationError("writing dated observations needs start= (the datetime of model time 0)")
    cols = obs.columns or [(f"obs{j}", float("nan")) for j in range(obs.m)]
    for i in range(obs.n_times):
        t = start + timedelta(seconds=float(obs.times[i]))
        for j, (var, depth) in enumerate(cols):
            v = float(obs.values[i, j])
            if math.isnan(v):
                continue
            yield t, depth, var, v, float(obs.sigma[i, j])


def write_csv(obs: ObservationSet, path: str | Path, *, start: datetime | None = None) -> Path:
    """Write the non-missing values in long format (ISO times relative to ``start`` or ``obs.start``)."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for t, d, var, v, s in _records(obs, _as_datetime(start, "start")):
            w.writerow([t.isoformat(), "" if math.isnan(d) else repr(d), var, repr(v), repr(s)])
    return path


def write_netcdf(obs: ObservationSet, path: str | Path, *, start: datetime | None = None) -> Path:
    """Write the long format as a NetCDF file with dimension ``obs`` (CF time encoding)."""
    import numpy as np
    import xarray as xr

    recs = list(_records(obs, _as_datetime(start, "start")))
    t, d, var, v, s = zip(*recs) if recs else ((), (), (), (), ())
    ds = xr.Dataset(
        {
            "time": ("obs", np.array(t, dtype="datetime64[ns]")),
            "depth": ("obs", np.array(d, dtype=float), {"units": "m", "positive": "down"}),
            "variable": ("obs", np.array(var, dtype=str)),
            "value": ("obs", np.array(v, dtype=float)),
            "sigma": ("obs", np.array(s, dtype=float), {"long_name": "observation error standard deviation"}),
        },
        attrs={
            "Conventions": "CF-1.8",
            "featureType": "point",
            "title": "pelagos observations (long format)",
        },
    )
    ds.to_netcdf(path)
    return Path(path)


def read_netcdf(path: str | Path, *, start: datetime | str, **kwargs) -> ObservationSet:
    """Read a file written by :func:`write_netcdf` (variables time, depth, variable, value, sigma along
    ``obs``)."""
    import numpy as np
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise ObservationError(f"observation file {path} does not exist")
    with xr.open_dataset(path) as ds:
        miss = [c for c in ("time", "variable", "value", "sigma") if c not in ds]
        if miss:
            raise ObservationError(
                f"{path}: missing variable(s) {miss}; expected {', '.join(COLUMNS)} along obs"
            )
        times = ds["time"].values.astype("datetime64[us]").astype(datetime)
        depth = ds["depth"].values if "depth" in ds else np.full(len(times), np.nan)
        recs = [
            (
                times[i],
                float(depth[i]),
                str(ds["variable"].values[i]),
                float(ds["value"].values[i]),
                float(ds["sigma"].values[i]),
            )
            for i in range(len(times))
        ]
    return from_records(recs, start=start, source=str(path), **kwargs)


def read_observations(path: str | Path, *, start: datetime | str, **kwargs) -> ObservationSet:
    """Read ``.csv`` or ``.nc`` long-format observations (see :func:`from_records` for the options)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_csv(path, start=start, **kwargs)
    if suffix in (".nc", ".nc4", ".netcdf"):
        return read_netcdf(path, start=start, **kwargs)
    raise ObservationError(f"unknown observation file type {suffix!r} ({path}); use .csv or .nc")


# -- twins -------------------------------------------------------------------------------------------------
def synthetic_observations(
    model: object,
    state: object,
    times: torch.Tensor | Sequence[float],
    operator: Callable | None = None,
    *,
    sigma: float | torch.Tensor = 0.1,
    rel_sigma: float = 0.0,
    noise: str = "gaussian",
    sample: torch.Tensor | None = None,
    t0: float = 0.0,
    dt: float | None = None,
    columns: list | None = None,
    generator: torch.Generator | None = None,
) -> tuple[ObservationSet, torch.Tensor]:
    """Observations of a model run (a "truth") for twin experiments; returns ``(obs, noise-free values)``.

    noise: ``"gaussian"`` y = h + σ ε with σ = sigma + rel_sigma·|h|; ``"lognormal"`` y = h·exp(σ ε) (the set
    then compares logs, ``log=True``, with σ the std of log y); ``"none"`` y = h (σ still sets the weights).
    sample: boolean ``(n_t, *batch, m)`` sampling pattern; unsampled entries become missing (NaN).
    """
    check_choice("noise model", noise, ["gaussian", "lognormal", "none"])
    times = torch.as_tensor(times, dtype=torch.float64)
    dummy = ObservationSet(times, torch.zeros(len(times), 1), 1.0, operator=operator)
    with torch.no_grad():
        h = predict(model, state, dummy, t0=t0, dt=dt)
    s = torch.as_tensor(sigma, dtype=h.dtype)
    eps = torch.randn(h.shape, generator=generator, dtype=h.dtype)
    if noise == "lognormal":
        if bool((h <= 0).any()):
            raise ObservationError("log-normal noise needs positive model values (got h <= 0)")
        y, sig, log = h * torch.exp(s * eps), s.expand(h.shape), True
    else:
        sig = (s + rel_sigma * h.abs()).expand(h.shape)
        y = h + sig * eps if noise == "gaussian" else h.clone()
        log = False
    if sample is not None:
        y = torch.where(torch.as_tensor(sample, dtype=torch.bool), y, torch.full_like(y, float("nan")))
    return ObservationSet(times, y, sig, operator=operator, log=log, columns=columns), h
