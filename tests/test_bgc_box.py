"""0-D box (``BoxModel``, ``run_box``): FABM's light at the box centre, conservation over a year, positivity,
gradients."""

import math

import numpy as np
import pytest
import torch

from pelagos.bgc import NPZD, BGCSystem
from pelagos.bgc.box import BoxModel, StepForcing, read_env_file, run_box
from pelagos.bgc.fabm_yaml import packaged_yaml
from pelagos.bgc.gotm_light import GotmLight
from pelagos.core.errors import ConfigError, ForcingError
from pelagos.core.paths import DATA_DIR
from pelagos.core.rollout import rollout

DATA = DATA_DIR / "fabm"  # FABM's env_nns_annual.dat etc., shipped with the package
PAR = "downwelling_photosynthetic_radiative_flux"
SPAR = "surface_downwelling_photosynthetic_radiative_flux"


pytestmark = pytest.mark.usefixtures("float64_default")


def npzd_system():
    return BGCSystem.from_yaml(packaged_yaml())


def simulate(system, state0, forcing, n_steps, *, save_every=1, **options):
    """States ``(n_save, ...)`` of the box over per-step ``forcing`` (``core.rollout``: differentiable)."""
    model = BoxModel(system, StepForcing(forcing, options.get("dt", 1800.0), n_steps=n_steps), **options)
    return rollout(model, model.with_buffers(state0), n_steps, save_every=save_every).states


def synthetic_year(dt):
    """Seasonal + daily shortwave (W m-2), temperature and salinity for one year at step dt (s)."""
    n = int(365 * 86400 / dt)
    t = dt * np.arange(1, n + 1)
    day = 2 * np.pi * t / 86400.0
    season = 0.5 * (1 - np.cos(2 * np.pi * t / (365 * 86400.0)))
    swr = np.maximum(0.0, 600.0 * season * np.sin(day)) + 0.0
    return n, {
        "surface_downwelling_shortwave_flux": torch.tensor(swr),
        "temperature": torch.tensor(8.0 + 4.0 * season),
        "practical_salinity": torch.tensor(np.full(n, 35.0)),
    }


def test_box_light_is_fabm0d_formula():
    system = npzd_system()
    box = BoxModel(system, depth=10.0, background_extinction=0.05, par_fraction=0.43)
    st = system.initial_state((), nz=1)
    st["npzd_phy"] = st["npzd_phy"] + 2.0
    f = {"surface_downwelling_shortwave_flux": torch.tensor(300.0), "temperature": torch.tensor(10.0)}
    env = box.environment(st, f)
    kbio = 0.03 * (2.0 + 1e-15 + 4.5 + 0.0225)
    assert float(env[SPAR]) == pytest.approx(0.43 * 300.0)
    assert float(env[PAR][0]) == pytest.approx(
        0.43 * 300.0 * math.exp(-0.5 * 10.0 * (kbio + 0.05)), rel=1e-12
    )
    assert env["temperature"].shape == (1,) and env[SPAR].shape == ()
    # without self-shading only the background extinction acts
    box2 = BoxModel(system, apply_self_shading=False)
    env2 = box2.environment(st, {"surface_downwelling_shortwave_flux": torch.tensor(300.0)})
    assert float(env2[PAR][0]) == pytest.approx(300.0 * math.exp(-0.5 * 10.0 * 0.05), rel=1e-12)


@pytest.mark.parametrize("method", ["euler", "rk2", "mp"])
def test_box_year_conserves_total_nitrogen(method):
    system = npzd_system()
    dt = 6 * 3600.0
    _, forcing = synthetic_year(dt)
    ds = run_box(system, forcing, dt=dt, method=method, save_every=20)
    tn = ds["total_nitrogen"].values  # per m2 = (N+P+Z+D) * 10 m
    assert tn[0] == pytest.approx(90.0)
    assert np.abs(tn - tn[0]).max() < 1e-11 * tn[0]
    assert float(ds["npzd_phy"].max()) > 0.1  # a bloom happened: the test is not trivially static


def test_env_file_reader_and_file_driven_run():
    data = read_env_file(DATA / "env_nns_annual.dat")
    assert len(data["time"]) == 8760 + 1 and str(data["time"][0]) == "1998-01-01T00:00:00"
    assert data["temperature"][0] == pytest.approx(8.07) and data["practical_salinity"][0] == pytest.approx(
        35.14
    )
    system = npzd_system()
    ds = run_box(system, DATA / "env_nns_annual.dat", stop="1998-01-03", dt=1800.0)
    assert ds.sizes["time"] == 2 * 48 + 1
    assert str(ds.time.values[-1])[:19] == "1998-01-03T00:00:00"
    assert ds["npzd_phy"].attrs["units"] == "mmol m-3" and ds["npzd_PPR"].attrs["units"] == "mmol m-3 d-1"
    # step n uses the forcing at its end time t_n (linear interpolation of the hourly file)
    t1 = 1800.0
    swr = data["surface_downwelling_shortwave_flux"]
    swr1 = np.interp(t1, [0.0, 3600.0], [swr[0], swr[1]])
    assert np.isnan(float(ds["surface_PAR"][0]))  # diagnostics exist from the first step on
    assert float(ds["surface_PAR"][1]) == pytest.approx(swr1)
    with pytest.raises(ForcingError, match="covers"):
        run_box(system, DATA / "env_nns_annual.dat", start="1998-12-31", n_steps=200)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["euler", "rk2", "mp"])
def test_box_nns_year_fabm_settings_conserve(method):
    ds = run_box(npzd_system(), DATA / "env_nns_annual.dat", dt=1800.0, method=method)
    tn = ds["total_nitrogen"].values
    assert np.abs(tn - tn[0]).max() < 1e-11 * tn[0]


def test_mp_positive_where_euler_goes_negative():
    system = npzd_system()
    dt = 86400.0  # one day: Euler overshoots nutrient uptake under bright light
    forcing = {"surface_downwelling_shortwave_flux": torch.full((30,), 250.0)}
    st0 = system.initial_state(())
    st0["npzd_phy"] = st0["npzd_phy"] + 1.0
    st0["npzd_zoo"] = st0["npzd_zoo"] + 0.5
    te = simulate(system, st0, forcing, 30, method="euler", dt=dt)
    assert min(float(v.min()) for v in te.values()) < -0.5
    for method in ("mp", "mprk2"):
        tm = simulate(system, st0, forcing, 30, method=method, dt=dt)
        assert min(float(v.min()) for v in tm.values()) >= 0.0
        tot = sum(v[-1] for v in tm.values())
        assert float(tot) == pytest.approx(10.5, abs=1e-12)  # 4.5 + 1 + 0.5 + 4.5 (+ 2e-15)


@pytest.mark.parametrize("method", ["rk2", "mp"])
def test_box_gradients_fd_and_jvp_vs_vjp(method):
    """d(final state)/d(NPZD parameters, initial state) over 12 steps with self-shading light."""
    system = npzd_system()
    names = ["npzd.rmax", "npzd.gmax", "npzd.alpha", "npzd.kc", "npzd.rpn"]
    n = 12
    forcing = {
        "surface_downwelling_shortwave_flux": torch.linspace(50.0, 400.0, n),
        "temperature": torch.full((n,), 10.0),
    }
    base = system.initial_state(())
    keys = list(base)
    u0 = torch.stack(
        [system.parameter_spec(k).transform.inverse(system.get_parameter_value(k)) for k in names]
    )
    x0 = torch.tensor([4.0, 0.8, 0.3, 3.0])
    w = torch.randn(4, generator=torch.Generator().manual_seed(1))

    def f(u, x):
        with system.using({k: u[i] for i, k in enumerate(names)}):
            st = {k: x[i].reshape(1) for i, k in enumerate(keys)}
            traj = simulate(system, st, forcing, n, save_every=n, method=method, dt=3 * 3600.0)
        return torch.stack([traj[k][-1, 0] for k in keys])

    g = torch.Generator().manual_seed(0)
    du, dx = torch.randn(len(names), generator=g) * 0.1, torch.randn(4, generator=g) * 0.1
    eps = 1e-6
    fd = (f(u0 + eps * du, x0 + eps * dx) - f(u0 - eps * du, x0 - eps * dx)) / (2 * eps)
    _, jv = torch.func.jvp(f, (u0, x0), (du, dx))
    assert float(jv.abs().max()) > 1e-3  # a non-trivial sensitivity
    torch.testing.assert_close(jv, fd, rtol=1e-6, atol=1e-9)
    ur, xr = u0.clone().requires_grad_(), x0.clone().requires_grad_()
    gu, gx = torch.autograd.grad(f(ur, xr) @ w, (ur, xr))
    torch.testing.assert_close(gu @ du + gx @ dx, jv @ w, rtol=1e-10, atol=1e-13)


def test_gotm_light_column_matches_layer_loop():
    light = GotmLight.from_config({"A": 0.7, "g1": 0.4, "g2": 8.0})
    g = np.random.default_rng(0)
    h = g.uniform(0.5, 3.0, (2, 6))
    k = g.uniform(0.0, 0.2, (2, 6))
    swr0 = np.array([400.0, 120.0])
    out = light.column_light(torch.tensor(swr0), torch.tensor(h), torch.tensor(k))
    for b in range(2):
        z = bio = 0.0
        for i in reversed(range(6)):  # surface (index 5) downwards
            z += 0.5 * h[b, i]
            bio += 0.5 * k[b, i] * h[b, i]
            par = swr0[b] * 0.3 * math.exp(-z / 8.0 - bio)
            swr = par + swr0[b] * 0.7 * math.exp(-z / 0.4)
            assert float(out["par"][b, i]) == pytest.approx(par, rel=1e-12)
            assert float(out["swr"][b, i]) == pytest.approx(swr, rel=1e-12)
            z += 0.5 * h[b, i]
            bio += 0.5 * k[b, i] * h[b, i]
    np.testing.assert_allclose(out["par0"].numpy(), 0.3 * swr0)


def test_box_with_gotm_light_instance_uses_it():
    system = BGCSystem({"light": GotmLight(), "npzd": NPZD()})
    box = BoxModel(system, depth=10.0)
    st = system.initial_state(())
    env = box.environment(st, {"surface_downwelling_shortwave_flux": torch.tensor(200.0)})
    kbio = float(system.light_extinction(st, env)[0])
    assert float(env[SPAR]) == pytest.approx(200.0 * 0.42)
    assert float(env[PAR][0]) == pytest.approx(200.0 * 0.42 * math.exp(-5.0 / 23.0 - 5.0 * kbio), rel=1e-12)


def test_box_errors():
    system = npzd_system()
    with pytest.raises(ConfigError, match="depth must be > 0"):
        BoxModel(system, depth=0.0)
    with pytest.raises(ConfigError, match="unknown source integrator 'rk5'"):
        BoxModel(system, method="rk5")
    box = BoxModel(system)
    with pytest.raises(ForcingError, match="needs 'surface_downwelling_shortwave_flux'"):
        box.environment(system.initial_state(()), {"temperature": torch.tensor(1.0)})
    with pytest.raises(ForcingError, match="has 3 steps; expected 5"):
        StepForcing({"surface_downwelling_shortwave_flux": torch.ones(3)}, 1800.0, n_steps=5)
    model = BoxModel(system, StepForcing({"surface_downwelling_shortwave_flux": torch.ones(3)}, 1800.0))
    with pytest.raises(ForcingError, match=r"covers the ends of steps 1\.\.3"):
        rollout(model, model.initial_state(), 4)


def numpy_box_npzd_euler(forcing, dt, n_steps, q, x0, depth=10.0, bg=0.05):
    """An independent float64 numpy 0-D NPZD (FABM equations + fabm0d light), forward Euler."""
    n, p, z, d = x0
    per_day = {k: q[k] / 86400.0 for k in ("rmax", "gmax", "rpn", "rzn", "rdn", "rpdu", "rpdl", "rzd")}
    out = [(n, p, z, d)]
    for i in range(n_steps):
        swr = forcing[i]
        kbio = q["kc"] * (p + d + q["p0"])
        par = swr * np.exp(-0.5 * depth * (kbio + bg))
        iopt = max(0.25 * swr, q["i_min"])
        rpd = per_day["rpdu"] if par >= q["i_min"] else per_day["rpdl"]
        pp = per_day["rmax"] * par / iopt * np.exp(1 - par / iopt) * n / (q["alpha"] + n) * (p + q["p0"])
        g = per_day["gmax"] * (1 - np.exp(-(q["iv"] ** 2) * p * p)) * (z + q["z0"])
        dn = -pp + per_day["rpn"] * p + per_day["rzn"] * z + per_day["rdn"] * d
        dp = pp - g - per_day["rpn"] * p - rpd * p
        dz = g - per_day["rzn"] * z - per_day["rzd"] * z
        dd = rpd * p + per_day["rzd"] * z - per_day["rdn"] * d
        n, p, z, d = n + dt * dn, p + dt * dp, z + dt * dz, d + dt * dd
        out.append((n, p, z, d))
    return np.array(out)


def test_box_matches_independent_numpy_npzd_over_60_days():
    system = npzd_system()
    dt = 1800.0
    n_steps = 60 * 48
    t = dt * np.arange(1, n_steps + 1)
    swr = np.maximum(0.0, 500.0 * np.sin(2 * np.pi * t / 86400.0))
    q = {
        k: float(system.get_parameter_value(f"npzd.{k}"))
        for k in (
            "p0",
            "z0",
            "kc",
            "i_min",
            "rmax",
            "gmax",
            "iv",
            "alpha",
            "rpn",
            "rzn",
            "rdn",
            "rpdu",
            "rpdl",
            "rzd",
        )
    }
    ref = numpy_box_npzd_euler(swr, dt, n_steps, q, (4.5, 1e-15, 1e-15, 4.5))
    ds = run_box(system, {"surface_downwelling_shortwave_flux": torch.tensor(swr)}, dt=dt, method="euler")
    got = np.stack([ds[k].values for k in ("npzd_nut", "npzd_phy", "npzd_zoo", "npzd_det")], -1)
    assert ref[:, 1].max() > 0.5  # the phytoplankton bloom is inside the compared window
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_running_mean_dependency_follows_fabm_temporal_mean():
    from pelagos.bgc import BGCModel
    from pelagos.bgc.base import mean_key

    class Seen(BGCModel):
        def __init__(self):
            super().__init__()
            self.register_state_variable("c", "-", initial_value=0.0, minimum=None)
            self.register_dependency("pm", PAR, mean_period=86400.0, mean_resolution=3600.0)

        def do(self, s, env):  # dc/dt = daily-mean PAR: c integrates the mean
            return {"c": env[mean_key(PAR, 86400.0)] + 0.0 * s["c"]}, {}

    system = BGCSystem({"m": Seen()})
    n = 72
    par = torch.cat([torch.full((24,), 10.0), torch.full((48,), 34.0)])
    traj = simulate(system, system.initial_state(()), {PAR: par}, n, dt=3600.0)
    rate = (traj["m_c"][1:, 0] - traj["m_c"][:-1, 0]) / 3600.0  # the mean used at each step
    assert float(rate[0]) == pytest.approx(10.0) and float(rate[23]) == pytest.approx(10.0)
    assert float(rate[24]) == pytest.approx(11.0)  # one of 24 hourly samples has switched to 34
    assert float(rate[47]) == pytest.approx(34.0) and float(rate[-1]) == pytest.approx(34.0)
