"""SDA benchmark: the small configuration end to end on CPU; the study's anchors at paper scale on a GPU.

Usage (from the repository root)::

    .venv/bin/python benchmarks/sda.py [--config examples/sda_small.yaml] [--dir results/sda_small]
                                       [--reuse] [--out benchmarks/results/sda.json]
    .venv/bin/python benchmarks/sda.py --paper     # GPU only: skipped (with a message) without CUDA

CPU part: runs `pelagos sda generate | train | sample | evaluate` of the small configuration (``--reuse``
keeps data / network / samples already in ``--dir``), times each stage (wall and CPU time), and records the
metrics table (SDA vs 4D-Var vs LETKF vs climatology: RMSE, spread, cost) and the figures; plus the cost of
one score-network evaluation with and without gradient checkpointing on the small network, and the
simulation model's step time next to pyqg's anchor (≈ 24 ms per 512² step per CPU core, from the issue).

GPU part (``--paper``): at the study's size (window 9, 256² × 6 channels, hidden 16/32/64, 3 blocks, kernel
5), peak memory and time of a training step with vs without checkpointing (anchor −72 % memory, +27 % time)
and of drawing 3 posterior trajectories of 32 states with 256 steps and one correction (anchor 14 GB, 18 min
on an A5000), with an untrained network (cost does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

PYQG_512_MS = 24.0  # ms per 512² step per core (issue 13's anchor)


def _stage(name: str, fn, log: dict) -> object:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    log[name] = {"wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(time.process_time() - c, 1)}
    print(f"{name}: {log[name]['wall_s']} s wall, {log[name]['cpu_s']} s CPU", flush=True)
    return out


def net_cost(tcfg, shape, device, repeat: int = 3) -> dict:
    """Time (and CUDA peak memory) of a DSM training step on a batch of windows, plain vs checkpointed."""
    from _timing import best
    from pelagos.inverse.sda import VPSDE
    from pelagos.io.sda_run import build_net

    out = {}
    for ck in (False, True):
        torch.manual_seed(0)
        tcfg.checkpoint = ck
        net = build_net(tcfg).to(device)
        sde = VPSDE(net, shape[1:])
        x = torch.randn(shape, device=device)

        def step(sde=sde, x=x):
            sde.loss(x).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = best(step, repeat, warmup=True)
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        out["checkpoint" if ck else "plain"] = {"step_s": t, "peak_GiB": mem}
    p, c = out["plain"], out["checkpoint"]
    out["time_ratio"] = c["step_s"] / p["step_s"]
    if p["peak_GiB"]:
        out["memory_ratio"] = c["peak_GiB"] / p["peak_GiB"]
    return out


def qg_step_ms(nx: int, device, n: int = 10) -> float:
    from _timing import best
    from pelagos.core import rollout
    from pelagos.qg import QGModel

    m = QGModel(nx=nx, dt=900.0, device=device)
    st = m.initial_state(1, seed=0)
    with torch.no_grad():
        st = rollout(m, st, 5, save_every=10**9, include_initial=False).final

        def run():
            rollout(m, st, n, save_every=10**9, include_initial=False)
            if device.type == "cuda":
                torch.cuda.synchronize()

        return 1e3 * best(run, 3) / n


def _strip(o):
    """Metrics without the per-channel-and-state arrays (they stay in <dir>/metrics.json)."""
    if isinstance(o, dict):
        return {k: _strip(v) for k, v in o.items() if not k.endswith("_per_channel_state")}
    return [_strip(v) for v in o] if isinstance(o, list) else o


def cpu_part(args) -> dict:
    from pelagos.cli import main
    from pelagos.io.sda_run import TrainConfig, load_sda_config

    cfg = load_sda_config(args.config, output=args.dir)
    d = cfg.dir
    stages: dict = {}
    base = [args.config, "--no-progress"] + (["--output", str(args.dir)] if args.dir else [])
    if not (args.reuse and (d / "data" / "stats.json").exists()):
        _stage("generate", lambda: main(["sda", "generate", *base]), stages)
    if not (args.reuse and (d / "score.pt").exists()):
        _stage("train", lambda: main(["sda", "train", *base]), stages)
    if not (args.reuse and (d / "samples.pt").exists()):
        _stage("sample", lambda: main(["sda", "sample", *base]), stages)
    _stage("evaluate", lambda: main(["sda", "evaluate", *base]), stages)
    metrics = json.loads((d / "metrics.json").read_text())
    n = cfg.data.coarse_nx
    tc = TrainConfig(**{**cfg.train.__dict__})
    net = net_cost(tc, (cfg.train.batch_size, cfg.train.window, 6, n, n), torch.device("cpu"))
    return {
        "config": str(args.config),
        "stages": stages,
        "metrics": _strip({k: v for k, v in metrics.items() if k != "spectra"}),
        "table": (d / "metrics.md").read_text(),
        "training": json.loads((d / "training.json").read_text()) if (d / "training.json").exists() else None,
        "network_step_cpu": net,
        "qg_step_ms_cpu_64": qg_step_ms(64, torch.device("cpu"), 50),
        "pyqg_anchor_ms_512": PYQG_512_MS,
    }


def paper_part() -> dict:
    if not torch.cuda.is_available():
        print("paper scale: GPU only; skipped (CUDA not available)")
        return {"skipped": "CUDA not available"}
    from pelagos.inverse.sda import VPSDE, GaussianScore, sample
    from pelagos.io.sda_run import Scenario, ScenarioConfig, TrainConfig, build_net

    dev = torch.device("cuda")
    tc = TrainConfig(window=9, hidden=[16, 32, 64], blocks=3, kernel=5, embedding=64, expansion=4)
    res = {"train_step": net_cost(tc, (4, 9, 6, 256, 256), dev, repeat=3)}
    tc.checkpoint = True
    net = build_net(tc).to(dev).eval()
    sc = Scenario(ScenarioConfig("velocity_grid", "grid", stride=16, sigma=0.01), 32, 256)
    sde = VPSDE(net, (32, 6, 256, 256))
    y = torch.zeros(sc.m, device=dev)
    post = GaussianScore(y, sc.A, 0.01, sde)
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    sample(post, batch=3, steps=256, corrections=1, device=dev)
    torch.cuda.synchronize()
    res["sample_3x32"] = {
        "wall_s": time.perf_counter() - t,
        "peak_GiB": torch.cuda.max_memory_allocated() / 2**30,
        "anchor": {"wall_s": 18 * 60, "peak_GiB": 14},
    }
    res["qg_step_ms_gpu_512"] = qg_step_ms(512, dev, 50)
    res["device"] = torch.cuda.get_device_name()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "examples" / "sda_small.yaml"))
    ap.add_argument("--dir", default=None, help="working folder (default: output.file of the config)")
    ap.add_argument("--reuse", action="store_true", help="keep data / network / samples already there")
    ap.add_argument("--paper", action="store_true", help="the GPU part at the study's scale")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sda.json"))
    args = ap.parse_args()
    res = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
    }
    if args.paper:
        res["paper"] = paper_part()
        out = pathlib.Path(args.out).with_name("sda_paper.json")
    else:
        res["small"] = cpu_part(args)
        out = pathlib.Path(args.out)
        print(res["small"]["table"])
        net = res["small"]["network_step_cpu"]
        print(f"network step, checkpointed / plain time: {net['time_ratio']:.2f}")
        print(
            f"QG 64² step (CPU): {res['small']['qg_step_ms_cpu_64']:.3f} ms; "
            f"pyqg anchor 512²: {PYQG_512_MS} ms"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
