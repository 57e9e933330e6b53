"""Compiled element-wise kernels of the QG step (CPU fast path, no autograd).

Between its FFTs, one pseudo-spectral step is about a dozen element-wise passes when written with torch
operations (inversion, velocities, background flow, flux products, tendency, AB3 and filter), each one a
kernel launch and a sweep through memory. Here they are three fused C loops, one per stretch between
FFTs, compiled on first use (:mod:`pelagos.core._cbuild`) and called through ``ctypes``:

- ``invert``: ψ̂ = a·q̂ and the velocity spectra û = −il ψ̂/M, v̂ = ik ψ̂/M (1/M of the inverse FFT folded in);
- ``flux``: u ← (u + U) q, v ← v q in grid space;
- ``update``: the tendency lin·ψ̂ − ik FFT(uq) − il FFT(vq), the AB3 combination and the spectral filter.

Complex arrays are passed as interleaved (re, im) pairs. Every kernel does the arithmetic of the torch
path it replaces in the same order, so results agree with it to rounding (the pyqg tests cover both).
``PELAGOS_QG_BACKEND=torch`` disables the kernels; any build failure does too (with the reason in
:func:`build_error`).
"""

from __future__ import annotations

import ctypes
import os
import threading

import torch

from ..core._cbuild import MULTIVERSION_HEADER, build_library, run_calls

_BODY = r"""
/* psi_hat = a . q_hat per wavenumber; u_hat = -i l psi_hat / M, v_hat = i k psi_hat / M.
   qh, ph: (B, nz, S) complex; a: (nz, nz, S); uvh: (B, 2, nz, S) complex; S = nl * nk.
   Row by row (one l at a time) so that every inner loop is a plain vectorisable sweep along k. */
MV void qg_invert_SFX(long B, long nz, long nl, long nk, const REAL *restrict qh, const REAL *restrict a,
                      const REAL *restrict kM, const REAL *restrict lM, REAL *restrict ph, REAL *restrict uvh)
{
    long S = nl * nk;
    for (long b = 0; b < B; b++)
        for (long i = 0; i < nz; i++)
            for (long y = 0; y < nl; y++) {
                long s0 = y * nk;
                const REAL *restrict ai = a + i * nz * S + s0;
                const REAL *restrict q0 = qh + 2 * (b * nz * S + s0);
                REAL *restrict pr = ph + 2 * ((b * nz + i) * S + s0);
                REAL *restrict u = uvh + 2 * (((b * 2) * nz + i) * S + s0);
                REAL *restrict v = uvh + 2 * (((b * 2 + 1) * nz + i) * S + s0);
                for (long x = 0; x < nk; x++) {
                    pr[2 * x] = ai[x] * q0[2 * x];
                    pr[2 * x + 1] = ai[x] * q0[2 * x + 1];
                }
                for (long j = 1; j < nz; j++) {
                    const REAL *restrict aj = ai + j * S, *restrict qj = q0 + 2 * j * S;
                    for (long x = 0; x < nk; x++) {
                        pr[2 * x] += aj[x] * qj[2 * x];
                        pr[2 * x + 1] += aj[x] * qj[2 * x + 1];
                    }
                }
                REAL l = lM[y];
                for (long x = 0; x < nk; x++) {
                    REAL re = pr[2 * x], im = pr[2 * x + 1], k = kM[x];
                    u[2 * x] = l * im;
                    u[2 * x + 1] = -l * re;
                    v[2 * x] = -k * im;
                    v[2 * x + 1] = k * re;
                }
            }
}

/* Flux products in grid space, in place: u <- (u + U_i) q, v <- v q. uv: (B, 2, nz, N); q: (B, nz, N). */
MV void qg_flux_SFX(long B, long nz, long N, REAL *restrict uv, const REAL *restrict q,
                    const REAL *restrict U)
{
    for (long b = 0; b < B; b++)
        for (long i = 0; i < nz; i++) {
            const REAL *restrict qi = q + (b * nz + i) * N;
            REAL *restrict u = uv + ((b * 2) * nz + i) * N, *restrict v = uv + ((b * 2 + 1) * nz + i) * N;
            REAL Ui = U[i];
            for (long n = 0; n < N; n++) {
                u[n] = (u[n] + Ui) * qi[n];
                v[n] = v[n] * qi[n];
            }
        }
}

/* d = lin psi_hat - i k F(uq) - i l F(vq); new = filt (qh + w0 d + w1 p + w2 pp).
   w: 3 weights per trajectory, wstride 0 (one set for all) or 3; unused AB3 levels have weight 0. */
MV void qg_update_SFX(long B, long nz, long nl, long nk, const REAL *restrict qh, const REAL *restrict ph,
                      const REAL *restrict fh, const REAL *restrict p, const REAL *restrict pp,
                      const REAL *restrict lin, const REAL *restrict kk, const REAL *restrict ll,
                      const REAL *restrict filt, const REAL *restrict w, long wstride, REAL *restrict d,
                      REAL *restrict out)
{
    long S = nl * nk;
    for (long b = 0; b < B; b++) {
        REAL w0 = w[b * wstride], w1 = w[b * wstride + 1], w2 = w[b * wstride + 2];
        for (long i = 0; i < nz; i++) {
            long o = 2 * (b * nz + i) * S;
            const REAL *restrict fu = fh + 2 * ((b * 2) * nz + i) * S;
            const REAL *restrict fv = fh + 2 * ((b * 2 + 1) * nz + i) * S;
            const REAL *restrict li = lin + 2 * i * S;
            const REAL *restrict q0 = qh + o, *restrict p0 = ph + o;
            const REAL *restrict a1 = p + o, *restrict a2 = pp + o;
            REAL *restrict dd = d + o, *restrict oo = out + o;
            for (long y = 0; y < nl; y++) {
                REAL l = ll[y];
                const REAL *restrict fl = filt + y * nk;
                long c0 = 2 * y * nk;
                for (long x = 0; x < nk; x++) {
                    long c = c0 + 2 * x;
                    REAL k = kk[x];
                    REAL dr = li[c] * p0[c] - li[c + 1] * p0[c + 1] + k * fu[c + 1] + l * fv[c + 1];
                    REAL di = li[c] * p0[c + 1] + li[c + 1] * p0[c] - k * fu[c] - l * fv[c];
                    dd[c] = dr;
                    dd[c + 1] = di;
                    oo[c] = fl[x] * (q0[c] + w0 * dr + w1 * a1[c] + w2 * a2[c]);
                    oo[c + 1] = fl[x] * (q0[c + 1] + w0 * di + w1 * a1[c + 1] + w2 * a2[c + 1]);
                }
            }
        }
    }
}
"""

_SOURCE = MULTIVERSION_HEADER + "".join(
    _BODY.replace("REAL", r).replace("SFX", x) for r, x in (("double", "f64"), ("float", "f32"))
)
_SUFFIX = {torch.float64: "f64", torch.float32: "f32"}
_PARALLEL_MIN = 1 << 15  # complex values per call below which one thread beats the pool

_lock = threading.Lock()
_state: dict[str, object] = {}
_fns: dict[tuple[str, torch.dtype], ctypes._CFuncPtr] = {}


def _build() -> ctypes.CDLL:
    dll = build_library("qgstep", _SOURCE)
    L, P = ctypes.c_long, ctypes.c_void_p
    for dtype, sfx in _SUFFIX.items():
        for name, types in (
            ("invert", [L] * 4 + [P] * 6),
            ("flux", [L] * 3 + [P] * 3),
            ("update", [L] * 4 + [P] * 10 + [L] + [P] * 2),
        ):
            f = getattr(dll, f"qg_{name}_{sfx}")
            f.argtypes, f.restype = types, None
            _fns[(name, dtype)] = f
    return dll


def kernels() -> ctypes.CDLL | None:
    """The loaded library, or ``None`` if disabled (``PELAGOS_QG_BACKEND=torch``) or not buildable."""
    if os.environ.get("PELAGOS_QG_BACKEND", "auto").lower() == "torch":
        return None
    if "dll" not in _state:
        with _lock:
            if "dll" not in _state:
                dll = None
                try:
                    dll = _build()
                except Exception as exc:  # any failure -> the torch path, reason kept for build_error()
                    _state["error"] = f"{type(exc).__name__}: {exc}"
                _state["dll"] = dll
    return _state["dll"]  # type: ignore[return-value]


def build_error() -> str | None:
    """Why the compiled QG kernels are unavailable (``None`` if available or never tried)."""
    return _state.get("error")  # type: ignore[return-value]


def _launch(f: ctypes._CFuncPtr, B: int, work: int, args) -> None:
    """``f(*args(s, e))`` over trajectories s..e: one direct call, or batch chunks on the thread pool."""
    n = min(B, torch.get_num_threads())
    if n <= 1 or work < _PARALLEL_MIN:
        f(*args(0, B))
        return
    step = -(-B // n)
    run_calls([lambda s=s: f(*args(s, min(B, s + step))) for s in range(0, B, step)])


def invert(qh: torch.Tensor, a: torch.Tensor, kM: torch.Tensor, lM: torch.Tensor, ph, uvh) -> None:
    """ψ̂ and the velocity spectra into ``ph`` (B, nz, nl, nk) and ``uvh`` (B, 2, nz, nl, nk)."""
    B, nz, nl, nk = qh.shape
    S, es = nl * nk, 2 * a.element_size()  # es: bytes per complex value
    fixed = (a.data_ptr(), kM.data_ptr(), lM.data_ptr())
    q0, p0, u0 = qh.data_ptr(), ph.data_ptr(), uvh.data_ptr()

    def args(s: int, e: int) -> tuple:
        o = s * nz * S * es
        return (e - s, nz, nl, nk, q0 + o, *fixed, p0 + o, u0 + 2 * o)

    _launch(_fns[("invert", a.dtype)], B, B * nz * S, args)


def flux(uv: torch.Tensor, q: torch.Tensor, U: torch.Tensor) -> None:
    """In place: ``uv[:, 0] = (uv[:, 0] + U) q`` and ``uv[:, 1] *= q``; uv (B, 2, nz, ny, nx), U (nz,)."""
    B, _, nz, ny, nx = uv.shape
    N, es = ny * nx, uv.element_size()
    u0, q0, U0 = uv.data_ptr(), q.data_ptr(), U.data_ptr()

    def args(s: int, e: int) -> tuple:
        return (e - s, nz, N, u0 + s * 2 * nz * N * es, q0 + s * nz * N * es, U0)

    _launch(_fns[("flux", uv.dtype)], B, B * nz * N // 2, args)


def update(qh, ph, fh, p, pp, lin, kk, ll, filt, w: torch.Tensor, d, out) -> None:
    """Tendency into ``d`` and the filtered AB3 state into ``out`` (both (B, nz, nl, nk) complex).

    ``w``: AB3 weights, (3,) for the whole batch or (B, 3) per trajectory (pyqg's bootstrap levels have
    zero weights for the tendencies they do not use yet)."""
    B, nz, nl, nk = qh.shape
    S, es = nl * nk, 2 * filt.element_size()
    ws = 0 if w.ndim == 1 else 3
    fixed = (lin.data_ptr(), kk.data_ptr(), ll.data_ptr(), filt.data_ptr())
    ptrs = [t.data_ptr() for t in (qh, ph, fh, p, pp, d, out)]
    w0, wes = w.data_ptr(), w.element_size()

    def args(s: int, e: int) -> tuple:
        o, o2 = s * nz * S * es, s * 2 * nz * S * es
        q0, p0, f0, a1, a2, d0, n0 = ptrs
        return (
            e - s, nz, nl, nk, q0 + o, p0 + o, f0 + o2, a1 + o, a2 + o, *fixed,
            w0 + s * ws * wes, ws, d0 + o, n0 + o,
        )  # fmt: skip

    _launch(_fns[("update", filt.dtype)], B, B * nz * S, args)
