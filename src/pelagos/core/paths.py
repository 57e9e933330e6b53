"""File paths in configurations: ``builtin:NAME`` for files shipped in ``pelagos/data``, else relative to the
configuration file's folder."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def resolve_path(value: str | os.PathLike, base: Path | str | None) -> Path:
    """``builtin:NAME`` -> ``pelagos/data/NAME``; a relative path -> relative to ``base`` (if given),
    normalised (``base/../results/x.nc`` -> ``results/x.nc`` beside ``base``: the path messages print)."""
    s = os.fspath(value)
    if s.startswith("builtin:"):
        p = DATA_DIR / s[len("builtin:") :]
        if not p.exists():
            have = sorted(str(q.relative_to(DATA_DIR)) for q in DATA_DIR.rglob("*") if q.is_file())
            raise ConfigError(f"no built-in file {s!r}; built-in files: {', '.join(have)}")
        return p
    p = Path(s).expanduser()
    if p.is_absolute() or base is None:
        return p
    return Path(os.path.normpath(Path(base) / p))
