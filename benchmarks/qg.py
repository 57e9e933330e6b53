"""QG benchmark: pelagos step time vs pyqg (Cython + pyFFTW) and pyqg-jax (jit + scan), side by side.

Usage (from the repository root)::

    .venv/bin/python benchmarks/qg.py [--sizes 64 128 256 512] [--rounds 3] [--out results/qg_cpu.json]

References run in their own virtual environments (``--pyqg-python``, ``--pyqgjax-python``; see
scripts/make_qg_fixtures.py for the pyqg build) as worker subprocesses. Rounds alternate pelagos, pyqg and
pyqg-jax for each size and every figure is the minimum over rounds and repeats, so a noisy shared machine
hurts all three alike. All runs are float64, two-layer defaults, dt = 3600 s, single-threaded
(torch.set_num_threads(1), pyqg ntd=1, XLA single-threaded Eigen).

Also measured (pelagos only): value_and_grad of mean(q²) after 100 steps vs the forward pass; peak resident
memory of a 1000-step gradient with and without checkpointing (fresh subprocess each); GPU step time if CUDA
is available.
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
STEPS = {64: 400, 128: 150, 256: 40, 512: 10}
# CPU time of this process: on the shared 2-core machine other jobs deschedule a worker, which wall time
# would count; all three codes run single-threaded, so their CPU time is their run time on an idle core
CLOCK = time.process_time


# -- workers (each runs in its own interpreter) -----------------------------------------------------------
def worker_pyqg(nx: int, n: int, repeats: int) -> float:
    import numpy as np
    import pyqg

    m = pyqg.QGModel(nx=nx, dt=3600.0, log_level=0, ntd=1)
    m.diagnostics = {}
    m.set_q(1e-6 * np.random.RandomState(0).rand(2, nx, nx))
    for _ in range(5):
        m._step_forward()
    best = float("inf")
    for _ in range(repeats):
        t = CLOCK()
        for _ in range(n):
            m._step_forward()
        best = min(best, (CLOCK() - t) / n)
    return best


def worker_pyqgjax(nx: int, n: int, repeats: int) -> float:
    import jax

    jax.config.update("jax_enable_x64", True)
    import pyqg_jax

    model = pyqg_jax.steppers.SteppedModel(
        model=pyqg_jax.qg_model.QGModel(nx=nx, precision=pyqg_jax.state.Precision.DOUBLE),
        stepper=pyqg_jax.steppers.AB3Stepper(dt=3600.0),
    )
    state = model.create_initial_state(jax.random.key(0))

    @jax.jit
    def run(s):
        return jax.lax.scan(lambda c, _: (model.step_model(c), None), s, None, length=n)[0]

    jax.block_until_ready(run(state))
    best = float("inf")
    for _ in range(repeats):
        t = CLOCK()
        jax.block_until_ready(run(state))
        best = min(best, (CLOCK() - t) / n)
    return best


def worker_pelagos(nx: int, n: int, repeats: int, device: str = "cpu", dtype: str = "float64") -> float:
    import torch

    from pelagos.qg import QGModel

    torch.set_num_threads(1)
    m = QGModel(nx=nx, dt=3600.0, device=device, dtype=getattr(torch, dtype))
    st = m.initial_state()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock = time.perf_counter if device == "cuda" else CLOCK
    with torch.no_grad():
        for _ in range(5):
            st = m.step(st)
        best = float("inf")
        for _ in range(repeats):
            sync()
            t = clock()
            for _ in range(n):
                st = m.step(st)
            sync()
            best = min(best, (clock() - t) / n)
    return best


def worker_setup(nx: int) -> dict:
    """Which CPU code paths the step uses here: compiled kernels or not, and the FFT patterns measured."""
    import torch

    from pelagos.qg import QGModel, _step_c, fftplan

    torch.set_num_threads(1)
    m = QGModel(nx=nx, dt=3600.0)
    with torch.no_grad():
        st = m.initial_state()
        for _ in range(3):
            st = m.step(st)
    patterns = {f"{k[0]} {list(k[1])}": v for k, v in fftplan._chosen.items()}
    return {"compiled_kernels": _step_c.kernels() is not None, "fft_patterns": patterns}


def worker_grad(nx: int, repeats: int) -> dict:
    """value_and_grad of mean(q²) after 100 steps w.r.t. q0 and (rek, beta) vs the forward pass alone."""
    import torch

    from pelagos.core.rollout import rollout
    from pelagos.qg import QGModel

    torch.set_num_threads(1)
    m = QGModel(nx=nx, dt=3600.0)
    q0 = m.random_q(1, seed=0)

    def forward():
        with torch.no_grad():
            return (rollout(m, m.state_from_q(q0), 100, save_every=100).final["q"] ** 2).mean()

    def value_and_grad():
        m.select_free(["rek", "beta"])
        x = q0.clone().requires_grad_(True)
        loss = (rollout(m, m.state_from_q(x), 100, save_every=100).final["q"] ** 2).mean()
        loss.backward()
        m.select_free(None)
        return loss

    out = {}
    for name, f in (("forward_s", forward), ("value_and_grad_s", value_and_grad)):
        f()
        best = float("inf")
        for _ in range(repeats):
            t = CLOCK()
            f()
            best = min(best, CLOCK() - t)
        out[name] = best
    out["ratio"] = out["value_and_grad_s"] / out["forward_s"]
    return out


def worker_memory(nx: int, n: int, checkpoint: str) -> dict:
    """Peak resident memory (MB) of a gradient through ``n`` steps (fresh process)."""
    import resource

    import torch

    from pelagos.core.rollout import rollout
    from pelagos.qg import QGModel

    torch.set_num_threads(1)
    m = QGModel(nx=nx, dt=3600.0)
    x = m.random_q(1, seed=0).requires_grad_(True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ck = None if checkpoint == "none" else ("sqrt" if checkpoint == "sqrt" else int(checkpoint))
    t = time.perf_counter()
    loss = (rollout(m, m.state_from_q(x), n, save_every=n, checkpoint=ck).final["q"] ** 2).mean()
    loss.backward()
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    state_mb = 5 * x.numel() * 8 / 2**20  # one QG state (q, qh, two tendencies) ≈ 3.5 real fields, rounded up
    return {
        "peak_rss_mb": peak,
        "baseline_mb": base,
        "extra_mb": peak - base,
        "wall_s": wall,
        "state_mb": state_mb,
    }


# -- driver -----------------------------------------------------------------------------------------------
def call(python: str, fn: str, *args, env: dict | None = None) -> object:
    code = (
        f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
        f"sys.path.insert(0, {str(ROOT / 'src')!r});"
        f"import qg; print(json.dumps(qg.{fn}(*{args!r})))"
    )
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", **(env or {}))
    res = subprocess.run([python, "-c", code], capture_output=True, text=True, env=e, timeout=1800)
    if res.returncode:
        raise RuntimeError(f"{python} {fn}{args} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pyqg-python", default="/work/venvs/pyqg/bin/python")
    ap.add_argument("--pyqgjax-python", default="/work/venvs/pyqgjax/bin/python")
    ap.add_argument("--skip-grad", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "qg_cpu.json"))
    args = ap.parse_args()
    me = sys.executable
    xla = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    refs = {
        "pyqg": (args.pyqg_python, "worker_pyqg", {}),
        "pyqg-jax": (args.pyqgjax_python, "worker_pyqgjax", xla),
    }
    refs = {k: v for k, v in refs.items() if pathlib.Path(v[0]).exists()}
    step: dict[str, dict[int, float]] = {k: {} for k in ["pelagos", *refs]}
    for r in range(args.rounds):
        for nx in args.sizes:
            n = STEPS.get(nx, 10)
            t = call(me, "worker_pelagos", nx, n, args.repeats)
            step["pelagos"][nx] = min(step["pelagos"].get(nx, t), t)
            for name, (py, fn, env) in refs.items():
                try:
                    t = call(py, fn, nx, n, args.repeats, env=env)
                except RuntimeError as err:
                    print(f"{name} nx={nx}: {err}", file=sys.stderr)
                    continue
                step[name][nx] = min(step[name].get(nx, t), t)
            line = "  ".join(f"{k} {v[nx] * 1e3:8.3f} ms" for k, v in step.items() if nx in v)
            print(f"round {r} nx={nx:4d}  {line}", flush=True)
    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores (shared)",
        "note": "min over rounds x repeats, single-threaded, float64, two-layer defaults, dt 3600 s",
        "step_ms": {k: {str(nx): v * 1e3 for nx, v in d.items()} for k, d in step.items()},
        "ratio_vs_pyqg": {
            str(nx): step["pelagos"][nx] / step["pyqg"][nx] for nx in args.sizes if nx in step.get("pyqg", {})
        },
        "ratio_vs_pyqgjax": {
            str(nx): step["pelagos"][nx] / step["pyqg-jax"][nx]
            for nx in args.sizes
            if nx in step.get("pyqg-jax", {})
        },
    }
    result["setup"] = {str(nx): call(me, "worker_setup", nx) for nx in args.sizes}
    if not args.skip_grad:
        result["grad_100_steps"] = {str(nx): call(me, "worker_grad", nx, args.repeats) for nx in (64, 128)}
        result["memory_1000_steps_nx64"] = {
            ck: call(me, "worker_memory", 64, 1000, ck) for ck in ("none", "sqrt")
        }
    try:
        import torch

        if torch.cuda.is_available():
            result["gpu_step_ms"] = {
                dt: {
                    str(nx): call(me, "worker_pelagos", nx, 200, 3, "cuda", dt) * 1e3
                    for nx in (64, 128, 256, 512)
                }
                for dt in ("float64", "float32")
            }
            result["gpu"] = torch.cuda.get_device_name()
    except Exception as err:
        result["gpu_error"] = str(err)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
