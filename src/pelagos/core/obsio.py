"""The one observation stack: reading and writing observation files, and synthetic observations for twins.

Every model is observed the same way: an observed quantity is a model variable (a name from
:meth:`Model.output_variables`) at a point (``{coordinate: value}``), and its operator comes from the model's
hook :meth:`Model.observation_operator(variable, at) <pelagos.core.Model.observation_operator>`.

Observation files ("long" format: one observed value per row)
--------------------------------------------------------------
CSV with a header line (names are case-insensitive; lines starting with ``#`` and blank lines are skipped)::

    time,depth,variable,value,sigma
    1998-03-22 00:00:00,surface,npzd_phy,0.154,0.2
    1998-03-29 00:00:00,25,npzd_nut,5.76,0.2

or a NetCDF file with the same names as variables along one dimension (``obs``), as written by
:func:`write_observations`. The meaning of every column, including an empty cell:

``time`` (required)
    An ISO 8601 date (``1998-03-22``, ``1998-03-22 06:00:00``, ``1998-03-22T06:00:00Z``; needs a model with
    an epoch, i.e. the date of model time 0, e.g. the forcing's) or a number = model time in seconds (seconds
    since the epoch when the model has one). Empty: an error.
``variable`` (required)
    A variable name of the model (``pelagos`` lists them; e.g. ``npzd_phy``, ``psi``); an unknown name is an
    error with a suggestion. Empty: an error.
``value`` (required)
    The observed value in the variable's units. Empty or ``NaN``: a missing value, kept as a masked entry
    (it never enters a misfit). ``inf``: an error. With ``log`` the value must be > 0 (a fill value such as
    ``-999`` is refused with its row; leave the cell empty instead).
``sigma``
    The error standard deviation (> 0), in the units of ``value``, or of ``log(value)`` when the variable is
    read with ``log``. Empty: the reader's ``sigma=`` default, else an error. The column may be left out
    only when ``sigma=`` is given.
``depth``
    Metres below the surface (positive down, >= 0), or ``surface`` (the top cell), or ``integral`` (the
    column integral, units × m). **Empty: no vertical position is given** — right for a variable without a
    vertical dimension (a 0-D box, a bottom pool, a QG field located by ``lev,y,x``), an error for a profile.
    This is the one meaning of an empty ``depth`` everywhere in pelagos.
any other column
    Must be named after a dimension of the model's variables (e.g. ``lev``, ``y``, ``x`` for QG): the
    coordinate of the point along that dimension, in the units of :meth:`Model.output_coordinates`. Empty:
    not given (as for ``depth``). Any other column name is an error.

Rows outside the reading window (``start``/``stop``), rows off the model's step grid (when ``start`` is
given), two rows for the same (time, variable, point), and any bad cell raise :class:`ObservationError`
naming the row as ``file:line`` (NetCDF: ``file[obs=i]``); times are shown as dates when the model has an
epoch.

The rows become the dense ``(n_t, m)`` table of an :class:`ObservationSet`: one column per observed
(variable, point), in the order first met in the file, ``NaN`` where a time lacks that column. Its
``columns`` are ``[(variable, {coordinate: value}), ...]``; ``start`` is the model's epoch.
"""

from __future__ import annotations

import csv
import difflib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, ObservationError, ShapeError
from .model import declared_variables, unknown_variable_message
from .observations import ObservationSet
from .operators import GridPointOperator, IdentityOperator, StackedOperator
from .timeaxis import format_time, model_epoch, model_time, parse_date

__all__ = [
    "Sampling",
    "column_label",
    "format_time",
    "model_epoch",
    "model_time",
    "observations_from_records",
    "read_observations",
    "regular_times",
    "synthetic_observations",
    "write_observations",
]

REQUIRED = ("time", "variable", "value")
DEPTH = "depth"
_MISSING = ("", "nan", "na", "n/a")


# -- the model's names -------------------------------------------------------------------------------------
def _dims(variables: list | None) -> set[str] | None:
    if variables is None:
        return None
    return {d for v in variables for d in getattr(v, "dims", ())}


# -- cells -------------------------------------------------------------------------------------------------
def _is_missing(x: Any) -> bool:
    if x is None:
        return True
    if isinstance(x, float):
        return math.isnan(x)
    if isinstance(x, str):
        return x.strip().lower() in _MISSING
    return False


def _number(x: Any, name: str) -> float:
    try:
        return float(x.strip() if isinstance(x, str) else x)
    except (TypeError, ValueError):
        raise ObservationError(f"{name} {x!r} is not a number") from None


def _coordinate(dim: str, x: Any) -> float | str | None:
    """A coordinate cell: ``None`` (empty: not given), a number, or a word (``surface``, ``integral``)."""
    if _is_missing(x):
        return None
    if isinstance(x, str):
        s = x.strip()
        try:
            v = float(s)
        except ValueError:
            return s.lower()
    else:
        v = float(x)
    if not math.isfinite(v):
        raise ObservationError(f"{dim} {x!r} is not a finite number")
    if dim == DEPTH and v < 0:
        raise ObservationError(f"depth {v:g} m is negative (depth is positive down from the surface)")
    return v


@dataclass
class _Row:
    loc: str
    t: float
    variable: str
    value: float
    sigma: float
    where: tuple  # ((dim, value), ...) sorted by dim


def _log_lookup(log: Any) -> Any:
    if isinstance(log, bool):
        return lambda v: log
    if isinstance(log, Mapping):
        return lambda v: bool(log.get(v, False))
    if isinstance(log, (str,)):
        return lambda v: v == log
    names = set(log or ())
    return lambda v: v in names


def observations_from_records(
    records: Iterable[tuple[str, Mapping[str, Any]]],
    model: Any,
    *,
    start: Any = None,
    stop: Any = None,
    log: bool | Mapping[str, bool] | Sequence[str] = False,
    sigma: float | None = None,
    source: str = "observations",
) -> ObservationSet:
    """Build an :class:`ObservationSet` from long-format records ``(location, {column: cell})``.

    The columns and their meaning are those of the file format (module docstring); ``location`` names the
    record in errors (``"obs.csv:7"``). This is what :func:`read_observations` calls for CSV and NetCDF alike.
    """
    epoch = model_epoch(model)
    lo = None if start is None else model_time(model, start, what="start")
    hi = None if stop is None else model_time(model, stop, what="stop")
    if lo is not None and hi is not None and hi < lo:
        raise ObservationError(
            f"the observation window ends ({format_time(epoch, hi)}) before it starts "
            f"({format_time(epoch, lo)})"
        )
    window = f"[{format_time(epoch, lo) if lo is not None else '...'}, " + (
        f"{format_time(epoch, hi) if hi is not None else '...'}]"
    )
    dt = getattr(model, "dt", None)
    declared = declared_variables(model)
    names = None if declared is None else [v.name for v in declared]
    is_log = _log_lookup(log)
    if sigma is not None and not (math.isfinite(float(sigma)) and float(sigma) > 0):
        raise ObservationError(f"the default sigma must be a finite number > 0; got {sigma!r}")
    rows: list[_Row] = []
    seen: dict[tuple, str] = {}
    for loc, rec in records:
        try:
            cells = {str(k).strip().lower(): v for k, v in rec.items()}
            for c in REQUIRED:
                if _is_missing(cells.get(c)) and c != "value":
                    raise ObservationError(f"{c} is empty")
            t = model_time(model, cells["time"])
            var = str(cells["variable"]).strip()
            if names is not None and var not in names:
                raise ObservationError(unknown_variable_message(var, names))
            raw_v = cells.get("value")
            value = float("nan") if _is_missing(raw_v) else _number(raw_v, "value")
            if math.isinf(value):
                raise ObservationError(
                    f"value is {raw_v!r}; leave the cell empty (or NaN) for a missing value"
                )
            s = float("nan")
            if not math.isnan(value):
                raw_s = cells.get("sigma")
                if _is_missing(raw_s):
                    if sigma is None:
                        raise ObservationError(
                            "sigma is empty; give the error standard deviation (> 0) or read with sigma=..."
                        )
                    s = float(sigma)
                else:
                    s = _number(raw_s, "sigma")
                if not (math.isfinite(s) and s > 0):
                    raise ObservationError(f"sigma must be a finite number > 0; got {raw_s!r}")
                if is_log(var) and value <= 0:
                    raise ObservationError(
                        f"value {raw_v!r} of {var} is <= 0 but {var} is compared in log space (log: true); "
                        "a fill value? leave the cell empty or NaN to mark a missing value"
                    )
            where = []
            for c, x in cells.items():
                if c in ("time", "variable", "value", "sigma"):
                    continue
                w = _coordinate(c, x)
                if w is not None:
                    where.append((c, w))
            where = tuple(sorted(where))
            if (lo is not None and t < lo - 1e-6) or (hi is not None and t > hi + 1e-6):
                raise ObservationError(f"time {format_time(epoch, t)} is outside the window {window}")
            if lo is not None and dt:
                k = (t - lo) / float(dt)
                if abs(k - round(k)) > 1e-6 * max(abs(k), 1.0):
                    a = lo + math.floor(k) * float(dt)
                    raise ObservationError(
                        f"time {format_time(epoch, t)} is not on the model's step grid (start + k·dt, dt = "
                        f"{float(dt):g} s): the nearest steps are {format_time(epoch, a)} and "
                        f"{format_time(epoch, a + float(dt))}"
                    )
        except ObservationError as err:
            raise ObservationError(f"{loc}: {err}") from None
        key = (t, var, where)
        if key in seen:
            raise ObservationError(
                f"{loc}: {var} {_where_text(dict(where))} at {format_time(epoch, t)} is observed twice "
                f"(also at {seen[key]}); average the two rows or drop one"
            )
        seen[key] = loc
        rows.append(_Row(loc, t, var, value, s, where))
    if not rows:
        raise ObservationError(f"{source}: no observation rows")
    return _assemble(rows, model, declared, is_log, epoch=epoch, source=source)


def _where_text(where: Mapping[str, Any]) -> str:
    if not where:
        return ""
    if set(where) == {DEPTH}:
        d = where[DEPTH]
        return f"at {d:g} m" if isinstance(d, float) else f"at the {d}" if d == "surface" else f"({d})"
    return "at " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in where.items())


def column_label(column: Any) -> str:
    """A short label of an observed column ``(variable, where)``: ``"npzd_nut at 25 m"``."""
    var, where = column
    text = _where_text(_as_where(where))
    return f"{var} {text}".strip()


def _as_where(where: Any) -> dict:
    """``where`` of a column as a dict (older sets used a bare depth, a word or NaN)."""
    if isinstance(where, Mapping):
        return dict(where)
    if where is None or (isinstance(where, float) and math.isnan(where)) or where == "":
        return {}
    return {DEPTH: where if isinstance(where, str) else float(where)}


def _assemble(rows: list[_Row], model: Any, declared, is_log, *, epoch, source: str) -> ObservationSet:
    # columns grouped by (variable, located dims) so that each group is one call of the model's hook
    groups: dict[tuple, list[tuple]] = {}
    first: dict[tuple, str] = {}
    for r in rows:
        g = (r.variable, tuple(d for d, _ in r.where))
        cols = groups.setdefault(g, [])
        if r.where not in cols:
            cols.append(r.where)
            first[(r.variable, r.where)] = r.loc
    columns: list[tuple[str, dict]] = []
    parts = []
    for (var, dims), wheres in groups.items():
        at = {d: [dict(w)[d] for w in wheres] for d in dims} or None
        try:
            op = _operator(model, declared, var, at)
        except NotImplementedError as err:
            raise ObservationError(
                f"{first[(var, wheres[0])]}: {type(model).__name__} cannot observe {var!r}: {err}"
            ) from None
        except (ObservationError, ShapeError, ConfigError) as err:
            for w in wheres:  # find the row that the model refuses
                try:
                    _operator(model, declared, var, {d: [v] for d, v in w} or None)
                except (ObservationError, ShapeError, ConfigError) as err1:
                    raise ObservationError(f"{first[(var, w)]}: {err1}") from None
            raise ObservationError(f"{first[(var, wheres[0])]}: {err}") from None
        m = getattr(op, "m", len(wheres))
        if m != len(wheres):
            raise ObservationError(
                f"{first[(var, wheres[0])]}: the observation operator of {var!r} gives {m} values for "
                f"{len(wheres)} points"
            )
        parts.append(op)
        columns += [(var, dict(w)) for w in wheres]
    times = sorted({r.t for r in rows})
    ti = {t: i for i, t in enumerate(times)}
    ci = {(v, tuple(sorted(w.items()))): j for j, (v, w) in enumerate(columns)}
    vals = torch.full((len(times), len(columns)), float("nan"), dtype=torch.float64)
    sig = torch.ones_like(vals)
    lines: dict[tuple[int, int], str] = {}
    for r in rows:
        i, j = ti[r.t], ci[(r.variable, r.where)]
        vals[i, j] = r.value
        if not math.isnan(r.value):
            sig[i, j] = r.sigma
        lines[(i, j)] = r.loc
    lm = [bool(is_log(v)) for v, _ in columns]
    log: bool | torch.Tensor = lm[0] if len(set(lm)) == 1 else torch.tensor(lm)
    return ObservationSet(
        torch.tensor(times, dtype=torch.float64),
        vals,
        sig,
        operator=parts[0] if len(parts) == 1 else StackedOperator(parts),
        log=log,
        columns=columns,
        start=epoch,
        meta={"source": source, "lines": lines},
    )


def _operator(model: Any, declared, variable: str, at: Mapping[str, list] | None):
    op = model.observation_operator(variable, at)
    if isinstance(op, GridPointOperator) and declared is not None:
        # the default hook interpolates along the dims it is given; a dim left out must have size 1
        coords = model.output_coordinates()
        for d in op.variable.dims:
            c = coords.get(d)
            if d not in (at or {}) and c is not None and len(c.values) > 1:
                raise ObservationError(
                    f"{variable} varies along {d!r} ({len(c.values)} values): give its coordinate in a "
                    f"column named {d!r}"
                )
    return op


# -- files ---------------------------------------------------------------------------------------------------
def _csv_records(path: Path, known: set[str] | None) -> Iterable[tuple[str, dict]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = None
        for cells in reader:
            line = reader.line_num
            if not cells or all(not c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip().lower() for c in cells]
                _check_header(header, f"{path}:{line}", known)
                continue
            if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
                raise ObservationError(
                    f"{path}:{line}: {len(cells)} fields but the header names {len(header)}"
                )
            yield (
                f"{path}:{line}",
                {h: (cells[k] if k < len(cells) else "") for k, h in enumerate(header) if h},
            )
        if header is None:
            raise ObservationError(f"{path}: empty file; the header must be time,depth,variable,value,sigma")


def _checked_text(records: Iterable, path: Path) -> Iterable:
    try:
        yield from records
    except UnicodeDecodeError:
        raise ObservationError(f"{path}: not a UTF-8 text (CSV) file") from None
    except csv.Error as err:
        raise ObservationError(f"{path}: not a readable CSV file ({err})") from None


def _check_header(header: Sequence[str], loc: str, known: set[str] | None) -> None:
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ObservationError(
            f"{loc}: the header {','.join(header)} lacks {', '.join(missing)}; expected "
            "time,depth,variable,value,sigma (+ a column per other coordinate)"
        )
    dup = sorted({h for h in header if h and header.count(h) > 1})
    if dup:
        raise ObservationError(f"{loc}: column(s) {dup} appear twice in the header")
    if known is not None:
        valid = {"time", "variable", "value", "sigma", DEPTH} | known
        for h in header:
            if h and h not in valid:
                close = difflib.get_close_matches(h, sorted(valid), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ObservationError(
                    f"{loc}: unknown column {h!r}{hint} (columns: time, depth, variable, value, sigma and "
                    "the "
                    f"model's dimensions: {', '.join(sorted(known)) or 'none'})"
                )


def _netcdf_records(path: Path, known: set[str] | None) -> list[tuple[str, dict]]:
    import numpy as np
    import xarray as xr

    try:
        ds = xr.open_dataset(path)
    except Exception as err:
        raise ObservationError(f"{path}: cannot be read as NetCDF ({err})") from None
    with ds:
        names = [str(n) for n in ds.data_vars] + [str(n) for n in ds.coords if str(n) not in ds.dims]
        dims = {d for n in names for d in ds[n].dims}
        if len(dims) > 1:
            raise ObservationError(
                f"{path}: the variables must share one dimension (obs); found {sorted(dims)}"
            )
        _check_header([n.lower() for n in names], f"{path}", known)
        cols = {}
        for n in names:
            a = ds[n].values
            if a.dtype.kind == "M":
                a = a.astype("datetime64[us]").astype(object)
            elif a.dtype.kind in "SO":
                a = np.array([x.decode() if isinstance(x, bytes) else x for x in a], dtype=object)
            cols[n.lower()] = a.tolist()
    n = len(next(iter(cols.values()))) if cols else 0
    return [(f"{path}[obs={i}]", {c: v[i] for c, v in cols.items()}) for i in range(n)]


def read_observations(
    path: str | os.PathLike,
    model: Any,
    *,
    start: Any = None,
    stop: Any = None,
    log: bool | Mapping[str, bool] | Sequence[str] = False,
    sigma: float | None = None,
) -> ObservationSet:
    """Read observations of ``model`` from a long-format ``.csv`` or NetCDF (``.nc``) file.

    Args:
        path: the file (format and the meaning of every column: module docstring / docs/inverse.md).
        model: the observed model: its variables name what can be observed, its epoch dates the times,
            its :meth:`~pelagos.core.Model.observation_operator` builds the operator.
        start, stop: the window (model seconds or ISO dates); rows outside it are errors; with ``start``
            every time must be on the step grid ``start + k·dt``. ``None``: not checked.
        log: compare in log space (multiplicative errors; ``sigma`` is then the std of ``log(value)``):
            ``True`` for every variable, or a mapping / list of variable names.
        sigma: the error std for rows whose ``sigma`` cell is empty (default: such rows are errors).

    Returns:
        an :class:`ObservationSet` (times in model seconds, ``columns = [(variable, {coord: value})]``,
        ``start`` = the model's epoch, ``meta["lines"]`` the ``file:line`` of each entry).
    """
    path = Path(path)
    if not path.exists():
        raise ObservationError(f"observation file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    known = _dims(declared_variables(model))
    if suffix in (".csv", ".txt"):
        records: Iterable = _checked_text(_csv_records(path, known), path)
    elif suffix in (".nc", ".nc4", ".netcdf", ".cdf"):
        records = _netcdf_records(path, known)
    else:
        raise ObservationError(f"{path}: unknown observation file type {suffix!r}; use .csv or .nc")
    return observations_from_records(
        records, model, start=start, stop=stop, log=log, sigma=sigma, source=str(path)
    )


def _long_rows(obs: ObservationSet):
    values = obs.values.reshape(obs.n_times, obs.m) if obs.values.numel() == obs.n_times * obs.m else None
    if values is None:  # batch dims of size 1 (one column of a dict state) are dropped
        raise ObservationError(
            f"only observation sets of shape (n_t, m) can be written; this one has {tuple(obs.values.shape)}"
        )
    if obs.columns is None:
        raise ObservationError("writing observations needs obs.columns = [(variable, {coord: value}), ...]")
    sig = obs.sigma if obs.sigma is not None else torch.diagonal(obs.cov, dim1=-2, dim2=-1).sqrt()
    sig = torch.broadcast_to(torch.as_tensor(sig), obs.values.shape).reshape(values.shape)
    cols = [(v, _as_where(w)) for v, w in obs.columns]
    for i in range(obs.n_times):
        t = float(obs.times[i])
        for j, (var, where) in enumerate(cols):
            v = float(values[i, j])
            if math.isfinite(v):
                yield t, var, where, v, float(sig[i, j])


def write_observations(obs: ObservationSet, path: str | os.PathLike, *, epoch: Any = "auto") -> Path:
    """Write ``obs`` (values ``(n_t, m)`` with ``columns``) in the long format: ``.csv`` or ``.nc``.

    Missing values are not written. Times are ISO dates when there is an epoch (``epoch="auto"``: the set's
    ``start``, i.e. the model's epoch), else model seconds; ``epoch=None`` forces seconds.
    ``read_observations`` reads the file back to the same set (give ``log=`` again: it is a reading option,
    not stored).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epoch = obs.start if epoch == "auto" else epoch
    if isinstance(epoch, str):
        epoch = parse_date(epoch)
    rows = list(_long_rows(obs))
    dims = sorted({d for _, _, w, _, _ in rows for d in w}, key=lambda d: (d != DEPTH, d))
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            head = ["time", *dims[:1]] if dims[:1] == [DEPTH] else ["time"]
            rest = [d for d in dims if d not in head]
            w.writerow([*head, "variable", "value", "sigma", *rest])
            for t, var, where, v, s in rows:
                ts = format_time(epoch, t) if epoch is not None else repr(t)
                c = [_cell(where.get(d)) for d in head[1:]]
                r = [_cell(where.get(d)) for d in rest]
                w.writerow([ts, *c, var, repr(v), repr(s), *r])
        return path
    if suffix in (".nc", ".nc4", ".netcdf"):
        import numpy as np
        import xarray as xr

        t = np.array([r[0] for r in rows], dtype=float)
        data: dict[str, Any] = {}
        if epoch is not None:
            data["time"] = (
                "obs",
                np.array(epoch, dtype="datetime64[us]") + (t * 1e6).round().astype("timedelta64[us]"),
            )
        else:
            data["time"] = ("obs", t, {"units": "s", "long_name": "model time"})
        data["variable"] = ("obs", np.array([r[1] for r in rows], dtype=str))
        data["value"] = ("obs", np.array([r[3] for r in rows], dtype=float))
        data["sigma"] = ("obs", np.array([r[4] for r in rows], dtype=float), {"long_name": "error std"})
        for d in dims:
            vals = [r[2].get(d) for r in rows]
            if all(v is None or isinstance(v, float) for v in vals):
                a = np.array([np.nan if v is None else v for v in vals], dtype=float)
            else:
                a = np.array(["" if v is None else _cell(v) for v in vals], dtype=str)
            attrs = {"units": "m", "positive": "down"} if d == DEPTH else {}
            data[d] = ("obs", a, attrs)
        ds = xr.Dataset(
            data,
            attrs={
                "Conventions": "CF-1.8",
                "featureType": "point",
                "title": "pelagos observations (long format)",
            },
        )
        ds.to_netcdf(path)
        return path
    raise ObservationError(f"{path}: unknown observation file type {suffix!r}; use .csv or .nc")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.10g}"
    return str(v)


# -- synthetic observations (twins) ----------------------------------------------------------------------
@dataclass
class Sampling:
    """What a twin observes: ``variable`` at the points ``at`` (``{coordinate: value or values}``, as the
    model's :meth:`~pelagos.core.Model.observation_operator` takes them, e.g. ``{"depth": ["surface",
    25.0]}``; ``None``: a variable without dims), at ``times`` (model s or dates; ``None``: the shared
    times)."""

    variable: str
    at: Mapping[str, Any] | None = None
    times: Sequence[Any] | None = None


def regular_times(
    model: Any, start: Any, stop: Any, every: float, *, offset: float | None = None
) -> list[float]:
    """Model times ``start + offset + k·every`` (s) up to ``stop``, on the model's step grid (rounded to the
    nearest step; ``offset`` defaults to ``every``: the start itself is not observed)."""
    t0, t1 = model_time(model, start, what="start"), model_time(model, stop, what="stop")
    dt = float(model.dt)
    if not every > 0:
        raise ObservationError(f"the sampling interval must be > 0 s; got {every!r}")
    k_every = max(round(float(every) / dt), 1)
    k = round(float(every if offset is None else offset) / dt)
    out = []
    while t0 + k * dt <= t1 + 1e-6 * dt:
        if k >= 0:
            out.append(t0 + k * dt)
        k += k_every
    return out


def _points(at: Mapping[str, Any] | None) -> tuple[dict | None, list[dict]]:
    """``at`` with every entry a list of one length m, and the m per-point dicts."""
    if not at:
        return None, [{}]
    lists = {}
    for d, v in at.items():
        if torch.is_tensor(v):
            v = v.reshape(-1).tolist()
        lists[d] = (
            list(v)
            if isinstance(v, (list, tuple)) or (hasattr(v, "__len__") and not isinstance(v, str))
            else [v]
        )
    m = max(len(v) for v in lists.values())
    for d, v in lists.items():
        if len(v) not in (1, m):
            raise ObservationError(f"sampling points along {d!r}: {len(v)} values, expected 1 or {m}")
        lists[d] = v * m if len(v) == 1 else v
    pts = [{d: _coordinate(d, v[k]) for d, v in lists.items()} for k in range(m)]  # as a file cell reads
    if any(w is None for p in pts for w in p.values()):
        raise ObservationError(f"sampling points {dict(at)!r}: a coordinate is empty (None or NaN)")
    return {d: [p[d] for p in pts] for d in lists}, pts


def synthetic_observations(
    model: Any,
    state: Any,
    times: Sequence[Any] | torch.Tensor | None,
    sampling: Sampling | Sequence[Sampling] | None = None,
    *,
    start: Any = 0.0,
    noise: str = "gaussian",
    sigma: float = 0.1,
    rel_sigma: float = 0.0,
    generator: torch.Generator | None = None,
    checkpoint: int | str | None = None,
) -> ObservationSet:
    """Observations of a run of ``model`` from ``state`` (the truth of a twin experiment), with noise.

    Args:
        model, state: the truth model and its state at ``start`` (model s or a date).
        times: observation times (model s or dates, after ``start``, on the step grid) shared by the
            samplings without their own ``times``.
        sampling: :class:`Sampling` entries (variable + points, through ``model.observation_operator``);
            ``None``: the whole (tensor) state, every entry one column.
        noise: ``"gaussian"``: y = h + σ ε with σ = sigma + rel_sigma·|h|; ``"lognormal"``: y = h·exp(σ ε)
            with σ = sigma, compared in log space (``log=True``; needs h > 0); ``"none"``: y = h, σ as for
            gaussian.
        generator: the random generator (seed it for a reproducible twin).

    Returns:
        an :class:`ObservationSet` (``NaN`` where a column is not sampled at a time) with ``meta["truth"]``
        the noise-free values.
    """
    if noise not in ("gaussian", "lognormal", "none"):
        raise ObservationError(f"noise must be 'gaussian', 'lognormal' or 'none'; got {noise!r}")
    t0 = model_time(model, start, what="start")
    shared = (
        []
        if times is None
        else [model_time(model, t) for t in (times.tolist() if torch.is_tensor(times) else times)]
    )
    if sampling is None:
        if not torch.is_tensor(state):
            raise ObservationError(
                "a state that is not one tensor needs sampling=[Sampling(variable, at), ...]"
            )
        if not shared:
            raise ObservationError("synthetic_observations: no observation times")
        parts, columns, col_times = [IdentityOperator()], None, None
    else:
        samplings = [sampling] if isinstance(sampling, Sampling) else list(sampling)
        parts, columns, col_times = [], [], []
        for s in samplings:
            at, pts = _points(s.at)
            parts.append(model.observation_operator(s.variable, at))
            own = shared if s.times is None else [model_time(model, t) for t in s.times]
            if not own:
                raise ObservationError(f"sampling of {s.variable!r} has no observation times")
            columns += [(s.variable, p) for p in pts]
            col_times += [set(own)] * len(pts)
        shared = sorted(set().union(*col_times))
    tt = sorted(set(shared))
    dt = float(model.dt)
    steps = []
    for t in tt:
        k = (t - t0) / dt
        if abs(k - round(k)) > 1e-6 * max(abs(k), 1.0) or round(k) < 0:
            raise ObservationError(
                f"observation time {format_time(model, t)} is not a step after start "
                f"{format_time(model, t0)} "
                f"(dt = {dt:g} s)"
            )
        steps.append(round(k))
    op = parts[0] if len(parts) == 1 else StackedOperator(parts)
    truth = _run_and_observe(model, state, steps, op, t0, dt, checkpoint)
    if columns is not None and truth.shape[-1] != len(columns):
        raise ShapeError(f"the observation operators give {truth.shape[-1]} values for {len(columns)} points")
    mask = torch.ones(truth.shape, dtype=torch.bool)
    if col_times is not None:
        for j, ts in enumerate(col_times):
            for i, t in enumerate(tt):
                if t not in ts:
                    mask[i, ..., j] = False
    eps = torch.randn(truth.shape, generator=generator, dtype=truth.dtype)
    if noise == "lognormal":
        if not sigma > 0:
            raise ObservationError(f"log-normal noise needs sigma > 0 (the std of log y); got {sigma!r}")
        bad = mask & ~(truth > 0)
        if bool(bad.any()):
            raise ObservationError(
                "log-normal noise needs positive model values; some sampled values are <= 0"
            )
        vals = truth * torch.exp(sigma * eps)
        sig = torch.full_like(truth, float(sigma))
    else:
        sig = float(sigma) + float(rel_sigma) * truth.abs()
        if bool((mask & ~(sig > 0)).any()):
            raise ObservationError(
                "sigma + rel_sigma·|h| is 0 for some sampled value (a zero true value with purely relative "
                "noise): give sigma > 0"
            )
        vals = truth + sig * eps if noise == "gaussian" else truth.clone()
    nan = torch.full_like(vals, float("nan"))
    obs = ObservationSet(
        torch.tensor(tt, dtype=torch.float64),
        torch.where(mask, vals, nan),
        torch.where(mask, sig, torch.ones_like(sig)),
        operator=op,
        log=noise == "lognormal",
        columns=columns,
        start=model_epoch(model),
        meta={"noise": {"kind": noise, "sigma": sigma, "rel_sigma": rel_sigma}},
    )
    obs.meta["truth"] = torch.where(mask, truth, nan)
    return obs


def _run_and_observe(model, state, steps: list[int], op, t0: float, dt: float, checkpoint) -> torch.Tensor:
    from .rollout import rollout

    out, x, k = [], state, 0
    with torch.no_grad():
        for ki in steps:
            if ki > k:
                x = rollout(
                    model, x, ki - k, t0=t0 + k * dt, dt=dt, save_every=ki - k, checkpoint=checkpoint,
                    include_initial=False, observe=lambda s: torch.zeros(()),
                ).final  # fmt: skip
                k = ki
            out.append(op(x))
    return torch.stack(out)
