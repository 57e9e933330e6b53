"""Hydrology benchmark: HBV throughput against MHPI's hydrodl2, Muskingum–Cunge routing throughput, and
SCE-UA vs gradient calibration.

1. **HBV basin-years per second**, forward (no autograd) and forward+backward (gradient of Σ Q with respect
   to all 14 parameters of every basin), for 1, 16, 256 and 4096 basins (``--quick``: 1, 16, 256), one year
   (365 days, nmul = 1, routing on, static parameters), float32 and float64, one torch thread. Reference:
   MHPI's hydrodl2 1.4.0 ``Hbv`` (HBV 1.0, which pelagos reproduces to round-off, see docs/hydro.md), *run*
   in the ``hbv`` helper's side environment ``.side/hbv_ref`` (scripts/side_env_hbv_reference.sh; the code
   is non-commercial and never imported by pelagos or copied): the same forcing and parameter values, its
   native float32 and a float64 run (its hard-coded float32 replaced at run time by float64). Ratios printed
   are pelagos / hydrodl2 throughput (> 1: pelagos faster).
2. **Routing**: reach-days per second of :func:`pelagos.hydro.routing.muskingum_cunge` (variable
   parameters, 24 sub-steps a day) on a 15-reach tree, forward and forward+backward, 1 and 64 members.
3. **SCE-UA vs gradient calibration** (benchmarks/results/hydro_sceua.json from scripts/sceua_hbv.py and
   results/hbv_calibrate/summary.json from scripts/hbv_calibrate_camels4.py): per basin the final NSE of
   each, and the model runs and wall time SCE-UA needed to reach the NSE the gradient calibration reached
   (a gradient evaluation is one forward and one backward run).

``--calibration-only`` recomputes part 3 into an existing hydro.json. Timings are CPU times (one thread),
minima over 2 calls: the machine is shared and oversubscribed, wall times are not meaningful there. Writes
benchmarks/results/hydro.json.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pelagos.hydro.camels import SAMPLE, SAMPLE_BASINS, load_basins, stack_basins
from pelagos.hydro.hbv import PARAMETERS, run_hbv
from pelagos.hydro.routing import RiverNetwork, muskingum_cunge

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "benchmarks" / "results" / "hydro.json"
DAYS = 365
HBV_NAMES = list(PARAMETERS)[:12]


def best(fn, repeat: int = 2) -> float:
    """Minimum CPU time (``time.process_time``, one torch thread) of ``fn()`` over ``repeat`` calls, s.

    CPU time rather than wall time: the machine is shared and oversubscribed; with one thread the CPU time of
    the process is what the run costs (the first call includes first-use overheads; the minimum drops it).
    """
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def forcing(n_basins: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(365, n_basins) P, T, PET of year 2001: the 4 sample basins tiled."""
    f = stack_basins(load_basins(SAMPLE, SAMPLE_BASINS, "2001-01-01", "2001-12-31"), dtype)
    idx = torch.arange(n_basins) % 4
    return f["P"][:, idx].contiguous(), f["T"][:, idx].contiguous(), f["PET"][:, idx].contiguous()


def unit_values(n_basins: int, seed: int = 0) -> np.ndarray:
    """(n_basins, 14) parameter values in [0.05, 0.95] of each range (the same for both implementations)."""
    return np.random.default_rng(seed).uniform(0.05, 0.95, size=(n_basins, 14))


def pelagos_case(n_basins: int, dtype: torch.dtype, backward: bool, repeat: int) -> float:
    P, T, PET = forcing(n_basins, dtype)
    unit = torch.as_tensor(unit_values(n_basins), dtype=dtype)

    def run():
        u = unit.clone().requires_grad_(backward)
        p = {}
        for i, (n, s) in enumerate(PARAMETERS.items()):
            v = s.lo + u[:, i] * (s.hi - s.lo)
            p[n] = v[:, None] if n in HBV_NAMES else v
        with torch.set_grad_enabled(backward):
            q = run_hbv(P, T, PET, p, check=False).Q
            if backward:
                q.sum().backward()

    return best(run, repeat)


REF_SNIPPET = r"""
import json, sys, time, types
import numpy as np, torch
torch.set_num_threads(1)
dtype_name, sizes, repeat, data = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if dtype_name == "float64":
    torch.set_default_dtype(torch.float64)
import hydrodl2.models.base as hb
import hydrodl2.models.hbv.hbv as hh
if dtype_name == "float64":   # hydrodl2 hard-codes float32: give its modules a torch whose float32 is float64
    class T64(types.ModuleType):
        def __getattr__(self, k):
            return torch.float64 if k == "float32" else getattr(torch, k)
    hh.torch = hb.torch = T64("torch")
dtype = getattr(torch, dtype_name)
d = np.load(data)
out = {}
for n in sizes:
    idx = np.arange(n) % 4
    x = torch.as_tensor(np.stack([d["P"][:, idx], d["T"][:, idx], d["PET"][:, idx]], -1), dtype=dtype)
    unit = np.random.default_rng(0).uniform(0.05, 0.95, size=(n, 14))
    raw0 = torch.as_tensor(np.log(unit) - np.log1p(-unit), dtype=dtype)   # hydrodl2 applies a sigmoid
    raw0 = raw0[None].expand(x.shape[0], n, 14).contiguous()
    cfg = {"warmup": 0, "warmup_states": True, "dynamic_params": {"Hbv": []}, "routing": True, "nmul": 1,
           "variables": ["prcp", "tmean", "pet"]}
    model = hh.Hbv(cfg, device=torch.device("cpu"))
    res = {}
    for backward in (False, True):
        def run():
            raw = raw0.clone().requires_grad_(backward)
            with torch.set_grad_enabled(backward):
                q = model({"x_phy": x}, raw)["streamflow"]
                assert q.dtype == dtype, q.dtype
                if backward:
                    q.sum().backward()
            return q
        ts = []
        for _ in range(repeat):
            t0 = time.process_time(); run(); ts.append(time.process_time() - t0)
        res["fwd_bwd" if backward else "fwd"] = min(ts)
    out[str(n)] = res
print(json.dumps(out))
"""


def reference_python() -> Path | None:
    for base in (ROOT, ROOT.parent / "hbv", Path("/work/wt/hbv")):
        py = base / ".side" / "hbv_ref" / "bin" / "python"
        if py.exists():
            return py
    return None


def hydrodl2_cases(sizes, repeat) -> dict | str:
    py = reference_python()
    if py is None:
        return (
            "no .side/hbv_ref side environment (scripts/side_env_hbv_reference.sh) found: reference not run"
        )
    f = stack_basins(load_basins(SAMPLE, SAMPLE_BASINS, "2001-01-01", "2001-12-31"), torch.float64)
    tmp = ROOT / "results" / "hydro_bench_forcing.npz"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    np.savez(tmp, P=f["P"].numpy(), T=f["T"].numpy(), PET=f["PET"].numpy())
    out = {}
    for dt in ("float32", "float64"):
        r = subprocess.run(
            [str(py), "-c", REF_SNIPPET, dt, json.dumps(sizes), str(repeat), str(tmp)],
            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        if r.returncode != 0:
            return f"hydrodl2 run failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}"
        out[dt] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def routing_cases(repeat: int) -> dict:
    down = [8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, -1]
    R = len(down)
    g = torch.Generator().manual_seed(3)
    net = RiverNetwork.build(
        down, 2e4 + 4e4 * torch.rand(R, generator=g), 1e-3, 20 + 30 * torch.rand(R, generator=g)
    )
    res = {}
    for members in (1, 64):
        lat = 1 + 10 * torch.rand(DAYS, members, R, generator=g, dtype=torch.float64)
        for backward in (False, True):

            def run(members=members, lat=lat, backward=backward):
                n = torch.full((members, R), 0.04, dtype=torch.float64, requires_grad=backward)
                with torch.set_grad_enabled(backward):
                    q = muskingum_cunge(net, lat, n, substeps=24).Q_mean
                    if backward:
                        q.sum().backward()

            t = best(run, repeat)
            res[f"{members}_{'fwd_bwd' if backward else 'fwd'}"] = {
                "seconds": t,
                "reach_days_per_s": members * R * DAYS / t,
            }
    return res


def evaluation_costs(repeat: int) -> dict:
    """CPU seconds of one model run of each calibration, basin 01022500, 2000-2001 (731 days), float64:
    SCE-UA's objective (``run_hbv``, no autograd: scripts/sceua_hbv.py) and one cost + gradient evaluation of
    ``pelagos calibrate`` (the kind ``hbv`` through the inverse problem, 14 free parameters)."""
    from pelagos.core.obsio import read_observations
    from pelagos.hydro.camels import load_basin
    from pelagos.inverse.problem import VariationalProblem
    from pelagos.io.build import setup
    from pelagos.io.config import load_config
    from pelagos.io.inverse_run import set_priors

    cfg = load_config(ROOT / "examples" / "hbv_calibrate.yaml")
    s = setup(cfg)
    obs = read_observations(cfg.resolve(cfg.observations.file), s.model, start=s.t0, stop=s.t1)
    s.model.select_free(cfg.method.free)
    set_priors(s.model, cfg.method)
    prob = VariationalProblem(s.model, obs, s.state, t0=s.t0)

    def grad_eval():
        z = prob.z0.clone().requires_grad_(True)
        prob.cost(z).backward()

    b = load_basin(SAMPLE, "01022500", "2000-01-01", "2001-12-31").tensors()
    p = {n: torch.tensor([v.default], dtype=torch.float64) for n, v in s.model.params.specs.items()}
    p = {n: (v[:, None] if n in HBV_NAMES else v) for n, v in p.items()}

    def sce_run():
        with torch.no_grad():
            run_hbv(b["P"][:, None], b["T"][:, None], b["PET"][:, None], p, warmup=366, check=False)

    return {"gradient_evaluation": best(grad_eval, repeat), "sceua_run": best(sce_run, repeat)}


def calibration_comparison(costs: dict) -> dict | str:
    sce_path = ROOT / "benchmarks" / "results" / "hydro_sceua.json"
    grad_path = ROOT / "results" / "hbv_calibrate" / "summary.json"
    if not sce_path.exists() or not grad_path.exists():
        missing = sce_path if not sce_path.exists() else grad_path
        return f"missing {missing}: run scripts/sceua_hbv.py and scripts/hbv_calibrate_camels4.py"
    from pelagos.hydro.calibration import evaluate

    sce, grad = json.loads(sce_path.read_text()), json.loads(grad_path.read_text())
    out = {}
    for g, gb in grad["basins"].items():
        sb = sce["basins"].get(g)
        if sb is None:
            continue
        # NSE after each L-BFGS iteration (the parameters pelagos calibrate recorded), exact
        cal_json = json.loads(Path(gb["results"]).read_text())
        ph = cal_json["parameter_history"]
        kw = {"start": "2000-01-01", "calibration": tuple(grad["calibration"]), "test": tuple(grad["test"])}
        nse_iter = [evaluate(SAMPLE, g, {n: v[k] for n, v in ph.items()}, **kw)["calibration"]["NSE"]
                    for k in range(len(next(iter(ph.values()))))]  # fmt: skip
        evals_per_iter = gb["n_evals"] / max(gb["n_iter"], 1)
        target = min(gb["calibrated"]["calibration"]["NSE"], sb["calibration"]["NSE"])
        hit = next(((r, t) for r, nse_, t in sb["nse_trace"] if nse_ >= target - 1e-3), None)
        k_hit = next((k for k, v in enumerate(nse_iter) if v >= target - 1e-3), None)
        ev_to = None if k_hit is None else round(k_hit * evals_per_iter)
        cal, test = gb["calibrated"]["calibration"], gb["calibrated"]["test"]
        out[g] = {
            "target_NSE": target,
            "gradient": {
                "NSE_cal": cal["NSE"],
                "NSE_test": test["NSE"],
                "KGE_cal": cal["KGE"],
                "KGE_test": test["KGE"],
                "NSE_per_iteration": nse_iter,
                "evaluations_to_target": ev_to,
                "evaluations": gb["n_evals"],
                "iterations": gb["n_iter"],
                "wall_time": gb["wall_time"],
                "first_guess_NSE_cal": gb["first_guess"]["calibration"]["NSE"],
            },
            "sceua": {
                "NSE_cal": sb["calibration"]["NSE"],
                "NSE_test": sb["test"]["NSE"],
                "KGE_cal": sb["calibration"]["KGE"],
                "KGE_test": sb["test"]["KGE"],
                "runs": sb["runs"],
                "wall_time": sb["wall_time"],
                "runs_to_target": None if hit is None else hit[0],
                "seconds_to_target": None if hit is None else hit[1],
            },
            # CPU time on this machine at the measured cost per run (wall times above are on a loaded machine)
            "cpu_seconds": {
                "gradient": gb["n_evals"] * costs["gradient_evaluation"],
                "sceua": sb["runs"] * costs["sceua_run"],
                "gradient_to_target": None if ev_to is None else ev_to * costs["gradient_evaluation"],
                "sceua_to_target": None if hit is None else hit[0] * costs["sceua_run"],
            },
        }
    return out


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    if "--calibration-only" in argv:  # refresh the SCE-UA vs gradient entry of an existing hydro.json
        res = json.loads(OUT.read_text())
        res["calibration"] = calibration_comparison(res["evaluation_cpu_seconds"])
        OUT.write_text(json.dumps(res, indent=1))
        print(
            json.dumps(
                {g: {k: v for k, v in c.items() if k != "gradient"} for g, c in res["calibration"].items()}
                if isinstance(res["calibration"], dict)
                else res["calibration"],
                indent=1,
            )
        )
        return 0
    torch.set_num_threads(1)
    sizes = [1, 16, 256] if quick else [1, 16, 256, 4096]
    repeat = 2
    res: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "threads": 1,
                    "load_average": os.getloadavg(),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "days": DAYS, "sizes": sizes,
    }  # fmt: skip
    hbv: dict = {}
    for dtn in ("float32", "float64"):
        dt = getattr(torch, dtn)
        hbv[dtn] = {}
        for n in sizes:
            r = {k: pelagos_case(n, dt, k == "fwd_bwd", repeat) for k in ("fwd", "fwd_bwd")}
            hbv[dtn][str(n)] = r
            print(f"pelagos HBV {dtn} {n:5d} basins: fwd {n / r['fwd']:9.1f} basin-years/s, "
                  f"fwd+bwd {n / r['fwd_bwd']:9.1f}", flush=True)  # fmt: skip
    res["pelagos_hbv_seconds"] = hbv
    ref = hydrodl2_cases(sizes, repeat)
    res["hydrodl2_hbv_seconds"] = ref
    if isinstance(ref, dict):
        ratios = {}
        for dtn in ("float32", "float64"):
            for n in sizes:
                for k in ("fwd", "fwd_bwd"):
                    r = ref[dtn][str(n)][k] / hbv[dtn][str(n)][k]  # pelagos throughput / hydrodl2 throughput
                    ratios[f"{dtn}_{n}_{k}"] = r
                    print(f"{dtn} {n:5d} basins {k:7s}: pelagos {n / hbv[dtn][str(n)][k]:9.1f}, hydrodl2 "
                          f"{n / ref[dtn][str(n)][k]:9.1f} basin-years/s; ratio {r:.2f}x")  # fmt: skip
        res["ratio_pelagos_over_hydrodl2"] = ratios
    else:
        print(ref)
    res["routing"] = routing_cases(repeat)
    for k, v in res["routing"].items():
        print(f"routing {k}: {v['reach_days_per_s']:.0f} reach-days/s")
    res["evaluation_cpu_seconds"] = evaluation_costs(repeat)
    print(f"one calibration evaluation, CPU s: {res['evaluation_cpu_seconds']}")
    res["calibration"] = calibration_comparison(res["evaluation_cpu_seconds"])
    if isinstance(res["calibration"], dict):
        for g, c in res["calibration"].items():
            gr, sc = c["gradient"], c["sceua"]
            print(
                f"{g}: gradient NSE {gr['NSE_cal']:.3f} in {gr['evaluations']} evaluations "
                f"({gr['wall_time']:.0f} s); SCE-UA NSE {sc['NSE_cal']:.3f} in {sc['runs']} "
                f"runs ({sc['wall_time']:.0f} s); to NSE {c['target_NSE']:.3f}: gradient "
                f"{gr['evaluations_to_target']} evaluations, SCE-UA {sc['runs_to_target']} runs"
            )
    else:
        print(res["calibration"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    name = OUT.with_name("hydro_quick.json") if quick else OUT
    name.write_text(json.dumps(res, indent=1))
    print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
