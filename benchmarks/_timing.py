"""Wall-clock timing shared by the benchmark scripts (``from _timing import best``: the scripts run with
benchmarks/ on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best(fn: Callable[[], object], repeat: int = 5, *, warmup: bool = False) -> float:
    """Minimum wall time of ``fn()`` over ``repeat`` calls, in seconds; ``warmup`` calls it once untimed first
    (first-use compilation, allocator)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
