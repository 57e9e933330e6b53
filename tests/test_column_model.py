"""The water-column driver: conservation, positivity, batching, nuh lag, gradients, outputs, errors."""

from __future__ import annotations

import math

import pytest
import torch

from pelagos.bgc.base import BGCModel
from pelagos.bgc.npzd import NPZD
from pelagos.bgc.system import BGCSystem
from pelagos.column.forcing import ColumnForcing, compact_forcing_path
from pelagos.column.model import ColumnModel, run_column
from pelagos.core.errors import ConfigError, ForcingError
from pelagos.core.paths import DATA_DIR
from pelagos.core.rollout import rollout

F64 = torch.float64


def analytic_forcing(nz=6, hours=48, depth=18.0, B=None, seed=0, dtype=F64):
    """Diurnal I_0, a time-varying mixed layer in nuh, uniform layers; records hourly."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(hours + 1, dtype=F64) * 3600.0
    h = torch.full((hours + 1, nz), depth / nz, dtype=dtype)
    zi = torch.linspace(0, 1, nz + 1, dtype=dtype)
    mix = 1e-3 * (1.5 + torch.sin(2 * math.pi * t / 86400.0))[:, None] * (0.2 + zi)[None, :]
    mix = mix * (1 + 0.3 * torch.rand(hours + 1, nz + 1, generator=g, dtype=dtype))
    mix[:, 0] = 0.0
    mix[:, -1] = 0.0
    I0 = 300.0 * torch.clamp(torch.sin(2 * math.pi * (t / 86400.0 - 0.25)), min=0.0)
    temp = 10.0 + torch.zeros(hours + 1, nz, dtype=dtype)
    salt = 35.0 + torch.zeros(hours + 1, nz, dtype=dtype)
    return ColumnForcing(t, h, temp, salt, mix.to(dtype), I0.to(dtype))


def npzd_system(**params):
    m = NPZD()
    for k, v in params.items():
        m.set_parameter_value(k, v)
    return BGCSystem({"npzd": m})


def total_n(model, s, t):
    return model.totals(s, t)["total_nitrogen"]


def test_closed_column_conserves_nitrogen_float64():
    f = analytic_forcing(hours=200)
    model = ColumnModel(npzd_system(), f, dt=3600.0)  # sinking (phy, det) + diffusion + Euler sources
    g = torch.Generator().manual_seed(1)
    s = model.initial_state(3, profiles={"npzd_phy": 0.5 + torch.rand(3, 6, generator=g, dtype=F64)})
    n0 = total_n(model, s, 0.0)
    s = rollout(model, s, 200).final
    n1 = total_n(model, s, 200 * 3600.0)
    assert torch.allclose(n1, n0, rtol=1e-13, atol=0), n1 - n0
    assert float(s["npzd_det"][:, 0].mean()) > float(s["npzd_det"][:, -1].mean())  # detritus sank


def test_modified_patankar_positive_where_euler_is_not():
    # A 12 h step, fast grower, little nutrient: Euler overshoots below zero, MP stays >= 0 and conserves.
    f = analytic_forcing(hours=48)
    kw = {"rmax": 9.0, "alpha": 0.05, "gmax": 5.0}
    profiles = {"npzd_nut": 0.05, "npzd_phy": 2.0, "npzd_zoo": 1.0}
    out = {}
    for method in ("euler", "mp", "mprk2"):
        model = ColumnModel(npzd_system(**kw), f, dt=12 * 3600.0, ode_method=method)
        s = model.initial_state(2, profiles=profiles)
        n0 = total_n(model, s, 0.0)
        n = (
            1 if method == "euler" else 4
        )  # after one Euler step the state is negative (light would refuse it)
        s = rollout(model, s, n).final
        out[method] = min(float(s[k].min()) for k in ("npzd_nut", "npzd_phy", "npzd_zoo", "npzd_det"))
        if method != "euler":
            assert out[method] >= 0.0
            torch.testing.assert_close(total_n(model, s, n * 12 * 3600.0), n0, rtol=1e-12, atol=0)
    assert out["euler"] < 0.0


def test_batched_columns_equal_loop_over_columns():
    B = 3
    forcings = [analytic_forcing(seed=i) for i in range(B)]
    fb = ColumnForcing.stack(forcings)
    rmax = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    scale = torch.tensor([0.5, 1.0, 3.0], dtype=F64)
    model = ColumnModel(npzd_system(), fb)
    raw = {
        "npzd.rmax": model.parameter_spec("npzd.rmax").transform.inverse(rmax),
        "nuh_scale": model.parameter_spec("nuh_scale").transform.inverse(scale),
    }
    with model.using(raw):
        s = rollout(model, model.initial_state(B), 30).final
    chunked = ColumnModel(npzd_system(), fb, chunk_columns=2)  # chunks of columns: same numbers
    with chunked.using(raw):
        sc = rollout(chunked, chunked.initial_state(B), 30).final
    for k in s:
        torch.testing.assert_close(sc[k], s[k], rtol=1e-13, atol=1e-15)
    for i in range(B):
        mi = ColumnModel(npzd_system(), forcings[i])
        with mi.using({k: v[i] for k, v in raw.items()}):  # the same unconstrained values, one column
            si = rollout(mi, mi.initial_state(1), 30).final
        for k in si:
            torch.testing.assert_close(s[k][i : i + 1], si[k], rtol=1e-12, atol=1e-14)


class Tracer(BGCModel):
    """A passive tracer, no sources (to see transport alone)."""

    def __init__(self):
        super().__init__()
        self.register_state_variable("c", "1", "tracer", initial_value=0.0, conserved={"total_c": 1.0})


def test_nuh_lag_uses_the_diffusivity_of_the_previous_record():
    nz = 4
    t = torch.tensor([0.0, 3600.0, 7200.0], dtype=F64)
    nuh = torch.zeros(3, nz + 1, dtype=F64)
    nuh[1:, 1:-1] = 1.0  # no mixing written at t=0, strong mixing from t=1 h on
    f = ColumnForcing(
        t,
        torch.ones(3, nz, dtype=F64),
        torch.full((3, nz), 10.0, dtype=F64),
        torch.full((3, nz), 35.0, dtype=F64),
        nuh,
        torch.zeros(3, dtype=F64),
    )
    c0 = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64)
    lagged = ColumnModel(BGCSystem({"tr": Tracer()}), f, dt=3600.0)
    s = lagged.step(lagged.initial_state(1, profiles={"tr_c": c0}), 0.0)
    torch.testing.assert_close(s["tr_c"], c0)  # GOTM: the step 0 -> 1 h uses nuh written at 0 (= 0)
    s = lagged.step(s, 3600.0)
    assert float(s["tr_c"][0, -1]) > 0.2  # ... and the next step mixes
    ahead = ColumnModel(BGCSystem({"tr": Tracer()}), f, dt=3600.0, nuh_lag=False)
    s = ahead.step(ahead.initial_state(1, profiles={"tr_c": c0}), 0.0)
    assert float(s["tr_c"][0, -1]) > 0.2


def _loss_fn(model, s0, n, w):
    def loss(u_params, u_state):
        with model.using(u_params):
            s = dict(s0)
            s["npzd_phy"] = s0["npzd_phy"] * torch.exp(u_state)
            s = rollout(model, s, n, checkpoint=3).final
        return (w * s["npzd_phy"]).sum() + 0.3 * (w * s["npzd_det"]).sum()

    return loss


def test_gradients_fd_and_jvp_vs_vjp_of_multistep_run():
    f = analytic_forcing(nz=5, hours=24)
    model = ColumnModel(npzd_system(), f, dt=3600.0)
    g = torch.Generator().manual_seed(3)
    # non-uniform profiles: a uniform one sits exactly on the TVD limiter's branch point (gradient one-sided)
    prof = {"npzd_phy": 0.5 + torch.rand(2, 5, generator=g, dtype=F64), "npzd_zoo": 0.3}
    s0 = model.initial_state(2, profiles=prof)
    names = ["npzd.rmax", "npzd.gmax", "npzd.alpha", "nuh_scale"]
    u0 = {n: model.parameter_spec(n).transform.inverse(model.get_parameter_value(n).to(F64)) for n in names}
    w = torch.rand(2, 5, generator=g, dtype=F64)
    x0 = torch.zeros(2, 5, dtype=F64)
    loss = _loss_fn(model, s0, 10, w)  # 10 steps (midday light included: steps 6..10 start after 06:00)
    # reverse mode (checkpointed rollout)
    up = {k: v.clone().requires_grad_(True) for k, v in u0.items()}
    xs = x0.clone().requires_grad_(True)
    L = loss(up, xs)
    grads = torch.autograd.grad(L, [*up.values(), xs])
    # a random direction in (parameters, initial state)
    dp = {k: torch.randn((), generator=g, dtype=F64) for k in u0}
    dx = torch.randn(2, 5, generator=g, dtype=F64)
    vjp_dir = sum(float(gr * dp[k]) for gr, k in zip(grads[:-1], u0)) + float((grads[-1] * dx).sum())
    eps = 1e-6
    lp = loss({k: u0[k] + eps * dp[k] for k in u0}, x0 + eps * dx)
    lm = loss({k: u0[k] - eps * dp[k] for k in u0}, x0 - eps * dx)
    fd = float(lp - lm) / (2 * eps)
    assert abs(fd - vjp_dir) <= 1e-6 * abs(fd) + 1e-12, (fd, vjp_dir)
    # forward mode
    _, jv = torch.func.jvp(lambda p, x: loss(p, x), (u0, x0), (dp, dx))
    assert abs(float(jv) - vjp_dir) <= 1e-9 * abs(vjp_dir), (float(jv), vjp_dir)
    assert all(float(gr.abs().sum()) > 0 for gr in grads)  # every input matters


def test_run_column_on_compact_nns_forcing_outputs_and_hook():
    seen = []
    ds = run_column(
        compact_forcing_path(),
        npzd_system(),
        start="1998-05-01",
        stop="1998-05-02",
        dt=3600.0,
        output_every=6 * 3600.0,
        n_columns=2,
        parameters={"npzd.rmax": torch.tensor([1.0, 2.0], dtype=F64)},
        on_output=lambda t, out: seen.append((t, sorted(out))),
    )
    assert ds.sizes["time"] == 5 and ds.sizes["column"] == 2 and ds.sizes["z"] == 22 and ds.sizes["zi"] == 23
    for v in ("npzd_nut", "npzd_phy", "npzd_zoo", "npzd_det", "npzd_PPR", "temp", "salt", "PAR", "nuh"):
        assert v in ds
    assert len(seen) == 5 and "total_nitrogen" in seen[0][1]
    tn = ds["total_nitrogen"].values
    assert abs(tn - tn[0]).max() < 1e-9 * tn[0].max()
    # physics-driven plausibility (not a GOTM parity claim): light decays with depth at noon, the faster
    # grower produces more at the surface, and z is negative down with index 0 at the bottom
    noon = ds.sel(time=ds.time[2])
    par = noon["PAR"].values[0]
    assert par[-1] > par[-5] > par[0] >= 0 and par[-1] > 10.0
    ppr = noon["npzd_PPR"].values
    assert ppr[1, -1] > ppr[0, -1] > 0
    assert ds["z"].values[0] < ds["z"].values[-1] < 0


def test_errors_forcing_window_and_bottom_stress():
    f = analytic_forcing(hours=10)
    with pytest.raises(ForcingError, match="covers"):
        run_column(f, npzd_system(), start=0.0, stop=20 * 3600.0)
    with pytest.raises(ConfigError, match="multiple of dt"):
        run_column(f, npzd_system(), start=0.0, stop=5000.0)

    class NeedsStress(BGCModel):
        def __init__(self):
            super().__init__()
            self.register_state_variable("x", "1", "x", initial_value=1.0)
            self.register_dependency("taub", "bottom_stress")

    with pytest.raises(ForcingError, match=r"bottom_stress.*pass bottom_stress="):
        ColumnModel(BGCSystem({"b": NeedsStress()}), f)


@pytest.mark.slow
def test_nns_year_spring_bloom_plausible():
    ds = run_column(compact_forcing_path(), npzd_system(), dt=3600.0, output_every=86400.0)
    phy_top = ds["npzd_phy"].isel(column=0, z=-1).values
    nut_top = ds["npzd_nut"].isel(column=0, z=-1).values
    peak_day = int(phy_top.argmax())
    assert 60 < peak_day < 200  # spring/early-summer bloom at the surface
    assert nut_top[150:240].mean() < 0.5 * nut_top[:30].mean()  # summer surface nutrient drawdown
    tn = ds["total_nitrogen"].values
    # as tight as the day-long budgets: closed column, conservative scheme (measured 6e-14 over the year)
    assert abs(tn - tn[0]).max() < 1e-11 * tn[0].max()


def test_driver_diffusion_equals_gotm_diff_center():
    # The driver solves all tracers with one contiguous matrix; it must equal diff_center (cnpar=1, no flux).
    from pelagos.column.diffusion import diffuse_center

    g = torch.Generator().manual_seed(5)
    f = analytic_forcing(nz=7)
    model = ColumnModel(npzd_system(), f)
    Y = torch.rand(4, 3, 7, generator=g, dtype=F64)  # (V, B, nz)
    h = 0.5 + torch.rand(3, 7, generator=g, dtype=F64)
    nuh = 1e-3 * torch.rand(3, 8, generator=g, dtype=F64)
    ref = diffuse_center(Y, h, nuh, model.dt, cnpar=1.0, posconc=True)
    torch.testing.assert_close(model._diffuse(Y, h, nuh), ref, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close((model._diffuse(Y, h, nuh) * h).sum(-1), (Y * h).sum(-1), rtol=1e-13, atol=0)


ECOSMO_YAML = DATA_DIR / "fabm" / "fabm-nersc-ecosmo.yaml"  # FABM's test case, shipped with the package


def test_ecosmo_column_bottom_stress_and_running_means():
    from pelagos.core.running_mean import running_mean_init, running_mean_update

    f = ColumnForcing.from_gotm(compact_forcing_path(), stop=2 * 86400.0)
    with pytest.raises(ForcingError, match="bottom_stress"):
        ColumnModel(BGCSystem.from_yaml(ECOSMO_YAML, drop_unsupported=True), f)
    f = ColumnForcing.from_gotm(compact_forcing_path(), stop=2 * 86400.0, bottom_stress=0.05)
    model = ColumnModel(BGCSystem.from_yaml(ECOSMO_YAML, drop_unsupported=True), f)
    key = "surface_downwelling_photosynthetic_radiative_flux@mean86400"
    assert key in model.means
    t0 = 6 * 3600.0
    s = rollout(model, model.initial_state(2, t0=t0), 8, t0=t0).final
    assert all(bool(torch.isfinite(v).all()) for k, v in s.items() if k != "_means")
    # with the yaml's gotm/light instance, surface PAR = (1 - a) I_0, averaged FABM-style from t0 on
    a = float(model.bgc.light_model.get_parameter_value("a"))
    par0 = [(1 - a) * f.sample(t0 + k * 3600.0)["I_0"] for k in range(9)]
    buf = running_mean_init(par0[0])
    for k in range(1, 9):
        buf = running_mean_update(buf, par0[k], t0 + k * 3600.0, t0 + (k - 1) * 3600.0)
    torch.testing.assert_close(s["_means"][key]["mean"], buf["mean"].expand(2), rtol=1e-12, atol=1e-12)
    assert float(buf["mean"].max()) > 0.0


def test_run_column_restart_continues_exactly_and_half_hour_steps():
    f = analytic_forcing(hours=24)
    full = run_column(f, npzd_system(), start=0.0, stop=24 * 3600.0, output_every=6 * 3600.0, as_xarray=False)
    first = run_column(
        f, npzd_system(), start=0.0, stop=12 * 3600.0, output_every=6 * 3600.0, as_xarray=False
    )
    second = run_column(
        f,
        npzd_system(),
        start=12 * 3600.0,
        stop=24 * 3600.0,
        output_every=6 * 3600.0,
        as_xarray=False,
        state=first["final_state"],
    )
    for k in ("npzd_phy", "npzd_det", "npzd_PPR", "total_nitrogen"):
        torch.testing.assert_close(second[k][-1], full[k][-1], rtol=0, atol=0)
    # dt = 1800 s on hourly records: forcing interpolated in time, nitrogen still conserved
    half = run_column(
        f, npzd_system(), start=0.0, stop=24 * 3600.0, dt=1800.0, output_every=6 * 3600.0, as_xarray=False
    )
    tn = half["total_nitrogen"]
    torch.testing.assert_close(tn[-1], tn[0], rtol=1e-13, atol=0)
    assert float((half["npzd_phy"][-1] - full["npzd_phy"][-1]).abs().max()) > 0  # a different discretisation


def test_shared_velocity_rows_keep_forward_mode_tangents():
    # Equal sinking speeds in every column are merged into one row only when no derivative flows through them;
    # a forward-mode dual tensor has requires_grad False but carries a tangent that must survive.
    import torch.autograd.forward_ad as fwAD

    from pelagos.column.model import _shared_rows

    w = torch.full((3, 4), -1e-5, dtype=torch.float64)
    assert _shared_rows(w).shape == (1, 4)
    tangent = torch.randn(3, 4, dtype=torch.float64)
    with fwAD.dual_level():
        out = _shared_rows(fwAD.make_dual(w, tangent))
        assert out.shape == (3, 4)
        assert torch.equal(fwAD.unpack_dual(out).tangent, tangent)


def test_output_gives_every_declared_variable_with_a_light_instance():
    """With a FABM ``gotm/light`` instance (ECOSMO's configuration) the system declares the light
    diagnostics ``light_par``/``light_swr``/``light_par0``; ``output()`` must give them (``pelagos run
    examples/nns_annual_ecosmo.yaml`` stopped with "ColumnModel.output() lacks ['light_par', ...]")."""
    bgc = BGCSystem.from_yaml(
        {"instances": {"light": {"model": "gotm/light"}, "npzd": {"model": "gotm/npzd"}}}
    )
    m = ColumnModel(bgc, ColumnForcing.from_gotm(compact_forcing_path(), stop=2 * 86400.0), dt=3600.0)
    x = m.initial_state(2)
    out = m.output(x, 12 * 3600.0)
    declared = {v.name for v in m.output_variables()}
    assert {"light_par", "light_swr", "light_par0"} <= declared
    assert declared <= set(out)
    assert torch.equal(out["light_par"], out["PAR"])
    assert out["light_par"].shape == out["PAR"].shape and out["light_par0"].shape == (2,)
    assert (out["light_swr"] >= out["light_par"]).all()
