"""Is the year-long ECOSMO twin cost smooth near the first guess? J (whitened misfit + prior) along one fixed
random unit direction d of the prior-whitened control v = (θ − μ)/s at t = 0, 1e-8 … 1e-2 (one batched run),
then t = 0 and t = 1e-5 as single columns (does a column depend on its batch?). Compiled step. Run from
examples/ with PYTHONPATH=src; prints JSON (docs/ecosmo_identifiability.md)."""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from ecosmo_identifiability import Twin

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
tw = Twin(overrides=["numerics.compile=true"])
d = torch.randn(tw.p, generator=torch.Generator().manual_seed(3))
d = d / d.norm()
ts = [0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
Z = torch.stack([tw.prior_mean + tw.prior_std * (t * d) for t in ts])
c = time.process_time()
with torch.no_grad():
    J = 0.5 * tw.residuals(Z).pow(2).sum(-1)
    J1 = [float(0.5 * tw.residuals(Z[k : k + 1]).pow(2).sum()) for k in (0, 4)]
out = {"t": ts, "cost_batched": J.tolist(), "cost_single_column_t0_t1e-5": J1}
out["cpu_s"] = time.process_time() - c
print(json.dumps(out, indent=1))
