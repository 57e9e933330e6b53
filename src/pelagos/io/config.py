"""Run configuration (YAML) for the water column: schema, defaults, validation, path resolution.

A configuration names the physics forcing, the biogeochemistry (a fabm.yaml or inline instances), the time
window and step, numerics options, parameter overrides, output and restart files. Unknown keys are rejected
with the list of valid ones. ``builtin:NAME`` refers to a file shipped in ``pelagos/data`` (so examples
run with only the repository); other relative paths are relative to the configuration file.

Example (``examples/nns_annual_npzd.yaml``)::

    forcing: {file: builtin:nns_annual_22x5m.nc}
    bgc: {fabm_yaml: builtin:fabm/fabm-gotm-npzd.yaml}
    time: {start: "1998-01-01 00:00:00", stop: "1999-01-01 00:00:00", dt: 3600}
    numerics: {ode_method: euler, sinking_method: P2_PDM, cnpar: 1.0, light: I, dtype: float64}
    output: {file: results/nns_annual_npzd.nc, interval: 86400}
    restart: {file: results/nns_annual_npzd.restart.pt, every: 2592000}
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import ConfigError
from ..core.paths import DATA_DIR, resolve_path  # noqa: F401  (re-exported)

SCHEMA: dict[str, dict[str, Any]] = {
    "title": {},
    "forcing": {"file": None, "bottom_stress": None},
    "bgc": {"fabm_yaml": None, "instances": None, "drop": [], "drop_unsupported": False},
    "time": {"start": None, "stop": None, "dt": 3600.0},
    "numerics": {
        "ode_method": "euler",
        "sinking_method": "P2_PDM",
        "cnpar": 1.0,
        "light": "I",
        "nuh_lag": True,
        "repair": False,
        "split_factor": 1,
        "dtype": "float64",
        "columns": 1,
    },
    "parameters": {},
    "initial": {},
    "output": {"file": None, "interval": None, "progress": True, "precision": "float32"},
    "restart": {"file": None, "every": None},
}
_FREE_MAPPINGS = ("parameters", "initial")  # user keys, validated later against the model


def read_yaml_mapping(source: str | os.PathLike | Mapping[str, Any], what: str) -> tuple[dict, Path | None]:
    """A YAML file (or an already parsed mapping, deep-copied) as a dict, and the file's folder (or None).

    ``what`` names the kind of file in error messages ("a run configuration", ...).
    """
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), None
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"configuration file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: {what} must be a YAML mapping at the top level")
    return dict(raw), path.resolve().parent


def load_config(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read (if a path), validate and complete a run configuration; adds ``_base`` (the file's folder)."""
    raw, base = read_yaml_mapping(source, "a run configuration")
    if "_base" in raw:  # an already loaded configuration
        given_base = raw.pop("_base")
        base = Path(given_base) if given_base else base
    cfg: dict[str, Any] = {}
    for key in raw:
        if key not in SCHEMA:
            raise ConfigError(f"unknown configuration section {key!r}; valid sections: {', '.join(SCHEMA)}")
    for section, defaults in SCHEMA.items():
        given = raw.get(section)
        if section == "title":
            cfg["title"] = str(given or "")
            continue
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"section {section!r} must be a mapping; got {given!r}")
        if section in _FREE_MAPPINGS:
            cfg[section] = dict(given)
            continue
        for key in given:
            if key not in defaults:
                raise ConfigError(f"unknown key {section}.{key}; valid keys: {', '.join(defaults)}")
        cfg[section] = {**copy.deepcopy(defaults), **given}
    if not cfg["forcing"]["file"]:
        raise ConfigError("forcing.file is required (a GOTM output NetCDF, or builtin:nns_annual_22x5m.nc)")
    if not cfg["bgc"]["fabm_yaml"] and not cfg["bgc"]["instances"]:
        raise ConfigError(
            "bgc needs fabm_yaml (a path) or instances (an inline fabm.yaml 'instances' mapping)"
        )
    dt = cfg["time"]["dt"]
    if not isinstance(dt, (int, float)) or not dt > 0:
        raise ConfigError(f"time.dt must be a positive number of seconds; got {dt!r}")
    if cfg["numerics"]["dtype"] not in ("float32", "float64"):
        raise ConfigError(f"numerics.dtype must be float32 or float64; got {cfg['numerics']['dtype']!r}")
    if cfg["output"]["precision"] not in ("float32", "float64"):
        raise ConfigError(f"output.precision must be float32 or float64; got {cfg['output']['precision']!r}")
    cols = cfg["numerics"]["columns"]
    if not isinstance(cols, int) or cols < 1:
        raise ConfigError(f"numerics.columns must be a positive integer; got {cols!r}")
    for sec, key in (("output", "interval"), ("restart", "every")):
        v = cfg[sec][key]
        if v is not None and (not isinstance(v, (int, float)) or v <= 0):
            raise ConfigError(f"{sec}.{key} must be a positive number of seconds; got {v!r}")
    cfg["_base"] = str(base) if base is not None else None
    return cfg
