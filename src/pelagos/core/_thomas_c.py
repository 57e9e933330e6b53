"""Compiled CPU kernels for the batched Thomas algorithm (optional fast path of ``solve_tridiagonal``).

A few dozen lines of plain C (no torch headers, no ninja) are compiled with the system C compiler on
first use, cached on disk, and called through ``ctypes`` on contiguous float32/float64 tensors. The
call releases the GIL, so large batches are split over ``torch.get_num_threads()`` Python threads.
If no compiler is available, or compilation fails, or ``PELAGOS_TRIDIAGONAL_BACKEND=torch`` is set,
:func:`kernels` returns ``None`` and the caller uses the pure-torch sweep instead.

Canonical layout (made by the caller): the matrices ``a, b, c`` are ``(P, N)`` C-contiguous, the
right-hand sides ``d`` and solutions ``x`` are ``(P, K, N)``: ``K`` right-hand sides share matrix ``p``,
so each matrix is factorised once. Systems are processed in interleaved blocks of ``BLOCK`` so that
the serial division chains of independent systems overlap in the CPU pipeline.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

BLOCK = 8  # systems interleaved per block (must match the C source)

# The kernel body is written once with REAL/SFX placeholders and instantiated for double and float.
_BODY = r"""
/* Solve A x = d for P matrices (P,N) and K right-hand sides each (P,K,N). work: 2*BLOCK*N. */
void thomas_solve_SFX(long P, long K, long N, const REAL *a, const REAL *b, const REAL *c,
                      const REAL *d, REAL *x, REAL *work)
{
    REAL *inv = work;              /* 1 / pivot, [i*BLOCK + j] */
    REAL *cp = work + BLOCK * N;   /* upper / pivot            */
    for (long p0 = 0; p0 < P; p0 += BLOCK) {
        long nb = (P - p0 < BLOCK) ? P - p0 : BLOCK;
        for (long j = 0; j < nb; j++) {
            long o = (p0 + j) * N;
            REAL r = (REAL)1 / b[o];
            inv[j] = r;
            cp[j] = c[o] * r;
        }
        for (long i = 1; i < N; i++) {
            for (long j = 0; j < nb; j++) {
                long o = (p0 + j) * N + i;
                REAL r = (REAL)1 / (b[o] - a[o] * cp[(i - 1) * BLOCK + j]);
                inv[i * BLOCK + j] = r;
                cp[i * BLOCK + j] = c[o] * r;
            }
        }
        for (long k = 0; k < K; k++) {
            for (long j = 0; j < nb; j++) {
                long o = ((p0 + j) * K + k) * N;
                x[o] = d[o] * inv[j];
            }
            for (long i = 1; i < N; i++) {
                for (long j = 0; j < nb; j++) {
                    long o = ((p0 + j) * K + k) * N + i;
                    x[o] = (d[o] - a[(p0 + j) * N + i] * x[o - 1]) * inv[i * BLOCK + j];
                }
            }
            for (long i = N - 2; i >= 0; i--) {
                for (long j = 0; j < nb; j++) {
                    long o = ((p0 + j) * K + k) * N + i;
                    x[o] -= cp[i * BLOCK + j] * x[o + 1];
                }
            }
        }
    }
}

/* Adjoint: lam = A^-T g for each (p,k); if ga/gb/gc are non-NULL also the matrix cotangents
   ga_i = -sum_k lam_i x_{i-1}, gb_i = -sum_k lam_i x_i, gc_i = -sum_k lam_i x_{i+1} (zero at the
   ignored entries ga_0 and gc_{N-1}). A^T has sub-diagonal c_{i-1}, super-diagonal a_{i+1} and
   the same pivots as A. */
void thomas_adjoint_SFX(long P, long K, long N, const REAL *a, const REAL *b, const REAL *c,
                        const REAL *x, const REAL *g, REAL *lam, REAL *ga, REAL *gb, REAL *gc,
                        REAL *work)
{
    REAL *inv = work;
    REAL *cpt = work + BLOCK * N;  /* a_{i+1} / pivot_i */
    for (long p0 = 0; p0 < P; p0 += BLOCK) {
        long nb = (P - p0 < BLOCK) ? P - p0 : BLOCK;
        for (long j = 0; j < nb; j++) {
            long o = (p0 + j) * N;
            inv[j] = (REAL)1 / b[o];
        }
        for (long i = 1; i < N; i++) {
            for (long j = 0; j < nb; j++) {
                long o = (p0 + j) * N + i;
                REAL rprev = inv[(i - 1) * BLOCK + j];
                REAL t = a[o] * rprev;
                cpt[(i - 1) * BLOCK + j] = t;
                inv[i * BLOCK + j] = (REAL)1 / (b[o] - t * c[o - 1]);
            }
        }
        for (long k = 0; k < K; k++) {
            for (long j = 0; j < nb; j++) {
                long o = ((p0 + j) * K + k) * N;
                lam[o] = g[o] * inv[j];
            }
            for (long i = 1; i < N; i++) {
                for (long j = 0; j < nb; j++) {
                    long o = ((p0 + j) * K + k) * N + i;
                    lam[o] = (g[o] - c[(p0 + j) * N + i - 1] * lam[o - 1]) * inv[i * BLOCK + j];
                }
            }
            for (long i = N - 2; i >= 0; i--) {
                for (long j = 0; j < nb; j++) {
                    long o = ((p0 + j) * K + k) * N + i;
                    lam[o] -= cpt[i * BLOCK + j] * lam[o + 1];
                }
            }
            if (gb == 0) continue;
            for (long j = 0; j < nb; j++) {
                const REAL *xs = x + ((p0 + j) * K + k) * N;
                const REAL *ls = lam + ((p0 + j) * K + k) * N;
                REAL *gas = ga + (p0 + j) * N, *gbs = gb + (p0 + j) * N, *gcs = gc + (p0 + j) * N;
                if (k == 0) {
                    gas[0] = 0;
                    gcs[N - 1] = 0;
                    for (long i = 0; i < N; i++) gbs[i] = -ls[i] * xs[i];
                    for (long i = 1; i < N; i++) gas[i] = -ls[i] * xs[i - 1];
                    for (long i = 0; i < N - 1; i++) gcs[i] = -ls[i] * xs[i + 1];
                } else {
                    for (long i = 0; i < N; i++) gbs[i] -= ls[i] * xs[i];
                    for (long i = 1; i < N; i++) gas[i] -= ls[i] * xs[i - 1];
                    for (long i = 0; i < N - 1; i++) gcs[i] -= ls[i] * xs[i + 1];
                }
            }
        }
    }
}
"""

_SOURCE = f"#define BLOCK {BLOCK}\n" + "".join(
    _BODY.replace("REAL", real).replace("SFX", sfx) for real, sfx in (("double", "f64"), ("float", "f32"))
)
_FLAGS = ["-O3", "-std=c99", "-shared", "-fPIC", "-fno-math-errno"]
_SUFFIX = {torch.float64: "f64", torch.float32: "f32"}
_PARALLEL_MIN = 1 << 16  # elements (P*K*N) below which one thread is faster than a thread pool

_lock = threading.Lock()
_state: dict[str, object] = {}


def _cache_dir() -> Path:
    root = os.environ.get("PELAGOS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pelagos"
    )
    return Path(root)


def _build() -> ctypes.CDLL:
    """Compile (once, cached by source hash) and load the shared library. Raises on any failure."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set CC)")
    key = hashlib.sha256((_SOURCE + " ".join(_FLAGS) + platform.machine()).encode()).hexdigest()[:16]
    cache = _cache_dir()
    lib = cache / f"thomas-{key}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src = Path(tmp) / "thomas.c"
            src.write_text(_SOURCE)
            out = Path(tmp) / "thomas.so"
            subprocess.run(
                [cc, *_FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120
            )
            os.replace(out, lib)  # atomic: concurrent first uses do not see a half-written file
    dll = ctypes.CDLL(str(lib))
    for sfx in _SUFFIX.values():
        f = getattr(dll, f"thomas_solve_{sfx}")
        f.argtypes = [ctypes.c_long] * 3 + [ctypes.c_void_p] * 6
        f.restype = None
        g = getattr(dll, f"thomas_adjoint_{sfx}")
        g.argtypes = [ctypes.c_long] * 3 + [ctypes.c_void_p] * 10
        g.restype = None
    return dll


def kernels() -> ctypes.CDLL | None:
    """The loaded library, or ``None`` if the compiled path is disabled or could not be built."""
    if "dll" not in _state:
        with _lock:
            if "dll" not in _state:
                dll = None
                if os.environ.get("PELAGOS_TRIDIAGONAL_BACKEND", "auto").lower() not in ("torch", "python"):
                    try:
                        dll = _build()
                    except Exception as exc:  # any failure -> pure-torch fallback, reported once
                        _state["error"] = f"{type(exc).__name__}: {exc}"
                _state["dll"] = dll
    return _state["dll"]  # type: ignore[return-value]


def build_error() -> str | None:
    """Why the compiled path is unavailable (``None`` if it is available or was never tried)."""
    return _state.get("error")  # type: ignore[return-value]


def supports(*tensors: torch.Tensor) -> bool:
    """True if the compiled kernels can handle these tensors (CPU, float32/64, plain strided)."""
    t0 = tensors[0]
    return (
        t0.device.type == "cpu"
        and t0.dtype in _SUFFIX
        and all(t.layout == torch.strided and not t.is_conj() for t in tensors)
        and kernels() is not None
    )


def _pool() -> ThreadPoolExecutor:
    n = max(1, torch.get_num_threads())
    pool = _state.get("pool")
    if pool is None or _state.get("pool_size") != n:
        pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="pelagos-thomas")
        _state["pool"], _state["pool_size"] = pool, n
    return pool  # type: ignore[return-value]


def _chunks(P: int, work: int) -> list[tuple[int, int]]:
    """Split ``P`` matrices into contiguous ranges (multiples of BLOCK) for the thread pool."""
    n = max(1, torch.get_num_threads())
    if n == 1 or work < _PARALLEL_MIN or P < 2 * BLOCK:
        return [(0, P)]
    step = -(-P // n)
    step = -(-step // BLOCK) * BLOCK
    return [(s, min(P, s + step)) for s in range(0, P, step)]


def _run(calls: list) -> None:
    if len(calls) == 1:
        calls[0]()
        return
    for f in [_pool().submit(c) for c in calls]:
        f.result()


def solve(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x with A x = d; a, b, c: (P, N), d: (P, K, N), all C-contiguous, same dtype, CPU."""
    P, K, N = d.shape
    x = torch.empty_like(d)
    fn = getattr(kernels(), f"thomas_solve_{_SUFFIX[d.dtype]}")
    chunks = _chunks(P, P * K * N)
    work = torch.empty(len(chunks), 2 * BLOCK * N, dtype=d.dtype)
    es = d.element_size()
    calls = []
    for w, (s, e) in enumerate(chunks):
        m, r = s * N * es, s * K * N * es
        ptrs = (a.data_ptr() + m, b.data_ptr() + m, c.data_ptr() + m, d.data_ptr() + r, x.data_ptr() + r)
        ptrs += (work[w].data_ptr(),)
        calls.append(lambda s=s, e=e, p=ptrs: fn(e - s, K, N, *p))
    _run(calls)
    return x


def adjoint(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, x: torch.Tensor, g: torch.Tensor, matrix_grads: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """lam = A^-T g and (if ``matrix_grads``) the cotangents of a, b, c summed over the K right-hand sides."""
    P, K, N = g.shape
    lam = torch.empty_like(g)
    ga = gb = gc = None
    if matrix_grads:
        ga, gb, gc = (torch.empty(P, N, dtype=g.dtype) for _ in range(3))
    fn = getattr(kernels(), f"thomas_adjoint_{_SUFFIX[g.dtype]}")
    chunks = _chunks(P, P * K * N)
    work = torch.empty(len(chunks), 2 * BLOCK * N, dtype=g.dtype)
    es = g.element_size()
    calls = []
    for w, (s, e) in enumerate(chunks):
        m, r = s * N * es, s * K * N * es
        gptr = (ga.data_ptr() + m, gb.data_ptr() + m, gc.data_ptr() + m) if matrix_grads else (None,) * 3
        ptrs = (a.data_ptr() + m, b.data_ptr() + m, c.data_ptr() + m, x.data_ptr() + r, g.data_ptr() + r)
        ptrs += (lam.data_ptr() + r, *gptr, work[w].data_ptr())
        calls.append(lambda s=s, e=e, p=ptrs: fn(e - s, K, N, *p))
    _run(calls)
    return lam, ga, gb, gc
