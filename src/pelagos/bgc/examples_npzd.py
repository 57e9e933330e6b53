"""FABM ``examples/npzd_{nut,phy,zoo,det}``: the NPZD of ``gotm/npzd`` split into four coupled components.

Each component owns one state variable ``c`` (mmol N m-3) and sends its losses to, or takes its gains from,
*state dependencies* that a fabm.yaml ``coupling:`` links to another instance (see
``fabm-examples-npzd-components.yaml``)::

    phy:  uptake_target (nutrient source), excretion_target, mortality_target
    zoo:  grazing_target (prey), excretion_target, mortality_target
    det:  mineralisation_target

With the test-case couplings (phy/zoo excrete to nut, die to det; zoo grazes phy; det mineralises to nut) and
equal parameters, the rates equal those of ``gotm/npzd`` term by term: same primary production (with the
background p0 in phy), same Ivlev grazing (with the background z0 in zoo), same mortality switch at i_min,
same light extinction kc·(phy + p0) + kc·det. The differences are bookkeeping only: ``kc`` is a parameter of
both phy and det, and the optional DIC coupling of ``gotm/npzd`` does not exist here.
"""

from __future__ import annotations

import torch

from .base import BGCModel
from .npzd import PAR, PER_DAY, SECONDS_PER_DAY, SURFACE_PAR, ivlev, light_limitation

TN = {"total_nitrogen": 1.0}


class NpzdNut(BGCModel):
    """``examples/npzd_nut``: a passive dissolved nutrient (no processes of its own)."""

    fabm_name = "examples/npzd_nut"

    def __init__(self) -> None:
        super().__init__()
        self.register_state_variable(
            "c",
            "mmol m-3",
            "concentration",
            initial_value=4.5,
            minimum=0.0,
            no_river_dilution=True,
            conserved=TN,
        )


class NpzdPhy(BGCModel):
    """``examples/npzd_phy``: phytoplankton growing on ``uptake_target`` (light- and nutrient-limited)."""

    fabm_name = "examples/npzd_phy"

    def __init__(self) -> None:
        super().__init__()
        rp = self.register_parameter
        rp("p0", 0.0225, "mmol m-3", "background concentration", minimum=0.0, maximum=10.0)
        rp("kc", 0.03, "m2 mmol-1", "specific light extinction", minimum=0.0, maximum=1.0)
        rp("i_min", 25.0, "W m-2", "minimum light intensity in euphotic zone", minimum=0.0, maximum=500.0)
        rp(
            "rmax",
            1.0,
            "d-1",
            "maximum specific growth rate",
            scale_factor=PER_DAY,
            minimum=0.0,
            maximum=10.0,
        )
        rp("alpha", 0.3, "mmol m-3", "half-saturation nutrient concentration", minimum=0.0, maximum=20.0)
        rp("rpn", 0.01, "d-1", "excretion rate", scale_factor=PER_DAY, minimum=0.0, maximum=1.0)
        rp("rpdu", 0.02, "d-1", "mortality in euphotic zone", scale_factor=PER_DAY, minimum=0.0, maximum=1.0)
        rp(
            "rpdl",
            0.1,
            "d-1",
            "mortality below euphotic zone",
            scale_factor=PER_DAY,
            minimum=0.0,
            maximum=1.0,
        )
        w_p = rp(
            "w_p",
            -1.0,
            "m d-1",
            "vertical velocity (<0 for sinking)",
            scale_factor=PER_DAY,
            minimum=-100.0,
            maximum=100.0,
        )
        self.register_state_variable(
            "c",
            "mmol m-3",
            "concentration",
            initial_value=0.0,
            minimum=0.0,
            vertical_movement=w_p * PER_DAY,
            conserved=TN,
        )
        self.register_state_dependency("uptake_target", "mmol m-3", "nutrient source")
        self.register_state_dependency("excretion_target", "mmol m-3", "sink for excreted matter")
        self.register_state_dependency("mortality_target", "mmol m-3", "sink for dead matter")
        self.register_diagnostic_variable("PPR", "mmol m-3 d-1", "gross primary production rate")
        self.register_diagnostic_variable("NPR", "mmol m-3 d-1", "net community production rate")
        self.register_diagnostic_variable("PAR", "W m-2", "photosynthetically active radiation")
        self.register_dependency("par", PAR, "W m-2")
        self.register_dependency("I_0", SURFACE_PAR, "W m-2")

    def _fluxes(self, s, env):
        p, n = s["c"], s["uptake_target"]
        nd = p.ndim
        par = env[PAR]
        I_0 = torch.as_tensor(env[SURFACE_PAR])
        I_0 = I_0.unsqueeze(-1) if I_0.ndim else I_0
        i_min = self.p("i_min", nd)
        iopt = torch.maximum(0.25 * I_0, i_min)
        rpd = torch.where(par >= i_min, self.p("rpdu", nd), self.p("rpdl", nd))
        primprod = (
            self.p("rmax", nd)
            * light_limitation(par, iopt)
            * n
            / (self.p("alpha", nd) + n)
            * (p + self.p("p0", nd))
        )
        return primprod, self.p("rpn", nd) * p, rpd * p, par

    def _diag(self, primprod, exc, par):
        return {"PPR": primprod * SECONDS_PER_DAY, "NPR": (primprod - exc) * SECONDS_PER_DAY, "PAR": par}

    def do(self, s, env):
        primprod, exc, mort, par = self._fluxes(s, env)
        rates = {"c": primprod - exc - mort}
        _add(rates, "uptake_target", -primprod)
        _add(rates, "excretion_target", exc)
        _add(rates, "mortality_target", mort)
        return rates, self._diag(primprod, exc, par)

    def do_ppdd(self, s, env):
        primprod, exc, mort, par = self._fluxes(s, env)
        t = {
            ("uptake_target", "c"): primprod,
            ("c", "excretion_target"): exc,
            ("c", "mortality_target"): mort,
        }
        return t, self._diag(primprod, exc, par)

    def vertical_movement(self, s, env):
        return {"c": torch.zeros_like(s["c"]) + self.p("w_p", s["c"].ndim)}

    def light_extinction(self, s, env):
        nd = s["c"].ndim
        return self.p("kc", nd) * (s["c"] + self.p("p0", nd))


class NpzdZoo(BGCModel):
    """``examples/npzd_zoo``: zooplankton grazing ``grazing_target`` (Ivlev)."""

    fabm_name = "examples/npzd_zoo"

    def __init__(self) -> None:
        super().__init__()
        rp = self.register_parameter
        rp("z0", 0.0225, "mmol m-3", "background concentration", minimum=0.0, maximum=10.0)
        rp(
            "gmax",
            0.5,
            "d-1",
            "maximum specific grazing rate",
            scale_factor=PER_DAY,
            minimum=0.0,
            maximum=10.0,
        )
        rp("iv", 1.1, "m3 mmol-1", "Ivlev grazing constant", minimum=0.0, maximum=20.0)
        rp("rzn", 0.01, "d-1", "excretion rate", scale_factor=PER_DAY, minimum=0.0, maximum=1.0)
        rp("rzd", 0.02, "d-1", "mortality", scale_factor=PER_DAY, minimum=0.0, maximum=1.0)
        self.register_state_variable(
            "c", "mmol m-3", "concentration", initial_value=0.0, minimum=0.0, conserved=TN
        )
        self.register_state_dependency("grazing_target", "mmol m-3", "prey source")
        self.register_state_dependency("excretion_target", "mmol m-3", "sink for excreted matter")
        self.register_state_dependency("mortality_target", "mmol m-3", "sink for dead matter")

    def _fluxes(self, s):
        z, p = s["c"], s["grazing_target"]
        nd = z.ndim
        g = self.p("gmax", nd) * ivlev(p, self.p("iv", nd)) * (z + self.p("z0", nd))
        return g, self.p("rzn", nd) * z, self.p("rzd", nd) * z

    def do(self, s, env):
        g, exc, mort = self._fluxes(s)
        rates = {"c": g - exc - mort}
        _add(rates, "grazing_target", -g)
        _add(rates, "excretion_target", exc)
        _add(rates, "mortality_target", mort)
        return rates, {}

    def do_ppdd(self, s, env):
        g, exc, mort = self._fluxes(s)
        return {
            ("grazing_target", "c"): g,
            ("c", "excretion_target"): exc,
            ("c", "mortality_target"): mort,
        }, {}


class NpzdDet(BGCModel):
    """``examples/npzd_det``: sinking detritus remineralised into ``mineralisation_target``."""

    fabm_name = "examples/npzd_det"

    def __init__(self) -> None:
        super().__init__()
        rp = self.register_parameter
        w_d = rp(
            "w_d",
            -5.0,
            "m d-1",
            "vertical velocity (<0 for sinking)",
            scale_factor=PER_DAY,
            minimum=-100.0,
            maximum=100.0,
        )
        rp("kc", 0.03, "m2 mmol-1", "specific light extinction", minimum=0.0, maximum=1.0)
        rp("rdn", 0.003, "d-1", "remineralization rate", scale_factor=PER_DAY, minimum=0.0, maximum=1.0)
        self.register_state_variable(
            "c",
            "mmol m-3",
            "concentration",
            initial_value=4.5,
            minimum=0.0,
            vertical_movement=w_d * PER_DAY,
            conserved=TN,
        )
        self.register_state_dependency("mineralisation_target", "mmol m-3", "sink for remineralized matter")

    def do(self, s, env):
        remin = self.p("rdn", s["c"].ndim) * s["c"]
        rates = {"c": -remin}
        _add(rates, "mineralisation_target", remin)
        return rates, {}

    def do_ppdd(self, s, env):
        return {("c", "mineralisation_target"): self.p("rdn", s["c"].ndim) * s["c"]}, {}

    def vertical_movement(self, s, env):
        return {"c": torch.zeros_like(s["c"]) + self.p("w_d", s["c"].ndim)}

    def light_extinction(self, s, env):
        return self.p("kc", s["c"].ndim) * s["c"]


def _add(rates: dict[str, torch.Tensor], key: str, r: torch.Tensor) -> None:
    # Two targets may be the same variable (excretion and uptake both nut/c): add, never overwrite.
    rates[key] = rates[key] + r if key in rates else r
