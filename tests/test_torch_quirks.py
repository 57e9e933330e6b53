"""torch's forward-AD decompositions warn about torch.jit.script on first use; pelagos loads them quietly.

Run in fresh interpreters (the module is imported once per process), counting the warnings of a make_dual.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_SCRIPT = """
import warnings, torch
import torch.autograd.forward_ad as fwAD
{prelude}
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    with fwAD.dual_level():
        fwAD.make_dual(torch.zeros(2), torch.ones(2))
print(sum("torch.jit.script" in str(x.message) for x in w))
"""


def _count(prelude: str) -> int:
    env = dict(os.environ)
    env.pop("PYTORCH_JIT", None)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(prelude=prelude)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_first_make_dual_is_quiet_after_load_jvp_decompositions():
    if _count("") == 0:
        pytest.skip("this torch does not warn on its forward-AD decompositions: nothing to silence")
    assert (
        _count("from pelagos.core._torch_quirks import load_jvp_decompositions; load_jvp_decompositions()")
        == 0
    )
