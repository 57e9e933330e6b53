"""The fast ocean step gives the numbers of the reference path.

The speed work (stacked isoneutral triads, cached grid factors, sigmoid form of the taper, implicit mixing
with precomputed factors) must not change results: the model is run with the frozen pre-speed-up routines of
``tests/_ocean_reference.py`` patched in and compared with the fast path, state by state (float64, ≤ 1e-12
relative to each field's size) and gradient by gradient; the isoneutral routines are also compared one by
one on cases the model does not use (non-uniform and per-member diffusivities, no salinity, closed grid,
the energy-transfer outputs).
"""

from __future__ import annotations

import pytest
import torch

import _ocean_reference as ref
import pelagos.ocean.model as model_module
from pelagos.ocean import Grid, acc_model
from pelagos.ocean import isoneutral as iso
from pelagos.ocean import momentum as M
from pelagos.ocean import tracers as T
from pelagos.ocean.eos import int_drho_dtemp
from pelagos.ocean.grid import acc_dz

F64 = torch.float64
TOL = 1e-12


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# (module, attribute, reference routine): everything the speed work replaced, as the model looks it up
REFERENCE_SLOTS = [
    (model_module, "isoneutral_tensor", ref.isoneutral_tensor),
    (model_module, "isoneutral_diffusion", ref.isoneutral_diffusion_any),
    (model_module, "dissipation_on_w", ref.dissipation_on_w),
    (T, "implicit_vertical", ref.implicit_vertical),
    (T, "advection", ref.tracer_advection),
    (M, "transports", ref.transports),
    (M, "coriolis_metric", ref.coriolis_metric),
    (M, "advection", ref.momentum_advection),
    (M, "harmonic_friction", ref.harmonic_friction),
]


def _reference_path(monkeypatch) -> None:
    for mod, name, fn in REFERENCE_SLOTS:
        monkeypatch.setattr(mod, name, fn)


def _model():
    return acc_model(6.0, dt_mom=3600.0, dt_tracer=7200.0, A_h=2e5, isoneutral=True)


def _start(m, batch: int | None = None, seed: int = 0) -> dict:
    s = m.initial_state(batch)
    with torch.no_grad():
        for i in range(3):
            s = m.step(s, i * m.dt)
    gen = torch.Generator().manual_seed(seed)
    g = m.grid
    s = dict(s)
    s["temp"] = (s["temp"] + 0.5 * torch.randn(s["temp"].shape, generator=gen, dtype=F64)) * g.mask_t
    s["salt"] = (s["salt"] + 0.05 * torch.randn(s["salt"].shape, generator=gen, dtype=F64)) * g.mask_t
    s["u"] = (s["u"] + 0.05 * torch.randn(s["u"].shape, generator=gen, dtype=F64)) * g.mask_u
    return s


def _run(m, s: dict, n: int) -> dict:
    for i in range(n):
        s = m.step(s, i * m.dt)
    return s


@pytest.mark.parametrize("batch", [None, 2])
def test_fast_step_equals_reference_path(monkeypatch, batch):
    m = _model()
    s0 = _start(m, batch)
    with torch.no_grad():
        fast = _run(m, s0, 3)
        _reference_path(monkeypatch)
        slow = _run(m, s0, 3)
    assert fast.keys() == slow.keys()
    for k in fast:
        # the AB2 history (du, dv, dtemp, dsalt) holds increments: compared on the scale of their fields
        scale = slow[k[1:]] if k in ("du", "dv", "dtemp", "dsalt") else slow[k]
        err = float((fast[k] - slow[k]).abs().max() / scale.abs().max())
        assert err <= TOL, (k, err)


def test_fast_step_gradients_equal_reference_path(monkeypatch):
    m = _model()
    s0 = _start(m)
    names = ("A_h", "K_gm_0", "K_iso_0")
    params = [p for n, p in m.named_parameters() if n.rsplit(".", 1)[-1].startswith(names)]
    assert len(params) == 3

    def grads():
        temp = s0["temp"].clone().requires_grad_(True)
        s = _run(m, {**s0, "temp": temp}, 2)
        loss = (s["u"] ** 2).mean() + (s["v"] ** 2).mean() + 1e-4 * (s["temp"] ** 2).mean()
        return torch.autograd.grad(loss, [temp, *params])

    for p in params:
        p.requires_grad_(True)
    fast = grads()
    _reference_path(monkeypatch)
    slow = grads()
    # forward states agree to 1e-12; through two steps of the TKE closure (√e, 1/N) rounding-level forward
    # differences move the gradients by up to ~1e-10 (each routine's own VJP agrees to 1e-12, below)
    for a, b in zip(fast, slow):
        assert _rel(a, b) <= 1e-9


def _fields(g, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.linspace(1.0, 0.0, g.nz, dtype=F64).reshape(-1, 1, 1)
    temp = (2.0 + 12.0 * z + 0.4 * torch.randn(g.shape, generator=gen, dtype=F64)) * g.mask_t
    salt = (35.0 + 0.1 * torch.randn(g.shape, generator=gen, dtype=F64)) * g.mask_t
    return temp, salt, gen


@pytest.mark.parametrize("cyclic", [True, False])
def test_isoneutral_routines_equal_reference(cyclic):
    kbot = torch.ones(7, 9, dtype=torch.int64)
    kbot[5:, :2] = 0
    kbot[1, 4] = 2
    g = Grid(9, 7, acc_dz(5), kbot, x0=0.0, y0=-50.0, cyclic=cyclic)
    temp, salt, gen = _fields(g)
    k_field = 1000.0 * (1 + 0.5 * torch.rand(g.shape, generator=gen, dtype=F64))
    k_member = torch.tensor([800.0, 1200.0], dtype=F64).reshape(2, 1, 1, 1)
    for K_iso, K_gm, s in [(1000.0, 700.0, salt), (k_field, 0.5 * k_field, salt), (k_member, k_member, salt),
                           (1000.0, 1000.0, None)]:  # fmt: skip
        a = iso.isoneutral_tensor(temp, s, g, K_iso=K_iso, K_iso_steep=500.0)
        b = ref.isoneutral_tensor(temp, s, g, K_iso=K_iso, K_iso_steep=500.0)
        for x, y in zip(a, b):
            assert _rel(x, y) <= TOL
        for kw in ({}, {"int_drho": int_drho_dtemp(temp, 300.0)}, {"iso": False}, {"skew": False}):
            ra = iso.isoneutral_diffusion(temp, 1.01 * temp, a, g, dt=43200.0, K_iso=K_iso, K_gm=K_gm, **kw)
            rb = ref.isoneutral_diffusion(temp, 1.01 * temp, b, g, dt=43200.0, K_iso=K_iso, K_gm=K_gm, **kw)
            assert _rel(ra.tr_new, rb.tr_new) <= TOL
            # the tendency is a difference quotient of tr_new: compare on the scale of the update
            assert float((ra.tendency - rb.tendency).abs().max()) * 43200.0 <= TOL * float(
                rb.tr_new.abs().max()
            )
            for x, y in zip(ra[2:], rb[2:]):
                assert (x is None) == (y is None)
                if x is not None:
                    assert _rel(x, y) <= 1e-11
        # only the GM dissipation (what the model's TKE uses): the same value, the other not formed
        idr = int_drho_dtemp(temp, 300.0)
        ra = iso.isoneutral_diffusion(temp, temp, a, g, dt=43200.0, K_iso=K_iso, K_gm=K_gm, int_drho=idr,
                                      dissipation=("skew",))  # fmt: skip
        rb = ref.isoneutral_diffusion(temp, temp, b, g, dt=43200.0, K_iso=K_iso, K_gm=K_gm, int_drho=idr)
        assert ra.P_diss_iso is None and _rel(ra.P_diss_skew, rb.P_diss_skew) <= 1e-11


def test_implicit_vertical_equals_reference():
    m = _model()
    g = m.grid
    temp, _, gen = _fields(g)
    kappa = 1e-4 + 1e-2 * torch.rand(g.nz - 1, g.ny, g.nx, generator=gen, dtype=F64)
    flux = torch.randn(g.ny, g.nx, generator=gen, dtype=F64)
    for mask in (g.mask_t, g.mask_u, g.mask_v):
        relax = (torch.tensor(1e-6, dtype=F64), torch.full((g.ny, 1), 10.0, dtype=F64))
        drag = torch.tensor(1e-5, dtype=F64)
        for kw in ({}, {"bottom_drag": drag, "surface_flux": flux}, {"surface_relax": relax}):
            a = T.implicit_vertical(g, temp, kappa, mask, 43200.0, **kw)
            b = ref.implicit_vertical(g, temp, kappa, mask, 43200.0, **kw)
            assert _rel(a, b) <= TOL


def test_momentum_and_advection_operators_equal_reference():
    m = _model()
    g = m.grid
    s = _start(m)
    u, v, temp = s["u"], s["v"], s["temp"]
    tr = M.transports(g, u, v)
    for a, b in zip(tr, ref.transports(g, u, v)):
        assert _rel(a, b) <= TOL
    pairs = [
        (M.coriolis_metric(g, u, v), ref.coriolis_metric(g, u, v)),
        (M.advection(g, u, v, tr), ref.momentum_advection(g, u, v, tr)),
        (M.harmonic_friction(g, u, v, torch.tensor(2e5, dtype=F64), 1.0),
         ref.harmonic_friction(g, u, v, torch.tensor(2e5, dtype=F64), 1.0)),
        (M.harmonic_friction(g, u, v, torch.tensor(2e5, dtype=F64), 2.0),
         ref.harmonic_friction(g, u, v, torch.tensor(2e5, dtype=F64), 2.0)),
    ]  # fmt: skip
    for scheme in T.SCHEMES:
        pairs.append(
            (
                (T.advection(g, temp, tr, 7200.0, scheme),),
                (ref.tracer_advection(g, temp, tr, 7200.0, scheme),),
            )
        )
    for fast, slow in pairs:
        for a, b in zip(fast, slow):
            assert _rel(a, b) <= TOL


def test_routine_vjps_equal_reference():
    """Reverse-mode derivatives of the replaced routines, one by one, against the reference copies."""
    m = _model()
    g = m.grid
    temp, salt, gen = _fields(g)
    w = torch.randn(g.shape, generator=gen, dtype=F64)
    kappa = 1e-4 + 1e-1 * torch.rand(g.nz - 1, g.ny, g.nx, generator=gen, dtype=F64)
    flux = torch.randn(g.ny, g.nx, generator=gen, dtype=F64)

    def vjp(f, *xs):
        xs = [x.clone().requires_grad_(True) for x in xs]
        out = f(*xs)
        return torch.autograd.grad((out * w).sum(), xs)

    def mixing(mod):
        return lambda x, k, fl: mod.implicit_vertical(g, x, k, g.mask_t, 7200.0, surface_flux=fl)

    def diffusion(mod):
        def f(t, s, k):
            tensor = mod.isoneutral_tensor(t, s, g, K_iso=k, K_iso_steep=500.0)
            pair = torch.stack([t, s])
            return mod.isoneutral_diffusion(
                pair, pair, tensor, g, dt=7200.0, K_iso=k, K_gm=0.8 * k
            ).tr_new.sum(0)

        return f

    k_iso = torch.tensor(1000.0, dtype=F64)
    for fast, slow, xs in [(mixing(T), mixing(ref), (temp, kappa, flux)),
                           (diffusion(iso), diffusion(ref), (temp, salt, k_iso))]:  # fmt: skip
        for a, b in zip(vjp(fast, *xs), vjp(slow, *xs)):
            assert _rel(a, b) <= 1e-12
