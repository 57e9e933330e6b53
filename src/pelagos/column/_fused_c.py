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
    real cp[nsteps][nz], mi[nsteps][nz];
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
#define HK(k) h[k]
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
            /* 2. sinking / rising of the moving tracers (GOTM adv_center, flux boundaries closed) */
            for (int m = 0; m < NM; m++) {{
                const real *w = R + (6 + 7 * m) * nz, *omc = w + nz, *xp = w + 2 * nz, *xm = w + 3 * nz;
                const real *two_omc = w + 4 * nz, *ceps = w + 5 * nz, *fih = w + 6 * nz;
                real *y = Y[m];
                for (int it = 0; it < nsub[s * NM + m]; it++) {{
                    for (int i = 0; i < nz - 1; i++) {{
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
            /* 3. implicit diffusion, the tracers' sweeps interleaved: their recurrences overlap */
            {{
                const real m0 = mi[s][0];
                for (int v = 0; v < NV; v++) SIMD for (int j = 0; j < W; j++) Y[v][j] = Y[v][j] * m0;
                for (int k = 1; k < nz; k++) {{
                    const real l = lw[k], mk = mi[s][k];
                    for (int v = 0; v < NV; v++) {{
                        real *y = Y[v];
                        SIMD for (int j = 0; j < W; j++)
                            y[k * W + j] = (y[k * W + j] - l * y[(k - 1) * W + j]) * mk;
                    }}
                }}
                for (int k = nz - 2; k >= 0; k--) {{
                    const real ck = cp[s][k];
                    for (int v = 0; v < NV; v++) {{
                        real *y = Y[v];
                        SIMD for (int j = 0; j < W; j++)
                            y[k * W + j] = y[k * W + j] - ck * y[(k + 1) * W + j];
                    }}
                }}
            }}
#endif
{repair}
            for (int pass = 0; pass < (nmeans > 0 ? 2 : 1); pass++) {{
                /* light: GOTM's sum of half-layer extinctions from the surface down */
                for (int k = 0; k < nz; k++) {{
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
                if (pass == 0) {{
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
    bdecl, bblock, bstep = [], [], []
    col = "(j < nb ? j : nb - 1)"
    for i, kind in enumerate(plan.kinds):
        shape, when = kind[0], kind[1]
        bdecl.append(f"    const real *bp{i} = (const real *)bp[{i}];")
        if shape == "s":
            if when == "P":
                bdecl.append(f"    const real bs{i} = bp{i}[0];")
            else:
                bstep.append(f"            const real bs{i} = bp{i}[s];")
        elif shape == "r":
            off = "0" if when == "P" else "(size_t)s * nz"
            bstep.append(f"            const real *br{i} = bp{i} + {off};")
        elif shape == "c":
            off = "" if when == "P" else "(size_t)s * B + "
            tgt = bblock if when == "P" else bstep
            ind = " " * (8 if when == "P" else 12)
            tgt.append(f"{ind}real bc{i}[W];")
            tgt.append(f"{ind}for (int j = 0; j < W; j++) bc{i}[j] = bp{i}[{off}b0 + {col}];")
        else:
            off = "" if when == "P" else "(size_t)s * B * nz + "
            tgt = bblock if when == "P" else bstep
            ind = " " * (8 if when == "P" else 12)
            tgt.append(f"{ind}real bf{i}[nz * W];")
            tgt.append(
                f"{ind}for (int j = 0; j < W; j++) for (int k = 0; k < nz; k++) "
                f"bf{i}[k * W + j] = bp{i}[{off}((size_t)b0 + {col}) * nz + k];"
            )
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
    rep = []
    if plan.model.repair:
        for q in order:
            lo = plan.model._minimum.get(q)
            if lo is not None:
                v = order.index(q)
                rep.append(
                    f"            for (int kj = 0; kj < nz * W; kj++) "
                    f"Y[{v}][kj] = Y[{v}][kj] < (real){float(lo)!r} ? (real){float(lo)!r} : Y[{v}][kj];"
                )
    body = _BODY.format(
        bdecl="\n".join(bdecl),
        bblock="\n".join(bblock),
        bstep="\n".join(bstep),
        face=_face(_method_name(plan.model.sinking_method)),
        face_pc=_face(_method_name(plan.model.sinking_method), "ycv", "ydv", "yuv"),
        repair="\n".join(rep),
        ext=ext,
        src=src + "\n" + "\n".join(upd),
        diag="\n".join(diag),
        inv_g2=repr(1.0 / plan.model.g2),
        A=repr(plan.model.A),
        g1=repr(plan.model.g1),
        g2=repr(plan.model.g2),
    )
    return head + body
