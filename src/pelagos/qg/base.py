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
import torch.autograd.forward_ad as fwAD

from ..core.errors import ConfigError, ObservationError, ShapeError, StabilityError
from ..core.model import Coordinate, Model, Variable
from . import _step_c
from .adjoint import QGStep, step_constants
from .fftops import adjoint_weights, divergence, rfft2, velocities
from .fftplan import FFTPlan
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


def _flush_tiny(filtr: torch.Tensor, floor: float = 1e-60) -> torch.Tensor:
    """Zero filter factors below ``floor``: the modes they multiply would otherwise decay into subnormal
    numbers, which make FFTs several times slower on x86 (pyqg keeps them; the difference is < 1e-60)."""
    return torch.where(filtr < floor, torch.zeros_like(filtr), filtr)


def _contiguous(*xs: torch.Tensor) -> bool:
    return all(x.is_contiguous() for x in xs)


def _plain(x: torch.Tensor) -> bool:
    """True outside torch.func transforms (vmap/jvp/grad), where reading values into Python is allowed."""
    return not torch._C._functorch.is_functorch_wrapped_tensor(x)


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
        self._ab_steady: torch.Tensor | None = None

    # -- parameters ----------------------------------------------------------------------------------------
    def _declare(self, name: str, default: float, units: str, bounds: tuple, description: str) -> None:
        """Declare in float64 whatever the working dtype (coefficients are formed in float64, as pyqg-jax)."""
        # positive parameters are optimised in log space; a lower bound of 0 that is actually requested
        # (rek = 0: no drag, filterfac = 0: no filter) keeps the identity transform so 0 stays allowed
        transform = "identity" if bounds == (None, None) or (bounds[0] == 0.0 and default == 0.0) else "auto"
        self.declare_parameter(
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
        # the coefficients depend on this model's own parameters only (closures are applied separately);
        # the raw tensors themselves are part of the key, so a freed id cannot be mistaken for a live one
        store = self.params
        if store.has_overrides:
            return None
        # the ParameterDict's own storage: iterating ParameterDict.values() costs ~6 µs, a tenth of a 64² step
        raws = tuple(store.raw._parameters.values())
        track = torch.is_grad_enabled() and any(p.requires_grad for p in raws)
        if track and torch._C._autograd._top_saved_tensors_default_hooks(False) is not None:
            # inside a checkpointed segment (saved-tensor hooks): the forward and its recomputation must
            # save the same tensors, so build the coefficients afresh in both rather than share a graph
            return None
        return (self.dt, track, raws, tuple(p._version for p in raws))

    def _cache_matches(self, key: Any) -> bool:
        if self._cache is None:
            return False
        old = self._cache[0]
        return (
            old[0] == key[0]
            and old[1] == key[1]
            and len(old[2]) == len(key[2])
            and all(a is b for a, b in zip(old[2], key[2], strict=True))
            and old[3] == key[3]
        )

    def _keep_while_graph_lives(self, entry: tuple[Any, dict[str, torch.Tensor]]) -> None:
        """Cache coefficients that carry an autograd graph (free parameters) until a backward pass reaches
        them. Reusing them across the steps of one rollout saves rebuilding ~40 small tensors per step (it
        tripled the recorded forward at 64²) and lets the backward pass through the coefficients once
        instead of once per step. A backward pass frees their graph, so the first gradient that reaches any
        of them drops the entry; the next forward rebuilds it."""

        def stale(grad: torch.Tensor) -> None:
            if self._cache is entry:
                self._cache = None

        for v in entry[1].values():
            if v.requires_grad:
                v.register_hook(stale)

    def _fixed_coefficients(self) -> dict[str, torch.Tensor]:
        """The operators that depend on the grid, dtype and ``dt`` only (built once, shared by every
        coefficient set: rebuilding them made up most of a rebuild, which each gradient evaluation pays)."""
        key = (self.dt, self.dtype)
        fixed = getattr(self, "_fixed", None)
        if fixed is not None and fixed[0] == key:
            return fixed[1]
        g, rdt, cdt, dt = self.grid, self.dtype, self.cdtype, self.dt
        ik = (1j * g.kk).to(cdt)
        il = (1j * g.ll).to(cdt)[:, None]
        f = {
            "ik": ik,
            "il": il,
            # stacked operators: velocities from ph, and the divergence of (uq, vq)
            "vel": torch.stack([-il.expand(g.nl, g.nk), ik.expand(g.nl, g.nk)])[:, None],  # (2, 1, nl, nk)
            "div": torch.stack([ik.expand(g.nl, g.nk), il.expand(g.nl, g.nk)])[:, None],
            "wv2": g.wv2.to(rdt),
            "k": g.k.to(rdt),
            "l": g.l.to(rdt),
        }
        # fast path: 1/M folded into the velocity operator, so inverse FFTs need no normalisation pass
        M = float(g.M)
        f["vel_M"] = f["vel"] / M
        f["mik"], f["mil"] = -ik, -il
        f["mdiv"] = -f["div"]
        # their adjoints for the hand-written backward rules of qg/fftops.py
        w = adjoint_weights(g.nx, g.nk, rdt, self.device)
        f["vel_M_adj"], f["mdiv_adj"] = f["vel_M"].conj() / w, f["mdiv"].conj() * w
        f["c2r_adj"] = (1.0 / w) / M  # adjoint of the normalised irfft2 giving q from qh
        # real 1-D operands of the compiled kernels (qg/_step_c.py)
        f["wk"] = w
        f["kk"], f["ll"] = g.kk.to(rdt).contiguous(), g.ll.to(rdt).contiguous()
        f["kM"], f["lM"] = (g.kk / M).to(rdt).contiguous(), (g.ll / M).to(rdt).contiguous()
        f["ab"] = torch.tensor(
            [
                [dt, 0.0, 0.0],
                [1.5 * dt, -0.5 * dt, 0.0],
                [23.0 / 12.0 * dt, -16.0 / 12.0 * dt, 5.0 / 12.0 * dt],
            ],
            dtype=rdt,
            device=self.device,
        )
        if not torch._C._are_functorch_transforms_active():  # tensors made under torch.func may be wrappers
            self._fixed = (key, f)
        return f

    def coefficients(self) -> dict[str, torch.Tensor]:
        """Inversion matrix ``a``, background flow ``Ubg``, linear operator, filter and AB3 weights.

        Shapes carry the parameters' batch dim (if any) in front: ``a`` (…, nz, nz, nl, nk) working dtype,
        ``Ubg`` (…, nz, 1, 1), ``lin`` (…, nz, nl, nk) complex = ``ik Qy − rek κ² [bottom]``,
        ``filtr`` (…, nl, nk).
        """
        key = self._cache_key()
        if key is not None and self._cache_matches(key):
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
        c = {
            **self._fixed_coefficients(),
            "a": a.to(rdt),
            "Ubg": Ubg[..., None, None].to(rdt),
            "ikQy": ikQy.to(cdt),
            "drag": drag.to(rdt),
            "filtr": _flush_tiny(
                g.exp_filter(self.param("filterfac")), 1e-60 if rdt == torch.float64 else 1e-30
            ).to(rdt),
            "Hi": Hi.to(rdt),
            "Qy": Qy.to(rdt),
            "S": S.to(rdt),
        }
        c["Ubg_uv"] = torch.stack([c["Ubg"], torch.zeros_like(c["Ubg"])], dim=-4)  # (..., 2, nz, 1, 1)
        # linear part of the tendency, dqh/dt = lin·ph − (ik FFT(uq) + il FFT(vq)): −ik Qy + rek κ² [bottom]
        c["lin"] = c["drag"] - c["ikQy"]
        # real operators for real views of complex fields (no complex promotion), stored with an explicit
        # trailing (re, im) axis of 2: broadcasting a size-1 innermost axis defeats vectorisation (measured at
        # 64²: inversion 23 → 8 µs, filter 8 → 3 µs; at 256² 250 → 70 µs, 100 → 30 µs)
        c["a_r"] = c["a"][..., None].expand(*c["a"].shape, 2).contiguous()
        c["filtr_r"] = c["filtr"][..., None].expand(*c["filtr"].shape, 2).contiguous()
        c["lin_conj"] = c["lin"].detach().conj().resolve_conj()  # used by the backward rule only
        if key is not None:
            self._cache = (key, c)
            if key[1]:
                self._keep_while_graph_lives(self._cache)
        return c

    # -- transforms -----------------------------------------------------------------------------------------
    def fft(self, x: torch.Tensor) -> torch.Tensor:
        return rfft2(x)  # torch.fft.rfft2 with a cheaper backward (see qg/fftops.py)

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

    def initial_state(
        self, batch: int | None = None, *, seed: int = 0, q: torch.Tensor | None = None
    ) -> QGState:
        """Seeded random initial condition (pyqg's recipe, see :meth:`random_q`) or the given ``q``.

        The QG state always has a leading batch dim: ``batch=None`` gives one member ``(1, nz, ny, nx)``.
        """
        return self.state_from_q(self.random_q(1 if batch is None else int(batch), seed) if q is None else q)

    # -- variables: what writers write and observations name --------------------------------------------
    def output_variables(self) -> list[Variable]:
        return qg_variables()

    def output(self, state: QGState | torch.Tensor, t: float = 0.0) -> dict[str, torch.Tensor]:
        """``q``, ``psi``, ``u``, ``v`` on the grid, ``(B, nz, ny, nx)`` each (a PV tensor is accepted)."""
        if torch.is_tensor(state):
            state = {"q": state, "qh": self.fft(state)}
        f = self.flow(state)
        return {"q": state["q"], "psi": self.ifft(f.ph), "u": f.u, "v": f.v}

    def output_coordinates(self) -> dict[str, Coordinate]:
        return qg_coordinates(self)

    def observation_operator(self, variable: str, at: dict | None = None) -> QGPointOperator:
        """``variable`` (``q``, ``psi``, ``u``, ``v``) at points ``at = {"lev": …, "y": …, "x": …}`` (layer
        index, metres): bilinear interpolation on the doubly periodic grid; ``lev`` may be left out for one
        layer."""
        return QGPointOperator(self, self.variable(variable).name, at or {})

    def random_q(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """pyqg-like initial PV: 1e-7·U(0,1) noise plus 1e-6·U(0,1) zonal stripes in the top layer."""
        gen = torch.Generator().manual_seed(int(seed))
        q = torch.zeros(batch, self.nz, self.ny, self.nx, dtype=torch.float64)
        noise = torch.rand(batch, self.ny, self.nx, generator=gen, dtype=torch.float64)
        stripes = torch.rand(batch, 1, self.nx, generator=gen, dtype=torch.float64)
        q[:, 0] = 1e-7 * noise + 1e-6 * stripes
        return q.to(self.dtype).to(self.device)

    # -- the physics ----------------------------------------------------------------------------------------
    def _invert(self, qh: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        """ph = a·qh, multiplying real and imaginary parts by the real ``a`` (no complex copy of ``a``)."""
        qr, a_r = torch.view_as_real(qh), c["a_r"]  # (B, nz, nl, nk, 2), (…, nz, nz, nl, nk, 1)
        if a_r.ndim == 5:  # unbatched parameters: one column of a at a time (no (nz, nz, …) temporary)
            phr = a_r[:, 0] * qr[:, 0:1]
            for j in range(1, self.nz):
                phr = torch.addcmul(phr, a_r[:, j], qr[:, j : j + 1])
            return torch.view_as_complex(phr)
        return torch.view_as_complex((a_r * qr.unsqueeze(-5)).sum(-4))

    def flow(self, state: QGState, c: dict[str, torch.Tensor] | None = None) -> Flow:
        """Invert PV for streamfunction and velocities (pyqg ``_invert``)."""
        c = self.coefficients() if c is None else c
        qh = state["qh"]
        ph = self._invert(qh, c)
        uvh = ph.unsqueeze(-4) * c["vel"]  # (B, 2, nz, nl, nk)
        uv = self.ifft(uvh)
        return Flow(self, state["q"], qh, ph, uv[:, 0], uv[:, 1], uvh[:, 0], uvh[:, 1])

    def tendency(self, state: QGState, c: dict[str, torch.Tensor] | None = None) -> Flow:
        """``Flow`` of ``state`` with ``dqhdt`` filled: advection, drag and parameterizations."""
        c = self.coefficients() if c is None else c
        qh = state["qh"]
        ph = self._invert(qh, c)
        # (B, 2, nz, ny, nx): u, v; 1/M folded into the operator, so no normalisation pass
        uv = velocities(ph, c["vel_M"], c["vel_M_adj"], (self.ny, self.nx))
        q = state["q"].unsqueeze(1)
        closure = self.parameterization
        if closure is None and not torch.is_grad_enabled():
            flux = torch.add(uv, c["Ubg_uv"]).mul_(q)  # a fresh tensor: safe to update in place
        else:
            flux = (uv + c["Ubg_uv"]) * q
        f = Flow(self, state["q"], qh, ph, uv[:, 0], uv[:, 1], None, None)
        # −(ik FFT((u+U)q) + il FFT(vq)) + lin·ph
        f.dqhdt = torch.addcmul(divergence(flux, c["mdiv"], c["mdiv_adj"]), c["lin"], ph)
        if closure is not None:
            f.dqh_param = closure.spectral_tendency(f)
            f.dqhdt = f.dqhdt + f.dqh_param
        return f

    def step(self, state: QGState, t: float | torch.Tensor = 0.0) -> QGState:
        """One AB3 step of ``dt`` seconds (pure: returns a new state dict)."""
        c = self.coefficients()
        if self._can_run_fast(state, c):
            return self._step_fast(state, c)
        level = self._uniform_level(state)
        if level is not None and self._can_run_adjoint(state, c):
            # one autograd node per step, with the hand-written adjoint (qg/adjoint.py)
            leaves = (state["qh"], state["q"], state["dqhdt_p"], state["dqhdt_pp"])
            compiled = self._compiled(*leaves)
            key = ("_k", level, compiled, leaves[0].shape)
            k = c.get(key)  # the node's constants: the same for every step of a rollout
            if k is None:
                # compiled forward and backward kernels when they can run (qg/_step_c.py)
                unbatched = c["lin"].ndim == 3 and c["filtr"].ndim == 2 and c["Ubg"].ndim == 3
                cc = self._c_coefficients(c) if unbatched and compiled else None
                ws = cc and self._workspace(leaves[0])
                k = c[key] = step_constants(self, c, tuple(c["ab"][level].tolist()), c["ab"][level], cc, ws)
            q, qh, d = QGStep.apply(*leaves, c["a"], c["lin"], c["Ubg_uv"], c["filtr"], k)
            ab = state["ablevel"]
            ab_new = ab if level == 2 else torch.full_like(ab, level + 1)
            if level == 2:
                self._ab_steady = ab_new
            return {"q": q, "qh": qh, "dqhdt_p": d, "dqhdt_pp": state["dqhdt_p"], "ablevel": ab_new}
        f = self.tendency(state, c)
        qh, d, p, pp, ab = state["qh"], f.dqhdt, state["dqhdt_p"], state["dqhdt_pp"], state["ablevel"]
        if _plain(ab) and bool((ab == ab[0]).all()):
            # one bootstrap level for the whole batch: AB weights are Python floats (fewer, fused kernels)
            level = int(ab[0])
            w0, w1, w2 = c["ab"][level].tolist()
            new = torch.add(qh, d, alpha=w0)
            if level >= 1:
                new = new.add_(p, alpha=w1) if not torch.is_grad_enabled() else new.add(p, alpha=w1)
            if level >= 2:
                new = new.add_(pp, alpha=w2) if not torch.is_grad_enabled() else new.add(pp, alpha=w2)
            ab_new = ab if level == 2 else torch.full_like(ab, level + 1)
        else:
            w = c["ab"][ab.long()][:, :, None, None, None]  # (B, 3) weights per trajectory
            new = qh + w[:, 0] * d + w[:, 1] * p + w[:, 2] * pp
            ab_new = torch.clamp(ab + 1, max=2)
        qh_new = torch.view_as_complex(torch.view_as_real(new) * c["filtr_r"])
        return {"q": self.ifft(qh_new), "qh": qh_new, "dqhdt_p": d, "dqhdt_pp": p, "ablevel": ab_new}

    # -- one autograd node per step (no closure, unbatched parameters, plain tensors) -------------------
    fused_backward: bool = True  # False: record every operation (the reference the tests compare with)

    def _uniform_level(self, state: QGState) -> int | None:
        """The bootstrap level shared by the whole batch, or None (mixed levels, or under torch.func)."""
        ab = state["ablevel"]
        if ab is self._ab_steady and ab._version == 0:  # the level-2 tensor returned before: no device sync
            return 2
        if not _plain(ab) or not bool((ab == ab[0]).all()):
            return None
        return int(ab[0])

    def _can_run_adjoint(self, state: QGState, c: dict[str, torch.Tensor]) -> bool:
        if not self.fused_backward or self.parameterization is not None or c["a"].ndim != 4:
            return False
        leaves = (state["q"], state["qh"], state["dqhdt_p"], state["dqhdt_pp"])
        if torch._C._are_functorch_transforms_active():
            return False  # torch.func transforms: the recorded path (its rules compose with vmap/jvp)
        if fwAD._current_level >= 0:  # forward-mode dual numbers: QGStep has no jvp rule
            coeffs = (c["a"], c["lin"], c["Ubg_uv"], c["filtr"])
            if any(fwAD.unpack_dual(x).tangent is not None for x in leaves + coeffs):
                return False
        return True

    # -- the same step without autograd: fused in-place kernels and reused work buffers ----------------------
    def _can_run_fast(self, state: QGState, c: dict[str, torch.Tensor]) -> bool:
        if (
            self.parameterization is not None
            or c["a"].ndim != 4
            or self._cache is None
            or self._cache[1] is not c
            or self._cache[0][1]
        ):
            return False  # closures, batched or differentiable (graph-carrying) parameters: general path
        leaves = (state["q"], state["qh"], state["dqhdt_p"], state["dqhdt_pp"], state["ablevel"])
        return all(_plain(x) and not x.requires_grad for x in leaves)

    def _workspace(self, qh: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (tuple(qh.shape), qh.dtype, qh.device)
        ws = getattr(self, "_ws", None)
        if ws is None or ws["key"] != key:
            B, nz, nl, nk = qh.shape
            ws = {
                "key": key,
                "ph": torch.empty_like(qh),
                "uvh": torch.empty((B, 2, nz, nl, nk), dtype=qh.dtype, device=qh.device),
                "uv": torch.empty((B, 2, nz, self.ny, self.nx), dtype=self.dtype, device=qh.device),
                "fh": torch.empty((B, 2, nz, nl, nk), dtype=qh.dtype, device=qh.device),
                "fft": FFTPlan(self.ny, self.nx),
            }
            self._ws = ws
        return ws

    @torch.no_grad()
    def _c_coefficients(self, c: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain contiguous operands of the compiled kernels (made once per coefficient set; the grid-only
        ones — wavenumbers, adjoint weights — come from :meth:`_fixed_coefficients`)."""
        cc = c.get("_c")
        if cc is None:
            g, f = self.grid, self._fixed_coefficients()
            cc = {
                **{n: f[n] for n in ("kk", "ll", "kM", "lM", "wk", "c2r_adj")},
                "a": c["a"].detach().contiguous(),
                "lin": c["lin"].detach().expand(self.nz, g.nl, g.nk).contiguous(),
                "filtr": c["filtr"].detach().contiguous(),
                "U": c["Ubg"].detach().reshape(self.nz).contiguous(),
                "lin_conj": c["lin_conj"].expand(self.nz, g.nl, g.nk).contiguous(),  # adjoint step
            }
            c["_c"] = cc
        return cc

    def _compiled(self, *xs: torch.Tensor) -> bool:
        """Whether the compiled kernels (qg/_step_c.py) can run on these tensors."""
        return xs[0].device.type == "cpu" and _step_c.kernels() is not None and _contiguous(*xs)

    @torch.no_grad()
    def _step_fast(self, state: QGState, c: dict[str, torch.Tensor]) -> QGState:
        """Numerically the same step as the general path (to rounding); about half the memory traffic."""
        ab = state["ablevel"]
        if ab is self._ab_steady and ab._version == 0:  # the level-2 tensor returned before: no device check
            levels = 2
        elif not bool((ab == ab[0]).all()):
            w = c["ab"][ab.long()][:, :, None, None, None]
            levels = None
        else:
            levels = int(ab[0])
        qh, q, p, pp = state["qh"], state["q"], state["dqhdt_p"], state["dqhdt_pp"]
        ws = self._workspace(qh)
        fft = ws["fft"]
        if levels is None:
            ab_new = torch.clamp(ab + 1, max=2)
        else:
            ab_new = ab if levels == 2 else torch.full_like(ab, levels + 1)
            if levels == 2:
                self._ab_steady = ab_new
        if self._compiled(qh, q, p, pp):
            # three fused C loops between the FFTs (qg/_step_c.py)
            cc = self._c_coefficients(c)
            _step_c.invert(qh, cc["a"], cc["kM"], cc["lM"], ws["ph"], ws["uvh"])
            uv = fft.irfft2(ws["uvh"], ws["uv"], "forward", ws["fh"])  # fh: scratch until the r2c below
            _step_c.flux(uv, q, cc["U"])
            fh = fft.rfft2(uv, ws["fh"], ws["uvh"])
            d, new = torch.empty_like(qh), torch.empty_like(qh)
            wts = c["ab"][levels] if levels is not None else w[:, :, 0, 0, 0]
            _step_c.update(qh, ws["ph"], fh, p, pp, cc["lin"], cc["kk"], cc["ll"], cc["filtr"], wts, d, new)
        else:
            # ph = a·qh on real views: ph_i = a_i0 qh_0 + a_i1 qh_1 + … for all i at once
            qr, a_r = torch.view_as_real(qh), c["a_r"]
            phr = torch.view_as_real(ws["ph"])
            torch.mul(a_r[:, 0], qr[:, 0:1], out=phr)
            for j in range(1, self.nz):
                phr.addcmul_(a_r[:, j], qr[:, j : j + 1])
            ph = ws["ph"]
            torch.mul(ph.unsqueeze(1), c["vel_M"], out=ws["uvh"])
            uv = fft.irfft2(ws["uvh"], ws["uv"], "forward", ws["fh"])
            uv[:, 0].add_(c["Ubg"])  # only u has a background flow: half a pass instead of a full one
            flux = uv.mul_(q.unsqueeze(1))
            fh = fft.rfft2(flux, ws["fh"], ws["uvh"])
            d = torch.mul(c["lin"], ph).addcmul_(c["mik"], fh[:, 0]).addcmul_(c["mil"], fh[:, 1])
            if levels is None:
                new = qh + w[:, 0] * d + w[:, 1] * p + w[:, 2] * pp
            else:
                w0, w1, w2 = c["ab"][levels].tolist()
                new = torch.add(qh, d, alpha=w0)
                if levels >= 1:
                    new.add_(p, alpha=w1)
                if levels >= 2:
                    new.add_(pp, alpha=w2)
            torch.view_as_real(new).mul_(c["filtr_r"])
        # 1/M applied inside the transform (the FFT library scales while it writes: no extra pass)
        q_new = fft.irfft2(new, torch.empty_like(q), "backward", ws["ph"])  # ph: free by now
        return {"q": q_new, "qh": new, "dqhdt_p": d, "dqhdt_pp": p, "ablevel": ab_new}

    # -- pyqg-style conveniences -------------------------------------------------------------------------
    def to_dataset(self, state: QGState, time: float | None = None, diagnostics: bool | list[str] = False):
        """xarray Dataset of ``state`` in pyqg's layout (see :func:`pelagos.qg.dataset.to_dataset`)."""
        from .dataset import to_dataset

        return to_dataset(self, state, time=time, diagnostics=diagnostics)

    def diagnostics(self, state: QGState, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """pyqg's diagnostics of ``state`` (see :func:`pelagos.qg.diagnostics.diagnostics`)."""
        from .diagnostics import diagnostics

        return diagnostics(self, state, names)

    # -- stability -------------------------------------------------------------------------------------------
    def cfl(self, state: QGState) -> torch.Tensor:
        """Courant number ``max(|u + Ubg|, |v|)·dt/dx`` per trajectory, shape (B,) (pyqg ``_calc_cfl``)."""
        c = self.coefficients()
        f = self.flow(state, c)
        ufull = f.u + c["Ubg"]
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


# -- variables, coordinates and point observations shared by every QG model (and QGInterval) ---------------
def qg_variables() -> list[Variable]:
    """The QG variables on (lev, y, x): ``q`` (s-1), ``psi`` (m2 s-1), ``u``, ``v`` (m s-1)."""
    dims = ("lev", "y", "x")
    return [
        Variable("q", "s-1", "potential vorticity anomaly", dims),
        Variable("psi", "m2 s-1", "streamfunction", dims, role="diagnostic"),
        Variable(
            "u", "m s-1", "zonal velocity anomaly (without the background flow)", dims, role="diagnostic"
        ),
        Variable("v", "m s-1", "meridional velocity", dims, role="diagnostic"),
    ]


def qg_coordinates(model: SpectralQG) -> dict[str, Coordinate]:
    """``lev`` (layer index, 0 = top) and the cell-centre positions ``y``, ``x`` (m) of ``model``'s grid."""
    g = model.grid
    return {
        "lev": Coordinate(torch.arange(model.nz, dtype=torch.float64), "1", "layer index (0 = top)"),
        "y": Coordinate(g.y[:, 0].cpu(), "m", "meridional position of the cell centre"),
        "x": Coordinate(g.x[0].cpu(), "m", "zonal position of the cell centre"),
    }


class QGPointOperator:
    """``H(state) -> (B, m)``: a QG field at m points ``(lev, y, x)``, bilinear on the periodic grid.

    ``lev`` is a layer index (integers; fractional values interpolate linearly between layers), ``y`` and
    ``x`` are positions in metres (any value: the domain is periodic). The state is a QG state dict or a PV
    tensor ``(B, nz, ny, nx)`` (:class:`~pelagos.qg.interval.QGInterval`). Differentiable in the state.
    """

    def __init__(self, model: Any, variable: str, at: dict) -> None:
        self.model, self.variable = model, variable
        qg = getattr(model, "qg", model)
        unknown = [d for d in at if d not in ("lev", "y", "x")]
        if unknown:
            raise ObservationError(
                f"QG variable {variable!r} has dims (lev, y, x); cannot locate it along {unknown}"
            )
        for d in ("y", "x"):
            if d not in at:
                raise ObservationError(f"observing QG {variable!r}: give the points' {d!r} (m)")
        pts = {d: torch.as_tensor(v, dtype=torch.float64).reshape(-1) for d, v in at.items()}
        if "lev" not in pts:
            if qg.nz != 1:
                raise ObservationError(
                    f"observing QG {variable!r}: give 'lev' (the model has {qg.nz} layers)"
                )
            pts["lev"] = torch.zeros(1, dtype=torch.float64)
        m = max(p.numel() for p in pts.values())
        for d, p in pts.items():
            if p.numel() not in (1, m):
                raise ShapeError(f"observation points along {d!r}: {p.numel()} values, expected 1 or {m}")
        lev = pts["lev"].expand(m)
        if bool(((lev < 0) | (lev > qg.nz - 1)).any()):
            raise ObservationError(f"observing QG {variable!r}: lev must lie in [0, {qg.nz - 1}]")
        self._m = m
        g = qg.grid
        # fractional cell indices (cell centres at (i + ½) dx), periodic
        self._stencils = []
        for d, size, step in (("lev", qg.nz, 1.0), ("y", g.ny, g.dy), ("x", g.nx, g.dx)):
            p = pts[d].expand(m)
            f = p if d == "lev" else p / step - 0.5
            f = torch.where((f - f.round()).abs() < 1e-9, f.round(), f)  # on a centre: no neighbour weight
            i0 = torch.floor(f)
            w = f - i0
            i0 = i0.long()
            if d == "lev":
                i0 = i0.clamp(max=size - 1)
                i1 = (i0 + 1).clamp(max=size - 1)
            else:
                i0, i1 = i0 % size, (i0 + 1) % size
            self._stencils.append((i0, i1, w))

    @property
    def m(self) -> int:
        return self._m

    def _field(self, state: Any) -> torch.Tensor:
        """The observed field ``(B, nz, ny, nx)``; ``q`` and ``psi`` without computing the other outputs."""
        qg = getattr(self.model, "qg", self.model)
        if self.variable == "q":
            return state if torch.is_tensor(state) else state["q"]
        if self.variable == "psi":
            qh = qg.fft(state) if torch.is_tensor(state) else state["qh"]
            return qg.ifft(qg._invert(qh, qg.coefficients()))
        return self.model.output(state, 0.0)[self.variable]

    @property
    def layer(self) -> torch.Tensor:
        """The nearest layer index of each point, ``(m,)``."""
        k0, k1, wk = self._stencils[0]
        return torch.where(wk < 0.5, k0, k1)

    def __call__(self, state: Any) -> torch.Tensor:
        x = self._field(state)
        (k0, k1, wk), (j0, j1, wj), (i0, i1, wi) = self._stencils
        dev = x.device
        out = 0.0
        for k, ak in ((k0, 1 - wk), (k1, wk)):
            for j, aj in ((j0, 1 - wj), (j1, wj)):
                for i, ai in ((i0, 1 - wi), (i1, wi)):
                    w = (ak * aj * ai).to(dtype=x.dtype, device=dev)
                    out = out + w * x[:, k.to(dev), j.to(dev), i.to(dev)]
        return out
