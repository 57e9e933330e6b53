"""Memory and time of one SDA training step with vs without gradient checkpointing (issue 13).

The score network of the QG study (:class:`pelagos.nn.score.LocalScoreNet`: hidden (16, 32, 64), 3 blocks per
level, kernel 5, window 9 states of 6 channels) trained through :meth:`pelagos.inverse.sda.VPSDE.loss` with
AdamW. The study reports −72 % memory for +27 % time with checkpointing (256², batch 4, an A5000 GPU).

Each variant runs in a fresh subprocess so the memory figures do not mix:
- CPU: peak resident memory (``ru_maxrss``) minus the resident memory after the model, data and optimiser
  state were built and one untimed warm-up step was taken; glibc is told to map every allocation above
  64 KiB separately and give it back when freed (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so
  the resident memory follows the live tensors and the difference is the step's activations + gradients;
- CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` in the steps minus the memory allocated
  before.
Time: the best of ``--repeat`` steps (CPU: process CPU time, single-threaded by default; CUDA: wall time),
in another subprocess with the default allocator settings (mapping
every allocation costs page faults).

Usage: ``python benchmarks/sda_checkpointing.py [--size 64] [--batch 2] [--device cpu] [--threads 1]``;
writes ``benchmarks/results/sda_checkpointing[_<tag>].json`` and prints the ratios checkpointed / plain.
About 1 min at the default size on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

OUT = pathlib.Path(__file__).resolve().parent / "results"


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_variant(args: argparse.Namespace, checkpoint: bool) -> dict:
    """One process, one variant: build, warm up, time ``repeat`` steps, report memory."""
    import torch

    from pelagos.inverse.sda import VPSDE, train_step
    from pelagos.nn.score import LocalScoreNet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    net = LocalScoreNet(
        args.channels,
        window=args.window,
        hidden=tuple(args.hidden),
        blocks=args.blocks,
        kernel=args.kernel,
        checkpoint=checkpoint,
    ).to(dev)
    sde = VPSDE(net, shape=(args.window, args.channels, args.size, args.size))
    opt = torch.optim.AdamW(sde.parameters(), lr=2e-4, weight_decay=1e-3)
    x = torch.randn(args.batch, args.window, args.channels, args.size, args.size, device=dev)
    train_step(sde, x, opt)  # warm-up: allocates the AdamW state
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = _rss_kib()
    times, cpu_times = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(sde, x, opt)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    out = {
        "checkpoint": checkpoint,
        # CPU: process CPU time (the shared machine deschedules us; wall time would count that), CUDA: wall
        "step_s": min(cpu_times) if dev.type == "cpu" else min(times),
        "step_wall_s": min(times),
        "params": sum(p.numel() for p in net.parameters()),
    }
    if dev.type == "cuda":
        out["step_mem_MiB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        out["step_mem_MiB"] = (peak - base_rss) / 1024
        out["base_rss_MiB"] = base_rss / 1024
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="H = W grid points (paper: 256)")
    p.add_argument("--batch", type=int, default=2, help="windows per step (paper: 4)")
    p.add_argument("--channels", type=int, default=6)
    p.add_argument("--window", type=int, default=9)
    p.add_argument("--hidden", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--kernel", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tag", default="", help="suffix of the JSON file name")
    p.add_argument("--variant", choices=["plain", "checkpoint"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:  # child process
        print(json.dumps(run_variant(args, args.variant == "checkpoint")))
        return {}
    results = {}
    for variant in ("plain", "checkpoint"):
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--variant", variant]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        results[variant] = json.loads(res.stdout.strip().splitlines()[-1])
        if args.device == "cpu":  # time without the allocator settings
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            timed = json.loads(res.stdout.strip().splitlines()[-1])
            results[variant]["step_s"], results[variant]["step_wall_s"] = (
                timed["step_s"],
                timed["step_wall_s"],
            )
    plain, ckpt = results["plain"], results["checkpoint"]
    summary = {
        "config": {k: v for k, v in vars(args).items() if k not in ("variant", "tag")},
        "plain": plain,
        "checkpoint": ckpt,
        "memory_ratio_checkpoint_over_plain": ckpt["step_mem_MiB"] / plain["step_mem_MiB"],
        "time_ratio_checkpoint_over_plain": ckpt["step_s"] / plain["step_s"],
        "paper_anchor": {"memory_change": -0.72, "time_change": +0.27, "setting": "256^2, batch 4, A5000"},
    }
    OUT.mkdir(exist_ok=True)
    name = f"sda_checkpointing{'_' + args.tag if args.tag else ''}.json"
    (OUT / name).write_text(json.dumps(summary, indent=2) + "\n")
    mem_r, time_r = summary["memory_ratio_checkpoint_over_plain"], summary["time_ratio_checkpoint_over_plain"]
    print(
        f"LocalScoreNet {args.hidden} x{args.blocks} k{args.kernel}, batch {args.batch} x {args.window} x "
        f"{args.channels} x {args.size}^2 on {args.device}: step memory plain "
        f"{plain['step_mem_MiB']:.0f} MiB, checkpointed {ckpt['step_mem_MiB']:.0f} MiB (ratio {mem_r:.2f}, "
        f"paper 0.28); time plain {plain['step_s']:.2f} s, checkpointed {ckpt['step_s']:.2f} s "
        f"(ratio {time_r:.2f}, paper 1.27) -> {OUT / name}"
    )
    return summary


if __name__ == "__main__":
    main()
