"""Experiment 5 of issue 11: gradient cost of the ACC against the number of steps, and its memory with and
without checkpointing (``core.rollout(checkpoint=...)``).

    python scripts/ocean_gradient_cost.py --resolution 4 --steps 10 20 40 80 160 320

For each window of T tracer steps (4° ACC, z-level diffusion, from a 60-step spin-up), loss L = mean u² +
mean v² + 1e-4 mean temp² of the final state, gradient w.r.t. (log A_h, log r_bot) and the initial
temperature:

- **time**: CPU time (``time.process_time``, one thread, minimum of ``--repeats``) of the forward run and of
  forward + backward, for ``checkpoint=None`` and ``checkpoint="sqrt"`` (segments of ⌈√T⌉ steps);
- **memory**: each (T, mode) gradient runs in a fresh subprocess: after a no-grad forward run of the same
  window the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``, Linux), the gradient is taken, and
  the new peak (``VmHWM``) minus the resident size before it (``VmRSS``) is the memory the gradient needs on
  top of the model (MiB). The subprocess runs with ``MALLOC_MMAP_THRESHOLD_=8192``, so that glibc serves every
  allocation above 8 KiB by mmap and returns it on free: with the default heap, freed intermediates stay
  resident and the peak RSS of the checkpointed gradient grows nearly like T although the live memory does not
  (measured: 547 MiB instead of 163 MiB at T = 160). (``ru_maxrss`` is not usable: Linux carries it over from
  the parent.) Without checkpointing the memory grows like T (every step's intermediates are kept); with √T
  segments like √T (T/s boundary states + one segment recomputed).

Writes benchmarks/results/ocean_gradient_cost.json and docs/figures/ocean_experiments/ocean_gradient_cost.png.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _setup(resolution: float):
    from pelagos.ocean import acc_model

    m = acc_model(resolution, isoneutral=False)
    s0 = m.initial_state()
    with torch.no_grad():
        for i in range(60):
            s0 = m.step(s0, i * m.dt)
    m.select_free(["A_h", "r_bot"])
    return m, s0


def _loss_fn(m, s0, n: int, checkpoint):
    from pelagos.core import rollout

    g = m.grid

    def loss(temp0, u):
        with m.using(u):
            st = rollout(m, dict(s0, temp=temp0), n, save_every=n, include_initial=False,
                         checkpoint=checkpoint).final  # fmt: skip
        return (
            (st["u"] ** 2).sum() / g.mask_u.sum()
            + (st["v"] ** 2).sum() / g.mask_v.sum()
            + 1e-4 * (st["temp"] ** 2).sum() / g.mask_t.sum()
        )

    return loss


def _status_mib(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1]) / 1024.0
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def memory_worker(resolution: float, n: int, mode: str) -> dict:
    """In a fresh process: peak RSS after a no-grad forward, then after the gradient (MiB)."""
    torch.set_num_threads(1)
    m, s0 = _setup(resolution)
    ck = None if mode == "none" else "sqrt"
    loss = _loss_fn(m, s0, n, ck)
    u0 = m.free_vector().detach()
    with torch.no_grad():
        loss(s0["temp"], u0)
    gc.collect()
    base = _status_mib("VmRSS")
    _reset_peak()
    t = s0["temp"].clone().requires_grad_(True)
    u = u0.clone().requires_grad_(True)
    val = loss(t, u)
    val.backward()
    peak = _status_mib("VmHWM")
    return {"steps": n, "mode": mode, "rss_before_MiB": base, "peak_gradient_MiB": peak,
            "gradient_extra_MiB": peak - base, "grad_norm": float(u.grad.norm())}  # fmt: skip


def timing(resolution: float, steps: list[int], repeats: int) -> list[dict]:
    torch.set_num_threads(1)
    m, s0 = _setup(resolution)
    u0 = m.free_vector().detach()
    rows = []
    for n in steps:
        row: dict = {"steps": n}
        for mode, ck in (("none", None), ("sqrt", "sqrt")):
            loss = _loss_fn(m, s0, n, ck)
            fw, bw, grads = [], [], None
            for _ in range(repeats):
                t0 = time.process_time()
                with torch.no_grad():
                    loss(s0["temp"], u0)
                fw.append(time.process_time() - t0)
                t = s0["temp"].clone().requires_grad_(True)
                u = u0.clone().requires_grad_(True)
                t0 = time.process_time()
                loss(t, u).backward()
                bw.append(time.process_time() - t0)
                grads = u.grad.clone()
            row[f"forward_s_{mode}"] = min(fw)
            row[f"gradient_s_{mode}"] = min(bw)
            row[f"ratio_{mode}"] = min(bw) / min(fw)
            row[f"grad_{mode}"] = grads.tolist()
        row["checkpoint_same_gradient"] = float(
            (torch.tensor(row["grad_sqrt"]) - torch.tensor(row["grad_none"])).abs().max()
            / torch.tensor(row["grad_none"]).abs().max()
        )
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=float, default=4.0)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40, 80, 160, 320])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/ocean_gradient_cost.json"))
    ap.add_argument("--figure", default=str(ROOT / "docs/figures/ocean_experiments/ocean_gradient_cost.png"))
    ap.add_argument("--reuse-timing", action="store_true", help="keep the timing rows of --json, redo memory")
    ap.add_argument("--worker", nargs=2, metavar=("STEPS", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(memory_worker(args.resolution, int(args.worker[0]), args.worker[1])))
        return
    t_start = time.time()
    if args.reuse_timing:
        rows = [r for r in json.loads(Path(args.json).read_text())["rows"] if r["steps"] in args.steps]
    else:
        rows = timing(args.resolution, args.steps, args.repeats)
    mem = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "8192"}
    for n in args.steps:
        for mode in ("none", "sqrt"):
            out = subprocess.run(
                [sys.executable, __file__, "--resolution", str(args.resolution), "--worker", str(n), mode],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
            mem.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(mem[-1], flush=True)
    res = {
        "what": "ACC gradient cost vs window length, and gradient memory with/without sqrt checkpointing",
        "resolution_deg": args.resolution,
        "grid": "15 x 21 x 15" if args.resolution == 4.0 else None,
        "physics": "TKE vertical mixing, z-level lateral diffusion (isoneutral off), Veros EOS",
        "timing": "CPU time (process_time), 1 thread, min of repeats, loaded shared machine",
        "memory_method": "peak RSS above the pre-gradient RSS, fresh subprocess, MALLOC_MMAP_THRESHOLD_=8192",
        "torch": torch.__version__,
        "rows": rows,
        "memory": mem,
        "wall_s": time.time() - t_start,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1))
    print("wrote", args.json)
    plot(res, Path(args.figure))


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, mem = res["rows"], res["memory"]
    T = [r["steps"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    ax[0].loglog(T, [r["forward_s_none"] for r in rows], "k.-", label="forward")
    ax[0].loglog(T, [r["gradient_s_none"] for r in rows], "bo-", label="forward + backward")
    ax[0].loglog(T, [r["gradient_s_sqrt"] for r in rows], "rs--", label="forward + backward, √T checkpoints")
    ref = rows[0]["gradient_s_none"] / T[0]
    ax[0].loglog(T, [ref * t for t in T], "b:", lw=0.8, label="∝ T")
    ax[0].set(xlabel="tracer steps T", ylabel="CPU time (s, one thread)", title="gradient cost")
    ax[0].legend(fontsize=8)
    for mode, style, lab in (("none", "bo-", "no checkpointing"), ("sqrt", "rs--", "√T checkpoints")):
        r = [x for x in mem if x["mode"] == mode]
        extra = [max(x["gradient_extra_MiB"], 0.1) for x in r]
        ax[1].loglog([x["steps"] for x in r], extra, style, label=lab)
    rn = [x for x in mem if x["mode"] == "none"]
    rs = [x for x in mem if x["mode"] == "sqrt"]
    if rn and rs:
        a = rn[-1]["gradient_extra_MiB"] / rn[-1]["steps"]
        ax[1].loglog(T, [a * t for t in T], "b:", lw=0.8, label="∝ T")
        b = rs[-1]["gradient_extra_MiB"] / math.sqrt(rs[-1]["steps"])
        ax[1].loglog(T, [b * math.sqrt(t) for t in T], "r:", lw=0.8, label="∝ √T")
    ax[1].set(xlabel="tracer steps T", ylabel="gradient memory above forward (MiB, peak RSS)",
              title="memory")  # fmt: skip
    ax[1].legend(fontsize=8)
    fig.suptitle(f"ACC {res['resolution_deg']:g}° ({res['physics']}); CPU, loaded machine", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print("wrote", path)


if __name__ == "__main__":
    main()
