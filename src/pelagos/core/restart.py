"""Restart files: the exact state at a step, so an interrupted run continues to a bit-identical result.

Format (one file, written with ``torch.save`` and read back with ``torch.load(..., weights_only=True)``, so
loading a restart never executes code): a dict of plain values

    format: "pelagos-restart", version: 1,
    step: int, t: float (model time, same units as the model's dt),
    fingerprint: str | None (hash of the configuration that wrote it),
    records: {writer key: number of records written}, structure: str (the state's pytree structure, a check),
    leaves: [tensor, ...] (the state's leaves, in ``torch.utils._pytree`` order), extra: plain metadata.

Only the leaves are stored: the state's structure (dict keys, dataclass type) comes back from a *template*,
the state the model's ``initial_state`` gives for the same configuration, so no Python class is ever
unpickled.
A file holding anything else (a crafted pickle, a file from another program) is refused with a
:class:`~pelagos.core.errors.ConfigError`. Files are written atomically (temporary file + rename), so a crash
while writing leaves the previous restart intact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from .errors import ConfigError

FORMAT = "pelagos-restart"
VERSION = 1
_PLAIN = (str, int, float, bool, type(None))

__all__ = ["Restart", "config_fingerprint", "load_restart", "save_restart"]


@dataclasses.dataclass
class Restart:
    """What :func:`load_restart` returns: the state (rebuilt on the template) and where it stands."""

    state: Any
    step: int
    t: float
    fingerprint: str | None
    records: dict[str, int]
    extra: dict
    path: Path


def config_fingerprint(config: Any) -> str:
    """Stable hash of a (JSON-serialisable) configuration, to refuse restarts written by another setup."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _check_plain(x: Any, where: str) -> None:
    if isinstance(x, _PLAIN):
        return
    if isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(x, dict):
        for k, v in x.items():
            if not isinstance(k, str):
                raise ConfigError(f"restart metadata {where}: keys must be strings; got {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise ConfigError(
        f"restart metadata {where} is a {type(x).__name__}; only str/int/float/bool/None, lists and dicts of "
        "them can be stored (a restart file holds no Python objects)"
    )


def _leaves(state: Any) -> tuple[list[Any], Any]:
    from .rollout import _register_dataclasses

    _register_dataclasses(state)
    return pytree.tree_flatten(state)


def save_restart(
    path: str | os.PathLike,
    state: Any,
    *,
    step: int,
    t: float,
    fingerprint: str | None = None,
    records: dict[str, int] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``state`` (a tensor or pytree of tensors) at ``step`` / model time ``t`` (model seconds) to
    ``path``."""
    path = Path(path)
    leaves, spec = _leaves(state)
    stored = []
    for i, x in enumerate(leaves):
        if torch.is_tensor(x):
            stored.append(x.detach().clone())
        elif isinstance(x, _PLAIN):
            stored.append(x)
        else:
            raise ConfigError(f"restart: state leaf {i} is a {type(x).__name__}; states hold tensors")
    records = {str(k): int(v) for k, v in (records or {}).items()}
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "t": float(t),
        "fingerprint": None if fingerprint is None else str(fingerprint),
        "records": records,
        "structure": str(spec),
        "leaves": stored,
        "extra": extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_restart(path: str | os.PathLike, template: Any = None, *, fingerprint: str | None = None) -> Restart:
    """Read a restart file safely (``weights_only=True``) and rebuild the state on ``template``.

    Raises:
        ConfigError: the file is missing, not a pelagos restart (or holds Python objects: refused, never
            executed), was written by another configuration (``fingerprint`` differs: use ``--fresh``), or its
            state does not fit ``template`` (other shapes, dtypes or variables).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"restart file {path} not found")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"refusing to load restart file {path}: it holds Python objects, which a pelagos restart never "
            f"does, and loading them could run code ({first[:200]}). Delete it or start over with --fresh"
        ) from None
    except Exception as err:  # not a torch file at all, truncated, ...
        raise ConfigError(
            f"restart file {path} is not readable as a pelagos restart ({type(err).__name__}: "
            f"{str(err)[:200]}); delete it or start over with --fresh"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(
            f"{path} is not a pelagos restart file (written by another program or an older pelagos); "
            "delete it or start over with --fresh"
        )
    if int(payload.get("version", 0)) > VERSION:
        raise ConfigError(
            f"restart file {path} has format version {payload['version']}, newer than this pelagos "
            f"understands ({VERSION}); update pelagos or start over with --fresh"
        )
    if fingerprint is not None and payload.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"restart file {path} was written by a different configuration (fingerprint "
            f"{payload.get('fingerprint')} != {fingerprint}); use --fresh to start over, or restore the "
            "configuration that wrote it"
        )
    leaves = list(payload["leaves"])
    state: Any = leaves
    if template is not None:
        t_leaves, spec = _leaves(template)
        if len(t_leaves) != len(leaves) or str(spec) != payload.get("structure", str(spec)):
            raise ConfigError(
                f"restart file {path} holds a state of another structure ({len(leaves)} arrays, "
                f"{payload.get('structure')}) than this model's ({len(t_leaves)} arrays, {spec}); "
                "use --fresh to start over"
            )
        out = []
        for i, (x, ref) in enumerate(zip(leaves, t_leaves)):
            if torch.is_tensor(ref):
                if not torch.is_tensor(x) or x.dtype != ref.dtype or x.shape != ref.shape:
                    got = (tuple(x.shape), x.dtype) if torch.is_tensor(x) else type(x).__name__
                    raise ConfigError(
                        f"restart file {path}: state array {i} is {got}, the model's is "
                        f"{(tuple(ref.shape), ref.dtype)}; use --fresh to start over"
                    )
                x = x.to(ref.device)
            out.append(x)
        state = pytree.tree_unflatten(out, spec)
    return Restart(
        state=state,
        step=int(payload["step"]),
        t=float(payload["t"]),
        fingerprint=payload.get("fingerprint"),
        records={str(k): int(v) for k, v in (payload.get("records") or {}).items()},
        extra=dict(payload.get("extra") or {}),
        path=path,
    )
