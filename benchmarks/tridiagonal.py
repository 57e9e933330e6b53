"""Benchmark pelagos.core.solve_tridiagonal against named references, side by side in one process.

References (same random diagonally dominant systems, same dtype):
  lapack  SciPy ``solve_banded`` (LAPACK ?gtsv) called once per system in a Python loop. For large
          batches a subset of systems is timed and the time scaled linearly (marked ``~``).
  dense   ``torch.linalg.solve`` on the assembled (batch, N, N) matrices (LU; assembly not timed).
          Timed on a subset and scaled linearly when the full run would be long; skipped (``-``)
          when the matrices would need more than ``--dense-gb`` GB.
  loop    autograd recorded through a plain Python Thomas loop (forward + backward).
  memcpy  ``copy_`` of the four input arrays into preallocated buffers: the memory-bandwidth floor
          (a solver must at least read them; ours also allocates and writes its output).
  clone   ``clone()`` of the four inputs: the same copy plus allocating (page-faulting) the outputs,
          which our forward pays for its one output too.
Timings are the minimum over repeats (ours and memcpy in interleaved rounds), with one torch
thread by default (``--threads``) and timed as the CPU time of that thread: the machine is shared,
under oversubscription wall time mostly measures the scheduler, and multi-threaded kernels
(including torch's own copies) stall for whole scheduler slices. Ratios measured side by
side are more trustworthy than absolute times. Memory: bytes autograd keeps for backward, counted
exactly with ``torch.autograd.graph.saved_tensors_hooks`` (distinct storages), ours vs the recorded loop.

Side-by-side table (issue 10's target, every run, N = 64, batch 1, 1e2, 1e4, float64 and float32):
ours forward, ours forward+backward (all four gradients) and their ratio; the same for the pure-torch
path (``PELAGOS_TRIDIAGONAL_BACKEND=torch``) and for ``torch.compile`` of the call (``--compile``);
LAPACK/dense forward; and the floor of eager reverse mode: forward+backward of an
``autograd.Function`` that does nothing but allocate its outputs (what any Python-level autograd
node costs on this machine, against our forward). Times are CPU time of loops of calls (many calls
per timing at small batch), minimum over interleaved rounds.

Run:  python benchmarks/tridiagonal.py [--quick] [--targets-only] [--compile]
Writes benchmarks/results/tridiagonal.json (tridiagonal_quick.json with --quick) and, for the full
run, the markdown tables of docs/bench_tridiagonal.md.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # LAPACK reference: one system per call, one thread
os.environ.setdefault("OMP_NUM_THREADS", "1")
import platform
import time
from pathlib import Path

import torch

from pelagos.core import solve_tridiagonal
from pelagos.core.tridiagonal import op_registration, tridiagonal_backend

ROOT = Path(__file__).resolve().parents[1]
# With one thread, time the CPU time of this thread: on a shared, oversubscribed machine wall time
# mostly measures how often the scheduler hands the core to other jobs. With more threads: wall time.
CLOCK = time.thread_time
NS = (16, 32, 64, 128, 256)
BATCHES = (1, 100, 10_000, 100_000)


# ------------------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device: str = "cpu", budget: float = 0.2, max_rep: int = 15, min_rep: int = 3) -> float:
    """Minimum wall time of ``fn()`` over repeats until ``budget`` seconds are spent (at least
    ``min_rep`` runs, unless one run alone exceeds the budget)."""
    best, spent, rep = float("inf"), 0.0, 0
    while rep < 1 or (spent < budget and rep < max_rep) or (rep < min_rep and spent < budget):
        sync(device)
        t = CLOCK()
        fn()
        sync(device)
        dt = CLOCK() - t
        best, spent, rep = min(best, dt), spent + dt, rep + 1
    return best


def interleaved(fns: dict, device: str = "cpu", budget: float = 0.6, max_rounds: int = 15) -> dict:
    """Minimum time of each function, measured in interleaved rounds (one call of each per round), so
    that load spikes from other jobs hit all of them alike and the ratios stay meaningful."""
    best = dict.fromkeys(fns, float("inf"))
    spent, rounds = 0.0, 0
    while rounds < 2 or (spent < budget and rounds < max_rounds):
        for k, fn in fns.items():
            sync(device)
            t = CLOCK()
            fn()
            sync(device)
            dt = CLOCK() - t
            best[k], spent = min(best[k], dt), spent + dt
        rounds += 1
    return best


def systems(batch: int, n: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a, c, d = (torch.randn(batch, n, generator=g, dtype=dtype) for _ in range(3))
    b = a.abs() + c.abs() + 1.0 + torch.rand(batch, n, generator=g, dtype=dtype)
    return [t.to(device) for t in (a, b, c, d)]


def thomas_loop(a, b, c, d):
    """Reference: textbook Thomas algorithm in Python, differentiated by recording autograd."""
    n = b.shape[-1]
    cp, dp = [c[..., 0] / b[..., 0]], [d[..., 0] / b[..., 0]]
    for i in range(1, n):
        m = b[..., i] - a[..., i] * cp[-1]
        cp.append(c[..., i] / m)
        dp.append((d[..., i] - a[..., i] * dp[-1]) / m)
    xs = [dp[-1]]
    for i in range(n - 2, -1, -1):
        xs.append(dp[i] - cp[i] * xs[-1])
    return torch.stack(xs[::-1], -1)


def saved_bytes(fn, *args) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(seen.values())


# ------------------------------------------------------------------------------------------------
def bench_lapack(a, b, c, d, max_systems: int) -> tuple[float, bool]:
    import numpy as np
    from scipy.linalg import solve_banded

    batch, n = b.shape
    m = min(batch, max_systems)
    an, bn, cn, dn = (t[:m].cpu().numpy() for t in (a, b, c, d))
    ab = np.zeros((m, 3, n), dtype=bn.dtype)
    ab[:, 0, 1:] = cn[:, :-1]  # LAPACK banded storage: upper, diag, lower rows
    ab[:, 1] = bn
    ab[:, 2, :-1] = an[:, 1:]

    def run():
        for k in range(m):
            solve_banded((1, 1), ab[k], dn[k], check_finite=False)

    return timeit(run, budget=0.1, max_rep=3, min_rep=2) * batch / m, m < batch


def bench_dense(a, b, c, d, device: str, max_gb: float, max_flops: float) -> tuple[float | None, bool]:
    batch, n = b.shape
    if batch * n * n * b.element_size() > max_gb * 1e9:
        return None, False
    m = min(batch, max(1, int(max_flops / n**3)))
    A = torch.diag_embed(b[:m]) + torch.diag_embed(a[:m, 1:], -1) + torch.diag_embed(c[:m, :-1], 1)
    rhs = d[:m].unsqueeze(-1)
    t = timeit(lambda: torch.linalg.solve(A, rhs), device, budget=0.2, max_rep=3, min_rep=2)
    return t * batch / m, m < batch


def bench_case(n: int, batch: int, dtype: torch.dtype, device: str, opts) -> dict:
    a, b, c, d = systems(batch, n, dtype, device)
    g = torch.randn_like(d)
    req = [t.clone().requires_grad_() for t in (a, b, c, d)]
    rec: dict = {"device": device, "dtype": str(dtype).replace("torch.", ""), "N": n, "batch": batch}

    # bandwidth floor: copy the four inputs into preallocated buffers (no allocation, no page faults)
    dst = [t.clone() for t in (a, b, c, d)]  # allocated and touched before timing
    ours = interleaved(
        {
            "fwd_ms": lambda: solve_tridiagonal(a, b, c, d),
            "fwd_graph_ms": lambda: solve_tridiagonal(*req),
            "fwdbwd_ms": lambda: torch.autograd.grad(solve_tridiagonal(*req), req, g),
            "memcpy_ms": lambda: [o.copy_(t) for o, t in zip(dst, (a, b, c, d))],
            "clone_ms": lambda: [t.clone() for t in (a, b, c, d)],
        },
        device,
    )
    rec.update({k: 1e3 * v for k, v in ours.items()})

    if device == "cpu" and not opts.no_lapack:
        t, sub = bench_lapack(a, b, c, d, opts.lapack_systems)
        rec["lapack_ms"], rec["lapack_extrapolated"] = 1e3 * t, sub
    t, sub = bench_dense(a, b, c, d, device, opts.dense_gb, opts.dense_flops)
    rec["dense_ms"], rec["dense_extrapolated"] = (None if t is None else 1e3 * t), sub
    if batch * n <= opts.loop_max:
        rec["loop_fwdbwd_ms"] = 1e3 * timeit(
            lambda: torch.autograd.grad(thomas_loop(*req), req, g), device, budget=0.3, max_rep=3, min_rep=2
        )
        rec["saved_MB_ours"] = saved_bytes(solve_tridiagonal, *req) / 1e6
        rec["saved_MB_loop"] = saved_bytes(thomas_loop, *req) / 1e6
    if device == "cuda":
        t = bench_cusparse(a, b, c, d)
        if t is not None:
            rec["cusparse_ms"] = 1e3 * t
    # sanity: the benchmarked solve is right
    x = solve_tridiagonal(a[:4], b[:4], c[:4], d[:4])
    r = (b[:4] * x + a[:4] * torch.nn.functional.pad(x[:, :-1], (1, 0)))[:, :]
    r = r + c[:4] * torch.nn.functional.pad(x[:, 1:], (0, 1)) - d[:4]
    rec["residual_max"] = float(r.abs().max())
    return rec


def bench_cusparse(a, b, c, d) -> float | None:
    """cuSPARSE gtsv2StridedBatch via CuPy's low-level binding (CUDA only; skipped without CuPy)."""
    try:
        import cupy
        from cupy_backends.cuda.libs import cusparse
    except Exception:
        return None
    batch, n = b.shape
    pre = "d" if b.dtype == torch.float64 else "s"
    dl = torch.nn.functional.pad(a[:, 1:], (1, 0)).contiguous()  # cuSPARSE wants dl[0] = du[n-1] = 0
    du = torch.nn.functional.pad(c[:, :-1], (0, 1)).contiguous()
    dm = b.contiguous()
    x = d.clone()
    handle = cupy.cuda.device.get_cusparse_handle()
    size = getattr(cusparse, f"{pre}gtsv2StridedBatch_bufferSizeExt")(
        handle, n, dl.data_ptr(), dm.data_ptr(), du.data_ptr(), x.data_ptr(), batch, n
    )
    buf = torch.empty(max(int(size), 1), dtype=torch.uint8, device=b.device)
    fn = getattr(cusparse, f"{pre}gtsv2StridedBatch")

    def run():
        x.copy_(d)
        fn(handle, n, dl.data_ptr(), dm.data_ptr(), du.data_ptr(), x.data_ptr(), batch, n, buf.data_ptr())

    return timeit(run, "cuda")


# ------------------------------------------------------------------------------------------------
TARGET_BATCHES = (1, 100, 10_000)


class _Floor(torch.autograd.Function):
    """A do-nothing eager autograd node with the solve's signature: saves what ours saves and returns
    fresh outputs. Its forward+backward is the floor of any Python-level autograd node."""

    @staticmethod
    def forward(ctx, a, b, c, d):
        x = torch.empty_like(d)
        ctx.save_for_backward(a, b, c, x)
        return x

    @staticmethod
    def backward(ctx, gx):
        a, b, c, _x = ctx.saved_tensors
        return torch.empty_like(a), torch.empty_like(b), torch.empty_like(c), torch.empty_like(gx)


def loop_rounds(fns: dict, budget: float, target: float = 0.004, rounds_max: int = 9) -> dict:
    """Per-call minimum CPU time of each function, timing a loop of calls (as many as take about
    ``target`` seconds, from a calibration call) at once, in interleaved rounds."""
    calls = {}
    for k, fn in fns.items():
        fn()  # warm-up
        t = CLOCK()
        fn()
        calls[k] = max(1, min(5000, int(target / max(CLOCK() - t, 1e-7))))
    best = dict.fromkeys(fns, float("inf"))
    spent, rounds = 0.0, 0
    while rounds < 3 or (spent < budget and rounds < rounds_max):
        for k, fn in fns.items():
            n = calls[k]
            t = CLOCK()
            for _ in range(n):
                fn()
            dt = CLOCK() - t
            best[k], spent = min(best[k], dt / n), spent + dt
        rounds += 1
    return best


class _Env:
    """Temporarily force the pure-torch sweep (read on every call by solve_tridiagonal)."""

    def __enter__(self):
        self.old = os.environ.get("PELAGOS_TRIDIAGONAL_BACKEND")
        os.environ["PELAGOS_TRIDIAGONAL_BACKEND"] = "torch"

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("PELAGOS_TRIDIAGONAL_BACKEND", None)
        else:
            os.environ["PELAGOS_TRIDIAGONAL_BACKEND"] = self.old


def target_rows(opts, n: int = 64) -> list[dict]:
    rows = []
    for dtype in (torch.float64, torch.float32):
        for batch in TARGET_BATCHES:
            rows.append(target_case(opts, batch, n, dtype))
            print(target_line(rows[-1]), flush=True)
    return rows


def target_case(opts, batch: int, n: int, dtype: torch.dtype) -> dict:
    a, b, c, d = systems(batch, n, dtype)
    g = torch.randn_like(d)
    req = [t.clone().requires_grad_() for t in (a, b, c, d)]
    g4 = torch.randn(4, *d.shape, dtype=dtype)

    def torch_fwd():
        with _Env():
            solve_tridiagonal(a, b, c, d)

    def torch_fb():
        with _Env():
            torch.autograd.grad(solve_tridiagonal(*req), req, g)

    fns = {
        "fwd": lambda: solve_tridiagonal(a, b, c, d),
        "fb": lambda: torch.autograd.grad(solve_tridiagonal(*req), req, g),
        "torch_fwd": torch_fwd,
        "torch_fb": torch_fb,
        "floor_fb": lambda: torch.autograd.grad(_Floor.apply(*req), req, g),
        "native_floor_fb": lambda: torch.autograd.grad(torch.stack(req), req, g4),
    }
    if opts.compile:
        cf = torch.compile(lambda *t: solve_tridiagonal(*t), fullgraph=True, dynamic=False)
        cf(a, b, c, d), torch.autograd.grad(cf(*req), req, g)  # compile outside the timings
        fns["compiled_fwd"] = lambda: cf(a, b, c, d)
        fns["compiled_fb"] = lambda: torch.autograd.grad(cf(*req), req, g)
    t = loop_rounds(fns, budget=opts.target_budget)
    rec = {"dtype": str(dtype).replace("torch.", ""), "N": n, "batch": batch}
    rec.update({f"{k}_us": 1e6 * v for k, v in t.items()})
    if not opts.no_lapack:
        rec["lapack_us"] = 1e6 * bench_lapack(a, b, c, d, opts.lapack_systems)[0]
    den = bench_dense(a, b, c, d, "cpu", opts.dense_gb, opts.dense_flops)[0]
    rec["dense_us"] = None if den is None else 1e6 * den
    # check: ours and the torch sweep agree, values and gradients
    x = solve_tridiagonal(*req)
    gs = torch.autograd.grad(x, req, g)
    with _Env():
        xt = solve_tridiagonal(*req)
        gt = torch.autograd.grad(xt, req, g)
    rec["max_rel_diff_vs_torch_path"] = max(
        float((u - v).abs().max() / v.abs().max().clamp_min(1e-300))
        for u, v in zip((x.detach(), *gs), (xt.detach(), *gt))
    )
    return rec


TARGET_HEAD = (
    f"{'dtype':>7} {'batch':>6} {'fwd us':>9} {'f+b us':>9} {'f+b/fwd':>7} | {'torch fwd':>9} "
    f"{'torch f+b':>9} {'ratio':>5} | {'floor f+b':>9} {'floor/fwd':>9} {'C++ floor':>9} "
    f"{'/fwd':>5} | {'LAPACK':>9} {'dense':>9}"
)


def target_line(r: dict) -> str:
    line = (
        f"{r['dtype']:>7} {r['batch']:>6} {r['fwd_us']:>9.1f} {r['fb_us']:>9.1f} "
        f"{r['fb_us'] / r['fwd_us']:>7.2f} | {r['torch_fwd_us']:>9.1f} {r['torch_fb_us']:>9.1f} "
        f"{r['torch_fb_us'] / r['torch_fwd_us']:>5.2f} | {r['floor_fb_us']:>9.1f} "
        f"{r['floor_fb_us'] / r['fwd_us']:>9.2f} {r['native_floor_fb_us']:>9.1f} "
        f"{r['native_floor_fb_us'] / r['fwd_us']:>5.2f} | {fmt(r.get('lapack_us')):>9} "
        f"{fmt(r.get('dense_us')):>9}"
    )
    if "compiled_fb_us" in r:
        line += f" | compiled {r['compiled_fwd_us']:.1f} / {r['compiled_fb_us']:.1f}"
    return line


def target_reading(rows: list[dict]) -> list[str]:
    """A short reading of the target table, from its numbers."""
    out = ["Reading:", ""]
    for dt in ("float64", "float32"):
        sel = {r["batch"]: r for r in rows if r["dtype"] == dt}
        if not sel:
            continue
        parts = []
        for batch, r in sorted(sel.items()):
            q, nf = r["fb_us"] / r["fwd_us"], r["native_floor_fb_us"] / r["fwd_us"]
            parts.append(
                f"batch {batch:g}: {q:.2f}× ({'met' if q <= 3 else 'missed'}; `torch.autograd.grad` "
                f"through one native C++ node alone is {nf:.2f}× our forward, ours adds "
                f"{r['fb_us'] - r['native_floor_fb_us']:.0f} µs)"
            )
        out.append(f"- {dt}: " + "; ".join(parts) + ".")
    out += [
        "- A forward+backward needs at least the C++-node floor (the autograd engine and"
        " `torch.autograd.grad`'s Python wrapper, fixed costs that a native op pays too), a forward and an"
        " adjoint sweep (≈ 1.3 forward sweeps): about (floor + 2.3 × forward) / forward, i.e. "
        + ", ".join(
            f"{(r['native_floor_fb_us'] + 2.3 * r['fwd_us']) / r['fwd_us']:.1f}× at batch {r['batch']:g}"
            f" ({r['dtype']})"
            for r in rows
            if r["batch"] <= 100
        )
        + ". Where that exceeds 3×, no eager autograd node can meet the target on this machine. At large"
        " batch the C++-node floor (`torch.stack` copies the inputs) is no floor, and the ratio is bounded"
        " by memory traffic near (5 + 9)/5 = 2.8 (backward: five arrays in, four out; forward: four in,"
        " one out).",
        "- The torch-path columns show the pure-torch sweep (no compiler): ~6 small ops per level, so"
        " launch-bound at small batch.",
    ]
    return out


def target_markdown(rows: list[dict], before: list[dict] | None = None) -> list[str]:
    comp = any("compiled_fb_us" in r for r in rows)
    old = {(r["dtype"], r["batch"]): r for r in before or []}
    head = (
        "| dtype | batch | ours fwd µs | ours f+b µs | **f+b / fwd** | torch-path fwd µs | torch-path f+b µs "
        "| torch-path f+b/fwd | Python-node floor f+b µs | C++-node floor f+b µs | C++ floor / ours fwd "
        "| LAPACK loop fwd µs | dense fwd µs |"
    )
    sep = "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    if old:
        head += " Python registration: fwd µs | f+b µs | f+b / fwd |"
        sep += "---|---|---|"
    if comp:
        head += " compiled fwd µs | compiled f+b µs |"
        sep += "---|---|"
    lines = [head, sep]
    for r in rows:
        line = (
            f"| {r['dtype']} | {r['batch']:g} | {fmt(r['fwd_us'])} | {fmt(r['fb_us'])} "
            f"| **{r['fb_us'] / r['fwd_us']:.2f}** | {fmt(r['torch_fwd_us'])} | {fmt(r['torch_fb_us'])} "
            f"| {r['torch_fb_us'] / r['torch_fwd_us']:.2f} | {fmt(r['floor_fb_us'])} "
            f"| {fmt(r['native_floor_fb_us'])} | {r['native_floor_fb_us'] / r['fwd_us']:.2f} "
            f"| {fmt(r.get('lapack_us'))} | {fmt(r.get('dense_us'))} |"
        )
        if old:
            o = old.get((r["dtype"], r["batch"]))
            line += (
                f" {fmt(o['fwd_us'])} | {fmt(o['fb_us'])} | {o['fb_us'] / o['fwd_us']:.2f} |"
                if o
                else " - | - | - |"
            )
        if comp:
            line += f" {fmt(r.get('compiled_fwd_us'))} | {fmt(r.get('compiled_fb_us'))} |"
        lines.append(line)
    return lines


def _column_step(a, b, c, d):
    """A compiled step's worth of work around one solve: build the matrix, solve, use the result."""
    x = solve_tridiagonal(a, 2.0 * b, c, d + 1.0)
    return x * x + 1.0


def compiled_step(a, b, c, d) -> dict:
    """CPU time per call of ``torch.compile(_column_step)`` (Inductor, Python and C++ wrapper)."""
    import torch._inductor.config as ic

    out = {}
    for name, cpp in (("step_py_wrapper", False), ("step_cpp_wrapper", True)):
        torch._dynamo.reset()
        with ic.patch(cpp_wrapper=cpp):
            f = torch.compile(_column_step, fullgraph=True, dynamic=False)
            f(a, b, c, d)  # compile outside the timing
            out[name] = loop_rounds({name: lambda f=f: f(a, b, c, d)}, budget=1.0)[name]
    return out


def overhead(reps: int = 7, step: bool = False) -> dict:
    """Per-call CPU time of the operator and the public function at one column of 110 layers and 4
    tracers (matrix (1, 1, 110), rhs (1, 4, 110), float64, no grad), and of ``a + b`` on the same
    tensors (the cost of any small torch op called from Python)."""
    g = torch.Generator().manual_seed(0)
    a, c = (torch.randn(1, 1, 110, dtype=torch.float64, generator=g) for _ in range(2))
    b = a.abs() + c.abs() + 1.0
    d = torch.randn(1, 4, 110, dtype=torch.float64, generator=g)
    op = torch.ops.pelagos.solve_tridiagonal
    t = loop_rounds(
        {
            "op": lambda: op(a, b, c, d, True),
            "api": lambda: solve_tridiagonal(a, b, c, d),
            "add": lambda: a + b,
        },
        budget=1.0,
    )
    if step:
        t.update(compiled_step(a, b, c, d))
    return {f"{k}_us": 1e6 * v for k, v in t.items()}


def overhead_markdown(now: dict, before: dict | None) -> list[str]:
    lines = [
        "| call (one column: matrix (1, 1, 110), rhs (1, 4, 110), float64, no grad) | µs per call |"
        + (" Python registration µs |" if before else ""),
        "|---|---|" + ("---|" if before else ""),
    ]
    for k, name in (
        ("op_us", "`torch.ops.pelagos.solve_tridiagonal(..., True)`"),
        ("api_us", "`solve_tridiagonal(...)` (the public function)"),
        ("add_us", "`a + b` (any small torch op)"),
        ("step_py_wrapper_us", "compiled step (matrix scaling, solve, `x * x + 1`), Inductor"),
        ("step_cpp_wrapper_us", "the same, Inductor with `cpp_wrapper=True`"),
    ):
        if k in now:
            old = f" {fmt(before.get(k))} |" if before else ""
            lines.append(f"| {name} | {fmt(now[k])} |" + old)
    return lines


def python_registration_run(opts) -> dict | None:
    """The same target table and overhead rows in a child process with ``PELAGOS_TRIDIAGONAL_OP=python``
    (the operator registered from Python, as before the C++ operator): run just before ours."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        env = dict(os.environ, PELAGOS_TRIDIAGONAL_OP="python")
        cmd = [sys.executable, __file__, "--child-json", str(out), "--target-budget", str(opts.target_budget)]
        cmd += ["--no-lapack"] if opts.no_lapack else []
        cmd += ["--compile-step"] if opts.compile_step else []
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0 or not out.exists():
            print("python-registration run failed:", res.stderr[-2000:])
            return None
        return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------------
def fmt(v, nd=3) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}g}" if v < 1000 else f"{v:.0f}"


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "# Benchmark: `solve_tridiagonal`",
        "",
        "Generated by `python benchmarks/tridiagonal.py`"
        " (raw numbers: `benchmarks/results/tridiagonal.json`).",
        "",
        f"Machine: {meta['cpu']}, {meta['threads']} torch thread(s), timed as {meta['clock']}, "
        f"torch {meta['torch']}, kernel "
        f"`{meta['backend']}`; load average {meta['load_before']} before, {meta['load_after']} after "
        f"(shared machine: other jobs ran at the same time). {meta['date']}."
        f" Total run {meta['total_s']:.0f} s.",
        "",
        "Times in ms, minimum over repeats. Ratios > 1 mean pelagos is faster (for `fb/fwd` and `fwd/memcpy`"
        " smaller is better). `~` = timed on a subset of the batch and scaled linearly; `-` = skipped"
        " (dense: matrices would exceed the memory cap; loop: too slow/large). `fwd` has no autograd"
        " graph; `f+b` = forward with graph + backward of all four arguments (`torch.autograd.grad`).",
        "`saved MB` = bytes autograd keeps for backward (ours / recorded loop). The inputs"
        " themselves are kept by reference in both; the loop adds its per-level intermediates.",
        "",
    ]
    before = meta.get("python_registration")
    if meta.get("targets_run"):
        lines += [f"Target table and call overheads: run of {meta['targets_run']} (`--targets-only`).", ""]
    if meta.get("overhead"):
        lines += [
            "## Cost of one call",
            "",
            f"Operator registered in {meta.get('registration', 'python')}"
            + (
                "; the right column: the same calls in a child process with the operator registered from"
                " Python (`PELAGOS_TRIDIAGONAL_OP=python`, what pelagos did before the C++ operator), run"
                " just before. "
                if before
                else ". "
            )
            + "CPU time per call, one thread, minimum over rounds of call loops.",
            "",
            *overhead_markdown(meta["overhead"], before and before["overhead"]),
            "",
        ]
    if meta.get("target_rows"):
        lines += [
            "## Forward + backward against forward (issue 10: ≤ 3× at every batch), N = 64",
            "",
            "All four gradients (`torch.autograd.grad` of lower, diag, upper, rhs). `torch-path` = the"
            " pure-torch sweep (`PELAGOS_TRIDIAGONAL_BACKEND=torch`). Two floors: `Python-node` = an"
            " `autograd.Function` that does nothing but allocate its outputs (any Python-level autograd"
            " node); `C++-node` = `torch.autograd.grad` through `torch.stack` of the four inputs (one native"
            " autograd node whose backward is free: what the engine and `torch.autograd.grad` cost by"
            " themselves). CPU time per call, minimum over interleaved rounds of call loops, one thread."
            + (
                " `Python registration` columns: the child run with `PELAGOS_TRIDIAGONAL_OP=python`."
                if before
                else ""
            ),
            "",
            *target_markdown(meta["target_rows"], before and before["target_rows"]),
            "",
            *target_reading(meta["target_rows"]),
            "",
        ]
    for dev in sorted({r["device"] for r in records}):
        for dt in ("float64", "float32"):
            rows = [r for r in records if r["dtype"] == dt and r["device"] == dev]
            if not rows:
                continue
            lines += [
                f"## {dev}, {dt}",
                "",
                "| N | batch | fwd | f+b | fb/fwd | memcpy | fwd/memcpy | fwd/clone "
                "| LAPACK loop | LAPACK/fwd | dense solve | dense/fwd | autograd loop f+b | loop/ours f+b "
                "| saved MB ours / loop |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                lap = r.get("lapack_ms")
                den = r.get("dense_ms")
                lo = r.get("loop_fwdbwd_ms")
                lines.append(
                    "| {N} | {batch:g} | {fwd} | {fb} | {fbr} | {mc} | {mcr} | {clr} | {lap} | {lapr} "
                    "| {den} | {denr} | {lo} | {lor} | {sv} |".format(
                        N=r["N"],
                        batch=r["batch"],
                        fwd=fmt(r["fwd_ms"]),
                        fb=fmt(r["fwdbwd_ms"]),
                        fbr=fmt(r["fwdbwd_ms"] / r["fwd_ms"], 2),
                        mc=fmt(r["memcpy_ms"]),
                        mcr=fmt(r["fwd_ms"] / r["memcpy_ms"], 2),
                        clr=fmt(r["fwd_ms"] / r["clone_ms"], 2) if "clone_ms" in r else "-",
                        lap=("~" if r.get("lapack_extrapolated") else "") + fmt(lap),
                        lapr=fmt(lap / r["fwd_ms"] if lap else None, 3),
                        den=("~" if r.get("dense_extrapolated") and den else "") + fmt(den),
                        denr=fmt(den / r["fwd_ms"] if den else None, 3),
                        lo=fmt(lo),
                        lor=fmt(lo / r["fwdbwd_ms"] if lo else None, 3),
                        sv=(
                            f"{r['saved_MB_ours']:.3g} / {r['saved_MB_loop']:.3g}"
                            if "saved_MB_ours" in r
                            else "-"
                        ),
                    )
                )
            lines.append("")
    if not any(r["device"] == "cuda" for r in records):
        lines += [
            "No CUDA device on this machine: the GPU path (Triton kernel) and the cuSPARSE",
            "`gtsv2StridedBatch` comparison were not measured.",
            "",
        ]
    lines += ["## Targets", ""] + [f"- {t}" for t in targets(records, meta.get("target_rows"))] + [""]
    return "\n".join(lines)


def targets(records: list[dict], rows: list[dict] | None = None) -> list[str]:
    out = []
    for r in rows or []:
        q = r["fb_us"] / r["fwd_us"]
        out.append(
            f"forward+backward <= 3x forward, N=64, batch {r['batch']:g}, {r['dtype']}: {q:.2f}x -> "
            f"{'met' if q <= 3 else 'MISSED'} (torch.autograd.grad through one native node: "
            f"{r['native_floor_fb_us'] / r['fwd_us']:.2f}x, a do-nothing Python autograd node: "
            f"{r['floor_fb_us'] / r['fwd_us']:.2f}x)"
        )
    cpu = [r for r in records if r["device"] == "cpu"]
    for r in cpu:
        if r["N"] == 64 and r["batch"] == 10_000 and r.get("dense_ms"):
            q = r["dense_ms"] / r["fwd_ms"]
            out.append(
                f"forward >= 20x faster than dense torch.linalg.solve at N=64, batch 1e4 ({r['dtype']}): "
                f"{q:.0f}x -> {'met' if q >= 20 else 'MISSED'}"
            )
    lap = [r["lapack_ms"] / r["fwd_ms"] for r in cpu if r.get("lapack_ms")]
    if lap:
        worst = min(lap, key=lambda q: q)
        w = next(r for r in cpu if r.get("lapack_ms") and r["lapack_ms"] / r["fwd_ms"] == worst)
        out.append(
            f"faster than looped LAPACK everywhere: worst case {worst:.2g}x (N={w['N']}, "
            f"batch {w['batch']:g}, {w['dtype']}) -> {'met' if worst > 1 else 'MISSED'}"
        )
    fb = [(r["fwdbwd_ms"] / r["fwd_ms"], r) for r in cpu]
    big = [(q, r) for q, r in fb if r["batch"] >= 10_000]
    for name, sel in (("batch >= 1e4", big), ("all batches", fb)):
        if sel:
            worst, w = max(sel, key=lambda t: t[0])
            n_ok = sum(q <= 2.5 for q, _ in sel)
            out.append(
                f"forward+backward <= 2.5x forward ({name}): {n_ok}/{len(sel)} cases; worst {worst:.2f}x "
                f"(N={w['N']}, batch {w['batch']:g}, {w['dtype']})"
            )
    mc = [(r["fwd_ms"] / r["memcpy_ms"], r) for r in cpu if r["batch"] >= 10_000]
    if mc:
        worst, w = max(mc, key=lambda t: t[0])
        n_ok = sum(q <= 3 for q, _ in mc)
        out.append(
            f"forward within 3x of memcpy (preallocated copy_) at batch >= 1e4: {n_ok}/{len(mc)} cases; "
            f"worst {worst:.2f}x (N={w['N']}, batch {w['batch']:g}, {w['dtype']})"
        )
    cl = [(r["fwd_ms"] / r["clone_ms"], r) for r in cpu if r["batch"] >= 10_000 and "clone_ms" in r]
    if cl:
        worst, w = max(cl, key=lambda t: t[0])
        n_ok = sum(q <= 3 for q, _ in cl)
        out.append(
            f"forward within 3x of clone() of the inputs at batch >= 1e4: {n_ok}/{len(cl)} cases; "
            f"worst {worst:.2f}x (N={w['N']}, batch {w['batch']:g}, {w['dtype']})"
        )
    return out


def write_targets_page(meta: dict) -> None:
    """docs/bench_tridiagonal.md with the target table and call overheads of a ``--targets-only`` run
    (``meta``) and the other tables from the last full run (benchmarks/results/tridiagonal.json)."""
    full = ROOT / "benchmarks" / "results" / "tridiagonal.json"
    if not full.exists():
        return
    saved = json.loads(full.read_text())
    merged = dict(saved["meta"])
    for k in ("target_rows", "overhead", "python_registration", "registration"):
        merged.pop(k, None)
        if k in meta:
            merged[k] = meta[k]
    merged["targets_run"] = (
        f"{meta['date']}, load average {meta['load_before']} before, {meta['load_after']} after"
    )
    md = ROOT / "docs" / "bench_tridiagonal.md"
    md.write_text(markdown(saved["records"], merged))
    print(
        f"wrote {md.relative_to(ROOT)} (target table and overheads: --targets-only run; others: {full.name})"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small subset (N 16, 64; batch 100, 1e4)")
    p.add_argument("--device", default="cpu,cuda", help="comma list; cuda is skipped when unavailable")
    p.add_argument("--dense-gb", type=float, default=2.0, help="skip dense solves above this many GB")
    p.add_argument("--dense-flops", type=float, default=1e9, help="time dense on a subset above this")
    p.add_argument("--lapack-systems", type=int, default=1000, help="LAPACK systems timed per case")
    p.add_argument("--loop-max", type=int, default=2 * 10**6, help="largest batch*N for the autograd loop")
    p.add_argument("--no-lapack", action="store_true")
    p.add_argument("--targets-only", action="store_true", help="only the N=64 forward+backward table")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the call (slow)")
    p.add_argument("--target-budget", type=float, default=1.5, help="seconds per target-table case")
    p.add_argument("--markdown-only", action="store_true", help="rewrite the docs page from the saved JSON")
    p.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the run with the Python registration of the operator (PELAGOS_TRIDIAGONAL_OP=python)",
    )
    p.add_argument(
        "--compile-step", action="store_true", help="also time a compiled step around one solve (slow)"
    )
    p.add_argument("--child-json", help=argparse.SUPPRESS)  # internal: target rows of a child run
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared, oversubscribed machine multi-threaded copies stall)",
    )
    opts = p.parse_args(argv)
    torch.set_num_threads(opts.threads)
    global CLOCK
    CLOCK = time.thread_time if opts.threads == 1 else time.perf_counter

    if opts.markdown_only:
        targets_json = ROOT / "benchmarks" / "results" / "tridiagonal_targets.json"
        if targets_json.exists():  # the page with the last --targets-only run's tables
            write_targets_page(json.loads(targets_json.read_text())["meta"])
        else:
            saved = json.loads((ROOT / "benchmarks" / "results" / "tridiagonal.json").read_text())
            (ROOT / "docs" / "bench_tridiagonal.md").write_text(markdown(saved["records"], saved["meta"]))
        return
    if opts.child_json:
        solve_tridiagonal(*systems(2, 4, torch.float64))
        child = {"overhead": overhead(step=opts.compile_step), "target_rows": target_rows(opts)}
        child["registration"] = op_registration()
        Path(opts.child_json).write_text(json.dumps(child))
        return
    ns, batches = ((16, 64), (100, 10_000)) if opts.quick else (NS, BATCHES)
    devices = [d for d in opts.device.split(",") if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    t_start = time.time()
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    meta = {
        "clock": "thread CPU time" if CLOCK is time.thread_time else "wall time",
        "cpu": f"{cpu} ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "backend": tridiagonal_backend("cpu", torch.float64),
        "registration": op_registration(),
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    solve_tridiagonal(*systems(2, 4, torch.float64))  # compile/load the kernel outside the timings
    if not opts.no_compare and op_registration() == "c++":
        print("Python registration of the operator (PELAGOS_TRIDIAGONAL_OP=python), in a child process:")
        child = python_registration_run(opts)
        if child is not None:
            meta["python_registration"] = child
            for r in child["target_rows"]:
                print(target_line(r))
            print({k: round(v, 2) for k, v in child["overhead"].items()})
    print(f"This process: operator registered in {op_registration()}")
    meta["overhead"] = overhead(step=opts.compile_step)
    print({k: round(v, 2) for k, v in meta["overhead"].items()})
    print(TARGET_HEAD)
    meta["target_rows"] = target_rows(opts)
    records = []
    if opts.targets_only:
        devices, ns = [], ()
    head = f"{'dev':>4} {'dtype':>7} {'N':>4} {'batch':>7} {'fwd ms':>9} {'f+b ms':>9} {'fb/fwd':>6} "
    head += f"{'/memcpy':>7} {'LAPACK/':>8} {'dense/':>8} {'loop/':>7} {'saved MB ours/loop':>19}"
    print(head)
    for dev in devices:
        for dtype in (torch.float64, torch.float32):
            for n in ns:
                for batch in batches:
                    r = bench_case(n, batch, dtype, dev, opts)
                    records.append(r)
                    lap, den, lo = r.get("lapack_ms"), r.get("dense_ms"), r.get("loop_fwdbwd_ms")
                    print(
                        f"{dev:>4} {r['dtype']:>7} {n:>4} {batch:>7} "
                        f"{r['fwd_ms']:>9.4f} {r['fwdbwd_ms']:>9.4f} "
                        f"{r['fwdbwd_ms'] / r['fwd_ms']:>6.2f} {r['fwd_ms'] / r['memcpy_ms']:>7.2f} "
                        f"{(lap / r['fwd_ms'] if lap else float('nan')):>8.1f} "
                        f"{(den / r['fwd_ms'] if den else float('nan')):>8.1f} "
                        f"{(lo / r['fwdbwd_ms'] if lo else float('nan')):>7.1f} "
                        + (
                            f"{r['saved_MB_ours']:>9.3g}/{r['saved_MB_loop']:<9.3g}"
                            if "saved_MB_ours" in r
                            else ""
                        ),
                        flush=True,
                    )
    meta["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    meta["total_s"] = time.time() - t_start
    name = (
        "tridiagonal_targets" if opts.targets_only else "tridiagonal_quick" if opts.quick else "tridiagonal"
    )
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    print(f"\nwrote {out.relative_to(ROOT)}")
    for t in targets(records, meta["target_rows"]):
        print(" -", t)
    md = ROOT / "docs" / "bench_tridiagonal.md"
    if not opts.quick and not opts.targets_only:
        md.write_text(markdown(records, meta))
        print(f"wrote {md.relative_to(ROOT)}")
    elif opts.targets_only:
        write_targets_page(meta)


if __name__ == "__main__":
    main()
