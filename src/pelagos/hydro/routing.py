"""Differentiable Muskingum–Cunge river routing on a river-network graph.

A river network is a set of reaches; each reach drains into at most one downstream reach (``downstream[r] =
-1`` marks an outlet), so the graph is a forest: several independent networks can be routed at once by
putting them side by side (:meth:`RiverNetwork.concat`). Every reach has a length ``L`` (m), a bed slope ``S``
(m/m), a width ``B`` (m), and receives a lateral inflow ``q`` (m³/s) from its own sub-catchment — e.g. HBV
runoff in mm/d times the sub-catchment's area (:func:`lateral_from_runoff`).

**Channel.** A kinematic rating ``Q = α A^m`` with ``α = √S / (n B^{m−1})``: ``m = 5/3`` is Manning's
formula for a wide rectangular channel (hydraulic radius ≈ depth), ``Q = (1/n) A (A/B)^{2/3} √S``; ``m``
may be changed per reach (the "shape" of the channel: ``m = 4/3`` behaves like a triangular section). From a
reference discharge ``Q_ref`` the kinematic celerity is ``c = dQ/dA = m Q_ref / A`` (m/s).

**Muskingum–Cunge** (Cunge 1969; Ponce & Yevjevich 1978). For each reach and time step Δt:

    K = L / c                                       travel time (s)
    X = ½ (1 − Q_ref / (B S c L))                   weighting; clamped to [0, ½]
    O_{t+1} = C0 I_{t+1} + C1 I_t + C2 O_t + C3 q   with d = 2K(1 − X) + Δt and
    C0 = (Δt − 2KX)/d,  C1 = (Δt + 2KX)/d,  C2 = (2K(1 − X) − Δt)/d,  C3 = 2Δt/d

``I`` is the inflow from the upstream reaches (the sum of their outflows), ``O`` the reach's outflow and
``q`` the lateral inflow over the step; the scheme is the trapezoidal rule applied to ``dS/dt = I + q − O``
with the Muskingum storage ``S = K (X I + (1 − X) O)`` (m³), so with constant ``K``, ``X`` it conserves
volume exactly, and a steady inflow passes unchanged (``O = I + q``). ``X`` chosen this way makes the scheme's
numerical diffusion equal to the physical diffusion of the diffusion-wave equation, ``μ = Q/(2 B S)``.

Two ways to choose ``Q_ref``:

- ``method="variable"`` (default): per step, ``Q_ref = (I_t + O_t)/2`` (the mean flow in the reach at the
  start of the step, floored at ``q_min``); celerity and attenuation follow the flow (variable-parameter
  Muskingum–Cunge). Because ``K`` and ``X`` change between steps, the Muskingum storage does not telescope and
  volume is conserved only approximately (a known property of VPMC; ~0.1–1 % over a flood here, see
  docs/hydro_routing.md).
- ``method="constant"``: a fixed ``Q_ref`` per reach (``q_ref``, default the time-mean flow the lateral
  inflows would give at steady state): a linear, exactly volume-conserving router.

**Network.** All reaches are advanced together: ``O_{t+1}`` of a reach depends, through ``C0 I_{t+1}``, on
the new outflows of its upstream reaches. The coupled system ``(1 − C0 N) O = r`` (``N`` the upstream-sum
operator) is lower triangular in topological order; it is solved exactly by ``depth`` sweeps
``O ← r + C0 ⊙ N O``, each a vectorised gather/scatter over all edges (``depth`` = the longest chain of
reaches minus one). Leading batch dimensions (ensembles, parameter sets) are carried through.

**Courant condition.** The coefficients are positive when ``2X ≤ Δt/K ≤ 2(1 − X)``. ``C2 < 0`` (Courant
number ``cΔt/L > 1 + D``, ``D = Q/(BScL)``: the wave crosses the reach in less than a step) gives oscillating,
possibly negative outflows; :func:`muskingum_cunge` raises :class:`~pelagos.core.errors.StabilityError`
then (``check=True``), naming the reach and the number of ``substeps`` that would fix it. ``C0 < 0`` (short
steps on long, slow reaches) is accepted: it gives a small dip before a rise, not instability.

**Learning n.** :class:`ReachParameterNet` maps reach attributes to Manning's ``n`` (and optionally a width
multiplier, or the shape exponent) within bounds; :func:`fit_reach_parameters` trains it on a downstream
gauge.

Units: lengths m, widths m, slopes m/m, discharges m³/s, time steps s, storage m³, areas km², runoff mm/d.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from ..core.errors import ConfigError, ForcingError, ShapeError, StabilityError

__all__ = [
    "ReachParameterNet",
    "RiverNetwork",
    "RoutingOutput",
    "fit_reach_parameters",
    "lateral_from_runoff",
    "muskingum_coefficients",
    "muskingum_cunge",
    "nse_loss",
]

SECONDS_PER_DAY = 86400.0


# -- the network -----------------------------------------------------------------------------------------
def _as_float(name: str, x, n: int) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if t.ndim == 0:
        t = t.expand(n).clone()
    if t.shape != (n,):
        raise ShapeError(
            f"RiverNetwork: {name} has shape {tuple(t.shape)}; expected ({n},), one value per reach"
        )
    if not bool(torch.isfinite(t).all()):
        bad = int(torch.nonzero(~torch.isfinite(t))[0])
        raise ConfigError(f"RiverNetwork: {name} of reach {bad} is not finite ({float(t[bad])})")
    return t


def _check_positive(name: str, t: torch.Tensor, unit: str, fix: str) -> None:
    bad = torch.nonzero(t <= 0).flatten()
    if bad.numel():
        r = int(bad[0])
        raise ConfigError(
            f"RiverNetwork: {name} of reach {r} is {float(t[r]):g} {unit}; it must be > 0 "
            f"({bad.numel()} reach(es) affected). {fix}"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class RiverNetwork:
    """A forest of reaches (validated; build with :meth:`build`).

    Attributes:
        downstream: (R,) int64, index of the reach each reach drains into, ``-1`` for an outlet.
        length: (R,) m.  slope: (R,) m/m.  width: (R,) m.
        area: (R,) km², the sub-catchment area draining laterally into each reach (for runoff in mm/d).
        level: (R,) int64, the topological level (0 = headwater; above the levels of all upstream reaches).
        depth: the largest level (number of sweeps a step needs).
        src, dst: the edges ``src → dst`` (upstream reach, downstream reach).
        order: reach indices in a topological order (upstream before downstream).
    """

    downstream: torch.Tensor
    length: torch.Tensor
    slope: torch.Tensor
    width: torch.Tensor
    area: torch.Tensor
    level: torch.Tensor
    depth: int
    src: torch.Tensor
    dst: torch.Tensor
    order: torch.Tensor

    @property
    def n_reaches(self) -> int:
        return int(self.downstream.numel())

    @property
    def outlets(self) -> torch.Tensor:
        """Indices of the reaches with no downstream reach."""
        return torch.nonzero(self.downstream < 0).flatten()

    @classmethod
    def build(
        cls,
        downstream: Sequence[int] | torch.Tensor | np.ndarray,
        length,
        slope,
        width,
        area=None,
    ) -> RiverNetwork:
        """Validate and build a network.

        Args:
            downstream: per reach, the index of the reach it drains into, or -1 (outlet).
            length: reach lengths, m (> 0).  slope: bed slopes, m/m (> 0).  width: channel widths, m (> 0).
            area: sub-catchment areas, km² (≥ 0); default 0 (runoff then needs ``area=`` elsewhere).

        Raises:
            ConfigError: a cycle (naming the reaches in it), an index out of range, a reach draining into
                itself, a non-positive or non-finite length, slope or width, a negative area.
        """
        ds = np.asarray(
            torch.as_tensor(downstream).cpu().numpy() if torch.is_tensor(downstream) else downstream
        )
        if ds.ndim != 1 or (ds.size and not np.issubdtype(ds.dtype, np.integer)):
            raise ConfigError(
                "RiverNetwork: downstream must be a 1-D list of integer reach indices (-1 for an outlet)"
            )
        n = int(ds.size)
        if n == 0:
            raise ConfigError("RiverNetwork: no reaches")
        bad = np.nonzero((ds < -1) | (ds >= n))[0]
        if bad.size:
            r = int(bad[0])
            raise ConfigError(
                f"RiverNetwork: downstream[{r}] = {int(ds[r])} is not a reach index (0…{n - 1}) "
                "nor -1 (outlet)"
            )
        selfloop = np.nonzero(ds == np.arange(n))[0]
        if selfloop.size:
            raise ConfigError(
                f"RiverNetwork: reach {int(selfloop[0])} drains into itself (a cycle of one reach)"
            )
        L = _as_float("length", length, n)
        S = _as_float("slope", slope, n)
        B = _as_float("width", width, n)
        _check_positive("length", L, "m", "Give reach lengths in metres; merge or drop zero-length reaches.")
        _check_positive("slope", S, "m/m", "Use a minimum slope (e.g. 1e-5) for flat reaches.")
        _check_positive("width", B, "m", "Give channel widths in metres.")
        A = torch.zeros(n, dtype=torch.float64) if area is None else _as_float("area", area, n)
        if bool((A < 0).any()):
            r = int(torch.nonzero(A < 0)[0])
            raise ConfigError(f"RiverNetwork: area of reach {r} is {float(A[r]):g} km²; it must be >= 0")
        # Kahn's algorithm: levels = longest path from a headwater
        n_up = np.zeros(n, dtype=np.int64)
        for d in ds[ds >= 0]:
            n_up[d] += 1
        level = np.zeros(n, dtype=np.int64)
        ready = list(np.nonzero(n_up == 0)[0])
        order = []
        remaining = n_up.copy()
        while ready:
            r = ready.pop()
            order.append(int(r))
            d = int(ds[r])
            if d >= 0:
                level[d] = max(level[d], level[r] + 1)
                remaining[d] -= 1
                if remaining[d] == 0:
                    ready.append(d)
        if len(order) < n:
            left = set(range(n)) - set(order)
            start = min(left)
            cyc, r = [], start
            seen = set()
            while r not in seen:  # walk downstream from a reach that was never freed: it reaches the cycle
                seen.add(r)
                cyc.append(r)
                r = int(ds[r])
            cycle = [*cyc[cyc.index(r) :], r]
            raise ConfigError(
                "RiverNetwork: the network has a cycle: reaches "
                + " -> ".join(map(str, cycle))
                + "; a river network must be a tree (each reach drains into at most one reach, no loops)"
            )
        order_t = torch.as_tensor(sorted(order, key=lambda r: (level[r], r)), dtype=torch.int64)
        src = torch.as_tensor(np.nonzero(ds >= 0)[0], dtype=torch.int64)
        dst = torch.as_tensor(ds[ds >= 0], dtype=torch.int64)
        return cls(
            downstream=torch.as_tensor(ds, dtype=torch.int64),
            length=L,
            slope=S,
            width=B,
            area=A,
            level=torch.as_tensor(level),
            depth=int(level.max()),
            src=src,
            dst=dst,
            order=order_t,
        )

    @classmethod
    def concat(cls, networks: Sequence[RiverNetwork]) -> RiverNetwork:
        """Independent networks side by side as one forest (reach indices of network k shifted by the number
        of reaches before it)."""
        ds, off = [], 0
        for net in networks:
            d = net.downstream.clone()
            d[d >= 0] += off
            ds.append(d)
            off += net.n_reaches
        cat = lambda f: torch.cat([getattr(n, f) for n in networks])  # noqa: E731
        return cls.build(torch.cat(ds), cat("length"), cat("slope"), cat("width"), cat("area"))

    def upstream_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``(N x)_r = Σ_{u drains into r} x_u`` along the last dim (…, R)."""
        if self.src.numel() == 0:
            return torch.zeros_like(x)
        return torch.zeros_like(x).index_add(-1, self.dst.to(x.device), x[..., self.src.to(x.device)])

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of ``x`` over each reach and everything upstream of it (…, R): steady-state flows from lateral
        inflows."""
        y = x
        for _ in range(self.depth):
            y = x + self.upstream_sum(y)
        return y


# -- the scheme ------------------------------------------------------------------------------------------
def muskingum_coefficients(
    K: torch.Tensor, X: torch.Tensor, dt: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(C0, C1, C2, C3)`` of the Muskingum scheme: travel time ``K`` (s), weight ``X``, step ``dt`` (s).

    ``O_{t+1} = C0 I_{t+1} + C1 I_t + C2 O_t + C3 q``; ``C0 + C1 + C2 = 1`` and ``C3 = 1 − C2``.
    """
    d = 2 * K * (1 - X) + dt
    return (dt - 2 * K * X) / d, (dt + 2 * K * X) / d, (2 * K * (1 - X) - dt) / d, 2 * dt / d


class _Cunge:
    """Muskingum–Cunge travel time and weights of every reach as functions of the reference discharge.

    With ``α = √S/(n B^{m−1})`` the celerity is ``c = m α^{1/m} Q^{1−1/m}``; ``K = L/c`` and
    ``2KX = K (1 − D) = K − Q/(B S c²)`` clamped to ``[0, K]`` (``X`` in ``[0, ½]``). The quantities that do
    not depend on ``Q`` are computed once.
    """

    def __init__(self, net: RiverNetwork, n, width, shape, dtype, device) -> None:
        self.L = net.length.to(dtype=dtype, device=device)
        S = net.slope.to(dtype=dtype, device=device)
        alpha = S.sqrt() / (n * width ** (shape - 1))
        self.beta = shape * alpha ** (1 / shape)  # c = beta · Q^p
        self.p = 1 - 1 / shape
        self.inv_bs = 1 / (width * S)

    def celerity(self, q: torch.Tensor) -> torch.Tensor:
        """Kinematic celerity c (m/s) at discharge ``q`` (m³/s)."""
        return self.beta * q**self.p

    def k_x(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, 2KX)`` in s at discharge ``q``."""
        c = self.celerity(q)
        K = self.L / c
        two_kx = torch.minimum((K - q * self.inv_bs / (c * c)).clamp_min(0.0), K)
        return K, two_kx

    def coefficients(self, q: torch.Tensor, h: float):
        """``(K, 2KX, C0, C1, C2, C3)`` for sub-step ``h`` (s)."""
        K, two_kx = self.k_x(q)
        two_k1x = 2 * K - two_kx
        inv_d = 1 / (two_k1x + h)
        return K, two_kx, (h - two_kx) * inv_d, (h + two_kx) * inv_d, (two_k1x - h) * inv_d, (2 * h) * inv_d


@dataclasses.dataclass
class RoutingOutput:
    """Result of :func:`muskingum_cunge`.

    Attributes:
        Q: (T, …, R) outflow of every reach at the end of each step, m³/s.
        Q_mean: (T, …, R) mean outflow over each step (trapezoidal over the sub-steps), m³/s — compare with
            daily-mean gauge records.
        storage: (T, …, R) Muskingum storage ``K (X I + (1 − X) O)`` at the end of each step, m³.
        storage0: (…, R) storage at the start, m³.
        inflow: (T, …, R) upstream inflow ``I`` at the end of each step, m³/s.
        state: ``(I, O)`` at the end (…, R), to continue a run.
        min_c2: (R,) smallest C2 met per reach (``< 0`` ⇒ Courant problem).
    """

    Q: torch.Tensor
    Q_mean: torch.Tensor
    storage: torch.Tensor
    storage0: torch.Tensor
    inflow: torch.Tensor
    state: tuple[torch.Tensor, torch.Tensor]
    min_c2: torch.Tensor


def muskingum_cunge(
    network: RiverNetwork,
    lateral: torch.Tensor,
    n: torch.Tensor | float,
    *,
    dt: float = SECONDS_PER_DAY,
    substeps: int = 1,
    method: str = "variable",
    q_ref: torch.Tensor | None = None,
    q_min: float = 1e-3,
    width: torch.Tensor | None = None,
    shape: torch.Tensor | float = 5.0 / 3.0,
    inflow: torch.Tensor | None = None,
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
    check: bool = True,
) -> RoutingOutput:
    """Route lateral inflows through a river network with Muskingum–Cunge.

    Args:
        network: the reaches (:class:`RiverNetwork`).
        lateral: (T, …, R) lateral inflow of each reach during each step, m³/s (held constant over the step).
        n: Manning's roughness, s m^-1/3, (R,), (…, R) or a scalar; > 0.
        dt: the step of ``lateral``, s (default one day).
        substeps: sub-steps per step (Δt = dt/substeps), to keep the Courant number ``cΔt/L ≲ 1 + D``.
        method: ``"variable"`` (Q_ref = (I + O)/2 each sub-step) or ``"constant"`` (fixed ``q_ref``).
        q_ref: (…, R) reference discharges for ``"constant"`` (m³/s); default the steady-state flow of the
            time-mean lateral inflow.
        q_min: floor of the reference discharge, m³/s (celerity → 0 as Q → 0).
        width: (…, R) channel widths, m, replacing ``network.width`` (e.g. learned); default the network's.
        shape: exponent ``m`` of the rating ``Q = α A^m`` (5/3: wide rectangular Manning channel), scalar or
            (…, R), in [1, 3].
        inflow: (T + 1, …, R) external inflow into the top of reaches (e.g. a gauged river entering the
            network), m³/s, instantaneous values at the step boundaries ``0, dt, …, T·dt`` (linear in
            between); it is part of the reach's inflow ``I``.
        state: ``(I, O)`` (…, R) at the start (m³/s); default the steady state of the first step's lateral
            inflow (and of ``inflow[0]``).
        check: raise :class:`StabilityError` when a coefficient C2 < 0 was met (Courant number too large).

    Returns:
        :class:`RoutingOutput`.

    Raises:
        ShapeError, ForcingError, ConfigError, StabilityError: with the reach, the value and the fix.
    """
    if not torch.is_tensor(lateral) or not lateral.is_floating_point():
        raise ForcingError("muskingum_cunge: lateral must be a floating-point tensor (T, ..., R) in m³/s")
    R = network.n_reaches
    if lateral.ndim < 2 or lateral.shape[-1] != R:
        raise ShapeError(
            f"muskingum_cunge: lateral has shape {tuple(lateral.shape)}; expected (T, ..., {R}): "
            f"time first, one column per reach last"
        )
    if not bool(torch.isfinite(lateral).all()):
        idx = tuple(torch.nonzero(~torch.isfinite(lateral))[0].tolist())
        raise ForcingError(
            f"muskingum_cunge: lateral inflow has NaN/Inf (first at index {idx}); fill gaps first"
        )
    if method not in ("variable", "constant"):
        raise ConfigError(f"muskingum_cunge: unknown method {method!r}; valid: 'variable', 'constant'")
    if int(substeps) != substeps or substeps < 1:
        raise ConfigError(f"muskingum_cunge: substeps must be a positive integer; got {substeps!r}")
    if not dt > 0:
        raise ConfigError(f"muskingum_cunge: dt must be > 0 s; got {dt!r}")
    dtype, device = lateral.dtype, lateral.device
    batch = lateral.shape[1:]
    n = torch.as_tensor(n, dtype=dtype, device=device)
    _check_param("Manning's n", n, 1e-4, 1.0, "s m^-1/3", "typical channels: 0.02-0.15")
    B = network.width.to(dtype=dtype, device=device) if width is None else torch.as_tensor(width, dtype=dtype)
    _check_param("width", B, 1e-6, math.inf, "m", "give channel widths in metres")
    m = torch.as_tensor(shape, dtype=dtype, device=device)
    _check_param("shape exponent", m, 1.0, 3.0, "", "5/3 is Manning's wide rectangular channel")
    for name, t in (("n", n), ("width", B), ("shape", m)):
        try:
            torch.broadcast_shapes(t.shape, batch)
        except RuntimeError:
            raise ShapeError(
                f"muskingum_cunge: {name} has shape {tuple(t.shape)}, which does not broadcast to the "
                f"batch × reaches shape {tuple(batch)} of lateral"
            ) from None
    h = dt / int(substeps)
    ns = int(substeps)
    T = lateral.shape[0]
    if inflow is not None:
        inflow = torch.as_tensor(inflow, dtype=dtype, device=device)
        if inflow.shape[0] != T + 1 or inflow.shape[-1] != R:
            raise ShapeError(
                f"muskingum_cunge: inflow has shape {tuple(inflow.shape)}; expected ({T + 1}, ..., {R}): "
                "values at the T + 1 step boundaries"
            )
        if not bool(torch.isfinite(inflow).all()):
            raise ForcingError("muskingum_cunge: inflow has NaN/Inf values; fill gaps first")

    def ext(t: int, j: int):
        if inflow is None:
            return None
        w = j / ns
        return inflow[t] if w == 0 else (1 - w) * inflow[t] + w * inflow[t + 1]

    def plus(x, e):
        return x if e is None else x + e

    if state is None:
        O = network.accumulate(plus(lateral[0], ext(0, 0)))
        I = plus(network.upstream_sum(O), ext(0, 0))
    else:
        I, O = (torch.as_tensor(s, dtype=dtype, device=device).expand(batch) for s in state)
    cg = _Cunge(network, n, B, m, dtype, device)
    if method == "constant":
        if q_ref is None:
            q_ref = network.accumulate(lateral.mean(0))
        qr = torch.as_tensor(q_ref, dtype=dtype, device=device).clamp_min(q_min)
        fixed = cg.coefficients(qr, h)
    elif q_ref is not None:
        raise ConfigError("muskingum_cunge: q_ref is used by method='constant' only")

    def coefficients(I, O):
        return fixed if method == "constant" else cg.coefficients((0.5 * (I + O)).clamp_min(q_min), h)

    k0, two_kx0, *_ = coefficients(I, O)
    storage0 = 0.5 * (two_kx0 * I + (2 * k0 - two_kx0) * O)
    min_c2 = None
    Qs, Qm, Ss, Is = [], [], [], []
    for t in range(T):
        q = lateral[t]
        acc = 0.5 * O
        for j in range(ns):
            k, two_kx, c0, c1, c2, c3 = coefficients(I, O)
            if check:
                c2d = c2.detach()
                min_c2 = c2d if min_c2 is None else torch.minimum(min_c2, c2d)
            e = ext(t, j + 1)
            r = c1 * I + c2 * O + c3 * q
            if e is not None:
                r = r + c0 * e
            O_new, I_new = r, (torch.zeros_like(r) if e is None else e.expand_as(r))
            for _ in range(network.depth):  # exact after `depth` sweeps (the system is nilpotent)
                up = network.upstream_sum(O_new)
                O_new = r + c0 * up
                I_new = plus(up, e)
            I, O = I_new, O_new
            acc = acc + (O if j < ns - 1 else 0.5 * O)
        Qs.append(O)
        Qm.append(acc / ns)
        Ss.append(0.5 * (two_kx * I + (2 * k - two_kx) * O))
        Is.append(I)
    if min_c2 is None:
        min_c2 = torch.full((R,), math.inf, dtype=dtype, device=device)
    else:
        min_c2 = min_c2.expand(*batch[:-1], R).reshape(-1, R).amin(0)
    out = RoutingOutput(
        Q=torch.stack(Qs),
        Q_mean=torch.stack(Qm),
        storage=torch.stack(Ss),
        storage0=storage0,
        inflow=torch.stack(Is),
        state=(I, O),
        min_c2=min_c2,
    )
    if check and bool((min_c2 < 0).any()):
        _courant_error(network, out, cg, h, ns, min_c2)
    return out


def _check_param(name: str, t: torch.Tensor, lo: float, hi: float, unit: str, hint: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"muskingum_cunge: {name} has NaN/Inf values")
    bad = (t < lo) | (t > hi)
    if bool(bad.any()):
        v = float(t.detach()[bad].flatten()[0])
        where = tuple(torch.nonzero(bad)[0].tolist())
        rng = f"[{lo:g}, {hi:g}]" if math.isfinite(hi) else f">= {lo:g}"
        raise ConfigError(
            f"muskingum_cunge: {name} = {v:g} {unit} at index {where} is outside {rng} ({hint})".replace(
                "  ", " "
            )
        )


def _courant_error(network: RiverNetwork, out: RoutingOutput, cg: _Cunge, h: float, ns: int, min_c2) -> None:
    R = network.n_reaches
    r = int(torch.argmin(min_c2))
    # Courant number c·h/L and cell Reynolds number D = Q/(BScL) of that reach at its largest flow
    qmax = out.Q.detach().reshape(-1, R).amax(0).clamp_min(1e-3)
    with torch.no_grad():
        K, two_kx = cg.k_x(qmax.expand(out.Q.shape[1:]))
    K, D = K.reshape(-1, R), (1 - two_kx / K).reshape(-1, R)
    courant = float((h / K).amax(0)[r])
    d = float(D.amin(0)[r])
    need = max(ns + 1, math.ceil(ns * courant / (1 + d) * 1.05))
    raise StabilityError(
        f"muskingum_cunge: reach {r} (length {float(network.length[r]):g} m) has Courant number c·Δt/L ≈ "
        f"{courant:.3g} > 1 + D ≈ {1 + d:.3g} (C2 = {float(min_c2[r]):.3g} < 0): the flood wave crosses the "
        f"reach in less than a sub-step and the outflow oscillates. Use substeps >= {need} (now {ns}), "
        f"longer reaches, or check=False to accept it."
    )


# -- HBV runoff in, parameters from attributes ---------------------------------------------------------
def lateral_from_runoff(runoff: torch.Tensor, area_km2: torch.Tensor | float) -> torch.Tensor:
    """Runoff depth (mm/d) over a sub-catchment of ``area_km2`` (km²) as a discharge, m³/s.

    ``q = runoff · 1e-3 m/mm · area · 1e6 m²/km² / 86400 s/d = runoff · area / 86.4``. ``runoff`` (T, …, R) —
    e.g. ``run_hbv(...).Q`` with one basin per reach.
    """
    a = torch.as_tensor(area_km2, dtype=runoff.dtype, device=runoff.device)
    if bool((a < 0).any()):
        raise ConfigError("lateral_from_runoff: sub-catchment areas must be >= 0 km²")
    return runoff * a / 86.4


class ReachParameterNet(torch.nn.Module):
    """A small MLP mapping reach attributes to routing parameters within bounds.

    ``p = lo · (hi/lo)^σ(z)`` (log-uniform between the bounds, for positive parameters) or
    ``p = lo + (hi − lo) σ(z)`` (``log=False``), where ``z`` is the network output for that parameter.

    Args:
        n_attributes: number of (standardised) attributes per reach.
        bounds: ``{name: (lo, hi)}``; default ``{"n": (0.01, 0.2)}`` (Manning's n, s m^-1/3). Add e.g.
            ``"width_factor": (0.5, 2.0)`` (multiplies the network's widths) or ``"shape": (1.2, 5/3)``.
        hidden: widths of the hidden layers (tanh); ``()`` = a linear map of the attributes.
        log: per name (or for all) whether the scaling is log-uniform (default: yes when ``lo > 0``).
    """

    def __init__(
        self,
        n_attributes: int,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        hidden: Sequence[int] = (16,),
        log: bool | Mapping[str, bool] | None = None,
    ) -> None:
        super().__init__()
        self.bounds = dict(bounds or {"n": (0.01, 0.2)})
        for name, (lo, hi) in self.bounds.items():
            if not lo < hi:
                raise ConfigError(
                    f"ReachParameterNet: bounds of {name!r} must have lo < hi; got ({lo}, {hi})"
                )
        self.log = {
            k: (lo > 0 if log is None else (log.get(k, lo > 0) if isinstance(log, Mapping) else bool(log)))
            for k, (lo, _) in self.bounds.items()
        }
        layers: list[torch.nn.Module] = []
        w = n_attributes
        for hsz in hidden:
            layers += [torch.nn.Linear(w, hsz), torch.nn.Tanh()]
            w = hsz
        layers.append(torch.nn.Linear(w, len(self.bounds)))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, attributes: torch.Tensor) -> dict[str, torch.Tensor]:
        """``attributes`` (…, R, n_attributes) → ``{name: (…, R)}`` in physical units."""
        s = torch.sigmoid(self.net(attributes))
        out = {}
        for i, (name, (lo, hi)) in enumerate(self.bounds.items()):
            si = s[..., i]
            out[name] = lo * (hi / lo) ** si if self.log[name] else lo + (hi - lo) * si
        return out


def nse_loss(sim: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """``1 − NSE`` of ``sim`` against ``obs`` along the first (time) dim, averaged over the other dims; NaN in
    ``obs`` is missing."""
    mask = torch.isfinite(obs)
    o = torch.where(mask, obs, torch.zeros_like(obs))
    cnt = mask.sum(0).clamp_min(1)
    mean = o.sum(0) / cnt
    num = torch.where(mask, (sim - o) ** 2, torch.zeros_like(sim)).sum(0)
    den = torch.where(mask, (o - mean) ** 2, torch.zeros_like(o)).sum(0)
    return (num / den.clamp_min(1e-12)).mean()


def fit_reach_parameters(
    net: ReachParameterNet,
    attributes: torch.Tensor,
    network: RiverNetwork,
    lateral: torch.Tensor,
    observed: torch.Tensor,
    gauge: int | Sequence[int],
    *,
    iterations: int = 100,
    lr: float = 0.05,
    optimizer: str = "adam",
    warmup: int = 0,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nse_loss,
    route_kwargs: Mapping | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``net`` (attributes → n, …) so that the routed daily-mean flow at ``gauge`` fits ``observed``.

    Args:
        attributes: (R, n_attributes) standardised reach attributes.
        lateral: (T, …, R) lateral inflows, m³/s.  observed: (T, …) or (T, …, G) gauge flows, m³/s (NaN =
            missing).  gauge: the reach index (or indices) of the gauge(s).
        warmup: steps left out of the loss.  optimizer: ``"adam"`` or ``"lbfgs"``.
        route_kwargs: more keyword arguments of :func:`muskingum_cunge` (``substeps``, ``dt``, ``method``…;
            ``check`` defaults to False here: a trial n may break the Courant condition).

    Returns:
        The loss per iteration.
    """
    kw = {"check": False, **(route_kwargs or {})}
    g = torch.as_tensor(gauge)
    history: list[float] = []

    def closure():
        opt.zero_grad()
        p = net(attributes)
        width = network.width.to(lateral) * p["width_factor"] if "width_factor" in p else None
        out = muskingum_cunge(network, lateral, p["n"], width=width, shape=p.get("shape", 5.0 / 3.0), **kw)
        sim = out.Q_mean[..., g][warmup:]
        obs = observed[warmup:]
        if sim.shape != obs.shape:
            obs = obs.reshape(sim.shape)
        val = loss(sim, obs)
        val.backward()
        return val

    if optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for it in range(int(iterations)):
            v = float(opt.step(closure).detach())
            history.append(v)
            if callback:
                callback(it, v)
    elif optimizer == "lbfgs":
        opt = torch.optim.LBFGS(
            net.parameters(), lr=lr, max_iter=int(iterations), line_search_fn="strong_wolfe",
            tolerance_grad=1e-10, tolerance_change=1e-14,
        )  # fmt: skip

        def logged():
            v = closure()
            history.append(float(v.detach()))
            if callback:
                callback(len(history) - 1, history[-1])
            return v

        opt.step(logged)
    else:
        raise ConfigError(f"fit_reach_parameters: unknown optimizer {optimizer!r}; valid: 'adam', 'lbfgs'")
    return history
