"""Registry entry of the primitive-equation ocean: kind ``acc`` (Veros's acc_basic channel + basin).

``model:`` options are the grid resolution and the :class:`~pelagos.ocean.model.OceanModel` parameters with
Veros's names and units; ``time: {dt: …}`` sets the tracer step. ``initial:`` holds the keywords of
:meth:`OceanModel.initial_state` (``t_surface``, ``salt``, ``u``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.registry import BuildContext, ModelKind
from .setups import acc_model


@dataclass
class ACCOptions:
    """``model:`` options of kind ``acc``: ``resolution`` (degrees; 2 = Veros's 30 × 42 × 15), ``nz``,
    ``dt_mom``/``dt_tracer`` (s; default Veros's 4800/43 200 scaled with the resolution), ``advection``
    (centered | superbee | superbee_smooth), ``cos_power``, and the parameters ``A_h`` (m2 s-1; default
    Veros's 2e-11 (Δ·degtom)³),
    ``r_bot`` (s-1), ``kappaM_0``, ``kappaH_0``, ``kappa_conv``, ``K_h``, ``K_gm_0`` (m2 s-1), ``taux_0``
    (N m-2), ``t_rest`` (s); ``mixing`` (tke | constant: Veros's TKE closure, with ``c_k``, ``c_eps``,
    ``alpha_tke``, ``kappaM_min``, ``kappaH_min``, or the constant ``kappaM_0``/``kappaH_0`` + convective
    switch)."""

    resolution: float = 2.0
    nz: int = 15
    dt_mom: float | None = None
    dt_tracer: float | None = None
    advection: str = "centered"
    cos_power: float = 1.0
    A_h: float | None = None
    r_bot: float = 1e-5
    kappaM_0: float = 1e-3  # noqa: N815 (Veros's name)
    kappaH_0: float = 1e-4  # noqa: N815 (Veros's name)
    kappa_conv: float = 1.0
    K_h: float = 1000.0
    K_gm_0: float = 1000.0
    taux_0: float = 0.1
    t_rest: float = 2592000.0
    solver_rtol: float | None = None
    solver: str = "auto"
    isoneutral: bool = True
    K_iso_0: float = 1000.0
    K_iso_steep: float = 500.0
    mixing: str = "tke"
    c_k: float = 0.1
    c_eps: float = 0.7
    alpha_tke: float = 30.0
    kappaM_min: float = 2e-4  # noqa: N815 (Veros's name)
    kappaH_min: float = 2e-5  # noqa: N815 (Veros's name)


@dataclass
class ACCInitial:
    """``initial:`` section of kind ``acc``: surface temperature (°C; linear in depth as Veros's acc_basic),
    salinity (g kg-1), uniform zonal velocity (m s-1), uniform TKE (m2 s-2; with ``mixing: tke``)."""

    t_surface: float = 15.0
    salt: float = 35.0
    u: float = 0.0
    tke: float = 0.0


def _build(o: ACCOptions, ctx: BuildContext):
    kw = {k: getattr(o, k) for k in ("advection", "cos_power", "r_bot", "kappaM_0", "kappaH_0", "kappa_conv",
                                     "K_h", "K_gm_0", "taux_0", "t_rest", "solver_rtol", "solver",
                                     "isoneutral", "K_iso_0", "K_iso_steep", "mixing", "c_k", "c_eps",
                                     "alpha_tke", "kappaM_min", "kappaH_min")}  # fmt: skip
    for k in ("A_h", "dt_mom", "dt_tracer"):
        if getattr(o, k) is not None:
            kw[k] = getattr(o, k)
    if ctx.dt is not None:
        kw["dt_tracer"] = float(ctx.dt)
    return acc_model(o.resolution, nz=o.nz, dtype=getattr(torch, ctx.dtype), **kw)


def _example():
    """A 10° × 10° version with 4 levels (6 × 8 × 4), hours-long steps: fast enough for the conformance test.

    TKE mixing as the ``acc`` kind runs it; isoneutral mixing off (Veros's scheme keeps its kinks |s|, min,
    max; covered at its own tolerance in tests/test_ocean.py). The conformance settings below start the TKE
    at 1e-4 m² s⁻² (at 0 every W point sits on the kink of √e), use the FD step h = 1e-6 (at 1e-5 central
    differences straddle the min/max kinks of the TKE mixing-length limiter; the adjoint is right: it agrees
    with FD as h shrinks) and leave the floors ``kappaM_min``/``kappaH_min`` fixed (piecewise: derivative 0
    or 1)."""
    return acc_model(10.0, nz=4, dt_mom=3600.0, dt_tracer=7200.0, A_h=1e5, kappa_conv=1e-4, isoneutral=False)


def gradcheck_case():
    """``pelagos gradcheck --model acc``: the 6° ACC (10 × 14 × 15) after a 20-step spin-up, Veros EOS,
    isoneutral mixing off (its kinks are checked separately); free: A_h, r_bot; loss: mean squared
    velocity."""
    model = acc_model(6.0, dt_mom=3600.0, dt_tracer=7200.0, A_h=2e5, isoneutral=False)
    state = model.initial_state(1)
    with torch.no_grad():
        for i in range(20):
            state = model.step(state, i * model.dt)
    model.select_free(["A_h", "r_bot"])

    def loss(traj):
        s = traj.final
        return (s["u"] ** 2).mean() + (s["v"] ** 2).mean()

    return model, state, {"wrt": "params", "loss": loss}


KIND = ModelKind(
    "acc",
    _build,
    options=ACCOptions,
    initial=ACCInitial,
    example=_example,
    description="primitive-equation ocean: Veros acc_basic channel + basin (z-level C-grid, rigid lid)",
    # TKE away from 0, where √e (safe_sqrt) has its kink and every W point would sit on it
    conformance={
        "steps": 3,
        "initial": {"u": 0.05, "tke": 1e-4},
        "h": 1e-6,
        "free": ["A_h", "r_bot", "taux_0", "t_rest", "c_k", "c_eps", "alpha_tke"],
    },
)
