"""The compiled column's multi-step block (``ColumnModel.block_steps``): cost per step and compile time vs k.

Case: as benchmarks/column.py (GOTM's nns_annual physics, 110 layers of 1 m; gotm/npzd; dt = 3600 s;
float64), ``compile: true``. For each block size k (1 = one compiled step per call, the path before the
block) one subprocess builds the model, times its first window (the compilation: wall, and CPU including
Inductor's compiler subprocesses) and then ``--repeat`` windows of ``--steps`` hourly steps through
:func:`pelagos.core.rollout` (saving only the last state, as ``Simulation`` between outputs); the minimum CPU
time (``time.process_time``, one thread) per step is kept. ``--run`` adds ``pelagos run`` of
examples/nns_annual_npzd.yaml (daily output with interval-mean diagnostics) through benchmarks/column.py's
run_path, for 1 column. GOTM+FABM's NPZD year (scripts/run_gotm_fabm_npzd.sh, CPU user + sys, minimum of
``--gotm-repeat`` runs) is timed in the same run as the reference.

Usage: python benchmarks/column_block.py [--ks 1 4 12 24] [--batch 1] [--steps 48] [--repeat 5] [--run]
``--grad-parts [--batch B]``: one 12-step block without a graph, with one, with its backward, and what it
keeps for the backward (JSON on stdout; PELAGOS_COLUMN_ACTIVATION_BUDGET=1 for AOTAutograd's default split).
Writes benchmarks/results/column_block.json. ``--means - PAR npzd_PPR,PAR --batch 1024`` times the block with
those interval means instead (what averaging each field after every step costs; JSON on stdout, or to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import column as colbench  # noqa: E402 - benchmarks/column.py: build(), time_gotm(), run_path()


def one(k: int, B: int, steps: int, repeat: int, dtype: str, chunk: int | None) -> dict:
    import torch

    from pelagos.core.rollout import rollout

    torch.set_num_threads(1)
    model, raw, _ = colbench.build(B, dtype, chunk, True)
    model.block_steps = k
    s0 = model.initial_state(B, t0=colbench.START)
    times = []
    first_wall = first_cpu = None
    for i in range(repeat + 1):
        w0, c0, ch0 = time.perf_counter(), time.process_time(), colbench._children_cpu()
        with torch.no_grad(), model.using(raw):
            rollout(model, s0, steps, t0=colbench.START, save_every=steps, include_initial=False)
        if i == 0:
            first_wall = time.perf_counter() - w0
            first_cpu = time.process_time() - c0 + colbench._children_cpu() - ch0
        else:
            times.append(time.process_time() - c0)
    return {
        "block_steps": k,
        "batch": B,
        "dtype": dtype,
        "chunk_columns": chunk,
        "steps_timed": steps,
        "seconds_per_step_min": min(times) / steps,
        "seconds_per_step_all": [x / steps for x in times],
        "first_window_wall_s": first_wall,
        "first_window_cpu_s_with_compiler": first_cpu,
    }


def run_path(columns: int, k: int, days: int, dtype: str = "float64") -> dict:
    """``pelagos run`` of examples/nns_annual_npzd.yaml (110-layer physics, compiled, ``block_steps`` k) for
    ``days`` days through :func:`pelagos.io.build.run`: the process CPU time is stamped at every daily
    output write; the per-step cost is that of days 3 .. end (the compilation and first outputs excluded;
    the output writing, interval means and restarts included)."""
    import tempfile

    import torch

    from pelagos.io.build import run

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="colblock_"))
    import datetime as dt

    stop = dt.date(1998, 1, 1) + dt.timedelta(days=days)
    over = [
        f"numerics.columns={columns}",
        "numerics.compile=true",
        f"numerics.block_steps={k}",
        f"model.dtype={dtype}",
        f"output.file={tmp / 'out.nc'}",
        "restart.file=null",
        f'time.stop="{stop:%Y-%m-%d} 00:00:00"',
    ]
    if colbench.GOTM_FILE.exists():
        over.append(f"forcing.file={colbench.GOTM_FILE}")
    c0, w0 = time.process_time(), time.perf_counter()
    with colbench.record_stamps() as stamps:
        run(colbench.EXAMPLE, overrides=over, fresh=True, progress=False)
    total_cpu, total_wall = time.process_time() - c0, time.perf_counter() - w0
    per_step = (stamps[-1] - stamps[3]) / (24 * (len(stamps) - 4))
    return {
        "columns": columns,
        "block_steps": k,
        "dtype": dtype,
        "days": days,
        "seconds_per_step": per_step,
        "cpu_s_total": total_cpu,
        "wall_s_total": total_wall,
        "cpu_s_before_day3": stamps[3] - c0,
    }


def block_means(B: int, variants: list[tuple[str, ...]], dtype: str = "float64", rounds: int = 3) -> dict:
    """The block (k = 12, ``B`` columns, no chunks) with each tuple of ``means`` (the fields averaged after
    every step, as ``Simulation`` asks; ``()`` = none, the bare block), in one process: CPU ms per step of
    24 steps (2 blocks), ``rounds`` interleaved rounds of 3 windows after a first (compiling) call; minima.
    What the interval means of ``pelagos run`` cost on top of the step, field by field."""
    import torch

    torch.set_num_threads(1)
    model, _, _ = colbench.build(B, dtype, None, True)
    model.block_steps = 12
    s0 = model.initial_state(B, t0=colbench.START)
    times = [colbench.START + j * model.dt for j in range(24)]
    res: dict[str, dict] = {}
    with torch.no_grad():
        for means in variants:
            c = time.process_time()
            model.step_block(s0, times, means)
            res[",".join(means) or "-"] = {"first_cpu_s": time.process_time() - c, "ms_all": []}
        for _ in range(rounds):
            for means in variants:
                r = res[",".join(means) or "-"]
                for _ in range(3):
                    c = time.process_time()
                    model.step_block(s0, times, means)
                    r["ms_all"].append(1e3 * (time.process_time() - c) / len(times))
                r["ms_min"] = min(r["ms_all"])
    return {"batch": B, "dtype": dtype, "block_steps": 12, "variants": res}


def grad_parts(B: int, dtype: str = "float64", chunk: int | None = None, repeat: int = 8) -> dict:
    """One 12-step block (``B`` columns) without a graph, with a graph, and with its backward (per-column
    ``rmax``/``gmax`` and the state requiring grad), CPU µs per step, minimum of ``repeat`` calls after two;
    and what the block keeps for its backward (tensors and bytes autograd saves: ``saved_tensors_hooks``).
    What the compiled programs' activation budget (``PELAGOS_COLUMN_ACTIVATION_BUDGET``) changes."""
    import torch

    torch.set_num_threads(1)
    model, raw, _ = colbench.build(B, dtype, chunk, True)
    model.block_steps = 12
    s0 = model.initial_state(B, t0=colbench.START)
    ts = [colbench.START + j * model.dt for j in range(12)]
    u = {k: v.clone().requires_grad_(True) for k, v in raw.items()}
    x0 = {k: v.clone().requires_grad_(True) for k, v in s0.items()}

    def best(fn: Callable[[], object]) -> float:
        fn(), fn()
        runs = []
        for _ in range(repeat):
            c = time.process_time()
            fn()
            runs.append(time.process_time() - c)
        return 1e6 * min(runs) / len(ts)

    def no_graph() -> None:
        with torch.no_grad(), model.using(raw):
            model.step_block(s0, ts)

    def with_graph() -> dict:
        with model.using(u):
            return model.step_block(x0, ts)[0]

    def with_backward() -> None:
        new = with_graph()
        outs = list(new.values())
        torch.autograd.grad(outs, [*u.values(), *x0.values()], [torch.ones_like(v) for v in outs])

    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t.numel() * t.element_size())
        return t

    res = {"batch": B, "dtype": dtype, "chunk_columns": chunk, "block_steps": 12,
           "activation_budget": os.environ.get("PELAGOS_COLUMN_ACTIVATION_BUDGET") or "0 (default)",
           "us_per_step_no_graph": best(no_graph), "us_per_step_with_graph": best(with_graph),
           "us_per_step_forward_backward": best(with_backward)}  # fmt: skip
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with_graph()
    res["kept_tensors_per_block"], res["kept_kB_per_block"] = len(kept), sum(kept) / 1e3
    return res


def _sub(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        print(p.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"configuration {args} failed")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 12, 24])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--chunk", type=int, default=0, help="chunk_columns (0: none)")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--gotm-repeat", type=int, default=3)
    ap.add_argument("--run", type=int, default=0, metavar="DAYS", help="pelagos run, --batch columns, DAYS")
    ap.add_argument("--run-only", action="store_true", help="only the pelagos run timings")
    ap.add_argument(
        "--means",
        nargs="+",
        metavar="FIELDS",
        help="only the block with these means: comma-separated fields per variant, '-' = none",
    )
    ap.add_argument(
        "--grad-parts", action="store_true", help="block without/with graph/with backward, and what it keeps"
    )
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--one-run", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "column_block.json")
    a = ap.parse_args(argv)
    chunk = a.chunk or None
    if a.means:
        variants = [() if v == "-" else tuple(v.split(",")) for v in a.means]
        out = block_means(a.batch, variants, a.dtype)
        print(json.dumps(out))
        if a.out != HERE / "results" / "column_block.json":
            a.out.write_text(json.dumps(out, indent=1))
        return
    if a.grad_parts:
        print(json.dumps(grad_parts(a.batch, a.dtype, chunk)))
        return
    if a.one_run is not None:
        print(json.dumps(run_path(a.batch, a.one_run, a.run, a.dtype)))
        return
    if a.one is not None:
        print(json.dumps(one(a.one, a.batch, a.steps, a.repeat, a.dtype, chunk)))
        return
    gotm = colbench.time_gotm(a.gotm_repeat)
    gotm_s = gotm["cpu_s_per_column_year"] if gotm else colbench.GOTM_GIVEN_S_PER_COLUMN_YEAR
    gotm_step = gotm_s / colbench.STEPS_PER_YEAR
    print(f"GOTM+FABM NPZD year: {gotm_s:.3f} s CPU ({1e6 * gotm_step:.0f} us per step)", flush=True)
    results = []
    for k in [] if a.run_only else a.ks:
        r = _sub(["--one", str(k), "--batch", str(a.batch), "--dtype", a.dtype, "--chunk", str(a.chunk),
                  "--steps", str(a.steps), "--repeat", str(a.repeat)])  # fmt: skip
        r["x_gotm_time"] = r["seconds_per_step_min"] * a.batch**-1 / gotm_step
        results.append(r)
        print(
            f"k={k:3d} B={a.batch} {a.dtype}: {1e6 * r['seconds_per_step_min']:8.1f} us/step "
            f"({r['x_gotm_time']:.2f}x GOTM+FABM time per column), first window "
            f"{r['first_window_wall_s']:.1f} s wall / {r['first_window_cpu_s_with_compiler']:.1f} s CPU",
            flush=True,
        )
    runs = []
    for k in a.ks if a.run else []:
        r = _sub(["--one-run", str(k), "--batch", str(a.batch), "--dtype", a.dtype, "--run", str(a.run)])
        r["x_gotm_time"] = r["seconds_per_step"] / a.batch / gotm_step
        runs.append(r)
        print(
            f"pelagos run, {a.batch} column(s), compiled, k={k}: {1e6 * r['seconds_per_step']:.1f} us/step "
            f"({r['x_gotm_time']:.2f}x GOTM+FABM time per column), CPU before day 3 (compile) "
            f"{r['cpu_s_before_day3']:.1f} s, total wall {r['wall_s_total']:.1f} s",
            flush=True,
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"gotm_fabm": gotm, "gotm_s_per_column_year": gotm_s, "date_utc": time.strftime("%Y-%m-%d %H:%M")}
    a.out.write_text(json.dumps({"meta": meta, "blocks": results, "run_path": runs}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
