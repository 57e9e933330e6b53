"""ECOSMO II (Daewel & Schrum 2013; ECOSMO II(CHL), Yumruktepe et al. 2022) as a pelagos BGC model.

The FABM model ``nersc/ecosmo_operational`` (fabm.yaml also writes ``nersc_ecosmo_operational``), rewritten in
PyTorch from its published equations: same parameter names (fabm.yaml keys, matched case-insensitively as FABM
does), defaults, units and scale factors, same state variables, dependencies, switches and diagnostics.

Currency: every biomass and nutrient pool is in **mgC m-3** (nutrients as carbon equivalents through the
Redfield ratios C:N = C:Si = 6.625, C:P = 106, 12.01 mgC per mmol C); oxygen in mmol O2 m-3; chlorophyll in
mgChl m-3; sediment pools in mgC m-2. All rates are per second.

Hard switches (Liebig minima, anti-extinction loss switches, oxic/anoxic branches, light and salinity gates of
cyanobacteria, the resuspension threshold) are exactly FABM's by default; ``smooth=True`` replaces them by C∞
versions of width ``scale/sharpness`` (see :mod:`pelagos.bgc.ecosmo_switches`). The defaults are FABM's
behaviour as built (checked against a GOTM+FABM build, docs/ecosmo.md): the one FABM quirk that a build
shows (the cyanobacteria preference counted twice in the grazing denominators) is on by default and can be
switched off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..core.errors import ConfigError
from .base import BGCModel, mean_key
from .ecosmo_switches import Switches

# Redfield ratios and unit conversions of ECOSMO.
C_N = 6.625  # mol C per mol N
C_P = 106.0  # mol C per mol P
C_SI = 6.625  # mol C per mol Si
MGC = 12.01  # mg C per mmol C
O2_ML = 44.6608009  # mmol O2 m-3 per ml O2 l-1
DAY = 86400.0
# Two constants of FABM's do_bottom are written as default-kind (single precision) Fortran literals, so a
# build uses their float32 values: the nitrification rate 0.1 d-1 and the burial factor 2.0E-3 (1.5e-8 and
# 4.7e-8 relative to the decimal values).
F32_0P1 = 0.10000000149011612
F32_2EM3 = 0.0020000000949949026

PER_DAY = 1.0 / DAY
N2C = C_N * MGC  # mmol N m-3 -> mgC m-3
P2C = C_P * MGC
SI2C = C_SI * MGC

PAR = "downwelling_photosynthetic_radiative_flux"
SURFACE_PAR = "surface_downwelling_photosynthetic_radiative_flux"
MEAN_PERIOD = 86400.0  # s, 24-h running means of PAR and surface PAR ...
MEAN_RESOLUTION = 3600.0  # s, ... sampled hourly (FABM temporal_mean)

# (fabm.yaml name, default in yaml units, yaml units, long name, scale factor to SI), in FABM's order.
PARAMETERS: list[tuple[str, float, str, str, float]] = [
    ("zpr", 0.001, "1/day", "extra zooplankton loss rate (leaves the system)", PER_DAY),
    ("frr", 0.4, "-", "fraction of detritus production that goes to DOM", 1.0),
    ("nfixation_minimum_daily_par", 40.0, "W/m**2", "daily-mean PAR above which cyanobacteria fix N", 1.0),
    ("bg_growth_minimum_daily_rad", 120.0, "W/m**2", "daily-mean surface PAR needed for cyanobacteria", 1.0),
    ("surface_deposition_no3", 0.0, "mmolN/m**2 d", "surface deposition of nitrate", N2C * PER_DAY),
    ("surface_deposition_nh4", 0.0, "mmolN/m**2 d", "surface deposition of ammonium", N2C * PER_DAY),
    ("surface_deposition_pho", 0.0, "mmolP/m**2 d", "surface deposition of phosphate", P2C * PER_DAY),
    ("surface_deposition_sil", 0.0, "mmolSi/m**2 d", "surface deposition of silicate", SI2C * PER_DAY),
    ("muPl", 1.30, "1/day", "max growth rate for Pl (diatoms)", PER_DAY),
    ("muPs", 1.10, "1/day", "max growth rate for Ps (flagellates)", PER_DAY),
    ("aa", 0.04, "m**2/W", "photosynthesis efficiency", 1.0),
    ("EXw", 0.041, "1/m", "background light extinction", 1.0),
    ("Exphy", 0.04, "m**2/mgCHL", "phytoplankton self-shading", 1.0),  # units/scale set in __init__
    ("Exdet", 0.0, "m**2/molC", "detritus self-shading", 1.0e-3),
    ("Exdom", 0.0, "m**2/molC", "DOM self-shading", 1.0e-3),
    ("rNH4", 0.20, "mmolN/m**3", "NH4 half saturation", N2C),
    ("rNO3", 0.50, "mmolN/m**3", "NO3 half saturation", N2C),
    ("psi", 3.0, "m**3/mmolN", "NH4 inhibition of NO3 uptake", 1.0 / N2C),
    ("mPl", 0.04, "1/day", "Pl mortality rate", PER_DAY),
    ("mPs", 0.08, "1/day", "Ps mortality rate", PER_DAY),
    ("GrZlP", 0.80, "1/day", "grazing rate Zl on phytoplankton", PER_DAY),
    ("GrZsP", 1.00, "1/day", "grazing rate Zs on phytoplankton", PER_DAY),
    ("GrZlZ", 0.50, "1/day", "grazing rate Zl on Zs", PER_DAY),
    ("Rg", 0.50, "mmolN/m**3", "Zs, Zl grazing half saturation", N2C),
    ("mZl", 0.10, "1/day", "Zl mortality rate", PER_DAY),
    ("mZs", 0.20, "1/day", "Zs mortality rate", PER_DAY),
    ("excZl", 0.06, "1/day", "Zl excretion rate", PER_DAY),
    ("excZs", 0.08, "1/day", "Zs excretion rate", PER_DAY),
    ("gammaZlp", 0.75, "1", "Zl assimilation efficiency on plankton", 1.0),
    ("gammaZsp", 0.75, "1", "Zs assimilation efficiency on plankton", 1.0),
    ("gammaZd", 0.75, "1", "Zl and Zs assimilation efficiency on detritus", 1.0),
    ("reminD", 0.003, "1/day", "detritus remineralisation rate", PER_DAY),
    ("sinkDet", 5.00, "m/day", "detritus sinking rate", PER_DAY),
    ("Wa", 1.00, "m/day", "unused (declared by FABM)", PER_DAY),
    ("rPO4", 0.05, "mmolP/m**3", "PO4 half saturation", P2C),
    ("rSi", 0.50, "mmolSi/m**3", "SiO2 half saturation", SI2C),
    ("regenSi", 0.015, "1/day", "Si regeneration (opal dissolution) rate", PER_DAY),
    ("muBG", 1.00, "1/day", "max growth rate for BG (cyanobacteria)", PER_DAY),
    ("TctrlBG", 1.00, "1/degC", "BG temperature control beta", 1.0),
    ("TrefBG", 0.00, "degC", "BG reference temperature", 1.0),
    ("GrBG", 0.30, "1/day", "max grazing rate on BG", PER_DAY),
    ("mBG", 0.08, "1/day", "BG mortality rate", PER_DAY),
    ("upliftBG", 0.10, "m/day", "BG uplifting rate (unused by FABM)", PER_DAY),
    ("crBotStr", 0.007, "N/m**2", "critical bottom stress for resuspension", 1.0),
    ("resuspRt", 25.0, "1/day", "resuspension rate", PER_DAY),
    ("sedimRt", 3.5, "m/day", "sedimentation (deposition) rate", PER_DAY),
    ("burialRt", 1e-5, "1/day", "burial rate", PER_DAY),
    ("reminSED", 0.001, "1/day", "sediment remineralisation rate", PER_DAY),
    ("TctrlDenit", 0.15, "1/degC", "temperature control of sediment remineralisation", 1.0),
    ("RelSEDp1", 0.15, "-", "sediment P release parameter p1", 1.0),
    ("RelSEDp2", 0.10, "-", "sediment P release parameter p2", 1.0),
    ("reminSEDsi", 0.0002, "1/day", "sediment remineralisation rate of Si", PER_DAY),
    ("sinkOPAL", 5.0, "m/day", "opal sinking rate", PER_DAY),
    ("sinkBG", -1.0, "m/day", "BG sinking rate (negative: rising)", PER_DAY),
    ("sinkDia", 0.0, "m/day", "diatom sinking rate", PER_DAY),
    ("prefZsPs", 0.70, "-", "grazing preference Zs on Ps", 1.0),
    ("prefZsPl", 0.25, "-", "grazing preference Zs on Pl", 1.0),
    ("prefZsD", 0.00, "-", "grazing preference Zs on detritus", 1.0),
    ("prefZsBG", 0.30, "-", "grazing preference Zs on BG", 1.0),
    ("prefZlPs", 0.10, "-", "grazing preference Zl on Ps", 1.0),
    ("prefZlPl", 0.85, "-", "grazing preference Zl on Pl", 1.0),
    ("prefZlZs", 0.15, "-", "grazing preference Zl on Zs", 1.0),
    ("prefZlD", 0.00, "-", "grazing preference Zl on detritus", 1.0),
    ("prefZlBG", 0.30, "-", "grazing preference Zl on BG", 1.0),
    ("MINchl2nPs", 0.50, "mgChl/mmolN", "minimum Chl to N ratio Ps", 1.0 / N2C),
    ("MAXchl2nPs", 3.83, "mgChl/mmolN", "maximum Chl to N ratio Ps", 1.0 / N2C),
    ("MINchl2nPl", 0.50, "mgChl/mmolN", "minimum Chl to N ratio Pl", 1.0 / N2C),
    ("MAXchl2nPl", 2.94, "mgChl/mmolN", "maximum Chl to N ratio Pl", 1.0 / N2C),
    ("MINchl2nBG", 0.50, "mgChl/mmolN", "minimum Chl to N ratio BG", 1.0 / N2C),
    ("MAXchl2nBG", 3.83, "mgChl/mmolN", "maximum Chl to N ratio BG", 1.0 / N2C),
    ("alfaPs", 0.0393, "mmolN m2/(mgChl day W)**-1", "initial slope of the P-I curve Ps", N2C),
    ("alfaPl", 0.0531, "mmolN m2/(mgChl day W)**-1", "initial slope of the P-I curve Pl", N2C),
    ("alfaBG", 0.0393, "mmolN m2/(mgChl day W)**-1", "initial slope of the P-I curve BG", N2C),
]

# Bounds and calibration transforms of the parameters (yaml units). The biological rates, half-saturations and
# efficiencies a calibration frees are positive with a log transform (optimisers step in log space, so a step
# cannot make them negative; a value configured exactly 0 keeps an identity transform, see
# :meth:`pelagos.bgc.base.BGCModel.register_parameter`). The other non-negative parameters, which setups often
# switch off with 0 after construction too (background extinction EXw, grazing preferences, zpr, deposition,
# the sediment rates), get the bound 0 (fractions also 1) with an identity transform: negative values are
# refused, 0 is allowed.
# Parameters whose sign means something (sinking/rising speeds, the reference temperature) are unbounded.
LOG_POSITIVE = frozenset(
    {
        "muPl", "muPs", "muBG", "aa", "Exphy", "rNH4", "rNO3", "psi", "rPO4", "rSi", "mPl", "mPs", "mBG",
        "GrZlP", "GrZsP", "GrZlZ", "GrBG", "Rg", "mZl", "mZs", "excZl", "excZs", "reminD", "regenSi",
        "alfaPs", "alfaPl", "alfaBG",
    }
)  # fmt: skip
UNBOUNDED = frozenset({"TrefBG", "sinkDet", "sinkOPAL", "sinkBG", "sinkDia", "Wa", "upliftBG"})
FRACTIONS = frozenset({"frr", "gammaZlp", "gammaZsp", "gammaZd", "RelSEDp1"})


def parameter_bounds(name: str) -> tuple[float | None, float | None, str]:
    """(minimum, maximum, transform) of ECOSMO parameter ``name`` in yaml units (see :data:`LOG_POSITIVE`)."""
    if name in LOG_POSITIVE:
        return (0.0, None, "auto")
    if name in UNBOUNDED:
        return (None, None, "identity")
    return (0.0, 1.0 if name in FRACTIONS else None, "identity")


# FABM's logical switches (fabm.yaml ``parameters:``) and their defaults; they shape the variable set,
# so they are constructor options, not (differentiable) parameters.
FABM_SWITCHES: dict[str, bool] = {
    "use_cyanos": True,
    "couple_co2": False,
    "use_chl": True,
    "not_0d": True,
    "use_chl_in_PI_curve": False,
    "turn_on_additional_diagnostics": False,
}

# pelagos options (also accepted under fabm.yaml ``parameters:``): smoothing and the FABM quirks.
PELAGOS_OPTIONS: dict[str, object] = {
    "smooth": False,
    "sharpness": 100.0,
    "smooth_only": None,
    "quirk_bg_preference_twice": True,
}

# Options of earlier pelagos versions for FABM "quirks" that no FABM build shows (docs/ecosmo.md): refused
# with the reason, so an old configuration does not silently change meaning.
REMOVED_OPTIONS: dict[str, str] = {
    "quirk_exphy_nitrogen_units": (
        "FABM 980a0eaa (GOTM's pinned FABM) built with gfortran applies Exphy in m2/mgChl with use_chl "
        "(its light attenuation is EXw + Exphy*(diachl+flachl+bgchl)), and FABM master reads use_chl before "
        "Exphy; remove the option"
    ),
    "quirk_dic_without_excretion": (
        "FABM returns zooplankton excretion to DIC since commit 2a9328b9 (Dec 2024, before GOTM's pinned "
        "980a0eaa); remove the option"
    ),
}


def _col(x: torch.Tensor) -> torch.Tensor:
    """A horizontal field (...,) made to broadcast against interior fields (..., nz)."""
    return x.unsqueeze(-1) if torch.is_tensor(x) and x.ndim > 0 else x


class ECOSMO(BGCModel):
    """ECOSMO II(CHL) — FABM ``nersc/ecosmo_operational`` (see module docstring and docs/ecosmo.md).

    Keyword options: the FABM switches (``use_chl``, ``use_cyanos``, ``couple_co2``, ``not_0d``,
    ``use_chl_in_PI_curve``, ``turn_on_additional_diagnostics``), ``smooth``/``sharpness``/``switch_scales``
    (smooth switches; ``smooth_only``: a list of the switch kinds of
    :data:`~pelagos.bgc.ecosmo_switches.DEFAULT_SCALES` to smooth, the others stay hard), and
    ``quirk_bg_preference_twice`` (True = FABM behaviour).
    """

    fabm_name = "nersc/ecosmo_operational"

    def __init__(
        self,
        *,
        use_cyanos: bool = True,
        couple_co2: bool = False,
        use_chl: bool = True,
        not_0d: bool = True,
        use_chl_in_PI_curve: bool = False,
        turn_on_additional_diagnostics: bool = False,
        smooth: bool = False,
        sharpness: float = 100.0,
        switch_scales: Mapping[str, float] | None = None,
        smooth_only: Sequence[str] | None = None,
        quirk_bg_preference_twice: bool = True,
        **removed: object,
    ) -> None:
        super().__init__()
        for k in removed:
            if k in REMOVED_OPTIONS:
                raise ConfigError(f"ECOSMO option {k!r} was removed: {REMOVED_OPTIONS[k]}")
            raise TypeError(f"ECOSMO() got an unexpected keyword argument {k!r}")
        flags = {
            "use_cyanos": use_cyanos,
            "couple_co2": couple_co2,
            "use_chl": use_chl,
            "not_0d": not_0d,
            "use_chl_in_PI_curve": use_chl_in_PI_curve,
            "turn_on_additional_diagnostics": turn_on_additional_diagnostics,
            "smooth": smooth,
            "quirk_bg_preference_twice": quirk_bg_preference_twice,
        }
        for k, v in flags.items():
            if not isinstance(v, bool):
                raise ConfigError(f"ECOSMO option {k!r} must be true or false; got {v!r}")
        self.use_cyanos, self.couple_co2, self.use_chl = use_cyanos, couple_co2, use_chl
        self.not_0d, self.use_chl_in_PI_curve = not_0d, use_chl_in_PI_curve
        self.additional_diagnostics = turn_on_additional_diagnostics
        self.quirk_bg_preference_twice = quirk_bg_preference_twice
        if smooth_only is not None and (
            isinstance(smooth_only, str) or not all(isinstance(k, str) for k in smooth_only)
        ):
            raise ConfigError(
                f"ECOSMO option 'smooth_only' must be a list of switch kinds; got {smooth_only!r}"
            )
        self.sw = Switches(smooth, sharpness, dict(switch_scales or {}), only=smooth_only)

        # -- parameters (fabm.yaml names, yaml units, scale factor to SI) ------------------------------------
        for name, default, units, long_name, scale in PARAMETERS:
            if name == "Exphy" and not use_chl:
                # without chlorophyll states FABM reads Exphy per mmol N, applied to phytoplankton carbon
                units, scale = "m**2/mmolN", 1.0 / N2C
            lo, hi, transform = parameter_bounds(name)
            self.register_parameter(
                name,
                default,
                units,
                long_name,
                scale_factor=scale,
                minimum=lo,
                maximum=hi,
                transform=transform,
            )

        # -- state variables (FABM order, initial values and minimums) ---------------------------------------
        n_q = {"total_nitrogen": 1.0 / N2C}  # mmol N per mgC
        p_q = {"total_phosphorus": 1.0 / P2C}
        si_q = {"total_silicon": 1.0 / SI2C}
        np_q = {**n_q, **p_q}
        sink = {n: d * s for n, d, _, _, s in PARAMETERS if n.startswith("sink")}  # defaults, m s-1
        reg = self.register_state_variable
        reg("no3", "mgC/m3", "nitrate", initial_value=5.0 * N2C, minimum=0.0, conserved=n_q)
        reg("nh4", "mgC/m3", "ammonium", initial_value=0.1 * N2C, minimum=0.0, conserved=n_q)
        reg("pho", "mgC/m3", "phosphate", initial_value=0.3 * P2C, minimum=0.0, conserved=p_q)
        reg("sil", "mgC/m3", "silicate", initial_value=5.0 * SI2C, minimum=0.0, conserved=si_q)
        reg("oxy", "mmolO2/m3", "oxygen", initial_value=85.0, minimum=0.0)
        reg("fla", "mgC/m3", "small phytoplankton", initial_value=1e-4 * N2C, minimum=1e-7, conserved=np_q)
        reg(
            "dia",
            "mgC/m3",
            "large phytoplankton",
            initial_value=1e-4 * N2C,
            minimum=1e-7,
            vertical_movement=-sink["sinkDia"],
            conserved={**np_q, **si_q},
        )
        if use_cyanos:
            reg(
                "bg",
                "mgC/m3",
                "cyanobacteria",
                initial_value=1e-4 * N2C,
                minimum=1e-14,
                vertical_movement=-sink["sinkBG"],
                conserved=np_q,
            )
            if use_chl:
                reg(
                    "bgchl",
                    "mgChl/m3",
                    "cyanobacteria chl-a",
                    initial_value=1e-4 * N2C / 27.0,
                    minimum=1e-14 / 20.0,
                    vertical_movement=-sink["sinkBG"],
                )
        if use_chl:
            reg(
                "diachl",
                "mgChl/m3",
                "large phytoplankton chl-a",
                initial_value=1e-4 * N2C / 27.0,
                minimum=1e-7 / 27.0,
                vertical_movement=-sink["sinkDia"],
            )
            reg(
                "flachl",
                "mgChl/m3",
                "small phytoplankton chl-a",
                initial_value=1e-4 * N2C / 20.0,
                minimum=1e-7 / 20.0,
            )
        reg("microzoo", "mgC/m3", "microzooplankton", initial_value=1e-6 * N2C, minimum=1e-7, conserved=np_q)
        reg("mesozoo", "mgC/m3", "mesozooplankton", initial_value=1e-6 * N2C, minimum=1e-7, conserved=np_q)
        reg(
            "det",
            "mgC/m3",
            "detritus",
            initial_value=2.0 * N2C,
            minimum=0.0,
            vertical_movement=-sink["sinkDet"],
            conserved=np_q,
        )
        reg(
            "opa",
            "mgC/m3",
            "opal",
            initial_value=2.0 * SI2C,
            minimum=0.0,
            vertical_movement=-sink["sinkOPAL"],
            conserved=si_q,
        )
        reg("dom", "mgC/m3", "labile dissolved om", initial_value=3.0 * N2C, minimum=0.0, conserved=np_q)
        # Sediment pools; FABM's initial values are 20 mmol N, 20 mmol Si and 2 mmol P m-2 in mgC, divided by
        # the molar masses (so 20 mg N, 20 mg Si, 2 mg P m-2 in C units).
        bottom = {"domain": "bottom", "minimum": 0.0}
        reg(
            "sed1", "mgC/m2", "sediment detritus", initial_value=20.0 * N2C / 14.007, conserved=np_q, **bottom
        )
        reg("sed2", "mgC/m2", "sediment opal", initial_value=20.0 * SI2C / 28.09, conserved=si_q, **bottom)
        reg(
            "sed3",
            "mgC/m2",
            "sediment adsorbed pho.",
            initial_value=2.0 * P2C / 30.97,
            conserved=p_q,
            **bottom,
        )

        # -- diagnostics -------------------------------------------------------------------------------------
        self.register_diagnostic_variable("primprod", "mgC/m**3/s", "primary production rate")
        self.register_diagnostic_variable("secprod", "mgC/m**3/s", "secondary production rate")
        # FABM's aggregate total_chlorophyll (Σ Chl, or phytoplankton C/60 without use_chl), as a diagnostic
        self.register_diagnostic_variable("total_chlorophyll", "mg/m**3", "total chlorophyll")
        if turn_on_additional_diagnostics:
            self.register_diagnostic_variable(
                "parmean", "W/m**2", "daily-mean photosynthetically active radiation"
            )
            self.register_diagnostic_variable("Nlim", "-", "N-limitation on primary production")
            self.register_diagnostic_variable("Plim", "-", "P-limitation on primary production")
            self.register_diagnostic_variable("Slim", "-", "Si-limitation on primary production")
            self.register_diagnostic_variable("Llim", "-", "light limitation on primary production")
            self.register_diagnostic_variable("denit", "mmolN/m**3/s", "denitrification rate")
            self.register_diagnostic_variable(
                "botstrss", "N/m**2", "total bottom stress", domain="horizontal"
            )
            if use_chl:
                self.register_diagnostic_variable("c2chl_fla", "mgC/mgCHL", "C to Chl ratio of flagellates")
                self.register_diagnostic_variable("c2chl_dia", "mgC/mgCHL", "C to Chl ratio of diatoms")
                if use_cyanos:
                    self.register_diagnostic_variable(
                        "c2chl_bg", "mgC/mgCHL", "C to Chl ratio of cyanobacteria"
                    )

        # -- dependencies ------------------------------------------------------------------------------------
        self.register_dependency("temp", "temperature")
        self.register_dependency("salt", "practical_salinity")
        self.register_dependency("par", PAR)
        if not_0d:
            self.register_dependency("tbs", "bottom_stress")
        self.register_dependency("sfpar", SURFACE_PAR)
        self.register_dependency("parmean", PAR, mean_period=MEAN_PERIOD, mean_resolution=MEAN_RESOLUTION)
        self.register_dependency(
            "meansfpar", SURFACE_PAR, mean_period=MEAN_PERIOD, mean_resolution=MEAN_RESOLUTION
        )
        if couple_co2:
            self.register_state_dependency("dic_target", "mmol m-3", "dic budget", required=False)
            self.register_state_dependency("alk_target", "mmol m-3", "alkalinity budget", required=False)

    @classmethod
    def from_config(cls, parameters=None, *, dtype=None, **kwargs):
        """:meth:`BGCModel.from_config`, refusing the removed quirk options with the reason."""
        for k in list(parameters or {}) + list(kwargs):
            if k.lower() in REMOVED_OPTIONS:
                raise ConfigError(f"ECOSMO option {k!r} was removed: {REMOVED_OPTIONS[k.lower()]}")
        return super().from_config(parameters, dtype=dtype, **kwargs)

    # -- names ------------------------------------------------------------------------------------------
    def canonical_parameter_name(self, name: str) -> str:
        """Registered spelling of a parameter name given in any case (FABM ignores case in names)."""
        lower = {n.lower(): n for n in self.params.specs}
        if name.lower() not in lower:
            raise ConfigError(
                f"nersc/ecosmo_operational: unknown parameter {name!r}; valid parameters: "
                f"{', '.join(lower.values())}"
            )
        return lower[name.lower()]

    # -- helpers ---------------------------------------------------------------------------------------------
    def _params(self, ref: torch.Tensor) -> dict[str, torch.Tensor]:
        """All parameters in SI units, shaped to broadcast against ``ref`` and in its dtype.

        Casting matters for conservation: with float32 parameters and float64 states, ``1 − frr`` would be
        rounded in float32 and the detritus/DOM split would leak mass at the 1e-8 level.
        """
        return {n: self.p(n, ref.ndim).to(ref.dtype) for n in self.params.specs}

    def _oxygen_regime(
        self, oxy: torch.Tensor, no3: torch.Tensor, temp: torch.Tensor, o_nitr: float, rate: float = 0.1
    ):
        """FABM's bioom1/5/6/7: nitrification rate (s-1) if O2 > 0; else denitrification weight 5 if NO3 > 0;
        else the O2-debt (sulphate) branch. Returns (bioom1, bioom5, bioom6, bioom7)."""
        sw = self.sw
        w_ox = sw.step(oxy, 0.0, "oxygen", inclusive=False)
        w_no3 = sw.step(no3, 0.0, "nitrate", inclusive=False)
        oxp = sw.max(oxy, 0.0, kind="oxygen")  # = oxy wherever FABM's oxic branch is on; smooth if smooth
        bioom1 = w_ox * (rate / DAY) * torch.exp(0.11 * temp) * oxp / (o_nitr + oxp)
        bioom5 = 5.0 * (1.0 - w_ox) * w_no3
        bioom6 = w_ox
        bioom7 = (1.0 - w_ox) * (1.0 - w_no3)
        return bioom1, bioom5, bioom6, bioom7

    def _chl2c(self, chl, c, prod, mu, alfa, mn, mx, floor, par):
        """Geider-type Chl:C (mgChl/mgC) clipped to [mn, mx]: mx·max(floor, P)·μ_d·C/(α·PAR·Chl).

        Computed through its inverse y = α·PAR·Chl/(mx·max(floor,P)·μ_d·C) (finite at PAR = 0, where FABM's
        ratio is +inf and is clipped to mx): clip(1/y, mn, mx) = 1/clip(y, 1/mx, 1/mn), exact for y ≥ 0.
        """
        sw = self.sw
        pf = sw.max(floor, prod)
        y = alfa * par * chl / (mx * pf * (mu * DAY) * c)
        return 1.0 / sw.max(1.0 / mx, sw.min(1.0 / mn, y, kind="chl2c"), kind="chl2c")

    # -- interior --------------------------------------------------------------------------------------------
    def do(self, s, env):
        sw = self.sw
        no3, nh4, pho, sil, oxy = s["no3"], s["nh4"], s["pho"], s["sil"], s["oxy"]
        fla, dia, zs, zl = s["fla"], s["dia"], s["microzoo"], s["mesozoo"]
        det, dom, opa = s["det"], s["dom"], s["opa"]
        bg = s["bg"] if self.use_cyanos else torch.zeros_like(fla)
        p = self._params(fla)
        temp, salt, par = env["temperature"], env["practical_salinity"], env[PAR]
        mean_par = env[mean_key(PAR, MEAN_PERIOD)]
        mean_spar = _col(env[mean_key(SURFACE_PAR, MEAN_PERIOD)])

        # anti-extinction switches: losses act only above a minimum biomass (FABM: x − threshold ≥ 0)
        fla_loss = sw.step(fla, 0.1, "loss_phyto", inclusive=True)
        dia_loss = sw.step(dia, 0.1, "loss_phyto", inclusive=True)
        bg_loss = sw.step(bg, 0.1, "loss_phyto", inclusive=True)
        mic_loss = sw.step(zs, 0.01, "loss_zoo", inclusive=True)
        mes_loss = sw.step(zl, 0.01, "loss_zoo", inclusive=True)

        frem = p["reminD"] * (1.0 + 20.0 * (temp**2 / (13.0**2 + temp**2)))
        frem_dom = 10.0 * frem

        up_nh4 = nh4 / (p["rNH4"] + nh4)
        up_no3 = no3 / (p["rNO3"] + no3) * torch.exp(-p["psi"] * nh4)
        up_n = up_nh4 + up_no3
        up_pho = pho / (p["rPO4"] + pho)
        t_sil = sw.max(sil - 80.0, 0.0, kind="silicate")
        up_sil = t_sil / (p["rSi"] + t_sil)

        # cyanobacteria: only in brackish water (S ≤ 10) under bright days
        gate_bg = sw.step(-salt, -10.0, "salinity", inclusive=True) * sw.step(
            mean_spar, p["bg_growth_minimum_daily_rad"], "par", inclusive=False
        )
        t_bg = gate_bg / (1.0 + torch.exp(p["TctrlBG"] * (p["TrefBG"] - temp)))

        blight = torch.clamp(torch.tanh(p["aa"] * par), min=0.0)
        if self.use_chl_in_PI_curve:
            light_fla = self._smith(s["flachl"] / fla, p["alfaPs"], p["muPs"], par)
            light_dia = self._smith(s["diachl"] / dia, p["alfaPl"], p["muPl"], par)
        else:
            light_fla = light_dia = blight
        ps_prod = sw.min(light_fla, up_n, up_pho)
        pl_prod = sw.min(light_dia, up_n, up_pho, up_sil)
        prod = p["muPl"] * pl_prod * dia + p["muPs"] * ps_prod * fla
        if self.use_cyanos:
            bg_prod = t_bg * sw.min(blight, up_n, up_pho)
            prod = prod + p["muBG"] * bg_prod * bg
            gate_fix = sw.step(mean_par, p["nfixation_minimum_daily_par"], "par", inclusive=False)
            bg_fix = gate_fix * (t_bg * sw.min(blight, up_pho) - bg_prod)
        else:
            bg_prod = bg_fix = torch.zeros_like(fla)

        # grazing: Holling II with preferences and a shared denominator per grazer
        f_s = p["prefZsPs"] * fla + p["prefZsPl"] * dia + p["prefZsD"] * det + p["prefZsBG"] * bg
        f_l = (
            p["prefZlPs"] * fla
            + p["prefZlPl"] * dia
            + p["prefZlZs"] * zs
            + p["prefZlD"] * det
            + p["prefZlBG"] * bg
        )
        if self.use_cyanos and self.quirk_bg_preference_twice:
            f_s = f_s + p["prefZsBG"] * bg
            f_l = f_l + p["prefZlBG"] * bg
        den_s, den_l = p["Rg"] + f_s, p["Rg"] + f_l
        zs_on_ps = fla_loss * p["GrZsP"] * p["prefZsPs"] * fla / den_s
        zs_on_pl = dia_loss * p["GrZsP"] * p["prefZsPl"] * dia / den_s
        zs_on_d = p["GrZsP"] * p["prefZsD"] * det / den_s
        zl_on_ps = fla_loss * p["GrZlP"] * p["prefZlPs"] * fla / den_l
        zl_on_pl = dia_loss * p["GrZlP"] * p["prefZlPl"] * dia / den_l
        zl_on_d = p["GrZlP"] * p["prefZlD"] * det / den_l
        zl_on_zs = mic_loss * p["GrZlZ"] * p["prefZlZs"] * zs / den_l
        if self.use_cyanos:
            zs_on_bg = bg_loss * p["GrBG"] * p["prefZsBG"] * bg / den_s
            zl_on_bg = bg_loss * p["GrBG"] * p["prefZlBG"] * bg / den_l
        else:
            zs_on_bg = zl_on_bg = torch.zeros_like(fla)

        bioom1, bioom5, bioom6, bioom7 = self._oxygen_regime(oxy, no3, temp, 0.01 * O2_ML)

        out: dict[str, torch.Tensor] = {}
        out["fla"] = (p["muPs"] * ps_prod - p["mPs"] * fla_loss) * fla - zs_on_ps * zs - zl_on_ps * zl
        out["dia"] = (p["muPl"] * pl_prod - p["mPl"] * dia_loss) * dia - zs_on_pl * zs - zl_on_pl * zl
        if self.use_cyanos:
            out["bg"] = (
                (p["muBG"] * (bg_prod + bg_fix) - p["mBG"] * bg_loss) * bg - zs_on_bg * zs - zl_on_bg * zl
            )

        diags: dict[str, torch.Tensor] = {}
        if self.use_chl:
            chl2c_fla = self._chl2c(
                s["flachl"], fla, ps_prod, p["muPs"], p["alfaPs"], p["MINchl2nPs"], p["MAXchl2nPs"], 0.01, par
            )
            chl2c_dia = self._chl2c(
                s["diachl"], dia, pl_prod, p["muPl"], p["alfaPl"], p["MINchl2nPl"], p["MAXchl2nPl"], 0.01, par
            )
            loss_fla = p["mPs"] * fla_loss * fla + zs_on_ps * zs + zl_on_ps * zl
            loss_dia = p["mPl"] * dia * dia_loss + zs_on_pl * zs + zl_on_pl * zl
            out["flachl"] = p["muPs"] * ps_prod * chl2c_fla * fla - loss_fla * s["flachl"] / fla
            out["diachl"] = p["muPl"] * pl_prod * chl2c_dia * dia - loss_dia * s["diachl"] / dia
            if self.use_cyanos:
                chl2c_bg = self._chl2c(
                    s["bgchl"],
                    bg,
                    bg_prod,
                    p["muBG"],
                    p["alfaBG"],
                    p["MINchl2nBG"],
                    p["MAXchl2nBG"],
                    0.1,
                    par,
                )
                loss_bg = p["mBG"] * bg * bg_loss + zs_on_bg * zs + zl_on_bg * zl
                out["bgchl"] = p["muBG"] * (bg_prod + bg_fix) * chl2c_bg * bg - loss_bg * s["bgchl"] / bg

        graz_s = zs_on_ps + zs_on_pl + zs_on_bg
        graz_l = zl_on_ps + zl_on_pl + zl_on_bg + zl_on_zs
        zs_prod = p["gammaZsp"] * graz_s + p["gammaZd"] * zs_on_d
        out["microzoo"] = (zs_prod - (p["mZs"] + p["excZs"] + p["zpr"]) * mic_loss) * zs - zl_on_zs * zl
        zl_prod = p["gammaZlp"] * graz_l + p["gammaZd"] * zl_on_d
        out["mesozoo"] = (zl_prod - (p["mZl"] + p["excZl"] + p["zpr"]) * mes_loss) * zl

        dxxdet = (
            ((1.0 - p["gammaZsp"]) * graz_s + (1.0 - p["gammaZd"]) * zs_on_d) * zs
            + ((1.0 - p["gammaZlp"]) * graz_l + (1.0 - p["gammaZd"]) * zl_on_d) * zl
            + p["mZs"] * zs * mic_loss
            + p["mZl"] * zl * mes_loss
            + p["mPs"] * fla * fla_loss
            + p["mPl"] * dia * dia_loss
        )
        if self.use_cyanos:
            dxxdet = dxxdet + p["mBG"] * bg * bg_loss
        out["det"] = (1.0 - p["frr"]) * dxxdet - zs_on_d * zs - zl_on_d * zl - frem * det
        out["dom"] = p["frr"] * dxxdet - frem_dom * dom

        excretion = p["excZs"] * zs * mic_loss + p["excZl"] * zl * mes_loss
        remin = frem * det + frem_dom * dom
        f_no3 = (up_no3 + 0.5e-10) / (up_n + 1.0e-10)  # shares of DIN uptake (sum exactly 1)
        f_nh4 = (up_nh4 + 0.5e-10) / (up_n + 1.0e-10)
        rhs_nit = -f_no3 * prod + bioom1 * nh4 - remin * bioom5
        rhs_amm = -f_nh4 * prod + excretion + remin - bioom1 * nh4
        out["no3"], out["nh4"] = rhs_nit, rhs_amm
        out["pho"] = -prod - p["muBG"] * bg * bg_fix + excretion + remin
        out["sil"] = -p["muPl"] * pl_prod * dia + p["regenSi"] * opa
        out["opa"] = p["mPl"] * dia * dia_loss + zs_on_pl * zs + zl_on_pl * zl - p["regenSi"] * opa
        rhs_oxy = (
            (6.625 * up_nh4 + 8.125 * up_no3 + 1.0e-10) / (up_n + 1.0e-10) * prod
            - bioom6 * 6.625 * excretion
            - (bioom6 + bioom7) * 6.625 * remin
            - 2.0 * bioom1 * nh4
        ) / N2C
        out["oxy"] = rhs_oxy
        if self.couple_co2:
            out["dic_target"] = (remin + excretion - prod) / MGC
            out["alk_target"] = (rhs_amm - rhs_nit) / N2C - 0.5 * rhs_oxy * (1.0 - bioom6)

        diags["primprod"] = prod + p["muBG"] * bg * bg_fix
        diags["secprod"] = zl_prod * zl + zs_prod * zs
        if self.use_chl:
            diags["total_chlorophyll"] = s["diachl"] + s["flachl"] + (s["bgchl"] if self.use_cyanos else 0.0)
        else:
            diags["total_chlorophyll"] = (dia + fla + (s["bg"] if self.use_cyanos else 0.0)) / 60.0
        if self.additional_diagnostics:
            diags["parmean"] = mean_par
            diags["denit"] = remin * bioom5 / N2C
            diags["Nlim"], diags["Plim"], diags["Slim"] = up_n, up_pho, up_sil
            diags["Llim"] = (light_fla + light_dia) / 2.0 if self.use_chl_in_PI_curve else blight
            if self.use_chl:
                diags["c2chl_fla"], diags["c2chl_dia"] = 1.0 / chl2c_fla, 1.0 / chl2c_dia
                if self.use_cyanos:
                    diags["c2chl_bg"] = 1.0 / chl2c_bg
        return out, diags

    @staticmethod
    def _smith(theta, alfa, mu, par):
        """Chl-dependent light limitation θαI/√(μ_d² + θ²α²I²) (μ in d-1, as FABM), ≥ 0."""
        x = theta * alfa * par
        return torch.clamp(x / torch.sqrt((mu * DAY) ** 2 + x**2), min=0.0)

    # -- surface ---------------------------------------------------------------------------------------------
    def do_surface(self, s, env):
        p = self._params(s["oxy"])
        temp, salt = env["temperature"], env["practical_salinity"]
        tr = 1.0 / (temp + 273.15)
        # O2 saturation (µmol/l = mmol m-3), Benson & Krause (1984)
        o2sat = torch.exp(
            -135.90205
            + 1.575701e05 * tr
            - 6.642308e07 * tr**2
            + 1.243800e10 * tr**3
            - 8.621949e11 * tr**4
            - salt * (0.017674 - 10.754 * tr + 2140.7 * tr**2)
        )
        fluxes = {"oxy": (o2sat - s["oxy"]) / DAY}  # piston velocity 1 m d-1
        for v in ("no3", "nh4", "pho", "sil"):
            fluxes[v] = p[f"surface_deposition_{v}"] * torch.ones_like(s["oxy"])
        return fluxes, {}

    # -- bottom ----------------------------------------------------------------------------------------------
    def do_bottom(self, s, env):
        sw = self.sw
        temp, oxy, no3 = env["temperature"], s["oxy"], s["no3"]
        det, opa, sed1, sed2, sed3 = s["det"], s["opa"], s["sed1"], s["sed2"], s["sed3"]
        p = self._params(sed1)
        tbs = env["bottom_stress"] if self.not_0d else torch.zeros_like(sed1)  # no stress in a 0-D box

        # FABM's sediment nitrification uses a half-saturation of 0.1 ml/l (0.01 ml/l in the water column)
        bioom1, bioom5, bioom6, bioom7 = self._oxygen_regime(oxy, no3, temp, 0.1 * O2_ML, F32_0P1)

        # resuspension above the critical bottom stress, deposition below
        w_res = sw.step(tbs, p["crBotStr"], "bottom_stress", inclusive=True)
        if "limitation" in sw.smooth_kinds:
            r_sd = w_res * p["resuspRt"] * sw.min(1.0, tbs**2 * 100.0)
        else:
            r_sd = w_res * torch.minimum(p["resuspRt"], p["resuspRt"] * tbs**2 * 100.0)
        r_ds = (1.0 - w_res) * p["sedimRt"]

        # oxic remineralisation or (anoxic) denitrification of the sediment pool
        w_ox = bioom6
        base = p["reminSED"] * torch.exp(p["TctrlDenit"] * temp)
        r_sa = w_ox * base
        r_sdenit = (1.0 - w_ox) * 2.0 * base
        burial1 = F32_2EM3 * p["burialRt"] * sed1 * sed1

        src: dict[str, torch.Tensor] = {}
        src["sed1"] = r_ds * det - r_sd * sed1 - 2.0 * r_sa * sed1 - r_sdenit * sed1 - burial1
        flux_oxy = (
            -(
                bioom6 * 6.625 * 2.0 * r_sa * sed1
                + bioom7 * 6.625 * r_sdenit * sed1
                + 2.0 * bioom1 * r_sa * sed1
            )
            / N2C
        )
        src["oxy"] = flux_oxy
        src["no3"] = -bioom5 * r_sdenit * sed1
        src["det"] = r_sd * sed1 - r_ds * det
        src["nh4"] = (r_sdenit + r_sa) * sed1
        if self.couple_co2:
            src["dic_target"] = (r_sdenit + 2.0 * r_sa) * sed1 / MGC
            src["alk_target"] = (r_sdenit + r_sa + bioom5 * r_sdenit) * sed1 / N2C - 0.5 * flux_oxy * (
                1.0 - bioom6
            )

        # phosphate: oxic release reduced by O2 (Neumann et al. 2002, O2/375); anoxic: full release
        r_sa_p = 2.0 * base
        y = oxy / 375.0  # only used (weight w_ox) in the oxic branch
        release = r_sa_p * (1.0 - w_ox * p["RelSEDp1"] * y**2 / (p["RelSEDp2"] ** 2 + y**2)) * sed3
        src["pho"] = release
        src["sed3"] = 2.0 * r_sa * sed1 + r_sdenit * sed1 - release

        # silicate: opal deposits with twice the deposition rate (FABM), resuspends, dissolves, is buried
        src["sed2"] = (
            2.0 * r_ds * opa - r_sd * sed2 - p["reminSEDsi"] * sed2 - F32_2EM3 * p["burialRt"] * sed2 * sed2
        )
        src["opa"] = r_sd * sed2 - 2.0 * r_ds * opa
        src["sil"] = p["reminSEDsi"] * sed2
        diags = {"botstrss": tbs} if self.additional_diagnostics else {}
        return src, diags

    # -- transport and light ---------------------------------------------------------------------------------
    def vertical_movement(self, s, env):
        """Sinking of diatoms, detritus and opal, rising cyanobacteria (m s-1, positive up); Chl follows C."""
        ref = s["det"]
        p = self._params(ref)
        w = {
            "dia": -p["sinkDia"],
            "det": -p["sinkDet"],
            "opa": -p["sinkOPAL"],
        }
        if self.use_chl:
            w["diachl"] = w["dia"]
        if self.use_cyanos:
            w["bg"] = -p["sinkBG"]
            if self.use_chl:
                w["bgchl"] = w["bg"]
        return {k: v * torch.ones_like(ref) for k, v in w.items()}

    def light_extinction(self, s, env):
        """EXw + Exphy·(Σ Chl | Σ phytoplankton C) + Exdet·det + Exdom·dom (m-1), as FABM's ECOSMO."""
        ref = s["det"]
        p = self._params(ref)
        if self.use_chl:
            phy = s["diachl"] + s["flachl"] + (s["bgchl"] if self.use_cyanos else 0.0)
        else:
            phy = s["dia"] + s["fla"] + (s["bg"] if self.use_cyanos else 0.0)
        return p["EXw"] + p["Exphy"] * phy + p["Exdet"] * s["det"] + p["Exdom"] * s["dom"]
