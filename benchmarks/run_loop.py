"""The one run loop on the user's path: what `pelagos run` costs against the bare time loop it is built on.

Measures, for the Northern North Sea NPZD column (``examples/nns_annual_npzd.yaml``, one year, hourly steps,
daily output):

- ``rollout``: the bare :func:`pelagos.core.rollout` over the year (no output at all), the floor;
- ``run (snapshots)``: ``pelagos run`` writing the state and physics as daily snapshots (``output.variables``
  without the diagnostics);
- ``run (all, means)``: ``pelagos run`` as configured: every declared variable, the BGC diagnostics and PAR as
  daily *interval means* (one more BGC evaluation per step);

and, for Lorenz-96 (nx 40, 10 000 steps, output every step), the per-step overhead of :class:`Simulation` with
an in-memory writer over ``rollout``. Prints ratios (ours / bare loop) and writes
``benchmarks/results/run_loop.json``. Wall time, one thread, best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from _timing import best
from pelagos.core import rollout
from pelagos.core.simulation import MemoryWriter, Simulation
from pelagos.io.build import run, setup
from pelagos.io.config import load_config
from pelagos.models.lorenz import Lorenz96

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "nns_annual_npzd.yaml"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one month of the column, 1000 Lorenz-96 steps")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    stop = ["--set", "time.stop=1998-02-01"] if args.quick else []
    overrides = [s for s in stop if s != "--set"]

    cfg = load_config(CONFIG, overrides=overrides)
    s = setup(cfg)

    def bare():
        with torch.no_grad():
            rollout(s.model, s.state, s.n_steps, t0=s.t0, save_every=s.n_steps + 1, include_initial=False)

    snap_vars = "output.variables=[npzd_nut,npzd_phy,npzd_zoo,npzd_det,h,temp,salt,nuh,I_0]"

    def run_snapshots():
        run(
            load_config(CONFIG, overrides=[*overrides, snap_vars]),
            output=tmp / "s.nc",
            fresh=True,
            progress=False,
        )

    def run_means():
        run(load_config(CONFIG, overrides=overrides), output=tmp / "m.nc", fresh=True, progress=False)

    col = {"rollout_s": best(bare, args.repeat)}
    col["run_snapshots_s"] = best(run_snapshots, args.repeat)
    col["run_means_s"] = best(run_means, args.repeat)
    col["snapshots_over_rollout"] = col["run_snapshots_s"] / col["rollout_s"]
    col["means_over_rollout"] = col["run_means_s"] / col["rollout_s"]

    n = 1000 if args.quick else 10_000
    m = Lorenz96(40, dtype=torch.float64).double()
    x0 = m.initial_state() + 0.01

    def l96_bare():
        with torch.no_grad():
            rollout(m, x0, n, save_every=1)

    def l96_sim():
        Simulation(m, x0, n_steps=n, output_every=1, writers=[MemoryWriter()], progress=False).run()

    l96 = {"steps": n, "rollout_s": best(l96_bare, args.repeat), "simulation_s": best(l96_sim, args.repeat)}
    l96["overhead_us_per_step"] = 1e6 * (l96["simulation_s"] - l96["rollout_s"]) / n
    l96["simulation_over_rollout"] = l96["simulation_s"] / l96["rollout_s"]

    res = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread, torch "
        f"{torch.__version__}",
        "quick": args.quick,
        "column_nns_npzd_year": col,
        "lorenz96_every_step": l96,
    }
    print(f"column NNS NPZD {'1 month' if args.quick else '1 year'} ({s.n_steps} steps, daily output):")
    print(f"  bare rollout           {col['rollout_s']:7.2f} s")
    print(f"  pelagos run, snapshots {col['run_snapshots_s']:7.2f} s  ({col['snapshots_over_rollout']:.2f}x)")
    shipped = f"{col['run_means_s']:6.2f} s  ({col['means_over_rollout']:.2f}x; daily means)"
    print(f"  pelagos run, as shipped {shipped}")
    print(f"Lorenz-96, {n} steps, output every step: rollout {l96['rollout_s']:.2f} s, Simulation "
          f"{l96['simulation_s']:.2f} s ({l96['overhead_us_per_step']:.0f} µs/step overhead)")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / ("run_loop_quick.json" if args.quick else "run_loop.json")
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
