"""Run Veros ``acc_basic`` (jax backend on the CPU, whole-step jit) and write small reference fixtures.

Run in the side environment made by ``scripts/side_env_veros.sh`` (never imported by pelagos)::

    .side/veros/bin/python scripts/veros_reference.py            # 2 years, 3 runs, fixtures + timing
    .side/veros/bin/python scripts/veros_reference.py --years 0.05 --out /tmp/x   # quick smoke run
    .side/veros/bin/python scripts/veros_reference.py --bench 200 --json out.json # step time only

Written fixtures (``tests/data/ocean/``, all arrays in pelagos's ocean layout ``(nz, ny, nx)`` with level 0
the surface layer, Veros's two halo cells removed, float64):

- ``veros_acc_grid.npz``: ``dxt`` (nx, m at the equator, Veros multiplies by ``cost``), ``dyt`` (ny, m),
  ``dzt`` (nz, m, surface first), ``dzw`` (nz, m: centre distances, surface first, ``dzw[0]`` Veros's value
  at the surface W point), ``zt, zw`` (nz, m), ``xt, yt, xu, yu`` (degrees), ``cost, cosu`` (ny), ``kbot``
  (ny, nx, Veros convention), ``coriolis_t`` (ny, nx, 1/s), masks ``maskT, maskU, maskV, maskW`` (nz, ny, nx),
  ``surface_taux`` (ny, nx, N/m²), ``t_star`` (ny), ``t_rest`` (ny, nx, m/s), ``forc_tke_surface`` (ny, nx).
- ``veros_acc_runs.npz``: for the runs ``base``, ``rbot2`` (r_bot × 2), ``ah05`` (A_h × 0.5) and ``both``
  (r_bot × 2 with A_h × 0.5; runs not named in ``--runs`` are kept from the existing file): time (days)
  and ACC transport (Sv) every ``--record-every`` steps, and the barotropic streamfunction ``psi`` (Sv) and
  the transport at every year end.
- ``veros_acc_routines.npz``: single-routine inputs and outputs on the spun-up ``base`` state (after the last
  year): equation of state (type 3), TKE diffusivities + TKE integration for one step, isoneutral diffusion
  and GM skew diffusion of temperature for one tracer step.
- ``veros_acc_short.npz`` (``--short 4``): the ``base`` fields after a few steps from rest (the test of
  the TKE in the step).
- ``veros_acc_meta.json``: settings used, Veros/jax versions, step times.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("VEROS_BACKEND", "jax")
os.environ.setdefault("VEROS_LINEAR_SOLVER", "scipy_jax")
os.environ.setdefault("VEROS_DISKLESS_MODE", "1")
os.environ.setdefault("VEROS_LOGLEVEL", "warning")
os.environ.setdefault("VEROS_FLOAT_TYPE", "float64")
os.environ.setdefault(
    "VEROS_USE_SPECIAL_TDMA", "0"
)  # plain jax TDMA (the Cython custom call is deprecated in XLA)

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import veros  # noqa: E402
from veros import veros_routine  # noqa: E402
from veros.core import numerics  # noqa: E402
from veros.setups.acc_basic import ACCBasicSetup  # noqa: E402

# whole-step jit: the divergence check converts a traced boolean to Python; skip it (the run is checked below)
numerics.sanity_check = lambda state: True

YEAR = 365 * 86400.0
ROOT = Path(__file__).resolve().parents[1]


def make_setup(a_h_factor: float = 1.0, r_bot_factor: float = 1.0):
    class _Setup(ACCBasicSetup):
        @veros_routine
        def set_parameter(self, state):
            super().set_parameter(state)
            s = state.settings
            s.A_h = s.A_h * a_h_factor
            s.r_bot = s.r_bot * r_bot_factor

        @veros_routine
        def set_diagnostics(self, state):
            state.diagnostics.clear()

    sim = _Setup(override=dict(runlen=1e12))
    sim.setup()
    return sim


def jitted_step(sim):
    state = sim.state

    def pure(variables):
        state._variables = variables
        sim.step(state)
        return state.variables

    return jax.jit(pure)


def interior(a):
    """Veros (x, y[, z]) array with halos -> pelagos layout (nz, ny, nx) / (ny, nx), level 0 at the
    surface."""
    a = np.asarray(a)
    if a.ndim == 1:
        return a[2:-2]
    a = a[2:-2, 2:-2]
    if a.ndim == 2:
        return a.T.copy()
    return np.flip(np.transpose(a, (2, 1, 0)), 0).copy()


def zflip(a):
    return np.asarray(a)[::-1].copy()


def acc_transport(vs) -> float:
    """Eastward volume transport through the channel (Sv): Σ_y,z u·dyt·dzt over a meridional section, averaged
    over all longitudes (every full meridional section carries the same transport under the rigid lid)."""
    u = np.asarray(vs.u[2:-2, 2:-2, :, vs.tau]) * np.asarray(vs.maskU[2:-2, 2:-2, :])
    dy = np.asarray(vs.dyt[2:-2])
    dz = np.asarray(vs.dzt)
    per_x = np.einsum("xyz,y,z->x", u, dy, dz)
    return float(per_x.mean() / 1e6)


def run(sim, years: float, record_every: int, label: str):
    step = jitted_step(sim)
    state = sim.state
    s = state.settings
    n_steps = round(years * YEAR / s.dt_tracer)
    steps_per_year = round(YEAR / s.dt_tracer)
    t_days, tr = [0.0], [acc_transport(state.variables)]
    psi_years, tr_years = [], []
    t0 = time.perf_counter()
    t_compile = None
    for n in range(1, n_steps + 1):
        state._variables = step(state.variables)
        if n == 1:
            jax.block_until_ready(state.variables.u)
            t_compile = time.perf_counter() - t0
            t1 = time.perf_counter()
        if n % record_every == 0 or n % steps_per_year == 0:
            vs = state.variables
            if not np.isfinite(np.asarray(vs.u)).all():
                raise RuntimeError(f"{label}: Veros diverged at step {n}")
            if n % record_every == 0:
                t_days.append(float(vs.time) / 86400.0)
                tr.append(acc_transport(vs))
            if n % steps_per_year == 0:
                psi_years.append(interior(vs.psi[:, :, vs.tau]) / 1e6)
                tr_years.append(acc_transport(vs))
                print(
                    f"  {label}: year {n // steps_per_year}: ACC transport {tr_years[-1]:.2f} Sv", flush=True
                )
    jax.block_until_ready(state.variables.u)
    per_step = (time.perf_counter() - t1) / max(n_steps - 1, 1)
    print(
        f"  {label}: {n_steps} steps, compile+first {t_compile:.1f} s, {1e3 * per_step:.1f} ms/step",
        flush=True,
    )
    return dict(
        time_days=np.array(t_days),
        transport=np.array(tr),
        psi_year_end=np.array(psi_years),
        transport_year_end=np.array(tr_years),
        ms_per_step=1e3 * per_step,
        compile_s=t_compile,
    )


def grid_fixture(sim) -> dict:
    vs, s = sim.state.variables, sim.state.settings
    dzw = np.asarray(vs.dzw)
    return dict(
        dxt=np.asarray(vs.dxt[2:-2]),
        dyt=np.asarray(vs.dyt[2:-2]),
        dxu=np.asarray(vs.dxu[2:-2]),
        dyu=np.asarray(vs.dyu[2:-2]),
        dzt=zflip(vs.dzt),
        dzw=zflip(dzw),
        zt=zflip(vs.zt),
        zw=zflip(vs.zw),
        xt=interior(vs.xt),
        yt=interior(vs.yt),
        xu=interior(vs.xu),
        yu=interior(vs.yu),
        cost=interior(vs.cost),
        cosu=interior(vs.cosu),
        kbot=interior(vs.kbot).astype(np.int64),
        coriolis_t=interior(vs.coriolis_t),
        maskT=interior(vs.maskT),
        maskU=interior(vs.maskU),
        maskV=interior(vs.maskV),
        maskW=interior(vs.maskW),
        surface_taux=interior(vs.surface_taux),
        t_star=interior(vs.t_star),
        t_rest=interior(vs.t_rest),
        forc_tke_surface=interior(vs.forc_tke_surface),
        A_h=np.float64(s.A_h),
        r_bot=np.float64(s.r_bot),
        K_gm_0=np.float64(s.K_gm_0),
        K_iso_0=np.float64(s.K_iso_0),
        K_iso_steep=np.float64(s.K_iso_steep),
        iso_slopec=np.float64(s.iso_slopec),
        iso_dslope=np.float64(s.iso_dslope),
        dt_mom=np.float64(s.dt_mom),
        dt_tracer=np.float64(s.dt_tracer),
        AB_eps=np.float64(s.AB_eps),
    )


N_SAMPLE = 1500  # output points kept per routine array (random, fixed seed): keeps the fixture small


def routine_fixture(sim) -> dict:
    """Inputs/outputs of single Veros routines on the current (spun-up) state; the state is changed.

    Inputs are rounded to float32 first (then stored exactly as float32); Veros computes in float64 from those
    rounded values, and the float64 outputs are stored at ``N_SAMPLE`` random ocean-layout points
    ``(sample_k, sample_j, sample_i)``.
    """
    state = sim.state
    vs = state.variables
    with vs.unlock():
        return _routine_fixture(sim, state, vs, state.settings)


def _routine_fixture(sim, state, vs, s) -> dict:
    import jax.numpy as jnp
    from veros.core import density, eke, isoneutral, thermodynamics, tke

    tau, taup1 = int(vs.tau), int(vs.taup1)
    f32 = lambda a: jnp.asarray(np.asarray(a, dtype=np.float32).astype(np.float64))  # noqa: E731
    # inputs: temperature, TKE, TKE forcing; salinity: acc_basic has no salt forcing (S = 35 to ~1e-12):
    # set to 35
    vs.temp = vs.temp.at[..., tau].set(f32(vs.temp[..., tau]) * vs.maskT)
    vs.salt = vs.salt.at[..., tau].set(35.0 * vs.maskT)
    vs.tke = vs.tke.at[..., tau].set(f32(vs.tke[..., tau]))
    forc = (
        vs.K_diss_v - vs.P_diss_v - vs.P_diss_adv - vs.P_diss_nonlin + vs.K_diss_gm + vs.K_diss_h
        - vs.P_diss_skew + vs.K_diss_bot
    )  # fmt: skip
    forc = f32(forc)
    inp = dict(in_temp=interior(vs.temp[..., tau]), in_tke=interior(vs.tke[..., tau]), in_forc=interior(forc))
    res = {}

    # --- equation of state (type 3)
    temp, salt = vs.temp[..., tau], vs.salt[..., tau]
    z = jnp.abs(vs.zt)
    res["eos_rho"] = density.get_rho(state, salt, temp, z) * vs.maskT
    res["eos_drhodT"] = density.get_drhodT(state, salt, temp, z) * vs.maskT
    res["eos_Hd"] = density.get_dyn_enthalpy(state, salt, temp, z) * vs.maskT
    res["eos_int_drhodT"] = density.get_int_drhodT(state, salt, temp, z)
    eos_out = thermodynamics.calc_eq_of_state(state, tau)
    vs.update(eos_out)
    res["eos_Nsqr"] = vs.Nsqr[..., tau]

    # --- TKE diffusivities (from tke and Nsqr at tau), then one TKE step with the given forcing
    eke.set_eke_diffusivities(state)
    tke.set_tke_diffusivities(state)
    for name in ("mxl", "kappaM", "kappaH"):
        res[f"tke_{name}"] = getattr(vs, name)
    vs.K_diss_v = forc
    for name in (
        "P_diss_v",
        "P_diss_adv",
        "P_diss_nonlin",
        "K_diss_gm",
        "K_diss_h",
        "P_diss_skew",
        "K_diss_bot",
    ):
        setattr(vs, name, 0 * getattr(vs, name))
    tke.integrate_tke(state)
    res["tke_new"] = vs.tke[..., taup1]
    res["tke_diss"] = vs.tke_diss
    surf_corr = interior(vs.tke_surf_corr)

    # --- isoneutral (Redi) diffusion and GM skew diffusion of temperature for one tracer step (taup1 = tau)
    vs.update(isoneutral.isoneutral_diffusion_pre(state))
    for name in ("K_11", "K_22", "K_33"):
        res[f"iso_{name}"] = getattr(vs, name)
    for key in ("iso", "skew"):
        vs.temp = vs.temp.at[..., taup1].set(vs.temp[..., tau])
        vs.dtemp_iso = 0 * vs.dtemp_iso
        vs.P_diss_iso = 0 * vs.P_diss_iso
        vs.P_diss_skew = 0 * vs.P_diss_skew
        if key == "iso":
            isoneutral.isoneutral_diffusion(state, tr=vs.temp, istemp=True)
            res["iso_P_diss"] = vs.P_diss_iso
        else:
            isoneutral.isoneutral_skew_diffusion(state, tr=vs.temp, istemp=True)
            res["skew_P_diss"] = vs.P_diss_skew
        res[f"{key}_dtemp"] = vs.dtemp_iso

    rng = np.random.default_rng(11)
    shape = inp["in_temp"].shape
    flat = rng.choice(int(np.prod(shape)), size=N_SAMPLE, replace=False)
    k, j, i = np.unravel_index(np.sort(flat), shape)
    out = {name: v.astype(np.float32) for name, v in inp.items()}
    out.update(sample_k=k.astype(np.int16), sample_j=j.astype(np.int16), sample_i=i.astype(np.int16))
    for name, v in res.items():
        out[name] = interior(v)[k, j, i]
    out["tke_surf_corr"] = surf_corr
    return out


def short_fixture(steps: list[int]) -> dict:
    """``base`` from rest: ``u, v, temp, tke`` after each of ``steps`` tracer steps and the ``kappaM,
    kappaH`` (W points) used during that step, float32, pelagos layout; ``psi`` (Sv)."""
    sim = make_setup()
    step = jitted_step(sim)
    st = sim.state
    out = {"steps": np.array(steps)}
    for n in range(1, max(steps) + 1):
        st._variables = step(st.variables)
        if n in steps:
            vs = st.variables
            for name in ("u", "v", "temp", "tke"):
                out[f"{name}_{n}"] = interior(getattr(vs, name)[..., vs.tau]).astype(np.float32)
            for name in ("kappaM", "kappaH"):
                out[f"{name}_{n}"] = interior(getattr(vs, name)).astype(np.float32)
            out[f"psi_{n}"] = (interior(vs.psi[:, :, vs.tau]) / 1e6).astype(np.float32)
            out[f"transport_{n}"] = np.array(acc_transport(vs))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--years", type=float, default=2.0)
    p.add_argument("--record-every", type=int, default=10, help="tracer steps between transport records")
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "ocean")
    p.add_argument("--runs", default="base,rbot2,ah05")
    p.add_argument("--bench", type=int, default=0, help="only time N jitted steps (after 1 compile step)")
    p.add_argument("--json", type=Path, default=None, help="with --bench: write the timing here")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="with --bench: timer")
    short_help = "only write veros_acc_short.npz: base fields after these steps from rest, e.g. 4,40"
    p.add_argument("--short", default="", help=short_help)
    a = p.parse_args()

    if a.short:
        a.out.mkdir(parents=True, exist_ok=True)
        fields = short_fixture([int(n) for n in a.short.split(",")])
        np.savez_compressed(a.out / "veros_acc_short.npz", **fields)
        return

    if a.bench:
        clock = time.process_time if a.clock == "cpu" else time.perf_counter
        sim = make_setup()
        step = jitted_step(sim)
        st = sim.state
        t0 = time.perf_counter()
        st._variables = step(st.variables)
        jax.block_until_ready(st.variables.u)
        compile_s = time.perf_counter() - t0
        for _ in range(9):  # 10 warm-up steps from rest, as the pelagos side
            st._variables = step(st.variables)
        jax.block_until_ready(st.variables.u)
        t0 = clock()
        for _ in range(a.bench):
            st._variables = step(st.variables)
        jax.block_until_ready(st.variables.u)
        ms = 1e3 * (clock() - t0) / a.bench
        res = dict(veros=veros.__version__, jax=jax.__version__, steps=a.bench, ms_per_step=ms,
                   compile_s=compile_s, clock=a.clock)  # fmt: skip
        print(json.dumps(res))
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
        return

    a.out.mkdir(parents=True, exist_ok=True)
    factors = {"base": (1.0, 1.0), "rbot2": (1.0, 2.0), "ah05": (0.5, 1.0), "both": (0.5, 2.0)}
    runs, meta = {}, dict(veros=veros.__version__, jax=jax.__version__, years=a.years, runs={})
    # runs not redone this time are kept from the existing fixture (same years only)
    old_runs, old_meta = a.out / "veros_acc_runs.npz", a.out / "veros_acc_meta.json"
    if old_runs.exists() and old_meta.exists():
        prev = json.loads(old_meta.read_text())
        if prev.get("years") == a.years:
            meta["runs"] = {k: v for k, v in prev["runs"].items() if k not in a.runs.split(",")}
            runs = {k: v for k, v in np.load(old_runs).items() if k.split("_")[0] in meta["runs"]}
    base_sim = None
    for label in a.runs.split(","):
        fa, fr = factors[label]
        sim = make_setup(a_h_factor=fa, r_bot_factor=fr)
        if label == "base":
            np.savez_compressed(a.out / "veros_acc_grid.npz", **grid_fixture(sim))
        r = run(sim, a.years, a.record_every, label)
        meta["runs"][label] = dict(
            A_h=float(sim.state.settings.A_h),
            r_bot=float(sim.state.settings.r_bot),
            ms_per_step=r.pop("ms_per_step"),
            compile_s=r.pop("compile_s"),
            transport_year_end=[float(x) for x in r["transport_year_end"]],
        )
        for k, v in r.items():
            runs[f"{label}_{k}"] = v.astype(np.float32) if k == "psi_year_end" else v
        if label == "base":
            base_sim = sim
    np.savez_compressed(a.out / "veros_acc_runs.npz", **runs)
    if base_sim is not None:
        np.savez_compressed(a.out / "veros_acc_routines.npz", **routine_fixture(base_sim))
    (a.out / "veros_acc_meta.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
