"""SCE-UA (SPOTPY) calibration of pelagos's HBV on the CAMELS-US sample, for comparison with the gradient
calibration of ``pelagos calibrate`` (examples/hbv_calibrate.yaml, scripts/hbv_calibrate_camels4.py).

Same model (``pelagos.hydro.hbv.run_hbv``, nmul = 1, float64, hard thresholds), same data (Daymet forcing,
USGS discharge), same 14 parameters within the same bounds, same objective: 1 − NSE of daily discharge in
2001 after the warm-up year 2000 (cold start on 2000-01-01). SPOTPY's SCE-UA (Duan et al. 1992) draws from
uniform priors on the bounds and evaluates one parameter set per model run.

Run in the side environment (scripts/side_env_spotpy.sh):

    PYTHONPATH=src nice .side/spotpy/bin/python scripts/sceua_hbv.py [--rep 1500] [--ngs 4] [--basins ...]

Writes benchmarks/results/hydro_sceua.json: per basin the best NSE/KGE (calibration and test 2002), the number
of model runs, the wall time and the best-so-far NSE after each run (runs and time to a given NSE).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import spotpy
import torch

from pelagos.hydro.calibration import evaluate
from pelagos.hydro.camels import SAMPLE, SAMPLE_BASINS, load_basin
from pelagos.hydro.hbv import DEFAULTS, PARAMETERS, run_hbv

WARMUP = ("2000-01-01", "2000-12-31")
CAL = ("2001-01-01", "2001-12-31")
TEST = ("2002-01-01", "2002-12-31")


class HBVSetup:
    """SPOTPY setup: pelagos HBV of one basin, 1 − NSE on the calibration year."""

    def __init__(self, gauge_id: str) -> None:
        b = load_basin(SAMPLE, gauge_id, WARMUP[0], CAL[1])
        t = b.tensors(torch.float64)
        self.P, self.T, self.PET = (t[k][:, None] for k in ("P", "T", "PET"))
        self.n_warm = int((np.datetime64(CAL[0]) - np.datetime64(WARMUP[0])).astype(int))
        self.obs = t["Q"][self.n_warm :].numpy()
        self.mask = np.isfinite(self.obs)
        self.params = [
            spotpy.parameter.Uniform(n, low=s.lo, high=s.hi, optguess=DEFAULTS[n])
            for n, s in PARAMETERS.items()
        ]
        self.trace: list[tuple[float, float]] = []  # (1 − NSE, seconds since start) per run
        self.t0 = time.perf_counter()

    def parameters(self):
        return spotpy.parameter.generate(self.params)

    def simulation(self, x):
        p = {}
        for n, v in zip(PARAMETERS, np.asarray(x, dtype=np.float64)):
            v = torch.tensor([float(v)], dtype=torch.float64)
            p[n] = v[:, None] if n not in ("route_a", "route_b") else v
        with torch.no_grad():
            q = run_hbv(self.P, self.T, self.PET, p, warmup=self.n_warm, check=False).Q[:, 0]
        return q.numpy()

    def evaluation(self):
        return self.obs

    def objectivefunction(self, simulation, evaluation, params=None):
        s, o = np.asarray(simulation)[self.mask], np.asarray(evaluation)[self.mask]
        loss = float(((s - o) ** 2).sum() / ((o - o.mean()) ** 2).sum())  # 1 − NSE
        self.trace.append((loss, time.perf_counter() - self.t0))
        return loss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--basins", nargs="*", default=list(SAMPLE_BASINS))
    ap.add_argument("--rep", type=int, default=1500, help="maximum model runs per basin")
    ap.add_argument("--ngs", type=int, default=4, help="number of complexes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/hydro_sceua.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    res.update(
        {"spotpy": spotpy.__version__, "torch": torch.__version__, "rep": args.rep, "ngs": args.ngs,
         "objective": "1 - NSE, daily Q 2001 after warm-up 2000", "basins": res.get("basins", {})}
    )  # fmt: skip
    for g in args.basins:
        np.random.seed(args.seed)
        setup = HBVSetup(g)
        sampler = spotpy.algorithms.sceua(setup, dbname=f"sceua_{g}", dbformat="ram", random_state=args.seed)
        t0 = time.perf_counter()
        sampler.sample(args.rep, ngs=args.ngs, kstop=5, peps=1e-4, pcento=1e-4)
        wall = time.perf_counter() - t0
        data = sampler.getdata()
        like = np.asarray(data["like1"], dtype=np.float64)
        best = int(np.argmin(like))
        names = list(PARAMETERS)
        xbest = {n: float(data["par" + n][best]) for n in names}
        ev = evaluate(SAMPLE, g, xbest, start=WARMUP[0], calibration=CAL, test=TEST)
        trace = np.minimum.accumulate(np.array([t[0] for t in setup.trace]))
        times = np.array([t[1] for t in setup.trace])
        res["basins"][g] = {
            "runs": len(setup.trace),
            "wall_time": wall,
            "seconds_per_run": wall / max(len(setup.trace), 1),
            "best": xbest,
            "calibration": ev["calibration"],
            "test": ev["test"],
            # best-so-far NSE every 10 runs (and the last), with the elapsed time
            "nse_trace": [[i + 1, float(1 - trace[i]), float(times[i])]
                          for i in [*range(0, len(trace), 10), len(trace) - 1]],
        }  # fmt: skip
        print(
            f"{g}: SCE-UA {len(setup.trace)} runs, {wall:.0f} s; NSE cal {ev['calibration']['NSE']:.3f} "
            f"test {ev['test']['NSE']:.3f}; KGE cal {ev['calibration']['KGE']:.3f} "
            f"test {ev['test']['KGE']:.3f}",
            flush=True,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
