"""Pseudo-spectral layered QG kernel: pyqg's time step, written once for 1, 2 or N layers.

One step (pyqg ``_step_forward``, reproduced operation by operation):

1. invert ``ph = a·qh`` (a = (S − κ²I)⁻¹ per wavenumber, 0 at κ = 0); ``uh = −il ph``, ``vh = ik ph``;
2. flux-form advection without dealiasing: ``dqh/dt = −(ik·FFT((u+U)q) + il·FFT(vq) + ik Qy ph)``;
3. bottom drag ``+ rek κ² ph`` in the lowest layer;
4. parameterizations (q or (u, v) closures) add their spectral tendency;
5. Adams–Bashforth 3 with pyqg's bootstrap (forward Euler, AB2, then AB3) and the exponential filter applied
   to the whole new state: ``qh⁺ = filtr·(qh + dt₁ dqh/dt + dt₂ dqh/dt₋₁ + dt₃ dqh/dt₋₂)``.

State (a dict, so ``rollout``, ``vmap``, ``jvp`` and checkpointing pass through it):
``q`` (B, nz, ny, nx) PV anomaly [s⁻¹], ``qh`` its rFFT (the prognostic variable, as in pyqg), ``dqhdt_p``,
``dqhdt_pp`` the two previous spectral tendencies and ``ablevel`` (B,) the bootstrap level 0, 1, 2 (a float
tensor so that forward-mode AD accepts it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import ConfigError, ShapeError, StabilityError
from ..core.model import Model
from .grid import SpectralGrid

QGState = dict[str, torch.Tensor]


@dataclass
class Flow:
    """Everything a parameterization or a diagnostic may need at one state (pyqg's ``m`` inside a step).

    Spectral arrays are ``(B, nz, nl, nk)``, grid arrays ``(B, nz, ny, nx)``; ``u``, ``v`` are the anomaly
    velocities (m s⁻¹) without the background ``Ubg``.
    """

    model: Any
    q: torch.Tensor
    qh: torch.Tensor
    ph: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    uh: torch.Tensor
    vh: torch.Tensor
    dqhdt: torch.Tensor | None = None
    dqh_param: torch.Tensor | None = None  # the parameterization's share of dqhdt

    @property
    def grid(self) -> SpectralGrid:
        return self.model.grid

    @property
    def p(self) -> torch.Tensor:
        return self.model.ifft(self.ph)

    @property
    def ufull(self) -> torch.Tensor:
        return self.u + self.model.coefficients()["Ubg"]


class SpectralQG(Model):
    """Base of :class:`~pelagos.qg.QGModel`, :class:`~pelagos.qg.LayeredModel`, :class:`~pelagos.qg.BTModel`.

    Subclasses declare their physical parameters and implement :meth:`_layers` returning the stretching
    matrix ``S`` (…, nz, nz) [m⁻²], ``Ubg`` (…, nz) [m s⁻¹], ``Qy`` (…, nz) [m⁻¹ s⁻¹] and ``Hi`` (…, nz) [m],
    and optionally :meth:`_inversion` (the default inverts ``S − κ²I`` per wavenumber).
    """

    nz: int = 1

    def __init__(
        self,
        *,
        nx: int = 64,
        ny: int | None = None,
        L: float = 1e6,
        W: float | None = None,
        dt: float = 7200.0,
        rek: float = 5.787e-7,
        filterfac: float = 23.6,
        parameterization: torch.nn.Module | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"dtype = {dtype}: the QG model runs in torch.float32 or torch.float64")
        if not (float(dt) > 0 and math.isfinite(float(dt))):
            raise ConfigError(f"dt = {dt!r} s: the time step must be a finite positive number of seconds")
        self.grid = SpectralGrid(nx, ny, L, W, device=device)
        self.nx, self.ny, self.L, self.W = self.grid.nx, self.grid.ny, self.grid.L, self.grid.W
        self.dt = float(dt)
        self.dtype = dtype
        self.cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self._declare("rek", rek, "s-1", (0.0, None), "linear bottom (Ekman) drag rate of the lowest layer")
        self._declare("filterfac", filterfac, "-", (0.0, None), "strength of the exponential spectral filter")
        self.parameterization = parameterization
        self._cache: tuple[Any, dict[str, torch.Tensor]] | None = None

    # -- parameters ----------------------------------------------------------------------------------------
    def _declare(self, name: str, default: float, units: str, bounds: tuple, description: str) -> None:
        """Declare in float64 whatever the working dtype (coefficients are formed in float64, as pyqg-jax)."""
        transform = "identity" if bounds[0] == 0.0 or bounds == (None, None) else "auto"
        self.params.declare(
            name,
            default,
            units=units,
            bounds=bounds,
            description=description,
            transform=transform,
            dtype=torch.float64,
        )
        if self.grid.device.type != "cpu":
            self.params.raw[name].data = self.params.raw[name].data.to(self.grid.device)

    @property
    def device(self) -> torch.device:
        return self.grid.device

    # -- subclass hooks -------------------------------------------------------------------------------------
    def _layers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _inversion(self, S: torch.Tensor) -> torch.Tensor:
        """``a[..., i, j, l, k]`` with ``ph_i = Σ_j a_ij qh_j``: inverse of ``S − κ² I``, zero at κ = 0."""
        nz = self.nz
        wv2 = self.grid.wv2
        eye = torch.eye(nz, dtype=torch.float64, device=self.device)
        Mx = S[..., None, None, :, :] - wv2[..., None, None] * eye  # (..., nl, nk, nz, nz)
        zero = wv2 == 0
        Mx = torch.where(zero[..., None, None], -eye, Mx)  # any invertible stand-in at κ = 0
        a = torch.linalg.inv(Mx)
        a = torch.where(zero[..., None, None], 0.0, a)
        return a.movedim(-2, -4).movedim(-1, -3)  # (..., nz, nz, nl, nk)

    # -- derived coefficients (cached while the parameters neither change nor need a gradient) ---------
    def _cache_key(self) -> Any:
        stores = list(self._stores().values())
        if any(s._override is not None for s in stores):
            return None
        raws = [p for s in stores for p in s.raw.values()]
        if torch.is_grad_enabled() and any(p.requires_grad for p in raws):
            return None
        return (self.dt, tuple((id(p), p._version) for p in raws))

    def coefficients(self) -> dict[str, torch.Tensor]:
        """Inversion matrix ``a``, background flow ``Ubg``, linear operator, filter and AB3 weights.

        Shapes carry the parameters' batch dim (if any) in front: ``a`` (…, nz, nz, nl, nk) working dtype,
        ``Ubg`` (…, nz, 1, 1), ``lin`` (…, nz, nl, nk) complex = ``ik Qy − rek κ² [bottom]``,
        ``filtr`` (…, nl, nk).
        """
        key = self._cache_key()
        if key is not None and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        g = self.grid
        S, Ubg, Qy, Hi = self._layers()
        a = self._inversion(S)
        rek = self.param("rek")
        bottom = torch.zeros(self.nz, dtype=torch.float64, device=self.device)
        bottom[-1] = 1.0
        drag = rek.reshape(*rek.shape, 1, 1, 1) * bottom[:, None, None] * g.wv2
        ikQy = 1j * (Qy[..., None, None] * g.k)
        rdt, cdt = self.dtype, self.cdtype
        ik = (1j * g.kk).to(cdt)
        il = (1j * g.ll).to(cdt)[:, None]
        c = {
            "a": a.to(rdt),
            "Ubg": Ubg[..., None, None].to(rdt),
            "ikQy": ikQy.to(cdt),
            "drag": drag.to(rdt),
            "filtr": g.exp_filter(self.param("filterfac")).to(rdt),
            "ik": ik,
            "il": il,
            # stacked operators: velocities from ph, and the divergence of (uq, vq)
            "vel": torch.stack([-il.expand(g.nl, g.nk), ik.expand(g.nl, g.nk)])[:, None],  # (2, 1, nl, nk)
            "div": torch.stack([ik.expand(g.nl, g.nk), il.expand(g.nl, g.nk)])[:, None],
            "Hi": Hi.to(rdt),
            "Qy": Qy.to(rdt),
            "S": S.to(rdt),
            "wv2": g.wv2.to(rdt),
            "k": g.k.to(rdt),
            "l": g.l.to(rdt),
        }
        c["Ubg_uv"] = torch.stack([c["Ubg"], torch.zeros_like(c["Ubg"])], dim=-4)  # (..., 2, nz, 1, 1)
        dt = self.dt
        c["ab"] = torch.tensor(
            [
                [dt, 0.0, 0.0],
                [1.5 * dt, -0.5 * dt, 0.0],
                [23.0 / 12.0 * dt, -16.0 / 12.0 * dt, 5.0 / 12.0 * dt],
            ],
            dtype=rdt,
            device=self.device,
        )
        if key is not None:
            self._cache = (key, c)
        return c

    # -- transforms -----------------------------------------------------------------------------------------
    def fft(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(x)

    def ifft(self, xh: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(xh, s=(self.ny, self.nx))

    # -- states ---------------------------------------------------------------------------------------------
    def state_from_q(self, q: torch.Tensor) -> QGState:
        """A fresh state (bootstrap level 0, no previous tendencies) from PV ``q`` (B, nz, ny, nx) [s⁻¹]."""
        if not torch.is_tensor(q):
            q = torch.as_tensor(q)
        if q.ndim == 3:
            raise ShapeError(
                f"q has shape {tuple(q.shape)}; the QG state needs a leading batch dim: "
                f"(B, {self.nz}, {self.ny}, "
                f"{self.nx}) — use q[None] for one trajectory"
            )
        if q.ndim != 4 or tuple(q.shape[1:]) != (self.nz, self.ny, self.nx):
            raise ShapeError(f"q has shape {tuple(q.shape)}; expected (B, {self.nz}, {self.ny}, {self.nx})")
        q = q.to(dtype=self.dtype, device=self.device)
        qh = self.fft(q)
        zero = torch.zeros_like(qh)
        return {
            "q": self.ifft(qh),
            "qh": qh,
            "dqhdt_p": zero,
            "dqhdt_pp": zero,
            "ablevel": torch.zeros(q.shape[0], dtype=self.dtype, device=self.device),
        }

    def initial_state(self, batch: int = 1, seed: int = 0, q: torch.Tensor | None = None) -> QGState:
        """Seeded random initial condition (pyqg's recipe, see :meth:`random_q`) or the given ``q``."""
        return self.state_from_q(self.random_q(batch, seed) if q is None else q)

    def random_q(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """pyqg-like initial PV: 1e-7·U(0,1) noise plus 1e-6·U(0,1) zonal stripes in the top layer."""
        gen = torch.Generator().manual_seed(int(seed))
        q = torch.zeros(batch, self.nz, self.ny, self.nx, dtype=torch.float64)
        noise = torch.rand(batch, self.ny, self.nx, generator=gen, dtype=torch.float64)
        stripes = torch.rand(batch, 1, self.nx, generator=gen, dtype=torch.float64)
        q[:, 0] = 1e-7 * noise + 1e-6 * stripes
        return q.to(self.dtype).to(self.device)

    # -- the physics ----------------------------------------------------------------------------------------
    def flow(self, state: QGState) -> Flow:
        """Invert PV for streamfunction and velocities (pyqg ``_invert``)."""
        c = self.coefficients()
        qh = state["qh"]
        ph = (c["a"] * qh.unsqueeze(-4)).sum(-3)
        uvh = ph.unsqueeze(-4) * c["vel"]  # (B, 2, nz, nl, nk)
        uv = self.ifft(uvh)
        return Flow(self, state["q"], qh, ph, uv[:, 0], uv[:, 1], uvh[:, 0], uvh[:, 1])

    def tendency(self, state: QGState) -> Flow:
        """``Flow`` of ``state`` with ``dqhdt`` filled: advection, drag and parameterizations."""
        c = self.coefficients()
        f = self.flow(state)
        uv = torch.stack([f.u, f.v], dim=1)
        fluxh = self.fft((uv + c["Ubg_uv"]) * state["q"].unsqueeze(1))
        dqhdt = -((c["div"] * fluxh).sum(1) + c["ikQy"] * f.ph)
        dqhdt = dqhdt + c["drag"] * f.ph
        f.dqhdt = dqhdt
        if self.parameterization is not None:
            f.dqh_param = self.parameterization.spectral_tendency(f)
            f.dqhdt = dqhdt + f.dqh_param
        return f

    def step(self, state: QGState, t: float | torch.Tensor = 0.0) -> QGState:
        """One AB3 step of ``dt`` seconds (pure: returns a new state dict)."""
        c = self.coefficients()
        f = self.tendency(state)
        w = c["ab"][state["ablevel"].long()]  # (B, 3) AB weights for each trajectory's bootstrap level
        w = w[:, :, None, None, None]
        qh = c["filtr"] * (
            state["qh"] + w[:, 0] * f.dqhdt + w[:, 1] * state["dqhdt_p"] + w[:, 2] * state["dqhdt_pp"]
        )
        return {
            "q": self.ifft(qh),
            "qh": qh,
            "dqhdt_p": f.dqhdt,
            "dqhdt_pp": state["dqhdt_p"],
            "ablevel": torch.clamp(state["ablevel"] + 1, max=2),
        }

    # -- stability -------------------------------------------------------------------------------------------
    def cfl(self, state: QGState) -> torch.Tensor:
        """Courant number ``max(|u + Ubg|, |v|)·dt/dx`` per trajectory, shape (B,) (pyqg ``_calc_cfl``)."""
        f = self.flow(state)
        ufull = f.u + self.coefficients()["Ubg"]
        vmax = torch.maximum(ufull.abs().amax(dim=(-3, -2, -1)), f.v.abs().amax(dim=(-3, -2, -1)))
        return vmax * self.dt / self.grid.dx

    def check_cfl(self, state: QGState, limit: float = 1.0) -> None:
        """Raise :class:`StabilityError` if the Courant number reaches ``limit`` or q is not finite."""
        q = state["q"]
        if not bool(torch.isfinite(q).all()):
            bad = (~torch.isfinite(q)).flatten(1).any(1).nonzero().flatten().tolist()
            raise StabilityError(
                f"QG state q is not finite in trajectories {bad}; reduce dt (now {self.dt:g} s)"
            )
        cfl = self.cfl(state).detach()
        if bool((cfl >= limit).any()):
            i = int(cfl.argmax())
            raise StabilityError(
                f"CFL number {float(cfl[i]):.3g} >= {limit:g} in trajectory {i} (dt = {self.dt:g} s, "
                f"dx = {self.grid.dx:g} m); reduce dt or add dissipation"
            )
