"""Which mechanism makes the ECOSMO twin cost rough? J along one fixed random direction of the prior-whitened
control (the direction of ``scripts/ecosmo_cost_probe.py``), one batched run per variant, with one candidate
mechanism changed at a time (docs/ecosmo_identifiability.md, "Where the roughness comes from").

Variants (``--variant``, repeatable):

- ``hard``: the model as FABM (every switch hard);
- ``smooth``: every ECOSMO switch smooth (``Switches(smooth=True)``, ``--sharpness``);
- ``smooth:<kind>[,<kind>...]``: only those switch kinds smooth (e.g. ``smooth:loss_phyto,loss_zoo``);
- ``upstream``: hard switches, sinking by first-order upstream instead of the P2_PDM limiter.

The window is ``--stop`` (the twin's observations are regenerated for it). Plain step (no compile: each
variant is a different graph). Run from the repository root with PYTHONPATH=src; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from ecosmo_identifiability import Twin

from pelagos.bgc.ecosmo import ECOSMO
from pelagos.bgc.ecosmo_switches import DEFAULT_SCALES, Switches

LOG_TS = [0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]


def ecosmo_instances(model) -> list[ECOSMO]:
    return [m for m in model.bgc.models.values() if isinstance(m, ECOSMO)]


def set_variant(tw: Twin, variant: str, sharpness: float) -> None:
    for m in ecosmo_instances(tw.model):
        if variant in ("hard", "upstream"):
            m.sw = Switches(False)
        elif variant == "smooth":
            m.sw = Switches(True, sharpness)
        elif variant.startswith("smooth:"):
            kinds = variant.split(":", 1)[1].split(",")
            m.sw = Switches(True, sharpness, only=kinds)
        else:
            raise SystemExit(f"unknown variant {variant!r}")
    tw.model.sinking_method = "UPSTREAM" if variant == "upstream" else "P2_PDM"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stop", default="1998-02-01 00:00:00")
    ap.add_argument("--variant", action="append", default=None)
    ap.add_argument("--sharpness", type=float, default=100.0)
    ap.add_argument("--fine", type=float, default=1e-3, help="also a uniform scan t in [0, fine] (12 points)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    variants = a.variant or ["hard", "smooth"]
    res: dict = {"stop": a.stop, "sharpness": a.sharpness, "kinds": list(DEFAULT_SCALES), "variants": {}}
    for v in variants:
        tw = Twin(overrides=[f"time.stop={a.stop}"])
        set_variant(tw, v, a.sharpness)
        d = torch.randn(tw.p, generator=torch.Generator().manual_seed(a.seed))
        d = d / d.norm()
        fine = [a.fine * k / 11 for k in range(12)] if a.fine > 0 else []
        ts = LOG_TS + fine
        Z = torch.stack([tw.prior_mean + tw.prior_std * (t * d) for t in ts])
        c, w = time.process_time(), time.perf_counter()
        with torch.no_grad():
            J = (0.5 * tw.residuals(Z).pow(2).sum(-1)).tolist()
        n = len(LOG_TS)
        res["variants"][v] = {
            "t_log": LOG_TS,
            "dJ_log": [j - J[0] for j in J[:n]],
            "t_fine": fine,
            "dJ_fine": [j - J[n] for j in J[n:]],
            "J0": J[0],
            "n_obs": int(tw.obs.values.numel()),
            "cpu_s": time.process_time() - c,
            "wall_s": time.perf_counter() - w,
        }
        print(v, json.dumps(res["variants"][v]), flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
