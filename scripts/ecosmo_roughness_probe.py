"""Which mechanism makes the ECOSMO twin cost rough? J along one fixed random direction of the prior-whitened
control (the direction of ``scripts/ecosmo_cost_probe.py``), one batched run per variant, with one candidate
mechanism changed at a time (docs/ecosmo_identifiability.md, "Where the roughness comes from").

Variants (``--variant``, repeatable):

- ``hard``: the model as FABM (every switch hard);
- ``smooth``: every ECOSMO switch smooth (``Switches(smooth=True)``, ``--sharpness``);
- ``smooth:<kind>[,<kind>...]``: only those switch kinds smooth (e.g. ``smooth:loss_phyto,loss_zoo``);
- ``upstream``: hard switches, sinking by first-order upstream instead of the P2_PDM limiter.

The window is ``--stop`` (the twin's observations are regenerated for it). Plain step (no compile: each
variant is a different graph). Run from the repository root with PYTHONPATH=src; writes JSON (``--out``).
``--plot A.json [B.json ...]`` draws docs/figures/ecosmo_roughness.png from such files instead.
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

LABELS = {
    "hard": "hard (FABM)",
    "smooth": "all switches smooth",
    "smooth:loss_phyto,loss_zoo": "only the loss switches smooth",
    "smooth:limitation,silicate,oxygen,nitrate,salinity,par,bottom_stress,chl2c": (
        "all but the loss switches smooth"
    ),
    "upstream": "hard, upstream sinking",
}
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


def plot(files: list[str], out: Path) -> None:
    """|ΔJ| against the step t on log axes (left) and ΔJ on a uniform scan (right), one panel row per file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [json.loads(Path(f).read_text()) for f in files]
    fig, axes = plt.subplots(len(data), 2, figsize=(11, 3.6 * len(data)), squeeze=False)
    for row, d in zip(axes, data):
        span = f"1998-01-01 → {d['stop'][:10]}"
        for k, (v, r) in enumerate(d["variants"].items()):
            t, dj = r["t_log"][1:], r["dJ_log"][1:]
            v = LABELS.get(v, v)
            row[0].loglog(t, [abs(x) for x in dj], "o-", color=f"C{k}", label=v, ms=4)
            row[1].plot(r["t_fine"], r["dJ_fine"], "o-", color=f"C{k}", label=v, ms=3)
        row[0].set_xlabel("t (prior std along d)")
        row[0].set_ylabel("|J(t) − J(0)|")
        row[0].set_title(f"{span}: a smooth cost is a line of slope 1")
        row[1].set_xlabel("t (prior std along d)")
        row[1].set_ylabel("J(t) − J(0)")
        row[1].set_title(f"{span}: uniform scan")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stop", default="1998-02-01 00:00:00")
    ap.add_argument("--variant", action="append", default=None)
    ap.add_argument("--sharpness", type=float, default=100.0)
    ap.add_argument("--fine", type=float, default=1e-3, help="also a uniform scan t in [0, fine] (12 points)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", nargs="+", default=None, help="JSON files of earlier runs: draw the figure")
    a = ap.parse_args()
    if a.plot:
        plot(a.plot, Path(__file__).resolve().parents[1] / "docs" / "figures" / "ecosmo_roughness.png")
        return
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
            "n_obs": int(tw.obs.n_obs),
            "cpu_s": time.process_time() - c,
            "wall_s": time.perf_counter() - w,
        }
        print(v, json.dumps(res["variants"][v]), flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
