"""Gauss–Newton Jacobian of `pelagos calibrate`'s year example: forward mode on the compiled column step
(`pelagos.column.compiled.CompiledJvpStep`) against forward mode on the plain step, and the compiled forward.

The case is examples/npzd_calibration_year.yaml (22 × 5 m NNS physics, hourly, NPZD, float64, 2 free
parameters): the Jacobian's batched run (2 control copies, identity tangents) for the first ``--steps`` steps.
CPU time (``time.process_time``, one thread), minimum of ``--repeats``; the first call of each program (its
compilation) is timed apart. Writes benchmarks/results/calibrate_jacobian.json.

    python benchmarks/calibrate_jacobian.py [--steps 240] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD

from pelagos.core._torch_quirks import load_jvp_decompositions
from pelagos.io.build import setup
from pelagos.io.config import load_config
from pelagos.io.inverse_run import inverse_view

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_jvp_decompositions()
    cfg = load_config(ROOT / "examples/npzd_calibration_year.yaml", require=("observations", "method"))
    s = setup(cfg)
    model, x0 = inverse_view(s, "calibrate")
    model.select_free(["npzd.rmax", "npzd.gmax"])
    u = model.free_vector().detach().clone()
    col = model.model
    n = args.steps

    def timed_steps(x):
        """``n`` steps from ``x``: (CPU s of the first step, CPU s per later step, the last state)."""
        c0 = time.process_time()
        x = model.step(x, s.t0)
        c1 = time.process_time()
        for k in range(1, n):
            x = model.step(x, s.t0 + k * model.dt)
        c2 = time.process_time()
        return c1 - c0, (c2 - c1) / (n - 1), x

    def dual_run(mode: str) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        col.compile_mode = mode
        with fwAD.dual_level():
            ub = fwAD.make_dual(u.expand(2, 2).clone(), torch.eye(2, dtype=u.dtype))
            with model.using(ub):
                first, per, x = timed_steps(x0.expand(2, *x0.shape).clone())
            p, t = fwAD.unpack_dual(x)
        return first, per, p, t

    def forward_run() -> tuple[float, float]:
        col.compile_mode = "on"
        with torch.no_grad():
            first, per, _ = timed_steps(x0)
        return first, per

    res: dict = {"steps": n, "repeats": args.repeats, "case": "examples/npzd_calibration_year.yaml"}
    first_c, _, pc, tc = dual_run("on")
    first_f, _ = forward_run()
    per = {"jvp_compiled": [], "jvp_plain": [], "forward_compiled": []}
    for _ in range(args.repeats):
        per["jvp_compiled"].append(dual_run("on")[1])
        _, t_plain, pp, tp = dual_run("off")
        per["jvp_plain"].append(t_plain)
        per["forward_compiled"].append(forward_run()[1])
    best = {k: min(v) for k, v in per.items()}
    res["first_call_s"] = {"jvp_compiled": first_c, "forward_compiled": first_f}
    res["per_step_ms"] = {k: 1e3 * v for k, v in best.items()}
    res["jvp_plain_over_compiled"] = best["jvp_plain"] / best["jvp_compiled"]
    res["jvp_compiled_over_forward_compiled"] = best["jvp_compiled"] / best["forward_compiled"]
    res["max_rel_diff_primal"] = float((pc - pp).abs().max() / pp.abs().max())
    res["max_rel_diff_tangent"] = float((tc - tp).abs().max() / tp.abs().max())
    res["torch"] = torch.__version__
    out = ROOT / "benchmarks/results/calibrate_jacobian.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
