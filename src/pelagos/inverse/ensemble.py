"""Ensemble Kalman methods: EnKF (perturbed observations, square root / ETKF), LETKF, ES-MDA.

Ensembles are batches: a state with leading dim ``Ne`` and, for parameter estimation, unconstrained parameter
values ``U`` of shape ``(Ne, p)`` passed to the model with ``model.using`` (each member runs with its own
values
in one batched call). Analyses are done in the whitened observation space (y/σ) and, where possible, in the
ensemble space (N × N systems), so the cost does not grow with the number of observations squared.

Notation: E (N, n) ensemble, mean x̄, anomalies A = E − x̄; HE (N, m) predicted observations, Y their anomalies;
whitened Yw = Y/σ, innovation d = (y − H x̄)/σ; C = Yw Ywᵀ + (N−1) I.

- perturbed obs:  E_a = E + (d + ε − Yw)ᵀ… i.e. E_a,j = E_j + [(y + σ ε_j − HE_j)/σ] Ywᵀ C⁻¹ A, ε centred.
- square root (symmetric ETKF): x̄_a = x̄ + d Ywᵀ C⁻¹ A, A_a = √(N−1) C^{-1/2} A.
- LETKF: the ETKF for each state entry with obs weighted by a Gaspari–Cohn taper of their distance.
- Inflation multiplies the analysis anomalies by ``infl``; ``rot`` applies a random mean-preserving rotation.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch

from ..core.errors import ConfigError, ObservationError, ShapeError, check_choice
from ..core.observations import ObservationSet
from .forward import predict, propagate, step_function
from .state_tree import flatten_batched, leaves, unflatten_batched

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


# -- building blocks ---------------------------------------------------------------------------------------
def center(E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ensemble mean (n,) and anomalies (N, n)."""
    mu = E.mean(0)
    return mu, E - mu


def random_rotation(N: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """Random orthogonal (N, N) matrix T with T 1 = 1 (rotates anomalies, keeps the ensemble mean)."""
    if N == 1:
        return torch.ones(1, 1, dtype=dtype)
    ones = torch.ones(N, 1, dtype=dtype) / math.sqrt(N)
    # orthonormal basis of the complement of 1
    Q, _ = torch.linalg.qr(torch.cat([ones, torch.eye(N, dtype=dtype)[:, : N - 1]], dim=1))
    V = Q[:, 1:]
    G = torch.randn(N - 1, N - 1, generator=generator, dtype=dtype)
    R, Rr = torch.linalg.qr(G)
    R = R * torch.sign(torch.diagonal(Rr))  # Haar-distributed
    return ones @ ones.T + V @ R @ V.T


def post_process(
    E: torch.Tensor, infl: float = 1.0, rot: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Multiplicative inflation of the anomalies, then an optional random rotation."""
    if infl == 1.0 and not rot:
        return E
    mu, A = center(E)
    if infl != 1.0:
        A = infl * A
    if rot:
        A = random_rotation(E.shape[0], generator, E.dtype) @ A
    return mu + A


def _observed(
    obs: ObservationSet, i: int, HE: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whitened (transformed) predictions and observation at time i, keeping only non-missing entries.

    Returns ``HEw (N, m_i)``, ``yw (m_i,)``: both divided by σ (or premultiplied by L⁻¹).
    """
    if obs.values.ndim != 2:
        raise ShapeError(
            f"ensemble methods take observations of shape (n_t, m); got {tuple(obs.values.shape)} "
            "(batched stations: stack them into m)"
        )
    y = obs.values[i].to(HE)
    keep = torch.isfinite(y)
    h = obs.transform(HE)
    yt = obs.transform(torch.where(keep, y, torch.zeros_like(y)))
    if obs.cov is not None:
        L = obs._chol if obs._chol.ndim == 2 else obs._chol[i]
        L = L.to(HE)
        hw = torch.linalg.solve_triangular(L, h.T, upper=False).T
        yw = torch.linalg.solve_triangular(L, yt.unsqueeze(-1), upper=False).squeeze(-1)
        return hw, yw, keep
    s = obs.sigma[i].to(HE)
    return (h / s)[:, keep], (yt / s)[keep], keep


def enkf_analysis(
    E: torch.Tensor,
    HEw: torch.Tensor,
    yw: torch.Tensor,
    *,
    method: str = "sqrt",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One EnKF analysis of E (N, n) given whitened predictions HEw (N, m) and whitened observation yw
    (m,)."""
    check_choice("EnKF method", method, ["sqrt", "pertobs"])
    N = E.shape[0]
    if N < 2:
        raise ConfigError(f"an ensemble needs at least 2 members; got {N}")
    mu, A = center(E)
    hbar, Yw = center(HEw)
    C = Yw @ Yw.T + (N - 1) * torch.eye(N, dtype=E.dtype)
    if method == "pertobs":
        eps = torch.randn(HEw.shape, generator=generator, dtype=E.dtype)
        eps = eps - eps.mean(0)
        D = yw + eps - HEw  # (N, m)
        return E + torch.linalg.solve(C, Yw @ D.T).T @ A
    lam, V = torch.linalg.eigh(C)
    d = yw - hbar
    w = (V * (1.0 / lam)) @ V.T @ (Yw @ d)
    T = (V * lam.rsqrt()) @ V.T * math.sqrt(N - 1)
    return mu + w @ A + T @ A


def gaspari_cohn(r: torch.Tensor) -> torch.Tensor:
    """Gaspari & Cohn (1999, eq. 4.10) fifth-order taper of r = distance / c; zero for r >= 2."""
    r = r.abs()
    r2, r3, r4, r5 = r**2, r**3, r**4, r**5
    inner = -0.25 * r5 + 0.5 * r4 + 0.625 * r3 - 5.0 / 3.0 * r2 + 1.0
    outer = (
        r5 / 12.0 - 0.5 * r4 + 0.625 * r3 + 5.0 / 3.0 * r2 - 5.0 * r + 4.0 - 2.0 / (3.0 * r.clamp(min=1e-12))
    )
    return torch.where(r <= 1, inner, torch.where(r < 2, outer, torch.zeros_like(r)))


def localization_taper(
    state_coords: torch.Tensor,
    obs_coords: torch.Tensor,
    radius: float,
    *,
    period: float | None = None,
    cutoff: float = 1e-3,
) -> torch.Tensor:
    """Taper (n, m) between state and observation positions (1-D or (·, k) coordinates).

    Convention of DAPPER: the Gaspari–Cohn half-width is c = 1.82 · radius (so the taper is ≈ exp(−½) at
    ``radius``, like a Gaussian of std ``radius``), it vanishes beyond 2c; values below ``cutoff`` are set
    to 0.
    """
    if radius <= 0:
        raise ConfigError(f"localisation radius must be > 0; got {radius}")
    xs = torch.as_tensor(state_coords, dtype=torch.float64)
    yo = torch.as_tensor(obs_coords, dtype=torch.float64)
    xs = xs.unsqueeze(-1) if xs.ndim == 1 else xs
    yo = yo.unsqueeze(-1) if yo.ndim == 1 else yo
    d = (xs[:, None, :] - yo[None, :, :]).abs()
    if period is not None:
        d = torch.minimum(d, period - d)
    rho = gaspari_cohn(d.pow(2).sum(-1).sqrt() / (1.82 * radius))
    return torch.where(rho > cutoff, rho, torch.zeros_like(rho))


def letkf_analysis(E: torch.Tensor, HEw: torch.Tensor, yw: torch.Tensor, taper: torch.Tensor) -> torch.Tensor:
    """Local ETKF: one square-root analysis per state entry with obs weights ``taper`` (n, m), batched."""
    N, n = E.shape
    if taper.shape != (n, HEw.shape[1]):
        raise ShapeError(f"taper has shape {tuple(taper.shape)}; expected (n={n}, m={HEw.shape[1]})")
    mu, A = center(E)
    hbar, Yw = center(HEw)
    s = taper.to(E).sqrt()  # (n, m)
    Yl = Yw.unsqueeze(0) * s[:, None, :]  # (n, N, m)
    dl = (yw - hbar).unsqueeze(0) * s  # (n, m)
    C = Yl @ Yl.transpose(1, 2) + (N - 1) * torch.eye(N, dtype=E.dtype)
    lam, V = torch.linalg.eigh(C)  # (n, N), (n, N, N)
    Vt = V.transpose(1, 2)
    w = ((V * (1.0 / lam)[:, None, :]) @ Vt @ (Yl @ dl.unsqueeze(-1))).squeeze(-1)  # (n, N)
    T = (V * lam.rsqrt()[:, None, :]) @ Vt * math.sqrt(N - 1)  # (n, N, N)
    At = A.T  # (n, N)
    mean_a = mu + (w * At).sum(-1)
    Aa = (T @ At.unsqueeze(-1)).squeeze(-1)  # (n, N): T_i applied to column i of A
    return mean_a + Aa.T


# -- cycling filter ----------------------------------------------------------------------------------------
@dataclass
class EnsembleResult:
    """Ensemble filter output at every observation time."""

    times: torch.Tensor
    mean: torch.Tensor  # (K, n) analysis mean (flattened state)
    spread: torch.Tensor  # (K,) RMS ensemble std of the state
    forecast_mean: torch.Tensor  # (K, n)
    final: object  # analysis ensemble at the last time (state with leading Ne)
    params: torch.Tensor | None = None  # (K, Ne, p) unconstrained parameter ensembles after each analysis
    param_names: list[str] = field(default_factory=list)
    wall_time: float = 0.0


def ensemble_filter(
    model: object,
    obs: ObservationSet,
    E0: object,
    *,
    method: str = "sqrt",
    infl: float = 1.0,
    rot: bool = False,
    params: torch.Tensor | None = None,
    param_infl: float | None = None,
    localization: dict | None = None,
    t0: float = 0.0,
    dt: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> EnsembleResult:
    """Cycle forecast/analysis of an ensemble ``E0`` (state with leading dim Ne) through ``obs``.

    Args:
        method: ``"sqrt"`` (ETKF), ``"pertobs"`` (stochastic EnKF) or ``"letkf"`` (needs ``localization``).
        params: ``(Ne, p)`` unconstrained values of the model's free parameters — estimated jointly with the
            state (augmented state, persistence forecast). Not with ``letkf``.
        param_infl: inflation of the parameter anomalies (default: ``infl``).
        localization: ``{"state_coords": (n,), "obs_coords": (m,), "radius": r, "period": L or None}``.
    """
    check_choice("ensemble method", method, ["sqrt", "pertobs", "letkf"])
    _, dt_ = step_function(model, dt)
    steps = obs.step_indices(dt_, t0).tolist()
    Ne = leaves(E0)[0].shape[0]
    p = 0 if params is None else params.shape[-1]
    if params is not None:
        if params.shape != (Ne, len(model.free_parameter_names())):
            raise ShapeError(
                f"params has shape {tuple(params.shape)}; expected (Ne={Ne}, "
                f"p={len(model.free_parameter_names())})"
                f" for free parameters {model.free_parameter_names()}"
            )
        if method == "letkf":
            raise ConfigError("LETKF with global parameters is not supported; use method='sqrt' or 'pertobs'")
    taper = None
    if method == "letkf":
        if not localization:
            raise ConfigError("method='letkf' needs localization={'state_coords', 'obs_coords', 'radius'}")
        taper = localization_taper(
            localization["state_coords"],
            localization["obs_coords"],
            localization["radius"],
            period=localization.get("period"),
        )
    t_start = time.perf_counter()
    E, U = E0, params
    means, fmeans, spreads, Us = [], [], [], []
    k = 0
    it = range(len(steps))
    bar = tqdm(it, desc=f"EnKF[{method}]", leave=False) if (progress and tqdm is not None) else it
    for i in bar:
        with torch.no_grad(), model.using(U) if p else contextlib.nullcontext():
            E = propagate(model, E, steps[i] - k, t0=t0 + k * dt_, dt=dt_)
            HE = obs.operator(E)
        k = steps[i]
        X = flatten_batched(E)
        fmeans.append(X.mean(0))
        hw, yw, keep = _observed(obs, i, HE.reshape(Ne, -1))
        if method == "letkf":
            Xa = letkf_analysis(X, hw, yw, taper[:, keep.cpu()])
        else:
            Z = torch.cat([X, U.to(X)], dim=1) if p else X
            Za = enkf_analysis(Z, hw, yw, method=method, generator=generator)
            Xa = Za[:, : X.shape[1]]
            if p:
                U = post_process(Za[:, X.shape[1] :], param_infl if param_infl is not None else infl, False)
        Xa = post_process(Xa, infl, rot, generator)
        E = unflatten_batched(Xa, E)
        means.append(Xa.mean(0))
        spreads.append(Xa.var(0).mean().sqrt())
        if p:
            Us.append(U.clone())
    return EnsembleResult(
        times=obs.times.clone(),
        mean=torch.stack(means),
        spread=torch.stack(spreads),
        forecast_mean=torch.stack(fmeans),
        final=E,
        params=torch.stack(Us) if p else None,
        param_names=model.free_parameter_names() if p else [],
        wall_time=time.perf_counter() - t_start,
    )


# -- ES-MDA ------------------------------------------------------------------------------------------------
@dataclass
class ESMDAResult:
    """Posterior ensemble of parameters (and initial state) from ES-MDA."""

    params: torch.Tensor  # (Ne, p) unconstrained
    param_names: list[str]
    physical: torch.Tensor  # (Ne, p) physical values
    mean: dict[str, float]
    std: dict[str, float]
    raw_mean: dict[str, float]
    raw_std: dict[str, float]
    initial_state: object = None
    history: list[float] = field(default_factory=list)  # mean data misfit ½Σr² per iteration (ensemble mean)
    n_evals: int = 0  # ensemble forward runs (each of Ne members)
    wall_time: float = 0.0
    member_misfit: torch.Tensor | None = None  # (Ne,) data misfit ½Σr² of each final member (its own run)


def esmda(
    model: object,
    obs: ObservationSet,
    state: object,
    params: torch.Tensor,
    *,
    alphas: list[float] | int = 4,
    control_state: bool = False,
    t0: float = 0.0,
    dt: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> ESMDAResult:
    """Ensemble smoother with multiple data assimilation (Emerick & Reynolds 2013).

    ``params`` (Ne, p): prior ensemble of the unconstrained free parameters (draw it from the priors, see
    :func:`sample_prior`); ``state``: initial state with leading dim Ne (updated too if ``control_state``).
    ``alphas``: inflation coefficients with Σ 1/α = 1 (an int n means n × α = n). Each iteration runs the
    whole
    window for all members at once, perturbs the observations with √α σ ε and applies the Kalman update with
    covariances estimated from the ensemble.
    """
    if isinstance(alphas, int):
        alphas = [float(alphas)] * alphas
    if abs(sum(1.0 / a for a in alphas) - 1.0) > 1e-6:
        raise ConfigError(f"ES-MDA coefficients must satisfy Σ 1/α = 1; got {alphas}")
    names = model.free_parameter_names()
    Ne = params.shape[0]
    if params.shape != (Ne, len(names)):
        raise ShapeError(f"params has shape {tuple(params.shape)}; expected (Ne, p={len(names)}) for {names}")
    t_start = time.perf_counter()
    U, X0 = params.clone(), state
    hist = []
    n_evals = 0
    mask = obs.mask
    if obs.values.ndim != 2:
        raise ShapeError("ES-MDA takes observations of shape (n_t, m)")
    sig = obs.sigma if obs.cov is None else None
    if sig is None:
        raise ObservationError("ES-MDA supports diagonal errors (sigma) only")
    yt = obs.transform(torch.where(mask, obs.values, torch.zeros_like(obs.values)))[mask]
    s = sig[mask]
    seq = tqdm(alphas, desc="ES-MDA", leave=False) if (progress and tqdm is not None) else alphas
    for a in seq:
        with torch.no_grad(), model.using(U):
            pred = predict(model, X0, obs, t0=t0, dt=dt)  # (n_t, Ne, m)
        n_evals += 1
        h = obs.transform(pred).permute(1, 0, 2)[:, mask]  # (Ne, M)
        hist.append(float(0.5 * (((h.mean(0) - yt) / s) ** 2).sum()))
        hw, yw = h / s, yt / s
        Z = [U]
        if control_state:
            Z.append(flatten_batched(X0))
        Zm = torch.cat(Z, dim=1)
        _, A = center(Zm)
        _, Yw = center(hw)
        eps = torch.randn(hw.shape, generator=generator, dtype=hw.dtype) * math.sqrt(a)
        D = yw + eps - hw
        C = Yw @ Yw.T + a * (Ne - 1) * torch.eye(Ne, dtype=hw.dtype)
        Zm = Zm + torch.linalg.solve(C, Yw @ D.T).T @ A
        U = Zm[:, : U.shape[1]]
        if control_state:
            X0 = unflatten_batched(Zm[:, U.shape[1] :], X0)
    with torch.no_grad(), model.using(U):
        pred = predict(model, X0, obs, t0=t0, dt=dt)
    h = obs.transform(pred).permute(1, 0, 2)[:, mask]
    hist.append(float(0.5 * (((h.mean(0) - yt) / s) ** 2).sum()))
    member_misfit = 0.5 * (((h - yt) / s) ** 2).sum(-1)
    phys = torch.stack([model.parameter_spec(n).transform.forward(U[:, i]) for i, n in enumerate(names)], 1)
    return ESMDAResult(
        params=U,
        param_names=names,
        physical=phys,
        mean={n: float(phys[:, i].mean()) for i, n in enumerate(names)},
        std={n: float(phys[:, i].std()) for i, n in enumerate(names)},
        raw_mean={n: float(U[:, i].mean()) for i, n in enumerate(names)},
        raw_std={n: float(U[:, i].std()) for i, n in enumerate(names)},
        initial_state=X0 if control_state else None,
        history=hist,
        n_evals=n_evals + 1,
        wall_time=time.perf_counter() - t_start,
        member_misfit=member_misfit,
    )


def sample_prior(model: object, Ne: int, generator: torch.Generator | None = None, dtype=torch.float64):
    """(Ne, p) draws of the free parameters' Gaussian priors (unconstrained); every free one needs a prior."""
    cols = []
    for n in model.free_parameter_names():
        pr = model.parameter_spec(n).prior
        if pr is None:
            raise ConfigError(f"parameter {n!r} has no prior; call model.set_prior({n!r}, mean, std) first")
        cols.append(pr.mean + pr.std * torch.randn(Ne, generator=generator, dtype=dtype))
    return torch.stack(cols, 1)
