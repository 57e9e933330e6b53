"""Small float64 cases for ``pelagos gradcheck``: each returns ``(model, initial_state[, options])``.

Kept small so a check over 1…32 steps runs in seconds; they exercise the real models (water column with NPZD,
Lorenz-96, two-layer QG), not toys.
"""

from __future__ import annotations

import torch


def npzd_column_case():
    """The NNS water column (compact forcing, 22 × 5 m, hourly) with gotm/npzd from 1 April 1998.

    Free: npzd.rmax, npzd.gmax, npzd.alpha, nuh_scale. State: the dict of the four tracers.
    """
    from ..bgc.fabm_yaml import load_system
    from ..column import ColumnForcing, ColumnModel, compact_forcing_path
    from ..io.config import resolve_path

    forcing = ColumnForcing.from_gotm(compact_forcing_path(), dtype=torch.float64)
    system = load_system(resolve_path("builtin:fabm/fabm-gotm-npzd.yaml", None), dtype=torch.float64)
    t0 = forcing.seconds("1998-04-01 00:00:00")

    class _Shifted(ColumnModel):  # start the clock on 1 April so that steps see spring light
        def step(self, state, t):
            return super().step(state, float(t) + t0)

    model = _Shifted(system, forcing, dt=3600.0)
    model.to(torch.float64)
    model.select_free(["npzd.rmax", "npzd.gmax", "npzd.alpha", "nuh_scale"])
    state = model.initial_state(1, t0=t0)
    # A bloom in progress, with smooth vertical structure: the yaml's uniform profiles sit exactly on the
    # kinks of the TVD limiter (every Δc = 0), where finite differences and the chosen subgradient disagree.
    shape = torch.linspace(0.0, 1.0, model.nz, dtype=torch.float64)
    state["npzd_phy"] = state["npzd_phy"] + 0.2 + 0.6 * shape**2
    state["npzd_zoo"] = state["npzd_zoo"] + 0.05 + 0.1 * shape
    state["npzd_nut"] = state["npzd_nut"] * (1.2 - 0.4 * shape)
    state["npzd_det"] = state["npzd_det"] * (1.5 - shape)
    # h = 1e-4: with the default loss ½Σx² ≈ 1e3, a smaller step loses digits to round-off at T = 1
    return model, state, {"h": 1e-4}


def lorenz96_case():
    """Lorenz-96 (40 variables, F = 8, RK4, dt = 0.05) on the attractor; free: F."""
    from ..models.lorenz import Lorenz96

    model = Lorenz96(nx=40, F=8.0, dt=0.05).to(torch.float64)
    x = model.initial_state(dtype=torch.float64) + 0.01 * torch.randn(
        40, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        for _ in range(200):
            x = model.step(x, 0.0)
    model.select_free(["F"])
    return model, x


def qg_case():
    """Two-layer QG (pyqg defaults, nx = 16, dt = 6 h) from seeded noise; free: rek, rd (log-transformed)."""
    from ..qg import QGModel

    model = QGModel(nx=16, dt=6 * 3600.0).to(torch.float64)
    q0 = 1e-5 * torch.randn(1, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model.select_free(["rek", "rd"])

    # The state carries spectral (complex) fields and a step counter: check the parameters only, with a loss
    # on the final potential vorticity (the default ½Σ over every saved leaf barely depends on rek, rd over a
    # few steps, and central differences then keep only a few digits).
    def loss(traj):
        return 1e10 * (traj.final["q"] ** 2).mean()

    return model, model.state_from_q(q0), {"wrt": "params", "loss": loss}
