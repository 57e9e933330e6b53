"""Learning model error from 4D-Var analysis increments (small demonstration).

    .venv/bin/python examples/qg_increments.py    # a few minutes on 2 CPU cores

Truth: two-layer QG (32², 500 km, β = 1.5e-11). Biased model: the same with β = 0. Cycled strong-
constraint 4D-Var (pelagos.inverse) with the biased model assimilates noisy ψ at 25 % of the grid points
every 6 h; the analysis increments δ = x_a − x_b (background = biased forecast) are regressed on the
background with a small circular CNN; the corrected model adds the network's δ̂(x) every 6 h. Scored by
free-forecast RMSE against the truth from held-out truth states.
"""

from __future__ import annotations

import json
import pathlib
import time

import torch

from pelagos.core.rollout import rollout
from pelagos.inverse.fourdvar import cycled_fourdvar
from pelagos.inverse.observations import ObservationSet
from pelagos.nn.qg_closure import QGClosureCNN
from pelagos.qg import QGModel
from pelagos.qg.interval import QGInterval
from pelagos.qg.observe import PointObserver

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    torch.set_num_threads(1)
    kw = dict(nx=32, L=5e5, dt=3600.0)
    truth_qg, biased_qg = QGModel(**kw), QGModel(**kw, beta=0.0)
    truth, biased = QGInterval(truth_qg, 6), QGInterval(biased_qg, 6)
    gen = torch.Generator().manual_seed(0)
    q = 3e-6 * torch.randn(1, 2, 32, 32, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        q = rollout(truth_qg, truth_qg.state_from_q(q), 13000, save_every=10**9, include_initial=False).final[
            "q"
        ]
        n_cyc, n_test = 100, 8
        tr = rollout(truth, q, n_cyc + n_test * 8 + 8, include_initial=True)  # 6-hourly truth
    xt = tr.states  # (T, 1, 2, 32, 32)
    H = PointObserver.random(truth_qg, 512, seed=1, field="psi")
    with torch.no_grad():
        y_clean = torch.stack([H(truth_qg.state_from_q(x)) for x in xt[1 : n_cyc + 1]])
    sigma = 0.02 * float(y_clean.std())
    y = y_clean + sigma * torch.randn(y_clean.shape, dtype=y_clean.dtype, generator=gen)
    obs = ObservationSet(
        times=tr.times[1 : n_cyc + 1], values=y, sigma=sigma, operator=PointObserver(biased_qg, H.points)
    )
    xb = xt[0] + 0.1 * float(xt[0].std()) * torch.randn(xt[0].shape, dtype=torch.float64, generator=gen)
    t0 = time.time()
    res = cycled_fourdvar(biased, obs, xb, B=0.1 * float(xt[0].std()), lag=1, max_iter=30)
    wall = time.time() - t0
    starts = [x for _, x in res.window_starts]  # analysed states at the window starts t_0 … t_{K-1}
    with torch.no_grad():
        xb_k = torch.stack([biased.step(a) for a in starts[:-1]])  # background at t_1 … t_{K-1}
    xa_k = torch.stack(starts[1:])
    inc = xa_k - xb_k  # analysis increments (K-1, 1, 2, 32, 32)
    err_a = float(((torch.stack(starts) - xt[: len(starts)]) ** 2).mean().sqrt() / xt.std())
    err_b = float(((xb_k - xt[1 : len(starts)]) ** 2).mean().sqrt() / xt.std())
    print(
        f"cycled 4D-Var: {len(starts)} windows in {wall:.0f} s, iterations {res.iterations[:8]}; rms error "
        f"analysis {err_a:.4f}, background {err_b:.4f}, increments {float(inc.std() / xt.std()):.4f} (of std)"
    )

    # regress increments on the background (skip the first 10 windows: spin-up of the cycle)
    X, Y = xb_k[10:, 0], inc[10:, 0]
    sx, sy = X.std(dim=(0, 2, 3))[:, None, None], Y.std(dim=(0, 2, 3))[:, None, None]
    net = QGClosureCNN(nz=2, hidden=16, layers=3, kernel=5)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    Xn, Yn = (X / sx).float(), (Y / sy).float()
    for _ in range(600):
        loss = ((net(Xn) - Yn) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"increment regression: normalised MSE {loss.item():.3f}")

    class Correction(torch.nn.Module):
        def forward(self, x):
            return net(x / sx.float()) * sy.float()

    corrected = QGInterval(biased_qg, 6, correction=Correction())
    # free forecasts from held-out truth states, 2 days (8 intervals)
    scores = {"biased model": [], "biased + learned correction": [], "(persistence)": []}
    with torch.no_grad():
        for j in range(n_test):
            k0 = n_cyc + j * 8
            x0, target = xt[k0], xt[k0 + 8]
            for name, mdl in (("biased model", biased), ("biased + learned correction", corrected)):
                xf = rollout(mdl, x0, 8, save_every=8, include_initial=False).final
                scores[name].append(float(((xf - target) ** 2).mean().sqrt() / xt.std()))
            scores["(persistence)"].append(float(((x0 - target) ** 2).mean().sqrt() / xt.std()))
    out = {k: sum(v) / len(v) for k, v in scores.items()}
    out.update(
        fourdvar_windows=len(starts),
        fourdvar_wall_s=wall,
        analysis_rms_error=err_a,
        regression_mse=loss.item(),
        background_rms_error=err_b,
    )
    print(json.dumps(out, indent=1))
    (ROOT / "benchmarks" / "results" / "qg_increments.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
