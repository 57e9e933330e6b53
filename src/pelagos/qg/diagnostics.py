"""pyqg's diagnostics (same names and definitions), computed from a state, batched and differentiable.

``diagnostics(model, state)`` evaluates every diagnostic at ``state`` the way pyqg does inside its step (after
the tendency is formed, before the AB3 update, with the state's bootstrap level and previous tendencies).
Spectra are ``(B, [nz,] nl, nk)`` over the rFFT half plane; scalars are ``(B,)`` or ``(B, nz)``.
Units: KE spectra m² s⁻² per mode, energy budget terms m² s⁻³, enstrophy terms s⁻³.

Budgets, per wavenumber (tested): with E = −½ Σᵢ Hᵢ/H Re(ψ̂ᵢ* q̂ᵢ)/M²,
``KEflux_div + APEflux_div + APEgenspec + KEfrictionspec + paramspec = dE/dt`` (before the filter) and
``Dissspec`` is the filter's share; likewise for the enstrophy Z = ½ Σᵢ Hᵢ/H |q̂ᵢ|²/M² with
``ENSflux + ENSgenspec + ENSfrictionspec + ENSparamspec`` and ``ENSDissspec``.
"""

from __future__ import annotations

import math

import torch

from .base import Flow, QGState

DIAGNOSTICS = {
    "Ensspec": "enstrophy spectrum |qh|²/M² (B, nz, nl, nk)",
    "KEspec": "kinetic energy spectrum κ²|ph|²/M² (B, nz, nl, nk)",
    "EKE": "mean eddy kinetic energy ½⟨u²+v²⟩ per layer (B, nz)",
    "EKEdiss": "energy dissipation by bottom drag (B,)",
    "KEfrictionspec": "energy spectrum of bottom drag (B, nl, nk)",
    "Dissspec": "energy spectrum of the small-scale filter (B, nl, nk)",
    "ENSDissspec": "enstrophy spectrum of the small-scale filter (B, nl, nk)",
    "paramspec": "energy spectrum of the parameterization (B, nl, nk)",
    "ENSparamspec": "enstrophy spectrum of the parameterization (B, nl, nk)",
    "entspec": "barotropic enstrophy spectrum (B, nl, nk)",
    "ENSflux": "enstrophy transfer spectrum (B, nl, nk)",
    "ENSgenspec": "enstrophy generation by the background PV gradient (B, nl, nk)",
    "ENSfrictionspec": "enstrophy spectrum of bottom drag (B, nl, nk)",
    "APEgenspec": "APE generation spectrum by the background shear (B, nl, nk)",
    "KEflux_div": "kinetic energy transfer spectrum, layer form (B, nl, nk)",
    "APEflux_div": "available potential energy transfer spectrum, layer form (B, nl, nk)",
    "paramspec_KEflux": "KE transfer by the parameterization (B, nl, nk)",
    "paramspec_APEflux": "APE transfer by the parameterization (B, nl, nk)",
    # two-layer only (pyqg QGModel)
    "KEflux": "kinetic energy transfer spectrum (two-layer) (B, nl, nk)",
    "APEflux": "available potential energy transfer spectrum (two-layer) (B, nl, nk)",
    "APEgen": "total APE generation (two-layer) (B,)",
}


def _advect(model, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Spectral flux-form advection ``ik·FFT(u x) + il·FFT(v x)`` (pyqg ``_advect``)."""
    c = model.coefficients()
    return c["ik"] * model.fft(u * x) + c["il"] * model.fft(v * x)


def _hsum(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σᵢ wᵢ xᵢ over the layer dim; ``w`` (…, nz) parameters, ``x`` (B, nz, nl, nk)."""
    return (w[..., None, None] * x).sum(-3)


def _ab_filter_term(model, state: QGState, f: Flow) -> torch.Tensor:
    """(filtr − 1)·(qh + dt₁ dqh/dt + dt₂ dqh/dt₋₁ + dt₃ dqh/dt₋₂): what the filter removes in this step."""
    c = model.coefficients()
    w = c["ab"][state["ablevel"].long()][:, :, None, None, None]
    new = state["qh"] + w[:, 0] * f.dqhdt + w[:, 1] * state["dqhdt_p"] + w[:, 2] * state["dqhdt_pp"]
    return (c["filtr"] - 1) * new


def diagnostics(model, state: QGState, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Instantaneous pyqg diagnostics of ``state`` (all of :data:`DIAGNOSTICS` that apply, or ``names``)."""
    c = model.coefficients()
    f = model.tendency(state)
    M2 = float(model.grid.M) ** 2
    Hi = c["Hi"]
    H = Hi.sum(-1, keepdim=True)
    wH = Hi / H
    wv2 = c["wv2"]
    ph, qh = f.ph, f.qh
    rek = model.param("rek").to(ph.real.dtype)
    rek = rek.reshape(*rek.shape, 1, 1) if rek.ndim else rek
    dqh_param = f.dqh_param if f.dqh_param is not None else torch.zeros_like(qh)
    out: dict[str, torch.Tensor] = {}
    want = set(DIAGNOSTICS if names is None else names)

    def need(*keys: str) -> bool:
        return any(k in want for k in keys)

    if need("Ensspec"):
        out["Ensspec"] = qh.abs() ** 2 / M2
    if need("KEspec"):
        out["KEspec"] = wv2 * ph.abs() ** 2 / M2
    if need("EKE"):
        out["EKE"] = 0.5 * (f.u**2 + f.v**2).mean(dim=(-2, -1))
    if need("EKEdiss"):
        out["EKEdiss"] = (wH[..., -1] * model.param("rek")).to(ph.real.dtype) * (
            f.u[:, -1] ** 2 + f.v[:, -1] ** 2
        ).mean(dim=(-2, -1))
    if need("KEfrictionspec"):
        out["KEfrictionspec"] = -rek * wH[..., -1, None, None] * wv2 * ph[:, -1].abs() ** 2 / M2
    if need("ENSfrictionspec"):
        out["ENSfrictionspec"] = (
            rek * wH[..., -1, None, None] * wv2 * (qh[:, -1].conj() * ph[:, -1]).real / M2
        )
    if need("Dissspec", "ENSDissspec"):
        diss = _ab_filter_term(model, state, f)
        out["Dissspec"] = -_hsum(Hi, (ph.conj() * diss).real) / H[..., None] / model.dt / M2
        out["ENSDissspec"] = _hsum(Hi, (qh.conj() * diss).real) / H[..., None] / model.dt / M2
    if need("paramspec"):
        out["paramspec"] = -_hsum(wH, (ph.conj() * dqh_param).real) / M2
    if need("ENSparamspec"):
        out["ENSparamspec"] = _hsum(wH, (qh.conj() * dqh_param).real) / M2
    if need("entspec"):
        out["entspec"] = _hsum(wH, qh).abs() ** 2 / M2
    S = c["S"]
    Sph = (S[..., :, :, None, None] * ph.unsqueeze(-4)).sum(-3)
    if need("ENSflux"):
        Jq = _advect(model, f.q, f.u, f.v)
        out["ENSflux"] = -_hsum(wH, (qh.conj() * Jq).real) / M2
    if need("ENSgenspec"):
        out["ENSgenspec"] = _hsum(wH, (-c["ikQy"] * Sph.conj() * ph).real) / M2
    if need("APEgenspec"):
        Uk = c["Ubg"] * c["k"]
        out["APEgenspec"] = _hsum(wH, Uk * (1j * ph.conj() * Sph).real) / M2
    if need("KEflux_div", "KEflux"):
        xi = model.ifft(-wv2 * ph)
        Jpxi = _advect(model, xi, f.u, f.v)
        out["KEflux_div"] = _hsum(wH, (ph.conj() * Jpxi).real) / M2
    if need("APEflux_div"):
        JSp = _advect(model, model.ifft(Sph), f.u, f.v)
        out["APEflux_div"] = _hsum(wH, (ph.conj() * JSp).real) / M2
    if need("paramspec_KEflux"):
        term = (c["a"] * dqh_param.unsqueeze(-4)).sum(-3)
        out["paramspec_KEflux"] = wv2 * _hsum(wH, (ph.conj() * term).real) / M2
    if need("paramspec_APEflux"):
        a_dq = (c["a"] * dqh_param.unsqueeze(-4)).sum(-3)
        term = (S[..., :, :, None, None] * a_dq.unsqueeze(-4)).sum(-3)
        out["paramspec_APEflux"] = -_hsum(wH, (ph.conj() * term).real) / M2
    if model.nz == 2 and hasattr(model, "_F") and need("KEflux", "APEflux", "APEgen"):
        rdt = ph.real.dtype
        delta, rd = model.param("delta").to(rdt), model.param("rd").to(rdt)
        U = (model.param("U1") - model.param("U2")).to(rdt)
        coef = rd**-2 * delta / (delta + 1) ** 2  # rd⁻² δ₁ δ₂, shape () or (B,)

        def b(x):  # broadcast a parameter against (B, nl, nk)
            return x.reshape(*x.shape, 1, 1) if x.ndim else x

        d1, d2 = b(delta / (delta + 1)), b(1 / (delta + 1))
        out["KEflux"] = (
            (d1 * ph[:, 0] * Jpxi[:, 0].conj()).real + (d2 * ph[:, 1] * Jpxi[:, 1].conj()).real
        ) / M2
        p = model.ifft(ph)
        ubt, vbt = d1 * f.u[:, 0] + d2 * f.u[:, 1], d1 * f.v[:, 0] + d2 * f.v[:, 1]
        Jptpc = -_advect(model, p[:, 0] - p[:, 1], ubt, vbt)
        out["APEflux"] = b(coef) * ((ph[:, 0] - ph[:, 1]) * Jptpc.conj()).real / M2
        k = c["k"]
        bt = d1 * ph[:, 0] + d2 * ph[:, 1]
        bc = (ph[:, 0] - ph[:, 1]).conj()
        # pyqg adds the interior k columns 1 … nk−3 a second time (half plane standing for the full plane)
        full = (1j * k * bt * bc).real.sum(dim=(-2, -1))
        full = full + (1j * k[:, 1:-2] * bt[..., 1:-2] * bc[..., 1:-2]).real.sum(dim=(-2, -1))
        out["APEgen"] = U * coef * full / M2
    return {k: v for k, v in out.items() if k in want}


def energy(model, state: QGState) -> torch.Tensor:
    """Total (kinetic + available potential) energy per unit mass, E = −½ Σᵢ Hᵢ/H ⟨ψᵢ qᵢ⟩ [m² s⁻²], (B,)."""
    c = model.coefficients()
    f = model.flow(state)
    wH = c["Hi"] / c["Hi"].sum(-1, keepdim=True)
    return -0.5 * (wH[..., None, None] * model.ifft(f.ph) * state["q"]).sum(-3).mean(dim=(-2, -1))


def enstrophy(model, state: QGState) -> torch.Tensor:
    """Layer-weighted potential enstrophy Z = ½ Σᵢ Hᵢ/H ⟨qᵢ²⟩ [s⁻²], (B,)."""
    c = model.coefficients()
    wH = c["Hi"] / c["Hi"].sum(-1, keepdim=True)
    return 0.5 * (wH[..., None, None] * state["q"] ** 2).sum(-3).mean(dim=(-2, -1))


def spec_var(model, xh: torch.Tensor) -> torch.Tensor:
    """Variance of a real field from its rFFT coefficients (pyqg ``spec_var``): Σ over the half plane."""
    var = 2 * xh.abs() ** 2 / float(model.grid.M) ** 2
    var = torch.cat([var[..., :1] / 2, var[..., 1:-1], var[..., -1:] / 2], dim=-1)
    return var.sum(dim=(-2, -1))


def calc_ispec(model, var_dens: torch.Tensor, averaging: bool = True, truncate: bool = True):
    """Isotropic spectrum of a (…, nl, nk) spectral density (pyqg ``calc_ispec``): returns ``(kr, phr)``.

    ``kr`` are the bin centres [rad m⁻¹]; with ``averaging`` the density is the mean over each annulus
    times its circumference (so ``Σ phr·dkr ≈`` the variance); otherwise the annulus sum divided by dkr.
    Differentiable with respect to ``var_dens``.
    """
    g = model.grid
    vd = torch.cat([var_dens[..., :1] / 2, var_dens[..., 1:-1], var_dens[..., -1:] / 2], dim=-1)
    ll_max, kk_max = float(g.ll.abs().max()), float(g.kk.abs().max())
    kmax = min(ll_max, kk_max) if truncate else math.sqrt(ll_max**2 + kk_max**2)
    dk, dl = 2 * math.pi / g.L, 2 * math.pi / g.W
    dkr = math.sqrt(dk**2 + dl**2)
    left = torch.arange(0.0, kmax, dkr, dtype=torch.float64)
    wv = g.wv.cpu()
    phr = []
    for i in range(left.numel()):
        hi = wv <= left[i] + dkr if i == left.numel() - 1 else wv < left[i + 1]
        mask = ((wv >= left[i]) & hi).to(var_dens.device)
        sel = vd[..., mask]
        val = (
            sel.mean(-1) * (float(left[i]) + dkr / 2) * math.pi / (dk * dl)
            if averaging
            else sel.sum(-1) / dkr
        )
        phr.append(2 * val)
    return left + dkr / 2, torch.stack(phr, -1)
