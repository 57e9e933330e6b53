"""QG models: two-layer (pyqg ``QGModel``), N-layer (``LayeredModel``), single-layer (``BTModel``).

Every physical parameter is a declared :class:`~pelagos.core.Model` parameter (float64, differentiable, may
carry a leading batch dim); geometry (nx, ny, L, W) and ``dt`` are fixed attributes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from ..core.errors import ConfigError
from .base import SpectralQG


class QGModel(SpectralQG):
    """Two-layer QG model with pyqg's parameter names, units and defaults.

    q₁ = ∇²ψ₁ + F₁(ψ₂ − ψ₁), q₂ = ∇²ψ₂ + F₂(ψ₁ − ψ₂), F₁ = rd⁻²/(1+δ), F₂ = δF₁, δ = H₁/H₂;
    ∂t qᵢ + J(ψᵢ, qᵢ) + Uᵢ∂x qᵢ + Qy,ᵢ ∂x ψᵢ = ssd − [i=2] rek ∇²ψ₂,
    Qy₁ = β + F₁(U₁−U₂), Qy₂ = β − F₂(U₁−U₂).

    Args (units): nx, ny grid points; L, W domain size [m]; dt [s]; rek [s⁻¹]; beta [m⁻¹ s⁻¹]; rd [m];
    delta [-]; H1 [m]; U1, U2 [m s⁻¹]; filterfac [-]; parameterization: a closure
    (:mod:`pelagos.qg.parameterizations`); dtype float64 (default, pyqg-exact) or float32.
    """

    nz = 2

    def __init__(
        self,
        *,
        beta: float = 1.5e-11,
        rd: float = 15000.0,
        delta: float = 0.25,
        H1: float = 500.0,
        U1: float = 0.025,
        U2: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self._declare("beta", beta, "m-1 s-1", (None, None), "meridional gradient of the Coriolis parameter")
        self._declare("rd", rd, "m", (1.0, None), "first baroclinic deformation radius")
        self._declare("delta", delta, "-", (1e-6, None), "layer thickness ratio H1/H2")
        self._declare("H1", H1, "m", (1e-6, None), "upper layer thickness")
        self._declare("U1", U1, "m s-1", (None, None), "upper layer background zonal velocity")
        self._declare("U2", U2, "m s-1", (None, None), "lower layer background zonal velocity")

    def _F(self) -> tuple[torch.Tensor, torch.Tensor]:
        rd, delta = self.param("rd"), self.param("delta")
        F1 = rd**-2 / (1.0 + delta)
        return F1, delta * F1

    def _layers(self):
        F1, F2 = self._F()
        beta, U1, U2 = self.param("beta"), self.param("U1"), self.param("U2")
        F1, F2, beta, U1, U2 = torch.broadcast_tensors(F1, F2, beta, U1, U2)
        S = torch.stack([torch.stack([-F1, F1], -1), torch.stack([F2, -F2], -1)], -2)
        Ubg = torch.stack([U1, U2], -1)
        Qy = torch.stack([beta + F1 * (U1 - U2), beta - F2 * (U1 - U2)], -1)
        H1 = self.param("H1").expand_as(F1)
        Hi = torch.stack([H1, H1 / self.param("delta").expand_as(F1)], -1)
        return S, Ubg, Qy, Hi

    def _inversion(self, S: torch.Tensor) -> torch.Tensor:
        # pyqg's closed form for two layers (bit-for-bit the same arithmetic): det = κ²(κ² + F1 + F2)
        F1, F2 = -S[..., 0, 0], -S[..., 1, 1]
        F1, F2 = F1[..., None, None], F2[..., None, None]
        wv2 = self.grid.wv2
        det = wv2 * (wv2 + F1 + F2)
        zero = det == 0
        det_inv = torch.where(zero, 0.0, 1.0 / torch.where(zero, 1.0, det))
        a00 = -(wv2 + F2) * det_inv
        a01 = -F1 * det_inv.expand_as(a00)
        a10 = -F2 * det_inv.expand_as(a00)
        a11 = -(wv2 + F1) * det_inv
        return torch.stack([torch.stack([a00, a01], -3), torch.stack([a10, a11], -3)], -4)


class LayeredModel(SpectralQG):
    """N-layer QG model (pyqg ``LayeredModel`` for nz ≠ 2): thicknesses ``H`` [m], densities ``rho``
    [kg m⁻³] (reduced gravities g'ᵢ₊½ = g(ρᵢ₊₁−ρᵢ)/ρᵢ), background zonal velocities ``U`` [m s⁻¹],
    Coriolis ``f`` [s⁻¹], ``beta`` [m⁻¹ s⁻¹]. Stretching matrix rows: Sᵢ,ᵢ₋₁ = f²/(Hᵢ g'ᵢ₋½),
    Sᵢ,ᵢ₊₁ = f²/(Hᵢ g'ᵢ₊½), Sᵢᵢ = −(sum of the two); Qy = β − S·U.

    Per-layer parameters are declared as scalars ``H_0 … H_{nz-1}``, ``rho_0 …``, ``U_0 …``.
    """

    def __init__(
        self,
        *,
        nz: int = 3,
        beta: float = 1.5e-11,
        f: float = 0.0001236812857687059,
        g: float = 9.81,
        H: Sequence[float] | None = None,
        rho: Sequence[float] | None = None,
        U: Sequence[float] | None = None,
        **kwargs,
    ) -> None:
        if not isinstance(nz, int) or nz < 2:
            raise ConfigError(f"nz = {nz!r}: LayeredModel needs at least 2 layers (use BTModel for one)")
        self.nz = nz
        super().__init__(**kwargs)
        H = [500.0] + [1750.0] * (nz - 1) if H is None else list(H)
        rho = [1025.0 + 0.3 * i for i in range(nz)] if rho is None else list(rho)
        U = [0.025 * (nz - 1 - i) for i in range(nz)] if U is None else list(U)
        for name, v in (("H", H), ("rho", rho), ("U", U)):
            if len(v) != nz:
                raise ConfigError(f"{name} has {len(v)} entries; LayeredModel(nz={nz}) needs one per layer")
        if any(r1 <= r0 for r0, r1 in itertools.pairwise(rho)):
            raise ConfigError(f"rho = {rho}: densities must increase downwards (positive reduced gravities)")
        self.g = float(g)
        self._declare("beta", beta, "m-1 s-1", (None, None), "meridional gradient of the Coriolis parameter")
        self._declare("f", f, "s-1", (1e-12, None), "Coriolis parameter")
        for i in range(nz):
            self._declare(f"H_{i}", H[i], "m", (1e-6, None), f"thickness of layer {i}")
            self._declare(f"rho_{i}", rho[i], "kg m-3", (1e-6, None), f"density of layer {i}")
            self._declare(f"U_{i}", U[i], "m s-1", (None, None), f"background zonal velocity of layer {i}")

    def _layers(self):
        nz = self.nz
        Hi = torch.stack(torch.broadcast_tensors(*[self.param(f"H_{i}") for i in range(nz)]), -1)
        rho = torch.stack(torch.broadcast_tensors(*[self.param(f"rho_{i}") for i in range(nz)]), -1)
        Ubg = torch.stack(torch.broadcast_tensors(*[self.param(f"U_{i}") for i in range(nz)]), -1)
        f2 = self.param("f") ** 2
        gp = self.g * (rho[..., 1:] - rho[..., :-1]) / rho[..., :-1]  # (…, nz-1)
        f2 = f2.reshape(*f2.shape, 1)
        up = f2 / (Hi[..., :-1] * gp)  # coupling of layer i to i+1, i = 0 … nz-2
        down = f2 / (Hi[..., 1:] * gp)  # coupling of layer i+1 to i
        S = torch.diag_embed(torch.nn.functional.pad(-up, (0, 1)) + torch.nn.functional.pad(-down, (1, 0)))
        S = S + torch.diag_embed(up, 1) + torch.diag_embed(down, -1)
        Qy = self.param("beta")[..., None] - (S @ Ubg[..., None])[..., 0]
        return S, Ubg, Qy, Hi


class BTModel(SpectralQG):
    """Single-layer (barotropic, or equivalent-barotropic with ``rd``) QG model (pyqg ``BTModel``).

    q = ∇²ψ − ψ/rd², ∂t q + J(ψ, q) + U ∂x q + β ∂x ψ = ssd − rek ∇²ψ.
    ``rd = 0`` means rd = ∞ (pure 2-D flow).
    Defaults as pyqg: beta 0, rd 0, H 1, U 0 (and the base class's rek, filterfac, dt).
    pyqg 0.7.2 inverts with ``a = −(1/κ² + 1/rd²)`` (a bug for rd > 0); pelagos uses the correct
    ``a = −1/(κ² + 1/rd²)``, so the two agree only for ``rd = 0``.
    """

    nz = 1

    def __init__(
        self, *, beta: float = 0.0, rd: float = 0.0, H: float = 1.0, U: float = 0.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self._declare("beta", beta, "m-1 s-1", (None, None), "meridional gradient of the Coriolis parameter")
        self._declare(
            "kd2", 0.0 if not rd else float(rd) ** -2, "m-2", (0.0, None), "deformation wavenumber² 1/rd²"
        )
        self._declare("H", H, "m", (1e-6, None), "layer thickness")
        self._declare("U", U, "m s-1", (None, None), "background zonal velocity")

    def _layers(self):
        kd2 = self.param("kd2")
        S = -kd2[..., None, None]
        return S, self.param("U")[..., None], self.param("beta")[..., None], self.param("H")[..., None]

    def _inversion(self, S: torch.Tensor) -> torch.Tensor:
        wv2 = self.grid.wv2
        kd2 = -S[..., 0, 0]
        den = wv2 + kd2[..., None, None]
        zero = wv2 == 0
        a = torch.where(zero, 0.0, -1.0 / torch.where(zero, 1.0, den))
        return a[..., None, None, :, :]
