"""Configurations shared by the command-line tests of `pelagos calibrate` (written to a temporary folder)."""

from __future__ import annotations

from pathlib import Path

# the Lorenz-63 twin: rho 25 -> 28 from x, y, z every 0.05 time units; %s = more method keys (", stages: ...")
L63_TEMPLATE = """
model: {kind: lorenz63, dtype: float64}
time: {start: 0, duration: 2.0, dt: 0.01}
parameters: {rho: 25.0}
observations:
  synthetic:
    truth: {rho: 28.0}
    patterns: [{variable: x, every: 0.05}, {variable: y, every: 0.05}, {variable: z, every: 0.05}]
    sigma: 0.5
    seed: 1
method: {kind: calibrate, free: [rho], priors: {rho: {std: 0.5}}, max_iter: 50, uncertainty: hessian%s}
"""
L63 = L63_TEMPLATE % ""

# a 10-day water column (NPZD on the shipped 22 × 5 m physics, coarsened to 11 layers, 12-hourly steps);
# the tests add initial profiles, observations and a method
COLUMN = """
model: {kind: column, fabm_yaml: builtin:fabm/fabm-gotm-npzd.yaml, dtype: float64}
forcing: {file: builtin:nns_annual_22x5m.nc}
time: {start: "1998-04-01 00:00:00", stop: "1998-04-11 00:00:00", dt: 43200}
numerics: {coarsen_layers: 11}
parameters: {npzd.rmax: 0.7}
"""


def write_config(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    """``text`` written to ``tmp_path / name``; the path."""
    p = tmp_path / name
    p.write_text(text)
    return p
