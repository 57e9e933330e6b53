"""The 20-parameter ECOSMO study's batched tools (examples/ecosmo_identifiability.py), on a short window.

The central-difference Jacobian of all 20 parameters comes from ONE batched run of 41 columns; its product
with the residuals must be the adjoint gradient of the same cost (float64), and a batch of controls must give
each column's own residuals.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "gotm" / "nns_annual_first49h.nc"
SHORT = [
    f"forcing.file={FIXTURE}",
    "time.stop=1998-01-01 10:00:00",
    "numerics.coarsen_layers=22",  # 110 x 1 m -> 5 x 22 m
    "observations.synthetic.patterns=[{variable: ECO_no3, depths: [surface, 60], every: 7200}, "
    "{variable: ECO_diachl, depths: [surface], every: 3600}, "
    "{variable: ECO_oxy, depths: [80], every: 10800}]",
]


def _study():
    spec = importlib.util.spec_from_file_location(
        "ecosmo_identifiability", ROOT / "examples" / "ecosmo_identifiability.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_batched_fd_jacobian_equals_adjoint_gradient() -> None:
    torch.set_default_dtype(torch.float64)
    try:
        mod = _study()
        tw = mod.Twin(mod.CONFIG, SHORT)
        assert tw.p == 20 and tw.model.nz == 5
        z = tw.z0  # the first guess: 20 % off the truth, a non-zero misfit
        Jm, r = mod.batched_jacobian(tw.residuals, z, rel_step=1e-4)
        assert Jm.shape == (r.numel(), 20)
        zz = z.clone().requires_grad_(True)
        J = 0.5 * tw.residuals(zz[None]).pow(2).sum()
        (g,) = torch.autograd.grad(J, zz)
        assert float(g.abs().max()) > 0
        torch.testing.assert_close(Jm.T @ r, g, rtol=1e-4, atol=1e-6 * float(g.abs().max()))
        # a batch of controls: each column runs with its own parameters
        Z = torch.stack([z, tw.truth])
        with torch.no_grad():
            R = tw.residuals(Z)
            torch.testing.assert_close(R[1], tw.residuals(tw.truth[None])[0])
            torch.testing.assert_close(R[0], r)
    finally:
        torch.set_default_dtype(torch.float32)
