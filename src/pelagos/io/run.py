"""``run_config``: run a configuration from Python (what ``pelagos run CONFIG.yaml`` does).

A thin wrapper of :func:`pelagos.io.build.run`: the one loader (:mod:`pelagos.io.config`) reads the
configuration, the model kind builds the model, :class:`~pelagos.core.simulation.Simulation` runs it with a
:class:`~pelagos.io.netcdf_writer.ModelNetCDFWriter`: records reach the disk in small batches (and before
every restart); a restart file (written atomically every ``restart.every`` seconds of model time, at output
times, at the end and on Ctrl-C) lets an interrupted run continue bit for bit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import load_config, resolve_path  # noqa: F401  (re-exported)

__all__ = ["build_model", "open_output", "run_config"]


def build_model(source: str | os.PathLike | Mapping[str, Any]):
    """The model a configuration (file, mapping or loaded :class:`~pelagos.io.config.Config`) describes."""
    from .build import build_model as build
    from .config import Config

    return build(source if isinstance(source, Config) else load_config(source))


def run_config(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    resume: bool = True,
    progress: bool | None = None,
    stop_after: float | None = None,
    log: Any = None,
    overrides: list[str] | None = None,
) -> Path:
    """Run the configuration; returns the output NetCDF path.

    ``resume``: continue from the restart file when it exists and matches the configuration (else a
    ``ConfigError`` naming ``--fresh``). ``progress``: ``None``: a bar on a terminal. ``stop_after``: stop
    cleanly (restart written) once this much model time has run (for tests).
    """
    from .build import run

    return run(
        source, overrides=overrides, fresh=not resume, progress=progress, stop_after=stop_after, log=log
    )[0]


def open_output(path: str | os.PathLike):
    """Open a pelagos output file as an ``xarray.Dataset`` (time decoded)."""
    import xarray as xr

    with contextlib.suppress(Exception):
        return xr.open_dataset(path)
    return xr.open_dataset(path, decode_times=False)
