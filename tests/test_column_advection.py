"""Tests of pelagos.column.advection against a literal per-element port of GOTM's adv_center (1-based)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pelagos.column import LIMITERS, advect_center, courant_substeps, face_velocities
from pelagos.core.errors import ConfigError, ShapeError

DT = torch.float64
METHODS = list(LIMITERS)


# ----------------------------------------------------------------------------------------------------
# independent reference: GOTM adv_center (Klingbeil reconstruction), element by element
def ref_reconstruct(method, cfl, fuu, fu, fd):
    deltaf = fd - fu
    deltafu = fu - fuu
    if deltaf * deltafu > 0:
        ratio = deltafu / deltaf
        if method == "SUPERBEE":
            limiter = max(min(2 * ratio, 1.0), min(ratio, 2.0))
        elif method == "P2_PDM":
            x = (1.0 - 2.0 * cfl) / 6.0
            limiter = (0.5 + x) + (0.5 - x) * ratio
            limiter = min(2 * ratio / (cfl + 1e-10), limiter, 2 / (1 - cfl))
        elif method == "SPLMAX13":
            limiter = min(2 * ratio, max(1 + 2 * ratio, 2 + ratio) / 3.0, 2.0)
        elif method == "MUSCL":
            limiter = min(2 * ratio, 0.5 * (1 + ratio), 2.0)
        elif method == "P2":
            x = (1.0 - 2.0 * cfl) / 6.0
            limiter = (0.5 + x) + (0.5 - x) * ratio
        elif method == "CENTRAL":
            limiter = 1 / (1 - cfl)
        else:
            limiter = 0.0
        return fu + 0.5 * limiter * (1 - cfl) * deltaf
    if method == "P2":
        x = (1.0 - 2.0 * cfl) / 6.0
        return fu + 0.5 * (1 - cfl) * ((0.5 + x) * deltaf + (0.5 - x) * deltafu)
    if method == "CENTRAL":
        return 0.5 * (fu + fd)
    return fu


def ref_adv_center(N, dt, h, ww, Bcup, Bcdw, Yup, Ydw, method, mode, Y, itmax=100):
    """h, Y: arrays 0..N (0 unused); ww: 0..N. Returns Y[1:]."""
    Y = Y.copy()
    cu = np.zeros(N + 1)
    cmax = 0.0
    for k in range(1, N):
        c = abs(ww[k]) * dt / (0.5 * (h[k] + h[k + 1]))
        cmax = max(cmax, c)
    it = min(itmax, int(cmax) + 1)
    for _ in range(it):
        for k in range(1, N):
            if ww[k] > 0:
                c = ww[k] / it * dt / (0.5 * (h[k] + h[k + 1]))
                Yu = Y[k - 1] if k > 1 else Y[k]
                Yc, Yd = Y[k], Y[k + 1]
            else:
                c = -ww[k] / it * dt / (0.5 * (h[k] + h[k + 1]))
                Yu = Y[k + 2] if k < N - 1 else Y[k + 1]
                Yc, Yd = Y[k + 1], Y[k]
            cu[k] = ww[k] * ref_reconstruct(method, c, Yu, Yc, Yd)
        if Bcup == "flux":
            cu[N] = -Yup
        elif Bcup == "value":
            cu[N] = ww[N] * Yup
        elif Bcup == "oneSided":
            cu[N] = ww[N] * Y[N] if ww[N] >= 0 else 0.0
        else:
            cu[N] = cu[N - 1]
        if Bcdw == "flux":
            cu[0] = Ydw
        elif Bcdw == "value":
            cu[0] = ww[0] * Ydw
        elif Bcdw == "oneSided":
            cu[0] = ww[0] * Y[1] if ww[0] <= 0 else 0.0
        else:
            cu[0] = cu[1]
        for k in range(1, N + 1):
            if mode == 0:
                Y[k] = Y[k] - 1.0 / it * dt * ((cu[k] - cu[k - 1]) / h[k] - Y[k] * (ww[k] - ww[k - 1]) / h[k])
            else:
                Y[k] = Y[k] - 1.0 / it * dt * ((cu[k] - cu[k - 1]) / h[k])
    return Y[1:], it


def pad(x):
    return np.concatenate([[np.nan], np.asarray(x, dtype=np.float64)])


# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_matches_gotm_reference_random(method):
    rng = np.random.default_rng(sum(map(ord, method)))
    bcs = ["flux", "value", "oneSided", "zeroDivergence"]
    seen_it = set()
    for trial in range(12):
        N = [2, 3, 5, 12][trial % 4]
        h = rng.uniform(0.5, 2.0, N)
        Y = rng.uniform(0, 1, N)
        Y[rng.random(N) < 0.3] = 0.5  # plateaus exercise the Df*Dfu <= 0 branch
        ww = rng.normal(0, 1e-3, N + 1) * (3.0 if trial % 3 == 0 else 1.0)  # some Courant numbers > 1
        dt = 600.0
        bcup, bcdw = bcs[trial % 4], bcs[(trial // 4 + trial) % 4]
        Yup, Ydw = rng.normal(0, 1e-3), rng.normal(0, 1e-3)
        mode = trial % 2
        ref, it = ref_adv_center(N, dt, pad(h), ww, bcup, bcdw, Yup, Ydw, method, mode, pad(Y))
        seen_it.add(it)
        out = advect_center(
            torch.tensor(Y), torch.tensor(h), torch.tensor(ww), dt, method=method,
            mode="conservative" if mode else "non-conservative", bc_up=(bcup, Yup), bc_down=(bcdw, Ydw),
        )  # fmt: skip
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-15)
    assert max(seen_it) > 1  # sub-stepping was exercised


def test_batched_per_column_substeps_equal_loop():
    rng = np.random.default_rng(1)
    B, V, N = 4, 2, 10
    h = torch.tensor(rng.uniform(0.5, 2.0, (B, 1, N)))
    Y = torch.tensor(rng.uniform(0, 1, (B, V, N)))
    wc = torch.tensor(-rng.uniform(0, 1, (B, V, N))) * torch.tensor([1e-4, 1e-3, 3e-3, 6e-3])[:, None, None]
    ww = face_velocities(wc, h)
    its = courant_substeps(ww, h, 900.0)
    assert len(set(its.flatten().tolist())) > 2  # columns really need different counts
    out = advect_center(Y, h, ww, 900.0)
    for b in range(B):
        for v in range(V):
            ref, _ = ref_adv_center(N, 900.0, pad(h[b, 0]), ww[b, v].numpy(), "flux", "flux", 0.0, 0.0,
                                    "P2_PDM", 1, pad(Y[b, v]))  # fmt: skip
            np.testing.assert_allclose(out[b, v].numpy(), ref, rtol=1e-12, atol=1e-15)


def test_face_velocities_gotm_weights():
    h = torch.tensor([1.0, 3.0, 2.0], dtype=DT)
    w = torch.tensor([-1.0, -2.0, -4.0], dtype=DT)
    wf = face_velocities(w, h)
    # om_k = h(k+1)/(h(k)+h(k+1)) weighs the lower layer
    expect = [0.0, 0.75 * -1.0 + 0.25 * -2.0, 0.4 * -2.0 + 0.6 * -4.0, 0.0]
    torch.testing.assert_close(wf, torch.tensor(expect, dtype=DT))


def _tophat(nz=100):
    h = torch.full((nz,), 1.0, dtype=DT)
    Y = torch.zeros(nz, dtype=DT)
    Y[60:75] = 1.0
    return h, Y


@pytest.mark.parametrize("method", METHODS)
def test_tophat_mass_conserved_and_tvd(method):
    h, Y = _tophat()
    ww = face_velocities(torch.full((100,), -1e-3, dtype=DT), h)  # sinking 1 mm/s, Courant 0.36
    Yn = Y
    for _ in range(60):
        Yn = advect_center(Yn, h, ww, 360.0, method=method)
    torch.testing.assert_close((h * Yn).sum(), (h * Y).sum(), rtol=1e-13, atol=0)
    if method in ("UPSTREAM", "SUPERBEE", "MUSCL", "P2_PDM", "SPLMAX13"):
        assert float(Yn.min()) >= -1e-14 and float(Yn.max()) <= 1 + 1e-14  # TVD: no new extrema
    else:
        assert float(Yn.min()) < -1e-3 or float(Yn.max()) > 1 + 1e-3  # unlimited schemes oscillate
    # the centre of mass has moved down by w*t = 21.6 m (cells are 1 m)
    z = torch.arange(100, dtype=DT) + 0.5
    shift = float((z * Yn).sum() / Yn.sum() - (z * Y).sum() / Y.sum())
    assert abs(shift + 21.6) < 0.05


def test_upstream_shape_and_courant_one_substeps():
    h, Y = _tophat()
    ww = face_velocities(torch.full((100,), -1e-3, dtype=DT), h)
    # Courant 0.5: the single-step upstream update is the average with the cell above (closed ends)
    Yh = advect_center(Y, h, ww, 500.0, method="UPSTREAM")
    expect = Y.clone()
    expect[:-1] = 0.5 * Y[:-1] + 0.5 * Y[1:]
    expect[0] = Y[0] + 0.5 * Y[1]  # nothing leaves through the bed face (w = 0 there)
    expect[-1] = 0.5 * Y[-1]
    torch.testing.assert_close(Yh, expect, rtol=0, atol=1e-15)
    # Courant exactly 1: GOTM takes it = int(1) + 1 = 2 sub-steps of Courant 0.5
    assert int(courant_substeps(ww, h, 1000.0)) == 2
    Y1 = advect_center(Y, h, ww, 1000.0, method="UPSTREAM")
    torch.testing.assert_close(Y1, advect_center(Yh, h, ww, 500.0, method="UPSTREAM"), rtol=0, atol=1e-15)


def test_substeps_argument_and_warning():
    rng = np.random.default_rng(2)
    h = torch.tensor(rng.uniform(0.5, 1.5, 8))
    Y = torch.tensor(rng.uniform(0, 1, 8))
    ww = face_velocities(torch.full((8,), -2e-3, dtype=DT), h)
    it = int(courant_substeps(ww, h, 1800.0))
    assert it > 1
    auto = advect_center(Y, h, ww, 1800.0)
    torch.testing.assert_close(advect_center(Y, h, ww, 1800.0, substeps=it), auto, rtol=0, atol=0)
    assert float((advect_center(Y, h, ww, 1800.0, substeps=it + 1) - auto).abs().max()) > 1e-6
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        advect_center(Y, h, ww, 1800.0, max_substeps=2)
    assert any("clipped" in str(r.message) for r in rec)


def test_oneSided_and_value_boundaries_move_mass_through_boundary():
    h = torch.ones(5, dtype=DT)
    Y = torch.ones(5, dtype=DT)
    ww = torch.full((6,), -1e-3, dtype=DT)  # uniform sinking through the bed
    out = advect_center(Y, h, ww, 100.0, method="UPSTREAM", bc_down=("oneSided", 0.0), bc_up=("value", 0.0))
    # bed: out through the bed = in from above; top: loses to below, gains w*0 through the surface
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 1.0, 1.0, 0.9], dtype=DT))


# ----------------------------------------------------------------------------------------------------
def _smooth_case(rng, N=9):
    Y = torch.tensor(np.sort(rng.uniform(0.1, 1.0, N)) + 0.05 * np.arange(N))  # monotone: away from kinks
    h = torch.tensor(rng.uniform(0.8, 1.2, N))
    wc = torch.tensor(-rng.uniform(2e-4, 6e-4, N))
    return Y, h, wc


@pytest.mark.parametrize("method", ["P2_PDM", "MUSCL", "SUPERBEE", "SPLMAX13", "P2", "CENTRAL"])
def test_gradcheck_away_from_kinks(method):
    Y, h, wc = _smooth_case(np.random.default_rng(3))

    def f(Y, h, wc, F):
        return advect_center(Y, h, face_velocities(wc, h), 900.0, method=method, bc_up=("flux", F))

    args = (Y.requires_grad_(), h.requires_grad_(), wc.requires_grad_(), torch.tensor(1e-4, dtype=DT,
            requires_grad=True))  # fmt: skip
    assert torch.autograd.gradcheck(f, args, eps=1e-8, atol=1e-7, rtol=1e-5)


def test_gradcheck_with_substeps_and_batch():
    rng = np.random.default_rng(4)
    Y = torch.tensor(np.sort(rng.uniform(0.1, 1.0, (3, 7)), axis=-1), requires_grad=True)
    h = torch.tensor(rng.uniform(0.8, 1.2, (3, 7)), requires_grad=True)
    wc = torch.tensor(-rng.uniform(1e-4, 2e-3, (3, 7)) * np.array([[1.0], [3.0], [6.0]]), requires_grad=True)

    def f(Y, h, wc):
        return advect_center(Y, h, face_velocities(wc, h), 900.0, method="MUSCL")

    assert len(set(courant_substeps(face_velocities(wc, h), h, 900.0).tolist())) > 1
    assert torch.autograd.gradcheck(f, (Y, h, wc), eps=1e-8, atol=1e-7, rtol=1e-5)


def test_jvp_matches_vjp_and_vmap():
    rng = np.random.default_rng(5)
    Y, h, wc = _smooth_case(rng)
    Yb = torch.stack([Y, Y * 1.1, Y + 0.2])
    hb = torch.stack([h, h, h * 1.1])
    wb = torch.stack([wc, 2 * wc, wc])

    def f(Y, h, wc):
        return advect_center(Y, h, face_velocities(wc, h), 900.0, method="P2_PDM", substeps=2)

    prim = (Yb, hb, wb)
    tang = tuple(torch.tensor(rng.normal(size=x.shape)) * x.abs().mean() for x in prim)
    out, jv = torch.func.jvp(f, prim, tang)
    u = torch.tensor(rng.normal(size=out.shape))
    _, vjp_fn = torch.func.vjp(f, *prim)
    lhs = (u * jv).sum()
    rhs = sum((a * b).sum() for a, b in zip(vjp_fn(u), tang))
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-16)
    torch.testing.assert_close(torch.func.vmap(f)(*prim), f(*prim), rtol=1e-14, atol=1e-16)
    with pytest.raises(ConfigError, match="substeps"):
        torch.func.vmap(lambda Y, h, w: advect_center(Y, h, face_velocities(w, h), 900.0))(*prim)


def test_bad_input_errors():
    Y, h = torch.ones(4, dtype=DT), torch.ones(4, dtype=DT)
    ww = torch.zeros(5, dtype=DT)
    with pytest.raises(ConfigError, match="unknown advection method"):
        advect_center(Y, h, ww, 1.0, method="QUICK")
    with pytest.raises(ConfigError, match="P1"):
        advect_center(Y, h, ww, 1.0, method=2)
    with pytest.raises(ConfigError, match="mode"):
        advect_center(Y, h, ww, 1.0, mode="lagrangian")
    with pytest.raises(ConfigError, match="bc_down"):
        advect_center(Y, h, ww, 1.0, bc_down=("dirichlet", 0.0))
    with pytest.raises(ShapeError, match="ww"):
        advect_center(Y, h, ww[:4], 1.0)
    with pytest.raises(ConfigError, match="h"):
        advect_center(Y, -h, ww, 1.0)
    with pytest.raises(ConfigError, match="dt"):
        advect_center(Y, h, ww, 0.0)
    with pytest.raises(ShapeError, match="broadcast"):
        advect_center(torch.ones(3, 4, dtype=DT), torch.ones(2, 4, dtype=DT), ww, 1.0)


def test_jvp_with_automatic_substeps_and_float32():
    rng = np.random.default_rng(6)
    Y, h, wc = _smooth_case(rng)
    wc = wc * 5  # Courant > 1: automatic sub-steps inside jvp (the count is computed from detached values)

    def f(Y, wc):
        return advect_center(Y, h, face_velocities(wc, h), 900.0)

    assert int(courant_substeps(face_velocities(wc, h), h, 900.0)) > 1
    tY, tw = torch.tensor(rng.normal(size=Y.shape)), torch.tensor(rng.normal(size=wc.shape)) * 1e-4
    _, jv = torch.func.jvp(f, (Y, wc), (tY, tw))
    eps = 1e-6
    fd = (f(Y + eps * tY, wc + eps * tw) - f(Y - eps * tY, wc - eps * tw)) / (2 * eps)
    torch.testing.assert_close(jv, fd, rtol=1e-6, atol=1e-9)
    out32 = advect_center(Y.float(), h.float(), face_velocities(wc, h).float(), 900.0)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), f(Y, wc), rtol=1e-5, atol=1e-6)
