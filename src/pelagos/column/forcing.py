"""Physics forcing of the water column: what a physical model (GOTM or any other) hands the biology.

A :class:`ColumnForcing` holds time series of the physical fields on GOTM's layout and returns, for any model
time ``t`` (seconds since ``time[0]``'s epoch, the same clock as the file), the environment tensors:

====================  ============  ===========================================================
name                  shape         meaning (units)
====================  ============  ===========================================================
``h``                 (Bf, nz)      layer thickness (m); index 0 = bottom layer, nz-1 = surface
``temp``              (Bf, nz)      temperature (degC)
``salt``              (Bf, nz)      salinity handed to the biology as FABM's ``practical_salinity``:
                                    GOTM's ``salt`` (Absolute Salinity, g/kg) when the file has
                                    it, else ``salt_p`` (practical salinity, PSU)
``nuh``               (Bf, nz+1)    turbulent diffusivity of heat on interfaces (m2 s-1),
                                    interface 0 = bottom, nz = surface
``I_0``               (Bf,)         net shortwave entering the water, after albedo (W m-2)
``bottom_stress``     (Bf,)         bottom stress (Pa); only if the file has ``taub`` or the
                                    user gave ``bottom_stress=``
====================  ============  ===========================================================

Salinity: GOTM (since it adopted TEOS-10) carries Absolute Salinity ``salt`` and hands *that* to FABM under
the standard name ``practical_salinity`` (``temp``, likewise, is Conservative Temperature). A FABM model in
GOTM therefore sees Absolute Salinity; the reader takes ``salt`` first so pelagos's biology sees the same, and
falls back to ``salt_p`` for files without it (``salinity_source`` records which one was read).

``Bf`` is 1 (one forcing shared by every column) or the number of columns ``B`` (each column its own).

Time interpolation is linear between records and exact at record times (the record itself is returned, not a
blend). This is what the layer thickness ``h`` and the diffusivity ``nuh`` get too: linear interpolation of
``nuh`` in time is an approximation (the true turbulence is not linear between outputs) and is exact only when
the model step equals the file's output interval (then no interpolation happens). The *lag* of ``nuh`` (GOTM's
biology uses the ``nuh`` of the previous step) is the driver's business: see
:class:`pelagos.column.model.ColumnModel`.

Constructors: :meth:`ColumnForcing.from_gotm` (a GOTM output NetCDF, GOTM's own names), :meth:`from_dataset`
(an ``xarray.Dataset`` with GOTM names), the plain constructor (tensors, e.g. analytic forcing),
:meth:`constant` (time-invariant) and :meth:`stack` (one forcing per column). Bad forcing raises
:class:`~pelagos.core.errors.ForcingError` naming the variable and the fix.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ForcingError

__all__ = ["FORCING_VARIABLES", "ColumnForcing", "compact_forcing_path"]

# name -> (GOTM file name(s), vertical position, canonical units, accepted unit spellings, description)
FORCING_VARIABLES: dict[str, tuple[tuple[str, ...], str | None, str, frozenset[str], str]] = {
    "h": (("h",), "z", "m", frozenset({"m", "meter", "metre", "meters", "metres"}), "layer thickness"),
    "temp": (
        ("temp",),
        "z",
        "degC",
        frozenset({"celsius", "degc", "deg_c", "degree_celsius", "degrees_celsius", "c", "deg c", "°c"}),
        "temperature",
    ),
    "salt": (
        ("salt", "salt_p"),
        "z",
        "PSU",
        frozenset({"psu", "1", "", "pss-78", "0.001", "1e-3", "g/kg", "g kg-1", "g kg^-1"}),
        "salinity (GOTM's Absolute Salinity salt, else practical salinity salt_p)",
    ),
    "nuh": (
        ("nuh",),
        "zi",
        "m2 s-1",
        frozenset({"m2/s", "m2 s-1", "m^2/s", "m**2/s", "m^2 s^-1", "m2s-1", "m2 s^-1"}),
        "turbulent diffusivity of heat on interfaces",
    ),
    "I_0": (
        ("I_0",),
        None,
        "W m-2",
        frozenset({"w/m2", "w m-2", "w/m^2", "w m^-2", "w m**-2", "wm-2"}),
        "net shortwave radiation entering the water (after albedo)",
    ),
    "bottom_stress": (
        ("taub",),
        None,
        "Pa",
        frozenset({"pa", "n/m2", "n m-2", "n/m^2"}),
        "bottom stress",
    ),
}
_PROFILE_VARS = ("h", "temp", "salt", "nuh")
_REQUIRED = ("h", "temp", "salt", "nuh", "I_0")


def compact_forcing_path(name: str = "nns_annual_22x5m") -> Path:
    """Path of a compact forcing shipped with pelagos (see ``scripts/make_compact_forcing.py``)."""
    p = Path(__file__).resolve().parent.parent / "data" / f"{name}.nc"
    if not p.exists():
        raise ForcingError(
            f"compact forcing {name!r} not found at {p}; reinstall pelagos or run "
            "scripts/make_compact_forcing.py"
        )
    return p


def _norm_units(u: str) -> str:
    return re.sub(r"\s+", " ", str(u).strip().lower())


def _parse_epoch(units: str | None) -> _dt.datetime | None:
    """``'seconds since 1998-01-01 00:00:00'`` -> datetime (None if not in that form)."""
    if not units:
        return None
    m = re.match(
        r"\s*seconds\s+since\s+(\d{4}-\d{1,2}-\d{1,2})(?:[ T](\d{1,2}:\d{2}(?::\d{2}(?:\.\d*)?)?))?", units
    )
    if not m:
        return None
    date = m.group(1)
    clock = m.group(2) or "00:00:00"
    if clock.count(":") == 1:
        clock += ":00"
    try:
        return _dt.datetime.fromisoformat(f"{date} {clock.split('.')[0]}")
    except ValueError:
        return None


class ColumnForcing:
    """Time series of physical fields driving a batch of water columns (see module docstring).

    Args:
        time: record times (s), strictly increasing, shape ``(T,)``.
        h, temp, salt: ``(T, nz)`` (shared by all columns) or ``(Bf, T, nz)``; index 0 = bottom.
        nuh: ``(T, nz+1)`` or ``(Bf, T, nz+1)``, interface 0 = bottom; must be ``>= 0``.
        I_0: ``(T,)`` or ``(Bf, T)``, W m-2, ``>= 0``.
        bottom_stress: optional ``float`` (constant, Pa), ``(T,)`` or ``(Bf, T)``.
        epoch: calendar date of ``t = 0`` (for ``number_of_days_since_start_of_the_year``); ``None`` means
            t = 0 is 1 January 00:00.
        latitude, longitude: optional, degrees (scalars or ``(Bf,)``).
        dtype, device: where the tensors live (default: float64 for numpy input, else the input's dtype).
        name: a label used in error messages (e.g. the file name).

    Gradients flow from the returned environment to the tensors given here (the interpolation is linear).
    """

    def __init__(
        self,
        time: Any,
        h: Any,
        temp: Any,
        salt: Any,
        nuh: Any,
        I_0: Any,
        *,
        bottom_stress: Any = None,
        epoch: _dt.datetime | None = None,
        latitude: Any = None,
        longitude: Any = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        name: str = "forcing",
    ) -> None:
        self.name = name
        self.salinity_source = "salt_p"  # GOTM name of the salinity (from_dataset sets the one it read)
        t = np.asarray(time.detach().cpu() if torch.is_tensor(time) else time, dtype=np.float64).reshape(-1)
        if t.size < 1:
            raise ForcingError(f"{name}: 'time' is empty; give at least one record (two to interpolate)")
        if not np.all(np.isfinite(t)):
            raise ForcingError(f"{name}: 'time' contains NaN/Inf; fix the time axis of the forcing")
        if t.size > 1 and not np.all(np.diff(t) > 0):
            i = int(np.argmax(~(np.diff(t) > 0)))
            raise ForcingError(
                f"{name}: 'time' must be strictly increasing; time[{i}]={t[i]:g} s >= "
                f"time[{i + 1}]={t[i + 1]:g} s. "
                "Sort the records and drop duplicates."
            )
        self.time = t
        self._tlist = t.tolist()
        if dtype is None:
            dtype = next((x.dtype for x in (h, temp, salt, nuh, I_0) if torch.is_tensor(x)), torch.float64)
        self.dtype, self.device = dtype, torch.device(device) if device is not None else None

        fields: dict[str, torch.Tensor] = {}
        for key, val in (("h", h), ("temp", temp), ("salt", salt), ("nuh", nuh)):
            fields[key] = self._as_series(key, val, profile=True)
        fields["I_0"] = self._as_series("I_0", I_0, profile=False)
        if bottom_stress is not None:
            if isinstance(bottom_stress, (int, float)):
                bottom_stress = torch.full((t.size,), float(bottom_stress), dtype=dtype)
            fields["bottom_stress"] = self._as_series("bottom_stress", bottom_stress, profile=False)
        self.fields = fields
        self._validate()
        self.epoch = epoch
        self.latitude = (
            None
            if latitude is None
            else torch.as_tensor(np.array(latitude, dtype=np.float64), dtype=dtype).reshape(-1)
        )
        self.longitude = (
            None
            if longitude is None
            else torch.as_tensor(np.array(longitude, dtype=np.float64), dtype=dtype).reshape(-1)
        )

    # -- construction helpers -----------------------------------------------------------------------------
    def _as_series(self, key: str, val: Any, *, profile: bool) -> torch.Tensor:
        what = FORCING_VARIABLES[key][4]
        if val is None:
            raise ForcingError(f"{self.name}: missing forcing variable {key!r} ({what}); give it")
        x = val if torch.is_tensor(val) else torch.as_tensor(np.array(val, dtype=np.float64))
        x = x.to(dtype=self.dtype, device=self.device) if x.is_floating_point() else x.to(self.dtype)
        T = self.time.size
        want = "(T, nz) or (Bf, T, nz)" if profile else "(T,) or (Bf, T)"
        if key == "nuh":
            want = "(T, nz+1) or (Bf, T, nz+1)"
        nd = 2 if profile else 1
        if x.ndim == nd:
            x = x.unsqueeze(0)
        if x.ndim != nd + 1 or x.shape[1] != T:
            raise ForcingError(
                f"{self.name}: {key!r} ({what}) has shape {tuple(x.shape)}; expected {want} with T={T} "
                "records "
                f"matching 'time'. Transpose to (time, level) with index 0 = bottom."
            )
        return x

    def _validate(self) -> None:
        f, n = self.fields, self.name
        nz = f["h"].shape[-1]
        for key in ("temp", "salt"):
            if f[key].shape[-1] != nz:
                raise ForcingError(
                    f"{n}: {key!r} has {f[key].shape[-1]} levels but 'h' has {nz}; both live at layer "
                    "centres "
                    "(index 0 = bottom)"
                )
        if f["nuh"].shape[-1] != nz + 1:
            raise ForcingError(
                f"{n}: 'nuh' has {f['nuh'].shape[-1]} levels; expected nz+1 = {nz + 1} interfaces "
                "(interface 0 = bottom, nz = surface). Diffusivity at layer centres is not accepted: give "
                "it on "
                "interfaces as GOTM writes it"
            )
        bs = {x.shape[0] for x in f.values()}
        if len(bs - {1}) > 1:
            raise ForcingError(
                f"{n}: forcing variables have different column counts {sorted(bs)}; each must be 1 (shared) "
                "or "
                "the same number of columns"
            )
        for key, x in f.items():
            with torch.no_grad():
                bad = ~torch.isfinite(x)
                if bool(bad.any()):
                    idx = tuple(torch.nonzero(bad)[0].tolist())
                    raise ForcingError(
                        f"{n}: {key!r} ({FORCING_VARIABLES[key][4]}) contains NaN/Inf (first at (column, "
                        "record, "
                        f"level) {idx}, time {self.time[idx[1]]:g} s). Fill the gap (e.g. interpolate in "
                        "time) or "
                        "cut the forcing to a clean window"
                    )
        with torch.no_grad():
            if bool((f["h"] <= 0).any()):
                raise ForcingError(
                    f"{n}: 'h' (layer thickness) must be > 0 m; minimum {float(f['h'].min()):g}. "
                    "Check the variable and its units (m)"
                )
            if bool((f["nuh"] < 0).any()):
                idx = tuple(torch.nonzero(f["nuh"] < 0)[0].tolist())
                raise ForcingError(
                    f"{n}: 'nuh' (turbulent diffusivity) must be >= 0 m2 s-1; minimum "
                    f"{float(f['nuh'].min()):g} "
                    f"at (column, record, interface) {idx}. Clip small negative values from the turbulence "
                    "model to 0 (torch.clamp(nuh, min=0)) or check the variable"
                )
            if bool((f["I_0"] < 0).any()):
                raise ForcingError(
                    f"{n}: 'I_0' (net shortwave, W m-2) must be >= 0; minimum {float(f['I_0'].min()):g}. "
                    "Clip night-time negatives to 0 or check the sign convention (positive into the water)"
                )

    # -- alternative constructors -------------------------------------------------------------------------
    @classmethod
    def from_gotm(
        cls,
        path: str | os.PathLike,
        *,
        bottom_stress: float | Any = None,
        start: float | None = None,
        stop: float | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> ColumnForcing:
        """Read a GOTM output NetCDF (GOTM's names: ``h``, ``temp``, ``salt`` (or ``salt_p``), ``nuh``,
        ``I_0``, optional ``taub``; dims ``(time, z|zi, lat, lon)``; index 0 = bottom). Salinity: ``salt``
        (Absolute Salinity, what GOTM hands FABM) when present, else ``salt_p`` (module docstring).

        ``start``/``stop`` (s, file clock) keep only the records needed for that window (+1 either side).
        ``lat``/``lon`` of length > 1 become separate columns. ``bottom_stress`` (Pa, constant or series)
        is used when the file has no ``taub``; ignored (with the file's value used) otherwise.
        """
        p = Path(path)
        if not p.exists():
            raise ForcingError(f"GOTM forcing file {str(p)!r} does not exist; check the path")
        import xarray as xr

        try:
            ds = xr.open_dataset(p, decode_times=False)
        except Exception as e:  # pragma: no cover - depends on the file
            raise ForcingError(f"cannot open GOTM forcing file {str(p)!r} as NetCDF: {e}") from e
        with ds:
            return cls.from_dataset(
                ds,
                bottom_stress=bottom_stress,
                start=start,
                stop=stop,
                dtype=dtype,
                device=device,
                name=p.name,
            )

    @classmethod
    def from_dataset(
        cls,
        ds: Any,
        *,
        bottom_stress: float | Any = None,
        start: float | None = None,
        stop: float | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        name: str = "dataset",
    ) -> ColumnForcing:
        """Build from an ``xarray.Dataset`` with GOTM variable names and dims (see :meth:`from_gotm`)."""
        if "time" not in ds.variables:
            raise ForcingError(f"{name}: no 'time' variable; GOTM output has time in seconds since a date")
        time = np.asarray(ds["time"].values)
        if np.issubdtype(time.dtype, np.datetime64):
            epoch = _dt.datetime.fromisoformat(str(np.datetime_as_string(time[0], unit="s")))
            time = (time - time[0]).astype("timedelta64[ns]").astype(np.float64) / 1e9
        else:
            tunits = ds["time"].attrs.get("units", "")
            if tunits and not str(tunits).strip().lower().startswith("seconds"):
                raise ForcingError(
                    f"{name}: 'time' has units {tunits!r}; expected 'seconds since <date>' (GOTM's "
                    "convention). "
                    "Convert the time axis to seconds"
                )
            epoch = _parse_epoch(tunits)
            time = time.astype(np.float64)
        sel = slice(None)
        if start is not None or stop is not None:
            i0 = 0 if start is None else max(int(np.searchsorted(time, start, side="right")) - 1, 0)
            i1 = (
                time.size
                if stop is None
                else min(int(np.searchsorted(time, stop, side="left")) + 1, time.size)
            )
            sel = slice(i0, i1)
        time = time[sel]

        def grab(key: str, required: bool) -> np.ndarray | None:
            names, vert, canon, accepted, what = FORCING_VARIABLES[key]
            var = next((ds[nm] for nm in names if nm in ds.variables), None)
            if var is None:
                if not required:
                    return None
                raise ForcingError(
                    f"{name}: missing variable {names[0]!r} ({what}, {canon}). Add it to GOTM's "
                    "output.yaml, or "
                    f"build the forcing from tensors: ColumnForcing(time, h, temp, salt, nuh, I_0)"
                )
            units = var.attrs.get("units")
            if units is not None and _norm_units(units) not in accepted:
                raise ForcingError(
                    f"{name}: {var.name!r} ({what}) has units {units!r}; expected {canon}. Convert the "
                    "values "
                    f"and set the units attribute to {canon!r}"
                )
            if "time" not in var.dims:
                raise ForcingError(f"{name}: {var.name!r} has no 'time' dimension (dims {var.dims})")
            others = [d for d in var.dims if d not in ("time",) and (vert is None or d != vert)]
            if vert is not None:
                vdim = next((d for d in var.dims if d == vert), None)
                if vdim is None:
                    cand = [d for d in var.dims if d not in ("time", "lat", "lon")]
                    if len(cand) != 1:
                        raise ForcingError(
                            f"{name}: {var.name!r} has dims {var.dims}; expected (time, {vert}[, lat, lon])"
                        )
                    vdim = cand[0]
                    others = [d for d in others if d != vdim]
                arr = var.isel(time=sel).transpose(*others, "time", vdim).values
                arr = arr.reshape(-1, arr.shape[-2], arr.shape[-1])
            else:
                arr = var.isel(time=sel).transpose(*others, "time").values
                arr = arr.reshape(-1, arr.shape[-1])
            return np.asarray(arr, dtype=np.float64)

        arrs = {k: grab(k, k in _REQUIRED) for k in FORCING_VARIABLES}
        salinity_source = next(nm for nm in FORCING_VARIABLES["salt"][0] if nm in ds.variables)
        if arrs["bottom_stress"] is None and bottom_stress is not None:
            arrs["bottom_stress"] = bottom_stress
        lat = ds["lat"].values.reshape(-1) if "lat" in ds.variables else None
        lon = ds["lon"].values.reshape(-1) if "lon" in ds.variables else None
        if lat is not None and lon is not None and lat.size * lon.size > 1:
            lat, lon = (np.repeat(lat, lon.size), np.tile(lon, lat.size))
        out = cls(
            time,
            arrs["h"],
            arrs["temp"],
            arrs["salt"],
            arrs["nuh"],
            arrs["I_0"],
            bottom_stress=arrs["bottom_stress"],
            epoch=epoch,
            latitude=lat,
            longitude=lon,
            dtype=dtype,
            device=device,
            name=name,
        )
        out.salinity_source = salinity_source
        return out

    @classmethod
    def constant(
        cls,
        h: Any,
        temp: Any,
        salt: Any,
        nuh: Any,
        I_0: float | Any,
        *,
        duration: float = 1e12,
        **kw: Any,
    ) -> ColumnForcing:
        """Time-invariant forcing from profiles ((nz,)/(nz+1,) or (Bf, nz)...), ``duration`` s long."""

        def two(x: Any, profile: bool) -> torch.Tensor:
            x = torch.as_tensor(
                x, dtype=kw.get("dtype") or (x.dtype if torch.is_tensor(x) else torch.float64)
            )
            if profile:
                return torch.stack([x, x], dim=-2)  # (..., 2, n)
            return torch.stack([x, x], dim=-1)

        return cls(
            [0.0, float(duration)],
            two(h, True),
            two(temp, True),
            two(salt, True),
            two(nuh, True),
            two(I_0, False),
            **kw,
        )

    @classmethod
    def stack(cls, forcings: Sequence[ColumnForcing]) -> ColumnForcing:
        """One forcing per column: concatenate along the column dim (same times and number of layers)."""
        if not forcings:
            raise ForcingError("ColumnForcing.stack: give at least one forcing")
        f0 = forcings[0]
        for i, f in enumerate(forcings[1:], start=1):
            if f.time.shape != f0.time.shape or not np.allclose(f.time, f0.time, rtol=0, atol=1e-6):
                raise ForcingError(
                    f"ColumnForcing.stack: forcing {i} ({f.name}) has a different time axis than forcing 0; "
                    "resample them to common times first"
                )
            if f.nz != f0.nz:
                raise ForcingError(
                    f"ColumnForcing.stack: forcing {i} has nz={f.nz}, forcing 0 has nz={f0.nz}"
                )
        has_tb = all("bottom_stress" in f.fields for f in forcings)
        out = {
            k: torch.cat([f.fields[k] for f in forcings], dim=0) for k in f0.fields if k != "bottom_stress"
        }
        tb = torch.cat([f.fields["bottom_stress"] for f in forcings], dim=0) if has_tb else None

        def cat_opt(attr: str) -> torch.Tensor | None:
            vals = [getattr(f, attr) for f in forcings]
            if any(v is None for v in vals):
                return None
            return torch.cat([v.expand(f.n_columns) for v, f in zip(vals, forcings)])

        return cls(
            f0.time,
            out["h"],
            out["temp"],
            out["salt"],
            out["nuh"],
            out["I_0"],
            bottom_stress=tb,
            epoch=f0.epoch,
            latitude=cat_opt("latitude"),
            longitude=cat_opt("longitude"),
            dtype=f0.dtype,
            name="stacked",
        )._with_salinity_source(f0.salinity_source)

    def _with_salinity_source(self, source: str) -> ColumnForcing:
        self.salinity_source = source
        return self

    # -- properties -----------------------------------------------------------------------------------------
    @property
    def nz(self) -> int:
        return int(self.fields["h"].shape[-1])

    @property
    def n_columns(self) -> int:
        """Number of forcing columns ``Bf`` (1 = shared by every model column)."""
        return max(int(x.shape[0]) for x in self.fields.values())

    @property
    def t_start(self) -> float:
        return float(self.time[0])

    @property
    def t_stop(self) -> float:
        return float(self.time[-1])

    @property
    def has_bottom_stress(self) -> bool:
        return "bottom_stress" in self.fields

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> ColumnForcing:
        """A copy with tensors cast/moved (gradients flow through the cast)."""
        new = object.__new__(ColumnForcing)
        new.__dict__.update(self.__dict__)
        new.dtype = dtype or self.dtype
        new.device = torch.device(device) if device is not None else self.device
        new.fields = {k: v.to(dtype=new.dtype, device=new.device) for k, v in self.fields.items()}
        return new

    def __repr__(self) -> str:
        return (
            f"ColumnForcing({self.name!r}, records={self.time.size}, t=[{self.t_start:g}, {self.t_stop:g}] "
            "s, "
            f"nz={self.nz}, columns={self.n_columns}, dtype={self.dtype}, epoch={self.epoch})"
        )

    # -- sampling -------------------------------------------------------------------------------------------
    def check_covers(self, t0: float, t1: float, *, tol: float = 1e-6) -> None:
        """Raise ForcingError unless the records cover model times ``[t0, t1]`` (s)."""
        if t0 < self.t_start - tol or t1 > self.t_stop + tol:
            raise ForcingError(
                f"{self.name}: forcing covers t = [{self.t_start:g}, {self.t_stop:g}] s"
                f"{self._dates(self.t_start, self.t_stop)} but the run needs [{t0:g}, {t1:g}] s"
                f"{self._dates(t0, t1)}. Shorten the run (start/stop) or give forcing that covers it"
            )

    def _dates(self, a: float, b: float) -> str:
        if self.epoch is None:
            return ""
        da = self.epoch + _dt.timedelta(seconds=a)
        db = self.epoch + _dt.timedelta(seconds=b)
        return f" ({da:%Y-%m-%d %H:%M} to {db:%Y-%m-%d %H:%M})"

    def _weights(self, t: float) -> tuple[int, float]:
        """Record index i and weight w so that x(t) = (1-w) x[i] + w x[i+1] (w = 0: exactly record i)."""
        if t < self.t_start - 1e-6 or t > self.t_stop + 1e-6:
            self.check_covers(t, t)
        T = self.time.size
        i = bisect.bisect_right(self._tlist, t) - 1
        i = min(max(i, 0), T - 1)
        if i == T - 1 or t == self._tlist[i]:
            return i, 0.0
        w = (t - self._tlist[i]) / (self._tlist[i + 1] - self._tlist[i])
        return i, min(max(w, 0.0), 1.0)

    def sample(self, t: float | torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Fields at model time ``t`` (s): ``{name: (Bf, nz) | (Bf, nz+1) | (Bf,)}``, linear in time."""
        t = float(t)
        i, w = self._weights(t)
        out = {}
        for k in names if names is not None else self.fields:
            x = self.fields[k]
            out[k] = x[:, i] if w == 0.0 else torch.lerp(x[:, i], x[:, i + 1], w)
        return out

    def sample_many(self, times: Sequence[float], names: Sequence[str]) -> dict[str, torch.Tensor]:
        """:meth:`sample` at several model times (s) in one call: ``{name: (len(times), Bf, ...)}``, entry
        ``j`` equal to ``sample(times[j])[name]`` (the same interpolation as one gather and one lerp)."""
        iw = [self._weights(float(t)) for t in times]
        idx = torch.tensor([i for i, _ in iw], dtype=torch.long)
        out = {}
        if all(w == 0.0 for _, w in iw):
            for k in names:
                x = self.fields[k]
                out[k] = x.index_select(1, idx.to(x.device)).movedim(1, 0).contiguous()
            return out
        T = self.time.size
        nxt = torch.tensor([min(i + 1, T - 1) for i, _ in iw], dtype=torch.long)
        for k in names:
            x = self.fields[k]
            w = torch.tensor([w for _, w in iw], dtype=x.dtype, device=x.device)
            a = x.index_select(1, idx.to(x.device)).movedim(1, 0)
            b = x.index_select(1, nxt.to(x.device)).movedim(1, 0)
            out[k] = torch.lerp(a, b, w.reshape(-1, *([1] * (a.ndim - 1)))).contiguous()
        return out

    def day_of_year(self, t: float) -> float:
        """GOTM's decimal year day (days since 1 January 00:00 of the current year; 0.5 = noon on 1 Jan)."""
        if self.epoch is None:
            return (float(t) / 86400.0) % 365.0
        now = self.epoch + _dt.timedelta(seconds=float(t))
        jan1 = _dt.datetime(now.year, 1, 1)
        return (now - jan1).total_seconds() / 86400.0

    def seconds(self, when: float | str | _dt.datetime) -> float:
        """Model time (s) of ``when``: seconds as given, or an ISO date / datetime (needs the epoch)."""
        if isinstance(when, (int, float)):
            return float(when)
        if isinstance(when, str):
            try:
                when = _dt.datetime.fromisoformat(when)
            except ValueError as e:
                raise ForcingError(
                    f"cannot parse date {when!r}; use ISO format 'YYYY-MM-DD[ HH:MM:SS]'"
                ) from e
        if self.epoch is None:
            raise ForcingError(
                f"{self.name}: a calendar date ({when}) was given but the forcing has no epoch; give times "
                "in "
                "seconds or build the forcing with epoch=datetime(...)"
            )
        return (when - self.epoch).total_seconds()

    # -- conversion -----------------------------------------------------------------------------------------
    def to_dataset(self) -> Any:
        """An ``xarray.Dataset`` in GOTM layout (time, z|zi, lat, lon); inverse of :meth:`from_dataset`."""
        import xarray as xr

        f = {k: v.detach().cpu().numpy() for k, v in self.fields.items()}
        B = self.n_columns
        h = np.broadcast_to(f["h"], (B, *f["h"].shape[1:]))
        zi = np.concatenate([np.zeros_like(h[..., :1]), np.cumsum(h, axis=-1)], axis=-1)
        zi = zi - zi[..., -1:]
        z = 0.5 * (zi[..., 1:] + zi[..., :-1])

        def prof(a: np.ndarray) -> np.ndarray:  # (B, T, n) -> (T, n, 1, B)
            a = np.broadcast_to(a, (B, *a.shape[1:]))
            return np.transpose(a, (1, 2, 0))[:, :, None, :]

        def ser(a: np.ndarray) -> np.ndarray:  # (B, T) -> (T, 1, B)
            a = np.broadcast_to(a, (B, a.shape[-1]))
            return np.transpose(a, (1, 0))[:, None, :]

        units = (
            f"seconds since {self.epoch:%Y-%m-%d %H:%M:%S}"
            if self.epoch
            else "seconds since 0001-01-01 00:00:00"
        )
        data = {
            "h": (("time", "z", "lat", "lon"), prof(f["h"]), {"units": "m", "long_name": "layer thickness"}),
            "temp": (
                ("time", "z", "lat", "lon"),
                prof(f["temp"]),
                {"units": "Celsius", "long_name": "temperature"},
            ),
            self.salinity_source: (
                ("time", "z", "lat", "lon"),
                prof(f["salt"]),
                {"units": "g/kg", "long_name": "absolute salinity"}
                if self.salinity_source == "salt"
                else {"units": "PSU", "long_name": "practical salinity"},
            ),
            "nuh": (
                ("time", "zi", "lat", "lon"),
                prof(f["nuh"]),
                {"units": "m2/s", "long_name": "turbulent diffusivity of heat"},
            ),
            "I_0": (("time", "lat", "lon"), ser(f["I_0"]), {"units": "W/m2", "long_name": "net shortwave"}),
        }
        if "bottom_stress" in f:
            data["taub"] = (("time", "lat", "lon"), ser(f["bottom_stress"]), {"units": "Pa"})
        lat = np.zeros(1) if self.latitude is None else self.latitude.cpu().numpy()[:1]
        lon = np.arange(B, dtype=np.float64) if self.longitude is None else self.longitude.cpu().numpy()
        coords = {
            "time": ("time", self.time, {"units": units, "long_name": "time"}),
            "lat": ("lat", lat),
            "lon": ("lon", np.broadcast_to(lon, (B,)).copy()),
            "z": (("time", "z", "lat", "lon"), prof(z), {"units": "m", "positive": "up"}),
            "zi": (("time", "zi", "lat", "lon"), prof(zi), {"units": "m", "positive": "up"}),
        }
        return xr.Dataset(data, coords=coords)
