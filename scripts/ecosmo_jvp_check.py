"""Check of the batched forward-mode Jacobian of the ECOSMO twin on the compiled jvp step (20 parameters as 20
columns of one run): what the batched run costs (CPU time of the first call, with the compile, and of a
second one), whether the compiled jvp program ran, whether the guard of ``VariationalProblem.jacobian``
accepts it, and J d against central differences of several steps.

Run: PYTHONPATH=src python scripts/ecosmo_jvp_check.py [--stop 1999-01-01] [--at first_guess|truth]
[--out benchmarks/results/ecosmo_year_jacobian.json]   (docs/ecosmo_identifiability.md, "Cost of the
exact Jacobian"). The problem is used as the Levenberg–Marquardt part uses it: one single run at z
(remembered: the guard differences from it), then the batched run.
"""

import argparse
import json
import os
import time

import torch
import torch.autograd.forward_ad as fwAD

from pelagos.core._torch_quirks import load_jvp_decompositions
from pelagos.inverse.problem import VariationalProblem
from pelagos.io.build import setup
from pelagos.io.config import load_config
from pelagos.io.inverse_run import observations, set_priors

ap = argparse.ArgumentParser()
ap.add_argument("--stop", default="1998-02-05 00:00:00", help="end of the window (time.stop)")
ap.add_argument("--at", choices=["first_guess", "truth"], default="first_guess")
ap.add_argument("--compile", default="true")
ap.add_argument("--steps", default="1e-7,1e-6,1e-5", help="central-difference steps of the J d check")
ap.add_argument("--second", action="store_true", help="also time a second batched run (the warm cost)")
ap.add_argument("--out", default=None)
ap.add_argument(
    "--growth",
    action="store_true",
    help="also record max |dH/dz| over the 20 parameters and the observations at each observation time "
    "(the growth of the tangents along the window)",
)
args = ap.parse_args()
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)

cfg = load_config(
    "examples/ecosmo_identifiability.yaml",
    overrides=[f"time.stop={args.stop}", f"numerics.compile={args.compile}"],
    require=("observations", "method"),
)
s = setup(cfg)
obs, truth = observations(cfg, s, s.model, s.state)
s.model.select_free(cfg.method.free)
set_priors(s.model, cfg.method)
P = VariationalProblem(s.model, obs, s.state, t0=s.t0)
z = P.z0.clone()
if args.at == "truth":
    names = s.model.free_parameter_names()
    inv = [s.model.parameter_spec(k).transform.inverse for k in names]
    z = torch.stack([f(torch.tensor(float(truth[k]))) for f, k in zip(inv, names, strict=True)])
n = z.numel()
out: dict = {"stop": args.stop, "at": args.at, "compile": args.compile, "n": n, "torch": torch.__version__}


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


w, c = clock()
with torch.no_grad():
    r0 = P.residuals(z)  # the optimiser's run at z (remembered: the guard differences from it)
w2, c2 = clock()
out["single_run"] = {"wall_s": w2 - w, "cpu_s": c2 - c, "cost": 0.5 * float(r0.pow(2).sum())}
print("single run", out["single_run"], flush=True)


def batched() -> torch.Tensor:
    """The batched forward-mode run of ``VariationalProblem.jacobian`` (all n tangents as n columns) alone."""
    with fwAD.dual_level():
        zb = fwAD.make_dual(z.expand(n, n).clone(), torch.eye(n))
        return fwAD.unpack_dual(P.residuals(zb)).tangent.T.contiguous()


load_jvp_decompositions()
if args.growth:
    with fwAD.dual_level():
        pred = P.predict(fwAD.make_dual(z.expand(n, n).clone(), torch.eye(n)))
        tan = fwAD.unpack_dual(pred).tangent  # (n_t, n, m)
    a = tan.abs().amax(1)  # (n_t, m)
    names = s.model.free_parameter_names()
    out["growth"] = {
        "day": ((obs.times - s.t0) / 86400.0).tolist(),
        "max_abs_tangent": a.amax(1).tolist(),
        "worst_parameter": [names[int(tan[i].abs().amax(1).argmax())] for i in range(tan.shape[0])],
    }
    print("max |dH/dz| per observation time:", [f"{x:.1e}" for x in out["growth"]["max_abs_tangent"]])
w, c = clock()
J = batched()
w2, c2 = clock()
js = s.model.__dict__.get("_compiled_jvp_obj")
out["batched_first"] = {"wall_s": w2 - w, "cpu_s": c2 - c, "compiled_jvp_works": js and js._works}
print("batched run (first, with the compile):", out["batched_first"], flush=True)
if args.second:
    w, c = clock()
    J2 = batched()
    w2, c2 = clock()
    out["batched_second"] = {"wall_s": w2 - w, "cpu_s": c2 - c, "same": bool(torch.equal(J, J2))}
    print("batched run (second):", out["batched_second"], flush=True)
w, c = clock()
out["guard_passed"] = P._check_jacobian(z, J)
w2, c2 = clock()
out["guard"] = {**P.jacobian_info["guard"], "wall_s": w2 - w, "cpu_s": c2 - c}
print("guard of VariationalProblem.jacobian:", out["guard"], flush=True)
d = torch.randn(n, generator=torch.Generator().manual_seed(0))  # the guard's direction
Jd = J @ d
out["central"] = []
for h in (float(x) for x in args.steps.split(",")):
    with torch.no_grad():
        fd = (P.residuals(z + h * d) - P.residuals(z - h * d)) / (2 * h)
    e = float((Jd - fd).abs().max() / fd.abs().max())
    e2 = float((Jd - fd).norm() / fd.norm())
    out["central"].append({"step": h, "max_abs_error_rel": e, "norm_error_rel": e2})
    print(f"central h={h}: max|Jd-fd|/max|fd| = {e:.2e}, |Jd-fd|/|fd| = {e2:.2e}", flush=True)
out["load_average"] = os.getloadavg()
if args.out:
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
