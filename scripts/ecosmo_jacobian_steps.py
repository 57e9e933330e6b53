"""Does the central-difference Jacobian of the twin at the truth depend on the step? (It must not if the
cost is smooth at that scale.) One batched run of 41 columns per (switch variant, relative step), plain step.
Variants: ``hard`` (FABM's switches) and ``loss`` (smooth anti-extinction loss switches, the twin's model).
Run from the repository root with PYTHONPATH=src; writes JSON (docs/ecosmo_identifiability.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ecosmo_identifiability import Twin, batched_jacobian
from ecosmo_roughness_probe import set_variant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", nargs="+", default=["hard:1e-4", "loss:1e-4"], help="variant:relative_step")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    tw = Twin()
    res: dict = {"names": tw.names, "runs": {}}
    z = tw.truth
    lnscale = tw.physical(z).abs() / tw.dtheta_dz(z).abs()
    for run in a.runs:
        variant, step = run.split(":")
        set_variant(tw, "hard" if variant == "hard" else "smooth:loss_phyto,loss_zoo", 100.0)
        c, w = time.process_time(), time.perf_counter()
        Jm, r = batched_jacobian(tw.residuals, z, h=tw.fd_step(z, float(step)))
        M = Jm.shape[0] - tw.p
        res["runs"][run] = {
            "sensitivity": (Jm[:M] * lnscale).norm(dim=0).tolist(),
            "cost": float(0.5 * r.pow(2).sum()),
            "cpu_s": time.process_time() - c,
            "wall_s": time.perf_counter() - w,
        }
        print(run, json.dumps(res["runs"][run]), flush=True)
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
