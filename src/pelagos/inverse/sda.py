"""Score-based data assimilation (SDA) core: diffusion prior of trajectories, likelihood score, sampler.

Rozet & Louppe, *Score-based Data Assimilation* (NeurIPS 2023) and its two-layer QG study, implemented from
the equations (see docs/sda_model.md):

- :class:`VPSDE` — variance-preserving perturbation ``x(t) = alpha(t) x + sigma(t) eps``, ``t`` in [0, 1],
  cosine schedule ``alpha(t) = cos(omega t)**2``, ``omega = arccos(sqrt(eta))``,
  ``sigma(t)**2 = 1 - alpha(t)**2 + eta**2`` (so ``alpha(0) = 1, sigma(0) = eta, alpha(1) = eta,
  sigma(1) = 1``). It wraps a noise predictor ``eps_net(x_t, t)`` (e.g.
  :class:`pelagos.nn.score.LocalScoreNet`); score ``= -eps / sigma``; Tweedie denoiser
  ``E[x | x_t] = (x_t - sigma eps) / alpha``; denoising score matching loss :meth:`VPSDE.loss`.
- :class:`ComposedScore` — a full-trajectory noise predictor assembled from a *local* one that sees windows
  of ``2k+1`` states (unfold into all windows, apply, fold back: first ``k`` states from the first window,
  the centre of every window, last ``k`` states from the last window).
- :class:`GaussianScore` — posterior noise predictor for ``y = A(x) + N(0, std**2)``: the likelihood
  ``p(y | x_t) ~ N(y | A(x_hat(x_t)), std**2 + gamma (sigma/alpha)**2)`` differentiated through the denoiser
  (the "gamma term" accounts for the denoiser's error); ``A`` is any differentiable callable, e.g. a
  ``pelagos.core.operators`` operator.
- :func:`sample` — predictor (exponential integrator, deterministic DDIM step) plus ``corrections`` Langevin
  corrector steps per step with normalised step size ``tau``.
- :func:`train_step`, :func:`fit`, :func:`random_windows`, :class:`EMA` — a small training helper.

Shapes: the event shape ``shape`` of a :class:`VPSDE` is that of one sample (e.g. ``(L, C, H, W)``);
tensors carry one leading batch axis ``(B, *shape)``. All functions follow the dtype and device of their
inputs (float32 default; float64 works).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from ..core.errors import ConfigError, ShapeError

__all__ = [
    "EMA",
    "VPSDE",
    "ComposedScore",
    "GaussianScore",
    "fit",
    "random_windows",
    "sample",
    "train_step",
]

EpsNet = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) or () -> broadcastable against a (B, *event) tensor of ``ndim`` dims."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim)) if v.ndim else v


class VPSDE(nn.Module):
    """Variance-preserving diffusion around a noise predictor.

    Args:
        eps_net: ``eps_net(x_t (B, *shape), t (B,)) -> (B, *shape)`` the network (an ``nn.Module`` is
            registered as a sub-module, so ``sde.parameters()`` are the network's); it predicts the noise
            ``eps`` (``parametrization='eps'``) or ``v = alpha eps - sigma x`` (``'v'``).
        shape: event shape of one sample, e.g. ``(L, C, H, W)`` (used by :func:`sample`; may be ``()`` or
            any shape when only :meth:`loss` is used with explicit data).
        alpha: schedule, ``'cos'`` (default), ``'lin'`` (``1 - (1 - eta) t``) or ``'exp'``
            (``exp(log(eta) t**2)``).
        eta: noise floor (dimensionless): ``sigma(0) = eta``, ``alpha(1) = eta``.
        parametrization: ``'eps'`` (default, the SDA study's: the network predicts ``eps``, loss
            ``||net - eps||**2``) or ``'v'`` (the network predicts ``v = alpha eps - sigma x``, loss
            ``||net - v||**2``, and ``eps = (sigma x_t + alpha net) / (1 + eta**2)``). With ``'eps'`` the
            sampler amplifies the network's error at high noise by up to ``1/eta`` (the denoiser is
            ``(x_t - sigma eps) / alpha``): a briefly trained network gives diverging samples (measured:
            benchmarks/sda_parametrization.py, docs/sda_model.md). ``'v'`` bounds that error (the denoiser
            becomes ``(alpha x_t - sigma net) / (1 + eta**2)``): prefer it for short trainings.
    """

    def __init__(
        self,
        eps_net: EpsNet,
        shape: Sequence[int] = (),
        alpha: str = "cos",
        eta: float = 1e-3,
        parametrization: str = "eps",
    ) -> None:
        super().__init__()
        if parametrization not in ("eps", "v"):
            raise ConfigError(f"VPSDE: parametrization must be 'eps' or 'v'; got {parametrization!r}")
        self.parametrization = parametrization
        if alpha not in ("cos", "lin", "exp"):
            raise ConfigError(f"VPSDE: alpha must be 'cos', 'lin' or 'exp'; got {alpha!r}")
        if not 0.0 < eta < 1.0:
            raise ConfigError(f"VPSDE: eta must be in (0, 1); got {eta}")
        self.eps_net = eps_net
        self.shape = torch.Size(shape)
        self.schedule = alpha
        self.eta = float(eta)
        self.omega = math.acos(math.sqrt(self.eta))

    # --- schedule ---------------------------------------------------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Signal coefficient ``alpha(t)`` (decreasing from 1 at t=0 to eta at t=1)."""
        t = torch.as_tensor(t)
        if self.schedule == "cos":
            return torch.cos(self.omega * t) ** 2
        if self.schedule == "lin":
            return 1 - (1 - self.eta) * t
        return torch.exp(math.log(self.eta) * t**2)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise std ``sigma(t) = sqrt(1 - alpha**2 + eta**2)`` (increasing from eta to 1)."""
        return torch.sqrt(1 - self.alpha(t) ** 2 + self.eta**2)

    # --- networks -------------------------------------------------------------------------------------
    def _t(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Perturb clean ``x`` (B, *shape) to time ``t`` (scalar or (B,)): returns ``(x_t, eps)``."""
        t = self._t(t, x)
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return _bcast(self.alpha(t), x.ndim) * x + _bcast(self.sigma(t), x.ndim) * eps, eps

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Noise prediction at ``(x_t, t)`` (the network's output, or derived from its ``v``)."""
        t = self._t(t, x_t)
        out = self.eps_net(x_t, t)
        if self.parametrization == "eps":
            return out
        a, s = _bcast(self.alpha(t), x_t.ndim), _bcast(self.sigma(t), x_t.ndim)
        return (s * x_t + a * out) / (1 + self.eta**2)

    def score(self, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """``grad log p_t(x_t) = -eps / sigma(t)``."""
        t = self._t(t, x_t)
        return -self.eps(x_t, t) / _bcast(self.sigma(t), x_t.ndim)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Tweedie denoiser ``E[x | x_t] = (x_t - sigma eps) / alpha``."""
        t = self._t(t, x_t)
        a, s = _bcast(self.alpha(t), x_t.ndim), _bcast(self.sigma(t), x_t.ndim)
        return (x_t - s * self.eps(x_t, t)) / a

    def loss(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Denoising score matching: ``mean || eps_net(alpha x + sigma eps, t) - eps ||**2``, ``t ~ U(0, 1)``
        per sample (target ``v = alpha eps - sigma x`` instead of ``eps`` with ``parametrization='v'``).
        ``weight`` (broadcastable to x) gives element weights: ``(err * w).mean() / w.mean()``."""
        t = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        x_t, eps = self.forward(x, t, generator=generator)
        if self.parametrization == "v":
            a, s = _bcast(self.alpha(t), x.ndim), _bcast(self.sigma(t), x.ndim)
            eps = a * eps - s * x
        err = (self.eps_net(x_t, t) - eps).square()
        if weight is None:
            return err.mean()
        w = torch.as_tensor(weight, dtype=x.dtype, device=x.device).expand_as(err)
        return (err * w).mean() / w.mean()


class ComposedScore(nn.Module):
    """Full-trajectory noise predictor from a local one trained on windows of ``window = 2k+1`` states.

    ``kernel(x_w (N, window, *state), t (N,)) -> (N, window, *state)``. For ``x`` (B, L, *state) with
    ``L >= window`` every one of the ``L - 2k`` windows is evaluated at once (windows are folded into the
    batch axis, so memory grows with ``(L - 2k) * window``; chunk with ``chunk``), and the result keeps the
    first ``k`` states of the first window, the centre state of every window and the last ``k`` states of the
    last window.
    """

    def __init__(self, kernel: EpsNet, window: int, chunk: int | None = None) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ConfigError(f"ComposedScore: window must be odd and >= 1 (2k+1); got {window}")
        self.kernel, self.window, self.chunk = kernel, int(window), chunk

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        B, n_states = x.shape[:2]
        w, k = self.window, self.window // 2
        if n_states < w:
            raise ShapeError(f"ComposedScore: trajectory length {n_states} < window {w}; give >= {w} states")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(B)
        n = n_states - w + 1
        wins = x.unfold(1, w, 1)  # (B, n, *state, w)
        wins = wins.movedim(-1, 2).flatten(0, 1)  # (B*n, w, *state)
        tt = t.repeat_interleave(n)
        if self.chunk:
            out = torch.cat(
                [
                    self.kernel(wins[i : i + self.chunk], tt[i : i + self.chunk])
                    for i in range(0, wins.shape[0], self.chunk)
                ]
            )
        else:
            out = self.kernel(wins, tt)
        out = out.unflatten(0, (B, n))  # (B, n, w, *state)
        return torch.cat([out[:, 0, :k], out[:, :, k], out[:, -1, k + 1 :]], dim=1)


class GaussianScore(nn.Module):
    """Posterior noise predictor for ``y = A(x) + N(0, std**2)`` around a prior :class:`VPSDE`.

    ``eps(x_t | y) = eps(x_t) - sigma(t) grad_{x_t} log p(y | x_t)`` with the Gaussian approximation
    ``p(y | x_t) ~ N(y | A(x_hat), Sigma_t)`` around the prior's Tweedie denoiser ``x_hat = E[x | x_t]``; the
    gradient goes through the network (autograd) unless ``detach=True`` (then the network's Jacobian is
    replaced by the identity: cheaper, cruder). Two choices of ``Sigma_t``:

    - ``covariance='gamma'`` (the SDA study): ``Sigma_t = std**2 + gamma (sigma/alpha)**2`` (diagonal), a
      heuristic for the denoiser's error that keeps the guidance weak at high noise;
    - ``covariance='tweedie'``: ``Sigma_t = std**2 + A Cov[x | x_t] A^T`` with Tweedie's
      ``Cov[x | x_t] = (sigma**2/alpha) d x_hat / d x_t`` (network Jacobian by vector-Jacobian products,
      assumed symmetric; ``A`` linearised at ``x_hat``), solved by ``cg_iters`` conjugate-gradient
      iterations per sample (as in MMPS, Rozet et al. 2024). Exact for a Gaussian prior and linear ``A``;
      each iteration costs one extra backward pass through the network.

    Args:
        y: observations, shaped like ``A(x)`` for one sample (broadcast over the batch) or for the batch.
        A: differentiable observation operator ``A(x (B, *shape)) -> (B, *obs)`` (a plain callable or a
            ``pelagos.core.operators`` operator).
        std: observation error std (same units as y), scalar or tensor broadcastable to ``A(x)``.
        sde: the prior :class:`VPSDE`.
        gamma: variance of the denoiser error relative to ``(sigma/alpha)**2`` (the study: 1e-2; 3e-2 on
            Lorenz); larger is more robust at high noise, smaller is sharper.
        detach: do not differentiate through the network (identity Jacobian).
        covariance: ``'gamma'`` or ``'tweedie'`` (above).
        cg_iters: CG iterations of ``'tweedie'`` (the observation count per sample makes it exact).
    """

    def __init__(
        self,
        y: torch.Tensor,
        A: Callable[[torch.Tensor], torch.Tensor],
        std: float | torch.Tensor,
        sde: VPSDE,
        gamma: float | torch.Tensor = 1e-2,
        detach: bool = False,
        covariance: str = "gamma",
        cg_iters: int = 4,
    ) -> None:
        super().__init__()
        if not callable(A):
            raise ConfigError("GaussianScore: A must be a callable observation operator x -> A(x)")
        if float(torch.as_tensor(std).min()) <= 0:
            raise ConfigError("GaussianScore: std must be > 0 (observation error standard deviation)")
        if covariance not in ("gamma", "tweedie"):
            raise ConfigError(f"GaussianScore: covariance must be 'gamma' or 'tweedie'; got {covariance!r}")
        if covariance == "tweedie" and cg_iters < 1:
            raise ConfigError(f"GaussianScore: cg_iters must be >= 1; got {cg_iters}")
        # python numbers kept in float64 (cast to the state's dtype at use, no float32 round-off)
        f64 = torch.float64
        self.register_buffer("y", y if torch.is_tensor(y) else torch.as_tensor(y, dtype=f64))
        self.register_buffer("std", std if torch.is_tensor(std) else torch.as_tensor(std, dtype=f64))
        self.A, self.sde, self.gamma, self.detach = A, sde, gamma, detach
        self.covariance, self.cg_iters = covariance, int(cg_iters)

    @property
    def shape(self) -> torch.Size:
        return self.sde.shape

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.sde.alpha(t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sde.sigma(t)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Posterior noise prediction at ``(x_t, t)`` (no graph kept)."""
        t = self.sde._t(t, x_t)
        a, s = _bcast(self.sde.alpha(t), x_t.ndim), _bcast(self.sde.sigma(t), x_t.ndim)
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            eps = self.sde.eps(x, t)
            x_hat = (x - s * (eps.detach() if self.detach else eps)) / a
            if self.covariance == "gamma":
                err = self.y.to(x) - self.A(x_hat)
                ratio = (s / a).reshape(-1)  # (B,)
                ratio = ratio.reshape(ratio.shape + (1,) * (err.ndim - 1)) if err.ndim else ratio
                var = self.std.to(x) ** 2 + self.gamma * ratio**2
                log_p = -0.5 * (err.square() / var).sum()
                (grad,) = torch.autograd.grad(log_p, x)
            else:
                grad = self._tweedie_grad(x, x_hat, a, s)
        return (eps - s * grad).detach()

    def _tweedie_grad(
        self, x: torch.Tensor, x_hat: torch.Tensor, a: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        xh = x_hat.detach().requires_grad_(True)
        Ax = self.A(xh)
        err = (self.y.to(x) - Ax).detach()
        red = tuple(range(1, err.ndim))
        c = (s**2 / a).reshape(-1)
        c = c.reshape(c.shape + (1,) * (x.ndim - 1))

        def At(v: torch.Tensor) -> torch.Tensor:  # A^T v at x_hat
            return torch.autograd.grad(Ax, xh, v, retain_graph=True)[0]

        def Jt(u: torch.Tensor) -> torch.Tensor:  # (d x_hat / d x_t)^T u
            if self.detach:
                return u / a
            return torch.autograd.grad(x_hat, x, u, retain_graph=True)[0]

        # A w by the double-vjp trick (works for any autograd-differentiable A)
        dummy = torch.zeros_like(Ax, requires_grad=True)
        g = torch.autograd.grad(Ax, xh, dummy, create_graph=True)[0]

        def Af(w: torch.Tensor) -> torch.Tensor:
            return torch.autograd.grad(g, dummy, w, retain_graph=True)[0]

        var_y = (self.std.to(x) ** 2).expand_as(err)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return var_y * v + Af(c * Jt(At(v)))

        def dot(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            return (p * q).sum(dim=red, keepdim=True) if red else p * q

        # batched conjugate gradients on (Sigma_y + A Cov A^T) v = err, one system per sample
        v = err / var_y
        r = err - matvec(v)
        p, rr = r, dot(r, r)
        for _ in range(self.cg_iters):
            Ap = matvec(p)
            step = rr / dot(p, Ap).clamp_min(torch.finfo(x.dtype).tiny)
            v = v + step * p
            r = r - step * Ap
            rr_new = dot(r, r)
            p = r + rr_new / rr.clamp_min(torch.finfo(x.dtype).tiny) * p
            rr = rr_new
        return Jt(At(v.detach()))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        return self.eps(x_t, t)


def sample(
    model: VPSDE | GaussianScore,
    shape: Sequence[int] | None = None,
    batch: int = 1,
    steps: int = 256,
    corrections: int = 1,
    tau: float = 0.5,
    generator: torch.Generator | None = None,
    x1: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw ``batch`` samples ``(batch, *shape)`` from the prior (a :class:`VPSDE`) or a posterior (a
    :class:`GaussianScore`, or anything with ``alpha``, ``sigma`` and ``eps``).

    Reverse time ``t = 1 -> 0`` on a uniform grid of ``steps`` steps from ``x(1) ~ N(0, I)`` (or ``x1``):
    predictor ``x <- (a'/a) x + (s' - (a'/a) s) eps(x, t)`` (exponential integrator), then ``corrections``
    Langevin steps at ``t' = t - 1/steps``: ``delta = tau / mean(eps**2)``, ``x <- x - s' (delta eps +
    sqrt(2 delta) z)``. ``shape`` defaults to the model's event shape, dtype and device to those of the
    model's parameters (torch's defaults without any). ``generator`` must live on the sampling device.
    """
    if steps < 1 or corrections < 0 or tau <= 0:
        raise ConfigError(
            f"sample: need steps >= 1, corrections >= 0, tau > 0; got {steps}, {corrections}, {tau}"
        )
    if x1 is None:
        shape = tuple(model.shape if shape is None else shape)
        p = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        if device is None and p is not None:
            device = p.device
        if dtype is None and p is not None and p.is_floating_point():
            dtype = p.dtype
        x = torch.randn((batch, *shape), generator=generator, dtype=dtype, device=device)
    else:
        x = x1.clone()
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    red = tuple(range(1, x.ndim))
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="sda sample")
    with torch.no_grad():
        for i in iterator:
            # schedule on scalars (one time for the whole batch), networks see (B,) times
            t0, t1 = times[i], times[i + 1]
            a, s, an, sn = (
                float(v) for v in (model.alpha(t0), model.sigma(t0), model.alpha(t1), model.sigma(t1))
            )
            t = torch.full((x.shape[0],), float(t0), dtype=x.dtype, device=x.device)
            tn = torch.full_like(t, float(t1))
            r = an / a
            x = r * x + (sn - r * s) * model.eps(x, t)
            for _ in range(corrections):
                e = model.eps(x, tn)
                delta = tau / e.square().mean(dim=red, keepdim=True).clamp_min(1e-12)
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                x = x - sn * (delta * e + (2 * delta).sqrt() * z)
    return x


# --- training helpers -----------------------------------------------------------------------------------
def random_windows(
    x: torch.Tensor, window: int, generator: torch.Generator | None = None, per_item: int = 1
) -> torch.Tensor:
    """One (or ``per_item``) random contiguous window(s) of ``window`` states from each trajectory of ``x``
    (B, L, ...) -> (B * per_item, window, ...). The start indices are drawn on the CPU (``generator`` too)."""
    B, n_states = x.shape[:2]
    if n_states < window:
        raise ShapeError(f"random_windows: trajectories of {n_states} states < window {window}")
    start = torch.randint(0, n_states - window + 1, (B * per_item,), generator=generator)
    idx = start[:, None] + torch.arange(window)
    rows = torch.arange(B).repeat_interleave(per_item)[:, None]
    return x[rows.to(x.device), idx.to(x.device)]


class EMA:
    """Exponential moving average of a module's parameters (and buffers copied): ``avg <- d avg + (1-d) p``.

    ``ema.update()`` after each optimiser step; ``ema.module`` is the averaged copy (use it to sample);
    ``ema.state_dict()`` / ``load_state_dict`` for checkpoints.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA: decay must be in [0, 1); got {decay}")
        self.source, self.decay = module, float(decay)
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        for pa, ps in zip(self.module.parameters(), self.source.parameters()):
            pa.lerp_(ps.detach(), 1.0 - self.decay)
        for ba, bs in zip(self.module.buffers(), self.source.buffers()):
            ba.copy_(bs)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


def train_step(
    sde: VPSDE,
    batch: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None = None,
    clip: float | None = None,
    weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """One optimiser step on the DSM loss of ``batch`` (B, *shape); returns the loss value."""
    sde.train()
    optimizer.zero_grad(set_to_none=True)
    loss = sde.loss(batch, weight=weight, generator=generator)
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(sde.parameters(), clip)
    optimizer.step()
    if ema is not None:
        ema.update()
    return float(loss.detach())


def fit(
    sde: VPSDE,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    epochs: int = 1,
    *,
    window: int | None = None,
    valid: Iterable | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | str | None = None,
    ema: EMA | float | None = None,
    clip: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    callback: Callable[[int, dict], None] | None = None,
    progress: bool = False,
) -> dict:
    """Train ``sde``'s network on the DSM loss.

    ``loader`` yields tensors (or tuples whose first item is the tensor) of trajectories (B, L, ...); with
    ``window`` one random window of that many states is cut from each trajectory at every step (the local
    training of SDA). ``scheduler='linear'`` decays the learning rate linearly to 0 over the epochs (stepped
    per epoch). ``ema`` a decay (e.g. 0.999) or an :class:`EMA`: validation then uses the averaged weights.
    Returns ``{'train': [...], 'valid': [...], 'time': [...], 'ema': EMA | None}`` (mean loss per epoch).
    """
    if epochs < 1:
        raise ConfigError(f"fit: epochs must be >= 1; got {epochs}")
    if scheduler == "linear":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1 - e / epochs)
    elif isinstance(scheduler, str):
        raise ConfigError(f"fit: scheduler must be 'linear', None or a torch LR scheduler; got {scheduler!r}")
    if isinstance(ema, int | float) and not isinstance(ema, bool):
        ema = EMA(sde, float(ema))

    def prep(b):
        b = b[0] if isinstance(b, tuple | list) else b
        if device is not None:
            b = b.to(device)
        if window is not None and b.shape[1] != window:
            b = random_windows(b, window, generator)
        return b

    history: dict = {"train": [], "valid": [], "time": [], "ema": ema}
    epoch_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="sda fit")
    for epoch in epoch_iter:
        t0 = time.perf_counter()
        losses = [train_step(sde, prep(b), optimizer, ema, clip, generator=generator) for b in loader]
        history["train"].append(sum(losses) / max(len(losses), 1))
        if valid is not None:
            net = ema.module if ema is not None else sde
            net.eval()
            with torch.no_grad():
                vl = [float(net.loss(prep(b), generator=generator)) for b in valid]
            history["valid"].append(sum(vl) / max(len(vl), 1))
        if scheduler is not None:
            scheduler.step()
        history["time"].append(time.perf_counter() - t0)
        if callback is not None:
            callback(epoch, history)
    return history
