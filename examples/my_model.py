"""A new pelagos model end to end, in one file: define, register, run, gradcheck, calibrate, assimilate.

The model is a nutrient–phytoplankton (NP) box, the smallest biogeochemical model worth the name:

    dN/dt = −μ N/(N + k) P + m P,      dP/dt = μ N/(N + k) P − m P        (time in days, mmol N m⁻³)

with growth rate μ [d⁻¹], half-saturation k [mmol N m⁻³] and mortality m [d⁻¹]; N + P is conserved. It is
walked through in docs/adding_a_model.md; tests/test_adding_a_model.py runs this file, and the model's kind
passes the same conformance test as every built-in model, so neither can rot.

    python examples/my_model.py
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pelagos.core import Model, rollout, rollout_gradient_report
from pelagos.core.model import Variable
from pelagos.core.observations import ObservationSet
from pelagos.core.registry import BuildContext, ModelKind, build_model, register_model
from pelagos.inverse import calibrate, ensemble_filter

F64 = torch.float64


# -- 1. the model: parameters, initial_state, a pure step, its variables ----------------------------------
class NPBox(Model):
    """Nutrient–phytoplankton box, RK4 steps of ``dt`` days. State: tensor ``(..., 2)`` = (N, P)."""

    def __init__(self, mu: float = 1.0, k: float = 0.5, m: float = 0.1, dt: float = 0.25) -> None:
        super().__init__()
        self.dt = dt  # days: this model's time unit
        self.declare_parameter("mu", mu, units="d-1", bounds=(0.0, None), description="maximum growth rate",
                               dtype=F64)  # fmt: skip
        self.declare_parameter("k", k, units="mmol N m-3", bounds=(0.0, None), description="half-saturation",
                               dtype=F64)  # fmt: skip
        self.declare_parameter("m", m, units="d-1", bounds=(0.0, None), description="mortality", dtype=F64)

    def initial_state(self, batch: int | None = None, *, N: float = 4.0, P: float = 0.1) -> torch.Tensor:
        x = torch.tensor([N, P], dtype=F64)
        return x if batch is None else x.expand(batch, 2).clone()

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        mu, k, m = (self.param_b(n, x.ndim - 1) for n in ("mu", "k", "m"))  # () or (B,) parameter values
        N, P = x[..., 0], x[..., 1]
        growth = mu * N / (N + k) * P - m * P
        return torch.stack([-growth, growth], dim=-1)

    def step(self, x: torch.Tensor, t: float) -> torch.Tensor:  # pure: returns a new tensor
        f, dt = self.tendency, self.dt
        k1 = f(x)
        k2 = f(x + 0.5 * dt * k1)
        k3 = f(x + 0.5 * dt * k2)
        k4 = f(x + dt * k3)
        return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    def output_variables(self) -> list[Variable]:
        return [Variable("N", "mmol N m-3", "nutrient"), Variable("P", "mmol N m-3", "phytoplankton")]

    def output(self, x: torch.Tensor, t: float = 0.0) -> dict[str, torch.Tensor]:
        return {"N": x[..., 0], "P": x[..., 1]}


# -- 2. the registration: options, build, a small example -------------------------------------------------
@dataclass
class NPBoxOptions:
    """``model:`` options of kind ``np_box``."""

    mu: float = 1.0
    k: float = 0.5
    m: float = 0.1
    dt: float = 0.25


KIND = ModelKind(
    "np_box",
    build=lambda o, ctx: NPBox(o.mu, o.k, o.m, ctx.dt if ctx.dt is not None else o.dt),
    options=NPBoxOptions,
    example=lambda: NPBox(),
    description="nutrient-phytoplankton box (the docs/adding_a_model.md example)",
    conformance={"steps": 4},
)


def main(verbose: bool = True) -> dict:
    say = print if verbose else (lambda *a, **k: None)
    register_model(KIND, replace=True)  # a package would use an entry point instead (see the docs)

    # -- 3. run -------------------------------------------------------------------------------------------
    truth = build_model("np_box", NPBoxOptions(mu=1.2, m=0.15), BuildContext())
    x0 = truth.initial_state()
    n_steps = 120  # 30 days
    traj = rollout(truth, x0, n_steps)
    say(f"run: P(0) = {float(x0[1]):.3f}, P(30 d) = {float(traj.final[1]):.3f} mmol N m-3; "
        f"N + P drifts by {float(traj.states.sum(-1).max() - traj.states.sum(-1).min()):.1e}")  # fmt: skip

    # -- 4. gradcheck: reverse mode against central finite differences, float64 -----------------------------
    model = build_model("np_box")
    model.select_free(["mu", "k", "m"])
    rep = rollout_gradient_report(model, x0, steps=(1, 8, 32), wrt="both")
    say(rep)

    # -- 5. calibrate: μ and m from noisy P every 2 days (a twin experiment) ------------------------------
    gen = torch.Generator().manual_seed(0)
    H = truth.observation_operator("P")  # P as a (1,)-vector per state
    every = 8  # steps
    times = torch.arange(every, n_steps + 1, every, dtype=F64) * truth.dt
    P_true = torch.stack([H(traj.states[i]) for i in range(every, n_steps + 1, every)])  # (n_t, 1)
    sigma = 0.02
    obs = ObservationSet(times, P_true + sigma * torch.randn(P_true.shape, generator=gen, dtype=F64), sigma,
                         operator=H)  # fmt: skip
    cal = calibrate(model, obs, x0, free=["mu", "m"], uncertainty="hessian")
    say(f"calibrate: mu = {cal.estimates['mu']:.3f} ± {cal.std['mu']:.3f} (true 1.2), "
        f"m = {cal.estimates['m']:.3f} ± {cal.std['m']:.3f} (true 0.15)")  # fmt: skip

    # -- 6. assimilate: an ensemble Kalman filter corrects a wrong initial state --------------------------
    Ne = 32
    E0 = truth.initial_state(Ne, P=0.3) * (1 + 0.3 * torch.randn(Ne, 2, generator=gen, dtype=F64))
    enkf = ensemble_filter(truth, obs, E0, method="sqrt", generator=gen)
    at_obs = traj.states[every::every]  # the truth at the observation times (n_t, 2)
    free_run = rollout(truth, E0.mean(0), n_steps).states[every::every]
    err_free = float((free_run - at_obs).pow(2).mean().sqrt())
    err_enkf = float((enkf.mean - at_obs).pow(2).mean().sqrt())
    say(f"assimilate: RMS error at the observation times: free run {err_free:.3f}, EnKF {err_enkf:.3f}")
    return {"gradcheck": rep, "calibration": cal, "err_free": err_free, "err_enkf": err_enkf}


if __name__ == "__main__":
    main()
