"""Incremental CF-style NetCDF output: one record per output time, flushed to disk as it is written.

A long run that fails keeps every record already written. On restart the writer reopens the file and continues
at a given record index, overwriting any records written after the restart point, so the final file
equals that of an uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import netCDF4
import numpy as np
import torch

from ..core.errors import ConfigError


@dataclass
class VariableMeta:
    """Metadata of one output variable; ``dims`` excludes the record (time) dimension."""

    dims: tuple[str, ...]
    units: str = ""
    long_name: str = ""
    attrs: dict = field(default_factory=dict)


class NetCDFWriter:
    """Append records of named tensors to a NetCDF file.

    Parameters
    ----------
    path: output file.
    dims: sizes of the non-record dimensions, e.g. ``{"column": 4, "z": 22, "zi": 23}``.
    coords: coordinate variables written once: ``{name: (dims, values, units, long_name)}``.
    variables: ``{name: VariableMeta}``.
    time_units: CF units of the record coordinate, e.g. ``"seconds since 1998-01-01 00:00:00"``.
    start_record: ``None`` creates a new file; an int reopens an existing file to continue at that record.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        dims: Mapping[str, int],
        coords: Mapping[str, tuple],
        variables: Mapping[str, VariableMeta],
        *,
        time_units: str = "seconds since 1970-01-01 00:00:00",
        attrs: Mapping[str, str] | None = None,
        start_record: int | None = None,
        dtype: str = "f4",
    ) -> None:
        self.path = os.fspath(path)
        self.variables = dict(variables)
        if start_record is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self.ds = netCDF4.Dataset(self.path, "w")
            self.ds.createDimension("time", None)
            for d, n in dims.items():
                self.ds.createDimension(d, n)
            t = self.ds.createVariable("time", "f8", ("time",))
            t.units = time_units
            t.standard_name = "time"
            for name, (cdims, values, units, long_name) in coords.items():
                v = self.ds.createVariable(name, "f8", tuple(cdims))
                v[:] = np.asarray(values, dtype=np.float64)
                v.units, v.long_name = units, long_name
            for name, meta in self.variables.items():
                v = self.ds.createVariable(name, dtype, ("time", *meta.dims), zlib=True, complevel=1)
                v.units, v.long_name = meta.units, meta.long_name or name
                for k, val in meta.attrs.items():
                    v.setncattr(k, val)
            for k, val in (attrs or {"Conventions": "CF-1.8"}).items():
                self.ds.setncattr(k, val)
            self.record = 0
        else:
            if not os.path.exists(self.path):
                raise ConfigError(
                    f"cannot continue output: {self.path} does not exist; start a new run instead"
                )
            self.ds = netCDF4.Dataset(self.path, "a")
            missing = [n for n in self.variables if n not in self.ds.variables]
            if missing:
                raise ConfigError(
                    f"{self.path} lacks variables {missing}; it was written by another configuration"
                )
            self.record = int(start_record)
        self.ds.sync()

    def write(self, time: float, values: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Write one record at ``time`` and flush it to disk."""
        i = self.record
        self.ds.variables["time"][i] = float(time)
        for name in self.variables:
            if name not in values:
                raise ConfigError(f"output record lacks variable {name!r}")
            x = values[name]
            if torch.is_tensor(x):
                x = x.detach().cpu().numpy()
            self.ds.variables[name][i, ...] = x
        self.record += 1
        self.ds.sync()

    def close(self) -> None:
        if self.ds.isopen():
            # Drop records beyond the last one written (left over from an interrupted run) by truncating time.
            self.ds.close()

    def __enter__(self) -> NetCDFWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
