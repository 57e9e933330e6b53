"""The C source of the fused column kernel (:mod:`pelagos.column.fused`): a fixed skeleton (GOTM's sinking,
the implicit diffusion, GOTM's light, Euler, interval sums) around the generated biology of one model.

Layout inside the kernel: a block of ``W`` columns (one SIMD vector) at a time, every profile stored
layer-major, ``x[k*W + j]`` (layer ``k``, column ``j`` of the block), so that each layer's work is one vector
operation across the block's columns; the block stays in these local arrays for all the steps of a call.
"""

from __future__ import annotations

from typing import Any

from ..core import _cbuild

_HEAD = """
#include <math.h>
#include <stddef.h>
{mv}
typedef {real} real;
#define W {W}
#define NV {NV}
#define NM {NM}
#define NR {NR}
#define PC {PC}
#define USE_SWR {USE_SWR}
#define ITMAX {ITMAX}
#ifdef PELAGOS_MVEC
#pragma omp declare simd notinbranch
extern {real} {exp}({real});
#endif
#define EXP {exp}
#define LOG {log}
#define SQRT {sqrt}
#define FABS {fabs}
#define TANH {tanh}
#define POW {pow}
#define SIMD _Pragma("omp simd")
"""

_BODY = """
MV int pelagos_fused_column(int B, int nz, int nsteps, double dt_, void **state, real *out,
                             void **bp, const real *rowbuf, const real *pre,
                             const int *nsub, int nmeans, double *sums, int lo, int hi,
                             void **cphys, const long *cstride)
{{
    const real dt = (real)dt_;
    int bad = 0;
#if PC
    /* physics per column: each step's rows of the block's columns, layer-major like the state, and their
       factorisation per column */
    real RL[NR][nz * W], MI[nz * W], CP[nz * W], PRE_[W];
    int NSUB[NM > 0 ? NM : 1][W];
#define HK(k) RL[0][(k) * W + j]
#define MZK(k) RL[4][(k) * W + j]
#define SWRK(k) RL[5][(k) * W + j]
#define PRE PRE_[j]
#else
    /* the tridiagonal factorisation of every step (one matrix for all columns and tracers) */
{factor}#define HK(k) h[k]
#define MZK(k) mz[k]
#define SWRK(k) swr_s[k]
#define PRE pre_s
#endif
{bdecl}
    real Y[NV][nz * W], KB[nz * W], PAR[nz * W], SWR[nz * W], KPAR[nz * W], FL[nz * W];
    double SUM[nmeans > 0 ? nmeans : 1][nz * W];
    for (int b0 = lo; b0 < hi; b0 += W) {{
        const int nb = hi - b0 < W ? hi - b0 : W;
        for (int v = 0; v < NV; v++)
            for (int j = 0; j < W; j++) {{
                const real *src = (const real *)state[v] + ((size_t)b0 + (j < nb ? j : nb - 1)) * nz;
                for (int k = 0; k < nz; k++) Y[v][k * W + j] = src[k];
            }}
        for (int q = 0; q < nmeans; q++)
            for (int kj = 0; kj < nz * W; kj++) SUM[q][kj] = 0.0;
{bblock}
        for (int s = 0; s < nsteps; s++) {{
{bstep}
#if PC
            /* this step's physics of the block's columns (GOTM's formulas, per lane): layers h, diffusivity
               nuh, surface I_0 and the moving tracers' velocities -> the rows the shared case precomputes */
            {{
                const real *Hs = (const real *)cphys[0] + (size_t)s * cstride[0];
                const real *Ns = (const real *)cphys[1] + (size_t)s * cstride[1];
                const real *Is = (const real *)cphys[2] + (size_t)s * cstride[2];
                const long hc = cstride[3], nc = cstride[4], ic = cstride[5];
                for (int j = 0; j < W; j++) {{
                    const size_t c = (size_t)b0 + (j < nb ? j : nb - 1);
                    for (int k = 0; k < nz; k++) RL[0][k * W + j] = Hs[c * hc + k];
                    for (int k = 0; k < nz; k++) FL[k * W + j] = Ns[c * nc + k];  /* nuh at interface k */
                    PRE_[j] = Is[c * ic];
                }}
                /* layer by layer, each a vector over the block's columns */
                real zc[W], i0[W];
                SIMD for (int j = 0; j < W; j++) {{
                    i0[j] = PRE_[j];
                    PRE_[j] = i0[j] * ((real)1 - (real){A});
                    zc[j] = (real)0.5 * RL[0][(nz - 1) * W + j];
                }}
                for (int k = nz - 1; k >= 0; k--)
                    SIMD for (int j = 0; j < W; j++) {{
                        const int kj = k * W + j;
                        if (k < nz - 1) zc[j] = zc[j] + (real)0.5 * (RL[0][kj] + RL[0][kj + W]);
                        RL[4][kj] = -zc[j] / (real){g2};
                        RL[5][kj] = USE_SWR ? i0[j] * (real){A} * EXP(-zc[j] / (real){g1}) : (real)0;
                    }}
                for (int k = 0; k < nz; k++)
                    SIMD for (int j = 0; j < W; j++) {{
                        const int kj = k * W + j;
                        const real gu =
                            k < nz - 1 ? (real)2 * dt * FL[kj + W] / (RL[0][kj] + RL[0][kj + W]) : 0;
                        const real gd = k > 0 ? (real)2 * dt * FL[kj] / (RL[0][kj - W] + RL[0][kj]) : 0;
                        const real cc = gu / RL[0][kj], aa = gd / RL[0][kj];
                        RL[1][kj] = -aa;
                        RL[2][kj] = (real)1 + aa + cc;
                        RL[3][kj] = -cc;
                    }}
                for (int m = 0; m < NM; m++) {{
                    const int bw = 6 + 7 * m;
                    const real *Ws = (const real *)cphys[3 + m] + (size_t)s * cstride[6 + m];
                    const long wc = cstride[6 + NM + m];
                    for (int j = 0; j < W; j++) {{
                        const size_t c = (size_t)b0 + (j < nb ? j : nb - 1);
                        for (int k = 0; k < nz; k++) FL[k * W + j] = Ws[c * wc + k];  /* centre velocity */
                    }}
                    double cmax[W];
                    real fac[W], itr[W];
                    for (int j = 0; j < W; j++) cmax[j] = 0.0;
                    for (int i = 0; i < nz - 1; i++)
                        SIMD for (int j = 0; j < W; j++) {{
                            const int ij = i * W + j;
                            const real om = RL[0][ij + W] / (RL[0][ij] + RL[0][ij + W]);
                            const real wi = om * FL[ij] + ((real)1 - om) * FL[ij + W];
                            RL[bw][ij] = wi;
                            const double cr = fabs((double)wi) * (double)dt_ /
                                              (0.5 * ((double)RL[0][ij] + (double)RL[0][ij + W]));
                            cmax[j] = cr > cmax[j] ? cr : cmax[j];
                        }}
                    for (int j = 0; j < W; j++) {{
                        int it = (int)floor(cmax[j]) + 1;
                        it = it < ITMAX ? it : ITMAX;
                        bad |= (it == ITMAX) << 1;  /* sub-steps clipped: the caller warns, as GOTM */
                        NSUB[m][j] = it;
                        itr[j] = (real)it;
                        fac[j] = (real)1 / itr[j] * dt;
                    }}
                    for (int i = 0; i < nz - 1; i++)
                        SIMD for (int j = 0; j < W; j++) {{
                            const int ij = i * W + j;
                            const real hs = (real)0.5 * (RL[0][ij] + RL[0][ij + W]);
                            const real cr = FABS(RL[bw][ij]) / itr[j] * dt / hs;
                            const real x = ((real)1 - (real)2 * cr) / (real)6;
                            RL[bw + 1][ij] = (real)1 - cr;
                            RL[bw + 2][ij] = (real)0.5 + x;
                            RL[bw + 3][ij] = (real)0.5 - x;
                            RL[bw + 4][ij] = (real)2 / ((real)1 - cr);
                            RL[bw + 5][ij] = (real)2 / (cr + (real)1e-10);
                        }}
                    for (int k = 0; k < nz; k++)
                        SIMD for (int j = 0; j < W; j++) RL[bw + 6][k * W + j] = fac[j] / RL[0][k * W + j];
                }}
            }}
            SIMD for (int j = 0; j < W; j++) {{
                MI[j] = (real)1 / RL[2][j];
                CP[j] = RL[3][j] * MI[j];
            }}
            for (int k = 1; k < nz; k++)
                SIMD for (int j = 0; j < W; j++) {{
                    const int kj = k * W + j;
                    MI[kj] = (real)1 / (RL[2][kj] - RL[1][kj] * CP[kj - W]);
                    CP[kj] = RL[3][kj] * MI[kj];
                }}
            /* 2. sinking / rising, per column: direction, Courant number and sub-steps per lane */
            for (int m = 0; m < NM; m++) {{
                const int bw = 6 + 7 * m;
                real *y = Y[m];
                int itmax = 0;
                for (int j = 0; j < W; j++) itmax = NSUB[m][j] > itmax ? NSUB[m][j] : itmax;
                for (int it = 0; it < itmax; it++) {{
                    for (int i = 0; i < nz - 1; i++) {{
                        const int iup = i > 0 ? i - 1 : 0, idn = i + 2 < nz ? i + 2 : nz - 1;
                        SIMD for (int j = 0; j < W; j++) {{
                            const int ij = i * W + j;
                            const real wi = RL[bw][ij];
                            const int up = wi > 0;
                            const real ylo = y[ij], yhi = y[ij + W];
                            const real ycv = up ? ylo : yhi, ydv = up ? yhi : ylo;
                            const real yuv = up ? y[iup * W + j] : y[idn * W + j];
                            const real c1 = RL[bw + 1][ij], a1 = RL[bw + 2][ij], a2 = RL[bw + 3][ij];
                            const real t1 = RL[bw + 4][ij], ce = RL[bw + 5][ij];
                            (void)c1; (void)a1; (void)a2; (void)t1; (void)ce; (void)ydv; (void)yuv;
{face_pc}
                            FL[ij] = wi * face;
                        }}
                    }}
                    for (int k = 0; k < nz; k++) {{
                        SIMD for (int j = 0; j < W; j++) {{
                            const real upper = k < nz - 1 ? FL[k * W + j] + (real)0 : (real)0;
                            const real lower = k > 0 ? FL[(k - 1) * W + j] + (real)0 : (real)0;
                            const real yn = y[k * W + j] - RL[bw + 6][k * W + j] * (upper - lower);
                            y[k * W + j] = it < NSUB[m][j] ? yn : y[k * W + j];
                        }}
                    }}
                }}
            }}
            /* 3. implicit diffusion with each column's factorisation, the tracers' sweeps interleaved */
            for (int v = 0; v < NV; v++) SIMD for (int j = 0; j < W; j++) Y[v][j] = Y[v][j] * MI[j];
            for (int k = 1; k < nz; k++)
                for (int v = 0; v < NV; v++) {{
                    real *y = Y[v];
                    SIMD for (int j = 0; j < W; j++) {{
                        const int kj = k * W + j;
                        y[kj] = (y[kj] - RL[1][kj] * y[kj - W]) * MI[kj];
                    }}
                }}
            for (int k = nz - 2; k >= 0; k--)
                for (int v = 0; v < NV; v++) {{
                    real *y = Y[v];
                    SIMD for (int j = 0; j < W; j++) {{
                        const int kj = k * W + j;
                        y[kj] = y[kj] - CP[kj] * y[kj + W];
                    }}
                }}
#else
            const real *R = rowbuf + (size_t)s * NR * nz;
            const real *h = R, *lw = R + nz, *mz = R + 4 * nz, *swr_s = R + 5 * nz;
            const real pre_s = pre[s];
{transport}#endif
{repair}
            for (int pass = 0; pass < (nmeans > 0 ? 2 : 1); pass++) {{
                /* light: GOTM's sum of half-layer extinctions from the surface down */
{light}                if (pass == 0) {{
                    /* sources and the Euler update, cell by cell */
                    for (int k = 0; k < nz; k++) {{
                        SIMD for (int j = 0; j < W; j++) {{
                            const int kj = k * W + j;
{src}
                        }}
                    }}
                }} else {{
                    /* the interval means: fields after the step, summed in float64 */
                    for (int k = 0; k < nz; k++) {{
                        SIMD for (int j = 0; j < W; j++) {{
                            const int kj = k * W + j;
{diag}
                        }}
                    }}
                }}
            }}
        }}
        for (int v = 0; v < NV; v++)
            for (int j = 0; j < nb; j++) {{
                real *dst = out + ((size_t)v * B + b0 + j) * nz;
                for (int k = 0; k < nz; k++) {{
                    const real x = Y[v][k * W + j];
                    bad |= x - x != (real)0;  /* NaN or Inf (bit 0): the caller raises, naming the variable */
                    dst[k] = x;
                }}
            }}
        for (int q = 0; q < nmeans; q++)
            for (int j = 0; j < nb; j++) {{
                double *dst = sums + ((size_t)q * B + b0 + j) * nz;
                for (int k = 0; k < nz; k++) dst[k] = SUM[q][k * W + j];
            }}
    }}
    return bad;
}}
"""

# GOTM's sinking of the moving tracers with shared physics rows (forward, and the adjoint's recomputation,
# which keeps each sub-step's input: {save_sk}), then the implicit diffusion of {nv} profiles with the step's
# factorisation; the factorisation itself
_SINKING = """\
            /* 2. sinking / rising of the moving tracers (GOTM adv_center, flux boundaries closed) */
            for (int m = 0; m < NM; m++) {{
                const real *w = R + (6 + 7 * m) * nz, *omc = w + nz, *xp = w + 2 * nz, *xm = w + 3 * nz;
                const real *two_omc = w + 4 * nz, *ceps = w + 5 * nz, *fih = w + 6 * nz;
                real *y = Y[m];
                for (int it = 0; it < nsub[s * NM + m]; it++) {{
{save_sk}                    for (int i = 0; i < nz - 1; i++) {{
                        const int up = w[i] > 0;
                        const real *yc = y + (up ? i : i + 1) * W, *yd = y + (up ? i + 1 : i) * W;
                        const int iu = up ? (i > 0 ? i - 1 : 0) : (i + 2 < nz ? i + 2 : nz - 1);
                        const real *yu = y + iu * W;
                        const real wi = w[i], c1 = omc[i], a1 = xp[i], a2 = xm[i];
                        const real t1 = two_omc[i], ce = ceps[i];
                        (void)c1; (void)a1; (void)a2; (void)t1; (void)ce;
                        SIMD for (int j = 0; j < W; j++) {{
{face}
                            FL[i * W + j] = wi * face;
                        }}
                    }}
                    for (int k = 0; k < nz; k++) {{
                        SIMD for (int j = 0; j < W; j++) {{
                            const real upper = k < nz - 1 ? FL[k * W + j] + (real)0 : (real)0;
                            const real lower = k > 0 ? FL[(k - 1) * W + j] + (real)0 : (real)0;
                            y[k * W + j] = y[k * W + j] - fih[k] * (upper - lower);
                        }}
                    }}
                }}
            }}
"""
_DIFFUSION = """\
            /* 3. implicit diffusion, the tracers' sweeps interleaved: their recurrences overlap */
            {{
                const real m0 = mi[s][0];
                for (int v = {v0}; v < {nv}; v++) SIMD for (int j = 0; j < W; j++) Y[v][j] = Y[v][j] * m0;
                for (int k = 1; k < nz; k++) {{
                    const real l = lw[k], mk = mi[s][k];
                    for (int v = {v0}; v < {nv}; v++) {{
                        real *y = Y[v];
                        SIMD for (int j = 0; j < W; j++)
                            y[k * W + j] = (y[k * W + j] - l * y[(k - 1) * W + j]) * mk;
                    }}
                }}
                for (int k = nz - 2; k >= 0; k--) {{
                    const real ck = cp[s][k];
                    for (int v = {v0}; v < {nv}; v++) {{
                        real *y = Y[v];
                        SIMD for (int j = 0; j < W; j++)
                            y[k * W + j] = y[k * W + j] - ck * y[(k + 1) * W + j];
                    }}
                }}
            }}
"""
_FACTOR = """    real cp[nsteps][nz], mi[nsteps][nz];
    for (int s = 0; s < nsteps; s++) {{
        const real *R = rowbuf + (size_t)s * NR * nz;
        const real *l = R + nz, *d = R + 2 * nz, *u = R + 3 * nz;
        mi[s][0] = (real)1 / d[0];
        cp[s][0] = u[0] * mi[s][0];
        for (int k = 1; k < nz; k++) {{
            mi[s][k] = (real)1 / (d[k] - l[k] * cp[s][k - 1]);
            cp[s][k] = u[k] * mi[s][k];
        }}
    }}
"""


def _transport(face: str, nv: str = "NV", save_sk: str = "") -> str:
    """The C of the shared-physics sinking (with the limiter's ``face``) and the diffusion of ``nv``
    profiles."""
    return _SINKING.format(face=face, save_sk=save_sk) + _DIFFUSION.format(v0=0, nv=nv)


# GOTM's light: the extinction of every cell, then the half-layer extinctions summed from the surface down
_LIGHT = """            for (int k = 0; k < nz; k++) {{
                SIMD for (int j = 0; j < W; j++) {{
                    const int kj = k * W + j;
{ext}
                }}
            }}
            {{
                double acc[W];
                for (int j = 0; j < W; j++) acc[j] = 0.0;
                for (int k = nz - 1; k >= 0; k--) {{
                    SIMD for (int j = 0; j < W; j++) {{
                        const int kj = k * W + j;
                        const real half = KB[kj] * HK(k) / (real)2;
                        acc[j] += half;
                        const real at = (real)acc[j];
                        acc[j] += half;
                        PAR[kj] = PRE * EXP(MZK(k) - at);
                        SWR[kj] = PAR[kj] + SWRK(k);
                        KPAR[kj] = (real){inv_g2} + KB[kj];
                    }}
                }}
            }}
"""

_SAVE_SK = """                    if (save) {
                        real *sk = SK + ((size_t)m * maxsub + it) * nz * W;
                        for (int kj = 0; kj < nz * W; kj++) sk[kj] = y[kj];
                    }
"""

_FACES = {
    "P2_PDM": ("const real r2 = r * ce, m2 = phi < t1 ? phi : t1; const real lim = r2 < m2 ? r2 : m2;"),
    "SUPERBEE": (
        "const real m1 = (real)2 * r < (real)1 ? (real)2 * r : (real)1, m2 = r < (real)2 ? r : (real)2;"
        " const real lim = m1 > m2 ? m1 : m2;"
    ),
    "MUSCL": (
        "const real m2 = (real)0.5 * ((real)1 + r) < (real)2 ? (real)0.5 * ((real)1 + r) : (real)2;"
        " const real lim = (real)2 * r < m2 ? (real)2 * r : m2;"
    ),
}


def _face(method: str, yc: str = "yc[j]", yd: str = "yd[j]", yu: str = "yu[j]") -> str:
    pad = " " * 28
    if method == "UPSTREAM":
        return pad + f"const real face = {yc};"
    lines = [
        f"const real df = {yd} - {yc}, dfu = {yc} - {yu};",
        "const int mono = df * dfu > 0;",
        "const real r = dfu / (mono ? df : (real)1);",
        "const real phi = a1 + a2 * r;",
        _FACES[method],
        f"const real face = mono ? {yc} + (real)0.5 * lim * c1 * df : {yc};",
    ]
    return "\n".join(pad + x for x in lines)


def _bound_loads(
    kinds: list[str], ptr: str = "bp", pre: str = "b", only: Any = None
) -> tuple[list, list, list]:
    """C declarations that read the boundary values of the kinds (``"sP"``, ``"fF"``, ...) from the pointer
    array ``ptr`` into ``<pre>s<i>`` (scalar), ``<pre>r<i>[k]`` (per layer), ``<pre>c<i>[j]`` (per column of
    the block), ``<pre>f<i>[kj]``: once per call, per block or per step. ``only``: the indices to read."""
    bdecl, bblock, bstep = [], [], []
    col = "(j < nb ? j : nb - 1)"
    for i, kind in enumerate(kinds):
        if only is not None and i not in only:
            continue
        shape, when = kind[0], kind[1]
        bdecl.append(f"    const real *{ptr}{i} = (const real *){ptr}[{i}];")
        if shape == "s":
            if when == "P":
                bdecl.append(f"    const real {pre}s{i} = {ptr}{i}[0];")
            else:
                bstep.append(f"            const real {pre}s{i} = {ptr}{i}[s];")
        elif shape == "r":
            off = "0" if when == "P" else "(size_t)s * nz"
            bstep.append(f"            const real *{pre}r{i} = {ptr}{i} + {off};")
        elif shape == "c":
            off = "" if when == "P" else "(size_t)s * B + "
            tgt = bblock if when == "P" else bstep
            ind = " " * (8 if when == "P" else 12)
            tgt.append(f"{ind}real {pre}c{i}[W];")
            tgt.append(f"{ind}for (int j = 0; j < W; j++) {pre}c{i}[j] = {ptr}{i}[{off}b0 + {col}];")
        else:
            off = "" if when == "P" else "(size_t)s * B * nz + "
            tgt = bblock if when == "P" else bstep
            ind = " " * (8 if when == "P" else 12)
            tgt.append(f"{ind}real {pre}f{i}[nz * W];")
            tgt.append(
                f"{ind}for (int j = 0; j < W; j++) for (int k = 0; k < nz; k++) "
                f"{pre}f{i}[k * W + j] = {ptr}{i}[{off}((size_t)b0 + {col}) * nz + k];"
            )
    return bdecl, bblock, bstep


def _repair(plan: Any, stmt: str) -> list[str]:
    """One C loop over the cells per repaired variable (``repair: true``, a declared minimum): ``stmt`` with
    ``{v}`` its index in the kernel's order, ``{t}`` its tangent's (``v + NV``), ``{lo}`` the minimum."""
    if not plan.model.repair:
        return []
    order, nv, out = plan.order, len(plan.order), []
    for q in order:
        lo = plan.model._minimum.get(q)
        if lo is not None:
            v = order.index(q)
            body = stmt.format(v=v, t=nv + v, lo=f"(real){float(lo)!r}")
            out.append(f"            for (int kj = 0; kj < nz * W; kj++) {body}")
    return out


def kernel_source(plan: Any) -> str:
    """The whole C file for ``plan`` (a :class:`pelagos.column.fused._Plan` with its boundary kinds)."""
    import torch

    from .advection import ITMAX, _method_name

    f32 = plan.dtype == torch.float32
    suffix = "f" if f32 else ""
    nm = len(plan.moving)
    head = _HEAD.format(
        mv=_cbuild.MULTIVERSION_HEADER,
        real="float" if f32 else "double",
        W=16 if f32 else 8,
        NV=len(plan.order),
        NM=nm,
        NR=6 + 7 * nm,
        PC=1 if plan.per_column else 0,
        USE_SWR=1 if plan.uses_swr else 0,
        ITMAX=ITMAX,
        exp="exp" + suffix,
        log="log" + suffix,
        sqrt="sqrt" + suffix,
        fabs="fabs" + suffix,
        tanh="tanh" + suffix,
        pow="pow" + suffix,
    )
    bdecl, bblock, bstep = _bound_loads(plan.kinds)
    pad = " " * 24
    order = plan.order
    ext = plan.emit([plan.k_node], ["KB[kj]"], pad)
    rt = [f"const real R{i}" for i in range(len(plan.rate_nodes))]
    src = plan.emit(plan.rate_nodes, rt, pad + "    ")
    upd = [
        f"{pad}    Y[{order.index(q)}][kj] = Y[{order.index(q)}][kj] + dt * R{i};"
        for i, q in enumerate(plan.rate_names)
    ]
    # the interval means asked for (generated for this selection: straight-line, vectorised)
    sel = [plan.mean_sources[q] for q in plan.means]
    dnodes = [plan.diag_nodes[i] for kind, i in sel if kind == "diag"]
    dnames = [f"const real DG{i}" for kind, i in sel if kind == "diag"]
    diag = [plan.emit(dnodes, dnames, pad + "    ")] if dnodes else []
    for q, (kind, i) in enumerate(sel):
        x = {"state": f"Y[{i}][kj]", "par": "PAR[kj]", "diag": f"DG{i}"}[kind]
        diag.append(f"{pad}    SUM[{q}][kj] += (double){x};")
    rep = _repair(plan, "Y[{v}][kj] = Y[{v}][kj] < {lo} ? {lo} : Y[{v}][kj];")
    body = _BODY.format(
        bdecl="\n".join(bdecl),
        bblock="\n".join(bblock),
        bstep="\n".join(bstep),
        factor=_FACTOR.format(),
        transport=_transport(_face(_method_name(plan.model.sinking_method))),
        light=_LIGHT.format(ext=ext, inv_g2=repr(1.0 / plan.model.g2)),
        face_pc=_face(_method_name(plan.model.sinking_method), "ycv", "ydv", "yuv"),
        repair="\n".join(rep),
        src=src + "\n" + "\n".join(upd),
        diag="\n".join(diag),
        A=repr(plan.model.A),
        g1=repr(plan.model.g1),
        g2=repr(plan.model.g2),
    )
    if plan.adjoint is not None:
        body += _adjoint_source(plan, bdecl, bblock, bstep, rep, ext, src + "\n" + "\n".join(upd))
    if plan.tangent_bounds is not None:
        body += "#include <stdlib.h>\n" + _tangent_source(plan, bdecl, bblock, bstep, ext)
    return head + body


def _adjoint_source(plan: Any, bdecl: list, bblock: list, bstep: list, rep: list, ext: str, src: str) -> str:
    """The C of ``pelagos_fused_column_adj`` (shared physics): see :data:`_ADJ_BODY`."""
    from .advection import _method_name

    pad = " " * 24
    order = plan.order
    method = _method_name(plan.model.sinking_method)
    cells = [f"G[{order.index(q)}][kj]" for q in plan.model.interior] + ["GPAR[kj]", "GSWR[kj]", "GKPAR[kj]"]
    seeds = [f"dt * G[{order.index(q)}][kj]" for q in plan.rate_names]
    need, phys = set(plan.adjoint[0]), plan.adjoint[1]  # the boundary values whose adjoint is passed on
    src_vjp = plan.emit_vjp(plan.rate_nodes, seeds, cells, pad, need)
    ext_vjp = plan.emit_vjp([plan.k_node], ["GKB[kj]"], cells, pad, need)
    gdecl = [f"    double *gb{i} = (double *)gbp[{i}];" for i in sorted(need)]
    gdecl += [f"    double GB{i}[nz * W];" for i in sorted(need)]
    gdecl += [f"    for (int kj = 0; kj < nz * W; kj++) GB{i}[kj] = 0.0;" for i in sorted(need)]
    flush, flush_p = [], []  # per step (forcing-dependent values), per block (parameter values)
    for i, kind in enumerate(plan.kinds):
        if i not in need:
            continue
        shape, when = kind[0], kind[1]
        t = "(size_t)s" if when == "F" else "(size_t)0"
        out, ind = (flush, " " * 12) if when == "F" else (flush_p, " " * 8)
        if shape == "s":
            out.append(f"{ind}{{ double t = 0.0; for (int kj = 0; kj < nz * W; kj++) t += GB{i}[kj];"
                         f" gb{i}[{t} * nslots + slot] += t; }}")  # fmt: skip
        elif shape == "r":
            out.append(f"{ind}for (int k = 0; k < nz; k++) {{ double t = 0.0;"
                         f" for (int j = 0; j < W; j++) t += GB{i}[k * W + j];"
                         f" gb{i}[({t} * nslots + slot) * nz + k] += t; }}")  # fmt: skip
        elif shape == "c":
            out.append(f"{ind}for (int j = 0; j < nb; j++) {{ double t = 0.0;"
                         f" for (int k = 0; k < nz; k++) t += GB{i}[k * W + j];"
                         f" gb{i}[{t} * B + b0 + j] += t; }}")  # fmt: skip
        else:
            out.append(f"{ind}for (int j = 0; j < nb; j++) for (int k = 0; k < nz; k++)"
                         f" gb{i}[({t} * B + b0 + j) * nz + k] += GB{i}[k * W + j];")  # fmt: skip
        out.append(f"{ind}for (int kj = 0; kj < nz * W; kj++) GB{i}[kj] = 0.0;")
    rep_adj = _repair(plan, "G[{v}][kj] = YD[{v}][kj] >= {lo} ? G[{v}][kj] : (real)0;")
    face_adj, face_back = _face_adj(method)
    step = _ADJ_STEP.format(
        bstep="\n".join(bstep),
        transport=_transport(_face(method), save_sk=_SAVE_SK),
        repair="\n".join(rep),
        light=_LIGHT.format(ext=ext, inv_g2=repr(1.0 / plan.model.g2)),
    )
    return "#include <stdlib.h>\n" + _ADJ_BODY.format(
        phys="1" if phys else "0",
        factor=_FACTOR.format(),
        bdecl="\n".join(bdecl),
        gdecl="\n".join(gdecl),
        bblock="\n".join(bblock),
        step=step,
        src=src,
        src_vjp=src_vjp,
        ext_vjp=ext_vjp,
        repair_adj="\n".join(rep_adj),
        face_adj=face_adj,
        face_back=face_back,
        flush="\n".join(flush),
        flush_p="\n".join(flush_p),
    )


# ------------------------------------------------------------------------------------------------------------
# The adjoint (reverse mode) of the shared-physics kernel: per block of W columns, a forward sweep that keeps
# the state at the start of every step, then the steps in reverse, each recomputed from its start (keeping the
# sinking sub-steps' inputs and the state before repair) and run backwards: the Euler update and the biology
# (the generated vector-Jacobian product), GOTM's light sum, the light extinction, repair, the implicit
# diffusion (the transposed solve with the same factorisation) and the sinking sub-steps.
_ADJ_STEP = """
            {bstep}
            const real *R = rowbuf + (size_t)s * NR * nz;
            const real *h = R, *lw = R + nz, *mz = R + 4 * nz, *swr_s = R + 5 * nz;
            const real pre_s = pre[s];
            (void)mz; (void)swr_s; (void)pre_s; (void)h;
{transport}            if (save)
                for (int v = 0; v < NV; v++) for (int kj = 0; kj < nz * W; kj++) YD[v][kj] = Y[v][kj];
{repair}
{light}"""

_ADJ_BODY = """
MV int pelagos_fused_column_adj(int B, int nz, int nsteps, double dt_, void **state, const real *gout,
                                 void **bp, const real *rowbuf, const real *pre, const int *nsub,
                                 real *gstate, void **gbp, double *grow, double *gpre, int lo, int hi,
                                 int slot, int nslots)
{{
#define PHYS_GRAD {phys}  /* the adjoints of the diffusion matrix and of the surface light too */
    const real dt = (real)dt_;
    int maxsub = 1;
    for (int q = 0; q < nsteps * NM; q++) maxsub = nsub[q] > maxsub ? nsub[q] : maxsub;
    real *YS = (real *)malloc(sizeof(real) * (size_t)nsteps * NV * nz * W);
    real *SK = (real *)malloc(sizeof(real) * (size_t)(NM > 0 ? NM : 1) * maxsub * nz * W);
    if (!YS || !SK) {{ free(YS); free(SK); return 4; }}
{factor}{bdecl}
    real Y[NV][nz * W], G[NV][nz * W], YD[NV][nz * W], GN[nz * W];
    real KB[nz * W], PAR[nz * W], SWR[nz * W], KPAR[nz * W], FL[nz * W];
    real GPAR[nz * W], GSWR[nz * W], GKPAR[nz * W], GKB[nz * W];
    double GRW[NM > 0 ? 7 * NM : 1][nz * W];
{gdecl}
    for (int b0 = lo; b0 < hi; b0 += W) {{
        const int nb = hi - b0 < W ? hi - b0 : W;
        for (int v = 0; v < NV; v++)
            for (int j = 0; j < W; j++) {{
                const real *src = (const real *)state[v] + ((size_t)b0 + (j < nb ? j : nb - 1)) * nz;
                for (int k = 0; k < nz; k++) Y[v][k * W + j] = src[k];
            }}
{bblock}
        /* forward sweep: the state at the start of every step */
        for (int s = 0; s < nsteps; s++) {{
            const int save = 0;
            for (int v = 0; v < NV; v++)
                for (int kj = 0; kj < nz * W; kj++) YS[(((size_t)s * NV) + v) * nz * W + kj] = Y[v][kj];
{step}
            for (int k = 0; k < nz; k++) {{
                SIMD for (int j = 0; j < W; j++) {{
                    const int kj = k * W + j;
{src}
                }}
            }}
        }}
        /* the adjoint of the final state (zero in the lanes that repeat the last column) */
        for (int v = 0; v < NV; v++)
            for (int j = 0; j < W; j++)
                for (int k = 0; k < nz; k++)
                    G[v][k * W + j] = j < nb ? gout[((size_t)v * B + b0 + j) * nz + k] : (real)0;
        for (int s = nsteps - 1; s >= 0; s--) {{
            const int save = 1;
            for (int v = 0; v < NV; v++)
                for (int kj = 0; kj < nz * W; kj++) Y[v][kj] = YS[(((size_t)s * NV) + v) * nz * W + kj];
{step}
            for (int kj = 0; kj < nz * W; kj++) GPAR[kj] = GSWR[kj] = GKPAR[kj] = (real)0;
            /* 5. back through the Euler update and the biology */
            for (int k = 0; k < nz; k++) {{
                SIMD for (int j = 0; j < W; j++) {{
                    const int kj = k * W + j;
{src_vjp}
                }}
            }}
            /* 4. back through GOTM's light sum: PAR_k = I exp(-z_k/g2 - at_k), at_k = sum above + half */
            {{
                double racc[W];
                for (int j = 0; j < W; j++) racc[j] = 0.0;
                for (int k = 0; k < nz; k++) {{
                    SIMD for (int j = 0; j < W; j++) {{
                        const int kj = k * W + j;
                        const double gat = -(double)PAR[kj] * ((double)GPAR[kj] + (double)GSWR[kj]);
                        GKB[kj] = GKPAR[kj] + (real)((double)h[k] * (racc[j] + 0.5 * gat));
                        racc[j] += gat;
                    }}
                }}
            }}
#if PHYS_GRAD
            {{  /* the surface light's adjoints: the shortwave row, and I_0 (1 - A) of this step */
                double gp = 0.0, acc[W];
                for (int j = 0; j < W; j++) acc[j] = 0.0;
                for (int k = nz - 1; k >= 0; k--) {{
                    double t = 0.0;
                    for (int j = 0; j < W; j++) {{
                        const int kj = k * W + j;
                        const real half = KB[kj] * h[k] / (real)2;
                        acc[j] += half;
                        const real at = (real)acc[j];
                        acc[j] += half;
                        gp += (double)EXP(mz[k] - at) * ((double)GPAR[kj] + (double)GSWR[kj]);
                        t += (double)GSWR[kj];
                    }}
                    grow[(((size_t)slot * nsteps + s) * NR + 5) * nz + k] += t;
                }}
                gpre[(size_t)slot * nsteps + s] += gp;
            }}
#endif
            for (int k = 0; k < nz; k++) {{
                SIMD for (int j = 0; j < W; j++) {{
                    const int kj = k * W + j;
{ext_vjp}
                }}
            }}
            /* 3. repair: no gradient where the value was clipped to the minimum */
{repair_adj}
            /* 2. the implicit diffusion: the transposed solve, A^T = U^T L^T with A = L U from the sweep */
            for (int k = 1; k < nz; k++) {{
                const real ck = cp[s][k - 1];
                for (int v = 0; v < NV; v++) {{
                    real *g = G[v];
                    SIMD for (int j = 0; j < W; j++) g[k * W + j] = g[k * W + j] - ck * g[(k - 1) * W + j];
                }}
            }}
            {{
                const real mt = mi[s][nz - 1];
                for (int v = 0; v < NV; v++) SIMD for (int j = 0; j < W; j++) G[v][(nz - 1) * W + j] *= mt;
            }}
            for (int k = nz - 2; k >= 0; k--) {{
                const real l = lw[k + 1], mk = mi[s][k];
                for (int v = 0; v < NV; v++) {{
                    real *g = G[v];
                    SIMD for (int j = 0; j < W; j++)
                        g[k * W + j] = (g[k * W + j] - l * g[(k + 1) * W + j]) * mk;
                }}
            }}
#if PHYS_GRAD
            for (int k = 0; k < nz; k++) {{  /* the matrix's adjoints, -lambda y^T on its three diagonals */
                double tl = 0.0, td = 0.0, tu = 0.0;
                for (int v = 0; v < NV; v++)
                    for (int j = 0; j < W; j++) {{
                        const double lam = (double)G[v][k * W + j];
                        if (k > 0) tl -= lam * (double)YD[v][(k - 1) * W + j];
                        td -= lam * (double)YD[v][k * W + j];
                        if (k < nz - 1) tu -= lam * (double)YD[v][(k + 1) * W + j];
                    }}
                double *gr = grow + ((size_t)slot * nsteps + s) * NR * nz;
                gr[nz + k] += tl;
                gr[2 * nz + k] += td;
                gr[3 * nz + k] += tu;
            }}
#endif
            /* 1. the sinking sub-steps, last first */
            for (int q = 0; q < 7 * NM; q++) for (int kj = 0; kj < nz * W; kj++) GRW[q][kj] = 0.0;
            for (int m = 0; m < NM; m++) {{
                const real *w = R + (6 + 7 * m) * nz, *omc = w + nz, *xp = w + 2 * nz, *xm = w + 3 * nz;
                const real *two_omc = w + 4 * nz, *ceps = w + 5 * nz, *fih = w + 6 * nz;
                real *gy = G[m];
                double *gw = GRW[7 * m], *gc1 = GRW[7 * m + 1], *ga1 = GRW[7 * m + 2], *ga2 = GRW[7 * m + 3];
                double *gt1 = GRW[7 * m + 4], *gce = GRW[7 * m + 5], *gfih = GRW[7 * m + 6];
                for (int it = nsub[s * NM + m] - 1; it >= 0; it--) {{
                    const real *y = SK + ((size_t)m * maxsub + it) * nz * W;
                    for (int kj = 0; kj < nz * W; kj++) GN[kj] = gy[kj];
                    for (int i = 0; i < nz - 1; i++) {{
                        const int up = w[i] > 0;
                        const int ic = up ? i : i + 1, id = up ? i + 1 : i;
                        const int iu = up ? (i > 0 ? i - 1 : 0) : (i + 2 < nz ? i + 2 : nz - 1);
                        const real *yc = y + ic * W, *yd = y + id * W, *yu = y + iu * W;
                        const real wi = w[i], c1 = omc[i], a1 = xp[i], a2 = xm[i];
                        const real t1 = two_omc[i], ce = ceps[i], fa = fih[i], fb = fih[i + 1];
                        (void)c1; (void)a1; (void)a2; (void)t1; (void)ce;
                        SIMD for (int j = 0; j < W; j++) {{
                            const int ij = i * W + j;
{face_adj}
                            FL[ij] = wi * face;
                            const real gF = fb * gy[ij + W] - fa * gy[ij];
                            const real gface = wi * gF;
                            gw[ij] += (double)(face * gF);
{face_back}
                            GN[ic * W + j] += gyc;
                            GN[id * W + j] += gyd;
                            GN[iu * W + j] += gyu;
                        }}
                    }}
                    for (int k = 0; k < nz; k++) {{
                        SIMD for (int j = 0; j < W; j++) {{
                            const real upper = k < nz - 1 ? FL[k * W + j] + (real)0 : (real)0;
                            const real lower = k > 0 ? FL[(k - 1) * W + j] + (real)0 : (real)0;
                            gfih[k * W + j] -= (double)((upper - lower) * gy[k * W + j]);
                        }}
                    }}
                    for (int kj = 0; kj < nz * W; kj++) gy[kj] = GN[kj];
                }}
            }}
            /* this step's adjoints of the physics rows and of the boundary values, summed over the lanes */
            for (int q = 0; q < 7 * NM; q++) {{
                double *dst = grow + (((size_t)slot * nsteps + s) * NR + 6 + q) * nz;
                for (int k = 0; k < nz; k++) {{
                    double t = 0.0;
                    for (int j = 0; j < W; j++) t += GRW[q][k * W + j];
                    dst[k] += t;
                }}
            }}
{flush}
        }}
        /* the parameter values' adjoints, summed over the block's steps */
{flush_p}
        for (int v = 0; v < NV; v++)
            for (int j = 0; j < nb; j++)
                for (int k = 0; k < nz; k++) gstate[((size_t)v * B + b0 + j) * nz + k] = G[v][k * W + j];
    }}
    free(YS); free(SK);
    return 0;
#undef PHYS_GRAD
}}
"""


def _face_adj(method: str) -> tuple[str, str]:
    """(the face value with the partial derivatives of the limiter, the adjoints gyc/gyd/gyu of the three
    values and of the rows c1, a1, a2, t1, ce from ``gface``), for the sinking's adjoint."""
    pad = " " * 28
    if method == "UPSTREAM":
        fwd = ["const real face = yc[j];"]
        back = ["const real gyc = gface, gyd = (real)0, gyu = (real)0;"]
        return "\n".join(pad + x for x in fwd), "\n".join(pad + x for x in back)
    tie = "({a} < {b} ? (real)1 : ({a} == {b} ? (real)0.5 : (real)0))"
    if method == "P2_PDM":
        lim = [
            "const real r2 = r * ce, m2 = phi < t1 ? phi : t1;",
            "const real lim = r2 < m2 ? r2 : m2;",
            f"const real wa = {tie.format(a='r2', b='m2')}, wb = (real)1 - wa;",
            f"const real wp = {tie.format(a='phi', b='t1')};",
            "const real Lr = wa * ce + wb * wp * a2, La1 = wb * wp, La2 = wb * wp * r;",
            "const real Lt1 = wb * ((real)1 - wp), Lce = wa * r;",
        ]
    elif method == "SUPERBEE":
        lim = [
            "const real m1 = (real)2 * r < (real)1 ? (real)2 * r : (real)1, m2 = r < (real)2 ? r : (real)2;",
            "const real lim = m1 > m2 ? m1 : m2;",
            f"const real w1 = {tie.format(a='m2', b='m1')};",
            f"const real d1 = (real)2 * {tie.format(a='(real)2 * r', b='(real)1')};",
            f"const real d2 = {tie.format(a='r', b='(real)2')};",
            "const real Lr = w1 * d1 + ((real)1 - w1) * d2, La1 = 0, La2 = 0, Lt1 = 0, Lce = 0;",
        ]
    else:  # MUSCL
        lim = [
            "const real h1 = (real)0.5 * ((real)1 + r), m2 = h1 < (real)2 ? h1 : (real)2;",
            "const real lim = (real)2 * r < m2 ? (real)2 * r : m2;",
            f"const real w1 = {tie.format(a='(real)2 * r', b='m2')};",
            f"const real dm = (real)0.5 * {tie.format(a='h1', b='(real)2')};",
            "const real Lr = w1 * (real)2 + ((real)1 - w1) * dm, La1 = 0, La2 = 0, Lt1 = 0, Lce = 0;",
        ]
    fwd = [
        "const real df = yd[j] - yc[j], dfu = yc[j] - yu[j];",
        "const int mono = df * dfu > 0;",
        "const real dfs = mono ? df : (real)1;",
        "const real r = dfu / dfs;",
        "const real phi = a1 + a2 * r;",
        *lim,
        "const real face = mono ? yc[j] + (real)0.5 * lim * c1 * df : yc[j];",
    ]
    back = [
        "const real q = (real)0.5 * c1, gl = mono ? gface * q * df : (real)0, gr = gl * Lr;",
        "const real gdf = mono ? gface * q * lim - gr * r / dfs : (real)0, gdfu = gr / dfs;",
        "const real gyc = gface - gdf + gdfu, gyd = gdf, gyu = -gdfu;",
        "gc1[ij] += mono ? (double)(gface * (real)0.5 * lim * df) : 0.0;",
        "ga1[ij] += (double)(gl * La1); ga2[ij] += (double)(gl * La2);",
        "gt1[ij] += (double)(gl * Lt1); gce[ij] += (double)(gl * Lce);",
    ]
    return "\n".join(pad + x for x in fwd), "\n".join(pad + x for x in back)


def _face_tan(method: str) -> str:
    """The face value and its tangent ``dface`` from the tangents ``dyc/dyd/dyu[j]`` of the three values and
    ``dc1, da1, da2, dt1, dce`` of the rows, for the sinking's forward mode."""
    pad = " " * 28
    fwd, _ = _face_adj(method)
    if method == "UPSTREAM":
        return fwd + "\n" + pad + "const real dface = dyc[j];"
    tan = [
        "const real ddf = dyd[j] - dyc[j], ddfu = dyc[j] - dyu[j];",
        "const real dr = mono ? (ddfu - r * ddf) / dfs : (real)0;",
        "const real dlim = Lr * dr + La1 * da1 + La2 * da2 + Lt1 * dt1 + Lce * dce;",
        "const real dface = mono ? dyc[j] + (real)0.5 * (dlim * c1 * df + lim * dc1 * df + lim * c1 * ddf)"
        " : dyc[j];",
    ]
    return fwd + "\n" + "\n".join(pad + x for x in tan)


# The tangent-linear (forward mode) kernel, shared physics: the state and its tangent stepped together, every
# operation followed by its derivative (the generated JVP of the biology and light extinction, GOTM's light
# sum, repair, the implicit diffusion, the TVD sinking sub-steps).
_TAN_BODY = """
MV int pelagos_fused_column_tan(int B, int nz, int nsteps, double dt_, void **state, void **dstate,
                                 real *out, real *dout, void **bp, void **dbp, const real *rowbuf,
                                 const real *drowbuf, const real *pre, const real *dpre, const int *nsub,
                                 int lo, int hi)
{{
#define PHYS_TAN {phys}  /* tangents of the diffusion matrix and of the surface light too */
    const real dt = (real)dt_;
    int bad = 0;
{factor}{bdecl}
{dbdecl}
    real Y[2 * NV][nz * W];  /* the state, then its tangent */
    real KB[nz * W], PAR[nz * W], SWR[nz * W], KPAR[nz * W], FL[nz * W];
    real DKB[nz * W], DPAR[nz * W], DSWR[nz * W], DKPAR[nz * W], DFL[nz * W];
    for (int b0 = lo; b0 < hi; b0 += W) {{
        const int nb = hi - b0 < W ? hi - b0 : W;
        for (int v = 0; v < NV; v++)
            for (int j = 0; j < W; j++) {{
                const size_t c = (size_t)b0 + (j < nb ? j : nb - 1);
                const real *src = (const real *)state[v] + c * nz;
                const real *dsrc = dstate[v] ? (const real *)dstate[v] + c * nz : NULL;
                for (int k = 0; k < nz; k++) {{
                    Y[v][k * W + j] = src[k];
                    Y[NV + v][k * W + j] = dsrc ? dsrc[k] : (real)0;
                }}
            }}
{bblock}
{dbblock}
        for (int s = 0; s < nsteps; s++) {{
{bstep}
{dbstep}
            const real *R = rowbuf + (size_t)s * NR * nz, *DR = drowbuf + (size_t)s * NR * nz;
            const real *h = R, *lw = R + nz, *mz = R + 4 * nz, *swr_s = R + 5 * nz;
            const real pre_s = pre[s];
            for (int m = 0; m < NM; m++) {{
                const real *w = R + (6 + 7 * m) * nz, *omc = w + nz, *xp = w + 2 * nz, *xm = w + 3 * nz;
                const real *two_omc = w + 4 * nz, *ceps = w + 5 * nz, *fih = w + 6 * nz;
                const real *dw = DR + (6 + 7 * m) * nz, *domc = dw + nz, *dxp = dw + 2 * nz;
                const real *dxm = dw + 3 * nz;
                const real *dtwo_omc = dw + 4 * nz, *dceps = dw + 5 * nz, *dfih = dw + 6 * nz;
                real *y = Y[m], *dy = Y[NV + m];
                for (int it = 0; it < nsub[s * NM + m]; it++) {{
                    for (int i = 0; i < nz - 1; i++) {{
                        const int up = w[i] > 0;
                        const int ic = up ? i : i + 1, id = up ? i + 1 : i;
                        const int iu = up ? (i > 0 ? i - 1 : 0) : (i + 2 < nz ? i + 2 : nz - 1);
                        const real *yc = y + ic * W, *yd = y + id * W, *yu = y + iu * W;
                        const real *dyc = dy + ic * W, *dyd = dy + id * W, *dyu = dy + iu * W;
                        const real wi = w[i], c1 = omc[i], a1 = xp[i], a2 = xm[i];
                        const real t1 = two_omc[i], ce = ceps[i];
                        const real dwi = dw[i], dc1 = domc[i], da1 = dxp[i], da2 = dxm[i];
                        const real dt1 = dtwo_omc[i], dce = dceps[i];
                        (void)c1; (void)a1; (void)a2; (void)t1; (void)ce;
                        (void)dc1; (void)da1; (void)da2; (void)dt1; (void)dce; (void)dyd; (void)dyu;
                        SIMD for (int j = 0; j < W; j++) {{
{face_tan}
                            FL[i * W + j] = wi * face;
                            DFL[i * W + j] = dwi * face + wi * dface;
                        }}
                    }}
                    for (int k = 0; k < nz; k++) {{
                        SIMD for (int j = 0; j < W; j++) {{
                            const int kj = k * W + j;
                            const real upper = k < nz - 1 ? FL[kj] + (real)0 : (real)0;
                            const real lower = k > 0 ? FL[kj - W] + (real)0 : (real)0;
                            const real dupper = k < nz - 1 ? DFL[kj] + (real)0 : (real)0;
                            const real dlower = k > 0 ? DFL[kj - W] + (real)0 : (real)0;
                            y[kj] = y[kj] - fih[k] * (upper - lower);
                            dy[kj] = dy[kj] - dfih[k] * (upper - lower) - fih[k] * (dupper - dlower);
                        }}
                    }}
                }}
            }}
#if PHYS_TAN
{diffusion_state}
            for (int k = 0; k < nz; k++) {{  /* the tangent's right-hand side: dY - dA y, y after the solve */
                const real dl = k > 0 ? DR[nz + k] : (real)0, dd = DR[2 * nz + k];
                const real du = k < nz - 1 ? DR[3 * nz + k] : (real)0;
                const int km = k > 0 ? k - 1 : 0, kp = k < nz - 1 ? k + 1 : k;
                for (int v = 0; v < NV; v++)
                    SIMD for (int j = 0; j < W; j++)
                        Y[NV + v][k * W + j] -= dl * Y[v][km * W + j] + dd * Y[v][k * W + j]
                                                + du * Y[v][kp * W + j];
            }}
{diffusion_tangent}
#else
{diffusion}
#endif
{repair_tan}
            for (int k = 0; k < nz; k++) {{
                SIMD for (int j = 0; j < W; j++) {{
                    const int kj = k * W + j;
{ext_jvp}
                }}
            }}
            {{
                double acc[W], dacc[W];
                for (int j = 0; j < W; j++) acc[j] = dacc[j] = 0.0;
                for (int k = nz - 1; k >= 0; k--) {{
                    SIMD for (int j = 0; j < W; j++) {{
                        const int kj = k * W + j;
                        const real half = KB[kj] * h[k] / (real)2, dhalf = DKB[kj] * h[k] / (real)2;
                        acc[j] += half;
                        dacc[j] += dhalf;
                        const real at = (real)acc[j], dat = (real)dacc[j];
                        acc[j] += half;
                        dacc[j] += dhalf;
                        const real ex = EXP(mz[k] - at);
                        PAR[kj] = pre_s * ex;
                        DPAR[kj] = -PAR[kj] * dat + (PHYS_TAN ? dpre[s] * ex : (real)0);
                        SWR[kj] = PAR[kj] + swr_s[k];
                        DSWR[kj] = DPAR[kj] + (PHYS_TAN ? DR[5 * nz + k] : (real)0);
                        KPAR[kj] = (real){inv_g2} + KB[kj];
                        DKPAR[kj] = DKB[kj];
                    }}
                }}
            }}
            for (int k = 0; k < nz; k++) {{
                SIMD for (int j = 0; j < W; j++) {{
                    const int kj = k * W + j;
{src_jvp}
                }}
            }}
        }}
        for (int v = 0; v < NV; v++)
            for (int j = 0; j < nb; j++) {{
                real *dst = out + ((size_t)v * B + b0 + j) * nz, *ddst = dout + ((size_t)v * B + b0 + j) * nz;
                for (int k = 0; k < nz; k++) {{
                    const real x = Y[v][k * W + j], dx = Y[NV + v][k * W + j];
                    bad |= x - x != (real)0 || dx - dx != (real)0;
                    dst[k] = x;
                    ddst[k] = dx;
                }}
            }}
    }}
    return bad;
#undef PHYS_TAN
}}
"""


def _tangent_source(plan: Any, bdecl: list, bblock: list, bstep: list, ext: str) -> str:
    """The C of ``pelagos_fused_column_tan`` (shared physics): see :data:`_TAN_BODY`."""
    from .advection import _method_name

    pad = " " * 24
    order = plan.order
    nv = len(order)
    tanned = set(plan.tangent_bounds)
    dbdecl, dbblock, dbstep = _bound_loads(plan.kinds, "dbp", "db", only=tanned)
    cell_tan = [f"Y[{nv + order.index(q)}][kj]" for q in plan.model.interior] + ["DPAR[kj]", "DSWR[kj]",
                                                                                "DKPAR[kj]"]  # fmt: skip
    ext_jvp = plan.emit_jvp([plan.k_node], ["DKB[kj]"], cell_tan, tanned, pad)
    ext_jvp = ext_jvp.replace(f"{pad}DKB[kj] =", f"{pad}KB[kj] = {{kb}};\n{pad}DKB[kj] =", 1)
    # KB itself: the same straight line (its last value), written before its tangent
    _, kb_name, _ = plan._straight([plan.k_node], pad)
    kb = kb_name[plan.k_node]
    ext_jvp = ext_jvp.replace("{kb}", kb)
    nr = len(plan.rate_nodes)
    rt = [f"const real dR{i}" for i in range(nr)]
    src_jvp = plan.emit_jvp(plan.rate_nodes, rt, cell_tan, tanned, pad)
    # the rates themselves: names of the forward values in that same straight line
    _, rname, _ = plan._straight(plan.rate_nodes, pad)
    upd = []
    for i, q in enumerate(plan.rate_names):
        v = order.index(q)
        upd.append(f"{pad}Y[{v}][kj] = Y[{v}][kj] + dt * {rname[plan.rate_nodes[i]]};")
        upd.append(f"{pad}Y[{nv + v}][kj] = Y[{nv + v}][kj] + dt * dR{i};")
    rep = _repair(
        plan,
        "{{ Y[{t}][kj] = Y[{v}][kj] >= {lo} ? Y[{t}][kj] : (real)0; "
        "Y[{v}][kj] = Y[{v}][kj] < {lo} ? {lo} : Y[{v}][kj]; }}",
    )
    return _TAN_BODY.format(
        factor=_FACTOR.format(),
        phys="1" if plan.tangent_phys else "0",
        diffusion=_DIFFUSION.format(v0=0, nv="2 * NV"),
        diffusion_state=_DIFFUSION.format(v0=0, nv="NV"),
        diffusion_tangent=_DIFFUSION.format(v0="NV", nv="2 * NV"),
        bdecl="\n".join(bdecl),
        dbdecl="\n".join(dbdecl),
        bblock="\n".join(bblock),
        dbblock="\n".join(dbblock),
        bstep="\n".join(bstep),
        dbstep="\n".join(dbstep),
        face_tan=_face_tan(_method_name(plan.model.sinking_method)),
        repair_tan="\n".join(rep),
        ext_jvp=ext_jvp,
        src_jvp=src_jvp + "\n" + "\n".join(upd),
        inv_g2=repr(1.0 / plan.model.g2),
    )
