"""One-off check: the batched forward-mode Jacobian of the ECOSMO twin on the compiled jvp step (January 1998,
20 parameters as 20 columns of one run), its finite-difference guard, and J d against central differences.

Run: PYTHONPATH=src python scripts/ecosmo_jvp_check.py (docs/ecosmo_identifiability.md, "Cost of the exact
Jacobian").
"""

import time
import traceback

import torch
import torch.autograd.forward_ad as fwAD

from pelagos.core._torch_quirks import load_jvp_decompositions
from pelagos.inverse.problem import VariationalProblem
from pelagos.io.build import setup
from pelagos.io.config import load_config
from pelagos.io.inverse_run import observations, set_priors

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)

cfg = load_config(
    "examples/ecosmo_identifiability.yaml",
    overrides=["time.stop=1998-02-05 00:00:00", "numerics.compile=true"],
    require=("observations", "method"),
)
s = setup(cfg)
obs, truth = observations(cfg, s, s.model, s.state)
s.model.select_free(cfg.method.free)
set_priors(s.model, cfg.method)
P = VariationalProblem(s.model, obs, s.state, t0=s.t0)
z = P.z0.clone()
n = z.numel()
load_jvp_decompositions()
t = time.process_time()
try:
    with fwAD.dual_level():
        zb = fwAD.make_dual(z.expand(n, n).clone(), torch.eye(n))
        J = fwAD.unpack_dual(P.residuals(zb)).tangent
    print(
        "batched compiled jvp ran", None if J is None else tuple(J.shape), time.process_time() - t, flush=True
    )
except Exception as e:
    print("batched compiled jvp RAISED", type(e).__name__, str(e)[:500], flush=True)
    traceback.print_exc()
    raise SystemExit(1) from e
J = J.T
with torch.no_grad():
    P.predict(z)
print("guard (one-sided FD, as in jacobian):", P._check_jacobian(z, J), flush=True)
d = torch.randn(n, generator=torch.Generator().manual_seed(0))
for h in (1e-7, 1e-6, 1e-5):
    with torch.no_grad():
        fd = (P.residuals(z + h * d) - P.residuals(z - h * d)) / (2 * h)
    Jd = J @ d
    print(
        f"central h={h}: max|Jd-fd|/max|fd| = {float((Jd - fd).abs().max() / fd.abs().max()):.2e}", flush=True
    )
