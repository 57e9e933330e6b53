"""The water column against GOTM+FABM (issue 10's table): NNS NPZD throughput, ECOSMO step, `pelagos run`.

Case: GOTM's nns_annual physics (110 layers of 1 m, the shared GOTM output; the shipped 22-layer compact file
when it is absent), ``gotm/npzd`` with FABM's testcase yaml, dt = 3600 s, P2_PDM sinking, cnpar = 1
diffusion with the lagged nuh, GOTM light (Jerlov I), forward Euler sources. A batch of B columns is an
ensemble with log-normally perturbed ``npzd.rmax`` and ``npzd.gmax`` (one value per column, via
``model.using``), all sharing the physics. Each configuration runs plain (``compile: false``) and compiled
(``compile: true``, :mod:`pelagos.column.compiled`).

Reference, measured in the same run: GOTM+FABM (the Fortran binary of the side env ``.side/gotm``) runs the
NPZD year of this case (physics included) through ``scripts/run_gotm_fabm_npzd.sh``; its CPU time (user +
sys, minimum of ``--gotm-repeat`` runs) is the anchor of every "x GOTM+FABM" column. Without the side env the
figure given in the issue (1.5 s per column-year) is used and the JSON says so.

Measured (CPU time of the process, ``time.process_time``, one thread; the machine is shared, so the minimum
of ``--repeat`` windows is kept): a window of ``--steps`` hourly steps from 1 May, extrapolated to a year
(8760 steps): column-years per second = B · 8760 / (seconds per step · 8760). Modes: ``forward`` (no
gradient) and ``fwd+bwd`` (a window of ``--grad-steps`` steps checkpointed in segments of the length
``checkpoint="sqrt"`` takes for a year, ⌈√8760⌉ rounded up to whole compiled blocks = 96 steps; backward of
the final phytoplankton to the per-column parameters and the initial state). Compiled configurations also
report the compile time of their first call (wall, and CPU including Inductor's compiler subprocesses). Each
configuration runs in its own subprocess (its peak RSS is its own).

ECOSMO: one column, 110 layers, FABM's ECOSMO yaml, one forward step, plain and compiled; the ratio to the
NPZD step of the same mode.

``pelagos run`` path: the configuration examples/nns_annual_npzd.yaml on the 110-layer physics with
``numerics.columns`` 1 and 1024, through :func:`pelagos.io.build.run` (what the command calls: config
loading, Simulation, running-mean diagnostics, daily NetCDF output); two windows are run in one process and
their CPU-time difference divided by the step difference gives the per-step cost without start-up and
compilation.

Usage: python benchmarks/column.py [--quick] [--steps 24] [--repeat 5]
Writes benchmarks/results/column.json and docs/bench_column.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
GOTM_FILE = SHARED / "gotm_nns_annual" / "physics_hourly.nc"
FABM_YAML = SHARED / "fabm" / "fabm-gotm-npzd.yaml"
ECOSMO_YAML = SHARED / "fabm" / "fabm-nersc-ecosmo.yaml"
EXAMPLE = ROOT / "examples" / "nns_annual_npzd.yaml"
GOTM_BINARY = ROOT / ".side" / "gotm" / "build" / "gotm"
GOTM_GIVEN_S_PER_COLUMN_YEAR = 1.5  # the figure, used only when GOTM cannot be run here
STEPS_PER_YEAR = 8760
START = 120 * 86400.0  # 1 May 1998


def build(B: int, dtype_name: str, chunk: int | None = None, compile: bool = False, bgc_name: str = "npzd"):
    import torch

    from pelagos.bgc.npzd import NPZD
    from pelagos.bgc.system import BGCSystem
    from pelagos.column.forcing import ColumnForcing, compact_forcing_path
    from pelagos.column.model import ColumnModel

    dtype = getattr(torch, dtype_name)
    path = GOTM_FILE if GOTM_FILE.exists() else compact_forcing_path()
    stress = 0.05 if bgc_name == "ecosmo" else None
    forcing = ColumnForcing.from_gotm(
        path, start=START - 7200, stop=START + 40 * 86400, dtype=dtype, bottom_stress=stress
    )
    if bgc_name == "ecosmo":
        bgc = BGCSystem.from_yaml(ECOSMO_YAML, drop_unsupported=True, dtype=dtype)
    else:
        bgc = (
            BGCSystem.from_yaml(FABM_YAML, dtype=dtype) if FABM_YAML.exists() else BGCSystem({"npzd": NPZD()})
        )
    model = ColumnModel(bgc, forcing, dt=3600.0, chunk_columns=chunk, compile=compile).to(dtype)
    if bgc_name == "ecosmo":
        return model, {}, path
    g = torch.Generator().manual_seed(0)
    raw = {}
    for name in ("npzd.rmax", "npzd.gmax"):
        base = model.get_parameter_value(name).to(dtype)
        value = base * torch.exp(0.2 * torch.randn(B, generator=g, dtype=dtype))
        raw[name] = model.parameter_spec(name).transform.inverse(value)
    return model, raw, path


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_gotm(repeat: int) -> dict | None:
    """GOTM+FABM's NNS NPZD year (scripts/run_gotm_fabm_npzd.sh): CPU seconds (user + sys), all runs."""
    if not GOTM_BINARY.exists():
        return None
    runs = []
    for _ in range(repeat):
        p = subprocess.run(
            [str(ROOT / "scripts" / "run_gotm_fabm_npzd.sh")], capture_output=True, text=True, check=True
        )
        r = json.loads(p.stdout.strip().splitlines()[-1])
        shutil.rmtree(r.pop("run_dir"), ignore_errors=True)
        runs.append(r)
    cpu = [r["user_s"] + r["sys_s"] for r in runs]
    return {"cpu_s_per_column_year": min(cpu), "cpu_s_all": cpu, "runs": runs}


@contextlib.contextmanager
def record_stamps() -> Iterator[list[float]]:
    """The process CPU time (s) at each record the model's NetCDF writer writes while the block runs (what
    the ``pelagos run`` timings difference: output writing and interval means included)."""
    from pelagos.io import netcdf_writer

    stamps: list[float] = []
    write = netcdf_writer.ModelNetCDFWriter.write

    def stamped(self: Any, t: Any, values: Any) -> None:
        write(self, t, values)
        stamps.append(time.process_time())
        record_stamps.model = self.model  # the run's model (which step it took: _path_taken)

    netcdf_writer.ModelNetCDFWriter.write = stamped
    try:
        yield stamps
    finally:
        netcdf_writer.ModelNetCDFWriter.write = write


def _path_taken(model: Any, compile: bool) -> str:
    """Which step ran: "plain", "fused" (the generated C kernel, :mod:`pelagos.column.fused`) or "inductor"
    (the torch.compile program)."""
    if not compile:
        return "plain"
    fc = model.__dict__.get("_fused_obj")
    ran = fc is not None and fc._plans and model.__dict__.get("_fused_reason", "not asked") is None
    return "fused" if ran else "inductor"


def run_path(columns: int, compile: bool, days: int, dtype_name: str = "float64") -> dict:
    """``pelagos run`` of examples/nns_annual_npzd.yaml on the 110-layer physics through
    :func:`pelagos.io.build.run`: two 1-day runs (the first with imports and compilation), then a
    (1 + days)-day run whose process CPU time is stamped at every daily record; the per-step cost is that
    of the records after the first (start-up, compilation and the first day excluded; the output writing
    and interval means included). A difference of whole runs would also count what only the longer run
    loads or compiles once."""
    import tempfile

    import torch

    from pelagos.io.build import run

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="colbench_"))
    base = [
        f"numerics.columns={columns}",
        f"numerics.compile={'true' if compile else 'false'}",
        f"model.dtype={dtype_name}",
        f"output.file={tmp / 'out.nc'}",
        "restart.file=null",
    ]
    if GOTM_FILE.exists():
        base.append(f"forcing.file={GOTM_FILE}")

    def once(d: int) -> tuple[float, float]:
        stop = f'time.stop="1998-01-{1 + d:02d} 00:00:00"' if d < 31 else None
        if stop is None:
            import datetime as dt

            day = dt.date(1998, 1, 1) + dt.timedelta(days=d)
            stop = f'time.stop="{day:%Y-%m-%d} 00:00:00"'
        c, w = time.process_time(), time.perf_counter()
        run(EXAMPLE, overrides=[*base, stop], fresh=True, progress=False)
        return time.process_time() - c, time.perf_counter() - w

    first = once(1)  # imports, first compilation
    short = once(1)
    with record_stamps() as stamps:
        long = once(1 + days)
    if len(stamps) < 3:
        raise SystemExit(f"run_path: {len(stamps)} daily records stamped; give at least 2 days")
    per_step = (stamps[-1] - stamps[1]) / (24 * (len(stamps) - 2))  # one record a day
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "columns": columns,
        "compile": compile,
        "path": _path_taken(record_stamps.model, compile),
        "dtype": dtype_name,
        "days_timed": days,
        "cpu_s_first_1day_run": first[0],
        "wall_s_first_1day_run": first[1],
        "cpu_s_1day_run": short[0],
        "cpu_s_long_run": long[0],
        "seconds_per_step": per_step,
        "records_stamped": len(stamps),
        "startup_and_compile_cpu_s": short[0] - 24 * per_step,
        "column_years_per_second": columns / (per_step * STEPS_PER_YEAR),
    }


def _adjoint_calls(model: Any) -> int:
    """Backward passes through the fused kernel's generated adjoint (0: the gradient was Inductor's)."""
    plans = getattr(model.__dict__.get("_fused_obj"), "_plans", {})
    return sum(getattr(p, "adjoint_calls", 0) for p in plans.values())


def run_one(
    B: int,
    dtype_name: str,
    mode: str,
    steps: int,
    repeat: int,
    chunk: int | None = None,
    compile: bool = False,
    bgc_name: str = "npzd",
) -> dict:
    """Time one configuration in this process (called in a subprocess)."""
    import torch

    from pelagos.core.rollout import rollout, segment_length

    torch.set_num_threads(1)
    model, raw, path = build(B, dtype_name, chunk, compile, bgc_name)
    s0 = model.initial_state(B, t0=START)
    seg = segment_length("sqrt", STEPS_PER_YEAR, model)
    times, walls = [], []
    compile_wall = compile_cpu = None
    for i in range(repeat + 1):  # the first is a warm-up (and, compiled, the compilation)
        if i == 0:
            w0, c0, ch0 = time.perf_counter(), time.process_time(), _children_cpu()
        t, w = time.process_time(), time.perf_counter()
        if mode == "forward":
            with torch.no_grad(), model.using(raw):
                rollout(model, s0, steps, t0=START, save_every=steps, include_initial=False)
        else:
            u = {k: v.clone().requires_grad_(True) for k, v in raw.items()}
            x0 = {k: v.clone().requires_grad_(True) for k, v in s0.items()}
            with model.using(u):  # the segments of a year's checkpointed run, whatever the window
                tr = rollout(
                    model, x0, steps, t0=START, save_every=steps, include_initial=False, checkpoint=seg
                )
            loss = tr.final[model.interior[0] if bgc_name != "npzd" else "npzd_phy"].sum()
            loss.backward()
            assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in u.values())
        times.append(time.process_time() - t)
        walls.append(time.perf_counter() - w)
        if i == 0:
            compile_wall = time.perf_counter() - w0
            compile_cpu = time.process_time() - c0 + _children_cpu() - ch0
    best = min(times[1:])
    per_step = best / steps
    cy = B * 3600.0 / (per_step * STEPS_PER_YEAR * 3600.0)
    return {
        "batch": B,
        "dtype": dtype_name,
        "mode": mode,
        "compile": bool(compile),
        "path": _path_taken(model, compile),
        "fused_adjoint_calls": _adjoint_calls(model),
        "bgc": bgc_name,
        "first_window_wall_s": compile_wall,
        "first_window_cpu_s_with_compiler": compile_cpu,
        "nz": model.nz,
        "chunk_columns": chunk,
        "forcing": path.name,
        "steps_timed": steps,
        "repeats": repeat,
        "seconds_per_step_min": per_step,
        "seconds_per_step_all": [x / steps for x in times[1:]],
        "wall_seconds_per_step_all": [x / steps for x in walls[1:]],
        "column_years_per_second": cy,
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


def kernels(B: int, dtype_name: str, steps: int, chunk: int | None, repeat: int) -> dict:
    """The compiled step's parts, kernel by kernel: Inductor's generated C++ kernels (timed by Inductor's
    kernel profiling, ``cpp.enable_kernel_profile``, with the Python wrapper instead of the C++ one so that
    the profiler sees them), the tridiagonal custom op, aten fallbacks and dynamo's guard checks:
    torch.profiler's self CPU time per step (forward, no gradient), minimum of ``repeat`` profiled windows per
    part (the machine is shared). The profiler adds a little per event; ``ms_per_step_without_profiler`` is
    without it."""
    os.environ["PELAGOS_COLUMN_CPP_WRAPPER"] = "0"  # read when pelagos.column.compiled is imported
    import torch
    import torch._inductor.config as ic
    from torch.profiler import ProfilerActivity, profile

    from pelagos.core.rollout import rollout

    ic.cpp.enable_kernel_profile = True
    torch.set_num_threads(1)
    model, raw, _ = build(B, dtype_name, chunk, True)
    s0 = model.initial_state(B, t0=START)

    def window() -> None:
        with torch.no_grad(), model.using(raw):
            rollout(model, s0, steps, t0=START, save_every=steps, include_initial=False)

    window()
    total = 1e9
    for _ in range(repeat):
        t = time.process_time()
        window()
        total = min(total, (time.process_time() - t) / steps)
    best: dict[str, dict] = {}
    for _ in range(repeat):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            window()
        for e in prof.key_averages():
            ms = e.self_cpu_time_total / 1e3 / steps
            if ms > 0 and (e.key not in best or ms < best[e.key]["ms_per_step"]):
                best[e.key] = {"name": e.key, "calls_per_step": e.count / steps, "ms_per_step": ms}
    rows = sorted(best.values(), key=lambda r: -r["ms_per_step"])
    return {"batch": B, "dtype": dtype_name, "chunk_columns": chunk, "steps": steps,
            "ms_per_step_without_profiler": 1e3 * total, "parts": rows}  # fmt: skip


def op_costs() -> dict:
    """CPU ns per element of one operation in Inductor-generated loops on this core (the roofline's unit
    costs), two ways, on 65 536 elements (in cache), minima of repeats:

    - ``fma``, ``div``, ``exp``: chains of 32 *dependent* operations minus a one-operation loop: the latency
      of each operation, what a loop with one long chain per element pays;
    - ``*_independent``: 16 *independent* operations per element summed (``acc + f(x * c_i)``), minus the
      same loop with ``x * c_i`` terms: the throughput, what a kernel pays whose operations per element do
      not wait on one another (the column step's three ``exp`` per cell do not);
    - ``eager_exp``: ``torch.exp(x, out=y)`` (ATen's vectorised loop) in cache and on 8 Mi elements;
    - ``copy_ns_per_byte``: the streaming copy of 8 Mi elements (ns per byte moved).

    Inductor's CPU code here is AVX-512 (``at::vec::Vectorized``, 8 doubles or 16 floats a register) and its
    ``exp`` is Sleef's 1-ulp vector exp (``Sleef_expd8_u10`` / ``Sleef_expf16_u10``)."""
    import torch

    torch.set_num_threads(1)
    L, K, n = 32, 16, 65536

    def best(fn: Any, x: Any, reps: int = 15, inner: int = 20) -> float:
        fn(x)
        out = 1e9
        for _ in range(reps):
            t = time.process_time()
            for _ in range(inner):
                fn(x)
            out = min(out, (time.process_time() - t) / inner)
        return out

    def chain(op: str) -> Any:
        def f(x: Any) -> Any:
            for _ in range(L if op != "base" else 1):
                x = {"base": lambda y: y * 0.999 + 0.001, "fma": lambda y: y * 0.999 + 0.001,
                     "div": lambda y: 1.5 / (y + 0.5), "exp": lambda y: torch.exp(-y)}[op](x)  # fmt: skip
            return x

        return torch.compile(f, dynamic=False)

    def independent(op: str) -> Any:
        cs = [0.3 + 0.05 * i for i in range(K)]

        def term(x: Any, c: float) -> Any:
            if op == "fma":
                return (x * c + 0.25) * x + c  # two multiply-adds
            if op == "div":
                return c / (x + (c + 3.5))
            return torch.exp(x * c) if op == "exp" else x * c

        def f(x: Any) -> Any:
            acc = x * 0.0
            for c in cs:
                acc = acc + term(x, c)
            return acc

        return torch.compile(f, dynamic=False)

    out: dict[str, Any] = {}
    for dtype in (torch.float64, torch.float32):
        x = torch.rand(n, dtype=dtype)
        base = best(chain("base"), x)
        r = {op: (best(chain(op), x) - base) / L / n * 1e9 for op in ("fma", "div", "exp")}
        xi = -3.0 * torch.rand(n, dtype=dtype)
        base = best(independent("base"), xi)
        for op in ("fma", "div", "exp"):
            per = (best(independent(op), xi) - base) / K / n * 1e9
            r[f"{op}_independent"] = per / 2 if op == "fma" else per
        r["eager_exp"] = best(functools.partial(torch.exp, out=torch.empty_like(xi)), xi) / n * 1e9
        big = torch.rand(8 * 1024 * 1024, dtype=dtype)
        dst = torch.empty_like(big)
        exp_big = functools.partial(torch.exp, out=dst)
        r["eager_exp_8Mi"] = best(exp_big, big, reps=5, inner=3) / big.numel() * 1e9
        r["copy_ns_per_byte"] = (
            best(dst.copy_, big, reps=5, inner=3) / (2 * big.numel() * big.element_size()) * 1e9
        )
        out[str(dtype).replace("torch.", "")] = r
    return out


def light_scan(B: int, dtype_name: str = "float64") -> dict:
    """What the GOTM light costs compiled (PAR at layer centres, ``B`` columns of the 110 layers here, one
    compiled program each, CPU ms, minima of 40 calls) and how much of it is the reverse scan of the
    attenuation: today's routine (:func:`pelagos.column.light.gotm_light`: half-layer extinctions summed
    from the surface in GOTM's order, compiled as the C++ operator ``pelagos::light_scan``), the routine
    before that operator (one aten ``cumsum`` over 2·nz read back reversed with stride 2; the same bits),
    the same without any scan (the ``exp`` and arithmetic alone), ``flip(cumsum(flip(.)))`` of
    the layer extinctions, and a suffix sum ``total - prefix`` (no flips); the last two round differently
    (``rel_diff``: largest difference relative to PAR's magnitude)."""
    import torch

    from pelagos.column.grid import centre_depth
    from pelagos.column.light import gotm_light

    torch.set_num_threads(1)
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    h = 0.5 + torch.rand(1, 110, generator=g, dtype=dtype)
    k = 0.1 * torch.rand(B, 110, generator=g, dtype=dtype)
    I0 = torch.tensor(100.0, dtype=dtype)

    def today(I0: Any, h: Any, k: Any) -> Any:
        return gotm_light(I0, h, k)["PAR"]

    def no_scan(I0: Any, h: Any, k: Any) -> Any:
        return I0 * (1 - 0.58) * torch.exp(-centre_depth(h) / 23.0 - k * h)

    def flips(I0: Any, h: Any, k: Any) -> Any:
        kh = k * h
        ext = torch.flip(torch.cumsum(torch.flip(kh, [-1]), -1), [-1]) - 0.5 * kh
        return I0 * (1 - 0.58) * torch.exp(-centre_depth(h) / 23.0 - ext)

    def suffix(I0: Any, h: Any, k: Any) -> Any:
        kh = k * h
        ext = kh.sum(-1, keepdim=True) - torch.cumsum(kh, -1) + 0.5 * kh
        return I0 * (1 - 0.58) * torch.exp(-centre_depth(h) / 23.0 - ext)

    def gotm_order_cumsum(I0: Any, h: Any, k: Any) -> Any:  # before pelagos::light_scan: aten's cumsum
        half = (k * h / 2).flip(-1)
        cum = torch.cumsum(torch.stack([half, half], -1).flatten(-2), -1)
        return I0 * (1 - 0.58) * torch.exp(-centre_depth(h) / 23.0 - cum[..., 0::2].flip(-1))

    from pelagos.column import _light_op

    out: dict[str, Any] = {"batch": B, "dtype": dtype_name, "light_scan_operator": _light_op.load()}
    ref = today(I0, h, k)
    for name, fn in (("gotm_order_today", today), ("gotm_order_aten_cumsum", gotm_order_cumsum),
                     ("no_scan", no_scan), ("flip_cumsum_flip", flips),
                     ("suffix_total_minus_prefix", suffix)):  # fmt: skip
        f = torch.compile(fn, dynamic=False)
        f(I0, h, k)
        best = 1e9
        for _ in range(40):
            t = time.process_time()
            f(I0, h, k)
            best = min(best, time.process_time() - t)
        rel = float((fn(I0, h, k) - ref).abs().max() / ref.abs().max())
        out[name] = {"ms": 1e3 * best, "rel_diff": rel}
    return out


def run_parts(B: int) -> dict:
    """The parts of one ``pelagos run`` step with interval-mean diagnostics (what ``Simulation._advance``
    does per step), compiled, float64, B columns not chunked, timed one by one on the same states (CPU ms,
    minima of 7): the step, the output for the means (all fields; only the mean fields, ``names=``), the
    running sums (the block path sums inside its program: ``benchmarks/column_block.py --means``)."""
    import torch

    torch.set_num_threads(1)
    model, _, _ = build(B, "float64", None, True)
    s = model.initial_state(B, t0=START)
    names = tuple(v.name for v in model.output_variables() if v.mean)
    with torch.no_grad():
        s1 = model.step(s, START)
        t1 = START + model.dt

        def only() -> dict:  # what Simulation asks after a step inside an output interval
            return model.output(s1, t1, names=names)

        o = model.output(s1, t1)
        acc = {k: o[k].clone() for k in names}

        def accumulate() -> None:
            for k in names:
                acc[k] = acc[k] + o[k].to(torch.float64)

        parts = {
            "step": lambda: model.step(s, START),
            "output, all fields": lambda: model.output(s1, t1),
            "output, mean fields only (names=)": only,
            f"running sums of the {len(names)} mean fields": accumulate,
            "forcing sample at the output time": lambda: model._raw_physics(t1, for_step=False),
        }
        res = dict.fromkeys(parts, 1e9)
        for f in parts.values():
            f()
        for _ in range(7):
            for k, f in parts.items():
                t = time.process_time()
                f()
                res[k] = min(res[k], time.process_time() - t)
        same = all(torch.equal(o[k], only()[k]) for k in names)
    ms = {k: 1e3 * v for k, v in res.items()}
    return {"batch": B, "mean_fields": list(names), "ms": ms, "same_values": same}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _sub(args: list[str], env: dict) -> dict:
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        print(p.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"configuration {args} failed")
    return json.loads(p.stdout.strip().splitlines()[-1])


def table(results: list[dict], gotm_s: float) -> str:
    lines = [
        "| model | batch | dtype | mode | compiled | step taken | CPU ms / step "
        "| column-years / s (per core) | x GOTM+FABM | first window (compile) wall s | peak RSS MB |",
        "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cw = r.get("first_window_wall_s")
        lines.append(
            f"| {r.get('bgc', 'npzd')} | {r['batch']} | {r['dtype']} | {r['mode']} | "
            f"{'yes' if r.get('compile') else 'no'} | {r.get('path', '-')} | "
            f"{1e3 * r['seconds_per_step_min']:.3f} | "
            f"{r['column_years_per_second']:.3g} | {r['column_years_per_second'] * gotm_s:.3g} | "
            f"{cw:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def _find(results: list[dict], **kw: Any) -> dict | None:
    for r in results:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def summary(results: list[dict], runs: list[dict], gotm_s: float) -> list[dict]:
    """Issue 10's table: one row per target, ours (plain and compiled) against GOTM+FABM."""
    rows = []
    gotm_step = gotm_s / STEPS_PER_YEAR

    def both(**kw: Any) -> tuple[dict | None, dict | None]:  # plain, and what `compile: true` runs
        return _find(results, compile=False, **kw), _find(results, compile=True, inductor_only=None, **kw)

    def inductor(**kw: Any) -> float | None:  # the same with the fused kernel off
        r = _find(results, compile=True, inductor_only=True, **kw)
        return None if r is None else r["column_years_per_second"] * gotm_s

    p, c = both(batch=1, dtype="float64", mode="forward", bgc="npzd")
    if p and c:
        rows.append({
            "case": "one column, 110 layers, hourly, NPZD, float64, forward: "
            "time per column-year / GOTM+FABM's",
            "gotm": f"{1e3 * gotm_step:.3f} ms/step",
            "plain": p["seconds_per_step_min"] / gotm_step,
            "compiled": c["seconds_per_step_min"] / gotm_step,
            "inductor": (lambda r: None if r is None else r["seconds_per_step_min"] / gotm_step)(
                _find(results, compile=True, inductor_only=True, batch=1, dtype="float64", mode="forward",
                      bgc="npzd")),
            "target": "<= 1", "ok": c["seconds_per_step_min"] / gotm_step <= 1.0,
        })  # fmt: skip
    for B in (1, 1024):
        pb, cb = both(batch=B, dtype="float64", mode="fwd+bwd", bgc="npzd")
        pf, cf = both(batch=B, dtype="float64", mode="forward", bgc="npzd")
        fi = _find(
            results, compile=True, inductor_only=True, batch=B, dtype="float64", mode="forward", bgc="npzd"
        ) or (cf if cf and cf["path"] == "inductor" else None)
        bi = _find(
            results, compile=True, inductor_only=True, batch=B, dtype="float64", mode="fwd+bwd", bgc="npzd"
        )
        if pb and cb and pf and cf:
            rows.append({
                "case": f"{B} column(s), float64, forward + backward (checkpoint sqrt) / forward",
                "gotm": "-",
                "plain": pb["seconds_per_step_min"] / pf["seconds_per_step_min"],
                "compiled": cb["seconds_per_step_min"] / cf["seconds_per_step_min"],
                # the Inductor program's gradient (the fused kernel off) against its own forward
                "inductor": None if fi is None or bi is None
                else bi["seconds_per_step_min"] / fi["seconds_per_step_min"],
                "target": "<= 3", "ok": cb["seconds_per_step_min"] / cf["seconds_per_step_min"] <= 3.0,
            })  # fmt: skip
    for dtype, target in (("float64", 100.0), ("float32", 200.0)):
        big = sorted({r["batch"] for r in results if r["batch"] >= 1000 and r["dtype"] == dtype})
        for B in big:
            pf, cf = both(batch=B, dtype=dtype, mode="forward", bgc="npzd")
            if pf and cf:
                x = cf["column_years_per_second"] * gotm_s
                rows.append({
                    "case": f"{B} columns, {dtype}, forward, per core: x GOTM+FABM (benchmark)",
                    "gotm": f"{gotm_s:.2f} s/column-year",
                    "plain": pf["column_years_per_second"] * gotm_s, "compiled": x,
                    "inductor": inductor(batch=B, dtype=dtype, mode="forward", bgc="npzd"),
                    "target": f">= {target:g}", "ok": x >= target,
                })  # fmt: skip
    for cols in sorted({r["columns"] for r in runs}):
        rp = _find(runs, columns=cols, compile=False)
        rc = _find(runs, columns=cols, compile=True, inductor_only=None)
        ri = _find(runs, columns=cols, compile=True, inductor_only=True)
        if rp and rc:
            x = rc["column_years_per_second"] * gotm_s
            target = "<= 1 (time per column-year)" if cols == 1 else ">= 100"
            val = (lambda r: 1.0 / (r["column_years_per_second"] * gotm_s)) if cols == 1 else (
                lambda r: r["column_years_per_second"] * gotm_s)  # fmt: skip
            rows.append({
                "case": f"`pelagos run` nns_annual_npzd.yaml, 110 layers, columns {cols}, float64"
                + (": time per column-year / GOTM+FABM's" if cols == 1 else ": x GOTM+FABM per core"),
                "gotm": f"{gotm_s:.2f} s/column-year",
                "plain": val(rp), "compiled": val(rc), "inductor": None if ri is None else val(ri),
                "target": target,
                "ok": (val(rc) <= 1.0) if cols == 1 else (x >= 100.0),
            })  # fmt: skip
    for comp in (False, True):
        e = _find(results, bgc="ecosmo", compile=comp)
        n = _find(results, bgc="npzd", batch=1, dtype="float64", mode="forward", compile=comp)
        if e and n:
            rows.append({
                "case": "ECOSMO (19 states) one column-step / NPZD step, 110 layers, float64"
                + (" (compiled)" if comp else " (plain)"),
                "gotm": "-",
                "plain" if not comp else "compiled": e["seconds_per_step_min"] / n["seconds_per_step_min"],
                "target": "<= 3", "ok": e["seconds_per_step_min"] / n["seconds_per_step_min"] <= 3.0,
            })  # fmt: skip
    return rows


def summary_table(rows: list[dict]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))

    lines = [
        "| case | GOTM+FABM | ours, plain | ours, compiled | compiled, Inductor only | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['gotm']} | {f(r.get('plain'))} | {f(r.get('compiled'))} | "
            f"{f(r.get('inductor'))} | {r['target']} | {'yes' if r['ok'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 1024, 4096])
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    ap.add_argument("--grad-batches", type=int, nargs="+", default=[1, 1024])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument(
        "--grad-steps", type=int, default=192, help="fwd+bwd window (segments as in a year: √8760 steps)"
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--gotm-repeat", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=512, help="ColumnModel chunk_columns (0: no chunking)")
    ap.add_argument("--run-days", type=int, nargs=2, default=[60, 6], metavar=("DAYS_1COL", "DAYS_1024"))
    ap.add_argument(
        "--runs-only", action="store_true", help="rerun the `pelagos run` rows, keep the step rows of --out"
    )
    ap.add_argument(
        "--grad-only", action="store_true", help="rerun the fwd+bwd rows (and their forward), keep the others"
    )
    ap.add_argument("--quick", action="store_true", help="batches 1 and 128, float64, 12 steps, 2 repeats")
    ap.add_argument("--doc-only", action="store_true", help="rebuild the tables of --doc from --out, no runs")
    ap.add_argument(
        "--one", nargs=5, metavar=("B", "DTYPE", "MODE", "COMPILE", "BGC"), help=argparse.SUPPRESS
    )
    ap.add_argument("--run-path", nargs=3, metavar=("COLUMNS", "COMPILE", "DAYS"), help=argparse.SUPPRESS)
    ap.add_argument("--phases", nargs=2, metavar=("B", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--kernels",
        nargs=2,
        metavar=("B", "DTYPE"),
        help="profile the compiled step kernel by kernel, print JSON",
    )
    ap.add_argument("--op-costs", action="store_true", help="ns per element of add/div/exp here (roofline)")
    ap.add_argument("--run-parts", action="store_true", help="parts of a `pelagos run` step, 1024 columns")
    ap.add_argument("--light-scan", type=int, metavar="B", help="compiled GOTM light and its scan, B columns")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "column.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "bench_column.md")
    a = ap.parse_args(argv)
    if a.one:
        B, dtype, mode, comp, bgc = a.one
        chunk = a.chunk or None
        r = run_one(int(B), dtype, mode, a.steps, a.repeat, chunk, comp == "1", bgc)
        print(json.dumps(r))
        return
    if a.run_path:
        print(json.dumps(run_path(int(a.run_path[0]), a.run_path[1] == "1", int(a.run_path[2]))))
        return
    if a.phases:
        print(json.dumps(phases(int(a.phases[0]), a.phases[1], a.repeat)))
        return
    if a.kernels:
        r = kernels(int(a.kernels[0]), a.kernels[1], a.steps, a.chunk or None, a.repeat)
        for row in r["parts"][:25]:
            print(
                f"{row['ms_per_step']:8.3f} ms/step {row['calls_per_step']:6.1f} calls  {row['name'][:110]}"
            )
        print(json.dumps(r))
        return
    if a.op_costs:
        print(json.dumps(op_costs()))
        return
    if a.run_parts:
        print(json.dumps(run_parts(1024)))
        return
    if a.light_scan:
        print(json.dumps(light_scan(a.light_scan)))
        return
    if a.doc_only:
        last = json.loads(a.out.read_text())
        gotm_s = last["meta"]["gotm_fabm"]["cpu_s_per_column_year"]
        last["summary"] = summary(last["results"], last["run_path"], gotm_s)
        a.out.write_text(json.dumps(last, indent=1))
        write_doc(a.doc, last["meta"], last["summary"], last["results"], last["run_path"], gotm_s)
        print(summary_table(last["summary"]))
        return
    if a.quick:
        a.batches, a.dtypes, a.grad_batches, a.steps, a.repeat = [1, 128], ["float64"], [1], 12, 2
        a.grad_steps = 24
        a.gotm_repeat, a.run_days = 2, [10, 3]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --runs-only / --grad-only: the GOTM+FABM time of the last full run (ratios of the same session)
    last = json.loads(a.out.read_text()) if a.runs_only or a.grad_only else None
    gotm = last["meta"]["gotm_fabm"] if last else time_gotm(a.gotm_repeat)
    gotm_s = gotm["cpu_s_per_column_year"] if gotm else GOTM_GIVEN_S_PER_COLUMN_YEAR
    print(f"GOTM+FABM NPZD year: {gotm_s:.3f} s CPU" + ("" if gotm else " (given, not measured)"), flush=True)
    configs = [(B, d, "forward", "npzd") for d in a.dtypes for B in a.batches]
    configs += [(B, "float64", "fwd+bwd", "npzd") for B in a.grad_batches]
    configs += [(1, "float64", "forward", "ecosmo")]
    results = []
    if a.runs_only:  # the step rows of the last full run
        configs, results = [], last["results"]
    if a.grad_only:  # the fwd+bwd rows and their forward denominators anew, the other rows of the last run
        configs = [(B, "float64", m, "npzd") for B in a.grad_batches for m in ("forward", "fwd+bwd")]
        results = last["results"]
    off = {**env, "PELAGOS_COLUMN_FUSED": "0"}  # the compiled step with the fused kernel off
    for B, dtype, mode, bgc in configs:
        variants = [(False, env), (True, env)]
        if mode == "forward" and (B >= 1000 or B == 1) and bgc == "npzd":
            variants.append((True, off))
        if mode == "fwd+bwd":  # the gradient of the compiled (Inductor) program, as before the fused adjoint
            variants.append((True, {**env, "PELAGOS_COLUMN_FUSED": "0"}))
        for comp, e in variants:
            steps = a.grad_steps if mode == "fwd+bwd" else a.steps
            r = _sub(["--one", str(B), dtype, mode, "1" if comp else "0", bgc, "--steps", str(steps),
                      "--repeat", str(a.repeat), "--chunk", str(a.chunk)], e)  # fmt: skip
            if e.get("PELAGOS_COLUMN_FUSED") == "0":
                r["inductor_only"] = True
            same = [i for i, x in enumerate(results) if _key(x) == _key(r)]
            if same:  # --grad-only: a row of the last run, replaced in its place
                results[same[0]] = r
            else:
                results.append(r)
            print(
                f"{bgc:6s} B={B:5d} {dtype} {mode:8s} compiled={comp!s:5s} {r['path']:8s} "
                f"{1e3 * r['seconds_per_step_min']:8.3f} ms/step "
                f"{r['column_years_per_second']:9.3g} col-yr/s x{r['column_years_per_second'] * gotm_s:.3g} "
                f"GOTM  first window {r['first_window_wall_s']:.1f} s",
                flush=True,
            )
    runs = last["run_path"] if a.grad_only else []
    for cols, days in () if a.grad_only else ((1, a.run_days[0]), (1024, a.run_days[1])):
        for comp, e in [(False, env), (True, env), (True, off)]:
            r = _sub(["--run-path", str(cols), "1" if comp else "0", str(days)], e)
            if e is off:
                r["inductor_only"] = True
            runs.append(r)
            print(
                f"pelagos run columns={cols} compiled={comp} {r['path']}: "
                f"{1e3 * r['seconds_per_step']:.3f} ms/step, "
                f"x{r['column_years_per_second'] * gotm_s:.3g} GOTM, start-up+compile "
                f"{r['startup_and_compile_cpu_s']:.1f} s CPU "
                f"(first run {r['wall_s_first_1day_run']:.1f} s wall)",
                flush=True,
            )
    rows = summary(results, runs, gotm_s)
    print(summary_table(rows))
    import torch

    meta = {
        "case": "GOTM nns_annual physics (110 x 1 m) + gotm/npzd (fabm-gotm-npzd.yaml), dt=3600 s, Euler, "
        "P2_PDM, cnpar=1",
        "machine": f"{platform.machine()} {_cpu_name()}, {os.cpu_count()} logical CPUs (shared)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": 1,
        "chunk_columns": a.chunk or None,
        "gotm_fabm": gotm or {"cpu_s_per_column_year": gotm_s, "note": "given in issue 10, not measured"},
        "extrapolation": f"{a.steps} hourly steps from 1998-05-01 timed (process CPU time), minimum of "
        f"{a.repeat} repeats, x8760/steps; fwd+bwd: {a.grad_steps} steps in checkpointed segments of a "
        "year's length",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    if a.grad_only:  # the other rows are the last full run's
        meta["date_utc"] = f"{last['meta']['date_utc']} (fwd+bwd rows and their forward: {meta['date_utc']})"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "summary": rows, "results": results, "run_path": runs}
    a.out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {a.out}")
    if a.doc:
        write_doc(a.doc, meta, rows, results, runs, gotm_s)
        print(f"wrote {a.doc}")


def _key(r: dict) -> tuple:
    return r["batch"], r["dtype"], r["mode"], r["bgc"], r["compile"], r.get("inductor_only")


def write_doc(
    path: Path, meta: dict, rows: list, results: list[dict], runs: list[dict], gotm_s: float
) -> None:
    g = meta["gotm_fabm"]
    lines = [
        "# Water column against GOTM+FABM (NNS NPZD; issue 10)",
        "",
        "Generated by `benchmarks/column.py` (raw numbers in `benchmarks/results/column.json`).",
        "",
        f"- Case: {meta['case']}.",
        f"- Machine: {meta['machine']}; torch {meta['torch']}; {meta['threads']} thread (per-core figures);"
        f" {meta['date_utc']} UTC. CPU time, loaded machine (up to 7 other jobs on 2 cores).",
        f"- GOTM+FABM: {gotm_s:.3f} s CPU per column-year"
        + (f" (minimum of {len(g['cpu_s_all'])} runs of `scripts/run_gotm_fabm_npzd.sh` in this benchmark"
           f" run: {', '.join(f'{x:.2f}' for x in g['cpu_s_all'])} s)" if "cpu_s_all" in g else " (given)")
        + ", k-epsilon turbulence and mean flow included.",
        f"- Method: {meta['extrapolation']}; `pelagos run`: process CPU time stamped at each daily record of "
        "one run, the records after the first (start-up and compilation excluded, reported separately).",
        "",
        "## Targets",
        "",
        summary_table(rows),
        "",
        "## All configurations",
        "",
        table(results, gotm_s),
        "",
        "## `pelagos run` path",
        "",
        "| columns | compiled | CPU ms / step | column-years / s | x GOTM+FABM | start-up + compile CPU s "
        "| first 1-day run wall s |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in runs:
        lines.append(
            f"| {r['columns']} | {'yes' if r['compile'] else 'no'} | {1e3 * r['seconds_per_step']:.3f} | "
            f"{r['column_years_per_second']:.3g} | {r['column_years_per_second'] * gotm_s:.3g} | "
            f"{r['startup_and_compile_cpu_s']:.1f} | {r['wall_s_first_1day_run']:.1f} |"
        )
    lines.append("")
    marker = "<!-- notes (kept when the tables are regenerated) -->"
    notes = ""
    if path.exists() and marker in path.read_text():
        notes = path.read_text().split(marker, 1)[1]
    path.write_text("\n".join(lines) + "\n" + marker + notes)


if __name__ == "__main__":
    main()
