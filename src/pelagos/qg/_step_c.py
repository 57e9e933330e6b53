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

/* Flux products in grid space. out == NULL: in place, u <- (u + U_i) q, v <- v q. Otherwise u <- u + U_i
   in place (the autograd step keeps u + U for its backward) and out <- (u, v) q.
   uv, out: (B, 2, nz, N); q: (B, nz, N). */
MV void qg_flux_SFX(long B, long nz, long N, REAL *restrict uv, const REAL *restrict q,
                    const REAL *restrict U, REAL *restrict out)
{
    for (long b = 0; b < B; b++)
        for (long i = 0; i < nz; i++) {
            const REAL *restrict qi = q + (b * nz + i) * N;
            long ou = ((b * 2) * nz + i) * N, ov = ((b * 2 + 1) * nz + i) * N;
            REAL *restrict u = uv + ou, *restrict v = uv + ov;
            REAL Ui = U[i];
            if (!out) {
                for (long n = 0; n < N; n++) {
                    u[n] = (u[n] + Ui) * qi[n];
                    v[n] = v[n] * qi[n];
                }
            } else {
                REAL *restrict fu = out + ou, *restrict fv = out + ov;
                for (long n = 0; n < N; n++) {
                    u[n] = u[n] + Ui;
                    fu[n] = u[n] * qi[n];
                    fv[n] = v[n] * qi[n];
                }
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

/* Adjoint of the update and of the last inverse FFT (QGStep.backward, first stretch):
   gn = filt (gqh + G c2r), gp = w1 gn, gpp = w2 gn (each if wanted), gdd = gd + w0 gn,
   gph = conj(lin) gdd, X = (i k wk gdd, i l wk gdd) (input of the adjoint of the divergence). */
MV void qg_adj_update_SFX(long B, long nz, long nl, long nk, const REAL *restrict gqh, const REAL *restrict G,
                          const REAL *restrict gd, const REAL *restrict c2r, const REAL *restrict filt,
                          const REAL *restrict w, const REAL *restrict lc, const REAL *restrict kk,
                          const REAL *restrict ll, const REAL *restrict wk, REAL *restrict gn,
                          REAL *restrict gp, REAL *restrict gpp, REAL *restrict gdo, REAL *restrict gph,
                          REAL *restrict X, const REAL *restrict ph, REAL *restrict glin)
{
    long S = nl * nk;
    REAL w0 = w[0], w1 = w[1], w2 = w[2];
    for (long b = 0; b < B; b++)
        for (long i = 0; i < nz; i++) {
            long o = 2 * (b * nz + i) * S;
            const REAL *restrict li = lc + 2 * i * S;
            REAL *restrict x0 = X + 2 * ((b * 2) * nz + i) * S;
            REAL *restrict x1 = X + 2 * ((b * 2 + 1) * nz + i) * S;
            for (long y = 0; y < nl; y++) {
                REAL l = ll[y];
                long c0 = 2 * y * nk;
                for (long x = 0; x < nk; x++) {
                    long c = c0 + 2 * x, r = o + c, s_ = y * nk + x;
                    REAL nr = (gqh[r] + G[r] * c2r[x]) * filt[s_];
                    REAL ni = (gqh[r + 1] + G[r + 1] * c2r[x]) * filt[s_];
                    gn[r] = nr;
                    gn[r + 1] = ni;
                    REAL dr = gd[r] + w0 * nr, di = gd[r + 1] + w0 * ni;
                    gdo[r] = dr;
                    gdo[r + 1] = di;
                    gph[r] = li[c] * dr - li[c + 1] * di;
                    gph[r + 1] = li[c] * di + li[c + 1] * dr;
                    REAL kw = kk[x] * wk[x], lw = l * wk[x];
                    x0[c] = -kw * di;
                    x0[c + 1] = kw * dr;
                    x1[c] = -lw * di;
                    x1[c + 1] = lw * dr;
                }
            }
            if (gp)
                for (long c = 0; c < 2 * S; c++) gp[o + c] = w1 * gn[o + c];
            if (gpp)
                for (long c = 0; c < 2 * S; c++) gpp[o + c] = w2 * gn[o + c];
            if (glin) { /* gradient of lin summed over the batch: sum_b conj(psi_hat) gdd */
                REAL *restrict gl = glin + 2 * i * S;
                const REAL *restrict pr = ph + o, *restrict gq = gdo + o;
                if (b == 0)
                    for (long c = 0; c < 2 * S; c += 2) {
                        gl[c] = pr[c] * gq[c] + pr[c + 1] * gq[c + 1];
                        gl[c + 1] = pr[c] * gq[c + 1] - pr[c + 1] * gq[c];
                    }
                else
                    for (long c = 0; c < 2 * S; c += 2) {
                        gl[c] += pr[c] * gq[c] + pr[c + 1] * gq[c + 1];
                        gl[c + 1] += pr[c] * gq[c + 1] - pr[c + 1] * gq[c];
                    }
            }
        }
}

/* Adjoint of the flux products: gq = gf_u (u + U) + gf_v v (if wanted), then gf <- gf q in place. */
MV void qg_adj_flux_SFX(long B, long nz, long N, REAL *restrict gf, const REAL *restrict q,
                        const REAL *restrict uvU, REAL *restrict gq)
{
    for (long b = 0; b < B; b++)
        for (long i = 0; i < nz; i++) {
            long ou = ((b * 2) * nz + i) * N, ov = ((b * 2 + 1) * nz + i) * N;
            const REAL *restrict qi = q + (b * nz + i) * N, *restrict u = uvU + ou, *restrict v = uvU + ov;
            REAL *restrict gu = gf + ou, *restrict gv = gf + ov;
            if (gq) {
                REAL *restrict g = gq + (b * nz + i) * N;
                for (long n = 0; n < N; n++) g[n] = gu[n] * u[n] + gv[n] * v[n];
            }
            for (long n = 0; n < N; n++) {
                gu[n] = gu[n] * qi[n];
                gv[n] = gv[n] * qi[n];
            }
        }
}

/* Adjoint of the velocities and the inversion: gph += (i l/(M wk)) Gu + (-i k/(M wk)) Gv (in place),
   then gqh_j = gn_j + sum_i a_ij gph_i. */
MV void qg_adj_invert_SFX(long B, long nz, long nl, long nk, REAL *restrict gph, const REAL *restrict Guv,
                          const REAL *restrict kM, const REAL *restrict lM, const REAL *restrict wk,
                          const REAL *restrict a, const REAL *restrict gn, REAL *restrict gqh)
{
    long S = nl * nk;
    for (long b = 0; b < B; b++) {
        for (long i = 0; i < nz; i++) {
            long o = 2 * (b * nz + i) * S;
            const REAL *restrict gu = Guv + 2 * ((b * 2) * nz + i) * S;
            const REAL *restrict gv = Guv + 2 * ((b * 2 + 1) * nz + i) * S;
            REAL *restrict g = gph + o;
            for (long y = 0; y < nl; y++) {
                REAL l = lM[y];
                long c0 = 2 * y * nk;
                for (long x = 0; x < nk; x++) {
                    long c = c0 + 2 * x;
                    REAL cu = l / wk[x], cv = kM[x] / wk[x];
                    REAL r = g[c] + -cu * gu[c + 1], m = g[c + 1] + cu * gu[c];
                    g[c] = r + cv * gv[c + 1];
                    g[c + 1] = m + -cv * gv[c];
                }
            }
        }
        for (long j = 0; j < nz; j++) {
            long o = 2 * (b * nz + j) * S;
            for (long c = 0; c < 2 * S; c++) gqh[o + c] = gn[o + c];
            for (long i = 0; i < nz; i++) {
                const REAL *restrict aij = a + (i * nz + j) * S, *restrict g = gph + 2 * (b * nz + i) * S;
                for (long s_ = 0; s_ < S; s_++) {
                    gqh[o + 2 * s_] += aij[s_] * g[2 * s_];
                    gqh[o + 2 * s_ + 1] += aij[s_] * g[2 * s_ + 1];
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
            ("flux", [L] * 3 + [P] * 4),
            ("adj_update", [L] * 4 + [P] * 18),
            ("adj_flux", [L] * 3 + [P] * 4),
            ("adj_invert", [L] * 4 + [P] * 8),
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


def flux(uv: torch.Tensor, q: torch.Tensor, U: torch.Tensor, out: torch.Tensor | None = None) -> None:
    """``uv[:, 0] += U``, then the products (u, v)·q into ``out``, or in place into ``uv`` if ``out`` is None;
    uv, out (B, 2, nz, ny, nx), q (B, nz, ny, nx), U (nz,)."""
    B, _, nz, ny, nx = uv.shape
    N, es = ny * nx, uv.element_size()
    u0, q0, U0 = uv.data_ptr(), q.data_ptr(), U.data_ptr()
    f0 = None if out is None else out.data_ptr()

    def args(s: int, e: int) -> tuple:
        o = s * 2 * nz * N * es
        return (e - s, nz, N, u0 + o, q0 + s * nz * N * es, U0, None if f0 is None else f0 + o)

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


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def adj_update(gqh, G, gd, c2r, filt, w, lin_conj, kk, ll, wk, gn, gp, gpp, gdo, gph, X, ph=None, glin=None):
    """First stretch of the adjoint step (see the C comment); ``gp``/``gpp`` may be None (not wanted).
    Spectral arrays (B, nz, nl, nk) complex, ``X`` (B, 2, nz, nl, nk); ``w`` the step's 3 AB3 weights.
    With ``ph`` and ``glin`` (nz, nl, nk): also the gradient of the linear operator, Σ_B conj(ψ̂)·d̄
    (then the batch is not split over threads: the sum runs over all of it in one call)."""
    B, nz, nl, nk = gqh.shape
    S, es = nl * nk, 2 * filt.element_size()
    fixed = tuple(t.data_ptr() for t in (c2r, filt, w, lin_conj, kk, ll, wk))
    spec = [_ptr(t) for t in (gqh, G, gd)]
    outs = [_ptr(t) for t in (gn, gp, gpp, gdo, gph)]
    x0, ph0, gl0 = X.data_ptr(), _ptr(ph), _ptr(glin)

    def args(s: int, e: int) -> tuple:
        o = s * nz * S * es
        sh = [None if p is None else p + o for p in outs]
        return (e - s, nz, nl, nk, *(p + o for p in spec), *fixed, *sh, x0 + 2 * o, ph0, gl0)

    _launch(_fns[("adj_update", filt.dtype)], B, 0 if glin is not None else B * nz * S, args)


def adj_flux(gf: torch.Tensor, q: torch.Tensor, uvU: torch.Tensor, gq: torch.Tensor | None) -> None:
    """``gq = gf_u (u + U) + gf_v v`` (if ``gq`` is given), then ``gf *= q`` in place."""
    B, _, nz, ny, nx = gf.shape
    N, es = ny * nx, gf.element_size()
    g0, q0, u0, gq0 = gf.data_ptr(), q.data_ptr(), uvU.data_ptr(), _ptr(gq)

    def args(s: int, e: int) -> tuple:
        o, oq = s * 2 * nz * N * es, s * nz * N * es
        return (e - s, nz, N, g0 + o, q0 + oq, u0 + o, None if gq0 is None else gq0 + oq)

    _launch(_fns[("adj_flux", gf.dtype)], B, B * nz * N // 2, args)


def adj_invert(gph, Guv, kM, lM, wk, a, gn, gqh) -> None:
    """``gph`` += the velocities' adjoint of ``Guv`` (in place); ``gqh = gn + aᵀ gph``."""
    B, nz, nl, nk = gph.shape
    S, es = nl * nk, 2 * a.element_size()
    fixed = tuple(t.data_ptr() for t in (kM, lM, wk, a))
    p0, u0, n0, q0 = gph.data_ptr(), Guv.data_ptr(), gn.data_ptr(), gqh.data_ptr()

    def args(s: int, e: int) -> tuple:
        o = s * nz * S * es
        return (e - s, nz, nl, nk, p0 + o, u0 + 2 * o, *fixed, n0 + o, q0 + o)

    _launch(_fns[("adj_invert", a.dtype)], B, B * nz * S, args)
