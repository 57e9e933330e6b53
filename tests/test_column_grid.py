"""Tests of pelagos.column.grid: GOTM grid construction, centre depths, interfaces, integrals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pelagos.column import ColumnGrid, gotm_sigma_fractions
from pelagos.core.errors import ConfigError, ShapeError

DT = torch.float64


def test_uniform_grid():
    g = ColumnGrid.uniform(110.0, 110)
    assert g.nz == 110
    torch.testing.assert_close(g.h, torch.full((110,), 1.0, dtype=DT), rtol=1e-13, atol=0)
    torch.testing.assert_close(g.depth, torch.tensor(110.0, dtype=DT))
    torch.testing.assert_close(g.z, torch.arange(109.5, 0, -1.0, dtype=DT), rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(g.zi[0], torch.tensor(-110.0, dtype=DT))
    assert abs(float(g.zi[-1])) < 1e-12
    torch.testing.assert_close(g.zc, -g.z, rtol=1e-12, atol=1e-12)


def test_zoomed_grid_matches_formula_and_refines_surface():
    depth, nz, ddu, ddl = 50.0, 20, 2.0, 1.0
    g = ColumnGrid.zoomed(depth, nz, ddu=ddu, ddl=ddl)
    den = math.tanh(ddl) + math.tanh(ddu)
    ga = [(math.tanh((ddl + ddu) * i / nz - ddl) + math.tanh(ddl)) / den for i in range(nz + 1)]
    np.testing.assert_allclose(g.h.numpy(), np.diff(ga) * depth, rtol=1e-14)
    assert abs(ga[0]) < 1e-15 and abs(ga[-1] - 1) < 1e-15
    assert float(g.h[-1]) < float(g.h[0]) < float(g.h[nz // 2])  # finer at the surface, then bottom
    torch.testing.assert_close(g.depth, torch.tensor(depth, dtype=DT))
    assert gotm_sigma_fractions(4) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_batched_depths_and_variable_h():
    g = ColumnGrid.uniform(torch.tensor([10.0, 20.0, 40.0], dtype=DT), 8)
    assert g.h.shape == (3, 8)
    torch.testing.assert_close(g.depth, torch.tensor([10.0, 20.0, 40.0], dtype=DT))
    h = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 0.5]], dtype=DT)
    g = ColumnGrid(h)
    # z_N = h_N/2, z_i = z_{i+1} + (h_i + h_{i+1})/2  (bottom first)
    torch.testing.assert_close(g.z, torch.tensor([[4.5, 2.0, 0.5], [2.0, 1.0, 0.25]], dtype=DT))
    torch.testing.assert_close(
        g.zi, torch.tensor([[-6.0, -3.0, -1.0, 0.0], [-2.5, -1.5, -0.5, 0.0]], dtype=DT)
    )
    torch.testing.assert_close(g.face_distance, torch.tensor([[2.5, 1.5], [1.0, 0.75]], dtype=DT))
    c = torch.tensor([1.0, 2.0, 4.0], dtype=DT)
    torch.testing.assert_close(g.depth_integral(c), torch.tensor([11.0, 5.0], dtype=DT))


def test_grid_errors():
    with pytest.raises(ConfigError, match="h"):
        ColumnGrid(torch.tensor([1.0, 0.0]))
    with pytest.raises(ShapeError):
        ColumnGrid(torch.tensor(1.0))
    with pytest.raises(ConfigError, match="depth"):
        ColumnGrid.uniform(-5.0, 3)
    with pytest.raises(ConfigError, match="nz"):
        ColumnGrid.uniform(5.0, 0)
