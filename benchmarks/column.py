"""Throughput of the NNS NPZD water column (pelagos.column.ColumnModel) versus batch size.

Case: GOTM's nns_annual physics (110 layers of 1 m, the shared GOTM output; the shipped 22-layer compact file
when it is absent), ``gotm/npzd`` with FABM's testcase yaml, dt = 3600 s, P2_PDM sinking, cnpar = 1
diffusion with the lagged nuh, GOTM light (Jerlov I), forward Euler sources. A batch of B columns is an
ensemble with log-normally perturbed ``npzd.rmax`` and ``npzd.gmax`` (one value per column, via
``model.using``), all sharing the physics.

Measured: a window of ``--steps`` hourly steps starting on 1 May (biology active) is timed ``--repeat`` times
in CPU time of the process (``time.process_time``: on a machine shared with other engineers, wall time swings
by several times with their load, CPU time much less; wall times are kept in the JSON too); the minimum is
kept and extrapolated linearly to a year
(8760 steps): column-years per second = B · 3600 / (seconds per step · 8760 · 3600). Modes: ``forward``
(no gradient) and ``fwd+bwd`` (rollout with checkpoint="sqrt", then backward of the sum of final
phytoplankton to the per-column parameters and the initial state). One thread (``torch.set_num_threads(1)``):
the figures are per core. Each configuration runs in its own subprocess so that its peak resident memory
(``ru_maxrss``) is its own.

Anchor: GOTM+FABM (Fortran) runs this case, physics included, in about 1.5 s per column-year on one core of
this machine (figure given in the task; GOTM itself is not run here). Target: >= 20x that per core at >= 1000
columns, i.e. >= 13.3 column-years per second.

Usage: python benchmarks/column.py [--quick] [--batches 1 16 128 1024 4096] [--steps 24] [--repeat 5]
Writes benchmarks/results/column.json and docs/bench_column.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
GOTM_FILE = SHARED / "gotm_nns_annual" / "physics_hourly.nc"
FABM_YAML = SHARED / "fabm" / "fabm-gotm-npzd.yaml"
GOTM_S_PER_COLUMN_YEAR = 1.5
STEPS_PER_YEAR = 8760
START = 120 * 86400.0  # 1 May 1998


def build(B: int, dtype_name: str, chunk: int | None = None):
    import torch

    from pelagos.bgc.npzd import NPZD
    from pelagos.bgc.system import BGCSystem
    from pelagos.column.forcing import ColumnForcing, compact_forcing_path
    from pelagos.column.model import ColumnModel

    dtype = getattr(torch, dtype_name)
    path = GOTM_FILE if GOTM_FILE.exists() else compact_forcing_path()
    forcing = ColumnForcing.from_gotm(path, start=START - 7200, stop=START + 40 * 86400, dtype=dtype)
    bgc = BGCSystem.from_yaml(FABM_YAML) if FABM_YAML.exists() else BGCSystem({"npzd": NPZD()})
    model = ColumnModel(bgc, forcing, dt=3600.0, chunk_columns=chunk)
    g = torch.Generator().manual_seed(0)
    raw = {}
    for name in ("npzd.rmax", "npzd.gmax"):
        base = model.get_parameter_value(name).to(dtype)
        value = base * torch.exp(0.2 * torch.randn(B, generator=g, dtype=dtype))
        raw[name] = model.parameter_spec(name).transform.inverse(value)
    return model, raw, path


def run_one(B: int, dtype_name: str, mode: str, steps: int, repeat: int, chunk: int | None = None) -> dict:
    """Time one configuration in this process (called in a subprocess)."""
    import torch

    from pelagos.core.rollout import rollout

    torch.set_num_threads(1)
    model, raw, path = build(B, dtype_name, chunk)
    s0 = model.initial_state(B, t0=START)
    times, walls = [], []
    for _ in range(repeat + 1):  # the first is a warm-up
        t, w = time.process_time(), time.perf_counter()
        if mode == "forward":
            with torch.no_grad(), model.using(raw):
                rollout(model, s0, steps, t0=START, save_every=steps, include_initial=False)
        else:
            u = {k: v.clone().requires_grad_(True) for k, v in raw.items()}
            x0 = {k: v.clone().requires_grad_(True) for k, v in s0.items()}
            with model.using(u):
                tr = rollout(
                    model, x0, steps, t0=START, save_every=steps, include_initial=False, checkpoint="sqrt"
                )
            loss = tr.final["npzd_phy"].sum()
            loss.backward()
            assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in u.values())
        times.append(time.process_time() - t)
        walls.append(time.perf_counter() - w)
    best = min(times[1:])
    per_step = best / steps
    cy = B * 3600.0 / (per_step * STEPS_PER_YEAR * 3600.0)
    return {
        "batch": B,
        "dtype": dtype_name,
        "mode": mode,
        "nz": model.nz,
        "chunk_columns": chunk,
        "forcing": path.name,
        "steps_timed": steps,
        "repeats": repeat,
        "seconds_per_step_min": per_step,
        "seconds_per_step_all": [x / steps for x in times[1:]],
        "wall_seconds_per_step_all": [x / steps for x in walls[1:]],
        "column_years_per_second": cy,
        "speedup_vs_gotm_fabm_per_core": cy * GOTM_S_PER_COLUMN_YEAR,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def phases(B: int, dtype_name: str, repeat: int) -> dict:
    """Milliseconds per step spent in each part of the step (forward, no gradient), minima over repeats."""
    import torch

    torch.set_num_threads(1)
    model, raw, _ = build(B, dtype_name)
    s = model.initial_state(B, t0=START)
    t = START + 12 * 3600.0

    def best(fn, n=5):
        fn()
        out = 1e9
        for _ in range(repeat):
            t0 = time.process_time()
            for _ in range(n):
                fn()
            out = min(out, (time.process_time() - t0) / n)
        return 1e3 * out

    with torch.no_grad(), model.using(raw):
        phys = model._physics(t, for_step=True)
        svars = {n: s[n] for n in model.interior}
        env = model._full_env(svars, phys, None)
        return {
            "forcing (interpolation, scaling)": best(lambda: model._physics(t, for_step=True)),
            "sinking + diffusion (transport)": best(lambda: model._transport(svars, phys)),
            "light (gotm_light + bio extinction)": best(lambda: model._full_env(svars, phys, None)),
            "BGC interior sources (npzd)": best(lambda: model.bgc.interior_sources(svars, env)),
            "source step (light + sources + Euler)": best(lambda: model._integrate(svars, phys, None)),
            "whole step": best(lambda: model.step(s, t)),
        }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def table(results: list[dict]) -> str:
    lines = [
        "| batch | chunk | dtype | mode | CPU ms / step | column-years / s (per core) "
        "| x GOTM+FABM (1.5 s/col-yr) | peak RSS MB |",
        "|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['batch']} | {r.get('chunk_columns') or '-'} | {r['dtype']} | {r['mode']} | "
            f"{1e3 * r['seconds_per_step_min']:.2f} | "
            f"{r['column_years_per_second']:.3g} | {r['speedup_vs_gotm_fabm_per_core']:.3g} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128, 1024, 4096])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--modes", nargs="+", default=["forward", "fwd+bwd"])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=512, help="ColumnModel chunk_columns (0: no chunking)")
    ap.add_argument("--quick", action="store_true", help="batches 1 and 128, float32, 12 steps, 2 repeats")
    ap.add_argument("--one", nargs=3, metavar=("B", "DTYPE", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--phases", nargs=2, metavar=("B", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "column.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "bench_column.md")
    a = ap.parse_args(argv)
    if a.one:
        chunk = a.chunk or None
        print(json.dumps(run_one(int(a.one[0]), a.one[1], a.one[2], a.steps, a.repeat, chunk)))
        return
    if a.phases:
        print(json.dumps(phases(int(a.phases[0]), a.phases[1], a.repeat)))
        return
    if a.quick:
        a.batches, a.dtypes, a.steps, a.repeat = [1, 128], ["float32"], 12, 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = []
    for dtype in a.dtypes:
        for mode in a.modes:
            for B in a.batches:
                cmd = [sys.executable, __file__, "--one", str(B), dtype, mode, "--steps", str(a.steps)]
                cmd += ["--repeat", str(a.repeat), "--chunk", str(a.chunk)]
                p = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if p.returncode != 0:
                    print(p.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"configuration B={B} {dtype} {mode} failed")
                r = json.loads(p.stdout.strip().splitlines()[-1])
                results.append(r)
                print(
                    f"B={B:5d} {dtype} {mode:8s} {1e3 * r['seconds_per_step_min']:8.2f} ms/step "
                    f"{r['column_years_per_second']:9.3g} col-yr/s  "
                    f"x{r['speedup_vs_gotm_fabm_per_core']:.3g} GOTM  {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    ph = {}
    for dtype in a.dtypes:
        B = max(b for b in a.batches if b <= 1024)
        cmd = [sys.executable, __file__, "--phases", str(B), dtype, "--repeat", str(a.repeat)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode == 0:
            ph[f"{dtype} B={B}"] = json.loads(p.stdout.strip().splitlines()[-1])
    import torch

    meta = {
        "case": "GOTM nns_annual physics + gotm/npzd (fabm-gotm-npzd.yaml), dt=3600 s, Euler, P2_PDM, "
        "cnpar=1",
        "machine": f"{platform.machine()} {_cpu_name()}, {os.cpu_count()} logical CPUs (shared)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": 1,
        "chunk_columns": a.chunk or None,
        "anchor": "GOTM+FABM Fortran: 1.5 s per column-year on one core of this machine (given, not re-run "
        "here)",
        "target": ">= 20x GOTM+FABM per core at >= 1000 columns (>= 13.3 column-years/s)",
        "extrapolation": f"{a.steps} hourly steps from 1998-05-01 timed (process CPU time), minimum of "
        f"{a.repeat} repeats, x8760/steps",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"meta": meta, "results": results, "phases_ms_per_step": ph}, indent=1))
    print(f"wrote {a.out}")
    if a.doc:
        write_doc(a.doc, meta, results, ph)
        print(f"wrote {a.doc}")


def write_doc(path: Path, meta: dict, results: list[dict], ph: dict) -> None:
    lines = [
        "# Water column throughput (NNS NPZD)",
        "",
        "Generated by `benchmarks/column.py` (raw numbers in `benchmarks/results/column.json`).",
        "",
        f"- Case: {meta['case']}.",
        f"- Machine: {meta['machine']}; torch {meta['torch']}; {meta['threads']} thread (per-core figures).",
        f"- Method: {meta['extrapolation']}. The machine was shared with other engineers during the run;",
        "  CPU time is much less affected by that than wall time, but caches and memory bandwidth are shared",
        "  too, so expect noise of tens of percent.",
        f"- Anchor: {meta['anchor']}. Target: {meta['target']}.",
        "",
        table(results),
        "",
    ]
    if ph:
        lines += ["## Where a step goes (ms, forward, minima)", ""]
        keys = list(next(iter(ph.values())))
        lines.append("| part | " + " | ".join(ph) + " |")
        lines.append("|---|" + "---:|" * len(ph))
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(f"{v[k]:.2f}" for v in ph.values()) + " |")
        lines.append("")
        lines.append(
            "The parts overlap (the source step recomputes the light; the whole step includes the rest),"
        )
        lines.append("so they do not add up exactly.")
        lines.append("")
    marker = "<!-- notes (kept when the tables are regenerated) -->"
    notes = ""
    if path.exists() and marker in path.read_text():
        notes = path.read_text().split(marker, 1)[1]
    path.write_text("\n".join(lines) + "\n" + marker + notes)


if __name__ == "__main__":
    main()
