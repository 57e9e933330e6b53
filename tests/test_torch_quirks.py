"""torch's forward-AD decompositions warn about torch.jit.script on first use (torch's code, not pelagos's);
pelagos loads them quietly before its own forward-mode derivatives.

Each case runs in a fresh interpreter (the module is imported once per process) and counts the warnings.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_SCRIPT = """
import warnings, torch
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
{body}
print(sum("torch.jit.script" in str(x.message) for x in w))
"""

RAW_MAKE_DUAL = """
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        fwAD.make_dual(torch.zeros(2), torch.ones(2))
"""


def _count(body: str) -> int:
    env = dict(os.environ)
    env.pop("PYTORCH_JIT", None)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(body=body)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def torch_warns():
    if _count(RAW_MAKE_DUAL) == 0:
        pytest.skip("this torch does not warn on its forward-AD decompositions: nothing to silence")


CASES = {
    "load_jvp_decompositions then make_dual": """
    from pelagos.core._torch_quirks import load_jvp_decompositions
    load_jvp_decompositions()
"""
    + RAW_MAKE_DUAL,
    "check_jvp_vjp": """
    from pelagos.core.gradcheck import check_jvp_vjp
    check_jvp_vjp(torch.sin, torch.zeros(3, dtype=torch.float64))
""",
    "gauss-newton calibration": """
    from pelagos.core import Model
    from pelagos.core.observations import ObservationSet
    from pelagos.inverse.calibrate import calibrate

    class Decay(Model):
        def __init__(self):
            super().__init__()
            self.dt = 1.0
            self.declare_parameter("k", 0.5, bounds=(0.0, None), dtype=torch.float64)

        def step(self, x, t):
            return x * torch.exp(-self.param_b("k", x.ndim) * self.dt)

    m = Decay()
    m.select_free(["k"])
    obs = ObservationSet(torch.tensor([1.0, 2.0], dtype=torch.float64),
                         torch.tensor([[0.74], [0.55]], dtype=torch.float64),
                         torch.full((2, 1), 0.01, dtype=torch.float64))
    calibrate(m, obs, torch.ones(1, dtype=torch.float64), optimizer="gauss-newton", max_iter=5,
              uncertainty="gauss-newton", write_back=False)
""",
}


@pytest.mark.parametrize("case", list(CASES))
def test_pelagos_forward_mode_is_free_of_torch_jit_warnings(torch_warns, case):
    assert _count(CASES[case]) == 0
