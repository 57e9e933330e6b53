"""Compiled CPU kernels for the batched Thomas algorithm (optional fast path of ``solve_tridiagonal``).

A few dozen lines of plain C (no torch headers, no ninja) are compiled with the system C compiler on
first use, cached on disk, and called through ``ctypes`` on contiguous float32/float64 tensors. The
call releases the GIL, so large batches are split over ``torch.get_num_threads()`` Python threads.
If no compiler is available, or compilation fails, or ``PELAGOS_TRIDIAGONAL_BACKEND=torch`` is set,
:func:`kernels` returns ``None`` and the caller uses the pure-torch sweep instead.

Canonical layout (made by the caller): the matrices ``a, b, c`` are ``(P, N)`` C-contiguous, the
right-hand sides ``d`` and solutions ``x`` are ``(P, K, N)``: ``K`` right-hand sides share matrix ``p``,
so each matrix is factorised once. Systems go in blocks of one vector width (8 float64 or 16
float32 systems): a block is copied level-major into a small cache-resident workspace (L x L tiles
transposed in registers by two-source vector shuffles), so that each
level of the sweep is one SIMD operation (the serial recurrence runs along the levels, the vector
lanes across systems). GCC builds AVX-512, AVX2 and SSE2 clones and picks one at load time.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings

import torch

from ._cbuild import MULTIVERSION_HEADER, build_library, run_calls

VBYTES = 64  # bytes per vector of the C kernel: 8 float64 or 16 float32 systems per block
_LANES = {torch.float64: VBYTES // 8, torch.float32: VBYTES // 4}

# The kernel body is written once with REAL/SFX placeholders and instantiated for double and float.
_BODY = r"""
typedef REAL V_SFX __attribute__((vector_size(VBYTES)));
#define L_SFX (VBYTES / (long)sizeof(REAL))  /* systems per block = vector lanes */

/*TRANSPOSE*/

/* Copy L rows (row length N, row stride `stride`) of src into level-major vectors dst[i]: L x L tiles
   are loaded row-wise, transposed in registers and stored level-wise; the last N % L levels one by one. */
static INLINE void gather_SFX(long N, long stride, const REAL *src, V_SFX *dst)
{
    for (long j = 0; j < L_SFX; j++) {
        /* the same row of the next block: fetched now, used one block later (prefetch never faults) */
        const char *nx = (const char *)(src + j * stride + L_SFX * stride);
        for (long q = 0; q < N * (long)sizeof(REAL); q += 64) __builtin_prefetch(nx + q, 0, 3);
    }
    long i0 = 0;
    for (; i0 + L_SFX <= N; i0 += L_SFX) {
        V_SFX v[L_SFX];
        for (long j = 0; j < L_SFX; j++) __builtin_memcpy(&v[j], src + j * stride + i0, sizeof(V_SFX));
        transpose_SFX(v);
        for (long j = 0; j < L_SFX; j++) dst[i0 + j] = v[j];
    }
    REAL *t = (REAL *)dst;
    for (long j = 0; j < L_SFX; j++)
        for (long i = i0; i < N; i++) t[i * L_SFX + j] = src[j * stride + i];
}

static INLINE void scatter_SFX(long N, long stride, const V_SFX *src, REAL *dst)
{
    long i0 = 0;
    for (; i0 + L_SFX <= N; i0 += L_SFX) {
        V_SFX v[L_SFX];
        for (long j = 0; j < L_SFX; j++) v[j] = src[i0 + j];
        transpose_SFX(v);
        for (long j = 0; j < L_SFX; j++) __builtin_memcpy(dst + j * stride + i0, &v[j], sizeof(V_SFX));
    }
    const REAL *t = (const REAL *)src;
    for (long j = 0; j < L_SFX; j++)
        for (long i = i0; i < N; i++) dst[j * stride + i] = t[i * L_SFX + j];
}

/* Matrix cotangents of one system from lam and x (first right-hand side sets, others add). */
static INLINE void cotangents_SFX(long N, int first, const REAL *restrict ls, const REAL *restrict xs,
                                  REAL *restrict ga, REAL *restrict gb, REAL *restrict gc)
{
    if (first) {
        if (ga) { ga[0] = 0; for (long i = 1; i < N; i++) ga[i] = -ls[i] * xs[i - 1]; }
        if (gb) for (long i = 0; i < N; i++) gb[i] = -ls[i] * xs[i];
        if (gc) { gc[N - 1] = 0; for (long i = 0; i < N - 1; i++) gc[i] = -ls[i] * xs[i + 1]; }
    } else {
        if (ga) for (long i = 1; i < N; i++) ga[i] -= ls[i] * xs[i - 1];
        if (gb) for (long i = 0; i < N; i++) gb[i] -= ls[i] * xs[i];
        if (gc) for (long i = 0; i < N - 1; i++) gc[i] -= ls[i] * xs[i + 1];
    }
}

/* One system, scalar (used for the systems that do not fill a vector block, e.g. a single one). */
static void solve_one_SFX(long K, long N, const REAL *a, const REAL *b, const REAL *c, const REAL *d,
                          REAL *x, REAL *piv, REAL *inv, REAL *cp, REAL *acc)
{
    REAL r = 1 / b[0];
    inv[0] = r;
    cp[0] = c[0] * r;
    for (long i = 1; i < N; i++) {
        r = 1 / (b[i] - a[i] * cp[i - 1]);
        inv[i] = r;
        cp[i] = c[i] * r;
    }
    if (piv) for (long i = 0; i < N; i++) piv[i] = inv[i];
    for (long k = 0; k < K; k++) {
        const REAL *ds = d + k * N;
        REAL *xs = x + k * N, s = 0;
        xs[0] = ds[0] * inv[0];
        for (long i = 1; i < N; i++) xs[i] = (ds[i] - a[i] * xs[i - 1]) * inv[i];
        s += xs[N - 1] * 0;
        for (long i = N - 2; i >= 0; i--) {
            xs[i] -= cp[i] * xs[i + 1];
            s += xs[i] * 0;
        }
        *acc += s;
    }
}

/* One matrix shared by K >= L right-hand sides (d, x: (K,N)): the factorisation once, in scalars and in
   the same operations as solve_one; the right-hand sides in blocks of L (two blocks at a time, so that
   the two serial recurrences overlap), each level of a sweep one SIMD operation across right-hand sides.
   work: 4*N vectors. */
static INLINE void solve_shared_SFX(long K, long N, const REAL *a, const REAL *b, const REAL *c,
                                    const REAL *d, REAL *x, REAL *piv, V_SFX *work, V_SFX *acc, REAL *acc1)
{
    REAL *inv = (REAL *)work, *cp = (REAL *)work + N;  /* 2N scalars: within the first N vectors */
    V_SFX *xl = work + N, *xm = work + 2 * N;
    REAL r = 1 / b[0];
    inv[0] = r;
    cp[0] = c[0] * r;
    for (long i = 1; i < N; i++) {
        r = 1 / (b[i] - a[i] * cp[i - 1]);
        inv[i] = r;
        cp[i] = c[i] * r;
    }
    if (piv) for (long i = 0; i < N; i++) piv[i] = inv[i];
    long k0 = 0;
    for (; k0 + 2 * L_SFX <= K; k0 += 2 * L_SFX) {
        gather_SFX(N, N, d + k0 * N, xl);
        gather_SFX(N, N, d + (k0 + L_SFX) * N, xm);
        xl[0] *= inv[0];
        xm[0] *= inv[0];
        for (long i = 1; i < N; i++) {
            xl[i] = (xl[i] - a[i] * xl[i - 1]) * inv[i];
            xm[i] = (xm[i] - a[i] * xm[i - 1]) * inv[i];
        }
        *acc += xl[N - 1] * 0 + xm[N - 1] * 0;
        for (long i = N - 2; i >= 0; i--) {
            xl[i] -= cp[i] * xl[i + 1];
            xm[i] -= cp[i] * xm[i + 1];
            *acc += xl[i] * 0 + xm[i] * 0;
        }
        scatter_SFX(N, N, xl, x + k0 * N);
        scatter_SFX(N, N, xm, x + (k0 + L_SFX) * N);
    }
    for (; k0 + L_SFX <= K; k0 += L_SFX) {
        gather_SFX(N, N, d + k0 * N, xl);
        xl[0] *= inv[0];
        for (long i = 1; i < N; i++) xl[i] = (xl[i] - a[i] * xl[i - 1]) * inv[i];
        *acc += xl[N - 1] * 0;
        for (long i = N - 2; i >= 0; i--) {
            xl[i] -= cp[i] * xl[i + 1];
            *acc += xl[i] * 0;
        }
        scatter_SFX(N, N, xl, x + k0 * N);
    }
    REAL s = 0;
    for (; k0 < K; k0++) {
        const REAL *ds = d + k0 * N;
        REAL *xs = x + k0 * N;
        xs[0] = ds[0] * inv[0];
        for (long i = 1; i < N; i++) xs[i] = (ds[i] - a[i] * xs[i - 1]) * inv[i];
        s += xs[N - 1] * 0;
        for (long i = N - 2; i >= 0; i--) {
            xs[i] -= cp[i] * xs[i + 1];
            s += xs[i] * 0;
        }
    }
    *acc1 += s;
}

/* Solve A x = d for P matrices (P,N) and K right-hand sides each (P,K,N). If piv is not NULL, the
   reciprocal pivots 1/u_i of the factorisation are stored there (P,N) for the adjoint.
   work: 4*N vectors. Returns 1 if every x is finite (sum of x*0 is NaN iff some x is NaN/Inf). */
MV int thomas_solve_SFX(long P, long K, long N, const REAL *a, const REAL *b, const REAL *c,
                        const REAL *d, REAL *x, REAL *piv, V_SFX *work)
{
    V_SFX *al = work, *inv = work + N, *cp = work + 2 * N, *xl = work + 3 * N;
    V_SFX acc = {0};
    REAL acc1 = 0;
    long p0 = 0;
    for (; p0 + L_SFX <= P; p0 += L_SFX) {
        gather_SFX(N, N, a + p0 * N, al);
        gather_SFX(N, N, b + p0 * N, inv);
        gather_SFX(N, N, c + p0 * N, cp);
        /* factorise in place: inv <- 1/pivot, cp <- upper/pivot */
        inv[0] = 1 / inv[0];
        cp[0] *= inv[0];
        for (long i = 1; i < N; i++) {
            inv[i] = 1 / (inv[i] - al[i] * cp[i - 1]);
            cp[i] *= inv[i];
        }
        if (piv) scatter_SFX(N, N, inv, piv + p0 * N);
        for (long k = 0; k < K; k++) {
            gather_SFX(N, K * N, d + (p0 * K + k) * N, xl);
            xl[0] *= inv[0];
            for (long i = 1; i < N; i++) xl[i] = (xl[i] - al[i] * xl[i - 1]) * inv[i];
            acc += xl[N - 1] * 0;
            for (long i = N - 2; i >= 0; i--) {
                xl[i] -= cp[i] * xl[i + 1];
                acc += xl[i] * 0;
            }
            scatter_SFX(N, K * N, xl, x + (p0 * K + k) * N);
        }
    }
    for (; p0 < P; p0++)
        if (K >= L_SFX)  /* a matrix shared by many right-hand sides: vectors across them */
            solve_shared_SFX(K, N, a + p0 * N, b + p0 * N, c + p0 * N, d + p0 * K * N, x + p0 * K * N,
                             piv ? piv + p0 * N : 0, work, &acc, &acc1);
        else
            solve_one_SFX(K, N, a + p0 * N, b + p0 * N, c + p0 * N, d + p0 * K * N, x + p0 * K * N,
                          piv ? piv + p0 * N : 0, (REAL *)work, (REAL *)work + N, &acc1);
    for (long j = 0; j < L_SFX; j++) acc1 += acc[j];
    return acc1 == acc1;
}

static void adjoint_one_SFX(long K, long N, const REAL *a, const REAL *b, const REAL *c, const REAL *piv,
                            const REAL *x, const REAL *g, REAL *lam, REAL *ga, REAL *gb, REAL *gc,
                            REAL *inv, REAL *cpt)
{
    if (piv) {
        for (long i = 0; i < N; i++) inv[i] = piv[i];
        for (long i = 1; i < N; i++) cpt[i - 1] = a[i] * inv[i - 1];
    } else {
        inv[0] = 1 / b[0];
        for (long i = 1; i < N; i++) {
            cpt[i - 1] = a[i] * inv[i - 1];
            inv[i] = 1 / (b[i] - cpt[i - 1] * c[i - 1]);
        }
    }
    for (long k = 0; k < K; k++) {
        const REAL *gs = g + k * N;
        REAL *ls = lam + k * N;
        ls[0] = gs[0] * inv[0];
        for (long i = 1; i < N; i++) ls[i] = (gs[i] - c[i - 1] * ls[i - 1]) * inv[i];
        for (long i = N - 2; i >= 0; i--) ls[i] -= cpt[i] * ls[i + 1];
        cotangents_SFX(N, k == 0, ls, x + k * N, ga, gb, gc);
    }
}

/* adjoint_one for K >= L right-hand sides sharing the matrix: the pivots once in scalars (the same
   operations as adjoint_one), lam in blocks of L right-hand sides (one SIMD operation per level), the
   matrix cotangents summed over the right-hand sides in the order of adjoint_one. work: 5*N vectors. */
static INLINE void adjoint_shared_SFX(long K, long N, const REAL *a, const REAL *b, const REAL *c,
                                      const REAL *piv, const REAL *x, const REAL *g, REAL *lam, REAL *ga,
                                      REAL *gb, REAL *gc, V_SFX *work)
{
    REAL *inv = (REAL *)work, *cpt = (REAL *)work + N;
    V_SFX *ll = work + N, *lm = work + 2 * N;
    int want = ga || gb || gc;
    if (piv) {
        for (long i = 0; i < N; i++) inv[i] = piv[i];
        for (long i = 1; i < N; i++) cpt[i - 1] = a[i] * inv[i - 1];
    } else {
        inv[0] = 1 / b[0];
        for (long i = 1; i < N; i++) {
            cpt[i - 1] = a[i] * inv[i - 1];
            inv[i] = 1 / (b[i] - cpt[i - 1] * c[i - 1]);
        }
    }
    long k0 = 0;
    for (; k0 + 2 * L_SFX <= K; k0 += 2 * L_SFX) {
        gather_SFX(N, N, g + k0 * N, ll);
        gather_SFX(N, N, g + (k0 + L_SFX) * N, lm);
        ll[0] *= inv[0];
        lm[0] *= inv[0];
        for (long i = 1; i < N; i++) {
            ll[i] = (ll[i] - c[i - 1] * ll[i - 1]) * inv[i];
            lm[i] = (lm[i] - c[i - 1] * lm[i - 1]) * inv[i];
        }
        for (long i = N - 2; i >= 0; i--) {
            ll[i] -= cpt[i] * ll[i + 1];
            lm[i] -= cpt[i] * lm[i + 1];
        }
        scatter_SFX(N, N, ll, lam + k0 * N);
        scatter_SFX(N, N, lm, lam + (k0 + L_SFX) * N);
    }
    for (; k0 + L_SFX <= K; k0 += L_SFX) {
        gather_SFX(N, N, g + k0 * N, ll);
        ll[0] *= inv[0];
        for (long i = 1; i < N; i++) ll[i] = (ll[i] - c[i - 1] * ll[i - 1]) * inv[i];
        for (long i = N - 2; i >= 0; i--) ll[i] -= cpt[i] * ll[i + 1];
        scatter_SFX(N, N, ll, lam + k0 * N);
    }
    for (; k0 < K; k0++) {
        const REAL *gs = g + k0 * N;
        REAL *ls = lam + k0 * N;
        ls[0] = gs[0] * inv[0];
        for (long i = 1; i < N; i++) ls[i] = (gs[i] - c[i - 1] * ls[i - 1]) * inv[i];
        for (long i = N - 2; i >= 0; i--) ls[i] -= cpt[i] * ls[i + 1];
    }
    if (want)
        for (long k = 0; k < K; k++) cotangents_SFX(N, k == 0, lam + k * N, x + k * N, ga, gb, gc);
}

/* Adjoint: lam = A^-T g for each (p,k); for each of ga/gb/gc that is non-NULL the matrix cotangent
   ga_i = -sum_k lam_i x_{i-1}, gb_i = -sum_k lam_i x_i, gc_i = -sum_k lam_i x_{i+1} (zero at the
   ignored entries ga_0 and gc_{N-1}). A^T has sub-diagonal c_{i-1}, super-diagonal a_{i+1} and
   the same pivots as A: taken from piv (saved by thomas_solve) when not NULL, else recomputed
   from b. work: 5*N vectors. */
MV void thomas_adjoint_SFX(long P, long K, long N, const REAL *a, const REAL *b, const REAL *c,
                           const REAL *piv, const REAL *x, const REAL *g, REAL *lam, REAL *ga, REAL *gb,
                           REAL *gc, V_SFX *work)
{
    V_SFX *al = work, *inv = work + N, *cl = work + 2 * N, *cpt = work + 3 * N, *ll = work + 4 * N;
    int want = ga || gb || gc;
    long p0 = 0;
    for (; p0 + L_SFX <= P; p0 += L_SFX) {
        gather_SFX(N, N, a + p0 * N, al);
        gather_SFX(N, N, c + p0 * N, cl);
        /* pivots of A (= pivots of A^T); cpt_i = a_{i+1} / pivot_i is A^T's scaled super-diagonal */
        if (piv) {
            gather_SFX(N, N, piv + p0 * N, inv);
            for (long i = 1; i < N; i++) cpt[i - 1] = al[i] * inv[i - 1];
        } else {
            gather_SFX(N, N, b + p0 * N, inv);
            inv[0] = 1 / inv[0];
            for (long i = 1; i < N; i++) {
                cpt[i - 1] = al[i] * inv[i - 1];
                inv[i] = 1 / (inv[i] - cpt[i - 1] * cl[i - 1]);
            }
        }
        for (long k = 0; k < K; k++) {
            gather_SFX(N, K * N, g + (p0 * K + k) * N, ll);
            ll[0] *= inv[0];
            for (long i = 1; i < N; i++) ll[i] = (ll[i] - cl[i - 1] * ll[i - 1]) * inv[i];
            for (long i = N - 2; i >= 0; i--) ll[i] -= cpt[i] * ll[i + 1];
            scatter_SFX(N, K * N, ll, lam + (p0 * K + k) * N);
            if (!want) continue;
            for (long j = 0; j < L_SFX; j++) {
                long o = ((p0 + j) * K + k) * N, m = (p0 + j) * N;
                cotangents_SFX(N, k == 0, lam + o, x + o, ga ? ga + m : 0, gb ? gb + m : 0, gc ? gc + m : 0);
            }
        }
    }
    for (; p0 < P; p0++) {
        long m = p0 * N, r = p0 * K * N;
        if (K >= L_SFX) {  /* a matrix shared by many right-hand sides: vectors across them */
            adjoint_shared_SFX(K, N, a + m, b ? b + m : 0, c + m, piv ? piv + m : 0, x + r, g + r, lam + r,
                               ga ? ga + m : 0, gb ? gb + m : 0, gc ? gc + m : 0, work);
            continue;
        }
        adjoint_one_SFX(K, N, a + m, b ? b + m : 0, c + m, piv ? piv + m : 0, x + r, g + r, lam + r,
                        ga ? ga + m : 0, gb ? gb + m : 0, gc ? gc + m : 0, (REAL *)work, (REAL *)work + N);
    }
}
"""


def _transpose_c(sfx: str, lanes: int, itype: str) -> str:
    """C source of an in-register transpose of ``lanes`` vectors of ``lanes`` elements (log2(lanes)
    stages of two-source shuffles swapping off-diagonal blocks)."""
    lines = [
        f"typedef {itype} M_{sfx} __attribute__((vector_size(VBYTES)));",
        f"static INLINE void transpose_{sfx}(V_{sfx} *v)",
        "{",
        f"    V_{sfx} t0, t1;",
    ]
    s = lanes // 2
    while s >= 1:
        for r in range(lanes):
            if r & s:
                continue
            m1 = ", ".join(str(k if not k & s else lanes + k - s) for k in range(lanes))
            m2 = ", ".join(str(k + s if not k & s else lanes + k) for k in range(lanes))
            lines.append(f"    t0 = SHUF(M_{sfx}, v[{r}], v[{r + s}], {m1});")
            lines.append(f"    t1 = SHUF(M_{sfx}, v[{r}], v[{r + s}], {m2});")
            lines.append(f"    v[{r}] = t0; v[{r + s}] = t1;")
        s //= 2
    return "\n".join([*lines, "}"])


_SHUF = """/* inlined into each ISA clone (so compiled for its instruction set), not called across them */
#define INLINE inline __attribute__((always_inline))
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define SHUF(M, a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUF(M, a, b, ...) __builtin_shuffle(a, b, (M){__VA_ARGS__})
#endif
"""
_TYPES = (("double", "f64", VBYTES // 8, "long long"), ("float", "f32", VBYTES // 4, "int"))
_SOURCE = (
    f"#define VBYTES {VBYTES}\n"
    + MULTIVERSION_HEADER
    + _SHUF
    + "".join(
        _BODY.replace("REAL", r).replace("SFX", x).replace("/*TRANSPOSE*/", _transpose_c(x, n, it))
        for r, x, n, it in _TYPES
    )
)
_SUFFIX = {torch.float64: "f64", torch.float32: "f32"}
_PARALLEL_MIN = 1 << 16  # elements (P*K*N) below which one thread is faster than a thread pool

_lock = threading.Lock()
_state: dict[str, object] = {}
_fns: dict[tuple[str, torch.dtype], ctypes._CFuncPtr] = {}  # filled when the library is loaded


def _build() -> ctypes.CDLL:
    """Compile (once, cached by source hash) and load the shared library. Raises on any failure.

    When the C++ operator library is loaded (:mod:`pelagos.core._thomas_op`), it already holds these
    kernels (linked from the same source): they are taken from it, with no second compilation."""
    from . import _thomas_op

    op_lib = _thomas_op._state.get("path")
    dll = ctypes.CDLL(str(op_lib)) if op_lib else build_library("thomas", _SOURCE)
    for dtype, sfx in _SUFFIX.items():
        f = getattr(dll, f"thomas_solve_{sfx}")
        f.argtypes = [ctypes.c_long] * 3 + [ctypes.c_void_p] * 7
        f.restype = ctypes.c_int
        g = getattr(dll, f"thomas_adjoint_{sfx}")
        g.argtypes = [ctypes.c_long] * 3 + [ctypes.c_void_p] * 11
        g.restype = None
        _fns[("solve", dtype)], _fns[("adjoint", dtype)] = f, g
    return dll


def kernels() -> ctypes.CDLL | None:
    """The loaded library, or ``None`` if the compiled path is disabled or could not be built.

    A failed build (no C compiler, compiler error) is reported once with a :class:`RuntimeWarning`
    and the caller falls back to the pure-torch sweep (same results, slower).
    """
    if "dll" not in _state:
        with _lock:
            if "dll" not in _state:
                dll = None
                if os.environ.get("PELAGOS_TRIDIAGONAL_BACKEND", "auto").lower() not in ("torch", "python"):
                    try:
                        dll = _build()
                    except Exception as exc:  # any failure -> pure-torch fallback, reported once
                        _state["error"] = f"{type(exc).__name__}: {exc}"
                        warnings.warn(
                            "pelagos: the compiled tridiagonal kernel is unavailable "
                            f"({_state['error']}); solve_tridiagonal uses the pure-torch sweep "
                            "(same results, slower). Install a C compiler (or set CC) for the fast "
                            "path, or set PELAGOS_TRIDIAGONAL_BACKEND=torch to choose the torch "
                            "sweep explicitly.",
                            RuntimeWarning,
                            stacklevel=4,
                        )
                _state["dll"] = dll
    return _state["dll"]  # type: ignore[return-value]


def build_error() -> str | None:
    """Why the compiled path is unavailable (``None`` if it is available or was never tried)."""
    return _state.get("error")  # type: ignore[return-value]


def _chunks(P: int, work: int, lanes: int) -> list[tuple[int, int]]:
    """Split ``P`` matrices into contiguous ranges (multiples of ``lanes``) for the thread pool."""
    n = torch.get_num_threads()
    if n <= 1 or work < _PARALLEL_MIN or lanes * 2 > P:
        return [(0, P)]
    step = -(-P // n)
    step = -(-step // lanes) * lanes
    return [(s, min(P, s + step)) for s in range(0, P, step)]


def _workspace(n: int, vectors: int) -> tuple[torch.Tensor, list[int]]:
    """``n`` scratch areas of ``vectors`` 64-byte-aligned vectors each (the C vector type needs it)."""
    buf = torch.empty(n * vectors * VBYTES + VBYTES, dtype=torch.uint8, device="cpu")
    base = -(-buf.data_ptr() // VBYTES) * VBYTES
    return buf, [base + w * vectors * VBYTES for w in range(n)]


_tls = threading.local()


def _scratch(vectors: int) -> int:
    """This thread's cached aligned scratch area of at least ``vectors`` vectors (grown on demand)."""
    hit = getattr(_tls, "scratch", None)
    if hit is None or hit[2] < vectors:
        buf, (ptr,) = _workspace(1, max(vectors, 5 * 64))
        hit = _tls.scratch = (buf, ptr, max(vectors, 5 * 64))
    return hit[1]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def solve_into(P: int, K: int, N: int, a, b, c, d, x, piv=None) -> bool:
    """Solve into the preallocated ``x``; a, b, c hold (P, N) and d, x hold (P, K, N) elements, each
    C-contiguous (any tensor shape with that memory layout). If ``piv`` (P, N) is given, the reciprocal
    pivots are stored there for :func:`adjoint`. Returns whether x is all finite."""
    fn = _fns[("solve", d.dtype)]
    lanes = _LANES[d.dtype]
    if P * K * N < _PARALLEL_MIN or torch.get_num_threads() <= 1:  # common case: no thread pool
        return bool(
            fn(
                P,
                K,
                N,
                a.data_ptr(),
                b.data_ptr(),
                c.data_ptr(),
                d.data_ptr(),
                x.data_ptr(),
                _ptr(piv),
                _scratch(4 * N),
            )
        )
    chunks = _chunks(P, P * K * N, lanes)
    _buf, work = _workspace(len(chunks), 4 * N)
    es = d.element_size()
    ok = [0] * len(chunks)
    calls = []
    for w, (s, e) in enumerate(chunks):
        m, r = s * N * es, s * K * N * es
        ptrs = (a.data_ptr() + m, b.data_ptr() + m, c.data_ptr() + m, d.data_ptr() + r, x.data_ptr() + r)
        ptrs += (None if piv is None else piv.data_ptr() + m, work[w])

        def call(w=w, n=e - s, p=ptrs):
            ok[w] = fn(n, K, N, *p)

        calls.append(call)
    run_calls(calls)
    return all(ok)


def solve(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """x with A x = d, and whether x is all finite; a, b, c: (P, N), d: (P, K, N), C-contiguous, CPU."""
    x = torch.empty_like(d)
    return x, solve_into(*d.shape, a, b, c, d, x)


def adjoint_into(P: int, K: int, N: int, a, b, c, piv, x, g, lam, ga=None, gb=None, gc=None) -> None:
    """lam = A^-T g and the matrix cotangents ga, gb, gc (those not ``None``) summed over K, written
    into preallocated C-contiguous tensors: a, b, c, piv, ga, gb, gc hold (P, N) elements, x, g, lam
    (P, K, N). ``piv`` (reciprocal pivots from :func:`solve_into`) may be ``None``: then they are
    recomputed from ``b`` (which may be ``None`` when ``piv`` is given)."""
    fn = _fns[("adjoint", g.dtype)]
    outs = (_ptr(ga), _ptr(gb), _ptr(gc))
    if P * K * N < _PARALLEL_MIN or torch.get_num_threads() <= 1:
        fn(
            P,
            K,
            N,
            a.data_ptr(),
            _ptr(b),
            c.data_ptr(),
            _ptr(piv),
            x.data_ptr(),
            g.data_ptr(),
            lam.data_ptr(),
            *outs,
            _scratch(5 * N),
        )
        return
    chunks = _chunks(P, P * K * N, _LANES[g.dtype])
    _buf, work = _workspace(len(chunks), 5 * N)
    es = g.element_size()
    calls = []
    for w, (s, e) in enumerate(chunks):
        m, r = s * N * es, s * K * N * es
        mat = tuple(None if p is None else p + m for p in (a.data_ptr(), _ptr(b), c.data_ptr(), _ptr(piv)))
        vec = (x.data_ptr() + r, g.data_ptr() + r, lam.data_ptr() + r)
        gp = tuple(None if p is None else p + m for p in outs)
        calls.append(lambda n=e - s, p=(*mat, *vec, *gp, work[w]): fn(n, K, N, *p))
    run_calls(calls)


def adjoint(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    x: torch.Tensor,
    g: torch.Tensor,
    matrix_grads: bool | tuple[bool, bool, bool],
    piv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """lam = A^-T g and the cotangents of a, b, c (those flagged in ``matrix_grads``) summed over K."""
    P, K, N = g.shape
    need = (matrix_grads,) * 3 if isinstance(matrix_grads, bool) else tuple(matrix_grads)
    lam = torch.empty_like(g)
    grads = [torch.empty(P, N, dtype=g.dtype, device="cpu") if n else None for n in need]
    adjoint_into(P, K, N, a, b, c, piv, x, g, lam, *grads)
    return lam, grads[0], grads[1], grads[2]
