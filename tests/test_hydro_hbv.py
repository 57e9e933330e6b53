"""HBV 1.0 (pelagos.hydro): hand-computed days, water balance, routing, gradients, the reference, the kind."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pelagos.core.errors import ConfigError, ForcingError, ShapeError
from pelagos.core.gradcheck import check_directional, check_jvp_vjp
from pelagos.hydro.camels import SAMPLE, SAMPLE_BASINS, load_basins, stack_basins
from pelagos.hydro.hbv import (
    DEFAULTS,
    FLUXES,
    HBV_PARAMETER_NAMES,
    PARAMETER_NAMES,
    PARAMETERS,
    SM_FLOOR,
    STORES,
    hbv_day,
    initial_state,
    run_hbv,
    scale_parameters,
    unscale_parameters,
)
from pelagos.hydro.pet import extraterrestrial_radiation, hargreaves
from pelagos.hydro.unit_hydrograph import UH_LENGTH, gamma_weights, route, route_step

F64 = torch.float64
FIXTURE = Path(__file__).parent / "data" / "hydro" / "hbv_reference.npz"


@pytest.fixture(scope="module")
def forcing():
    """The 4 CAMELS-US sample basins, 2000-01-01..2002-12-31 (1096 days), float64."""
    return stack_basins(load_basins(SAMPLE, SAMPLE_BASINS, "2000-01-01", "2002-12-31"))


def random_params(n_basins: int, nmul: int, seed: int, dtype=F64) -> dict[str, torch.Tensor]:
    """Physical values, uniform in [0.05, 0.95] of each range; (n_basins, nmul), routing (n_basins,)."""
    g = torch.Generator().manual_seed(seed)
    u = 0.05 + 0.9 * torch.rand(n_basins, nmul, len(HBV_PARAMETER_NAMES), generator=g, dtype=dtype)
    p = scale_parameters(u, HBV_PARAMETER_NAMES)
    r = 0.05 + 0.9 * torch.rand(n_basins, 2, generator=g, dtype=dtype)
    p.update(scale_parameters(r, ("route_a", "route_b")))
    return p


def one_day(stores, P, T, PET, **over):
    p = {n: torch.tensor(float(DEFAULTS[n]), dtype=F64) for n in HBV_PARAMETER_NAMES}
    p.update({n: torch.tensor(float(v), dtype=F64) for n, v in over.items()})
    st = tuple(torch.tensor([float(s)], dtype=F64) for s in stores)
    new, fl = hbv_day(st, *(torch.tensor([float(x)], dtype=F64) for x in (P, T, PET)), p)
    return dict(zip(STORES, (float(s) for s in new))), dict(zip(FLUXES, (float(f) for f in fl)))


# -- hand-computed days -------------------------------------------------------------------------------------
def test_snow_routine_by_hand():
    # day 1: 10 mm at -5 °C all snow; refreezing (0.05·2·5 = 0.5 mm/d) takes the 0.001 mm of liquid water
    s, f = one_day((0.001, 0.001, 100.0, 0.0, 0.0), 10.0, -5.0, 0.0, TT=0.0, CFMAX=2.0, CFR=0.05, CWH=0.1)
    assert f["snow"] == 10.0 and f["rain"] == 0.0 and f["melt"] == 0.0
    assert f["refreeze"] == pytest.approx(0.001, abs=1e-15)
    assert s["SNOWPACK"] == pytest.approx(10.002, abs=1e-12) and s["MELTWATER"] == pytest.approx(
        0.0, abs=1e-15
    )
    assert f["tosoil"] == 0.0
    # day 2: dry, 3 °C: melt 2·3 = 6 mm; the snow holds 0.1·4.002 mm, the rest (5.5998 mm) goes to the soil
    s, f = one_day((s["SNOWPACK"], s["MELTWATER"], 100.0, 0.0, 0.0), 0.0, 3.0, 0.0, TT=0.0, CFMAX=2.0,
                   CFR=0.05, CWH=0.1)  # fmt: skip
    assert f["melt"] == pytest.approx(6.0, abs=1e-12) and f["refreeze"] == 0.0
    assert s["SNOWPACK"] == pytest.approx(4.002, abs=1e-12)
    assert f["tosoil"] == pytest.approx(6.0 - 0.4002, abs=1e-12)
    assert s["MELTWATER"] == pytest.approx(0.4002, abs=1e-12)
    # melt is limited by the snowpack
    s, f = one_day((1.0, 0.0, 100.0, 0.0, 0.0), 0.0, 10.0, 0.0, TT=0.0, CFMAX=5.0, CWH=0.1)
    assert f["melt"] == 1.0 and s["SNOWPACK"] == 0.0 and f["tosoil"] == 1.0
    # T exactly at TT is rain (T >= TT)
    _, f = one_day((0.0, 0.0, 100.0, 0.0, 0.0), 4.0, 0.5, 0.0, TT=0.5)
    assert f["rain"] == 4.0 and f["snow"] == 0.0


def test_soil_and_response_by_hand():
    # SM 100 of FC 200, BETA 2: 25 % of the 10 mm of rain recharges; ET at potential (SM > LP·FC = 100)
    s, f = one_day((0.0, 0.0, 100.0, 5.0, 10.0), 10.0, 15.0, 3.0, FC=200.0, BETA=2.0, LP=0.5, PERC=2.0,
                   UZL=3.0, K0=0.5, K1=0.2, K2=0.1)  # fmt: skip
    assert f["recharge"] == pytest.approx(2.5, abs=1e-12) and f["excess"] == 0.0
    assert f["ET"] == pytest.approx(3.0, abs=1e-12) and s["SM"] == pytest.approx(104.5, abs=1e-12)
    assert f["perc"] == 2.0
    assert f["Q0"] == pytest.approx(0.5 * (5.5 - 3.0), abs=1e-12)
    assert f["Q1"] == pytest.approx(0.2 * 4.25, abs=1e-12) and s["SUZ"] == pytest.approx(3.4, abs=1e-12)
    assert f["Q2"] == pytest.approx(1.2, abs=1e-12) and s["SLZ"] == pytest.approx(10.8, abs=1e-12)
    # excess over FC: SM 190, 100 mm of rain, BETA 5: recharge 100·0.95^5, SM would be 212.62... -> excess
    s, f = one_day((0.0, 0.0, 190.0, 0.0, 0.0), 100.0, 15.0, 0.0, FC=200.0, BETA=5.0, PERC=0.0)
    assert f["recharge"] == pytest.approx(100 * 0.95**5, abs=1e-10)
    assert f["excess"] == pytest.approx(190 + 100 - 100 * 0.95**5 - 200, abs=1e-10)
    assert s["SM"] == pytest.approx(200.0, abs=1e-12)
    assert s["SUZ"] + f["Q0"] + f["Q1"] == pytest.approx(f["recharge"] + f["excess"], abs=1e-10)
    # ET limited by soil moisture below LP·FC: 4 · 10/(0.5·200)
    s, f = one_day((0.0, 0.0, 10.0, 0.0, 0.0), 0.0, 15.0, 4.0, FC=200.0, LP=0.5)
    assert f["ET"] == pytest.approx(0.4, abs=1e-12) and s["SM"] == pytest.approx(9.6, abs=1e-12)


def test_soil_moisture_floor_is_accounted():
    """ET taking all soil water leaves SM at the 1e-5 mm floor; the water it adds is reported."""
    p = {n: torch.tensor([[DEFAULTS[n]]], dtype=F64) for n in HBV_PARAMETER_NAMES}
    st = tuple(torch.tensor([[v]], dtype=F64) for v in (0.0, 0.0, 0.5, 0.0, 0.0))
    one = torch.ones(1, 1, dtype=F64)
    new, fl = hbv_day(st, 0 * one, 20 * one, 10 * one, p, process={"ET": lambda c: c["SM"] + 1.0})
    fl = dict(zip(FLUXES, fl))
    assert float(fl["ET"]) == 0.5 and float(new[2]) == SM_FLOOR and float(fl["sm_floor"]) == SM_FLOOR


# -- conservation -------------------------------------------------------------------------------------------
def _balance(P, out, nmul_state0=None):
    """P − ET − Q_unrouted − ΔS + floor, summed over the kept days, per basin (mm)."""
    return P.sum(0) - out.ET.sum(0) - out.Q_unrouted.sum(0) - (out.storage[-1] - out.initial_storage) \
        + out.sm_floor.sum(0)  # fmt: skip


@pytest.mark.parametrize("smooth", [None, 2.0])
def test_water_balance_closes_over_three_years(forcing, smooth):
    P, T, PET = forcing["P"], forcing["T"], forcing["PET"]
    out = run_hbv(P, T, PET, random_params(4, 3, seed=0), smooth=smooth)
    total = P.sum(0)
    err = _balance(P, out)
    assert float(err.abs().max()) < 1e-14 * float(total.max()) * 10  # 3.6e-10 mm of 3590 mm (actual ~1e-12)
    assert float(out.ET.sum() + out.Q_unrouted.sum()) > 0.5 * float(total.sum())  # the test is not vacuous
    for name in ("SNOWPACK", "MELTWATER", "SM", "SUZ", "SLZ"):
        assert float(getattr(out, name).min()) >= 0.0


def test_water_balance_with_warmup_and_a_process_network(forcing):
    P, T, PET = forcing["P"][:500], forcing["T"][:500], forcing["PET"][:500]
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(F64)

    def et(ctx):  # a network of (PET, SM/FC, T) replacing HBV's ET
        x = torch.stack(torch.broadcast_tensors(ctx["PET"], ctx["SM"] / ctx["FC"], ctx["T"] / 10), -1)
        return torch.nn.functional.softplus(net(x)[..., 0])

    out = run_hbv(P, T, PET, random_params(4, 2, seed=1), warmup=100, process={"ET": et})
    err = _balance(P[100:], out).detach()
    assert float(err.abs().max()) < 1e-9
    # gradients reach the network's weights through 400 days of HBV
    out.Q.sum().backward()
    g = [w.grad for w in net.parameters()]
    assert all(x is not None and torch.isfinite(x).all() for x in g) and float(g[0].abs().sum()) > 0


def test_routing_conserves_volume_and_unit_hydrograph_sums_to_one(forcing):
    ra = torch.tensor([0.0, 0.5, 1.5, 2.9], dtype=F64)
    rb = torch.tensor([0.0, 6.5, 2.0, 4.0], dtype=F64)
    w = gamma_weights(ra, rb)
    assert w.shape == (4, UH_LENGTH) and (w > 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(4, dtype=F64), rtol=0, atol=1e-15)
    # a = 1 (route_a = 0.9): exponential weights exp(−τ/θ) normalised
    w1 = gamma_weights(torch.tensor(0.9, dtype=F64), torch.tensor(1.5, dtype=F64))
    tau = torch.arange(UH_LENGTH, dtype=F64) + 0.5
    e = torch.exp(-tau / 2.0)
    assert torch.allclose(w1, e / e.sum(), rtol=1e-13, atol=0)
    # general a, θ: proportional to the gamma density (scipy)
    from scipy.stats import gamma

    d = gamma.pdf(tau.numpy(), a=1.6, scale=2.5)
    assert np.allclose(gamma_weights(torch.tensor(1.5), torch.tensor(2.0)).double().numpy(), d / d.sum(),
                       rtol=1e-6)  # fmt: skip
    # volume: what left the outlet + what is still on its way = what entered
    q = forcing["P"]  # any non-negative series
    y, hist = route(q, w)
    n = q.shape[0]
    tail = 1.0 - torch.cumsum(w, -1)[:, : UH_LENGTH - 1]  # fraction of day n-1-j still to come, j = 0..13
    in_flight = (q.flip(0)[: UH_LENGTH - 1].transpose(0, 1) * tail).sum(-1)
    assert torch.allclose(y.sum(0) + in_flight, q.sum(0), rtol=1e-13, atol=0)
    assert torch.equal(hist, q[n - (UH_LENGTH - 1) :].transpose(0, 1))
    # a unit pulse comes out as the unit hydrograph; the daily form gives the same numbers
    pulse = torch.zeros(20, 4, dtype=F64)
    pulse[0] = 1.0
    assert torch.allclose(route(pulse, w)[0][:UH_LENGTH].transpose(0, 1), w, atol=1e-16)
    h = torch.zeros(4, UH_LENGTH - 1, dtype=F64)
    for k in range(20):
        yk, h = route_step(pulse[k], w, h)
        assert torch.allclose(yk, route(pulse, w)[0][k], atol=1e-16)


# -- consistency of the ways to run it ----------------------------------------------------------------------
def test_static_equals_constant_dynamic_and_nmul_copies(forcing):
    P, T, PET = (forcing[k][:400] for k in ("P", "T", "PET"))
    p = random_params(4, 3, seed=2)
    a = run_hbv(P, T, PET, p)
    dyn = {n: (v.expand(400, *v.shape) if n in HBV_PARAMETER_NAMES else v) for n, v in p.items()}
    b = run_hbv(P, T, PET, dyn)
    for n in ("Q", "ET", "SWE", "SM", "SUZ", "SLZ", "recharge"):
        assert torch.equal(getattr(a, n), getattr(b, n)), n
    # nmul identical components = one component
    p1 = random_params(4, 1, seed=3)
    p3 = {n: (v.expand(4, 3) if n in HBV_PARAMETER_NAMES else v) for n, v in p1.items()}
    o1, o3 = run_hbv(P, T, PET, p1), run_hbv(P, T, PET, p3)
    assert torch.allclose(o1.Q, o3.Q, rtol=1e-14, atol=1e-14)
    # numbers and (n_basins,) broadcast over components
    pb = {n: v[:, 0] if n in HBV_PARAMETER_NAMES else v for n, v in p1.items()}
    assert torch.equal(run_hbv(P, T, PET, pb).Q, o1.Q)


def test_warmup_and_continuation_equal_one_run(forcing):
    P, T, PET = (forcing[k][:600] for k in ("P", "T", "PET"))
    p = random_params(4, 2, seed=4)
    full = run_hbv(P, T, PET, p)
    w = run_hbv(P, T, PET, p, warmup=200)
    assert torch.equal(w.Q, full.Q[200:]) and torch.equal(w.SLZ, full.SLZ[200:])
    first = run_hbv(P[:250], T[:250], PET[:250], p)
    second = run_hbv(P[250:], T[250:], PET[250:], p, state=first.state)
    assert torch.allclose(torch.cat([first.Q, second.Q]), full.Q, rtol=1e-13, atol=1e-15)
    assert torch.equal(torch.cat([first.SM, second.SM]), full.SM)


def test_smooth_thresholds_tend_to_the_hard_ones(forcing):
    P, T, PET = (forcing[k][:730] for k in ("P", "T", "PET"))
    p = random_params(4, 1, seed=5)
    hard = run_hbv(P, T, PET, p)
    errs = [float((run_hbv(P, T, PET, p, smooth=s).Q - hard.Q).abs().max()) for s in (1.0, 10.0, 100.0, 1e4)]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-2 * errs[0] and errs[3] < 1e-2
    with pytest.raises(ConfigError, match="sharpness"):
        run_hbv(P, T, PET, p, smooth=0.0)


def test_float32_runs_close_to_float64(forcing):
    P, T, PET = (forcing[k][:365] for k in ("P", "T", "PET"))
    p = random_params(4, 2, seed=6)
    o64 = run_hbv(P, T, PET, p)
    o32 = run_hbv(P.float(), T.float(), PET.float(), {n: v.float() for n, v in p.items()})
    assert o32.Q.dtype == torch.float32
    assert run_hbv(P.float(), T.float(), PET.float(), {**DEFAULTS}).Q.dtype == torch.float32  # numbers
    assert float((o32.Q.double() - o64.Q).abs().max()) < 1e-3 * float(o64.Q.abs().max())


# -- gradients ----------------------------------------------------------------------------------------------
def test_gradients_wrt_parameters_through_two_years_match_finite_differences(forcing):
    P, T, PET = (forcing[k][:730, :2] for k in ("P", "T", "PET"))
    g = torch.Generator().manual_seed(7)
    u0 = 0.1 + 0.8 * torch.rand(2, 2, len(PARAMETER_NAMES), generator=g, dtype=F64)

    def loss(u):
        p = scale_parameters(u[..., :12], HBV_PARAMETER_NAMES)
        p.update(scale_parameters(u[:, 0, 12:], ("route_a", "route_b")))
        o = run_hbv(P, T, PET, p)
        return [o.Q, o.ET, o.SWE]

    rep = check_directional(loss, [u0], n_directions=3, h=1e-6, tol=1e-6, seed=1)
    assert rep.passed, rep


def test_forward_mode_equals_reverse_mode(forcing):
    P, T, PET = (forcing[k][:60, :2] for k in ("P", "T", "PET"))
    g = torch.Generator().manual_seed(8)
    u0 = 0.1 + 0.8 * torch.rand(2, 1, len(PARAMETER_NAMES), generator=g, dtype=F64)

    def f(u):
        p = scale_parameters(u[..., :12], HBV_PARAMETER_NAMES)
        p.update(scale_parameters(u[:, 0, 12:], ("route_a", "route_b")))
        return run_hbv(P, T, PET, p, check=False).Q

    rep = check_jvp_vjp(f, [u0], n_directions=2)
    assert rep.passed, rep


# -- the reference implementation ---------------------------------------------------------------------------
def _fixture_params(z, case: str, nt: int) -> dict[str, torch.Tensor]:
    p = {}
    for n in PARAMETER_NAMES:
        if f"{case}/param/{n}" in z:
            p[n] = torch.as_tensor(z[f"{case}/param/{n}"])
        else:  # dynamic: rebuilt as scripts/make_hbv_fixtures.py builds it (through hydrodl2's sigmoid)
            base, phase = z[f"{case}/param/{n}_base"], z[f"{case}/param/{n}_phase"]
            u = torch.as_tensor(
                base + 0.25 * np.sin(2 * np.pi * np.arange(nt)[:, None, None] / 365.0 + phase)
            )
            p[n] = torch.sigmoid(torch.log(u) - torch.log1p(-u)) * (PARAMETERS[n].hi - PARAMETERS[n].lo) \
                + PARAMETERS[n].lo  # fmt: skip
    return p


@pytest.mark.parametrize("case", ["static", "nmul4_dynamic", "warmup", "wet"])
def test_reproduces_hydrodl2_in_float64(forcing, case):
    """MHPI's hydrodl2 1.4.0 HBV 1.0 in float64 (scripts/make_hbv_fixtures.py): same daily Q and fluxes."""
    z = np.load(FIXTURE)
    P, T, PET = forcing["P"], forcing["T"], forcing["PET"]
    nt, stride, w = P.shape[0], int(z["stride"]), int(z[f"{case}/warmup"])
    p = _fixture_params(z, case, nt)
    if w:  # hydrodl2's warmup_states: the warm-up days run apart, without routing; routing starts empty
        st = dict(run_hbv(P[:w], T[:w], PET[:w], p, route=False).state)
        st["Qhist"] = torch.zeros_like(st["Qhist"])
        out = run_hbv(P[w:], T[w:], PET[w:], p, state=st)
    else:
        out = run_hbv(P, T, PET, p)
    assert out.SM.shape[0] == nt - w
    routed = {"Q", "Q0_routed", "Q2_routed"}
    mine = {n: getattr(out, n) for n in ("Q", "Q_unrouted", "ET", "SNOWPACK", "recharge", "excess", "tosoil",
                                         "perc", "Q0", "Q1", "Q2")}  # fmt: skip
    w_uh = out.uh
    mine["Q0_routed"] = route(out.Q0, w_uh)[0]
    mine["Q2_routed"] = route(out.Q2, w_uh)[0]
    for n, v in mine.items():
        ref = torch.as_tensor(z[f"{case}/out/{n}"])
        scale = max(float(ref.abs().max()), 1.0)
        err = float((v[::stride] - ref).abs().max())
        tol = 1e-14 * scale if n in routed else 0.0  # unrouted: the same operations in the same order
        assert err <= tol, f"{case}: {n} differs from hydrodl2 by {err:.3e} (scale {scale:.3g})"
        sums = torch.as_tensor(z[f"{case}/sum/{n}"])
        assert torch.allclose(v.sum(0), sums, rtol=1e-13, atol=1e-12), n
    if case == "wet":  # the excess and UZL branches are exercised
        assert float(torch.as_tensor(z["wet/out/excess"]).max()) > 1.0 and float(mine["Q0"].max()) > 1.0


# -- parameters, PET, errors --------------------------------------------------------------------------------
def test_parameter_table_and_scaling():
    assert list(PARAMETERS) == ["BETA", "FC", "K0", "K1", "K2", "LP", "PERC", "UZL", "TT", "CFMAX", "CFR",
                                "CWH", "route_a", "route_b"]  # fmt: skip
    assert PARAMETERS["FC"] == (50.0, 1000.0, "mm", PARAMETERS["FC"].long_name)
    assert all(s.lo <= DEFAULTS[n] <= s.hi for n, s in PARAMETERS.items())
    u = torch.tensor([[0.0, 1.0, 0.5] + [0.25] * 11], dtype=F64)
    p = scale_parameters(u)
    assert float(p["BETA"]) == 1.0 and float(p["FC"]) == 1000.0 and float(p["K0"]) == pytest.approx(0.475)
    assert torch.allclose(unscale_parameters(p), u)
    assert float(scale_parameters(torch.zeros(14, dtype=F64), apply_sigmoid=True)["TT"]) == 0.0
    with pytest.raises(ShapeError):
        scale_parameters(torch.zeros(3))


def test_hargreaves_against_fao56():
    # FAO-56 example 8: Ra at 20°S on 3 September (day 246) = 32.2 MJ m-2 d-1
    assert float(extraterrestrial_radiation(-20.0, 246)) == pytest.approx(32.2, abs=0.05)
    # polar night: no radiation; PET 0.0023·0.408·Ra·(Tmean + 17.8)·√(Tmax − Tmin)
    assert float(extraterrestrial_radiation(80.0, 355)) == pytest.approx(0.0, abs=1e-9)
    ra = float(extraterrestrial_radiation(45.0, 180))
    pet = float(hargreaves(torch.tensor(10.0, dtype=F64), torch.tensor(26.0, dtype=F64), 45.0, 180))
    assert pet == pytest.approx(0.0023 * 0.408 * ra * (18 + 17.8) * 4.0, rel=1e-12)
    assert float(hargreaves(torch.tensor(-40.0), torch.tensor(-30.0), 45.0, 10)) == 0.0


def test_bad_inputs_raise_clear_errors():
    P = torch.ones(10, 2, dtype=F64)
    p = {n: torch.tensor(v, dtype=F64) for n, v in DEFAULTS.items()}
    with pytest.raises(ForcingError, match="negative precipitation"):
        run_hbv(-P, P, P, p)
    bad = P.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ForcingError, match="day 3, basin 1"):
        run_hbv(P, bad, P, p)
    with pytest.raises(ConfigError, match="missing parameter"):
        run_hbv(P, P, P, {k: v for k, v in p.items() if k != "FC"})
    with pytest.raises(ConfigError, match="unknown parameter"):
        run_hbv(P, P, P, {**p, "FCC": p["FC"]})
    with pytest.raises(ShapeError, match="dynamic"):
        run_hbv(P, P, P, {**p, "FC": torch.ones(9, 2, 1, dtype=F64) * 100})
    with pytest.raises(ShapeError):
        run_hbv(P, P[:5], P, p)
    with pytest.raises(ConfigError, match="route_a"):
        run_hbv(P, P, P, {k: v for k, v in p.items() if k != "route_a"})
    assert run_hbv(P, P, P, {k: v for k, v in p.items() if k != "route_a"}, route=False).Q.shape == (10, 2)
    with pytest.raises(ConfigError, match="cannot be replaced"):
        run_hbv(P, P, P, p, process={"snowfall": lambda c: c["P"]})
    st = initial_state(2, 1)
    assert set(st) == {*STORES, "Qhist"} and float(st["SM"][0, 0]) == 0.001 and st["Qhist"].shape == (2, 14)
    assert math.isfinite(float(run_hbv(P, P, P, p, state=st).Q.sum()))


# -- the registered kind `hbv` ------------------------------------------------------------------------------
def test_kind_steps_equal_run_hbv_and_observe_by_gauge():
    from pelagos.core.rollout import rollout
    from pelagos.hydro.kind import HBVForcing, HBVModel, load_forcing, observation_time

    f = load_forcing(HBVForcing(start="2000-01-01", end="2000-12-31"))
    model = HBVModel(f, nmul=2)
    p = random_params(4, 2, seed=9)
    for n, v in p.items():
        model.set_parameter_value(n, v)
    n = 366
    traj = rollout(model, model.initial_state(1), n, save_every=1, include_initial=False)
    ref = run_hbv(f.P, f.T, f.PET, p)
    states = _unstack(traj.states, n)
    out = {k: torch.stack([model.output(s, 0.0)[k][0] for s in states]) for k in ("Q", "ET", "SWE", "SLZ")}
    # the kind stores parameters as logits of their bounds: values equal to round-off, not bit for bit
    for k in out:
        assert torch.allclose(out[k], getattr(ref, k), rtol=1e-11, atol=1e-13), k
    # observation operator: exact basins by gauge id or number
    H = model.observation_operator("Q", {"basin": ["03015500", 1022500]})
    final = traj.final
    assert torch.equal(H(final), final["Q"][:, [3, 0]])
    with pytest.raises(Exception, match="unknown basin"):
        model.observation_operator("Q", {"basin": ["01234567"]})
    assert observation_time(model, "2000-01-01") == 86400.0
    assert model.epoch.isoformat() == "2000-01-01T00:00:00"


def _unstack(states, n):
    return [{k: v[i] for k, v in states.items()} for i in range(n)]


def test_kind_parameters_per_basin_and_per_member():
    from pelagos.hydro.kind import HBVForcing, HBVModel, load_forcing

    f = load_forcing(HBVForcing(start="2000-01-01", end="2000-02-29"))
    m = HBVModel(f, basin_values={"01547700": {"FC": 400.0}, "03015500": {"route_b": 5.0}})
    m.set_parameter_value("FC", 120.0)  # every basin but 01547700
    fc = torch.tensor([[120.0], [400.0], [120.0], [120.0]], dtype=F64)
    assert torch.allclose(m.get_parameter_value("FC"), fc, rtol=1e-14)
    assert torch.allclose(m.get_parameter_value("route_b"), torch.tensor([2.0, 2.0, 2.0, 5.0], dtype=F64))
    with pytest.raises(ShapeError, match="per basin"):
        m.set_parameter_value("K1", torch.ones(3, dtype=F64) * 0.1)
    # a member batch of values inside `using` (the ensemble methods)
    s = m.initial_state(3, store=30.0)
    m.select_free(["K1"])
    u = m.free_vector()
    with m.using({"K1": u + torch.tensor([-1.0, 0.0, 1.0], dtype=F64)}):
        out = m.step(m.step(s, 0.0), 86400.0)
    alone = m.step(m.step(m.initial_state(1, store=30.0), 0.0), 86400.0)
    assert torch.allclose(out["SUZ"][1], alone["SUZ"][0], rtol=1e-15)
    assert not torch.allclose(out["SUZ"][0], out["SUZ"][2])


def test_pelagos_run_writes_cf_netcdf_of_the_example(tmp_path):
    import xarray as xr

    from pelagos.io.run import run_config

    cfg = Path(__file__).parents[1] / "examples" / "hbv_run.yaml"
    out = tmp_path / "hbv.nc"
    path = run_config(cfg, progress=False, overrides=["forcing.end=2000-03-31", f"output.file={out}"],
                      resume=False)  # fmt: skip
    ds = xr.load_dataset(path)
    assert set(ds.data_vars) >= {"Q", "Q_unrouted", "ET", "SWE", "SM", "SUZ", "SLZ"}
    assert ds["Q"].dims == ("time", "basin") and ds["Q"].shape == (92, 4)
    assert ds["Q"].attrs["units"] == "mm d-1"
    assert [int(b) for b in ds["basin"].values] == [1022500, 1547700, 2064000, 3015500]
    assert str(ds["time"].values[1])[:10] == "2000-01-02"
    # the same numbers as run_hbv with the configuration's values (01022500: FC 350, CFMAX 3.5)
    f = stack_basins(load_basins(SAMPLE, SAMPLE_BASINS, "2000-01-01", "2000-03-31"))
    p = {n: torch.tensor(v, dtype=F64) for n, v in DEFAULTS.items()}
    p["FC"] = torch.tensor([[350.0], [250.0], [250.0], [250.0]], dtype=F64)
    p["CFMAX"] = torch.tensor([[3.5], [3.0], [3.0], [3.0]], dtype=F64)
    ref = run_hbv(f["P"], f["T"], f["PET"], p)
    assert np.allclose(ds["Q"].values[1:], ref.Q.numpy(), rtol=1e-12, atol=1e-14)
    assert np.allclose(ds["ET"].values[1:], ref.ET.numpy(), rtol=1e-12, atol=1e-14)
