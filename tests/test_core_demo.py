"""The core demo recovers the diffusivity profile (slow: runs the whole example)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


@pytest.mark.slow
def test_core_demo_recovers_nu(tmp_path, capsys):
    from core_diffusivity_demo import main

    res = main(tmp_path / "demo.png")
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert res["loss1"] < 0.01 * res["loss0"]
    err = (res["u_est"] - res["u_true"]).abs() / res["std"]
    assert bool((err < 3).all()), err  # every node within 3 posterior σ of the truth
    assert bool((res["std"][1:] < 0.2).all())  # below the mixed layer: log ν to better than 20 %
    assert "estimate" in capsys.readouterr().out
    assert torch.isfinite(res["u_est"]).all()
