"""The primitive-equation ocean model: hydrostatic, Boussinesq, rigid lid, z-levels, spherical C-grid.

One :meth:`OceanModel.step` (pure) advances

1. **momentum** by ``dt_mom`` (s): AB2 (Veros's ``AB_eps`` = 0.1; the previous tendency starts at zero, as in
   Veros) of Coriolis + metric (energy-neutral), flux-form advection, hydrostatic pressure gradient from the
   density, lateral harmonic friction ``A_h cos^p φ``; then implicit vertical friction ``kappaM`` with the
   wind stress in the surface cell and linear bottom friction ``r_bot`` in the deepest cell (one tridiagonal
   solve per column); then the rigid-lid projection (surface-pressure CG solve,
   :mod:`pelagos.ocean.streamfunction`);
2. **tracers** (temperature °C, salinity g kg⁻¹) by ``dt_tracer`` (s; Bryan acceleration when larger than
   ``dt_mom``) with the new velocities: AB2 of flux-form advection (centred as Veros's acc_basic, or
   superbee-limited) + horizontal diffusion ``K_h`` (or isoneutral + GM mixing),
   then implicit vertical diffusion ``kappaH`` (plus convective mixing ``kappa_conv`` where the water column
   is statically unstable, switched on by a smooth step of N²) with surface restoring to ``t_star`` over
   ``t_rest``.

Model time advances by ``dt = dt_tracer`` per step (Veros: 730 steps per 365-day year at 43 200 s).

State: a dict of tensors ``(…, nz, ny, nx)``: ``u, v`` (m s⁻¹), ``temp`` (°C), ``salt`` (g kg⁻¹), and the
previous explicit tendencies times their time steps ``du, dv`` (m s⁻¹), ``dtemp`` (°C), ``dsalt`` (g kg⁻¹)
(the AB2 history, kept as increments so that every leaf has the units of its field).
"""

from __future__ import annotations

import math

import torch

from ..core import Model
from ..core.errors import ConfigError, StabilityError
from ..core.model import Coordinate, Variable
from ..core.safe import smooth_step
from . import momentum as M
from . import tracers as T
from .eos import density_anomaly
from .grid import Grid
from .isoneutral import isoneutral_diffusion, isoneutral_tensor
from .streamfunction import SurfacePressureSolver, channel_transport, streamfunction

STATE_KEYS = ("u", "v", "temp", "salt", "du", "dv", "dtemp", "dsalt")


def veros_density(salt: torch.Tensor, temp: torch.Tensor, depth: torch.Tensor | float) -> torch.Tensor:
    """Veros ``eq_of_state_type`` 3 (nonlinear, thermobaric; :func:`pelagos.ocean.eos.density_anomaly`),
    kg m⁻³, at ``depth`` m (positive down)."""
    return M.RHO_0 + density_anomaly(temp, salt, depth)


def linear_density(salt: torch.Tensor, temp: torch.Tensor, depth: torch.Tensor | float) -> torch.Tensor:
    """Linear equation of state (Veros ``eq_of_state_type`` 1 form), kg m⁻³: a placeholder until the
    nonlinear Veros type-3 density of :mod:`pelagos.ocean.eos` is plugged in.

    ``ρ = ρ₀ (1 − α (T − 10) + β (S − 35))`` with α = 2e-4 K⁻¹, β = 7.6e-4 (g/kg)⁻¹; ``depth`` unused.
    """
    return M.RHO_0 * (1 - 2e-4 * (temp - 10.0) + 7.6e-4 * (salt - 35.0))


class OceanModel(Model):
    """Primitive-equation ocean on a :class:`~pelagos.ocean.grid.Grid` (see the module docstring).

    Args:
        grid: the grid (its dtype is the model's).
        dt_mom, dt_tracer: momentum and tracer time steps, s.
        taux: zonal wind stress on the u rows, N m⁻², shape ``(ny,)`` (scaled by the parameter ``taux_0``
            relative to ``taux_ref``).
        t_star: surface restoring temperature, °C, ``(ny,)`` or ``(ny, nx)``.
        advection: tracer advection ``"centered"`` (Veros default, used by acc_basic), ``"superbee"`` (TVD)
            or ``"superbee_smooth"`` (TVD with a C∞ limiter).
        cos_power: Veros ``hor_friction_cosPower``.
        density: ``density(salt, temp, depth) -> ρ`` (kg m⁻³); default :func:`veros_density` (Veros type 3);
            :func:`linear_density` is the linear alternative.
        isoneutral: isoneutral (Redi) diffusion ``K_iso_0`` (steep-slope background ``K_iso_steep``) and GM
            skew diffusion ``K_gm_0`` of both tracers (:mod:`pelagos.ocean.isoneutral`, Veros's triad scheme;
            acc_basic's setting). Without it, lateral diffusion ``K_h`` along the z-levels.
        conv_sharpness, conv_threshold: the convective switch is ``kappa_conv·σ(conv_sharpness·(−N² −
            conv_threshold))`` (σ the logistic function; s² and s⁻²): half on at N² = −3e-6 s⁻², 3e-4 of it at
            N² = +1e-6 s⁻². A smooth stand-in for Veros's TKE response to static instability: a sharper switch
            is closer to a step but its derivative (≤ kappa_conv·sharpness/4) grows with it.
        Parameter values (Veros names, units): ``A_h`` m² s⁻¹, ``r_bot`` s⁻¹, ``kappaM_0``/``kappaH_0`` m² s⁻¹
        (background vertical viscosity/diffusivity), ``kappa_conv`` m² s⁻¹, ``K_h`` m² s⁻¹ (lateral tracer
        diffusivity), ``K_gm_0`` m² s⁻¹ (GM; declared, used once isoneutral mixing is plugged in),
        ``taux_0`` N m⁻² (wind amplitude), ``t_rest`` s (restoring time).
        AB_eps: Veros's Adams–Bashforth epsilon.
        solver_rtol: relative tolerance of the barotropic CG solve.
        solver: barotropic solve ``"auto"``, ``"direct"`` or ``"cg"`` (see
            :class:`~pelagos.ocean.streamfunction.SurfacePressureSolver`).
        check_stability: raise :class:`StabilityError` at construction for an unstable ``dt_mom`` (lateral
            viscosity, gravity of the wind-driven flow are not checked) and in :meth:`check_cfl`.
    """

    def __init__(
        self,
        grid: Grid,
        *,
        dt_mom: float = 4800.0,
        dt_tracer: float = 43200.0,
        taux: torch.Tensor | None = None,
        t_star: torch.Tensor | None = None,
        advection: str = "centered",
        cos_power: float = 1.0,
        density=None,
        A_h: float = 2.0e5,
        r_bot: float = 1e-5,
        kappaM_0: float = 1e-3,
        kappaH_0: float = 1e-4,
        kappa_conv: float = 1.0,
        K_h: float = 1000.0,
        K_gm_0: float = 1000.0,
        taux_0: float = 0.1,
        taux_ref: float = 0.1,
        t_rest: float = 30 * 86400.0,
        AB_eps: float = 0.1,
        solver_rtol: float | None = None,
        solver: str = "auto",
        isoneutral: bool = True,
        conv_sharpness: float = 2e6,
        conv_threshold: float = 3e-6,
        K_iso_0: float = 1000.0,
        K_iso_steep: float = 500.0,
        check_stability: bool = True,
    ) -> None:
        super().__init__()
        self.grid = grid
        dtype = grid.dz.dtype
        self.dtype = dtype
        if not (dt_mom > 0 and dt_tracer > 0):
            raise ConfigError(f"ocean: dt_mom and dt_tracer must be > 0 s; got {dt_mom}, {dt_tracer}")
        if advection not in T.SCHEMES:
            raise ConfigError(f"ocean: advection {advection!r} is not a scheme; use one of {T.SCHEMES}")
        self.dt_mom, self.dt_tracer, self.dt = float(dt_mom), float(dt_tracer), float(dt_tracer)
        self.advection, self.cos_power, self.AB_eps = advection, float(cos_power), float(AB_eps)
        self.density = density or veros_density
        self.isoneutral = bool(isoneutral)
        self.conv_sharpness, self.conv_threshold = float(conv_sharpness), float(conv_threshold)
        self.taux_ref = float(taux_ref)
        ny = grid.ny
        tx = torch.zeros(ny, dtype=dtype) if taux is None else torch.as_tensor(taux, dtype=dtype)
        ts = torch.full((ny,), 15.0, dtype=dtype) if t_star is None else torch.as_tensor(t_star, dtype=dtype)
        if tx.shape != (ny,):
            raise ConfigError(f"ocean: taux must have shape (ny,) = ({ny},); got {tuple(tx.shape)}")
        self.register_buffer("taux", tx.reshape(ny, 1))
        self.register_buffer("t_star", ts.reshape(ny, 1) if ts.ndim == 1 else ts)
        decl = self.declare_parameter
        decl("A_h", A_h, units="m2 s-1", bounds=(0.0, None), description="lateral viscosity", dtype=dtype)
        decl(
            "r_bot", r_bot, units="s-1", bounds=(0.0, None), description="linear bottom friction", dtype=dtype
        )
        decl("kappaM_0", kappaM_0, units="m2 s-1", bounds=(0.0, None),
             description="background vertical viscosity",
             dtype=dtype)  # fmt: skip
        decl("kappaH_0", kappaH_0, units="m2 s-1", bounds=(0.0, None),
             description="background vertical diffusivity", dtype=dtype)  # fmt: skip
        decl("kappa_conv", kappa_conv, units="m2 s-1", bounds=(0.0, None),
             description="vertical mixing added where N2 < 0 (convection)", dtype=dtype)  # fmt: skip
        decl(
            "K_h",
            K_h,
            units="m2 s-1",
            bounds=(0.0, None),
            description="lateral tracer diffusivity (without isoneutral mixing)",
            dtype=dtype,
        )
        decl("K_gm_0", K_gm_0, units="m2 s-1", bounds=(0.0, None),
             description="Gent-McWilliams diffusivity (with isoneutral mixing)", dtype=dtype)  # fmt: skip
        decl("K_iso_0", K_iso_0, units="m2 s-1", bounds=(0.0, None), description="isoneutral diffusivity",
             dtype=dtype)  # fmt: skip
        decl("K_iso_steep", K_iso_steep, units="m2 s-1", bounds=(0.0, None),
             description="lateral diffusivity where isoneutral slopes are steep", dtype=dtype)  # fmt: skip
        decl(
            "taux_0",
            taux_0,
            units="N m-2",
            bounds=(0.0, None),
            description="wind stress amplitude",
            dtype=dtype,
        )
        decl(
            "t_rest",
            t_rest,
            units="s",
            bounds=(0.0, None),
            description="SST restoring time scale",
            dtype=dtype,
        )
        if check_stability:
            self._check_static()
        rtol = solver_rtol or (1e-12 if dtype == torch.float64 else 1e-6)
        self.solver = SurfacePressureSolver(grid, rtol=rtol, method=solver)

    # -- checks ------------------------------------------------------------------------------------------
    def _check_static(self) -> None:
        g = self.grid
        dx_min = float(g.dxt[g.mask_t[0].sum(-1) > 0].min())
        a = float(self.param("A_h").max())
        number = a * self.dt_mom * (1 / dx_min**2 + 1 / float(g.dy) ** 2)
        if number > 0.5:
            raise StabilityError(
                f"ocean: lateral viscosity A_h = {a:.3g} m2/s is unstable with dt_mom = {self.dt_mom:g} s "
                f"on this grid (A_h·dt·(1/dx²+1/dy²) = {number:.2f} > 0.5, smallest dx "
                f"{dx_min / 1e3:.1f} km); reduce dt_mom or A_h"
            )
        f_max = float(g.f_t.abs().max())
        if f_max * self.dt_mom > 0.5:
            raise StabilityError(
                f"ocean: f·dt_mom = {f_max * self.dt_mom:.2f} > 0.5 — the AB2 Coriolis term is unstable; "
                "reduce dt_mom"
            )

    def check_cfl(self, state: dict, limit: float = 0.5) -> float:
        """Largest advective Courant number of ``state`` for the tracer step; raises :class:`StabilityError`
        above ``limit``."""
        g = self.grid
        cu = float((state["u"].abs() * self.dt_tracer / g.dxt).max())
        cv = float((state["v"].abs() * self.dt_tracer / g.dy).max())
        c = max(cu, cv)
        if not math.isfinite(c) or c > limit:
            raise StabilityError(
                f"ocean: advective Courant number {c:.3g} (u·dt_tracer/dx) exceeds {limit}; reduce dt_tracer "
                "or check the forcing"
            )
        return c

    # -- state -------------------------------------------------------------------------------------------
    def initial_state(self, batch: int | None = None, *, t_surface: float = 15.0, salt: float = 35.0,
                      u: float = 0.0) -> dict:  # fmt: skip
        """Rest (or uniform ``u`` m s⁻¹), temperature linear in depth from ``t_surface`` (°C) at the surface
        to 0 at the bottom (Veros acc: ``15 (1 − z/z_bottom)``), uniform salinity ``salt`` (g kg⁻¹)."""
        g = self.grid
        depth = -g.zt.reshape(-1, 1, 1)
        temp = t_surface * (1 - depth / float(-g.zw[-1])) * g.mask_t
        zero = torch.zeros(g.shape, dtype=self.dtype)
        s = {
            "u": (zero + u) * g.mask_u,
            "v": zero.clone(),
            "temp": temp.expand(g.shape).clone(),
            "salt": salt * g.mask_t,
            "du": zero.clone(),
            "dv": zero.clone(),
            "dtemp": zero.clone(),
            "dsalt": zero.clone(),
        }
        s = {k: x.to(g.dz.device) for k, x in s.items()}
        if batch is None:
            return s
        return {k: x.expand(batch, *x.shape).clone() for k, x in s.items()}

    # -- physics -----------------------------------------------------------------------------------------
    def rho(self, state: dict) -> torch.Tensor:
        """In-situ density (kg m⁻³) at T points."""
        depth = -self.grid.zt.reshape(-1, 1, 1)
        return self.density(state["salt"], state["temp"], depth) * self.grid.mask_t

    def n2(self, salt: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
        """Buoyancy frequency squared on the interfaces k+½ (s⁻²), from the density difference of the two
        cells evaluated at the interface depth (local stability, valid for a nonlinear EOS)."""
        g = self.grid
        zi = (-g.zw[:-1]).reshape(-1, 1, 1)
        up = self.density(salt[..., :-1, :, :], temp[..., :-1, :, :], zi)
        dn = self.density(salt[..., 1:, :, :], temp[..., 1:, :, :], zi)
        return M.GRAV / M.RHO_0 * (dn - up) / g.dzw.reshape(-1, 1, 1)

    def momentum_tendency(self, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit momentum tendencies (m s⁻²): Coriolis + metric, advection, pressure gradient, friction."""
        g = self.grid
        u, v = state["u"], state["v"]
        nd = u.ndim
        du, dv = M.coriolis_metric(g, u, v)
        a_u, a_v = M.advection(g, u, v, M.transports(g, u, v))
        p = M.hydrostatic_pressure(g, self.rho(state))
        p_u, p_v = M.pressure_gradient(g, p)
        f_u, f_v = M.harmonic_friction(g, u, v, self.param_b("A_h", nd), self.cos_power)
        return du + a_u + p_u + f_u, dv + a_v + p_v + f_v

    def step(self, state: dict, t: float | torch.Tensor = 0.0) -> dict:
        g = self.grid
        u, v, temp, salt = state["u"], state["v"], state["temp"], state["salt"]
        nd = u.ndim
        ab1, ab0 = 1.5 + self.AB_eps, 0.5 + self.AB_eps
        # mixing coefficients from the current stratification
        n2 = self.n2(salt, temp)
        conv = self.param_b("kappa_conv", nd) * smooth_step(
            -n2, sharpness=self.conv_sharpness, x0=self.conv_threshold
        )
        kappaH = self.param_b("kappaH_0", nd) + conv
        kappaM_t = self.param_b("kappaM_0", nd) + conv
        # --- momentum
        du, dv = self.momentum_tendency(state)
        dt = self.dt_mom
        du, dv = dt * du, dt * dv  # AB2 history is kept as increments (units of the fields)
        u1 = u + (ab1 * du - ab0 * state["du"]) * g.mask_u
        v1 = v + (ab1 * dv - ab0 * state["dv"]) * g.mask_v
        km_u = 0.5 * (kappaM_t + g.east(kappaM_t))
        km_v = 0.5 * (kappaM_t + g.north(kappaM_t))
        wind = self.taux * (self.param_b("taux_0", nd - 1) / self.taux_ref) / M.RHO_0  # m2 s-2
        r_bot = self.param_b("r_bot", nd)
        u1 = T.implicit_vertical(g, u1, km_u, g.mask_u, dt, bottom_drag=r_bot,
                                 surface_flux=wind * g.mask_u[0])  # fmt: skip
        v1 = T.implicit_vertical(g, v1, km_v, g.mask_v, dt, bottom_drag=r_bot)
        u1, v1, _ = self.solver.project(u1, v1)
        # --- tracers (with the new, depth-integrated non-divergent velocities)
        dtt = self.dt_tracer
        tr = M.transports(g, u1, v1)
        dtemp = T.advection(g, temp, tr, dtt, self.advection)
        dsalt = T.advection(g, salt, tr, dtt, self.advection)
        if not self.isoneutral:
            K_h = self.param_b("K_h", nd)
            dtemp = dtemp + T.horizontal_diffusion(g, temp, K_h)
            dsalt = dsalt + T.horizontal_diffusion(g, salt, K_h)
        dtemp, dsalt = dtt * dtemp, dtt * dsalt
        temp1 = temp + (ab1 * dtemp - ab0 * state["dtemp"]) * g.mask_t
        salt1 = salt + (ab1 * dsalt - ab0 * state["dsalt"]) * g.mask_t
        if self.isoneutral:  # Veros: after the explicit update, before vertical mixing, from the old tracers
            K_iso, K_gm = self.param_b("K_iso_0", nd), self.param_b("K_gm_0", nd)
            tensor = isoneutral_tensor(
                temp, salt, g, K_iso=K_iso, K_iso_steep=self.param_b("K_iso_steep", nd)
            )
            temp1 = isoneutral_diffusion(temp, temp1, tensor, g, dt=dtt, K_iso=K_iso, K_gm=K_gm).tr_new
            salt1 = isoneutral_diffusion(salt, salt1, tensor, g, dt=dtt, K_iso=K_iso, K_gm=K_gm).tr_new
            temp1, salt1 = temp1 * g.mask_t, salt1 * g.mask_t
        rate = 1.0 / self.param_b("t_rest", nd)
        temp1 = T.implicit_vertical(g, temp1, kappaH, g.mask_t, dtt, surface_relax=(rate, self.t_star))
        salt1 = T.implicit_vertical(g, salt1, kappaH, g.mask_t, dtt)
        return {"u": u1, "v": v1, "temp": temp1, "salt": salt1, "du": du, "dv": dv, "dtemp": dtemp,
                "dsalt": dsalt}  # fmt: skip

    # -- output ------------------------------------------------------------------------------------------
    def output_variables(self) -> list[Variable]:
        d3 = ("z", "y", "x")
        return [
            Variable("u", "m s-1", "eastward velocity", ("z", "y", "xu")),
            Variable("v", "m s-1", "northward velocity", ("z", "yv", "x")),
            Variable("temp", "degC", "potential temperature", d3),
            Variable("salt", "g kg-1", "salinity", d3),
            Variable(
                "acc_transport", "Sv", "zonal transport through the re-entrant channel", (), "diagnostic"
            ),
            Variable("psi", "Sv", "barotropic streamfunction", ("yv", "xu"), "diagnostic"),
            Variable("kinetic_energy", "m2 s-2", "volume-mean kinetic energy", (), "diagnostic"),
            Variable("sst", "degC", "sea surface temperature", ("y", "x"), "diagnostic"),
            Variable("moc", "Sv", "meridional overturning streamfunction", ("zw", "yv"), "diagnostic"),
        ]

    def output(self, state: dict, t: float = 0.0) -> dict[str, torch.Tensor]:
        from .diagnostics import kinetic_energy_mean, overturning

        g = self.grid
        u, v = state["u"], state["v"]
        return {
            "u": u,
            "v": v,
            "temp": state["temp"],
            "salt": state["salt"],
            "acc_transport": channel_transport(g, u),
            "psi": streamfunction(g, u, v),
            "kinetic_energy": kinetic_energy_mean(g, u, v),
            "sst": state["temp"][..., 0, :, :],
            "moc": overturning(g, v),
        }

    def output_coordinates(self) -> dict[str, Coordinate]:
        g = self.grid
        return {
            "x": Coordinate(g.xt.cpu(), "degrees_east", "longitude of T points"),
            "xu": Coordinate(g.xu.cpu(), "degrees_east", "longitude of u points"),
            "y": Coordinate(g.yt.cpu(), "degrees_north", "latitude of T points"),
            "yv": Coordinate(g.yv.cpu(), "degrees_north", "latitude of v points"),
            "z": Coordinate(-g.zt.cpu(), "m", "depth of cell centres (positive down)"),
            "zw": Coordinate(-g.zw.cpu(), "m", "depth of cell bottoms (positive down)"),
        }
