"""Distributed calibration (torchrun, 2 gloo processes) equals the single-process calibration."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from _dist_calibrate_worker import fresh_model, stations
from pelagos.inverse.calibrate import calibrate
from pelagos.inverse.distributed import distributed_calibrate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.usefixtures("float64_default")


def test_single_rank_group_equals_calibrate(tmp_path):
    # A real gloo process group of size 1 (all-reduce code path) gives the plain calibration.
    import torch.distributed as dist

    x0, obs = stations()
    single = calibrate(fresh_model(), obs, x0, uncertainty="hessian")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        local = distributed_calibrate(fresh_model(), obs, x0)
    finally:
        dist.destroy_process_group()
    for n in ["k", "s"]:
        assert abs(local.estimates[n] - single.estimates[n]) < 1e-8
        assert abs(local.std[n] - single.std[n]) < 1e-8 * single.std[n] + 1e-12


@pytest.mark.slow  # starts 3 Python processes (torchrun + 2 workers): ~10 s CPU
def test_two_processes_equal_single_process(tmp_path):
    x0, obs = stations()
    single = calibrate(fresh_model(), obs, x0, uncertainty="hessian")
    out = tmp_path / "dist.json"
    worker = Path(__file__).parent / "_dist_calibrate_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(worker),
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(out.read_text())
    for n in ["k", "s"]:
        # same data split over 2 ranks: same optimum and Laplace std (up to summation order)
        assert abs(d["estimates"][n] - single.estimates[n]) < 1e-7 * abs(single.estimates[n])
        assert abs(d["std"][n] - single.std[n]) < 1e-6 * single.std[n]
    assert abs(d["cost"] - single.cost) < 1e-8 * single.cost
