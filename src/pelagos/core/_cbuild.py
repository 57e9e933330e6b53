"""Compile small C kernels on first use and load them through ``ctypes`` (shared by the optional CPU fast
paths: the tridiagonal Thomas sweep, the QG spectral step).

Plain C99 with no torch headers: the system C compiler builds a shared library once, cached on disk by a
hash of the source and flags (``$PELAGOS_CACHE_DIR``, else ``~/.cache/pelagos``; a private temporary
directory if that is read-only). Callers catch any exception from :func:`build_library` and fall back to
their pure-torch code, so a machine without a compiler loses speed, not function.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

FLAGS = ["-O3", "-std=c99", "-shared", "-fPIC", "-fno-math-errno"]

# x86-64 function multi-versioning: AVX-512 / AVX2+FMA clones picked at load time, SSE2 otherwise
MULTIVERSION_HEADER = """#if defined(PELAGOS_MV) && defined(__x86_64__)
#define MV __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MV
#endif
"""

_pool_state: dict[str, object] = {}


def cache_dir() -> Path:
    root = os.environ.get("PELAGOS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pelagos"
    )
    return Path(root)


def _compile(cc: str, flags: list[str], source: str, lib: Path) -> None:
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src = Path(tmp) / "kernel.c"
        src.write_text(source)
        out = Path(tmp) / "kernel.so"
        subprocess.run([cc, *flags, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)
        os.replace(out, lib)  # atomic: concurrent first uses never see a half-written file


def build_library(stem: str, source: str, flags: list[str] = FLAGS) -> ctypes.CDLL:
    """Compile ``source`` (once, cached by hash) into ``<stem>-<hash>.so`` and load it. Raises on failure.

    The first attempt defines ``PELAGOS_MV`` (see :data:`MULTIVERSION_HEADER`); if the compiler rejects
    it, the portable build is tried.
    """
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set CC)")
    key = hashlib.sha256((source + " ".join(flags) + platform.machine()).encode()).hexdigest()[:16]
    name = f"{stem}-{key}.so"
    lib = cache_dir() / name
    if not lib.exists():
        try:
            lib.parent.mkdir(parents=True, exist_ok=True)
            writable = os.access(lib.parent, os.W_OK)
        except OSError:
            writable = False
        if not writable:  # read-only home: build in a private temporary directory instead
            uid = os.getuid() if hasattr(os, "getuid") else 0
            lib = Path(tempfile.gettempdir()) / f"pelagos-{uid}" / name
    if not lib.exists():
        try:
            _compile(cc, [*flags, "-DPELAGOS_MV"], source, lib)
        except (subprocess.CalledProcessError, OSError):
            _compile(cc, flags, source, lib)
    return ctypes.CDLL(str(lib))


def thread_pool() -> ThreadPoolExecutor:
    """A pool of ``torch.get_num_threads()`` workers (ctypes calls release the GIL)."""
    n = max(1, torch.get_num_threads())
    pool = _pool_state.get("pool")
    # a new pool after a fork (the parent's worker threads do not exist in the child) or a resize
    if pool is None or _pool_state.get("key") != (n, os.getpid()):
        pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="pelagos-ckernel")
        _pool_state["pool"], _pool_state["key"] = pool, (n, os.getpid())
    return pool  # type: ignore[return-value]


def run_calls(calls: list[Callable[[], object]]) -> None:
    """Run the calls, on the thread pool when there are several."""
    if len(calls) == 1:
        calls[0]()
        return
    for f in [thread_pool().submit(c) for c in calls]:
        f.result()
