"""A small reference model for demos, gradient checks and tests of the core machinery.

:class:`ImplicitDiffusion1D` diffuses a tracer ``c`` (any units) in a column of ``nlev`` equal layers with
no-flux boundaries, backward Euler in time (θ = 1):

    (c_i^{n+1} − c_i^n)/Δt = [ν_{i+½}(c_{i+1} − c_i) − ν_{i−½}(c_i − c_{i−1})] / h²

(all ``c`` at step n+1: one tridiagonal system per step, solved by :func:`solve_tridiagonal`).

Index 0 is the surface layer, ``i`` increases downward; interface ``j`` lies at depth ``j·h``. The
diffusivity profile ν(z) [m² s⁻¹] at the ``nlev − 1`` interior interfaces is interpolated linearly in
``log ν`` between ``n_nodes`` declared parameters ``nu_0 … nu_{K−1}`` placed evenly from the surface (node 0)
to the bottom (node K−1); they are positive (log transform), so the free vector is ``log ν`` at the nodes.
Total tracer ``Σ c_i h`` is conserved exactly (up to round-off). This is *not* the GOTM diffusion operator
(see ``pelagos.column``): it is a self-contained toy that exercises ``Model``, ``rollout`` and the
tridiagonal solver's gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError, ShapeError
from .model import Coordinate, Model, Variable
from .registry import BuildContext, ModelKind
from .tridiagonal import solve_tridiagonal

__all__ = ["KIND", "ImplicitDiffusion1D", "ToyDiffusionOptions", "diffusion1d_case"]


class ImplicitDiffusion1D(Model):
    """Backward-Euler vertical diffusion of one tracer with a parametrised diffusivity profile ν(z).

    Args:
        nlev: number of layers.
        depth: column depth H [m]; layer thickness h = H / nlev.
        dt: time step [s].
        n_nodes: number of diffusivity nodes (declared parameters ``nu_0 …``), ≥ 2.
        nu_default: default diffusivity of every node [m² s⁻¹].

    State: tensor ``(..., nlev)`` of tracer concentrations (a leading batch dim pairs with parameter batches
    ``(B,)`` from :meth:`Model.using`).
    """

    def __init__(
        self,
        nlev: int = 30,
        depth: float = 100.0,
        dt: float = 3600.0,
        n_nodes: int = 5,
        nu_default: float = 1e-3,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if nlev < 2 or n_nodes < 2:
            raise ConfigError(
                f"ImplicitDiffusion1D: need nlev ≥ 2 and n_nodes ≥ 2; got nlev={nlev}, n_nodes={n_nodes}"
            )
        if not (depth > 0 and dt > 0):
            raise ConfigError(f"ImplicitDiffusion1D: depth and dt must be > 0; got depth={depth}, dt={dt}")
        self.nlev, self.depth, self.dt, self.n_nodes = int(nlev), float(depth), float(dt), int(n_nodes)
        self.h = self.depth / self.nlev
        for k in range(self.n_nodes):
            zk = self.depth * k / (self.n_nodes - 1)
            self.declare_parameter(
                f"nu_{k}",
                nu_default,
                units="m2/s",
                bounds=(0.0, None),
                description=f"vertical diffusivity at node {k} (depth {zk:g} m)",
                dtype=dtype,
            )
        # linear interpolation weights (interior interfaces × nodes), applied to log ν
        z_iface = torch.arange(1, self.nlev, dtype=torch.float64) * self.h
        pos = z_iface / self.depth * (self.n_nodes - 1)
        lo = torch.clamp(pos.floor().long(), max=self.n_nodes - 2)
        frac = pos - lo
        W = torch.zeros(self.nlev - 1, self.n_nodes, dtype=torch.float64)
        W[torch.arange(self.nlev - 1), lo] = 1 - frac
        W[torch.arange(self.nlev - 1), lo + 1] += frac
        self.register_buffer("interp", W, persistent=False)

    # -- physics -------------------------------------------------------------------------------------------
    def node_names(self) -> list[str]:
        return [f"nu_{k}" for k in range(self.n_nodes)]

    def z(self) -> torch.Tensor:
        """Depth of the layer centres [m], shape ``(nlev,)`` (positive downward)."""
        return (torch.arange(self.nlev, dtype=torch.float64) + 0.5) * self.h

    def z_interfaces(self) -> torch.Tensor:
        """Depth of the interior interfaces [m], shape ``(nlev − 1,)``."""
        return torch.arange(1, self.nlev, dtype=torch.float64) * self.h

    def nu_interfaces(self) -> torch.Tensor:
        """ν at the interior interfaces [m² s⁻¹], shape ``(nlev − 1,)`` or ``(B, nlev − 1)``."""
        log_nodes = torch.stack([torch.log(self.param(n)) for n in self.node_names()], dim=-1)
        return torch.exp(log_nodes @ self.interp.to(log_nodes.dtype).T)

    def initial_state(self, batch: int | None = None, *, kind: str = "modes") -> torch.Tensor:
        """A profile with structure at every depth (so every ν node is observable): a sum of cosine modes.

        ``batch=None``: shape ``(nlev,)``; ``batch=B``: ``(B, nlev)`` (B copies).
        """
        if kind != "modes":
            raise ConfigError(f"ImplicitDiffusion1D.initial_state: unknown kind {kind!r}; valid: 'modes'")
        s = self.z() / self.depth
        c = 1.0 + torch.cos(math.pi * s) + 0.6 * torch.cos(3 * math.pi * s) + 0.3 * torch.cos(6 * math.pi * s)
        return c if batch is None else c.expand(int(batch), -1).clone()

    # -- variables -------------------------------------------------------------------------------------------
    def output_variables(self) -> list[Variable]:
        return [Variable("c", "1", "tracer concentration", ("z",))]

    def output_coordinates(self) -> dict[str, Coordinate]:
        return {"z": Coordinate(self.z(), "m", "depth of the layer centre (positive down)")}

    def step(self, c: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        if c.shape[-1] != self.nlev:
            raise ShapeError(
                f"ImplicitDiffusion1D.step: state has shape {tuple(c.shape)}; expected (..., {self.nlev})"
            )
        nu = self.nu_interfaces()
        if nu.ndim == 2 and c.ndim == 1:
            c = c.expand(nu.shape[0], -1)
        r = self.dt / self.h**2 * nu  # (..., nlev-1): coupling through each interior interface
        zero = torch.zeros_like(r[..., :1])
        lower = -torch.cat([zero, r], dim=-1)  # a_i couples i to i-1 through interface i
        upper = -torch.cat([r, zero], dim=-1)  # c_i couples i to i+1 through interface i+1
        diag = 1 - lower - upper
        return solve_tridiagonal(lower, diag, upper, c)


def diffusion1d_case(nlev: int = 20, n_nodes: int = 4, dtype: torch.dtype = torch.float64):
    """(model, initial state) of a small diffusion problem with all ν nodes free, for gradient checks."""
    model = ImplicitDiffusion1D(nlev=nlev, n_nodes=n_nodes, dt=6 * 3600.0).to(dtype)
    for k, nu in enumerate(torch.logspace(-2, -4, n_nodes).tolist()):
        model.set_parameter_value(f"nu_{k}", nu)
    model.select_free("all")
    return model, model.initial_state().to(dtype)


# -- registration ------------------------------------------------------------------------------------------
@dataclass
class ToyDiffusionOptions:
    """``model:`` options of kind ``toy_diffusion`` (see :class:`ImplicitDiffusion1D`)."""

    nlev: int = 30
    depth: float = 100.0
    dt: float = 3600.0
    n_nodes: int = 5
    nu_default: float = 1e-3


def _build(options: ToyDiffusionOptions, ctx: BuildContext) -> ImplicitDiffusion1D:
    o = options
    dt = ctx.dt if ctx.dt is not None else o.dt
    dtype = getattr(torch, ctx.dtype)
    return ImplicitDiffusion1D(o.nlev, o.depth, dt, o.n_nodes, o.nu_default, dtype=dtype).to(dtype)


def _example() -> ImplicitDiffusion1D:
    return diffusion1d_case(nlev=8, n_nodes=3)[0]


KIND = ModelKind(
    "toy_diffusion",
    _build,
    options=ToyDiffusionOptions,
    example=_example,
    description="1-D implicit diffusion of one tracer, parametrised ν(z) (a toy for the core machinery)",
    conformance={"steps": 3},
)
