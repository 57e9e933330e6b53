"""`make bench`: run every benchmark script in turn.

Each script writes JSON under benchmarks/results/ and its own markdown table under docs/. Extra arguments
(e.g. ``--quick``) are passed to every script. Run one script directly for one benchmark:
``python benchmarks/tridiagonal.py``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "tridiagonal.py",
    "core_cg_rollout.py",
    "column_numerics.py",
    "column.py",
    "qg.py",
    "dapper_l96.py",
    "inverse.py",
    "run_loop.py",
    "hydro.py",
    "hydro_dpl.py",
    "sda_checkpointing.py",
]


def main(argv: list[str]) -> int:
    failed = []
    for name in SCRIPTS:
        path = HERE / name
        if not path.exists():
            print(f"[bench] {name}: not present, skipped")
            continue
        t = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        rc = subprocess.call([sys.executable, str(path), *argv], cwd=HERE.parent)
        print(f"[bench] {name}: exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
        if rc:
            failed.append(name)
    print("[bench] results: benchmarks/results/*.json; tables: docs/benchmarks.md and docs/bench_*.md")
    if failed:
        print(f"[bench] failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
