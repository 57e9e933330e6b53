"""Compile small C kernels on first use and load them through ``ctypes`` (shared by the optional CPU fast
paths: the tridiagonal Thomas sweep, the QG spectral step), and build torch operator libraries (C++ against
the installed torch, :func:`build_torch_library`).

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


def _compile(cc: str, flags: list[str], source: str, lib: Path, libs: list[str] = ()) -> None:
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src = Path(tmp) / "kernel.c"
        src.write_text(source)
        out = Path(tmp) / "kernel.so"
        cmd = [cc, *flags, str(src), "-o", str(out), *libs]  # libraries after the source: --as-needed
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        os.replace(out, lib)  # atomic: concurrent first uses never see a half-written file


def _library_path(name: str) -> Path:
    """Where the cached library ``name`` lives: the cache directory, or a private temporary directory
    when that is not writable and the library is not already there."""
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
    return lib


def build_library(stem: str, source: str, flags: list[str] = FLAGS, libs: list[str] = ()) -> ctypes.CDLL:
    """Compile ``source`` (once, cached by hash) into ``<stem>-<hash>.so`` and load it. Raises on failure.
    ``libs``: linker arguments (``-lm``), placed after the source.

    The first attempt defines ``PELAGOS_MV`` (see :data:`MULTIVERSION_HEADER`); if the compiler rejects
    it, the portable build is tried.
    """
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set CC)")
    key = hashlib.sha256((source + " ".join([*flags, *libs]) + platform.machine()).encode()).hexdigest()[:16]
    lib = _library_path(f"{stem}-{key}.so")
    if not lib.exists():
        try:
            _compile(cc, [*flags, "-DPELAGOS_MV"], source, lib, libs)
        except (subprocess.CalledProcessError, OSError):
            _compile(cc, flags, source, lib, libs)
    return ctypes.CDLL(str(lib))


# C++ against the installed torch (headers and libraries of the torch package itself: no ninja, no
# torch.utils.cpp_extension, which takes seconds to import). OpenMP: at::parallel_for inlines an OpenMP
# region; the library then uses the libgomp torch has already loaded (same soname).
CXX_FLAGS = ["-O2", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-w"]


def _compiler(env: str, names: tuple[str, ...], what: str) -> str:
    found = os.environ.get(env) or next((p for n in names if (p := shutil.which(n))), None)
    if not found:
        raise RuntimeError(f"no {what} compiler found (set {env})")
    return found


def _run(cmd: list[str], timeout: float) -> None:
    """Run a compiler; on failure raise with the tail of its messages (for the caller's warning)."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{Path(cmd[0]).name}: {exc}") from exc
    if res.returncode != 0:
        text = (res.stderr or res.stdout).strip()
        errors = [ln for ln in text.splitlines() if "error" in ln.lower()]
        msg = "\n".join(errors[:3])[:600] if errors else text[-600:]
        raise RuntimeError(f"{Path(cmd[0]).name} exited with {res.returncode}: {msg}")


def torch_paths() -> tuple[list[str], str]:
    """Include directories and library directory of the installed torch."""
    root = Path(torch.__file__).resolve().parent
    return [str(root / "include"), str(root / "include" / "torch" / "csrc" / "api" / "include")], str(
        root / "lib"
    )


class _FileLock:
    """An exclusive lock on a file next to the library (POSIX): concurrent first imports build once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _FileLock:
        self.fh = open(self.path, "a")  # closed in __exit__
        try:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()  # releases the lock


def op_registered(qualname: str) -> bool:
    """Whether the operator schema ``qualname`` (``"namespace::name"``) exists in this process (loading a
    library that defines it again would abort on the duplicate definition)."""
    try:
        torch._C._dispatch_find_schema_or_throw(qualname, "")
    except RuntimeError:
        return False
    return True


def build_torch_library(
    stem: str, c_source: str, cpp_source: str, defines: tuple[str, ...] = (), timeout: float = 600.0
) -> Path:
    """Compile ``c_source`` (C, flags as :func:`build_library`, so the same object code) and ``cpp_source``
    (C++ against the installed torch, e.g. ``TORCH_LIBRARY`` registrations) into one shared library, once:
    cached by a hash of both sources, the flags, the compilers and the torch version. Returns its path (to
    be loaded with ``torch.ops.load_library``). Raises ``RuntimeError`` (with the compiler's message) on
    any failure.
    """
    cc = _compiler("CC", ("cc", "gcc", "clang"), "C")
    cxx = _compiler("CXX", ("c++", "g++", "clang++"), "C++")
    inc, libdir = torch_paths()
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    cxxflags = [*CXX_FLAGS, *(f"-D{d}" for d in defines), f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    cxxflags += [f"-I{i}" for i in inc]
    ldflags = [f"-L{libdir}", "-lc10", "-ltorch", "-ltorch_cpu", f"-Wl,-rpath,{libdir}"]
    cflags = [f for f in FLAGS if f != "-shared"] + ["-c"]
    parts = (c_source, cpp_source, *cflags, *cxxflags, *ldflags, cc, cxx, torch.__version__)
    parts += (platform.machine(),)
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    lib = _library_path(f"{stem}-{key}.so")
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(lib.with_suffix(".lock")):
        if lib.exists():  # built by another process while we waited
            return lib
        with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
            csrc, cpp, obj, out = (Path(tmp) / n for n in ("kernel.c", "op.cpp", "kernel.o", "op.so"))
            csrc.write_text(c_source)
            cpp.write_text(cpp_source)
            try:
                _run([cc, *cflags, "-DPELAGOS_MV", str(csrc), "-o", str(obj)], timeout)
            except RuntimeError:
                _run([cc, *cflags, str(csrc), "-o", str(obj)], timeout)
            _run([cxx, *cxxflags, str(cpp), str(obj), *ldflags, "-o", str(out)], timeout)
            os.replace(out, lib)  # atomic: other processes never see a half-written file
    return lib


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
