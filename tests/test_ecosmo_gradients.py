"""ECOSMO smooth switches: convergence to FABM's hard switches, and gradients (FD, jvp vs vjp) in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pelagos.bgc.base import mean_key
from pelagos.bgc.ecosmo import ECOSMO

PAR = "downwelling_photosynthetic_radiative_flux"
SPAR = "surface_downwelling_photosynthetic_radiative_flux"
F64 = torch.float64
INTERIOR = ("no3", "nh4", "pho", "sil", "oxy", "fla", "dia", "bg", "bgchl", "diachl", "flachl")
INTERIOR += ("microzoo", "mesozoo", "det", "opa", "dom")


def case(rng, near_switches: bool, B: int = 2, nz: int = 12):
    """Random positive state; either away from every switch or a few per cent of a width next to them."""
    shape = (B, nz)

    def u(lo, hi, sh=shape):
        return torch.as_tensor(rng.uniform(lo, hi, sh))

    def away(thr, lo, hi, gap):
        """values in [lo, hi] at least `gap` from `thr`."""
        v = u(lo, hi)
        return torch.where((v - thr).abs() < gap, v + 2 * gap * torch.sign(v - thr + 1e-30), v)

    def logu(lo, hi):
        return torch.exp(u(np.log(lo), np.log(hi)))

    s = {
        "no3": u(5, 800),
        "nh4": u(0.5, 60),
        "pho": u(5, 800),
        "sil": away(80.0, 5, 400, 5.0),
        "oxy": u(5, 350),
        "fla": away(0.1, 1e-3, 20, 0.03),
        "dia": away(0.1, 1e-3, 20, 0.03),
        "bg": away(0.1, 1e-3, 20, 0.03),
        "microzoo": away(0.01, 1e-3, 5, 0.003),
        "mesozoo": away(0.01, 1e-3, 5, 0.003),
        "det": u(0.1, 100),
        "dom": u(0.1, 50),
        "opa": u(0.1, 100),
    }
    for k in ("fla", "dia", "bg", "microzoo", "mesozoo"):
        s[k] = s[k].abs() + 1e-3
    for c in ("fla", "dia", "bg"):
        s[c + "chl"] = s[c] * u(1 / 400, 1 / 15)
    s["oxy"][:, :3] = -u(5, 50, (B, 3))  # O2 debt (anoxic) cells, with and without nitrate
    s["no3"][:, 1] = -5.0
    env = {
        "temperature": u(-1.5, 26),
        "practical_salinity": away(10.0, 0, 20, 0.5),
        PAR: u(1, 250),
        mean_key(PAR, 86400): away(35.0, 0, 80, 2.0),
        SPAR: u(50, 300, (B,)),
        mean_key(SPAR, 86400): torch.as_tensor(np.resize([150.0, 90.0], B)),
        "bottom_stress": torch.as_tensor(np.resize([0.002, 0.02], B)),
    }
    sed = {"sed1": u(1, 400, (B,)), "sed2": u(1, 300, (B,)), "sed3": u(1, 200, (B,))}
    if near_switches:  # within a fraction of a smooth width (sharpness 20) of each threshold
        s["fla"][:, 3] = 0.1 + 1e-4
        s["dia"][:, 4] = 0.1 - 1e-4
        s["bg"][:, 5] = 0.1
        s["microzoo"][:, 6] = 0.01 + 1e-5
        s["mesozoo"][:, 7] = 0.01
        s["sil"][:, 8] = 80.01
        s["oxy"][:, 9] = 0.01
        s["oxy"][:, 0] = 0.0  # bottom cell: oxic/anoxic sediment switch
        s["no3"][:, 9] = 0.02
        env["practical_salinity"][:, 10] = 10.0 + 1e-3
        env[mean_key(PAR, 86400)][:, 11] = 35.0 - 1e-3
        env[mean_key(SPAR, 86400)][0] = 120.0 + 1e-3
        env["bottom_stress"][1] = 0.007 + 1e-6
    return s, sed, env


def yaml_like(m: ECOSMO) -> ECOSMO:
    """The test-case values that matter here (nonzero detritus preferences, N fixation threshold 35)."""
    for k, v in {
        "prefZsD": 0.08,
        "prefZlD": 0.08,
        "nfixation_minimum_daily_par": 35.0,
        "burialRt": 0.001,
    }.items():
        m.set_parameter_value(k, v)
    m.set_parameter_value("surface_deposition_no3", 0.048)
    return m


def all_outputs(m: ECOSMO, s, sed, env, raw) -> dict[str, torch.Tensor]:
    """Every output of the model: interior rates, bottom and surface fluxes, velocities, light extinction."""
    with m.using(raw):
        out = {}
        rates, diags = m.do(s, env)
        out.update({f"do.{k}": v for k, v in rates.items()})
        out.update({f"diag.{k}": v for k, v in diags.items()})
        sb = {k: v[..., 0] for k, v in s.items()} | sed
        eb = {"temperature": env["temperature"][..., 0], "bottom_stress": env["bottom_stress"]}
        bot, _ = m.do_bottom(sb, eb)
        out.update({f"bottom.{k}": v for k, v in bot.items()})
        st = {k: v[..., -1] for k, v in s.items()}
        et = {
            "temperature": env["temperature"][..., -1],
            "practical_salinity": env["practical_salinity"][..., -1],
        }
        surf, _ = m.do_surface(st, et)
        out.update({f"surface.{k}": v for k, v in surf.items()})
        out.update({f"w.{k}": v for k, v in m.vertical_movement(s, env).items()})
        out["kext"] = m.light_extinction(s, env)
    return out


def raw_params(m: ECOSMO) -> dict[str, torch.Tensor]:
    return {n: m.params.raw[n].detach().clone() for n in m.params.specs}


def max_block_rel_err(a: dict, b: dict) -> float:
    errs = []
    for k in a:
        scale = float(b[k].abs().max())
        if scale > 0:
            errs.append(float((a[k] - b[k]).abs().max()) / scale)
    return max(errs)


@pytest.mark.parametrize("couple_co2", [False, True])
def test_smooth_converges_to_hard_away_from_switches(couple_co2):
    rng = np.random.default_rng(10)
    s, sed, env = case(rng, near_switches=False)
    opts = dict(
        couple_co2=couple_co2, use_chl_in_PI_curve=not couple_co2, turn_on_additional_diagnostics=True
    )
    hard = yaml_like(ECOSMO(**opts).double())
    ref = all_outputs(hard, s, sed, env, {})
    errs = []
    for sharp in (1e2, 1e4, 1e6):
        smooth = yaml_like(ECOSMO(smooth=True, sharpness=sharp, **opts).double())
        got = all_outputs(smooth, s, sed, env, {})
        assert set(got) == set(ref)
        errs.append(max_block_rel_err(got, ref))
    assert errs[0] > errs[2] and errs[1] >= errs[2]
    assert errs[2] < 1e-5, errs
    # and the switches are genuinely active in this state (smooth at low sharpness differs visibly)
    blunt = yaml_like(ECOSMO(smooth=True, sharpness=2.0, **opts).double())
    assert max_block_rel_err(all_outputs(blunt, s, sed, env, {}), ref) > 1e-3


def _fd_check(m: ECOSMO, s, sed, env, seed: int, eps: float = 1e-5):
    """Central FD along a random direction of (state, sediment, parameters, env) vs jvp; jvp vs vjp."""
    gen = torch.Generator().manual_seed(seed)
    raw = raw_params(m)

    def direction(d, floor):
        return {
            k: torch.randn(v.shape, generator=gen, dtype=F64) * v.abs().clamp(min=floor) for k, v in d.items()
        }

    primals = (s, sed, raw, env)
    tangents = (direction(s, 1e-2), direction(sed, 1.0), direction(raw, 1e-2), direction(env, 1e-3))

    def f(s_, sed_, raw_, env_):
        return all_outputs(m, s_, sed_, env_, raw_)

    def shifted(step):
        return [{k: p[k] + step * t[k] for k in p} for p, t in zip(primals, tangents)]

    def central(h):
        fp, fm = f(*shifted(h)), f(*shifted(-h))
        return {k: (fp[k] - fm[k]) / (2 * h) for k in fp}

    # Richardson-extrapolated central differences (4th order): near a smooth switch the curvature is large
    d1, d2 = central(eps), central(eps / 2)
    fd = {k: (4 * d2[k] - d1[k]) / 3 for k in d1}
    out, jv = torch.func.jvp(f, primals, tangents)
    for k, v in out.items():
        assert torch.isfinite(v).all() and torch.isfinite(jv[k]).all(), k
    err = max_block_rel_err(fd, jv)
    assert err < 1e-6, err
    # reverse mode: <u, J v> = <J^T u, v>
    u = {k: torch.randn(v.shape, generator=gen, dtype=F64) / (v.abs().max() + 1e-30) for k, v in out.items()}
    _, vjp_fn = torch.func.vjp(f, *primals)
    cot = vjp_fn(u)
    lhs = sum((u[k] * jv[k]).sum() for k in u)
    rhs = sum((c[k] * t[k]).sum() for c, t in zip(cot, tangents) for k in t)
    assert float(abs(lhs - rhs)) <= 1e-10 * float(abs(lhs)) + 1e-300


@pytest.mark.parametrize("near", [False, True])
def test_smooth_gradients_fd_and_jvp_vjp(near):
    rng = np.random.default_rng(11)
    s, sed, env = case(rng, near_switches=near)
    m = yaml_like(
        ECOSMO(smooth=True, sharpness=20.0, couple_co2=True, turn_on_additional_diagnostics=True)
    ).double()
    _fd_check(m, s, sed, env, seed=1)
    pi = yaml_like(ECOSMO(smooth=True, sharpness=20.0, use_chl_in_PI_curve=True)).double()
    _fd_check(pi, s, sed, env, seed=2)


def test_hard_gradients_fd_away_from_switches():
    rng = np.random.default_rng(12)
    s, sed, env = case(rng, near_switches=False)
    m = yaml_like(ECOSMO(couple_co2=True, turn_on_additional_diagnostics=True)).double()
    _fd_check(m, s, sed, env, seed=3)


@pytest.mark.parametrize("smooth", [False, True])
def test_gradients_finite_at_night_and_at_zero_oxygen(smooth):
    rng = np.random.default_rng(13)
    s, sed, env = case(rng, near_switches=True)
    env[PAR] = torch.zeros_like(env[PAR])  # night: FABM's Chl:C ratio is 1/0 here (clipped to its maximum)
    s["oxy"][:, :4] = 0.0
    s["no3"][:, :2] = 0.0
    m = yaml_like(ECOSMO(smooth=smooth, sharpness=20.0, use_cyanos=True, couple_co2=True)).double()
    raw = raw_params(m)
    leaves = [*s.values(), *sed.values(), *raw.values(), *env.values()]
    for t in leaves:
        t.requires_grad_(True)
    out = all_outputs(m, s, sed, env, raw)
    total = sum((v / (v.detach().abs().max() + 1e-30)).sum() for v in out.values())
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_batched_parameters_and_vmap_match_member_by_member():
    """One parameter value per column (``using`` with (B,) values) and torch.func.vmap give the same rates
    as separate runs — the ensemble/calibration use."""
    rng = np.random.default_rng(14)
    s, sed, env = case(rng, near_switches=True, B=3)
    m = yaml_like(ECOSMO(smooth=True, sharpness=20.0, use_chl_in_PI_curve=True)).double()
    mu = torch.tensor([0.8, 1.15, 1.6], dtype=F64)
    batched = all_outputs(m, s, sed, env, {"muPl": mu, "sinkDet": torch.tensor([1.0, 5.0, 9.0], dtype=F64)})
    for b in range(3):
        sb = {k: v[b : b + 1] for k, v in s.items()}
        sedb = {k: v[b : b + 1] for k, v in sed.items()}
        envb = {k: v[b : b + 1] for k, v in env.items()}
        one = all_outputs(m, sb, sedb, envb, {"muPl": mu[b], "sinkDet": torch.tensor(1.0 + 4 * b, dtype=F64)})
        for k, v in one.items():
            torch.testing.assert_close(
                batched[k][b : b + 1], v.expand_as(batched[k][b : b + 1]), rtol=1e-13, atol=0
            )

    def per_column(s_, sed_, env_):
        add = lambda d: {k: v.unsqueeze(0) for k, v in d.items()}  # noqa: E731
        return {k: v.squeeze(0) for k, v in all_outputs(m, add(s_), add(sed_), add(env_), {}).items()}

    mapped = torch.func.vmap(per_column)(s, sed, env)
    plain = all_outputs(m, s, sed, env, {})
    for k, v in plain.items():
        torch.testing.assert_close(mapped[k], v.expand_as(mapped[k]), rtol=1e-13, atol=0)
