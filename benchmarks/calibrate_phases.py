"""`pelagos calibrate CONFIG` with CPU and wall time per phase (how docs/column_inverse.md was timed).

Wraps the phases of :func:`pelagos.io.inverse_run.run_inverse` (setup, optimisation, Laplace step and its
Jacobian, the Jacobian's check, analysed run, plots) and dynamo's frame compilations with timers, runs the
command line with one thread and prints a table. Run it under ``/usr/bin/time`` for the CPU of the compiler
subprocesses too:

    /usr/bin/time -f "%U user %S sys %e wall" python benchmarks/calibrate_phases.py \\
        examples/npzd_calibration_year.yaml
"""

from __future__ import annotations

import functools
import sys
import time

import torch

TIMES: dict[str, list] = {}


def timed(obj: object, name: str, label: str) -> None:
    f = getattr(obj, name)

    @functools.wraps(f)
    def wrapper(*a, **k):
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            e = TIMES.setdefault(label, [0, 0.0, 0.0])
            e[0] += 1
            e[1] += time.process_time() - c0
            e[2] += time.perf_counter() - w0

    setattr(obj, name, wrapper)


def main() -> int:
    torch.set_num_threads(1)
    c00, w00 = time.process_time(), time.perf_counter()
    import torch._dynamo.convert_frame as cf

    import pelagos.inverse.calibrate
    import pelagos.inverse.problem
    import pelagos.io.inverse_run  # noqa: F401
    from pelagos.cli import main as cli

    ir, pr = sys.modules["pelagos.io.inverse_run"], sys.modules["pelagos.inverse.problem"]
    ca = sys.modules["pelagos.inverse.calibrate"]
    timed(ir, "setup", "setup")
    timed(ca, "minimize", "optimisation (minimize)")
    timed(ca, "summarize", "summarize (Laplace)")
    timed(pr.VariationalProblem, "jacobian", "  jacobian (incl. check)")
    timed(pr.VariationalProblem, "_check_jacobian", "    jacobian check (FD)")
    timed(ir, "_analysed_run", "analysed run (NetCDF)")
    timed(ir, "_plots", "plots")
    timed(cf, "_compile", "dynamo compilations (frames)")
    rc = cli(["calibrate", *sys.argv[1:]])
    for k, (n, c, w) in TIMES.items():
        print(f"{k:32s} n={n:3d} cpu={c:8.2f} s wall={w:8.2f} s")
    print(f"{'total (after importing torch)':32s}       cpu={time.process_time() - c00:8.2f} s "
          f"wall={time.perf_counter() - w00:8.2f} s")  # fmt: skip
    return rc


if __name__ == "__main__":
    sys.exit(main())
