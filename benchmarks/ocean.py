"""Ocean benchmark: pelagos's 2° ACC step vs Veros ``acc_basic`` with whole-step ``jax.jit``, side by side.

Usage (from the repository root; Veros runs in the side environment of ``scripts/side_env_veros.sh``)::

    .venv/bin/python benchmarks/ocean.py [--steps 50] [--rounds 3] [--grad-steps 4] [--no-reference]
        [--memory-steps 4 8 16] [--memory-ckpt-steps 16 64 256] [--veros-python .side/veros/bin/python]
        [--out benchmarks/results/ocean_cpu.json]

Step time. Both codes run single-threaded (torch.set_num_threads(1); XLA with single-threaded Eigen) in
float64 on the same 30 × 42 × 15 grid, timed in CPU seconds of their own process (the machine is shared:
CPU time is the run time on an idle core) after 10 warm-up steps from rest. Veros
(``scripts/veros_reference.py``'s ``acc_basic`` setup, jax backend, ``scipy_jax`` solver, the whole step
under one ``jax.jit``, TKE on) runs in a worker process that compiles once and then times one block of
``--steps`` steps each time this script asks for it, so the rounds alternate: pelagos (fast path), pelagos
(reference path: the frozen pre-speed-up routines of ``tests/_ocean_reference.py``, unless
``--no-reference``), Veros. Each figure is the minimum over rounds.

Gradient. CPU time of value-and-gradient of mean(u²) after ``--grad-steps`` steps w.r.t. (A_h, r_bot),
relative to the forward pass alone (minimum of 3).

Memory. Peak resident memory added by one value-and-gradient over T steps (``core.rollout``; each
configuration in a fresh process; Linux: the peak ``VmHWM`` is reset through ``/proc/self/clear_refs`` just
before, the resident size then subtracted), without checkpointing and with
``checkpoint="sqrt"`` (segments of ⌈√T⌉ steps: O(√T) memory at the price of one extra forward pass).

A CUDA step time is added when a GPU is present (skipped otherwise).
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


# -- pelagos -----------------------------------------------------------------------------------------------
def _model(device: str = "cpu"):
    from pelagos.ocean import acc_model

    return acc_model(2.0).to(device)


_ORIGINAL: dict = {}


def _reference_routines(enable: bool) -> None:
    """Swap the routines the speed work replaced for the frozen reference copies of
    ``tests/_ocean_reference.py`` (``enable``) or put the fast ones back."""
    import pelagos.ocean.model as model_module
    from pelagos.ocean import momentum, tracers

    slots = [(model_module, "isoneutral_tensor", "isoneutral_tensor"),
             (model_module, "isoneutral_diffusion", "isoneutral_diffusion_any"),
             (model_module, "dissipation_on_w", "dissipation_on_w"),
             (tracers, "implicit_vertical", "implicit_vertical"), (tracers, "advection", "tracer_advection"),
             (momentum, "transports", "transports"), (momentum, "coriolis_metric", "coriolis_metric"),
             (momentum, "advection", "momentum_advection"),
             (momentum, "harmonic_friction", "harmonic_friction")]  # fmt: skip
    if not _ORIGINAL:
        _ORIGINAL.update({(mod.__name__, name): getattr(mod, name) for mod, name, _ in slots})
    if enable:
        sys.path.insert(0, str(ROOT / "tests"))
        import _ocean_reference as ref

        for mod, name, ref_name in slots:
            setattr(mod, name, getattr(ref, ref_name))
    else:
        for mod, name, _ in slots:
            setattr(mod, name, _ORIGINAL[(mod.__name__, name)])


def pelagos_step_time(steps: int, device: str = "cpu", reference: bool = False, model=None) -> float:
    import torch

    m = model if model is not None else _model(device)
    s = m.initial_state()
    s = {k: v.to(device) for k, v in s.items()}
    _reference_routines(reference)
    try:
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
    finally:
        if reference:
            _reference_routines(False)


def pelagos_grad_ratio(n: int, repeat: int = 3) -> dict:
    import torch

    m = _model()
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

    fwd, vg = [], []
    for _ in range(repeat):
        with torch.no_grad():
            t = CLOCK()
            forward()
            fwd.append(CLOCK() - t)
        for p in params:
            p.requires_grad_(True)
        t = CLOCK()
        loss = forward()
        torch.autograd.grad(loss, params)
        vg.append(CLOCK() - t)
        for p in params:
            p.requires_grad_(False)
    return {"steps": n, "forward_s": min(fwd), "value_and_grad_s": min(vg), "ratio": min(vg) / min(fwd)}


MEMORY_WORKER = r"""
import ctypes, gc, json, sys, time, torch
torch.set_num_threads(1)
from pelagos.core.rollout import rollout
from pelagos.ocean import acc_model


def status(key):  # kB
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])


T, ck = int(sys.argv[1]), sys.argv[2]
m = acc_model(2.0)
s0 = m.initial_state()
with torch.no_grad():
    for i in range(5):
        s0 = m.step(s0, i * m.dt)
params = [p for n, p in m.named_parameters() if n.endswith(("A_h", "r_bot"))]
for p in params:
    p.requires_grad_(True)
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current resident size
    f.write("5")
r0 = status("VmRSS:")
t = time.process_time()
tr = rollout(m, s0, T, checkpoint=None if ck == "none" else ck, save_every=T, include_initial=False)
torch.autograd.grad((tr.final["u"] ** 2).mean(), params)
cpu = time.process_time() - t
r1 = status("VmHWM:")
print(json.dumps({"steps": T, "checkpoint": ck, "peak_MiB": (r1 - r0) / 1024, "cpu_s": cpu}))
"""


def pelagos_memory(steps: int, checkpoint: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # large blocks go back to the OS when freed: RSS = live memory
    out = subprocess.run([sys.executable, "-c", MEMORY_WORKER, str(steps), checkpoint], capture_output=True,
                         text=True, env=env, cwd=ROOT, check=True)  # fmt: skip
    return json.loads([x for x in out.stdout.splitlines() if x.startswith("{")][-1])


# -- Veros (runs under the side environment's python) ------------------------------------------------------
def veros_worker(steps: int) -> None:
    """Compile Veros's whole-step jit once, then time ``steps`` steps each time a line arrives on stdin."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import jax
    import veros
    import veros_reference as vr

    sim = vr.make_setup()
    step = vr.jitted_step(sim)
    st = sim.state
    t0 = time.perf_counter()
    st._variables = step(st.variables)
    jax.block_until_ready(st.variables.u)
    compile_s = time.perf_counter() - t0
    for _ in range(9):  # 10 warm-up steps from rest, as the pelagos side
        st._variables = step(st.variables)
    jax.block_until_ready(st.variables.u)
    print(json.dumps({"ready": True, "compile_s": compile_s}), flush=True)
    for _line in sys.stdin:
        t = time.process_time()
        for _ in range(steps):
            st._variables = step(st.variables)
        jax.block_until_ready(st.variables.u)
        ms = 1e3 * (time.process_time() - t) / steps
        print(json.dumps(dict(veros=veros.__version__, jax=jax.__version__, steps=steps, ms_per_step=ms,
                              compile_s=compile_s, clock="cpu")), flush=True)  # fmt: skip


class _Veros:
    def __init__(self, python: str, steps: int) -> None:
        env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
        cmd = [python, str(pathlib.Path(__file__).resolve()), "--veros-worker", str(steps)]
        self.p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        self._read()  # compiled and warmed up

    def _read(self) -> dict:
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("the Veros worker stopped (run it by hand to see why)")
            if line.startswith("{"):
                return json.loads(line)

    def time(self) -> dict:
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=60)


# -- main --------------------------------------------------------------------------------------------------
def _table(result: dict) -> str:
    ms = result["pelagos_ms_per_step"]
    rows = ["| | ms/step (CPU, 1 thread) | / Veros |", "| --- | --- | --- |"]
    v = result.get("veros_ms_per_step")
    rows.append(
        f"| pelagos (this version) | {ms:.1f} | {ms / v:.2f} |" if v else f"| pelagos | {ms:.1f} | — |"
    )
    r = result.get("pelagos_reference_ms_per_step")
    if r:
        rows.append(
            f"| pelagos, pre-speed-up routines | {r:.1f} | {r / v:.2f} |"
            if v
            else f"| reference | {r:.1f} | — |"
        )
    if v:
        rows.append(f"| Veros {result['veros']['veros']} acc_basic, whole-step jit | {v:.1f} | 1 |")
    g = result["pelagos_gradient"]
    rows.append("")
    rows.append(f"value-and-gradient / forward after {g['steps']} steps: {g['ratio']:.2f}")
    if result.get("memory"):
        rows += [
            "",
            "| steps T | checkpointing | peak memory added (MiB) | CPU s |",
            "| --- | --- | --- | --- |",
        ]
        for m in result["memory"]:
            rows.append(f"| {m['steps']} | {m['checkpoint']} | {m['peak_MiB']:.0f} | {m['cpu_s']:.1f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--grad-steps", type=int, default=4)
    ap.add_argument("--no-reference", action="store_true", help="skip the pre-speed-up reference path")
    ap.add_argument("--memory-steps", type=int, nargs="*", default=[4, 8, 16])
    ap.add_argument("--memory-ckpt-steps", type=int, nargs="*", default=[16, 64, 256])
    ap.add_argument("--veros-python", default=str(ROOT / ".side" / "veros" / "bin" / "python"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ocean_cpu.json"))
    ap.add_argument("--veros-worker", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.veros_worker:
        veros_worker(a.veros_worker)
        return
    import torch

    torch.set_num_threads(1)
    have_veros = pathlib.Path(a.veros_python).exists()
    if not have_veros:
        print(f"Veros side env not found at {a.veros_python}: run scripts/side_env_veros.sh", file=sys.stderr)
    veros = _Veros(a.veros_python, a.steps) if have_veros else None
    ours, ref, theirs, veros_meta = [], [], [], None
    m = _model()
    try:
        for r in range(a.rounds):
            ours.append(pelagos_step_time(a.steps, model=m))
            if not a.no_reference:
                ref.append(pelagos_step_time(a.steps, reference=True, model=m))
            if veros is not None:
                veros_meta = veros.time()
                theirs.append(veros_meta["ms_per_step"] / 1e3)
            print(f"round {r}: pelagos {1e3 * ours[-1]:.1f} ms/step"
                  + (f", reference path {1e3 * ref[-1]:.1f}" if ref else "")
                  + (f", Veros {1e3 * theirs[-1]:.1f}" if theirs else ""), flush=True)  # fmt: skip
    finally:
        if veros is not None:
            veros.close()
    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": 1,
        "grid": [15, 42, 30],
        "pelagos_ms_per_step": 1e3 * min(ours),
        "pelagos_reference_ms_per_step": 1e3 * min(ref) if ref else None,
        "veros_ms_per_step": 1e3 * min(theirs) if theirs else None,
        "ratio_pelagos_over_veros": min(ours) / min(theirs) if theirs else None,
        "veros": veros_meta,
        "rounds": {"pelagos": ours, "reference": ref, "veros": theirs},
        "pelagos_gradient": pelagos_grad_ratio(a.grad_steps),
        "memory": [pelagos_memory(n, "none") for n in a.memory_steps]
        + [pelagos_memory(n, "sqrt") for n in a.memory_ckpt_steps],
        "note": "CPU seconds per step, single-threaded, float64, minimum over rounds (loaded machine)",
    }
    if torch.cuda.is_available():
        result["pelagos_cuda_ms_per_step"] = 1e3 * pelagos_step_time(a.steps, "cuda")
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(_table(result))


if __name__ == "__main__":
    main()
