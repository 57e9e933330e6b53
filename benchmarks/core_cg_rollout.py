"""Benchmarks of pelagos.core: conjugate gradients vs SciPy, implicit vs unrolled CG gradients, and rollout
gradient memory with and without checkpointing.

Run: ``python benchmarks/core_cg_rollout.py`` (about a minute on 2 cores). Timings are the minimum over
repeats, measured side by side in one process (the machine is shared: read ratios, not absolutes). Peak
memory of a rollout gradient is measured as the high-water mark of process RSS in a fresh subprocess per
variant (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, Linux), minus the RSS before the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

from _timing import best

D = torch.float64


def helmholtz(c, k):
    def A(x):
        xp = F.pad(x, (1, 1, 1, 1))
        fx = k * (xp[..., 1:-1, 1:] - xp[..., 1:-1, :-1])
        fy = k * (xp[..., 1:, 1:-1] - xp[..., :-1, 1:-1])
        return c * x - (fx[..., :, 1:] - fx[..., :, :-1]) - (fy[..., 1:, :] - fy[..., :-1, :])

    return A


def bench_cg(n=128, rtol=1e-8):
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    from pelagos.core import solve_cg

    c, k = 1e-2, 1.0
    A = helmholtz(c, k)
    g = torch.Generator().manual_seed(0)
    b = torch.randn(n, n, generator=g, dtype=D)
    # the same operator as a SciPy CSR matrix (5-point stencil, Dirichlet)
    e = np.ones(n)
    T = sp.diags([-e[:-1], 2 * e, -e[:-1]], [-1, 0, 1])
    I = sp.identity(n)
    As = (c * sp.identity(n * n) + k * (sp.kron(I, T) + sp.kron(T, I))).tocsr()
    bs = b.numpy().reshape(-1)
    x, info = solve_cg(A, b, rtol=rtol, max_iter=5000, return_info=True)
    it_scipy = [0]

    def cb(_):
        it_scipy[0] += 1

    xs, flag = spla.cg(As, bs, rtol=rtol, maxiter=5000, callback=cb)
    assert flag == 0
    err = float(np.abs(x.numpy().reshape(-1) - xs).max() / np.abs(xs).max())
    t_ours = best(lambda: solve_cg(A, b, rtol=rtol, max_iter=5000))
    t_scipy = best(lambda: spla.cg(As, bs, rtol=rtol, maxiter=5000))

    # gradient w.r.t. the diffusivity: implicit (one adjoint solve) vs autograd through the iterations
    k_t = torch.tensor(k, dtype=D, requires_grad=True)

    def implicit():
        xx = solve_cg(helmholtz(c, k_t), b, rtol=rtol, max_iter=5000)
        return torch.autograd.grad((xx**2).sum(), k_t)[0]

    def unrolled():  # plain CG with the graph of every iteration kept
        Ak = helmholtz(c, k_t)
        x = torch.zeros_like(b)
        r = b.clone()
        p = r.clone()
        rr = (r * r).sum()
        tol = rtol * float(b.norm())
        for _ in range(5000):
            Ap = Ak(p)
            a = rr / (p * Ap).sum()
            x = x + a * p
            r = r - a * Ap
            rr_new = (r * r).sum()
            if float(rr_new.detach().sqrt()) < tol:
                break
            p = r + rr_new / rr * p
            rr = rr_new
        return torch.autograd.grad((x**2).sum(), k_t)[0]

    g_imp, g_unr = implicit(), unrolled()
    t_imp = best(implicit, 3)
    t_unr = best(unrolled, 3)
    return {
        "grid": f"{n}x{n}",
        "rtol": rtol,
        "iterations_ours": info.iterations,
        "iterations_scipy": it_scipy[0],
        "max_rel_diff_vs_scipy": err,
        "solve_s_ours": t_ours,
        "solve_s_scipy": t_scipy,
        "grad_s_implicit": t_imp,
        "grad_s_unrolled": t_unr,
        "grad_rel_diff_implicit_vs_unrolled": float(abs(g_imp - g_unr) / abs(g_unr)),
    }


_ROLLOUT_CHILD = r"""
import json, sys, time, torch
from pelagos.core import rollout
torch.set_num_threads(1)
mode, T, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ckpt = None if mode == "none" else mode if mode == "sqrt" else int(mode)
torch.manual_seed(0)
k = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
x0 = torch.randn(n, dtype=torch.float64)
def step(x, t):
    return x + 0.01 * (torch.tanh(k * x) - 0.1 * x)
def run(T):
    tr = rollout(step, x0, T, dt=1.0, checkpoint=ckpt, observe=lambda x: x.mean())
    return torch.autograd.grad(tr.states.sum(), k)[0]
run(16)  # warm-up: the first checkpoint call pays a one-time set-up cost of a few seconds
def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the RSS high-water mark (Linux)
rss0 = kb("VmRSS:")
t = time.perf_counter()
g = run(T)
dt = time.perf_counter() - t
print(json.dumps({"mode": mode, "peak_MB": (kb("VmHWM:") - rss0) / 1024, "seconds": dt, "grad": float(g)}))
"""


def bench_rollout(Ts=(256, 1024), n=10000):
    out = []
    for T in Ts:
        for mode in ("none", "sqrt"):
            # every tensor buffer gets its own mmap, so a freed tensor leaves RSS at once and the RSS
            # high-water mark is the peak of live tensor memory (not of glibc's heap fragmentation)
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384"}
            res = subprocess.run(
                [sys.executable, "-c", _ROLLOUT_CHILD, mode, str(T), str(n)],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            out.append({"T": T, **json.loads(res.stdout)})
    return {"state_MB": round(n * 8 / 2**20, 3), "runs": out}


def main():
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, float64")
    cg = bench_cg()
    print("\nsolve_cg vs scipy.sparse.linalg.cg (2-D Helmholtz c x − ∇²x, Dirichlet):")
    for key, val in cg.items():
        print(f"  {key:36s} {val:.4g}" if isinstance(val, float) else f"  {key:36s} {val}")
    print(f"  ratio solve time ours/scipy            {cg['solve_s_ours'] / cg['solve_s_scipy']:.2f}")
    print(f"  ratio grad time unrolled/implicit      {cg['grad_s_unrolled'] / cg['grad_s_implicit']:.2f}")
    ro = bench_rollout()
    print(f"\nrollout gradient, state {ro['state_MB']} MB, peak RSS increase in a fresh process:")
    for r in ro["runs"]:
        print(
            f"  T={r['T']:5d} checkpoint={r['mode']:5s} peak {r['peak_MB']:7.1f} MB  {r['seconds']:6.2f} s  "
            f"grad {r['grad']:.12e}"
        )
    peak = {(r["T"], r["mode"]): r["peak_MB"] for r in ro["runs"]}
    for mode in ("none", "sqrt"):
        print(
            f"  growth of peak from T=256 to T=1024 ({mode}): {peak[(1024, mode)] - peak[(256, mode)]:.1f} MB"
        )


if __name__ == "__main__":
    main()
