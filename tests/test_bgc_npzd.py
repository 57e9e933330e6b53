"""gotm/npzd and the examples/npzd components against a numpy transcription of FABM's equations."""

import numpy as np
import pytest
import torch

from pelagos.bgc import NPZD, BGCSystem
from pelagos.bgc.examples_npzd import NpzdDet, NpzdNut, NpzdPhy, NpzdZoo
from pelagos.bgc.integrate import net_rates

PAR = "downwelling_photosynthetic_radiative_flux"
SPAR = "surface_downwelling_photosynthetic_radiative_flux"
DAY = 86400.0


pytestmark = pytest.mark.usefixtures("float64_default")


# FABM defaults of gotm/npzd (src/models/gotm/npzd.F90), rates in d-1
DEFAULTS = dict(
    p0=0.0225,
    z0=0.0225,
    kc=0.03,
    i_min=25.0,
    rmax=1.0,
    gmax=0.5,
    iv=1.1,
    alpha=0.3,
    rpn=0.01,
    rzn=0.01,
    rdn=0.003,
    rpdu=0.02,
    rpdl=0.1,
    rzd=0.02,
    w_p=-1.0,
    w_d=-5.0,
)


def fabm_npzd_numpy(n, p, z, d, par, I0, q):
    """dN, dP, dZ, dD (mmol m-3 s-1) and PPR, NPR (mmol m-3 d-1) written from the published equations."""
    r = {
        k: (v / DAY if k in ("rmax", "gmax", "rpn", "rzn", "rdn", "rpdu", "rpdl", "rzd") else v)
        for k, v in q.items()
    }
    iopt = np.maximum(0.25 * I0, r["i_min"])
    rpd = np.where(par >= r["i_min"], r["rpdu"], r["rpdl"])
    primprod = r["rmax"] * par / iopt * np.exp(1.0 - par / iopt) * n / (r["alpha"] + n) * (p + r["p0"])
    graz = r["gmax"] * (1.0 - np.exp(-(r["iv"] ** 2) * p**2)) * (z + r["z0"])
    dn = -primprod + r["rpn"] * p + r["rzn"] * z + r["rdn"] * d
    dp = primprod - graz - r["rpn"] * p - rpd * p
    dz = graz - r["rzn"] * z - r["rzd"] * z
    dd = rpd * p + r["rzd"] * z - r["rdn"] * d
    return (dn, dp, dz, dd), primprod * DAY, (primprod - r["rpn"] * p) * DAY


def random_case(seed, shape=(3, 7)):
    g = np.random.default_rng(seed)
    n, p, z, d = (g.uniform(0.0, 5.0, shape) for _ in range(4))
    par = g.uniform(0.0, 120.0, shape)
    par.flat[0], par.flat[1] = 25.0 * (1 + 1e-9), 25.0 * (1 - 1e-9)  # both sides of the switch at i_min
    I0 = g.uniform(0.0, 600.0, shape[:-1])
    return n, p, z, d, par, I0


def npzd_system(q):
    return BGCSystem({"npzd": NPZD.from_config(q)}).double()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_npzd_rates_match_hand_computation(seed):
    g = np.random.default_rng(100 + seed)
    q = {k: v * float(g.uniform(0.5, 1.5)) for k, v in DEFAULTS.items()}
    system = npzd_system(q)
    n, p, z, d, par, I0 = random_case(seed)
    st = {f"npzd_{k}": torch.tensor(v) for k, v in zip(("nut", "phy", "zoo", "det"), (n, p, z, d))}
    env = {PAR: torch.tensor(par), SPAR: torch.tensor(I0)}
    rates, diags = system.interior_sources(st, env)
    ref, ppr, npr = fabm_npzd_numpy(n, p, z, d, par, I0[:, None], q)
    for k, r in zip(("nut", "phy", "zoo", "det"), ref):
        np.testing.assert_allclose(rates[f"npzd_{k}"].numpy(), r, rtol=1e-12, atol=1e-20)
    np.testing.assert_allclose(diags["npzd_PPR"].numpy(), ppr, rtol=1e-12)
    np.testing.assert_allclose(diags["npzd_NPR"].numpy(), npr, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(diags["npzd_PAR"].numpy(), par)
    # total nitrogen: the sources sum to zero to round-off
    total = sum(rates.values())
    scale = max(float(r.abs().max()) for r in rates.values())
    assert float(total.abs().max()) <= 1e-14 * scale
    # sinking (m s-1, positive up) and light extinction kc (P + D + p0)
    w = system.vertical_velocities(st, env)
    np.testing.assert_allclose(w["npzd_phy"].numpy(), q["w_p"] / DAY)
    np.testing.assert_allclose(w["npzd_det"].numpy(), q["w_d"] / DAY)
    assert set(w) == {"npzd_phy", "npzd_det"}
    np.testing.assert_allclose(
        system.light_extinction(st, env).numpy(), q["kc"] * (p + d + q["p0"]), rtol=1e-13
    )


def test_npzd_ppdd_equals_do_and_is_nonnegative():
    system = npzd_system(DEFAULTS)
    n, p, z, d, par, I0 = random_case(7)
    st = {f"npzd_{k}": torch.tensor(v) for k, v in zip(("nut", "phy", "zoo", "det"), (n, p, z, d))}
    env = {PAR: torch.tensor(par), SPAR: torch.tensor(I0)}
    rates, _ = system.interior_sources(st, env)
    t = system.production_destruction(st, env)
    assert all(float(r.min()) >= 0.0 for r in t.values())
    net = net_rates(t)
    for k in rates:
        torch.testing.assert_close(net[k], rates[k], rtol=1e-12, atol=1e-20)
    assert all(None not in key for key in t)  # NPZD is closed: no exchange with the outside


def test_npzd_dic_coupling_receives_c_to_n_times_dn():
    from pelagos.bgc.base import BGCModel

    class Dic(BGCModel):
        fabm_name = "test/dic"

        def __init__(self):
            super().__init__()
            self.register_state_variable("c", "mmol m-3", "DIC", initial_value=2000.0, minimum=0.0)

    system = BGCSystem({"npzd": NPZD(), "carb": Dic()}, {"npzd/dic": "carb/c"}).double()
    n, p, z, d, par, I0 = random_case(3)
    st = {f"npzd_{k}": torch.tensor(v) for k, v in zip(("nut", "phy", "zoo", "det"), (n, p, z, d))}
    st["carb_c"] = torch.full_like(st["npzd_nut"], 2000.0)
    env = {PAR: torch.tensor(par), SPAR: torch.tensor(I0)}
    rates, _ = system.interior_sources(st, env)
    torch.testing.assert_close(rates["carb_c"], 106.0 / 16.0 * rates["npzd_nut"])
    # and the production/destruction form carries the same net DIC change
    net = net_rates(system.production_destruction(st, env))
    torch.testing.assert_close(net["carb_c"], rates["carb_c"])


def test_npzd_metadata_and_parameter_units():
    m = NPZD()
    assert [v.name for v in m.state_variables.values()] == ["nut", "phy", "zoo", "det"]
    assert all(v.minimum == 0.0 and v.units == "mmol m-3" for v in m.state_variables.values())
    assert m.state_variables["nut"].initial_value == 4.5 and m.state_variables["det"].initial_value == 4.5
    assert m.state_variables["nut"].no_river_dilution
    assert m.state_variables["phy"].vertical_movement == pytest.approx(-1.0 / DAY)
    assert m.state_variables["det"].vertical_movement == pytest.approx(-5.0 / DAY)
    assert m.diagnostic_variables["PPR"].units == "mmol m-3 d-1"
    for k, v in DEFAULTS.items():
        assert m.params.specs[k].default == v
    assert float(m.p("rmax")) == pytest.approx(1.0 / DAY)
    assert float(m.p("iv")) == pytest.approx(1.1)  # no scale factor
    assert m.dependencies["I_0"].domain == "horizontal"


def components_system(q):
    phy = {k: q[k] for k in ("p0", "kc", "i_min", "rmax", "alpha", "rpn", "rpdu", "rpdl", "w_p")}
    zoo = {k: q[k] for k in ("z0", "gmax", "iv", "rzn", "rzd")}
    det = {k: q[k] for k in ("w_d", "kc", "rdn")}
    models = {
        "nut": NpzdNut(),
        "phy": NpzdPhy.from_config(phy),
        "zoo": NpzdZoo.from_config(zoo),
        "det": NpzdDet.from_config(det),
    }
    couplings = {
        "phy/uptake_target": "nut/c",
        "phy/excretion_target": "nut/c",
        "phy/mortality_target": "det/c",
        "zoo/grazing_target": "phy/c",
        "zoo/excretion_target": "nut/c",
        "zoo/mortality_target": "det/c",
        "det/mineralisation_target": "nut/c",
    }
    return BGCSystem(models, couplings).double()


def test_components_equal_gotm_npzd():
    q = dict(DEFAULTS, gmax=0.2, alpha=1.35)
    a, b = npzd_system(q), components_system(q)
    n, p, z, d, par, I0 = random_case(11)
    sa = {f"npzd_{k}": torch.tensor(v) for k, v in zip(("nut", "phy", "zoo", "det"), (n, p, z, d))}
    sb = {f"{k}_c": torch.tensor(v) for k, v in zip(("nut", "phy", "zoo", "det"), (n, p, z, d))}
    env = {PAR: torch.tensor(par), SPAR: torch.tensor(I0)}
    ra, da = a.interior_sources(sa, env)
    rb, db = b.interior_sources(sb, env)
    for k in ("nut", "phy", "zoo", "det"):
        torch.testing.assert_close(rb[f"{k}_c"], ra[f"npzd_{k}"], rtol=1e-13, atol=1e-20)
    torch.testing.assert_close(db["phy_PPR"], da["npzd_PPR"])
    torch.testing.assert_close(b.light_extinction(sb, env), a.light_extinction(sa, env), rtol=1e-13, atol=0)
    wa, wb = a.vertical_velocities(sa, env), b.vertical_velocities(sb, env)
    torch.testing.assert_close(wb["phy_c"], wa["npzd_phy"])
    torch.testing.assert_close(wb["det_c"], wa["npzd_det"])
    # production/destruction of the components nets to the same rates, and is closed
    net = net_rates(b.production_destruction(sb, env))
    for k in ("nut", "phy", "zoo", "det"):
        torch.testing.assert_close(net[f"{k}_c"], ra[f"npzd_{k}"], rtol=1e-12, atol=1e-20)
    tq = b.conserved_quantities(sb)["total_nitrogen"]
    torch.testing.assert_close(tq, sum(sb.values()))


def test_npzd_batched_parameters_through_using():
    """One rmax per column (B,) via Model.using: each column equals a run with that scalar value."""
    system = npzd_system(DEFAULTS)
    n, p, z, d, par, I0 = random_case(5, shape=(3, 4))
    st = {f"npzd_{k}": torch.tensor(v) for k, v in zip(("nut", "phy", "zoo", "det"), (n, p, z, d))}
    env = {PAR: torch.tensor(par), SPAR: torch.tensor(I0)}
    rmax = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    spec = system.parameter_spec("npzd.rmax")
    with system.using({"npzd.rmax": spec.transform.inverse(rmax)}):
        rb, _ = system.interior_sources(st, env)
    for i, r in enumerate(rmax.tolist()):
        ref, _, _ = fabm_npzd_numpy(n[i], p[i], z[i], d[i], par[i], I0[i], dict(DEFAULTS, rmax=r))
        np.testing.assert_allclose(rb["npzd_phy"][i].numpy(), ref[1], rtol=1e-10)
