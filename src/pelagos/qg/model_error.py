"""Learning a model-error correction from data-assimilation increments on the doubly periodic QG models.

Cycled 4D-Var with a biased model leaves analysis increments δ_k = x_a(t_k) − M(x_a(t_{k−1})); averaged over
many cycles they estimate what the model misses per assimilation interval. The pieces here:

- :class:`SpectralCovariance`: a homogeneous background-error covariance B for PV fields (…, nz, ny, nx) with
  a std per layer (the layers' PV differ by an order of magnitude) and an optional Gaussian correlation;
- :func:`streamfunction`: ψ from q (the model's own inversion);
- :class:`StencilCorrection`: a linear, local correction δq = Σ w ⋆ ψ + b (one circular convolution of the
  streamfunction of all layers), fitted in closed form to increments by :func:`fit_stencil`;
- :func:`increments`: backgrounds and increments from a :class:`pelagos.inverse.fourdvar.CycledResult`.

The correction is applied once per interval by :class:`pelagos.qg.interval.QGInterval` (``correction=``),
exactly as it was fitted: δ_k ≈ correction(x_a(t_{k−1})). A missing linear tendency such as −β ∂ψ/∂x is a
stencil on ψ, so a few dozen weights suffice and can be compared with the analytic term.
"""

from __future__ import annotations

import math

import torch

from ..core.covariance import Covariance
from .base import SpectralQG


def streamfunction(model: SpectralQG, q: torch.Tensor) -> torch.Tensor:
    """ψ [m² s⁻¹] (B, nz, ny, nx) from PV ``q`` [s⁻¹] (B, nz, ny, nx), differentiable."""
    return model.ifft(model._invert(model.fft(q), model.coefficients()))


class SpectralCovariance(Covariance):
    """B for PV fields: ``S v = σ_layer · IFFT(A(κ) FFT(v))``, Gaussian correlation of length ``ell`` [m].

    ``A(κ) ∝ exp(−κ² ℓ² / 4)`` (the square root of a Gaussian spectrum) is normalised so that each grid value
    has standard deviation ``std[layer]`` (units of q, s⁻¹); the correlation between points r apart is
    ≈ exp(−r²/2ℓ²). Acts on the last three dims (nz, ny, nx) of its argument; ``n`` is nx because
    :func:`pelagos.core.covariance.as_covariance` checks the last dimension only.
    """

    def __init__(self, model: SpectralQG, std: torch.Tensor | list[float] | float, ell: float) -> None:
        self.nz, self.ny, self.nx, self.n = model.nz, model.ny, model.nx, model.nx
        kx = 2 * math.pi * torch.fft.fftfreq(model.nx, d=model.L / model.nx, dtype=torch.float64)
        ky = 2 * math.pi * torch.fft.fftfreq(model.ny, d=model.W / model.ny, dtype=torch.float64)
        k2 = ky[:, None] ** 2 + kx[None, :] ** 2
        amp = torch.exp(-k2 * ell**2 / 4)
        self.amp = amp / amp.pow(2).mean().sqrt()  # unit pointwise variance for white v (orthonormal FFT)
        s = torch.as_tensor(std, dtype=torch.float64).expand(self.nz)
        self.std = s.clone()

    def sqrt_apply(self, v: torch.Tensor) -> torch.Tensor:
        vh = torch.fft.fft2(v, norm="ortho") * self.amp.to(v.device)
        out = torch.fft.ifft2(vh, norm="ortho").real
        return out * self.std.to(out)[:, None, None]


def _patches(psi: torch.Tensor, radius: int) -> torch.Tensor:
    """Circular neighbourhoods: (B, nz, ny, nx) → (B·ny·nx, nz·(2r+1)²)."""
    k = 2 * radius + 1
    p = torch.nn.functional.pad(psi, (radius,) * 4, mode="circular")
    cols = torch.nn.functional.unfold(p, k)  # (B, nz·k², ny·nx)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class StencilCorrection(torch.nn.Module):
    """δq = conv(ψ/ψ_scale, weight) + bias: a linear correction per interval [s⁻¹], local in ψ.

    ``weight`` (nz, nz, 2r+1, 2r+1) acts on ψ divided by ``psi_scale`` (nz,) [m² s⁻¹] (conditioning only);
    circular padding (doubly periodic domain). Inputs are PV fields q (B, nz, ny, nx) [s⁻¹] of ``model``.
    """

    def __init__(
        self, model: SpectralQG, weight: torch.Tensor, bias: torch.Tensor, psi_scale: torch.Tensor
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("weight", weight.to(torch.float64))
        self.register_buffer("bias", bias.to(torch.float64))
        self.register_buffer("psi_scale", psi_scale.to(torch.float64))
        self.radius = weight.shape[-1] // 2

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        psi = streamfunction(self.model, q.to(torch.float64)) / self.psi_scale[:, None, None]
        r = self.radius
        p = torch.nn.functional.pad(psi, (r,) * 4, mode="circular")
        return torch.nn.functional.conv2d(p, self.weight, self.bias).to(q.dtype)

    def physical_kernel(self) -> torch.Tensor:
        """The stencil acting on ψ itself: δq = Σ K ⋆ ψ, K (nz_out, nz_in, k, k) [s⁻¹ / (m² s⁻¹)]."""
        return self.weight / self.psi_scale[None, :, None, None]


def fit_stencil(
    model: SpectralQG,
    q_in: torch.Tensor,
    dq: torch.Tensor,
    radius: int = 2,
    ridge: float = 0.0,
    psi_scale: torch.Tensor | None = None,
) -> StencilCorrection:
    """Least-squares stencil with ``dq ≈ correction(q_in)``; closed form via the normal equations.

    ``q_in`` (N, nz, ny, nx) [s⁻¹]: the states the interval starts from (e.g. analyses at t_{k−1});
    ``dq`` (N, nz, ny, nx) [s⁻¹]: the increments at the end of the interval. ``ridge`` is a Tikhonov weight
    relative to the mean diagonal of the normal matrix. Every grid value of every snapshot is a sample, so
    N·ny·nx samples determine nz²(2r+1)² + nz weights.
    """
    with torch.no_grad():
        psi = streamfunction(model, q_in.to(torch.float64))
        scale = psi.std(dim=(0, 2, 3)) if psi_scale is None else psi_scale.to(torch.float64)
        X = _patches(psi / scale[:, None, None], radius)
        X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], dim=1)  # constant → bias
        Y = dq.to(torch.float64).permute(0, 2, 3, 1).reshape(-1, dq.shape[1])  # (B·ny·nx, nz)
        A = X.T @ X
        A = A + ridge * A.diagonal().mean() * torch.eye(A.shape[0], dtype=A.dtype)
        coef = torch.linalg.solve(A, X.T @ Y)  # (nz·k² + 1, nz)
        k = 2 * radius + 1
        nz = dq.shape[1]
        weight = coef[:-1].T.reshape(nz, nz, k, k)
        return StencilCorrection(model, weight, coef[-1], scale)


def increments(model: object, window_starts: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(starts x_a(t_{k−1}), backgrounds M(x_a(t_{k−1})), increments x_a(t_k) − background), each (K−1, …).

    ``window_starts``: ``CycledResult.window_starts`` of cycled 4D-Var with ``lag = shift = 1`` (so that the
    background of window k is the forecast of window k−1's analysis over one interval); ``model`` is the
    (tensor-state) model that cycle used.
    """
    xa = torch.stack([x for _, x in window_starts])
    with torch.no_grad():
        xb = torch.stack([model.step(x) for x in xa[:-1]])
    return xa[:-1], xb, xa[1:] - xb
