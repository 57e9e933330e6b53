"""Subgrid closures for the QG models, composable with ``+`` and scalar ``*`` (pyqg's parameterizations).

A closure maps the current :class:`~pelagos.qg.base.Flow` (q, ψ̂, u, v of the state being stepped) to either
a PV tendency ``dq`` (B, nz, ny, nx) [s⁻²] (``kind = "q"``) or a momentum forcing ``(du, dv)`` [m s⁻²]
(``kind = "uv"``); the model adds ``FFT(dq)`` or ``−il FFT(du) + ik FFT(dv)`` to its spectral tendency, as
pyqg's kernel does. Closures are ``torch.nn.Module`` s, so a neural closure's weights are model parameters and
gradients flow through the solver into them.

- :class:`Smagorinsky` (uv): ν = (C_S Δ)² √(2(Sxx² + Syy² + 2Sxy²)), du = 2(∂x(νSxx) + ∂y(νSxy)), …
- :class:`BackscatterBiharmonic` (q, Jansen & Held 2014): biharmonic Smagorinsky dissipation plus a negative
  viscosity backscatter returning a fraction ``back_constant`` of the dissipated energy.
- :class:`ZannaBolton2020` (uv): equation-discovered momentum forcing with κ_BC = ``constant`` [m²].
- :class:`NeuralClosure`: any ``nn.Module`` acting on q (or u, v) channels.
"""

from __future__ import annotations

import torch

from ..core.errors import ConfigError
from ..core.safe import safe_sqrt
from .base import Flow


class Parameterization(torch.nn.Module):
    """Base class: subclasses set ``kind`` ("q" or "uv") and implement ``forward(flow)``."""

    kind: str = "q"

    def spectral_tendency(self, flow: Flow) -> torch.Tensor:
        """This closure's contribution to the spectral PV tendency dq̂/dt (B, nz, nl, nk)."""
        m = flow.model
        out = self(flow)
        if self.kind == "q":
            return m.fft(out)
        du, dv = out
        c = m.coefficients()
        return -c["il"] * m.fft(du) + c["ik"] * m.fft(dv)

    def __add__(self, other: Parameterization) -> Parameterization:
        if not isinstance(other, Parameterization):
            return NotImplemented
        return CompositeParameterization(self, other)

    def __mul__(self, weight: float | torch.Tensor) -> Parameterization:
        return WeightedParameterization(self, weight)

    __rmul__ = __mul__


class CompositeParameterization(Parameterization):
    """Sum of closures; q- and uv-closures may be mixed (their spectral tendencies are added)."""

    def __init__(self, *terms: Parameterization) -> None:
        super().__init__()
        flat = []
        for t in terms:
            flat += list(t.terms) if isinstance(t, CompositeParameterization) else [t]
        self.terms = torch.nn.ModuleList(flat)
        kinds = {t.kind for t in flat}
        self.kind = kinds.pop() if len(kinds) == 1 else "mixed"

    def forward(self, flow: Flow):
        if self.kind == "mixed":
            raise ConfigError(
                "a mix of q- and uv-closures has no single grid-space output; use spectral_tendency"
            )
        outs = [t(flow) for t in self.terms]
        if self.kind == "q":
            return sum(outs[1:], outs[0])
        return sum(o[0] for o in outs), sum(o[1] for o in outs)

    def spectral_tendency(self, flow: Flow) -> torch.Tensor:
        if self.kind != "mixed":
            return super().spectral_tendency(flow)
        parts = [t.spectral_tendency(flow) for t in self.terms]
        return sum(parts[1:], parts[0])

    def extra_repr(self) -> str:
        return " + ".join(repr(t) for t in self.terms)


class WeightedParameterization(Parameterization):
    """``weight * closure`` (weight a float or a tensor, e.g. a learnable scalar)."""

    def __init__(self, term: Parameterization, weight: float | torch.Tensor) -> None:
        super().__init__()
        self.term = term
        self.kind = term.kind
        self.weight = weight

    def forward(self, flow: Flow):
        out = self.term(flow)
        if self.kind == "q":
            return self.weight * out
        return self.weight * out[0], self.weight * out[1]

    def spectral_tendency(self, flow: Flow) -> torch.Tensor:
        return self.weight * self.term.spectral_tendency(flow)


def _derivs(flow: Flow, fh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∂x and ∂y in grid space of a field given by its rFFT ``fh``."""
    m = flow.model
    c = m.coefficients()
    return m.ifft(c["ik"] * fh), m.ifft(c["il"] * fh)


class Smagorinsky(Parameterization):
    """Smagorinsky (1963) eddy viscosity on the anomaly velocities; ``constant`` C_S [-] (pyqg default 0.1).

    The square root uses :func:`pelagos.core.safe_sqrt` so a flow at rest has a finite gradient.
    """

    kind = "uv"

    def __init__(self, constant: float | torch.Tensor = 0.1) -> None:
        super().__init__()
        self.constant = constant

    def viscosity(self, flow: Flow) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eddy viscosity ν [m² s⁻¹] and the strain components Sxx, Syy, Sxy [s⁻¹]."""
        m = flow.model
        c = m.coefficients()
        uh, vh = m.fft(flow.u), m.fft(flow.v)
        Sxx = m.ifft(uh * c["ik"])
        Syy = m.ifft(vh * c["il"])
        Sxy = 0.5 * m.ifft(uh * c["il"] + vh * c["ik"])
        tiny = torch.finfo(Sxx.dtype).tiny
        nu = (self.constant * m.grid.dx) ** 2 * safe_sqrt(2 * (Sxx**2 + Syy**2 + 2 * Sxy**2), eps=tiny)
        return nu, Sxx, Syy, Sxy

    def forward(self, flow: Flow) -> tuple[torch.Tensor, torch.Tensor]:
        m = flow.model
        c = m.coefficients()
        nu, Sxx, Syy, Sxy = self.viscosity(flow)
        nSxx, nSxy, nSyy = m.fft(nu * Sxx), m.fft(nu * Sxy), m.fft(nu * Syy)
        du = 2 * (m.ifft(nSxx * c["ik"]) + m.ifft(nSxy * c["il"]))
        dv = 2 * (m.ifft(nSxy * c["ik"]) + m.ifft(nSyy * c["il"]))
        return du, dv

    def extra_repr(self) -> str:
        return f"constant={float(self.constant):g}"


class BackscatterBiharmonic(Parameterization):
    """Biharmonic Smagorinsky dissipation + energy backscatter (Jansen & Held 2014; pyqg defaults 0.08, 0.99).

    dq = D + B with D = −∇²(Δ² ν_S ∇⁴ψ) and B = −C_B ∇⁴ψ · Σ Hᵢ⟨ψD⟩ / (Σ Hᵢ⟨ψ∇⁴ψ⟩ + eps).
    """

    kind = "q"

    def __init__(
        self,
        smag_constant: float | torch.Tensor = 0.08,
        back_constant: float | torch.Tensor = 0.99,
        eps: float = 1e-32,
    ) -> None:
        super().__init__()
        self.smagorinsky = Smagorinsky(smag_constant)
        self.back_constant = back_constant
        self.eps = eps

    def forward(self, flow: Flow) -> torch.Tensor:
        m = flow.model
        c = m.coefficients()
        lap = -c["wv2"]  # (ik)² + (il)²
        psi = m.ifft(flow.ph)
        lap_lap_psi = m.ifft(lap**2 * flow.ph)
        nu = self.smagorinsky.viscosity(flow)[0]
        dissipation = -m.ifft(lap * m.fft(lap_lap_psi * m.grid.dx**2 * nu))
        Hi = c["Hi"]  # (nz,) or (B, nz) against (B, nz) layer means
        num = (Hi * (psi * dissipation).mean(dim=(-2, -1))).sum(-1)
        den = (Hi * (psi * lap_lap_psi).mean(dim=(-2, -1))).sum(-1) + self.eps
        ratio = (num / den)[:, None, None, None]
        return dissipation - self.back_constant * lap_lap_psi * ratio

    def extra_repr(self) -> str:
        return (
            f"smag_constant={float(self.smagorinsky.constant):g}, back_constant={float(self.back_constant):g}"
        )


class ZannaBolton2020(Parameterization):
    """Zanna & Bolton (2020) momentum forcing; ``constant`` κ_BC [m²] (pyqg default −46 761 284)."""

    kind = "uv"

    def __init__(self, constant: float | torch.Tensor = -46761284.0) -> None:
        super().__init__()
        self.constant = constant

    def forward(self, flow: Flow) -> tuple[torch.Tensor, torch.Tensor]:
        m = flow.model
        c = m.coefficients()
        uh, vh = m.fft(flow.u), m.fft(flow.v)
        ux, uy = _derivs(flow, uh)
        vx, vy = _derivs(flow, vh)
        zeta, shear, stretch = vx - uy, vx + uy, ux - vy
        rv_stretch = m.fft(zeta * stretch)
        rv_shear = m.fft(zeta * shear)
        sum_sqs = m.fft(zeta**2 + shear**2 + stretch**2) / 2.0
        du = self.constant * m.ifft(c["ik"] * (sum_sqs - rv_shear) + c["il"] * rv_stretch)
        dv = self.constant * m.ifft(c["il"] * (sum_sqs + rv_shear) + c["ik"] * rv_stretch)
        return du, dv

    def extra_repr(self) -> str:
        return f"constant={float(self.constant):g}"


class NeuralClosure(Parameterization):
    """Wrap any ``nn.Module`` as a closure.

    ``inputs="q"`` feeds the PV layers (B, nz, ny, nx); ``"uv"`` feeds (u₁…u_nz, v₁…v_nz) (B, 2nz, ny, nx);
    ``"quv"`` both. Inputs are divided by ``input_scale`` and the output multiplied by ``output_scale`` so the
    network sees and produces O(1) numbers. ``kind="q"``: the net returns dq (B, nz, ny, nx) [s⁻²];
    ``kind="uv"``: it returns (B, 2nz, ny, nx) split into du, dv [m s⁻²].
    """

    def __init__(
        self,
        net: torch.nn.Module,
        *,
        inputs: str = "q",
        kind: str = "q",
        input_scale: float | torch.Tensor | None = None,
        output_scale: float | torch.Tensor = 1.0,
    ) -> None:
        super().__init__()
        if inputs not in ("q", "uv", "quv"):
            raise ConfigError(f"NeuralClosure inputs = {inputs!r}; valid: 'q', 'uv', 'quv'")
        if kind not in ("q", "uv"):
            raise ConfigError(f"NeuralClosure kind = {kind!r}; valid: 'q', 'uv'")
        self.net, self.inputs, self.kind = net, inputs, kind
        f64 = torch.float64  # scales stay exact; cast to the state's dtype where used
        self.register_buffer(
            "input_scale", torch.as_tensor(1.0 if input_scale is None else input_scale, dtype=f64)
        )
        self.register_buffer("output_scale", torch.as_tensor(output_scale, dtype=f64))

    def features(self, flow: Flow) -> torch.Tensor:
        parts = {"q": [flow.q], "uv": [flow.u, flow.v], "quv": [flow.q, flow.u, flow.v]}[self.inputs]
        x = torch.cat(parts, dim=1)
        return x / self.input_scale.to(x.dtype)

    def forward(self, flow: Flow):
        x = self.features(flow)
        y = self.net(x.to(next(self.net.parameters()).dtype)).to(flow.q.dtype) * self.output_scale.to(
            flow.q.dtype
        )
        if self.kind == "q":
            return y
        nz = flow.q.shape[1]
        return y[:, :nz], y[:, nz:]
