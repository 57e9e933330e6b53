"""The primitive-equation ocean model: hydrostatic, Boussinesq, rigid lid, z-levels, spherical C-grid.

One :meth:`OceanModel.step` (pure) advances, in Veros's order,

0. **vertical mixing coefficients** from the state at the start of the step: with ``mixing="tke"`` (Veros's
   acc_basic) the TKE closure of :mod:`pelagos.ocean.tke` gives the viscosity ``kappaM`` and diffusivity
   ``kappaH`` on the W points from the TKE ``tke`` and N² (:func:`pelagos.ocean.eos.buoyancy_frequency_sq`);
   with ``mixing="constant"`` they are ``kappaM_0``/``kappaH_0`` plus a smooth convective switch;
1. **momentum** by ``dt_mom`` (s) as Veros does it: ``u⁺ = u + dt (du_mix + AB2(du))`` with the explicit
   tendency ``du`` (Coriolis + metric, flux-form advection, hydrostatic pressure gradient, wind stress
   ``τ/ρ₀`` in the surface cell) stepped by AB2 (Veros's ``AB_eps`` = 0.1; the previous tendency starts at
   zero) and the mixing terms ``du_mix`` taken from ``u`` alone (forward): implicit vertical friction
   ``(F⁻¹u − u)/dt`` with ``kappaM``, lateral friction ``A_h cos^p φ``, linear bottom friction ``−r_bot u`` in
   the deepest wet cell; then the rigid-lid projection (:mod:`pelagos.ocean.streamfunction`);
2. **tracers** (temperature °C, salinity g kg⁻¹) by ``dt_tracer`` (s; Bryan acceleration when larger than
   ``dt_mom``) with the new velocities: AB2 of flux-form advection (centred as Veros's acc_basic, or
   superbee-limited) + horizontal diffusion ``K_h`` (or isoneutral + GM mixing), then implicit vertical
   diffusion ``kappaH`` with surface restoring to ``t_star`` over ``t_rest``;
3. with TKE: one implicit **TKE** step over ``dt_mom`` (Veros's ``dt_tke``), forced by the wind
   ``(|τ|/ρ₀)^{3/2}`` at the surface and the energy transfers of this step: vertical-friction dissipation
   ``K_diss_v``, lateral- and bottom-friction dissipation ``K_diss_h``, ``K_diss_bot``, minus the work
   against stratification of vertical mixing ``P_diss_v`` (Veros's energy-consistent form) and of GM
   ``P_diss_skew`` (Veros's acc_basic switches; the globally spread advective term ``P_diss_adv`` is left
   out).

Model time advances by ``dt = dt_tracer`` per step (Veros: 730 steps per 365-day year at 43 200 s).

State: a dict of tensors ``(…, nz, ny, nx)``: ``u, v`` (m s⁻¹), ``temp`` (°C), ``salt`` (g kg⁻¹), the
previous explicit tendencies times their time steps ``du, dv`` (m s⁻¹), ``dtemp`` (°C), ``dsalt`` (g kg⁻¹)
(the AB2 history, kept as increments so that every leaf has the units of its field), and with TKE ``tke``
(m² s⁻², on the W points: ``tke[..., k, :, :]`` on the top face of cell k).

The vertical grid is Veros's (:class:`~pelagos.ocean.grid.Grid` ``vertical="veros"``): T points where Veros
puts them, W-point boxes ``dzw_w``; the hydrostatic pressure is integrated between those T points.
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
from .eos import buoyancy_frequency_sq, density_anomaly, int_drho_dsalt, int_drho_dtemp
from .grid import Grid
from .isoneutral import dissipation_on_w, isoneutral_diffusion, isoneutral_tensor
from .streamfunction import SurfacePressureSolver, channel_transport, streamfunction
from .tke import integrate_tke, surface_tke_forcing, tke_diffusivities, tke_forcing

STATE_KEYS = ("u", "v", "temp", "salt", "du", "dv", "dtemp", "dsalt")
MIXING = ("tke", "constant")


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
        mixing: vertical mixing ``"tke"`` (Veros's TKE closure, acc_basic's; parameters ``c_k``, ``c_eps``,
            ``alpha_tke``, ``kappaM_min``, ``kappaH_min`` as in Veros; Prandtl number 10, Bryan–Lewis floor
            on ``kappaH``; needs a ``vertical="veros"`` grid) or ``"constant"`` (default: ``kappaM_0``,
            ``kappaH_0`` and the convective switch).
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
        mixing: str = "constant",
        c_k: float = 0.1,
        c_eps: float = 0.7,
        alpha_tke: float = 30.0,
        kappaM_min: float = 2e-4,
        kappaH_min: float = 2e-5,
        kappaM_max: float = 100.0,
        mxl_min: float = 1e-8,
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
        if mixing not in MIXING:
            raise ConfigError(
                f"ocean: mixing {mixing!r} is not a vertical mixing scheme; use one of {MIXING}"
            )
        if mixing == "tke" and getattr(grid, "vertical", "centred") != "veros":
            raise ConfigError(
                "ocean: mixing='tke' works on Veros's vertical grid (its W-point boxes); build the grid with "
                "Grid(..., vertical='veros') (acc_grid does) or use mixing='constant'"
            )
        self.mixing = mixing
        self.kappaM_max, self.mxl_min = float(kappaM_max), float(mxl_min)
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
        decl("c_k", c_k, units="1", bounds=(0.0, None), description="TKE mixing-length constant", dtype=dtype)
        decl("c_eps", c_eps, units="1", bounds=(0.0, None), description="TKE dissipation constant",
             dtype=dtype)  # fmt: skip
        decl("alpha_tke", alpha_tke, units="1", bounds=(0.0, None),
             description="TKE vertical diffusivity factor (× kappaM)", dtype=dtype)  # fmt: skip
        decl("kappaM_min", kappaM_min, units="m2 s-1", bounds=(0.0, None),
             description="minimum vertical viscosity (TKE)", dtype=dtype)  # fmt: skip
        decl("kappaH_min", kappaH_min, units="m2 s-1", bounds=(0.0, None),
             description="minimum vertical diffusivity (TKE)", dtype=dtype)  # fmt: skip
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
                      u: float = 0.0, tke: float = 0.0) -> dict:  # fmt: skip
        """Rest (or uniform ``u`` m s⁻¹), temperature linear in depth as Veros's acc_basic sets it,
        ``t_surface (1 − z_T / z_b)`` with ``z_T`` the T-point heights and ``z_b`` the top face of the deepest
        cell (so the deepest cell starts below 0 °C: −1.15 °C for acc_basic), uniform salinity ``salt``
        (g kg⁻¹); with TKE, a uniform ``tke`` (m² s⁻²) on the wet W points (default 0: Veros's start)."""
        g = self.grid
        depth = -g.zt.reshape(-1, 1, 1)
        z_b = float(-g.zw[-2]) if g.nz > 1 else float(-g.zw[-1])
        temp = t_surface * (1 - depth / z_b) * g.mask_t
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
        if self.mixing == "tke":
            s["tke"] = tke * g.mask_t
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

    def hydrostatic_pressure(self, rho: torch.Tensor) -> torch.Tensor:
        """Hydrostatic pressure anomaly over ρ₀ at the T points (m² s⁻²), as Veros integrates it: from the
        surface to ``zt[0]`` with the surface cell's density, then the trapezoid between neighbouring T points
        over their distance ``dzw`` (rigid lid: the surface pressure is the solve's job). On a grid with
        cell-centred T points (``vertical="centred"``): layer by layer,
        :func:`pelagos.ocean.momentum.hydrostatic_pressure`."""
        g = self.grid
        if getattr(g, "vertical", "centred") != "veros":
            return M.hydrostatic_pressure(g, rho)
        b = M.GRAV / M.RHO_0 * (rho - M.RHO_0) * g.mask_t
        dzw = g.dzw_w.reshape(-1, 1, 1)
        top = 0.5 * b[..., :1, :, :] * dzw[:1]
        inner = 0.5 * (b[..., :-1, :, :] + b[..., 1:, :, :]) * dzw[1:]
        return torch.cumsum(torch.cat([top, inner], -3), -3) * g.mask_t

    def momentum_tendency(self, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit (AB2) momentum tendencies (m s⁻²): Coriolis + metric, advection, pressure gradient and the
        wind stress in the surface cell (Veros's ``du``; the frictions are in :meth:`mixing_tendency`)."""
        g = self.grid
        u, v = state["u"], state["v"]
        nd = u.ndim
        du, dv = M.coriolis_metric(g, u, v)
        a_u, a_v = M.advection(g, u, v, M.transports(g, u, v))
        p_u, p_v = M.pressure_gradient(g, self.hydrostatic_pressure(self.rho(state)))
        du, dv = du + a_u + p_u, dv + a_v + p_v
        wind = self.taux * (self.param_b("taux_0", nd - 1) / self.taux_ref) / M.RHO_0  # m2 s-2, (…, ny, 1)
        surf = (wind / g.dz[0]) * g.mask_u[0]
        du = torch.cat([du[..., :1, :, :] + surf.unsqueeze(-3), du[..., 1:, :, :]], -3)
        return du, dv

    def vertical_mixing(self, state: dict) -> dict:
        """Vertical viscosity and diffusivity on the W points (m² s⁻¹, ``kappaM``, ``kappaH``; index k is the
        top face of cell k, the solves use k ≥ 1) from the state at the start of a step; with TKE also the
        :class:`~pelagos.ocean.tke.TKEDiffusivities` (``diff``) for the TKE step."""
        g = self.grid
        temp, salt = state["temp"], state["salt"]
        nd = temp.ndim
        if self.mixing == "tke":
            nsqr = buoyancy_frequency_sq(temp, salt, g.dz, g.mask_t)
            diff = tke_diffusivities(
                state["tke"], nsqr, g.dz, g.mask_t, c_k=self.param_b("c_k", nd),
                kappaM_min=self.param_b("kappaM_min", nd), kappaH_min=self.param_b("kappaH_min", nd),
                kappaM_max=self.kappaM_max, mxl_min=self.mxl_min,
            )  # fmt: skip
            return {"kappaM": diff.kappaM, "kappaH": diff.kappaH, "diff": diff, "Nsqr": nsqr}
        n2 = self.n2(salt, temp)
        conv = self.param_b("kappa_conv", nd) * smooth_step(
            -n2, sharpness=self.conv_sharpness, x0=self.conv_threshold
        )
        pad = lambda a: torch.cat([a[..., :1, :, :], a], -3)  # noqa: E731  (surface W point: unused)
        return {
            "kappaM": pad(self.param_b("kappaM_0", nd) + conv),
            "kappaH": pad(self.param_b("kappaH_0", nd) + conv),
        }

    def _bottom(self, mask: torch.Tensor) -> torch.Tensor:
        return mask * (1 - self.grid.below(mask))

    def _u_to_t(self, a: torch.Tensor) -> torch.Tensor:
        return 0.5 * (a + self.grid.west(a))  # Veros ugrid_to_tgrid (uniform zonal spacing)

    def _v_to_t(self, a: torch.Tensor) -> torch.Tensor:
        g = self.grid
        return 0.5 * (g.area_v * a + g.south(g.area_v * a)) / g.area_t  # Veros vgrid_to_tgrid

    def _lateral_dissipation(self, u: torch.Tensor, v: torch.Tensor, A_h: torch.Tensor) -> torch.Tensor:
        """Veros's ``K_diss_h`` (m² s⁻³ on the W points): the local dissipation of the lateral friction,
        ``A_h cos^p φ |∇u|²`` face by face, each point the mean over its two faces in each direction."""
        g = self.grid
        ct, cv = g.cos_t**self.cos_power, g.cos_v**self.cos_power
        mu, mv = g.mask_u, g.mask_v
        # u: faces west (between u[i-1], u[i]) and north (between u[j], u[j+1])
        dxu = (u - g.west(u)) * mu * g.west(mu)
        dyu = (g.north(u) - u) * mu * g.north(mu)
        ex = A_h * ct * dxu * dxu / g.dxt**2
        ny_ = A_h * cv * g.dxv / g.dxt * dyu * dyu / g.dy**2
        diss_u = 0.5 * (ex + g.east(ex)) + 0.5 * (ny_ + g.south(ny_))
        # v: faces east (between v[i], v[i+1]) and south (between v[j-1], v[j])
        dxv = (g.east(v) - v) * mv * g.east(mv)
        dyv = (v - g.south(v)) * mv * g.south(mv)
        ex = A_h * cv * dxv * dxv / g.dxv**2
        sy = A_h * ct * g.dxt / g.dxv * dyv * dyv / g.dy**2
        diss_v = 0.5 * (ex + g.west(ex)) + 0.5 * (sy + g.north(sy))
        return self._u_to_t(dissipation_on_w(diss_u * mu, g)) + self._v_to_t(dissipation_on_w(diss_v * mv, g))

    def step(self, state: dict, t: float | torch.Tensor = 0.0) -> dict:
        g = self.grid
        u, v, temp, salt = state["u"], state["v"], state["temp"], state["salt"]
        nd = u.ndim
        ab1, ab0 = 1.5 + self.AB_eps, 0.5 + self.AB_eps
        mix = self.vertical_mixing(state)
        kM, kH = mix["kappaM"], mix["kappaH"]
        # --- momentum: u⁺ = u + dt (du_mix + AB2(du)), then the rigid-lid projection
        dt = self.dt_mom
        du, dv = self.momentum_tendency(state)
        du, dv = dt * du, dt * dv  # AB2 history is kept as increments (units of the fields)
        km_u = 0.5 * (kM + g.east(kM))[..., 1:, :, :]
        km_v = 0.5 * (kM + g.north(kM))[..., 1:, :, :]
        uf = T.implicit_vertical(g, u, km_u, g.mask_u, dt)  # vertical friction of u alone (Veros: du_mix)
        vf = T.implicit_vertical(g, v, km_v, g.mask_v, dt)
        A_h = self.param_b("A_h", nd)
        f_u, f_v = M.harmonic_friction(g, u, v, A_h, self.cos_power)
        r_bot = self.param_b("r_bot", nd)
        bot_u, bot_v = self._bottom(g.mask_u), self._bottom(g.mask_v)
        u1 = uf + (dt * (f_u - r_bot * bot_u * u) + ab1 * du - ab0 * state["du"]) * g.mask_u
        v1 = vf + (dt * (f_v - r_bot * bot_v * v) + ab1 * dv - ab0 * state["dv"]) * g.mask_v
        u1, v1, _ = self.solver.project(u1, v1)
        # --- tracers
        dtt = self.dt_tracer
        tr = M.transports(g, u, v)  # Veros advects the tracers with the velocities at the start of the step
        dtemp = T.advection(g, temp, tr, dtt, self.advection)
        dsalt = T.advection(g, salt, tr, dtt, self.advection)
        if not self.isoneutral:
            K_h = self.param_b("K_h", nd)
            dtemp = dtemp + T.horizontal_diffusion(g, temp, K_h)
            dsalt = dsalt + T.horizontal_diffusion(g, salt, K_h)
        dtemp, dsalt = dtt * dtemp, dtt * dsalt
        temp1 = temp + (ab1 * dtemp - ab0 * state["dtemp"]) * g.mask_t
        salt1 = salt + (ab1 * dsalt - ab0 * state["dsalt"]) * g.mask_t
        tke_on = self.mixing == "tke"
        depth = -g.zt.reshape(-1, 1, 1)
        p_skew = None
        if self.isoneutral:  # Veros: after the explicit update, before vertical mixing, from the old tracers
            K_iso, K_gm = self.param_b("K_iso_0", nd), self.param_b("K_gm_0", nd)
            tensor = isoneutral_tensor(
                temp, salt, g, K_iso=K_iso, K_iso_steep=self.param_b("K_iso_steep", nd)
            )
            i_t = int_drho_dtemp(temp, depth) if tke_on else None
            i_s = int_drho_dsalt(depth).to(temp) * torch.ones_like(salt) if tke_on else None
            rt = isoneutral_diffusion(temp, temp1, tensor, g, dt=dtt, K_iso=K_iso, K_gm=K_gm, int_drho=i_t)
            rs = isoneutral_diffusion(salt, salt1, tensor, g, dt=dtt, K_iso=K_iso, K_gm=K_gm, int_drho=i_s)
            temp1, salt1 = rt.tr_new * g.mask_t, rs.tr_new * g.mask_t
            if tke_on:
                p_skew = rt.P_diss_skew + rs.P_diss_skew
        # surface restoring heat flux (K m s⁻¹), explicit from the old SST as Veros's forc_temp_surface
        forc_t = g.dz[0] * (self.t_star - temp[..., 0, :, :]) / self.param_b("t_rest", nd - 1)
        kh = kH[..., 1:, :, :]
        temp1 = T.implicit_vertical(g, temp1, kh, g.mask_t, dtt, surface_flux=forc_t)
        salt1 = T.implicit_vertical(g, salt1, kh, g.mask_t, dtt)
        out = {"u": u1, "v": v1, "temp": temp1, "salt": salt1, "du": du, "dv": dv, "dtemp": dtemp,
               "dsalt": dsalt}  # fmt: skip
        if tke_on:
            # energy transfers of this step (m² s⁻³ on the W points), Veros's acc_basic TKE sources
            mu, mv = g.mask_u, g.mask_v
            dzw = g.dzw.reshape(-1, 1, 1)
            zero = torch.zeros_like(u[..., :1, :, :])

            def shear_diss(x, xf, km, m):
                d = (x[..., :-1, :, :] - x[..., 1:, :, :]) * (xf[..., :-1, :, :] - xf[..., 1:, :, :])
                return torch.cat([zero, d * km / dzw**2 * m[:-1] * m[1:]], -3)

            k_diss_v = self._u_to_t(shear_diss(u, uf, km_u, mu)) + self._v_to_t(shear_diss(v, vf, km_v, mv))
            k_diss_bot = self._u_to_t(dissipation_on_w(r_bot * bot_u * u * u, g)) + self._v_to_t(
                dissipation_on_w(r_bot * bot_v * v * v, g)
            )
            k_diss_h = self._lateral_dissipation(u, v, A_h)
            # work of vertical mixing against the stratification, Veros's energy-consistent P_diss_v
            c = M.GRAV / M.RHO_0
            mw = g.mask_t[1:] * g.mask_t[:-1]
            i_t1 = int_drho_dtemp(temp1, depth)
            i_s1 = int_drho_dsalt(depth).to(temp1)
            p_v = (
                -c
                * (i_t1[..., 1:, :, :] - i_t1[..., :-1, :, :])
                / dzw
                * kh
                * (temp1[..., :-1, :, :] - temp1[..., 1:, :, :])
                / dzw
                - c * (i_s1[1:] - i_s1[:-1]) / dzw * kh * (salt1[..., :-1, :, :] - salt1[..., 1:, :, :]) / dzw
            ) * mw
            # surface: the restoring heat flux into the ocean
            p_top = -c * 2 * i_t1[..., 0, :, :] / g.dzw_w[0] * forc_t * g.mask_t[0]
            p_diss_v = torch.cat([p_top.unsqueeze(-3), p_v], -3)
            p_skew = 0.0 if p_skew is None else p_skew
            forc = tke_forcing(k_diss_v, P_diss_v=p_diss_v, K_diss_h=k_diss_h, P_diss_skew=p_skew,
                               K_diss_bot=k_diss_bot)  # fmt: skip
            wind = self.taux * (self.param_b("taux_0", nd - 1) / self.taux_ref)  # N m-2, (…, ny, 1)
            wind = wind * g.mask_u[0]  # Veros: surface_taux = taux · maskU
            forc_surf = surface_tke_forcing(wind, torch.zeros_like(wind), g.cyclic)
            step = integrate_tke(
                state["tke"], forc, mix["diff"], g.dz, g.mask_t, forc_surf, dt_tke=dt,
                alpha_tke=self.param_b("alpha_tke", nd), c_eps=self.param_b("c_eps", nd),
            )  # fmt: skip
            out["tke"] = step.tke
        return out

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
