"""Forcing and observations for HBV: CAMELS-US files and plain per-basin CSV files.

CAMELS-US (Newman et al. 2015; Addor et al. 2017) layout under a root folder (the full download, or the
4-basin sample in ``shared/data/camels_us_sample``)::

    basin_mean_forcing/<source>/[<huc2>/]<gauge>_lump_<...>_forcing_leap.txt   # source: daymet, maurer, nldas
    usgs_streamflow/[<huc2>/]<gauge>_streamflow_qc.txt
    camels_attributes_v2.0/camels_{clim,geol,hydro,name,soil,topo,vege}.txt      # ';'-separated, all basins

A forcing file has three header lines (gauge latitude °N, mean elevation m, area m²), a line of column names,
then one row per day: ``Year Mnth Day Hr dayl(s) prcp(mm/day) srad(W/m2) swe(mm) tmax(C) tmin(C) vp(Pa)``. A
streamflow file has rows ``gauge Year Month Day Q(cfs) flag`` (flag ``A`` approved, ``A:e`` estimated, ``M``
missing with Q = −999). Discharge is converted to mm/d over the basin area of the forcing header:
``q = Q · 0.3048³ m³/ft³ · 86400 s/d / area · 1000 mm/m``. The mean temperature is ``(tmax + tmin)/2`` and PET
is Hargreaves's (:mod:`.pet`) from tmin, tmax, the latitude and the day of year.

A per-basin CSV (users' own data) has a header ``date,prcp,tmean,pet`` (ISO dates, mm/d, °C, mm/d) and
optional columns ``tmin``, ``tmax``, ``qobs`` (mm/d; empty = missing), one row per consecutive day.
"""

from __future__ import annotations

import csv
import datetime as _dt
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError, ForcingError
from .pet import hargreaves

CFS_TO_M3S = 0.3048**3  # m3/s per ft3/s
SAMPLE = "builtin:camels_us_sample"  # the 4-basin sample shipped with pelagos (see its README.md)
SAMPLE_BASINS = ("01022500", "01547700", "02064000", "03015500")
FORCING_SOURCES = ("daymet", "maurer", "maurer_extended", "nldas", "nldas_extended")


@dataclass
class Basin:
    """Daily data of one basin: every series has length ``n_days`` (float64 numpy arrays).

    ``prcp``, ``pet``, ``q_obs`` in mm/d (``q_obs`` NaN where not observed), temperatures in °C; ``lat`` °N,
    ``area_km2`` km², ``elev`` m (NaN when unknown). ``tmin``/``tmax`` are NaN for a CSV without them.
    """

    gauge_id: str
    dates: np.ndarray  # datetime64[D]
    prcp: np.ndarray
    tmean: np.ndarray
    tmin: np.ndarray
    tmax: np.ndarray
    pet: np.ndarray
    q_obs: np.ndarray
    lat: float = float("nan")
    area_km2: float = float("nan")
    elev: float = float("nan")

    @property
    def n_days(self) -> int:
        return len(self.dates)

    def tensors(self, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """``{"P", "T", "PET", "Q"}`` as ``(n_days,)`` tensors."""
        return {
            "P": torch.as_tensor(self.prcp, dtype=dtype),
            "T": torch.as_tensor(self.tmean, dtype=dtype),
            "PET": torch.as_tensor(self.pet, dtype=dtype),
            "Q": torch.as_tensor(self.q_obs, dtype=dtype),
        }


# -- helpers ----------------------------------------------------------------------------------------------
def _date(x: str | _dt.date | np.datetime64 | None, what: str) -> np.datetime64 | None:
    if x is None:
        return None
    try:
        return (
            np.datetime64(str(x)[:10], "D") if not isinstance(x, np.datetime64) else x.astype("datetime64[D]")
        )
    except ValueError:
        raise ConfigError(f"{what} {x!r} is not a date; write it as YYYY-MM-DD") from None


def _check_consecutive(dates: np.ndarray, where: str) -> None:
    if len(dates) == 0:
        raise ForcingError(f"{where}: no days")
    step = np.diff(dates).astype(int)
    bad = np.nonzero(step != 1)[0]
    if bad.size:
        i = int(bad[0])
        if step[i] > 1:
            raise ForcingError(
                f"{where}: missing days between {dates[i]} and {dates[i + 1]} ({step[i] - 1} day(s) absent); "
                "give one row per consecutive day (fill gaps before running HBV)"
            )
        raise ForcingError(f"{where}: dates are not increasing at {dates[i]} -> {dates[i + 1]}; sort them")


def _check_values(where: str, name: str, x: np.ndarray, dates: np.ndarray, *, nonneg: bool) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise ForcingError(f"{where}: {name} is missing/NaN on {dates[i]} ({int(bad.sum())} day(s)); fill it")
    if nonneg and (x < 0).any():
        i = int(np.nonzero(x < 0)[0][0])
        raise ForcingError(f"{where}: negative {name} = {x[i]:g} on {dates[i]}; {name} must be >= 0")


def _cut(dates: np.ndarray, start, end, where: str) -> slice:
    s, e = _date(start, "start"), _date(end, "end")
    if s is not None and (s < dates[0] or s > dates[-1]):
        raise ForcingError(f"{where}: start {s} is outside the data ({dates[0]} to {dates[-1]})")
    if e is not None and (e < dates[0] or e > dates[-1]):
        raise ForcingError(f"{where}: end {e} is outside the data ({dates[0]} to {dates[-1]})")
    if s is not None and e is not None and e < s:
        raise ConfigError(f"{where}: end {e} is before start {s}")
    i0 = 0 if s is None else int((s - dates[0]).astype(int))
    i1 = len(dates) if e is None else int((e - dates[0]).astype(int)) + 1
    return slice(i0, i1)


def _attributes_dir(root: Path) -> Path | None:
    for d in (root / "camels_attributes_v2.0", root):
        if (d / "camels_name.txt").is_file() or list(d.glob("camels_*.txt")):
            return d
    return None


def _known_ids(root: Path) -> list[str]:
    ids: set[str] = set()
    d = _attributes_dir(root)
    if d is not None and (d / "camels_name.txt").is_file():
        with open(d / "camels_name.txt") as f:
            next(f, None)
            ids.update(line.split(";")[0].strip() for line in f if line.strip())
    for p in (root / "basin_mean_forcing").glob("*/**/*_forcing_leap.txt"):
        ids.add(p.name[:8])
    return sorted(ids)


def _unknown_basin(root: Path, gauge_id: str, what: str) -> ForcingError:
    known = _known_ids(root)
    with_data = sorted({p.name[:8] for p in (root / "basin_mean_forcing").glob("*/**/*_forcing_leap.txt")})
    close = difflib.get_close_matches(gauge_id, with_data or known, n=2, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if gauge_id in known:
        return ForcingError(
            f"basin {gauge_id!r} is a CAMELS basin but {what} has no file for it under {root}{hint}"
        )
    avail = f" Basins with forcing here: {', '.join(with_data[:20])}{' ...' if len(with_data) > 20 else ''}."
    return ForcingError(f"unknown basin id {gauge_id!r} under {root}{hint}{avail if with_data else ''}")


def _find(root: Path, folder: str, pattern: str) -> Path | None:
    base = root / folder
    hits = sorted(base.glob(pattern)) + sorted(base.glob(f"*/{pattern}"))
    return hits[0] if hits else None


def _root(root: str | Path) -> Path:
    """``builtin:camels_us_sample`` -> the copy in pelagos/data; anything else as a path."""
    from ..core.paths import resolve_path

    return resolve_path(root, None)


def _norm_id(gauge_id: str | int) -> str:
    g = str(gauge_id).strip()
    if not re.fullmatch(r"\d{1,8}", g):
        raise ConfigError(
            f"gauge id {gauge_id!r} must be a USGS station number of up to 8 digits, e.g. '01022500'"
        )
    return g.zfill(8)


# -- CAMELS-US ----------------------------------------------------------------------------------------------
def read_forcing_file(path: str | Path) -> tuple[dict[str, np.ndarray], float, float, float]:
    """One CAMELS forcing file -> ``(columns {name: array}, lat °N, elev m, area m²)``; dates: ``"date"``."""
    path = Path(path)
    with open(path) as f:
        try:
            lat, elev, area = (float(next(f).strip()) for _ in range(3))
        except (StopIteration, ValueError):
            raise ForcingError(
                f"{path}: the first three lines must be latitude, elevation and area"
            ) from None
        header = next(f, "").split()
        rows = [line.split() for line in f if line.strip()]
    if not rows:
        raise ForcingError(f"{path}: no data rows")
    names = [re.sub(r"\(.*\)$", "", h).lower() for h in header]
    try:
        data = np.array(rows, dtype=np.float64)
    except ValueError:
        raise ForcingError(f"{path}: a data row is not numeric (expected {' '.join(header)})") from None
    if data.shape[1] != len(names):
        raise ForcingError(f"{path}: {data.shape[1]} columns but the header names {len(names)}")
    cols = {n: data[:, i] for i, n in enumerate(names)}
    y, m, d = (cols[k].astype(int) for k in ("year", "mnth", "day"))
    cols["date"] = np.array([f"{a:04d}-{b:02d}-{c:02d}" for a, b, c in zip(y, m, d)], dtype="datetime64[D]")
    return cols, lat, elev, area


def read_streamflow_file(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CAMELS streamflow file -> ``(dates, Q ft³/s with NaN where missing, flags)``."""
    with open(path) as f:
        rows = [line.split() for line in f if line.strip()]
    dates = np.array(
        [f"{int(r[1]):04d}-{int(r[2]):02d}-{int(r[3]):02d}" for r in rows], dtype="datetime64[D]"
    )
    q = np.array([float(r[4]) for r in rows])
    flags = np.array([r[5] if len(r) > 5 else "" for r in rows])
    q[(q < 0) | (flags == "M")] = np.nan
    return dates, q, flags


def load_basin(
    root: str | Path,
    gauge_id: str | int,
    start: str | None = None,
    end: str | None = None,
    *,
    source: str = "daymet",
) -> Basin:
    """Forcing (``basin_mean_forcing/<source>``) and observed discharge of one CAMELS-US basin.

    Args:
        root: the CAMELS-US folder (holding ``basin_mean_forcing``, ``usgs_streamflow``, attributes); flat or
            with per-HUC subfolders.
        gauge_id: USGS station number (``"01022500"``; leading zeros may be omitted).
        start, end: inclusive dates ``YYYY-MM-DD`` (default: the whole forcing file).
        source: forcing product folder (``daymet``, ``maurer``, ``nldas``, ...).

    Discharge days absent from the streamflow file (or flagged missing) are NaN in ``q_obs``.
    """
    root = _root(root)
    if not (root / "basin_mean_forcing").is_dir():
        raise ForcingError(f"{root} is not a CAMELS-US folder: it has no basin_mean_forcing/ subfolder")
    g = _norm_id(gauge_id)
    src = root / "basin_mean_forcing" / source
    if not src.is_dir():
        have = sorted(p.name for p in (root / "basin_mean_forcing").iterdir() if p.is_dir())
        raise ForcingError(f"no forcing source {source!r} under {root}/basin_mean_forcing; available: {have}")
    fpath = _find(root, f"basin_mean_forcing/{source}", f"{g}_lump_*forcing*.txt")
    if fpath is None:
        raise _unknown_basin(root, g, f"basin_mean_forcing/{source}")
    cols, lat, elev, area_m2 = read_forcing_file(fpath)
    dates = cols["date"]
    where = str(fpath)
    _check_consecutive(dates, where)
    sl = _cut(dates, start, end, where)
    dates = dates[sl]
    prcp, tmin, tmax = cols["prcp"][sl], cols["tmin"][sl], cols["tmax"][sl]
    _check_values(where, "prcp", prcp, dates, nonneg=True)
    _check_values(where, "tmin", tmin, dates, nonneg=False)
    _check_values(where, "tmax", tmax, dates, nonneg=False)
    if not area_m2 > 0:
        raise ForcingError(f"{where}: area (third header line) must be > 0 m2; got {area_m2}")
    doy = torch.as_tensor((dates - dates.astype("datetime64[Y]")).astype(int) + 1)
    pet = hargreaves(torch.as_tensor(tmin), torch.as_tensor(tmax), lat, doy).numpy()
    q = np.full(len(dates), np.nan)
    qpath = _find(root, "usgs_streamflow", f"{g}_streamflow_qc.txt")
    if qpath is not None:
        qd, qcfs, _ = read_streamflow_file(qpath)
        idx = (qd - dates[0]).astype(int)
        ok = (idx >= 0) & (idx < len(dates))
        q[idx[ok]] = qcfs[ok] * CFS_TO_M3S * 86400.0 / area_m2 * 1000.0
    return Basin(
        gauge_id=g,
        dates=dates,
        prcp=prcp.copy(),
        tmean=0.5 * (tmin + tmax),
        tmin=tmin.copy(),
        tmax=tmax.copy(),
        pet=pet,
        q_obs=q,
        lat=lat,
        area_km2=area_m2 / 1e6,
        elev=elev,
    )


def load_basins(
    root: str | Path, gauge_ids: Sequence[str | int], start: str | None = None, end: str | None = None, **kw
) -> list[Basin]:
    """:func:`load_basin` for several basins; all must cover the same days (give ``start``/``end``)."""
    basins = [load_basin(root, g, start, end, **kw) for g in gauge_ids]
    check_same_days(basins)
    return basins


def check_same_days(basins: Sequence[Basin]) -> None:
    """Raise unless every basin covers exactly the days of the first."""
    if not basins:
        raise ConfigError("no basins given")
    d0 = basins[0].dates
    for b in basins[1:]:
        if len(b.dates) != len(d0) or (b.dates != d0).any():
            raise ForcingError(
                f"basins {basins[0].gauge_id} ({d0[0]}..{d0[-1]}) and {b.gauge_id} "
                f"({b.dates[0]}..{b.dates[-1]}) "
                "cover different days; give the same start and end for all (inside every basin's data)"
            )


def stack_basins(basins: Sequence[Basin], dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """``{"P", "T", "PET", "Q"}`` as ``(n_days, n_basins)`` tensors (mm/d, °C; Q NaN where not observed)."""
    check_same_days(basins)
    keys = {"P": "prcp", "T": "tmean", "PET": "pet", "Q": "q_obs"}
    return {
        k: torch.as_tensor(np.stack([getattr(b, a) for b in basins], 1), dtype=dtype) for k, a in keys.items()
    }


class Attributes(tuple):
    """``(gauge_ids, names, values)`` (unpacks in three) with ``.huc02`` (region code per basin, str)."""

    def __new__(cls, gauge_ids: list[str], names: list[str], values: np.ndarray, huc02: list[str]):
        obj = super().__new__(cls, (gauge_ids, names, values))
        obj.huc02 = huc02
        return obj

    @property
    def gauge_ids(self) -> list[str]:
        return self[0]

    @property
    def names(self) -> list[str]:
        return self[1]

    @property
    def values(self) -> np.ndarray:
        return self[2]


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=";") if r]
    return [h.strip() for h in rows[0]], [[c.strip() for c in r] for r in rows[1:]]


def load_attributes(
    root: str | Path, names: Sequence[str] | None = None, gauge_ids: Sequence[str | int] | None = None
) -> Attributes:
    """Static CAMELS attributes, numeric columns of every ``camels_*.txt`` table.

    Args:
        root: CAMELS-US folder (holding ``camels_attributes_v2.0/``) or the attributes folder itself.
        names: attribute names in the order wanted (default: every numeric attribute, in file order).
        gauge_ids: basins in the order wanted (default: all, sorted).

    Returns:
        :class:`Attributes` ``(gauge_ids, names, values (n_basins, n_attr) float64 with NaN for 'NA')``
        with ``.huc02``.
    """
    root = _root(root)
    d = _attributes_dir(root)
    if d is None:
        raise ForcingError(
            f"no CAMELS attribute tables (camels_*.txt) under {root} or {root}/camels_attributes_v2.0"
        )
    columns: dict[str, dict[str, str]] = {}
    for p in sorted(d.glob("camels_*.txt")):
        header, rows = _read_table(p)
        if not header or header[0] != "gauge_id":
            continue
        for j, h in enumerate(header[1:], start=1):
            columns[h] = {r[0]: (r[j] if j < len(r) else "NA") for r in rows}
    if "huc_02" not in columns:
        raise ForcingError(f"{d}: camels_name.txt (with huc_02) is missing")
    all_ids = sorted(columns["huc_02"])

    def numeric(col: dict[str, str]) -> bool:
        for v in col.values():
            if v in ("NA", "", "nan"):
                continue
            try:
                float(v)
            except ValueError:
                return False
        return True

    numeric_names = [n for n, c in columns.items() if n not in ("huc_02", "gauge_name") and numeric(c)]
    if names is None:
        names = numeric_names
    names = list(names)
    for n in names:
        if n not in columns:
            close = difflib.get_close_matches(n, list(columns), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown CAMELS attribute {n!r}{hint} (numeric ones: {', '.join(numeric_names)})"
            )
        if n not in numeric_names:
            raise ConfigError(
                f"CAMELS attribute {n!r} is not numeric (a category); choose numeric attributes"
            )
    ids = all_ids if gauge_ids is None else [_norm_id(g) for g in gauge_ids]
    for g in ids:
        if g not in columns["huc_02"]:
            close = difflib.get_close_matches(g, all_ids, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ForcingError(f"unknown basin id {g!r} in the CAMELS attributes{hint}")
    values = np.full((len(ids), len(names)), np.nan)
    for j, n in enumerate(names):
        col = columns[n]
        for i, g in enumerate(ids):
            v = col.get(g, "NA")
            values[i, j] = float(v) if v not in ("NA", "", "nan") else np.nan
    return Attributes(ids, names, values, [columns["huc_02"][g].zfill(2) for g in ids])


# -- per-basin CSV ------------------------------------------------------------------------------------------
CSV_REQUIRED = ("date", "prcp", "tmean", "pet")
CSV_OPTIONAL = ("tmin", "tmax", "qobs")


def read_basin_csv(
    path: str | Path, start: str | None = None, end: str | None = None, *, gauge_id: str | None = None
) -> Basin:
    """A basin from a CSV with header ``date,prcp,tmean,pet`` (+ optional ``tmin,tmax,qobs``).

    Dates ISO (``YYYY-MM-DD``), one row per consecutive day; prcp and pet in mm/d (>= 0), tmean in °C. Missing
    days, non-numeric or empty forcing values and negative precipitation/PET are errors naming the row.
    """
    path = Path(path)
    if not path.is_file():
        raise ForcingError(f"basin CSV {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        rows = [r for r in reader if r and any(c.strip() for c in r)]
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise ForcingError(f"{path}: header lacks column(s) {missing}; expected {','.join(CSV_REQUIRED)}")
    col = {h: i for i, h in enumerate(header)}
    try:
        dates = np.array([r[col["date"]].strip()[:10] for r in rows], dtype="datetime64[D]")
    except ValueError as err:
        raise ForcingError(f"{path}: a date is not YYYY-MM-DD ({err})") from None
    _check_consecutive(dates, str(path))

    def column(name: str, required: bool) -> np.ndarray:
        if name not in col:
            return np.full(len(rows), np.nan)
        out = np.empty(len(rows))
        for i, r in enumerate(rows):
            s = r[col[name]].strip() if col[name] < len(r) else ""
            try:
                out[i] = float(s) if s else np.nan
            except ValueError:
                raise ForcingError(
                    f"{path}: row {i + 2} ({dates[i]}): {name} = {s!r} is not a number"
                ) from None
        if required:
            _check_values(str(path), name, out, dates, nonneg=name in ("prcp", "pet"))
        return out

    prcp, tmean, pet = column("prcp", True), column("tmean", True), column("pet", True)
    tmin, tmax, q = column("tmin", False), column("tmax", False), column("qobs", False)
    sl = _cut(dates, start, end, str(path))
    return Basin(
        gauge_id=gauge_id or path.stem,
        dates=dates[sl],
        prcp=prcp[sl],
        tmean=tmean[sl],
        tmin=tmin[sl],
        tmax=tmax[sl],
        pet=pet[sl],
        q_obs=q[sl],
    )
