"""Ocean benchmark: pelagos's 2° ACC step vs Veros ``acc_basic`` with whole-step ``jax.jit``, side by side.

Usage (from the repository root; Veros runs in the side environment of ``scripts/side_env_veros.sh``)::

    .venv/bin/python benchmarks/ocean.py [--steps 100] [--rounds 3] [--grad-steps 4]
        [--veros-python .side/veros/bin/python] [--out benchmarks/results/ocean_cpu.json]

Both codes run single-threaded (torch.set_num_threads(1); XLA with single-threaded Eigen) in float64 on the
same 30 × 42 × 15 grid, timed in CPU seconds of their own process (the machine is shared: CPU time is the
run time on an idle core) after 10 warm-up steps from rest; each figure is the minimum over rounds, and the
rounds alternate pelagos and Veros. Veros: ``scripts/veros_reference.py --bench`` (jax backend,
``scipy_jax`` solver, the whole step under one ``jax.jit``: the setting the reference notes measured at
≈ 17 ms/step on an idle 2-core CPU). Also measured (pelagos only): the cost of value-and-gradient of
mean(u²) after ``--grad-steps`` steps w.r.t. (A_h, r_bot) relative to the forward pass, and a CUDA step time
if a GPU is present.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLOCK = time.process_time


def pelagos_step_time(steps: int, device: str = "cpu") -> float:
    import torch

    from pelagos.ocean import acc_model

    m = acc_model(2.0).to(device)
    s = m.initial_state()
    s = {k: v.to(device) for k, v in s.items()}
    with torch.no_grad():
        for i in range(10):
            s = m.step(s, i * m.dt)
        if device == "cuda":
            torch.cuda.synchronize()
        clock = time.perf_counter if device == "cuda" else CLOCK
        t = clock()
        for i in range(steps):
            s = m.step(s, i * m.dt)
        if device == "cuda":
            torch.cuda.synchronize()
        return (clock() - t) / steps


def pelagos_grad_ratio(n: int) -> dict:
    import torch

    from pelagos.ocean import acc_model

    m = acc_model(2.0)
    s0 = m.initial_state()
    with torch.no_grad():
        for i in range(20):  # start from a moving flow
            s0 = m.step(s0, i * m.dt)
    params = [p for name, p in m.named_parameters() if name.endswith(("A_h", "r_bot"))]

    def forward():
        s = s0
        for i in range(n):
            s = m.step(s, i * m.dt)
        return (s["u"] ** 2).mean()

    with torch.no_grad():
        forward()
        t = CLOCK()
        forward()
        t_fwd = CLOCK() - t
    for p in params:
        p.requires_grad_(True)
    loss = forward()
    torch.autograd.grad(loss, params)
    t = CLOCK()
    loss = forward()
    torch.autograd.grad(loss, params)
    t_vg = CLOCK() - t
    return {"steps": n, "forward_s": t_fwd, "value_and_grad_s": t_vg, "ratio": t_vg / t_fwd}


def veros_step_time(python: str, steps: int) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    out = subprocess.run(
        [python, str(ROOT / "scripts" / "veros_reference.py"), "--bench", str(steps), "--clock", "cpu"],
        capture_output=True, text=True, env=env, cwd=ROOT, check=True,
    )  # fmt: skip
    line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
    return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--grad-steps", type=int, default=4)
    ap.add_argument("--veros-python", default=str(ROOT / ".side" / "veros" / "bin" / "python"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ocean_cpu.json"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    ours, theirs, veros_meta = [], [], None
    have_veros = pathlib.Path(a.veros_python).exists()
    for r in range(a.rounds):
        ours.append(pelagos_step_time(a.steps))
        if have_veros:
            v = veros_step_time(a.veros_python, a.steps)
            theirs.append(v["ms_per_step"] / 1e3)
            veros_meta = v
        print(f"round {r}: pelagos {1e3 * ours[-1]:.1f} ms/step"
              + (f", Veros {1e3 * theirs[-1]:.1f} ms/step" if theirs else ""), flush=True)  # fmt: skip
    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": 1,
        "grid": [15, 42, 30],
        "pelagos_ms_per_step": 1e3 * min(ours),
        "veros_ms_per_step": 1e3 * min(theirs) if theirs else None,
        "ratio_pelagos_over_veros": min(ours) / min(theirs) if theirs else None,
        "veros": veros_meta,
        "pelagos_gradient": pelagos_grad_ratio(a.grad_steps),
        "note": "CPU seconds per step, single-threaded, float64, minimum over rounds",
    }
    if torch.cuda.is_available():
        result["pelagos_cuda_ms_per_step"] = 1e3 * pelagos_step_time(a.steps, "cuda")
    if not have_veros:
        print(f"Veros side env not found at {a.veros_python}: run scripts/side_env_veros.sh", file=sys.stderr)
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
