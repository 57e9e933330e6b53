"""Learning model error from 4D-Var analysis increments on the two-layer QG model (small demonstration).

    .venv/bin/python examples/qg_increments.py              # ~ 3 min on one core; writes the JSON and figures
    .venv/bin/python examples/qg_increments.py --ablation   # ~ 6 min more: DA variants, added to the JSON

Truth: two-layer QG, 32², 500 km, β = 1.5e-11 m⁻¹ s⁻¹. Biased low-res model: the same with β = 0, i.e. it
misses the linear tendency −β ∂ψᵢ/∂x of each layer. Cycled strong-constraint 4D-Var
(``pelagos.inverse.cycled_fourdvar`` on ``QGInterval``: one step = 6 hourly steps) with the biased model
assimilates noisy ψ (1 % error) at half of the grid points every 6 h, B = (3 % of each layer's q std)². The
increments δ_k = x_a(t_k) − M(x_a(t_{k−1})) are regressed on the analyses x_a(t_{k−1}) with

- a linear stencil: one circular 5×5 convolution of ψ (both layers in, both out: 100 weights + 2 biases),
  fitted in closed form (``pelagos.qg.model_error.fit_stencil``);
- for comparison, a small nonlinear CNN on ψ (2 hidden layers of 8 channels, Adam).

The corrected model adds the fitted δ̂(x) once per 6-h interval (as in training). Scored by free forecasts
(1, 2, 5 days) from held-out truth states, in ψ and q per layer, against the biased model, the biased model
with the exact missing term (−Δt β ∂ψ/∂x added per interval, the best this form of correction can do) and the
true model; then a second, held-out cycled 4D-Var run with the biased and the corrected model.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

import torch

from pelagos.core.observations import ObservationSet
from pelagos.core.rollout import rollout
from pelagos.inverse.fourdvar import cycled_fourdvar
from pelagos.nn.qg_closure import QGClosureCNN
from pelagos.qg import QGModel
from pelagos.qg.interval import QGInterval
from pelagos.qg.model_error import SpectralCovariance, fit_stencil, increments, streamfunction
from pelagos.qg.observe import random_points

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = dict(
    n_cyc=400,  # training windows (6 h each)
    spinup_windows=20,  # dropped from the training set
    n_obs=1024,  # ψ observed at this many of the 2048 grid values (both layers)
    obs_noise=0.01,  # observation error std, fraction of each layer's ψ std
    b_std=0.03,  # background error std, fraction of each layer's q std
    b_ell=0.0,  # B correlation length, grid spacings (0: uncorrelated; 2 was worse, see --ablation)
    radius=2,  # stencil half width (5×5)
    ridge=1e-4,  # relative Tikhonov weight: removes grid-scale null-space noise from the stencil
    n_test=16,  # held-out free forecasts
    lead_days=(1, 2, 5),
    n_cyc_test=80,  # held-out cycled 4D-Var windows
    max_iter=40,
)


class BetaTerm(torch.nn.Module):
    """The exact missing term per interval: −Δt β ∂ψ/∂x (spectral derivative), [s⁻¹]."""

    def __init__(self, model: QGModel, beta: float, dt: float) -> None:
        super().__init__()
        self.model, self.c = model, -beta * dt
        self.kx = 2 * math.pi * torch.fft.fftfreq(model.nx, d=model.L / model.nx, dtype=torch.float64)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        psi = streamfunction(self.model, q)
        return self.c * torch.fft.ifft(1j * self.kx * torch.fft.fft(psi, dim=-1), dim=-1).real


class CNNCorrection(torch.nn.Module):
    """Small nonlinear comparison: δq = CNN(ψ/ψ_scale)·δ_scale (float32 inside)."""

    def __init__(self, model: QGModel, net: torch.nn.Module, psi_scale, dq_scale) -> None:
        super().__init__()
        self.model, self.net, self.ps, self.ds = model, net, psi_scale, dq_scale

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        x = (streamfunction(self.model, q) / self.ps[:, None, None]).float()
        return (self.net(x).double() * self.ds[:, None, None]).to(q.dtype)


def rel_rmse(x: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> list[float]:
    """RMSE per layer / scale per layer (x, ref (…, nz, ny, nx))."""
    d = (x - ref).transpose(0, -3).reshape(x.shape[-3], -1)
    return (d.pow(2).mean(1).sqrt() / scale).tolist()


def main(cfg: dict = CFG, out_dir: pathlib.Path | None = None) -> dict:
    torch.set_num_threads(1)
    t_all = time.time()
    kw = dict(nx=32, L=5e5, dt=3600.0)
    beta = 1.5e-11
    truth_qg, biased_qg = QGModel(**kw, beta=beta), QGModel(**kw, beta=0.0)
    truth, biased = QGInterval(truth_qg, 6), QGInterval(biased_qg, 6)
    gen = torch.Generator().manual_seed(0)
    n_cyc, n_test = cfg["n_cyc"], cfg["n_test"]
    lead = [round(d * 4) for d in cfg["lead_days"]]  # in 6-h intervals
    n_fc = n_test * 8 + max(lead)
    with torch.no_grad():
        q = 3e-6 * torch.randn(1, 2, 32, 32, dtype=torch.float64, generator=gen)
        q = rollout(truth_qg, truth_qg.state_from_q(q), 13000, save_every=10**9, include_initial=False).final
        q = q["q"]
        # 6-hourly truth: training cycle | held-out forecasts | held-out cycle
        xt = rollout(truth, q, n_cyc + n_fc + cfg["n_cyc_test"] + 1, include_initial=True).states
    with torch.no_grad():
        pt = streamfunction(truth_qg, xt[:, 0])
    q_std, p_std = xt[:, 0].std(dim=(0, 2, 3)), pt.std(dim=(0, 2, 3))  # per layer

    at = random_points(truth_qg, cfg["n_obs"], seed=1)
    H = truth_qg.observation_operator("psi", at)
    sig = (cfg["obs_noise"] * p_std)[H.layer]  # per observation, by layer
    B = SpectralCovariance(biased_qg, cfg["b_std"] * q_std, cfg["b_ell"] * 5e5 / 32)

    def observe(k0: int, n: int) -> ObservationSet:
        with torch.no_grad():
            y = torch.stack([H(x) for x in xt[k0 + 1 : k0 + n + 1]])
        y = y + sig * torch.randn(y.shape, dtype=y.dtype, generator=gen)
        times = torch.arange(1, n + 1, dtype=torch.float64) * biased.dt
        return ObservationSet(
            times=times, values=y, sigma=sig, operator=biased_qg.observation_operator("psi", at)
        )

    def first_guess(k0: int) -> torch.Tensor:
        return xt[k0] + B.sqrt_apply(torch.randn(xt[k0].shape, dtype=torch.float64, generator=gen))

    # -- 1. training cycle with the biased model ------------------------------------------------------------
    t0 = time.time()
    res = cycled_fourdvar(biased, observe(0, n_cyc), first_guess(0), B, lag=1, max_iter=cfg["max_iter"])
    wall = time.time() - t0
    xa, xb, inc = increments(biased, res.window_starts)  # starts t_0..t_{K-2}, backgrounds/increments t_1..
    s = cfg["spinup_windows"]
    xa_tr, inc_tr = xa[s:, 0], inc[s:, 0]
    # what the increment should be: the truth's minus the biased model's step from the same (true) state
    with torch.no_grad():
        ideal = torch.stack([truth.step(x) - biased.step(x) for x in xt[s : len(xa)]])[:, 0]
    cyc = {
        "windows": len(res.window_starts),
        "wall_s": round(wall, 1),
        "mean_lbfgs_iterations": sum(res.iterations) / len(res.iterations),
        "analysis_rmse_psi": rel_rmse(streamfunction(biased_qg, xa[s:, 0]), pt[s : len(xa)], p_std),
        "analysis_rmse_q": rel_rmse(xa[s:, 0], xt[s : len(xa), 0], q_std),
        "background_rmse_psi": rel_rmse(streamfunction(biased_qg, xb[s:, 0]), pt[s + 1 : len(xa) + 1], p_std),
        "background_rmse_q": rel_rmse(xb[s:, 0], xt[s + 1 : len(xa) + 1, 0], q_std),
        "increment_std_q": (inc_tr.std(dim=(0, 2, 3)) / q_std).tolist(),
        "ideal_increment_std_q": (ideal.std(dim=(0, 2, 3)) / q_std).tolist(),
        "corr_increment_ideal": [
            float(torch.corrcoef(torch.stack([inc_tr[:, i].flatten(), ideal[:, i].flatten()]))[0, 1])
            for i in range(2)
        ],
    }
    print(f"training cycle: {json.dumps(cyc)}", flush=True)

    # -- 2. fit corrections ----------------------------------------------------------------------------------
    lin = fit_stencil(biased_qg, xa_tr, inc_tr, radius=cfg["radius"], ridge=cfg["ridge"])
    oracle = fit_stencil(biased_qg, xt[s : len(xa), 0], ideal, radius=cfg["radius"], ridge=cfg["ridge"])
    exact = BetaTerm(biased_qg, beta, biased.dt)
    with torch.no_grad():
        pred = {"linear": lin(xa_tr), "oracle stencil": oracle(xa_tr), "exact term": exact(xa_tr)}

    def nmse(p: torch.Tensor, y: torch.Tensor) -> list[float]:
        return ((p - y).pow(2).mean(dim=(0, 2, 3)) / y.pow(2).mean(dim=(0, 2, 3))).tolist()

    fit = {k: {"nmse_vs_increments": nmse(v, inc_tr)} for k, v in pred.items()}
    with torch.no_grad():
        for k, v in pred.items():
            fit[k]["nmse_vs_exact_term"] = nmse(v, exact(xa_tr))
    # nonlinear comparison
    torch.manual_seed(0)
    ps, ds = p_std, inc_tr.std(dim=(0, 2, 3))
    X = (streamfunction(biased_qg, xa_tr) / ps[:, None, None]).float()
    Y = (inc_tr / ds[:, None, None]).float()
    net = QGClosureCNN(nz=2, hidden=8, layers=3, kernel=5)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    t0 = time.time()
    for _ in range(cfg.get("cnn_epochs", 300)):
        for idx in torch.randperm(X.shape[0]).split(32):
            loss = ((net(X[idx]) - Y[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if time.time() - t0 > cfg.get("cnn_seconds", 60):
            break
    cnn = CNNCorrection(biased_qg, net.requires_grad_(False), ps, ds)
    with torch.no_grad():
        fit["cnn"] = {
            "nmse_vs_increments": nmse(cnn(xa_tr), inc_tr),
            "nmse_vs_exact_term": nmse(cnn(xa_tr), exact(xa_tr)),
        }
    fit["cnn"]["weights"] = sum(p.numel() for p in net.parameters())
    print(f"fits: {json.dumps(fit)}", flush=True)

    # stencil vs the exact term: the x-derivative coefficient matrix C_ij (δq_i ≈ C_ij ∂ψ_j/∂x for long waves)
    K, Ko = lin.physical_kernel(), oracle.physical_kernel()
    stencil = {
        "learned_dx_coef": _xcoef(K, biased_qg).tolist(),
        "oracle_dx_coef": _xcoef(Ko, biased_qg).tolist(),
        "exact_dx_coef": [[-beta * biased.dt, 0.0], [0.0, -beta * biased.dt]],
        "rel_diff_learned_vs_oracle_kernel": float((K - Ko).norm() / Ko.norm()),
    }
    print(f"stencil: {json.dumps(stencil)}", flush=True)

    # -- 3. free forecasts from held-out truth states ------------------------------------------------------
    models = {
        "biased": biased,
        "biased + linear stencil": QGInterval(biased_qg, 6, correction=lin),
        "biased + CNN": QGInterval(biased_qg, 6, correction=cnn),
        "biased + oracle stencil": QGInterval(biased_qg, 6, correction=oracle),
        "biased + exact beta term": QGInterval(biased_qg, 6, correction=exact),
        "true model": truth,
    }
    k_first = n_cyc + 1
    fc = {name: {f"{d}d": {"psi": [0.0, 0.0], "q": [0.0, 0.0]} for d in cfg["lead_days"]} for name in models}
    curves = {}  # ψ RMSE per layer at every 6 h, for the figure
    with torch.no_grad():
        x0 = torch.stack([xt[k_first + 8 * j, 0] for j in range(n_test)])  # (n_test, 2, 32, 32), 2 days apart
        for name, mdl in models.items():
            traj = rollout(mdl, x0, max(lead), include_initial=True).states  # (T+1, n_test, 2, 32, 32)
            curves[name] = [
                rel_rmse(
                    streamfunction(biased_qg, traj[n]),
                    torch.stack([pt[k_first + 8 * j + n] for j in range(n_test)]),
                    p_std,
                )
                for n in range(max(lead) + 1)
            ]
            for d, n in zip(cfg["lead_days"], lead):
                ref = torch.stack([xt[k_first + 8 * j + n, 0] for j in range(n_test)])
                fc[name][f"{d}d"]["psi"] = rel_rmse(
                    streamfunction(biased_qg, traj[n]), streamfunction(biased_qg, ref), p_std
                )
                fc[name][f"{d}d"]["q"] = rel_rmse(traj[n], ref, q_std)
    for name in models:
        print(
            f"{name:28s}",
            "  ".join(f"{d}: ψ {v['psi'][0]:.4f}/{v['psi'][1]:.4f}" for d, v in fc[name].items()),
        )

    # -- 4. held-out cycled 4D-Var with and without the correction -------------------------------------------
    k_c = n_cyc + n_fc
    obs2, xb2 = observe(k_c, cfg["n_cyc_test"]), first_guess(k_c)
    da = {}

    def psi(q: torch.Tensor) -> torch.Tensor:
        return streamfunction(biased_qg, q)

    for name in ("biased", "biased + linear stencil", "true model"):
        r = cycled_fourdvar(models[name], obs2, xb2, B, lag=1, max_iter=cfg["max_iter"])
        a, b, _ = increments(models[name], r.window_starts)
        s2 = cfg["spinup_windows"]
        tr_a, tr_b = xt[k_c + s2 : k_c + len(a)], xt[k_c + s2 + 1 : k_c + len(a) + 1]
        da[name] = {
            "analysis_rmse_psi": rel_rmse(
                streamfunction(biased_qg, a[s2:, 0]), streamfunction(biased_qg, tr_a[:, 0]), p_std
            ),
            "background_rmse_psi": rel_rmse(
                streamfunction(biased_qg, b[s2:, 0]), streamfunction(biased_qg, tr_b[:, 0]), p_std
            ),
            "analysis_rmse_q": rel_rmse(a[s2:, 0], tr_a[:, 0], q_std),
            "background_rmse_q": rel_rmse(b[s2:, 0], tr_b[:, 0], q_std),
        }
        print(f"cycled DA, {name}: {json.dumps(da[name])}", flush=True)

    out = {
        "setup": {
            **{k: v for k, v in cfg.items()},
            "truth_beta": beta,
            "biased_beta": 0.0,
            "nx": 32,
            "L_m": 5e5,
        },
        "note": "RMSE are per layer [upper, lower], relative to that layer's std of the truth",
        "training_cycle": cyc,
        "fits": fit,
        "stencil": stencil,
        "forecasts": fc,
        "cycled_da_heldout": da,
        "wall_s": round(time.time() - t_all, 1),
    }
    if out_dir is not None:
        (out_dir / "qg_increments.json").write_text(json.dumps(out, indent=1))
        with torch.no_grad():
            snap = {
                "increment δ": inc_tr[-1],
                "exact −Δtβ∂ψ/∂x": exact(xa_tr[-1:])[0],
                "linear stencil": lin(xa_tr[-1:])[0],
                "CNN": cnn(xa_tr[-1:])[0],
            }
        figures(ROOT / "docs" / "figures", curves, K, Ko, snap, biased.dt)
    return out


def _xcoef(kernel: torch.Tensor, model: QGModel) -> torch.Tensor:
    """C_ij = Σ K_ij(m, n) · n dx: the stencil acts like δq_i = C_ij ∂ψ_j/∂x on long waves; C [m⁻¹]."""
    r = kernel.shape[-1] // 2
    n = torch.arange(-r, r + 1, dtype=torch.float64) * (model.L / model.nx)
    # conv2d is a cross-correlation: tap n along x reads f(x + n dx) ≈ f + n dx ∂f/∂x
    return (kernel * n).sum(dim=(-2, -1))


def figures(fig_dir: pathlib.Path, curves: dict, K: torch.Tensor, Ko: torch.Tensor, snap: dict, dt: float):
    """qg_increments_forecast.png, qg_increments_stencil.png, qg_increments_snapshot.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for name, c in curves.items():
        if name == "true model":
            continue
        days = [n * dt / 86400 for n in range(len(c))]
        for i, ax in enumerate(axs):
            ax.semilogy(days[1:], [v[i] for v in c[1:]], label=name)
    for i, ax in enumerate(axs):
        ax.set(xlabel="lead time [days]", title=f"layer {i + 1}: ψ RMSE / std(ψ)")
        ax.grid(alpha=0.3)
    axs[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_dir / "qg_increments_forecast.png", dpi=110)
    plt.close(fig)

    fig, axs = plt.subplots(2, 4, figsize=(11, 5.4))
    vmax = float(Ko.abs().max())
    for row, (lab, k) in enumerate((("from 4D-Var increments", K), ("from exact increments", Ko))):
        for col, (i, j) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            ax = axs[row, col]
            im = ax.imshow(k[i, j].numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set(title=f"{lab}\nψ{j + 1} → δq{i + 1}", xticks=[], yticks=[])
            ax.title.set_fontsize(8)
    fig.colorbar(im, ax=axs, shrink=0.7, label="weight [m⁻²]")
    fig.savefig(fig_dir / "qg_increments_stencil.png", dpi=110)
    plt.close(fig)

    fig, axs = plt.subplots(2, len(snap), figsize=(3 * len(snap), 5.6))
    for i in range(2):
        v = float(snap["exact −Δtβ∂ψ/∂x"][i].abs().max())
        for col, (lab, x) in enumerate(snap.items()):
            ax = axs[i, col]
            ax.imshow(x[i].numpy(), cmap="RdBu_r", vmin=-1.5 * v, vmax=1.5 * v, origin="lower")
            ax.set(title=f"{lab}, layer {i + 1}", xticks=[], yticks=[])
            ax.title.set_fontsize(9)
    fig.suptitle("one 6-h interval: increment and corrections δq [s⁻¹] (same colour scale per row)")
    fig.tight_layout()
    fig.savefig(fig_dir / "qg_increments_snapshot.png", dpi=110)
    plt.close(fig)


ABLATION = {  # shorter runs (200 windows), one change each from CFG
    "as CFG (200 windows)": {},
    "smooth B (correlation 2 dx)": {"b_ell": 2.0},
    "old DA: white B 10 %, 512 obs, 2 % noise": {"b_std": 0.1, "n_obs": 512, "obs_noise": 0.02},
}


def ablation() -> dict:
    """Short runs varying the DA set-up; summary merged into the JSON under "ablation"."""
    out = {}
    for name, change in ABLATION.items():
        cfg = {**CFG, "n_cyc": 200, "n_test": 8, "n_cyc_test": 60, "cnn_seconds": 20, **change}
        r = main(cfg, None)
        out[name] = {
            "change": change,
            "analysis_rmse_psi": r["training_cycle"]["analysis_rmse_psi"],
            "corr_increment_ideal": r["training_cycle"]["corr_increment_ideal"],
            "linear_nmse_vs_exact_term": r["fits"]["linear"]["nmse_vs_exact_term"],
            "forecast_2d_psi": {
                k: r["forecasts"][k]["2d"]["psi"]
                for k in ("biased", "biased + linear stencil", "biased + CNN")
            },
        }
    return out


if __name__ == "__main__":
    path = ROOT / "benchmarks" / "results" / "qg_increments.json"
    if "--ablation" in sys.argv:
        res = json.loads(path.read_text())
        res["ablation"] = ablation()
        path.write_text(json.dumps(res, indent=1))
    else:
        main(CFG, None if "--no-save" in sys.argv else path.parent)
