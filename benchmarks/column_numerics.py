"""Timing of the column numerics (diffusion, advection, light) on batches of GOTM-sized columns.

Usage: ``.venv/bin/python benchmarks/column_numerics.py [--B 256] [--V 10] [--nz 110] [--repeat 7]``

Reports the minimum over ``--repeat`` runs (the machine is shared: the minimum is the least disturbed) of one
call on B columns x V tracers x nz layers, float64 and float32, forward and forward+backward, and the cost per
column-tracer. Default one torch thread: on a loaded 2-core machine two threads were up to 20x slower
(spinning threads). As a reference point it also times the literal per-element GOTM ports used by the tests
(pure Python loops, one column at a time) on a few columns: that ratio says how much batching buys over a
straightforward port, not how we compare with compiled Fortran (not available here).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from _timing import best as _best
from pelagos.column import advect_center, diffuse_center, face_velocities, gotm_light


def best(fn, repeat: int) -> float:
    return _best(fn, repeat, warmup=True)  # first use compiles the C solver


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=256)
    ap.add_argument("--V", type=int, default=10)
    ap.add_argument("--nz", type=int, default=110)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    B, V, nz = a.B, a.V, a.nz
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, B={B} V={V} nz={nz}")
    for dtype in (torch.float64, torch.float32):
        h = torch.tensor(rng.uniform(0.5, 1.5, (B, 1, nz)), dtype=dtype)
        nuh = torch.tensor(rng.uniform(1e-5, 1e-2, (B, 1, nz + 1)), dtype=dtype)
        Y = torch.tensor(rng.uniform(0, 1, (B, V, nz)), dtype=dtype)
        wc = torch.tensor(-rng.uniform(0, 2e-4, (B, V, nz)), dtype=dtype)  # up to ~17 m/d, Courant < 1
        ww = face_velocities(wc, h)
        kb = torch.tensor(rng.uniform(0, 0.2, (B, nz)), dtype=dtype)
        I0 = torch.tensor(rng.uniform(0, 500, B), dtype=dtype)
        n = B * V
        rows = {
            "diffuse_center": lambda Y=Y, h=h, nuh=nuh: diffuse_center(Y, h, nuh, 3600.0, posconc=True),
            "advect_center P2_PDM": lambda Y=Y, h=h, ww=ww: advect_center(Y, h, ww, 3600.0),
            "advect_center, 4 substeps": lambda Y=Y, h=h, ww=ww: advect_center(Y, h, ww, 3600.0, substeps=4),
            "gotm_light (B columns)": lambda I0=I0, h=h, kb=kb: gotm_light(I0, h[:, 0], kb),
        }
        for name, fn in rows.items():
            t = best(fn, a.repeat)
            print(f"{dtype!s:14s} {name:34s} fwd {t * 1e3:8.2f} ms ({t / n * 1e6:7.2f} us/column-tracer)")
        Yg = Y.clone().requires_grad_()
        nug = nuh.clone().requires_grad_()

        def fb(Yg=Yg, nug=nug, h=h, ww=ww):
            out = advect_center(Yg, h, ww, 3600.0)
            diffuse_center(out, h, nug, 3600.0, posconc=True).square().sum().backward()

        t = best(fb, a.repeat)
        print(
            f"{dtype!s:14s} {'advect+diffuse fwd+bwd':34s}     {t * 1e3:8.2f} ms ({t / n * 1e6:7.2f} us/...)"
        )

    # literal per-element GOTM ports (the test references), one column-tracer at a time
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_column_advection import pad, ref_adv_center
    from test_column_diffusion import gotm_diff_center

    hh = rng.uniform(0.5, 1.5, nz)
    nu = rng.uniform(1e-5, 1e-2, nz + 1)
    y = rng.uniform(0, 1, nz)
    w = np.concatenate([[0.0], -rng.uniform(0, 2e-4, nz - 1), [0.0]])
    z = np.zeros(nz)
    td = best(lambda: gotm_diff_center(nz, 3600.0, 1.0, True, pad(hh), "N", "N", 0.0, 0.0, nu, pad(z), pad(z),
                                       pad(z + 1e15), pad(z), pad(y)), 3)  # fmt: skip
    ta = best(
        lambda: ref_adv_center(nz, 3600.0, pad(hh), w, "flux", "flux", 0.0, 0.0, "P2_PDM", 1, pad(y)), 3
    )
    print(
        f"python-loop GOTM port, 1 column-tracer: diff_center {td * 1e6:.0f} us, adv_center {ta * 1e6:.0f} us"
    )


if __name__ == "__main__":
    main()
