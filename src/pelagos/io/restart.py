"""Restart files: the exact model state at a step, so an interrupted run continues to a bit-identical result.

Written atomically (temporary file + rename), so a crash while writing leaves the previous restart intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch

from ..core.errors import ConfigError


def config_fingerprint(config: Any) -> str:
    """Stable hash of a (JSON-serialisable) configuration, to refuse restarts from another setup."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_restart(
    path: str | os.PathLike,
    *,
    step: int,
    time: float,
    state: Any,
    record: int,
    fingerprint: str,
    extra: dict | None = None,
) -> None:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    payload = {
        "step": int(step),
        "time": float(time),
        "state": state,
        "record": int(record),
        "fingerprint": fingerprint,
        "extra": extra or {},
    }
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_restart(path: str | os.PathLike, fingerprint: str | None = None) -> dict:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"restart file {path} not found")
    payload = torch.load(path, weights_only=False)
    if fingerprint is not None and payload.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"restart file {path} was written by a different configuration (fingerprint "
            f"{payload.get('fingerprint')} != {fingerprint}); delete it or restore the original configuration"
        )
    return payload
