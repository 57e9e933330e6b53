"""``gotm/npzd``: the NPZD model of GOTM/FABM (Fennel & Neumann 1996; Burchard et al. 2005).

Four state variables in mmol N m-3 — nutrient ``nut``, phytoplankton ``phy``, zooplankton ``zoo``, detritus
``det`` — and seven first-order or saturating fluxes (rates per second; parameters in the yaml units of FABM,
rates per day with ``scale_factor = 1/86400``):

    iopt     = max(I_0 / 4, i_min)                      light optimum from *surface* PAR
    rpd      = rpdu if PAR >= i_min else rpdl           mortality switch (euphotic / below)
    primprod = rmax · PAR/iopt · exp(1 − PAR/iopt) · nut/(alpha + nut) · (phy + p0)
    g        = gmax · (1 − exp(−iv² phy²)) · (zoo + z0)
    dnut/dt  = −primprod + rpn phy + rzn zoo + rdn det
    dphy/dt  =  primprod − g − rpn phy − rpd phy
    dzoo/dt  =  g − rzn zoo − rzd zoo
    ddet/dt  =  rpd phy + rzd zoo − rdn det

Total nitrogen nut + phy + zoo + det is conserved by the sources. Phytoplankton sinks at ``w_p`` (default
−1 m d-1), detritus at ``w_d`` (−5 m d-1). Light attenuation contribution kc·(phy + det + p0) m-1.
Diagnostics as FABM: ``PPR = primprod`` and ``NPR = primprod − rpn phy`` in mmol m-3 **d-1**,
``PAR`` in W m-2.
An optional coupling ``dic`` receives ``dic_per_n · dnut/dt``.

GOTM hands the host's I_0 (total shortwave after albedo) to FABM as "surface PAR": keep that quirk in the host
to match GOTM output (see docs/bgc.md).
"""

from __future__ import annotations

import torch

from .base import BGCModel

PER_DAY = 1.0 / 86400.0
SECONDS_PER_DAY = 86400.0
PAR = "downwelling_photosynthetic_radiative_flux"
SURFACE_PAR = "surface_downwelling_photosynthetic_radiative_flux"

Transfers = dict[tuple[str | None, str | None], torch.Tensor]


def light_limitation(par: torch.Tensor, iopt: torch.Tensor) -> torch.Tensor:
    """Steele-type photosynthesis curve x·exp(1 − x), x = PAR/iopt (dimensionless, 1 at the optimum)."""
    x = par / iopt
    return x * torch.exp(1.0 - x)


def ivlev(p: torch.Tensor, iv: torch.Tensor) -> torch.Tensor:
    """Ivlev (squared) grazing saturation 1 − exp(−iv² p²) (dimensionless)."""
    return 1.0 - torch.exp(-(iv * iv) * p * p)


class NPZD(BGCModel):
    """FABM ``gotm/npzd`` (see module docstring for the equations)."""

    fabm_name = "gotm/npzd"

    def __init__(self) -> None:
        super().__init__()
        rp = self.register_parameter
        rp("p0", 0.0225, "mmol m-3", "background phytoplankton concentration", minimum=0.0, maximum=10.0)
        rp("z0", 0.0225, "mmol m-3", "background zooplankton concentration", minimum=0.0, maximum=10.0)
        rp(
            "kc",
            0.03,
            "m2 mmol-1",
            "specific light extinction of phytoplankton and detritus",
            minimum=0.0,
            maximum=1.0,
        )
        rp("i_min", 25.0, "W m-2", "minimum light intensity in euphotic zone", minimum=0.0, maximum=500.0)
        rp(
            "rmax",
            1.0,
            "d-1",
            "maximum specific growth rate of phytoplankton",
            scale_factor=PER_DAY,
            minimum=0.0,
            maximum=10.0,
        )
        rp(
            "gmax",
            0.5,
            "d-1",
            "maximum specific grazing rate of zooplankton",
            scale_factor=PER_DAY,
            minimum=0.0,
            maximum=10.0,
        )
        rp("iv", 1.1, "m3 mmol-1", "Ivlev grazing constant", minimum=0.0, maximum=20.0)
        rp(
            "alpha",
            0.3,
            "mmol m-3",
            "half-saturation nutrient concentration for phytoplankton",
            minimum=0.0,
            maximum=20.0,
        )
        rp(
            "rpn",
            0.01,
            "d-1",
            "loss rate of phytoplankton to nutrients",
            scale_factor=PER_DAY,
            minimum=0.0,
            maximum=1.0,
        )
        rp(
            "rzn",
            0.01,
            "d-1",
            "loss rate of zooplankton to nutrients",
            scale_factor=PER_DAY,
            minimum=0.0,
            maximum=1.0,
        )
        rp(
            "rdn",
            0.003,
            "d-1",
            "detritus remineralization rate",
            scale_factor=PER_DAY,
            minimum=0.0,
            maximum=1.0,
        )
        rp(
            "rpdu",
            0.02,
            "d-1",
            "phytoplankton mortality in euphotic zone",
            scale_factor=PER_DAY,
            minimum=0.0,
            maximum=1.0,
        )
        rp(
            "rpdl",
            0.1,
            "d-1",
            "phytoplankton mortality below euphotic zone",
            scale_factor=PER_DAY,
            minimum=0.0,
            maximum=1.0,
        )
        rp("rzd", 0.02, "d-1", "zooplankton mortality", scale_factor=PER_DAY, minimum=0.0, maximum=1.0)
        rp("dic_per_n", 106.0 / 16.0, "-", "molar C:N ratio of biomass", minimum=0.0, maximum=100.0)
        w_p = rp(
            "w_p",
            -1.0,
            "m d-1",
            "vertical velocity of phytoplankton (<0 for sinking)",
            scale_factor=PER_DAY,
            minimum=-100.0,
            maximum=100.0,
        )
        w_d = rp(
            "w_d",
            -5.0,
            "m d-1",
            "vertical velocity of detritus (<0 for sinking)",
            scale_factor=PER_DAY,
            minimum=-100.0,
            maximum=100.0,
        )

        tn = {"total_nitrogen": 1.0}
        sv = self.register_state_variable
        sv(
            "nut",
            "mmol m-3",
            "nutrients",
            initial_value=4.5,
            minimum=0.0,
            no_river_dilution=True,
            conserved=tn,
        )
        sv(
            "phy",
            "mmol m-3",
            "phytoplankton",
            initial_value=0.0,
            minimum=0.0,
            vertical_movement=w_p * PER_DAY,
            conserved=tn,
        )
        sv("zoo", "mmol m-3", "zooplankton", initial_value=0.0, minimum=0.0, conserved=tn)
        sv(
            "det",
            "mmol m-3",
            "detritus",
            initial_value=4.5,
            minimum=0.0,
            vertical_movement=w_d * PER_DAY,
            conserved=tn,
        )
        self.register_state_dependency("dic", "mmol m-3", "total dissolved inorganic carbon", required=False)

        self.register_diagnostic_variable("PPR", "mmol m-3 d-1", "gross primary production rate")
        self.register_diagnostic_variable("NPR", "mmol m-3 d-1", "net community production rate")
        self.register_diagnostic_variable("PAR", "W m-2", "photosynthetically active radiation")

        self.register_dependency("par", PAR, "W m-2")
        self.register_dependency("I_0", SURFACE_PAR, "W m-2")

    # -- the fluxes, shared by do and do_ppdd -----------------------------------------------------------
    def _fluxes(self, s: dict[str, torch.Tensor], env: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n, p, z, d = s["nut"], s["phy"], s["zoo"], s["det"]
        nd = n.ndim
        P = lambda name: self.p(name, nd)  # noqa: E731 - SI value broadcast against (..., nz)
        par = env[PAR]
        I_0 = torch.as_tensor(env[SURFACE_PAR])
        I_0 = I_0.unsqueeze(-1) if I_0.ndim else I_0  # horizontal (...,) against interior (..., nz)
        i_min = P("i_min")
        iopt = torch.maximum(0.25 * I_0, i_min)
        rpd = torch.where(par >= i_min, P("rpdu"), P("rpdl"))
        primprod = P("rmax") * light_limitation(par, iopt) * n / (P("alpha") + n) * (p + P("p0"))
        g = P("gmax") * ivlev(p, P("iv")) * (z + P("z0"))
        return {
            "primprod": primprod,
            "grazing": g,
            "p_exc": P("rpn") * p,
            "z_exc": P("rzn") * z,
            "remin": P("rdn") * d,
            "p_mort": rpd * p,
            "z_mort": P("rzd") * z,
            "par": par,
        }

    def _diagnostics(self, f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "PPR": f["primprod"] * SECONDS_PER_DAY,
            "NPR": (f["primprod"] - f["p_exc"]) * SECONDS_PER_DAY,
            "PAR": f["par"],
        }

    def do(self, s, env):
        f = self._fluxes(s, env)
        dn = -f["primprod"] + f["p_exc"] + f["z_exc"] + f["remin"]
        rates = {
            "nut": dn,
            "phy": f["primprod"] - f["grazing"] - f["p_exc"] - f["p_mort"],
            "zoo": f["grazing"] - f["z_exc"] - f["z_mort"],
            "det": f["p_mort"] + f["z_mort"] - f["remin"],
        }
        if "dic" in s:
            rates["dic"] = self.p("dic_per_n", dn.ndim) * dn
        return rates, self._diagnostics(f)

    def do_ppdd(self, s, env):
        f = self._fluxes(s, env)
        t: Transfers = {
            ("nut", "phy"): f["primprod"],
            ("phy", "zoo"): f["grazing"],
            ("phy", "nut"): f["p_exc"],
            ("zoo", "nut"): f["z_exc"],
            ("det", "nut"): f["remin"],
            ("phy", "det"): f["p_mort"],
            ("zoo", "det"): f["z_mort"],
        }
        if "dic" in s:
            # DIC follows the net nutrient change; FABM puts it on the diagonal of the production matrix.
            dn = -f["primprod"] + f["p_exc"] + f["z_exc"] + f["remin"]
            ddic = self.p("dic_per_n", dn.ndim) * dn
            t[(None, "dic")] = torch.clamp(ddic, min=0.0)
            t[("dic", None)] = torch.clamp(-ddic, min=0.0)
        return t, self._diagnostics(f)

    def vertical_movement(self, s, env):
        # Broadcast views, not (B, nz) copies: unless w_p/w_d are batched per column, every column shares one
        # velocity row, and the host computes the sinking's Courant coefficients once for all columns.
        ref = s["phy"]
        nd, nz = ref.ndim, ref.shape[-1]

        def w(name: str) -> torch.Tensor:
            v = self.p(name, nd)
            return v.expand(*v.shape[:-1], nz)

        return {"phy": w("w_p"), "det": w("w_d")}

    def light_extinction(self, s, env):
        nd = s["phy"].ndim
        return self.p("kc", nd) * (s["phy"] + s["det"] + self.p("p0", nd))
