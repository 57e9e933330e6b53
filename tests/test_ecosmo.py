"""ECOSMO II (pelagos.bgc.ecosmo) against an independent numpy transcription of FABM's equations.

The reference functions below are written from the FABM source semantics (docs/ecosmo.md, references/
watercolumn.md §4) with plain numpy and explicit if/else branches (np.where), FABM's own Chl:C formula
(division by PAR, then clipping) — not from the torch code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from pelagos.bgc.base import mean_key
from pelagos.bgc.ecosmo import ECOSMO, FABM_SWITCHES, PELAGOS_OPTIONS
from pelagos.core.errors import ConfigError
from pelagos.core.paths import DATA_DIR


def F32(x: float) -> float:
    """A default-kind (single precision) Fortran literal, as FABM's do_bottom writes 0.1 and 2.0E-3."""
    return float(np.float32(x))


YAML = DATA_DIR / "fabm" / "fabm-nersc-ecosmo.yaml"  # FABM's test case, shipped with the package
PAR = "downwelling_photosynthetic_radiative_flux"
SPAR = "surface_downwelling_photosynthetic_radiative_flux"
D = 86400.0
N2C = 6.625 * 12.01
P2C = 106.0 * 12.01


def _yaml_eco():
    with open(YAML) as f:
        return yaml.safe_load(f)["instances"]["ECO"]


# ----------------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------------
# FABM scale factor implied by each yaml unit string (ECOSMO's get_parameter calls).
UNIT_SCALE = {
    "1/day": 1 / D,
    "m/day": 1 / D,
    "mmolN/m**3": N2C,
    "mmolP/m**3": P2C,
    "mmolSi/m**3": N2C,
    "m**3/mmolN": 1 / N2C,
    "mgChl/mmolN": 1 / N2C,
    "mmolN m2/(mgChl day W)**-1": N2C,
    "mmolN/m**2 d": N2C / D,
    "mmolP/m**2 d": P2C / D,
    "mmolSi/m**2 d": N2C / D,
    "m**2/molC": 1e-3,
    "m**2/mmolN": 1 / N2C,
}


def test_yaml_parameters_accepted_with_values_and_scale_factors():
    eco = _yaml_eco()
    m = ECOSMO.from_config(eco["parameters"])
    assert (m.use_chl, m.use_cyanos, m.couple_co2, m.use_chl_in_PI_curve, m.additional_diagnostics) == (
        True,
        False,
        True,
        True,
        True,
    )
    switches = {*FABM_SWITCHES, *PELAGOS_OPTIONS}
    given = {k: v for k, v in eco["parameters"].items() if k not in switches}
    assert len(given) == len(m.params.specs) == 73  # the test case sets every parameter
    for key, value in given.items():
        name = m.canonical_parameter_name(key)
        assert name.lower() == key.lower()
        assert float(m.param(name)) == pytest.approx(float(value), rel=1e-6), key
    # FABM defaults where the test case differs
    m0 = ECOSMO()
    assert float(m0.param("MAXchl2nBG")) == pytest.approx(3.83)
    assert float(m0.param("nfixation_minimum_daily_par")) == pytest.approx(40.0)
    assert float(m0.param("zpr")) == pytest.approx(0.001)
    # every SI value = yaml value × the factor FABM attaches to its unit
    for row in m.parameters_table(as_rows=True):
        f = UNIT_SCALE.get(row["units"], 1.0)
        assert float(m.p(row["name"])) == pytest.approx(row["value"] * f, rel=1e-6), row["name"]
    # Exphy in m2/mgChl with use_chl, as a GOTM+FABM build applies it (attenuation = 0.041 (diachl+flachl));
    # per mmol N (applied to phytoplankton C) only without chlorophyll states
    assert float(m.p("Exphy")) == pytest.approx(0.041, rel=1e-6)
    assert float(ECOSMO(use_chl=False).p("Exphy")) == pytest.approx(0.04 / N2C)


def test_removed_quirk_options_are_refused_with_the_reason():
    # no FABM build shows them (docs/ecosmo.md): an old configuration must not silently change meaning
    for name in ("quirk_exphy_nitrogen_units", "quirk_dic_without_excretion"):
        with pytest.raises(ConfigError, match=f"{name}.*removed"):
            ECOSMO(**{name: True})
        with pytest.raises(ConfigError, match="removed"):
            ECOSMO.from_config({name: False})


def test_quirk_bg_preference_twice_flips_the_grazing_denominators():
    # FABM adds prefZsBG*bg and prefZlBG*bg to the grazing denominators twice (use_cyanos): the switch flips
    # exactly that. Grazing on flagellates = GrZsP prefZsPs fla / (Rg + F): compare with F computed by hand.
    s = {
        k: torch.full((1, 1), 50.0, dtype=torch.float64)
        for k, v in ECOSMO().state_variables.items()
        if v.domain == "interior"
    }
    env = {
        "temperature": torch.full((1, 1), 10.0, dtype=torch.float64),
        "practical_salinity": torch.full((1, 1), 35.0, dtype=torch.float64),
        "downwelling_photosynthetic_radiative_flux": torch.zeros(1, 1, dtype=torch.float64),
        mean_key("downwelling_photosynthetic_radiative_flux", 86400.0): torch.zeros(
            1, 1, dtype=torch.float64
        ),
        mean_key("surface_downwelling_photosynthetic_radiative_flux", 86400.0): torch.zeros(
            1, dtype=torch.float64
        ),
    }
    out = {}
    for twice in (True, False):
        m = ECOSMO(quirk_bg_preference_twice=twice).double()
        rates, _ = m.do(s, env)
        P = {n: float(m.p(n)) for n in m.params.specs}
        # in the dark, fla loses mortality and grazing only: recover the microzooplankton denominator
        graz = -(float(rates["fla"]) + P["mPs"] * 50.0)  # = (Zs_on_fla + Zl_on_fla) * 50
        f_s = (P["prefZsPs"] + P["prefZsPl"] + P["prefZsD"] + (2 if twice else 1) * P["prefZsBG"]) * 50.0
        f_l = (
            P["prefZlPs"] + P["prefZlPl"] + P["prefZlZs"] + P["prefZlD"] + (2 if twice else 1) * P["prefZlBG"]
        ) * 50.0
        want = (
            P["GrZsP"] * P["prefZsPs"] * 50 / (P["Rg"] + f_s)
            + P["GrZlP"] * P["prefZlPs"] * 50 / (P["Rg"] + f_l)
        ) * 50
        assert graz == pytest.approx(want, rel=1e-12), twice
        out[twice] = graz
    assert out[True] < out[False] * (1 - 1e-3)  # the doubled preference dilutes grazing on the others


def test_documented_option_defaults_are_the_constructor_defaults():
    import inspect

    sig = inspect.signature(ECOSMO.__init__).parameters
    for name, default in {**FABM_SWITCHES, **PELAGOS_OPTIONS}.items():
        assert sig[name].default == default, name


def test_bad_configuration_is_named():
    with pytest.raises(ConfigError, match="EXfoo"):
        ECOSMO.from_config({"EXfoo": 1.0})
    with pytest.raises(ConfigError, match="use_chl"):
        ECOSMO(use_chl="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sharpness"):
        ECOSMO(smooth=True, sharpness=-1.0)
    with pytest.raises(ConfigError, match="unknown switch scale"):
        ECOSMO(smooth=True, switch_scales={"oxgen": 1.0})


def test_variables_and_dependencies_follow_fabm():
    m = ECOSMO()
    assert list(m.state_variables) == [
        "no3", "nh4", "pho", "sil", "oxy", "fla", "dia", "bg", "bgchl", "diachl", "flachl",
        "microzoo", "mesozoo", "det", "opa", "dom", "sed1", "sed2", "sed3",
    ]  # fmt: skip
    assert {n for n, v in m.state_variables.items() if v.domain == "bottom"} == {"sed1", "sed2", "sed3"}
    assert m.state_variables["no3"].initial_value == pytest.approx(5.0 * N2C)
    assert m.state_variables["sed3"].initial_value == pytest.approx(2.0 * P2C / 30.97)
    assert m.state_variables["bg"].minimum == 1e-14
    deps = {d.name: d for d in m.dependencies.values()}
    assert deps["parmean"].key == mean_key(PAR, 86400) and deps["parmean"].mean_resolution == 3600
    assert deps["meansfpar"].key == mean_key(SPAR, 86400) and deps["meansfpar"].domain == "horizontal"
    assert "tbs" in deps and "tbs" not in ECOSMO(not_0d=False).dependencies
    assert list(ECOSMO(use_chl=False, use_cyanos=False).state_variables)[5:9] == [
        "fla",
        "dia",
        "microzoo",
        "mesozoo",
    ]
    # conserved quantities: N in all organic pools + DIN + sed1; P also in sed3; Si in sil, opa, dia, sed2
    member = {
        q: {n for n, v in m.state_variables.items() if f"total_{k}" in v.conserved}
        for q, k in (("N", "nitrogen"), ("P", "phosphorus"), ("Si", "silicon"))
    }
    org = {"fla", "dia", "bg", "microzoo", "mesozoo", "det", "dom", "sed1"}
    assert member["N"] == org | {"no3", "nh4"}
    assert member["P"] == org | {"pho", "sed3"}
    assert member["Si"] == {"sil", "opa", "dia", "sed2"}


# ----------------------------------------------------------------------------------------------------
# independent numpy reference
# ----------------------------------------------------------------------------------------------------
def ref_interior(x, e, P, o):
    """ECOSMO `do` in numpy (FABM semantics). x: states; e: T, S, PAR, PARmean, sPARmean; P: SI values."""
    fla, dia, Zs, Zl = x["fla"], x["dia"], x["microzoo"], x["mesozoo"]
    no3, nh4, pho, sil, oxy = x["no3"], x["nh4"], x["pho"], x["sil"], x["oxy"]
    det, dom, opa = x["det"], x["dom"], x["opa"]
    cy = o["use_cyanos"]
    bg = x["bg"] if cy else np.zeros_like(fla)
    T, S, I, Im, Ism = e["T"], e["S"], e["PAR"], e["PARmean"], e["sPARmean"]

    def on(cond):
        return np.where(cond, 1.0, 0.0)

    l_fla, l_dia, l_bg = on(fla - 0.1 >= 0), on(dia - 0.1 >= 0), on(bg - 0.1 >= 0)
    l_zs, l_zl = on(Zs - 0.01 >= 0), on(Zl - 0.01 >= 0)
    frem = P["reminD"] * (1 + 20 * T**2 / (169 + T**2))
    fdom = 10 * frem
    u_nh4 = nh4 / (P["rNH4"] + nh4)
    u_no3 = no3 / (P["rNO3"] + no3) * np.exp(-P["psi"] * nh4)
    u_n = u_nh4 + u_no3
    u_p = pho / (P["rPO4"] + pho)
    ts = np.maximum(sil - 80, 0)
    u_si = ts / (P["rSi"] + ts)
    Tbg = np.where(
        (S <= 10) & (Ism > P["bg_growth_minimum_daily_rad"]),
        1 / (1 + np.exp(P["TctrlBG"] * (P["TrefBG"] - T))),
        0.0,
    )
    bl = np.maximum(np.tanh(P["aa"] * I), 0)
    if o["use_chl_in_PI_curve"]:
        th_f, th_d = x["flachl"] / fla, x["diachl"] / dia
        bf = np.maximum(
            th_f * P["alfaPs"] * I / np.sqrt((P["muPs"] * D) ** 2 + th_f**2 * P["alfaPs"] ** 2 * I**2), 0
        )
        bd = np.maximum(
            th_d * P["alfaPl"] * I / np.sqrt((P["muPl"] * D) ** 2 + th_d**2 * P["alfaPl"] ** 2 * I**2), 0
        )
    else:
        bf = bd = bl
    Ps = np.minimum(np.minimum(bf, u_n), u_p)
    Pl = np.minimum(np.minimum(np.minimum(bd, u_n), u_p), u_si)
    Prod = P["muPl"] * Pl * dia + P["muPs"] * Ps * fla
    Bp = Tbg * np.minimum(np.minimum(bl, u_n), u_p) if cy else 0 * fla
    Prod = Prod + P["muBG"] * Bp * bg
    Bfix = (
        np.where(Im > P["nfixation_minimum_daily_par"], Tbg * np.minimum(bl, u_p) - Bp, 0.0)
        if cy
        else 0 * fla
    )

    Fs = P["prefZsPs"] * fla + P["prefZsPl"] * dia + P["prefZsD"] * det + P["prefZsBG"] * bg
    Fl = (
        P["prefZlPs"] * fla
        + P["prefZlPl"] * dia
        + P["prefZlZs"] * Zs
        + P["prefZlD"] * det
        + P["prefZlBG"] * bg
    )
    if cy and o["quirk_bg_preference_twice"]:
        Fs, Fl = Fs + P["prefZsBG"] * bg, Fl + P["prefZlBG"] * bg
    Rg = P["Rg"]
    sPs = l_fla * P["GrZsP"] * P["prefZsPs"] * fla / (Rg + Fs)
    sPl = l_dia * P["GrZsP"] * P["prefZsPl"] * dia / (Rg + Fs)
    sD = P["GrZsP"] * P["prefZsD"] * det / (Rg + Fs)
    lPs = l_fla * P["GrZlP"] * P["prefZlPs"] * fla / (Rg + Fl)
    lPl = l_dia * P["GrZlP"] * P["prefZlPl"] * dia / (Rg + Fl)
    lD = P["GrZlP"] * P["prefZlD"] * det / (Rg + Fl)
    lZs = l_zs * P["GrZlZ"] * P["prefZlZs"] * Zs / (Rg + Fl)
    sBg = l_bg * P["GrBG"] * P["prefZsBG"] * bg / (Rg + Fs) if cy else 0 * fla
    lBg = l_bg * P["GrBG"] * P["prefZlBG"] * bg / (Rg + Fl) if cy else 0 * fla

    oxic = oxy > 0
    b1 = np.where(
        oxic,
        0.1 / D * np.exp(0.11 * T) * np.where(oxic, oxy, 0) / (0.01 * 44.6608009 + np.where(oxic, oxy, 0)),
        0,
    )
    b5 = np.where(~oxic & (no3 > 0), 5.0, 0.0)
    b6 = on(oxic)
    b7 = np.where(~oxic & ~(no3 > 0), 1.0, 0.0)

    r = {}
    r["fla"] = (P["muPs"] * Ps - P["mPs"] * l_fla) * fla - sPs * Zs - lPs * Zl
    r["dia"] = (P["muPl"] * Pl - P["mPl"] * l_dia) * dia - sPl * Zs - lPl * Zl
    if cy:
        r["bg"] = (P["muBG"] * (Bp + Bfix) - P["mBG"] * l_bg) * bg - sBg * Zs - lBg * Zl
    diag = {}
    if o["use_chl"]:

        def chl2c(chl, C, prod, mu, alfa, mn, mx, floor):
            with np.errstate(divide="ignore", invalid="ignore"):
                raw = mx * np.maximum(floor, prod) * mu * D * C / (alfa * I * chl)
            return np.minimum(mx, np.maximum(mn, raw))

        cf = chl2c(x["flachl"], fla, Ps, P["muPs"], P["alfaPs"], P["MINchl2nPs"], P["MAXchl2nPs"], 0.01)
        cd = chl2c(x["diachl"], dia, Pl, P["muPl"], P["alfaPl"], P["MINchl2nPl"], P["MAXchl2nPl"], 0.01)
        r["flachl"] = (
            P["muPs"] * Ps * cf * fla - (P["mPs"] * l_fla * fla + sPs * Zs + lPs * Zl) * x["flachl"] / fla
        )
        r["diachl"] = (
            P["muPl"] * Pl * cd * dia - (P["mPl"] * dia * l_dia + sPl * Zs + lPl * Zl) * x["diachl"] / dia
        )
        diag["c2chl_fla"], diag["c2chl_dia"] = 1 / cf, 1 / cd
        if cy:
            cb = chl2c(x["bgchl"], bg, Bp, P["muBG"], P["alfaBG"], P["MINchl2nBG"], P["MAXchl2nBG"], 0.1)
            r["bgchl"] = (
                P["muBG"] * (Bp + Bfix) * cb * bg
                - (P["mBG"] * bg * l_bg + sBg * Zs + lBg * Zl) * x["bgchl"] / bg
            )
            diag["c2chl_bg"] = 1 / cb
    Zsp = P["gammaZsp"] * (sPs + sPl + sBg) + P["gammaZd"] * sD
    r["microzoo"] = (Zsp - (P["mZs"] + P["excZs"] + P["zpr"]) * l_zs) * Zs - lZs * Zl
    Zlp = P["gammaZlp"] * (lPs + lPl + lBg + lZs) + P["gammaZd"] * lD
    r["mesozoo"] = (Zlp - (P["mZl"] + P["excZl"] + P["zpr"]) * l_zl) * Zl
    dx = (
        ((1 - P["gammaZsp"]) * (sPs + sPl + sBg) + (1 - P["gammaZd"]) * sD) * Zs
        + ((1 - P["gammaZlp"]) * (lPs + lPl + lBg + lZs) + (1 - P["gammaZd"]) * lD) * Zl
        + P["mZs"] * Zs * l_zs + P["mZl"] * Zl * l_zl + P["mPs"] * fla * l_fla + P["mPl"] * dia * l_dia
    )  # fmt: skip
    if cy:
        dx = dx + P["mBG"] * bg * l_bg
    r["det"] = (1 - P["frr"]) * dx - sD * Zs - lD * Zl - frem * det
    r["dom"] = P["frr"] * dx - fdom * dom
    exc = P["excZs"] * Zs * l_zs + P["excZl"] * Zl * l_zl
    nit = -(u_no3 + 0.5e-10) / (u_n + 1e-10) * Prod + b1 * nh4 - frem * det * b5 - fdom * dom * b5
    amm = -(u_nh4 + 0.5e-10) / (u_n + 1e-10) * Prod + exc + frem * det + fdom * dom - b1 * nh4
    r["no3"], r["nh4"] = nit, amm
    r["pho"] = -Prod - P["muBG"] * bg * Bfix + exc + frem * det + fdom * dom
    r["sil"] = -P["muPl"] * Pl * dia + P["regenSi"] * opa
    r["opa"] = P["mPl"] * dia * l_dia + sPl * Zs + lPl * Zl - P["regenSi"] * opa
    ox = (
        (6.625 * u_nh4 + 8.125 * u_no3 + 1e-10) / (u_n + 1e-10) * Prod
        - b6 * 6.625 * exc - frem * det * (b6 + b7) * 6.625 - (b6 + b7) * 6.625 * fdom * dom - 2 * b1 * nh4
    ) / 6.625 / 12.01  # fmt: skip
    r["oxy"] = ox
    if o["couple_co2"]:
        r["dic_target"] = (exc + frem * det + fdom * dom - Prod) / 12.01
        r["alk_target"] = (amm - nit) / 12.01 / 6.625 - 0.5 * ox * (1 - b6)
    diag["primprod"] = Prod + P["muBG"] * bg * Bfix
    diag["secprod"] = Zlp * Zl + Zsp * Zs
    if o["use_chl"]:
        diag["total_chlorophyll"] = x["diachl"] + x["flachl"] + (x["bgchl"] if cy else 0.0)
    else:
        diag["total_chlorophyll"] = (dia + fla + bg) / 60.0
    diag["denit"] = (frem * det * b5 + fdom * dom * b5) / 6.625 / 12.01
    # budget terms (mgC m-3 s-1): N fixation, zooplankton extra loss, water-column denitrification
    budget = {
        "nfix": P["muBG"] * Bfix * bg,
        "zpr": P["zpr"] * (Zs * l_zs + Zl * l_zl),
        "denit": b5 * (frem * det + fdom * dom),
    }
    return r, diag, budget


def ref_bottom(x, e, P, o):
    """ECOSMO `do_bottom` in numpy with FABM's if/else branches. x at the bottom cell + sediment pools."""
    T, tbs = e["T"], e["tbs"]
    oxy, no3, det, opa = x["oxy"], x["no3"], x["det"], x["opa"]
    s1, s2, s3 = x["sed1"], x["sed2"], x["sed3"]
    oxic = oxy > 0
    b1 = np.where(
        oxic,
        F32(0.1)
        / D
        * np.exp(0.11 * T)
        * np.where(oxic, oxy, 0)
        / (0.1 * 44.6608009 + np.where(oxic, oxy, 0)),
        0,
    )
    b5 = np.where(~oxic & (no3 > 0), 5.0, 0.0)
    b6 = np.where(oxic, 1.0, 0.0)
    b7 = np.where(~oxic & ~(no3 > 0), 1.0, 0.0)
    res = tbs >= P["crBotStr"]
    Rsd = np.where(res, np.minimum(P["resuspRt"], P["resuspRt"] * tbs**2 * 100), 0.0)
    Rds = np.where(res, 0.0, P["sedimRt"])
    Rsa = np.where(oxic, P["reminSED"] * np.exp(P["TctrlDenit"] * T), 0.0)
    Rdn = np.where(oxic, 0.0, 2 * P["reminSED"] * np.exp(P["TctrlDenit"] * T))
    r = {}
    r["sed1"] = Rds * det - Rsd * s1 - 2 * Rsa * s1 - Rdn * s1 - F32(2e-3) * P["burialRt"] * s1 * s1
    fo = -(b6 * 6.625 * 2 * Rsa * s1 + b7 * 6.625 * Rdn * s1 + 2 * b1 * Rsa * s1) / 6.625 / 12.01
    r["oxy"], r["no3"], r["det"], r["nh4"] = fo, -b5 * Rdn * s1, Rsd * s1 - Rds * det, (Rdn + Rsa) * s1
    if o["couple_co2"]:
        r["dic_target"] = (Rdn + 2 * Rsa) * s1 / 12.01
        r["alk_target"] = (Rdn + Rsa + b5 * Rdn) * s1 / 12.01 / 6.625 - 0.5 * fo * (1 - b6)
    Rsap = 2 * P["reminSED"] * np.exp(P["TctrlDenit"] * T)
    y = oxy / 375
    y1 = y**2 / (P["RelSEDp2"] ** 2 + y**2)
    r["pho"] = np.where(oxic, Rsap * (1 - P["RelSEDp1"] * y1) * s3, Rsap * s3)
    r["sed3"] = np.where(oxic, 2 * Rsa * s1 - Rsap * (1 - P["RelSEDp1"] * y1) * s3, Rdn * s1 - Rsap * s3)
    r["sed2"] = 2 * Rds * opa - Rsd * s2 - P["reminSEDsi"] * s2 - F32(2e-3) * P["burialRt"] * s2 * s2
    r["opa"] = Rsd * s2 - 2 * Rds * opa
    r["sil"] = P["reminSEDsi"] * s2
    budget = {
        "N": -Rsa * s1 - F32(2e-3) * P["burialRt"] * s1 * s1 - b5 * Rdn * s1,
        "P": -F32(2e-3) * P["burialRt"] * s1 * s1,
        "Si": -F32(2e-3) * P["burialRt"] * s2 * s2,
    }
    return r, budget


def ref_surface(x, e, P):
    tr = 1 / (e["T"] + 273.15)
    sat = np.exp(
        -135.90205 + 1.575701e5 * tr - 6.642308e7 * tr**2 + 1.2438e10 * tr**3 - 8.621949e11 * tr**4
        - e["S"] * (0.017674 - 10.754 * tr + 2140.7 * tr**2)
    )  # fmt: skip
    r = {"oxy": (sat - x["oxy"]) / D}
    for v in ("no3", "nh4", "pho", "sil"):
        r[v] = P[f"surface_deposition_{v}"] * np.ones_like(x["oxy"])
    return r


# ----------------------------------------------------------------------------------------------------
# random states that cross every switch
# ----------------------------------------------------------------------------------------------------
def random_case(rng, shape=(3, 40)):
    B = shape[0]

    def u(lo, hi):
        return rng.uniform(lo, hi, shape)

    def logu(lo, hi):
        return np.exp(rng.uniform(np.log(lo), np.log(hi), shape))

    x = {
        "no3": np.where(rng.random(shape) < 0.2, 0.0, u(0, 800)),
        "nh4": u(0, 60),
        "pho": u(0, 800),
        "sil": u(0, 400),
        "oxy": np.where(rng.random(shape) < 0.3, 0.0, u(0, 350)),
        "fla": logu(1e-3, 20),
        "dia": logu(1e-3, 20),
        "bg": logu(1e-3, 20),
        "microzoo": logu(1e-3, 5),
        "mesozoo": logu(1e-3, 5),
        "det": u(0, 100),
        "dom": u(0, 50),
        "opa": u(0, 100),
    }
    for c in ("fla", "dia", "bg"):
        x[c + "chl"] = x[c] * u(1 / 400, 1 / 15)
    # some values exactly at FABM's thresholds (the test-case initial values sit there: fla = dia = 0.1, ...)
    for c, v in (
        ("fla", 0.1),
        ("dia", 0.1),
        ("bg", 0.1),
        ("microzoo", 0.01),
        ("mesozoo", 0.01),
        ("sil", 80.0),
    ):
        x[c][:, 1:3] = v if shape[1] >= 8 else x[c][:, 1:3]
    e = {
        "T": u(-1.5, 26),
        "S": u(0, 20),
        "PAR": np.where(rng.random(shape) < 0.15, 0.0, u(0, 250)),
        "PARmean": u(0, 80),
        "sPARmean": rng.uniform(60, 200, (B, 1)) * np.ones(shape),
    }
    if shape[1] >= 8:
        e["S"][:, 3:5] = 10.0
        e["PARmean"][:, 5:7] = [35.0, 40.0]
        e["sPARmean"][0] = 120.0
    xb = {k: x[k][:, 0] for k in ("oxy", "no3", "det", "opa", "nh4", "pho", "sil")}
    xb.update(sed1=rng.uniform(0, 400, B), sed2=rng.uniform(0, 300, B), sed3=rng.uniform(0, 200, B))
    eb = {"T": e["T"][:, 0], "tbs": rng.uniform(0, 0.03, B), "S": e["S"][:, 0]}
    return x, e, xb, eb


def torch_env(e):
    t = {k: torch.as_tensor(v) for k, v in e.items()}
    return {
        "temperature": t["T"],
        "practical_salinity": t["S"],
        PAR: t["PAR"],
        mean_key(PAR, 86400): t["PARmean"],
        SPAR: t["sPARmean"][:, 0] * 1.5,
        mean_key(SPAR, 86400): t["sPARmean"][:, 0],
    }


def si_params(m):
    return {n: float(m.p(n)) for n in m.params.specs}


OPTION_SETS = [
    dict(
        use_chl=True,
        use_cyanos=True,
        use_chl_in_PI_curve=False,
        couple_co2=True,
        quirk_bg_preference_twice=True,
    ),
    dict(
        use_chl=True,
        use_cyanos=True,
        use_chl_in_PI_curve=True,
        couple_co2=False,
        quirk_bg_preference_twice=False,
    ),
    dict(
        use_chl=True,
        use_cyanos=False,
        use_chl_in_PI_curve=True,
        couple_co2=True,
    ),
    dict(use_chl=False, use_cyanos=True, use_chl_in_PI_curve=False, couple_co2=False),
]


def _opts(m):
    return {
        "use_chl": m.use_chl,
        "use_cyanos": m.use_cyanos,
        "use_chl_in_PI_curve": m.use_chl_in_PI_curve,
        "couple_co2": m.couple_co2,
        "quirk_bg_preference_twice": m.quirk_bg_preference_twice,
    }


def _close(name, got, want):
    got = got.detach().numpy()
    scale = np.abs(want).max() + 1e-300
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12 * scale, err_msg=name)


@pytest.mark.parametrize("opts", OPTION_SETS)
def test_interior_sources_match_numpy_reference(opts):
    rng = np.random.default_rng(1)
    m = ECOSMO(turn_on_additional_diagnostics=True, **opts).double()
    # the test-case values (nonzero detritus preferences) where the shared file is present, and nonzero zpr
    eco = _yaml_eco() if YAML.exists() else {"parameters": {"prefZsD": 0.08, "prefZlD": 0.08}}
    for k, v in eco["parameters"].items():
        if k not in FABM_SWITCHES:
            m.set_parameter_value(m.canonical_parameter_name(k), float(v))
    m.set_parameter_value("zpr", 0.002)
    x, e, _, _ = random_case(rng)
    s = {k: torch.as_tensor(v) for k, v in x.items() if k in m.state_variables}
    rates, diags = m.do(s, torch_env(e))
    want, wdiag, _ = ref_interior(x, e, si_params(m), _opts(m))
    interior = [n for n, v in m.state_variables.items() if v.domain == "interior"]
    expected = set(interior) | ({"dic_target", "alk_target"} if m.couple_co2 else set())
    assert set(rates) == expected
    for k in expected:
        _close(k, rates[k], want[k])
    for k in (
        "primprod",
        "secprod",
        "denit",
        "total_chlorophyll",
        *(c for c in wdiag if c.startswith("c2chl")),
    ):
        _close(k, diags[k], wdiag[k])


@pytest.mark.parametrize("couple_co2", [False, True])
def test_bottom_and_surface_match_numpy_reference(couple_co2):
    rng = np.random.default_rng(2)
    m = ECOSMO(couple_co2=couple_co2).double()
    m.set_parameter_value("burialRt", 0.01)  # make burial visible
    m.set_parameter_value("surface_deposition_no3", 0.048)
    m.set_parameter_value("surface_deposition_pho", 0.000058)
    _, _, xb, eb = random_case(rng, shape=(200, 1))
    xb["oxy"][:40] = 0.0  # anoxic sediment, half with nitrate
    xb["no3"][:20] = 0.0
    eb["tbs"][::3] = 0.007  # exactly the critical stress (resuspension, FABM: ≥)
    P = si_params(m)
    s = {k: torch.as_tensor(v) for k, v in xb.items()}
    env = {"temperature": torch.as_tensor(eb["T"]), "bottom_stress": torch.as_tensor(eb["tbs"])}
    got, _ = m.do_bottom(s, env)
    want, _ = ref_bottom(xb, eb, P, {"couple_co2": couple_co2})
    assert set(got) == set(want)
    for k in want:
        _close(k, got[k], want[k])
    env_s = {"temperature": torch.as_tensor(eb["T"]), "practical_salinity": torch.as_tensor(eb["S"])}
    got_s, _ = m.do_surface(s, env_s)
    want_s = ref_surface(xb, eb, P)
    for k in want_s:
        _close(k, got_s[k], want_s[k])
    # O2 saturation: Benson & Krause at 10 degC, S=35 is about 282 mmol m-3
    one = torch.ones(1, dtype=torch.float64)
    env1 = {"temperature": 10.0 * one, "practical_salinity": 35.0 * one}
    o2 = m.do_surface({"oxy": 0.0 * one}, env1)[0]["oxy"] * D
    assert 275 < float(o2) < 290


def test_not_0d_false_means_no_resuspension():
    m = ECOSMO(not_0d=False).double()
    s = {k: torch.tensor([v], dtype=torch.float64) for k, v in dict(oxy=200.0, no3=100.0, det=5.0, opa=3.0,
         sed1=100.0, sed2=50.0, sed3=20.0).items()}  # fmt: skip
    out, _ = m.do_bottom(s, {"temperature": torch.tensor([8.0], dtype=torch.float64)})
    assert float(out["det"]) == pytest.approx(-3.5 / D * 5.0)  # deposition at sedimRt, no resuspension


def test_vertical_movement_and_light_extinction():
    m = ECOSMO().double()
    s = {
        k: torch.rand(2, 5, dtype=torch.float64) + 0.5
        for k in m.state_variables
        if m.state_variables[k].domain == "interior"
    }
    w = m.vertical_movement(s, {})
    assert set(w) == {"dia", "diachl", "det", "opa", "bg", "bgchl"}
    assert torch.allclose(w["det"], torch.full((2, 5), -5.0 / D, dtype=torch.float64))
    assert torch.allclose(w["bg"], torch.full((2, 5), 1.0 / D, dtype=torch.float64))  # rising
    assert torch.equal(w["bgchl"], w["bg"]) and torch.equal(w["diachl"], w["dia"])
    m.set_parameter_value("Exdet", 2.0)
    k = m.light_extinction(s, {})
    chl = s["diachl"] + s["flachl"] + s["bgchl"]
    assert torch.allclose(k, 0.041 + 0.04 * chl + 2e-3 * s["det"])
    carbon = ECOSMO(use_chl=False).double()
    assert torch.allclose(
        carbon.light_extinction(s, {}), 0.041 + 0.04 / N2C * (s["dia"] + s["fla"] + s["bg"])
    )


# ----------------------------------------------------------------------------------------------------
# conservation of N, P, Si (interior + bottom, closed column)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("smooth", [False, True])
def test_budgets_of_n_p_si_in_a_closed_column(smooth):
    rng = np.random.default_rng(3)
    m = ECOSMO(couple_co2=False, smooth=smooth, sharpness=50.0).double()
    m.set_parameter_value("zpr", 0.01)
    m.set_parameter_value("burialRt", 0.01)
    m.set_parameter_value("nfixation_minimum_daily_par", 20.0)
    x, e, xb, eb = random_case(rng, shape=(4, 30))
    e["S"][:] = rng.uniform(0, 9, e["S"].shape)  # brackish: cyanobacteria grow and fix N
    h = torch.as_tensor(rng.uniform(0.5, 3.0, (4, 30)))
    s = {k: torch.as_tensor(v) for k, v in x.items() if k in m.state_variables}
    for k in ("sed1", "sed2", "sed3"):
        s[k] = torch.as_tensor(xb[k])
    rates, _ = m.do(s, torch_env(e))
    sb = {k: s[k][:, 0] for k in ("oxy", "no3", "det", "opa", "nh4", "pho", "sil")}
    sb.update({k: s[k] for k in ("sed1", "sed2", "sed3")})
    eb_t = {"temperature": torch.as_tensor(e["T"][:, 0]), "bottom_stress": torch.as_tensor(eb["tbs"])}
    bot, _ = m.do_bottom(sb, eb_t)

    def total_rate(q):
        tot = torch.zeros(4, dtype=torch.float64)
        gross = torch.zeros(4, dtype=torch.float64)
        for n, v in m.state_variables.items():
            f = v.conserved.get(q, 0.0)
            if not f:
                continue
            if v.domain == "interior":
                tot = tot + f * (h * rates[n]).sum(-1) + f * bot.get(n, 0.0)
                gross = gross + f * (h * rates[n].abs()).sum(-1)
            else:
                tot = tot + f * bot[n]
        return tot, gross

    P = si_params(m)
    xs = {k: v for k, v in x.items()}
    xbs = {k: v for k, v in xb.items()}
    xbs.update({k: x[k][:, 0] for k in ("oxy", "no3", "det", "opa")})
    if not smooth:
        _, _, bud = ref_interior(xs, e, P, _opts(m))
        _, bbud = ref_bottom(xbs, {"T": e["T"][:, 0], "tbs": eb["tbs"]}, P, {"couple_co2": False})
        hn = h.numpy()
        expect = {
            "total_nitrogen": ((hn * (bud["nfix"] - bud["zpr"] - bud["denit"])).sum(-1) + bbud["N"]) / N2C,
            "total_phosphorus": ((hn * -bud["zpr"]).sum(-1) + bbud["P"]) / P2C,
            "total_silicon": bbud["Si"] / N2C,
        }
        assert (np.abs(expect["total_nitrogen"]) > 0).all()
        for q, want in expect.items():
            got, gross = total_rate(q)
            np.testing.assert_allclose(
                got.numpy(), want, rtol=1e-9, atol=1e-13 * float(gross.max()), err_msg=q
            )

    # closed: no N fixation, no zooplankton loss, no burial, no sediment N loss, oxic water
    for n, v in {"zpr": 0.0, "burialRt": 0.0, "nfixation_minimum_daily_par": 1e9, "reminSED": 0.0}.items():
        m.set_parameter_value(n, v)
    s["oxy"] = torch.as_tensor(rng.uniform(10, 350, (4, 30)))
    sb["oxy"] = s["oxy"][:, 0]
    rates, _ = m.do(s, torch_env(e))
    bot, _ = m.do_bottom(sb, eb_t)
    for q in ("total_nitrogen", "total_phosphorus", "total_silicon"):
        got, gross = total_rate(q)
        assert float(gross.min()) > 0
        assert float(got.abs().max()) <= 1e-13 * float(gross.max()), q
