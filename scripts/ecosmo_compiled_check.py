"""Compiled vs plain ECOSMO column step on the identifiability twin (35 days): CPU time of a forward run
(batch 1 and 21) and of forward + backward (batch 1), and the largest relative difference of residuals and
gradient. Run from examples/ with PYTHONPATH=src. Results: benchmarks/results/ecosmo_compiled_quickcheck.json
(written by hand from the printed lines)."""

import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "examples"))
from ecosmo_identifiability import Twin

from pelagos.inverse.problem import VariationalProblem

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
stop = ["time.stop=1998-02-05 00:00:00"]  # 35 days, 840 steps
out = {}
for comp in ("false", "true"):
    tw = Twin(overrides=[*stop, f"numerics.compile={comp}"])
    Z1 = tw.z0[None]
    Z21 = tw.z0 + 1e-3 * torch.randn(21, tw.p, generator=torch.Generator().manual_seed(0)) * tw.prior_std
    res = {}
    for name, Z in (("b1", Z1), ("b21", Z21)):
        with torch.no_grad():
            tw.residuals(Z)  # warm / compile
            c = time.process_time()
            w = time.perf_counter()
            R = tw.residuals(Z)
            res[name] = (time.process_time() - c, time.perf_counter() - w, R)
    prob = VariationalProblem(tw.model, tw.obs, tw.x0, t0=tw.t0)
    z = tw.z0.clone().requires_grad_(True)
    J = prob.cost(z)
    J.backward()
    z = tw.z0.clone().requires_grad_(True)
    c = time.process_time()
    w = time.perf_counter()
    J = prob.cost(z)
    J.backward()
    res["fb"] = (time.process_time() - c, time.perf_counter() - w, z.grad.clone())
    out[comp] = res
    steps = 840
    for k, v in res.items():
        print(
            f"compile={comp} {k}: {v[0]:.2f} s CPU {v[1]:.2f} s wall for {steps} steps"
            f" -> year {v[0] * 8760 / steps:.0f} s CPU",
            flush=True,
        )
for k in ("b1", "b21", "fb"):
    a, b = out["false"][k][2], out["true"][k][2]
    print(k, "max |diff| / max|plain|:", float((a - b).abs().max() / a.abs().max()))
