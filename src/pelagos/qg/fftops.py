"""Real 2-D FFTs and the two spectral operators of a QG step, with cheaper reverse-mode rules than
PyTorch's own.

PyTorch differentiates ``rfft2`` by zero-padding the half spectrum to the full one and running a complex
c2c transform (at 64² that single backward cost as much as three forward FFTs). The adjoint of the
unnormalised real-to-half-spectrum transform is an unnormalised inverse real transform of the gradient with
the interior columns (0 < k < nx/2) halved: ``irfft2`` counts each of them twice (once for its Hermitian
mirror), while the vector–Jacobian product needs them once, and it keeps only the real part of the k = 0 and
k = nx/2 columns, which is exactly ``Re(Aᴴ g)``. The function is linear, so forward mode (``jvp``) is the
transform itself and ``vmap`` comes from PyTorch's generated rule.

The same adjoint, with the constant spectral factors folded in, gives one-kernel-per-transform backward rules
for the two linear maps of a step that involve an FFT (:func:`velocities`: ψ̂ → (u, v); :func:`divergence`:
(uq, vq) → −(ik FFT(uq) + il FFT(vq))). Recorded with plain autograd, each of them costs 4–6 extra small
kernels in the backward pass (broadcast reductions, zero-filled gradients of the ``select`` of each
component, the interior-column doubling of ``irfft2``'s rule), which at 64² cost as much as the FFTs.
"""

from __future__ import annotations

import torch


def adjoint_weights(nx: int, nk: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(nk,) weights: 1 on the k = 0 column (and k = nx/2 for even nx), ½ on the interior columns."""
    w = torch.full((nk,), 0.5, dtype=dtype, device=device)
    w[0] = 1.0
    if nx % 2 == 0:
        w[-1] = 1.0
    return w


class _Rfft2(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (x,) = inputs
        ctx.shape = tuple(x.shape[-2:])
        ctx.rdtype, ctx.device = x.dtype, x.device

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        ny, nx = ctx.shape
        w = adjoint_weights(nx, g.shape[-1], ctx.rdtype, ctx.device)
        return torch.fft.irfft2(g * w, s=(ny, nx), norm="forward")

    @staticmethod
    def jvp(ctx, t: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(t)


def rfft2(x: torch.Tensor) -> torch.Tensor:
    """``torch.fft.rfft2(x)`` over the last two axes (unnormalised); same values, faster backward."""
    if not (
        torch.is_grad_enabled() and x.requires_grad
    ) and not torch._C._functorch.is_functorch_wrapped_tensor(x):
        return torch.fft.rfft2(x)  # nothing to differentiate: skip the Function's bookkeeping
    return _Rfft2.apply(x)


class _Velocities(torch.autograd.Function):
    """(u, v) = irfft2(op·ψ̂) unnormalised, with op = (−il, ik)/M constant (2, 1, nl, nk)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        ph: torch.Tensor, op: torch.Tensor, adj: torch.Tensor, shape: tuple[int, int]
    ) -> torch.Tensor:
        return torch.fft.irfft2(ph.unsqueeze(-4) * op, s=shape, norm="forward")

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.op, ctx.adj, ctx.shape = inputs

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return (torch.fft.rfft2(g) * ctx.adj).sum(-4), None, None, None

    @staticmethod
    def jvp(ctx, t: torch.Tensor, _op, _adj, _shape) -> torch.Tensor:
        return torch.fft.irfft2(t.unsqueeze(-4) * ctx.op, s=ctx.shape, norm="forward")


class _Divergence(torch.autograd.Function):
    """Σ_c op_c · rfft2(flux_c) over the component axis −4, op = (−ik, −il) constant (2, 1, nl, nk)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(flux: torch.Tensor, op: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return (torch.fft.rfft2(flux) * op).sum(-4)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        flux, ctx.op, ctx.adj = inputs
        ctx.shape = tuple(flux.shape[-2:])

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return torch.fft.irfft2(g.unsqueeze(-4) * ctx.adj, s=ctx.shape, norm="forward"), None, None

    @staticmethod
    def jvp(ctx, t: torch.Tensor, _op, _adj) -> torch.Tensor:
        return (torch.fft.rfft2(t) * ctx.op).sum(-4)


def _tracked(x: torch.Tensor) -> bool:
    return (torch.is_grad_enabled() and x.requires_grad) or torch._C._functorch.is_functorch_wrapped_tensor(x)


def velocities(ph: torch.Tensor, op: torch.Tensor, adj: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Grid (u, v) stacked on axis −4 from ψ̂ (…, nz, nl, nk): ``irfft2(op·ψ̂, norm="forward")``; ``op``
    (2, 1, nl, nk) must be a constant (it carries the 1/M of the inverse transform) and ``adj`` its adjoint
    factor ``conj(op) / adjoint_weights`` (irfft2's adjoint counts the interior columns twice)."""
    if not _tracked(ph):
        return torch.fft.irfft2(ph.unsqueeze(-4) * op, s=shape, norm="forward")
    return _Velocities.apply(ph, op, adj, shape)


def divergence(flux: torch.Tensor, op: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """Spectral ``Σ_c op_c rfft2(flux_c)`` of grid fluxes (…, 2, nz, ny, nx); ``op`` (2, 1, nl, nk) constant,
    ``adj = conj(op) · adjoint_weights``."""
    if not _tracked(flux):
        return (torch.fft.rfft2(flux) * op).sum(-4)
    return _Divergence.apply(flux, op, adj)
