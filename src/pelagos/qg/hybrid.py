"""Hybrid physics–ML QG: training data from high-res runs, offline and online closure training, evaluation.

Pipeline (:func:`run_pipeline`, driven by ``pelagos qg train-closure|evaluate CONFIG.yaml``; see
docs/qg_hybrid.md):

1. :func:`make_data` — spin up a batch of high-res two-layer runs from seeded broadband noise (mostly on a
   coarser grid, then Fourier-interpolated), then keep the coarse-grained PV q̄ at every step (the online
   "truth") and (q̄, S_q) pairs every few steps (offline);
2. :func:`train_offline` — a priori: fit the CNN to S_q from q̄ (MSE on normalised fields);
3. :func:`train_online` — a posteriori: unroll the low-res model with the closure for n steps from q̄(t₀)
   and backpropagate through the solver (checkpointed rollout) the loss of :func:`online_loss`: normalised
   squared PV error along the trajectory plus a KE-spectrum term, both on the scales the low-res model's
   filter leaves alone; curriculum n = 6 … 96 steps (¼ to 4 days);
4. :func:`evaluate` — low-res with no closure / Smagorinsky / BackscatterBiharmonic / offline / online CNN vs
   the coarse-grained truth: short-term error, long-run stability, KE spectra and energy-budget distances, and
   pyqg-style similarity scores 1 − d(model, truth)/d(no closure, truth).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from ..core.errors import ConfigError, StabilityError
from ..core.rollout import rollout
from ..nn.qg_closure import QGClosureCNN
from .base import SpectralQG
from .coarsen import Coarsener, lowres_like
from .diagnostics import calc_ispec, diagnostics
from .models import QGModel
from .parameterizations import BackscatterBiharmonic, NeuralClosure, Smagorinsky

DAY = 86400.0
YEAR = 360 * DAY


@dataclass
class HybridConfig:
    """Settings of the hybrid pipeline; the defaults train on 2 CPU cores in minutes (see ``gpu()``)."""

    nx_hr: int = 128
    nx_lr: int = 32
    dt: float = 3600.0  # s, both resolutions
    # pyqg defaults on a 500 km domain (room for ~4 unstable wavelengths): the low-res grid spacing is rd
    # (15.6 km), as in Ross et al.'s 64² "eddy" model, and the truth is 4× finer (rd/dx = 4, as theirs)
    model: dict = field(default_factory=lambda: {"L": 5e5})
    coarsen: str = "spectral"
    n_train: int = 6  # high-res trajectories for training
    n_test: int = 2  # held-out trajectories (other seeds)
    spinup_years: float = 3.0
    # the first spinup_years − spinup_hr_years run on a spinup_nx grid (cheap), then the state is Fourier-
    # interpolated to nx_hr and run spinup_hr_years there (its small scales equilibrate in weeks)
    spinup_nx: int | None = 64
    spinup_hr_years: float = 0.5
    ic_amplitude: float = 3e-6  # s-1, rms of the initial white-noise PV
    data_years: float = 0.5
    pair_every: int = 6  # steps between offline (q̄, S) pairs
    # 4 circular 3×3 convolutions of width 16 (~5 k weights): a third of the cost of width 32, 5×5 per
    # unrolled step and as good online (the larger net fits S_q better offline, R² 0.81 vs 0.64)
    hidden: int = 16
    layers: int = 4
    kernel: int = 3
    offline_iters: int = 600
    offline_batch: int = 32
    offline_lr: float = 2e-3
    online_iters: int = 150
    online_batch: int = 8
    online_lr: float = 1e-3
    curriculum: list = field(default_factory=lambda: [6, 12, 24, 48, 96])  # unroll lengths [steps]
    spectral_weight: float = 1.0  # weight of the KE-spectrum term of the online loss
    online_init: str = "zero"  # start online from the offline CNN ("offline") or with its last layer zeroed
    checkpoint: str | int | None = "sqrt"
    eval_days: list = field(default_factory=lambda: [1, 5, 10, 30])
    eval_starts: int = 6
    eval_years: float = 10.0  # model years of the long runs; climate scores average the second half
    eval_members: int = 4  # long runs (batched) whose second halves are averaged for the climate scores
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def gpu(cls) -> HybridConfig:
        """A larger configuration for a GPU: 256² → 64² on 1000 km (Ross et al. 2023 'eddy'), longer training.

        Not run in this project (no GPU was available); sizes are chosen so that data generation and
        training stay around an hour on one modern GPU.
        """
        return cls(
            nx_hr=256,
            nx_lr=64,
            dt=3600.0,
            model={"L": 1e6},
            n_train=16,
            n_test=4,
            spinup_years=5.0,
            spinup_nx=128,
            spinup_hr_years=1.0,
            data_years=2.0,
            hidden=32,
            layers=5,
            kernel=5,
            offline_iters=5000,
            offline_batch=64,
            online_iters=2000,
            online_batch=16,
            curriculum=[6, 12, 24, 48, 96, 192, 384],
            eval_years=10.0,
            eval_members=8,
            device="cuda",
        )


# -- data ---------------------------------------------------------------------------------------------------
def make_models(cfg: HybridConfig) -> tuple[QGModel, QGModel, Coarsener]:
    hi = QGModel(nx=cfg.nx_hr, dt=cfg.dt, device=cfg.device, **cfg.model)
    hi.check_cfl(hi.initial_state())
    lo = lowres_like(hi, cfg.nx_lr)
    return hi, lo, Coarsener(hi, lo, cfg.coarsen)


def upsample(lo: SpectralQG, hi: SpectralQG, q: torch.Tensor) -> torch.Tensor:
    """Fourier interpolation of a coarse grid field (…, ny, nx) of ``lo`` onto the finer grid of ``hi``.

    The Nyquist row and column are dropped; the half-cell offset between the grids is ignored (a shifted
    turbulent field is as good a spin-up state as the unshifted one).
    """
    qh = lo.fft(q)
    ny, nk = lo.ny, lo.grid.nk
    out = torch.zeros(*qh.shape[:-2], hi.ny, hi.grid.nk, dtype=qh.dtype, device=qh.device)
    out[..., : ny // 2, : nk - 1] = qh[..., : ny // 2, : nk - 1]
    out[..., hi.ny - ny // 2 + 1 :, : nk - 1] = qh[..., ny // 2 + 1 :, : nk - 1]
    return hi.ifft(out * (hi.grid.M / lo.grid.M))


def _spin(model, st, n: int):
    for k in range(0, n, 1000):
        st = rollout(model, st, min(1000, n - k), save_every=10**9, include_initial=False).final
        model.check_cfl(st)
    return st


@torch.no_grad()
def make_data(cfg: HybridConfig, log=print) -> dict:
    """High-res runs → coarse truth q̄ every step (T, B, nz, ny, nx), offline pairs and truth diagnostics."""
    hi, _lo, C = make_models(cfg)
    B = cfg.n_train + cfg.n_test
    # broadband noise in both layers (pyqg's weak top-layer stripes take ~3 model years to saturate)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    coarse = cfg.spinup_nx if cfg.spinup_nx and cfg.spinup_nx < cfg.nx_hr else None
    first = coarse or cfg.nx_hr
    m0 = hi if coarse is None else lowres_like(hi, coarse)
    q0 = cfg.ic_amplitude * torch.randn(B, hi.nz, first, first, dtype=torch.float64, generator=gen)
    st = m0.state_from_q(q0.to(hi.dtype).to(hi.device))
    n_spin = round(cfg.spinup_years * YEAR / cfg.dt)
    if coarse is not None:
        n_hr = min(n_spin, round(cfg.spinup_hr_years * YEAR / cfg.dt))
        st = _spin(m0, st, n_spin - n_hr)
        st = _spin(hi, hi.state_from_q(upsample(m0, hi, st["q"])), n_hr)
        log(
            f"spin-up: {n_spin - n_hr} steps at {coarse}², {n_hr} at {cfg.nx_hr}² "
            f"(x {B}), {time.time() - t0:.0f} s"
        )
    else:
        st = _spin(hi, st, n_spin)
        log(f"spin-up: {n_spin} steps of {cfg.nx_hr}² x {B} in {time.time() - t0:.0f} s")
    n_data = round(cfg.data_years * YEAR / cfg.dt)
    truth, pairs_q, pairs_S, diags = [], [], [], []
    names = ["KEspec", "KEflux_div", "APEflux_div", "APEgenspec", "KEfrictionspec", "Dissspec", "EKE"]
    for k in range(n_data):
        truth.append(C(st["q"]))
        if k % cfg.pair_every == 0:
            qb, S = C.subgrid_forcing(st)
            pairs_q.append(qb[: cfg.n_train])
            pairs_S.append(S[: cfg.n_train])
        if k % (4 * cfg.pair_every) == 0:
            diags.append(diagnostics(hi, st, names))
        st = hi.step(st)
    hi.check_cfl(st)
    log(f"data: {n_data} steps, {len(pairs_q) * cfg.n_train} offline pairs, in {time.time() - t0:.0f} s")
    mean_diag = {n: torch.stack([d[n] for d in diags]).mean(0) for n in names}
    return {
        "truth": torch.stack(truth),  # (T, B, nz, ny, nx) on the low-res grid
        "pairs_q": torch.cat(pairs_q),
        "pairs_S": torch.cat(pairs_S),
        "truth_diags_hr": mean_diag,  # time means of the high-res diagnostics (train and test runs)
        "config": asdict(cfg),
    }


def scales(data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer standard deviations of q̄ and S_q (nz, 1, 1), used to normalise the network's in/outputs."""
    sq = data["pairs_q"].std(dim=(0, 2, 3))[:, None, None]
    sS = data["pairs_S"].std(dim=(0, 2, 3))[:, None, None]
    return sq, sS


def make_closure(cfg: HybridConfig, data: dict) -> NeuralClosure:
    """A fresh CNN closure, its weights drawn from ``cfg.seed`` (the global RNG is left as it was)."""
    sq, sS = scales(data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = QGClosureCNN(
            nz=data["pairs_q"].shape[1], hidden=cfg.hidden, layers=cfg.layers, kernel=cfg.kernel
        )
    net = net.to(cfg.device)
    return NeuralClosure(net, inputs="q", kind="q", input_scale=sq, output_scale=sS).to(cfg.device)


# -- training ------------------------------------------------------------------------------------------------
def train_offline(cfg: HybridConfig, data: dict, closure: NeuralClosure | None = None, log=print):
    """A priori training: minimise ‖net(q̄/σ_q) − S/σ_S‖² over the offline pairs. Returns (closure, curve)."""
    closure = make_closure(cfg, data) if closure is None else closure
    g = torch.Generator().manual_seed(cfg.seed)
    x = (data["pairs_q"] / closure.input_scale).float()
    y = (data["pairs_S"] / closure.output_scale).float()
    n_val = max(1, x.shape[0] // 10)
    xv, yv, xt, yt = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    opt = torch.optim.Adam(closure.net.parameters(), lr=cfg.offline_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.offline_iters)
    curve = []
    for it in range(cfg.offline_iters):
        idx = torch.randint(0, xt.shape[0], (cfg.offline_batch,), generator=g)
        loss = ((closure.net(xt[idx]) - yt[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 50 == 0 or it == cfg.offline_iters - 1:
            with torch.no_grad():
                val = float(((closure.net(xv) - yv) ** 2).mean())
            curve.append({"iter": it, "train": loss.item(), "val": val})
            log(f"offline {it:5d}  train {loss.item():.4f}  val {val:.4f}  (R² = {1 - val:.3f})")
    return closure, curve


def _windows(truth: torch.Tensor, n: int, batch: int, gen: torch.Generator, n_train: int):
    """Random training windows: initial q̄ (batch, nz, ny, nx) and targets (n, batch, nz, ny, nx)."""
    T = truth.shape[0]
    t0 = torch.randint(0, T - n, (batch,), generator=gen)
    b = torch.randint(0, n_train, (batch,), generator=gen)
    idx = t0[None, :] + torch.arange(n + 1)[:, None]  # (n+1, batch)
    seq = truth[idx, b[None, :]]
    return seq[0], seq[1:]


class KESpectrum:
    """Isotropic KE spectrum per layer of a PV spectrum, differentiable: ``(…, nz, nl, nk) → (…, nz, nbins)``.

    Bins of width 2π/L whose every mode is left untouched by the model's small-scale filter (filter ≥
    ``min_filter``): in the filter band the low-res model damps the energy every step while the coarse-
    grained truth keeps it, a mismatch a closure could only remove by pumping energy there, which is
    unstable. rFFT half-plane columns other than k = 0 and Nyquist count twice. Units m² s⁻² per bin, up
    to a constant factor.
    """

    def __init__(self, model: SpectralQG, min_filter: float = 0.999) -> None:
        g, c = model.grid, model.coefficients()
        self.a = c["a"]  # inversion ψ̂ = a q̂ (nz, nz, nl, nk)
        self.wv2 = c["wv2"]
        dk = 2 * math.pi / g.L
        idx = torch.round(g.wv.cpu() / dk).long()  # (nl, nk)
        filt = c["filtr"].cpu().to(torch.float64)
        nb = 1
        while bool((idx == nb).any()) and float(filt[idx == nb].min()) >= min_filter:
            nb += 1
        self.mask = (filt >= min_filter).to(device=self.wv2.device, dtype=self.wv2.dtype)  # (nl, nk)
        w = torch.full(idx.shape, 2.0, dtype=torch.float64)
        w[:, 0] = w[:, -1] = 1.0
        P = torch.stack([((idx == i) * w).flatten() for i in range(1, nb)])  # (nbins, nl·nk)
        self.P = P.to(device=self.wv2.device, dtype=self.wv2.dtype)
        self.nbins = nb - 1

    def __call__(self, qh: torch.Tensor) -> torch.Tensor:
        ph = (self.a * qh.unsqueeze(-4)).sum(-3)
        e = self.wv2 * (ph.real**2 + ph.imag**2)
        return e.flatten(-2) @ self.P.T


def spectral_loss(spec: KESpectrum, qh_pred: torch.Tensor, qh_true: torch.Tensor) -> torch.Tensor:
    """Mean squared log ratio of the batch-mean KE spectra of two trajectories (n, B, nz, nl, nk) [-].

    Penalises energy drift scale by scale (a 10 % error in every bin costs ≈ 0.01) without asking the
    prediction to match the truth's phases, so it still carries information once trajectories decorrelate.
    """
    ep = spec(qh_pred).mean(1)
    et = spec(qh_true).mean(1)
    return ((torch.log(ep) - torch.log(et)) ** 2).mean()


def online_loss(
    lo: SpectralQG,
    closure: NeuralClosure,
    q0: torch.Tensor,
    target: torch.Tensor,
    cfg: HybridConfig,
    spec: KESpectrum | None = None,
) -> tuple[torch.Tensor, dict]:
    """Unroll ``lo`` (with its closure) ``len(target)`` steps from ``q0`` and score it against ``target``.

    Loss = mean over the unrolled steps of the squared PV error normalised by the per-layer std of q̄, plus
    ``cfg.spectral_weight`` × :func:`spectral_loss`, both on the scales outside the model's filter band (see
    :class:`KESpectrum`). Returns (loss, its parts as floats).
    """
    n = target.shape[0]
    spec = KESpectrum(lo) if spec is None else spec
    traj = rollout(lo, lo.state_from_q(q0), n, checkpoint=cfg.checkpoint, include_initial=False)
    qh_pred, qh_true = traj.states["qh"], lo.fft(target)  # (n, batch, nz, nl, nk)
    err = lo.ifft((qh_pred - qh_true) * spec.mask)
    sq = closure.input_scale.to(err.dtype)
    traj_term = ((err / sq) ** 2).mean()
    loss, parts = traj_term, {"traj": traj_term.item()}
    if cfg.spectral_weight > 0:
        s_term = spectral_loss(spec, qh_pred, qh_true)
        loss = loss + cfg.spectral_weight * s_term
        parts["spec"] = s_term.item()
    return loss, parts


def train_online(cfg: HybridConfig, data: dict, closure: NeuralClosure, log=print):
    """A posteriori training through the low-res solver with a curriculum on the unroll length.

    ``closure`` is the starting point (usually a copy of the offline CNN), trained in place; with
    ``cfg.online_init == "zero"`` its last layer is zeroed first, so training starts from "no closure" and
    keeps only the offline features. Returns (closure, curve).
    """
    if cfg.online_init not in ("offline", "zero"):
        raise ConfigError(f"online_init = {cfg.online_init!r}; valid: 'offline', 'zero'")
    if cfg.online_init == "zero":
        with torch.no_grad():
            for p in closure.net.convs[-1].parameters():
                p.zero_()
    _, lo, _ = make_models(cfg)
    lo.parameterization = closure
    spec = KESpectrum(lo)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.Adam(closure.net.parameters(), lr=cfg.online_lr)
    stages = list(cfg.curriculum)
    per = max(1, cfg.online_iters // len(stages))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, per * len(stages), eta_min=0.1 * cfg.online_lr)
    curve = []
    truth = data["truth"]
    # monitoring only (no model selection): the loss on fixed held-out windows, with and without the closure
    held_out = truth[:, cfg.n_train :]
    g_val = torch.Generator().manual_seed(cfg.seed + 2)
    it = 0
    t0 = time.time()
    for n in stages:
        vq0, vtarget = _windows(held_out, n, cfg.online_batch, g_val, held_out.shape[1])
        with torch.no_grad():
            lo.parameterization = None
            val_ref = online_loss(lo, closure, vq0, vtarget, cfg, spec)[0].item()
            lo.parameterization = closure
        for _ in range(per):
            q0, target = _windows(truth, n, cfg.online_batch, g, cfg.n_train)
            loss, parts = online_loss(lo, closure, q0, target, cfg, spec)
            if not bool(torch.isfinite(loss)):
                log(f"online {it}: non-finite rollout skipped (n = {n})")
                continue
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(closure.net.parameters(), 1.0)
            opt.step()
            sched.step()
            if it % 10 == 0 or it == per * len(stages) - 1:
                with torch.no_grad():
                    val = online_loss(lo, closure, vq0, vtarget, cfg, spec)[0].item()
                parts.update(val=val, val_no_closure=val_ref)
                curve.append({"iter": it, "n": n, "loss": loss.item(), **parts})
                log(
                    f"online {it:5d}  n = {n:3d}  loss {loss.item():.3e}  "
                    + "  ".join(f"{k} {v:.3e}" for k, v in parts.items())
                    + f"  ({time.time() - t0:.0f} s)"
                )
            it += 1
    lo.parameterization = None
    return closure, curve


# -- evaluation ----------------------------------------------------------------------------------------------
def _ispec_layers(model, spec: torch.Tensor) -> torch.Tensor:
    """Isotropic spectra of a (…, nl, nk) density (layers kept), mean over the batch dim if present."""
    return calc_ispec(model, spec)[1]


@torch.no_grad()
def evaluate(cfg: HybridConfig, data: dict, closures: dict, log=print) -> dict:
    """Scores of each low-res closure against the coarse-grained high-res truth (held-out runs)."""
    hi, lo, _ = make_models(cfg)
    truth = data["truth"][:, cfg.n_train :]  # held-out trajectories (T, n_test, nz, ny, nx)
    T = truth.shape[0]
    steps_day = round(DAY / cfg.dt)
    horizons = [d for d in cfg.eval_days if d * steps_day < T]
    n_max = max(horizons) * steps_day if horizons else 0
    starts = torch.linspace(0, T - 1 - n_max, cfg.eval_starts).long() if horizons else torch.zeros(0).long()
    sigma = truth.std(dim=(0, 1, 3, 4))[:, None, None]
    names = ["KEspec", "KEflux_div", "APEflux_div", "APEgenspec", "KEfrictionspec", "Dissspec", "EKE"]
    kr_lo, _ = calc_ispec(lo, torch.zeros(lo.grid.nl, lo.grid.nk, dtype=torch.float64))
    nkr = kr_lo.numel()
    hr = data["truth_diags_hr"]

    def iso(model, d, name):
        x = d[name].mean(0)  # over trajectories
        if name == "EKE":
            return x
        return _ispec_layers(model, x)[..., :nkr]

    target = {n: iso(hi, hr, n) for n in names}
    # isotropic bins (width √2·2π/L) lying wholly below the filter band, where the closures are judged
    c_lo = lo.coefficients()
    k_cut = float(lo.grid.wv[c_lo["filtr"] < 0.999].min())
    n_free = int(((kr_lo + 0.5 * (kr_lo[1] - kr_lo[0])) <= k_cut).sum())
    mask = KESpectrum(lo).mask
    # eval_members long-run initial states, spread over the held-out trajectories and their duration
    ts = torch.linspace(0, T - 1, cfg.eval_members).long().tolist()
    long_q0 = torch.stack([truth[t, i % truth.shape[1]] for i, t in enumerate(ts)])
    results = {}
    for label, closure in closures.items():
        lo.parameterization = closure
        # short-term error: normalised RMSE of q after d days, averaged over starts and test runs
        err, err_res = {}, {}
        if horizons:
            q0 = torch.cat([truth[s] for s in starts])
            tgt = torch.stack([torch.cat([truth[s + d * steps_day] for s in starts]) for d in horizons])
            traj = rollout(lo, lo.state_from_q(q0), n_max, save_every=steps_day, include_initial=False)
            for i, d in enumerate(horizons):
                pred = traj.states["q"][d - 1]
                err[d] = float(((((pred - tgt[i]) / sigma) ** 2).mean()).sqrt())
                # the same on the scales outside the filter band (those the online loss is trained on)
                e_res = lo.ifft(lo.fft(pred - tgt[i]) * mask)
                err_res[d] = float((((e_res / sigma) ** 2).mean()).sqrt())
        # long runs from held-out states: stability and time-mean diagnostics over the second half
        st = lo.state_from_q(long_q0)
        n_long = round(cfg.eval_years * YEAR / cfg.dt)
        stable_years, acc, count = cfg.eval_years, {n: 0 for n in names}, 0
        for k in range(0, n_long, 100):
            st = rollout(lo, st, min(100, n_long - k), save_every=10**9, include_initial=False).final
            try:
                lo.check_cfl(st)
            except StabilityError:
                stable_years = (k + 100) * cfg.dt / YEAR
                break
            if k >= n_long // 2 and k % 300 == 0:
                d = diagnostics(lo, st, names)
                acc = {n: acc[n] + d[n] for n in names}
                count += 1
        res = {"rmse_days": err, "rmse_days_resolved": err_res, "stable_years": stable_years}
        res["blew_up"] = stable_years < cfg.eval_years
        if count:
            mean = {n: acc[n] / count for n in names}
            dist = {}
            for n in names:
                m_iso = iso(lo, mean, n)
                dist[n] = float(((m_iso - target[n]) ** 2).mean().sqrt())
            res["distance"] = dist
            ke = iso(lo, mean, "KEspec")
            res["ke_ispec"] = ke.tolist()
            # RMS of log10(model/truth) over the bins outside the filter band: relative errors at every
            # scale (the distances above are dominated by the energetic largest scales)
            ratio = (ke / target["KEspec"])[..., :n_free]
            res["ke_log10_err"] = float((torch.log10(ratio) ** 2).mean().sqrt())
        results[label] = res
        log(f"{label:>22s}: rmse {err}  stable {stable_years:.2f} yr")
    lo.parameterization = None
    base = results.get("no closure", {}).get("distance")
    for res in results.values():
        if base and "distance" in res:
            res["similarity"] = {n: 1 - res["distance"][n] / base[n] for n in base if base[n] > 0}
    results["_truth_ke_ispec"] = target["KEspec"].tolist()
    results["_kr"] = kr_lo.tolist()
    results["_n_resolved_bins"] = n_free
    return results


def baseline_closures() -> dict:
    return {
        "no closure": None,
        "Smagorinsky": Smagorinsky(0.15),
        "BackscatterBiharmonic": BackscatterBiharmonic(0.08, 0.99),
    }


def run_pipeline(cfg: HybridConfig, log=print, data: dict | None = None) -> dict:
    """Everything: data (unless given), offline CNN, online CNN (from the offline one), evaluation.

    The returned ``seconds`` holds the wall time of each phase.
    """
    torch.manual_seed(cfg.seed)
    t = [time.time()]
    data = make_data(cfg, log) if data is None else data
    t.append(time.time())
    offline, curve_off = train_offline(cfg, data, log=log)
    t.append(time.time())
    online, curve_on = train_online(cfg, data, copy.deepcopy(offline), log=log)
    t.append(time.time())
    closures = {**baseline_closures(), "offline CNN": offline, "online CNN": online}
    results = evaluate(cfg, data, closures, log=log)
    t.append(time.time())
    phases = ("data", "offline", "online", "evaluation")
    return {
        "config": asdict(cfg),
        "seconds": {p: round(b - a, 1) for p, a, b in zip(phases, t[:-1], t[1:])},
        "curves": {"offline": curve_off, "online": curve_on},
        "results": results,
        "closures": {"offline": offline, "online": online},
        "data": data,
    }


def summary_table(results: dict, rmse: str = "rmse_days") -> str:
    """Markdown table: short-term error, stability, similarity of KE spectrum and energy budget.

    ``rmse="rmse_days_resolved"`` reports the errors on the scales outside the filter band instead.
    """
    labels = [k for k in results if not k.startswith("_")]
    days = sorted({d for k in labels for d in results[k].get(rmse, {})})
    head = [
        "closure",
        *[f"RMSE{'*' if rmse != 'rmse_days' else ''} {d} d" for d in days],
        "stable yr",
        "KE log-err",
        "sim KEspec",
        "sim KEflux",
        "sim APEgen",
        "sim EKE",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in labels:
        r = results[k]
        sim = r.get("similarity", {})

        def f(x):
            return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"

        cells = [k, *[f(r.get(rmse, {}).get(d)) for d in days], f(r["stable_years"])]
        cells.append(f(r.get("ke_log10_err")))
        cells += [f(sim.get(n)) for n in ("KEspec", "KEflux_div", "APEgenspec", "EKE")]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
