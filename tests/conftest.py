"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch

from pelagos.core._torch_quirks import load_jvp_decompositions

# torch's own forward-AD decompositions use torch.jit.script and warn on their first use (not pelagos code);
# load them once, quietly, so the test log shows only warnings that are ours.
load_jvp_decompositions()


@pytest.fixture
def float64_default():
    """Make float64 torch's default dtype for one test (restored afterwards).

    Parameters are stored in the default dtype at construction, so models must be *built* in float64 for
    comparisons at float64 round-off (``.double()`` afterwards keeps float32-rounded values). A module opts in
    with ``pytestmark = pytest.mark.usefixtures("float64_default")``.
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
