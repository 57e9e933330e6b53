"""The QG fast path's compiled kernels (qg/_step_c.py) and FFT plans (qg/fftplan.py) vs torch and pyqg."""

import json
import pathlib

import numpy as np
import pytest
import torch

from pelagos.qg import BTModel, LayeredModel, QGModel, _step_c, fftplan

FIX = pathlib.Path(__file__).parent / "fixtures" / "qg"

needs_kernels = pytest.mark.skipif(
    _step_c.kernels() is None, reason=f"no compiled QG kernels here: {_step_c.build_error()}"
)


def run(m, state, n, backend, monkeypatch):
    monkeypatch.setenv("PELAGOS_QG_BACKEND", backend)
    with torch.no_grad():
        for _ in range(n):
            state = m.step(state)
    return state


def close(a, b, tol):
    return float((a - b).abs().max()) <= tol * float(b.abs().max())


@needs_kernels
def test_kernels_are_used_by_the_no_grad_step(monkeypatch):
    calls = []
    for name in ("invert", "flux", "update"):
        fn = getattr(_step_c, name)
        monkeypatch.setattr(_step_c, name, lambda *a, _f=fn, _n=name: (calls.append(_n), _f(*a))[1])
    m = QGModel(nx=16, dt=3600.0)
    run(m, m.initial_state(seed=0), 2, "auto", monkeypatch)
    assert calls == ["invert", "flux", "update"] * 2
    calls.clear()
    run(m, m.initial_state(seed=0), 2, "torch", monkeypatch)  # switched off: the torch fast path
    assert calls == []


@needs_kernels
@pytest.mark.parametrize(
    "make",
    [
        lambda dt: QGModel(nx=32, dt=dt, U2=-0.01, rek=1e-6),
        lambda dt: QGModel(nx=32, dt=dt, dtype=torch.float32),
        lambda dt: LayeredModel(nx=32, nz=3, dt=dt),
        lambda dt: BTModel(nx=32, dt=dt, beta=1e-11),
    ],
    ids=["two-layer", "float32", "three-layer", "one-layer"],
)
def test_compiled_step_equals_torch_step(make, monkeypatch):
    m = make(3600.0)
    s0 = m.initial_state(batch=3, seed=4)
    s0 = run(m, s0, 200, "torch", monkeypatch)  # developed flow, AB3 level reached
    ref = run(m, {k: v.clone() for k, v in s0.items()}, 20, "torch", monkeypatch)
    got = run(m, {k: v.clone() for k, v in s0.items()}, 20, "auto", monkeypatch)
    tol = 1e-5 if m.dtype == torch.float32 else 1e-12
    for k in ("q", "qh", "dqhdt_p", "dqhdt_pp"):
        assert close(got[k], ref[k], tol), k


@needs_kernels
def test_compiled_step_with_mixed_bootstrap_levels_and_threads(monkeypatch):
    m = QGModel(nx=128, dt=3600.0)
    a = run(m, m.initial_state(batch=2, seed=1), 3, "torch", monkeypatch)
    b = m.initial_state(batch=2, seed=2)  # level 0 next to level 2 (per-trajectory AB3 weights)
    mixed = {k: torch.cat([a[k], b[k]]) for k in a}
    threads, chunks = torch.get_num_threads(), []
    run_calls = _step_c.run_calls
    monkeypatch.setattr(_step_c, "run_calls", lambda calls: (chunks.append(len(calls)), run_calls(calls)))
    torch.set_num_threads(2)  # large enough to split the batch over the kernel thread pool
    try:
        got = run(m, {k: v.clone() for k, v in mixed.items()}, 3, "auto", monkeypatch)
    finally:
        torch.set_num_threads(threads)
    ref = run(m, {k: v.clone() for k, v in mixed.items()}, 3, "torch", monkeypatch)
    for k in ("q", "qh", "dqhdt_p"):
        assert close(got[k], ref[k], 1e-13), k
    assert got["ablevel"].tolist() == [2.0] * 4
    assert chunks and set(chunks) == {2}  # every kernel ran as two batch chunks


def test_torch_fast_path_1000_steps_matches_pyqg(monkeypatch):
    # the fallback when no compiler exists (test_qg_model.py checks the default path the same way)
    d = np.load(FIX / "two_layer_nx64.npz")
    m = QGModel(**json.loads(str(d["settings"])))
    st = run(m, m.state_from_q(torch.tensor(d["q0"])[None]), 1000, "torch", monkeypatch)
    q = st["q"][0].numpy()
    assert np.abs(q - d["q1000"]).max() / np.abs(d["q1000"]).max() < 1e-10


def test_falls_back_to_torch_when_the_build_fails(monkeypatch):
    def broken():
        raise RuntimeError("simulated: no compiler")

    monkeypatch.setattr(_step_c, "_state", {})
    monkeypatch.setattr(_step_c, "_build", broken)
    assert _step_c.kernels() is None and "simulated" in _step_c.build_error()
    calls = []
    monkeypatch.setattr(_step_c, "invert", lambda *a: calls.append(a))  # must not be reached
    m = QGModel(nx=16, dt=3600.0)
    with torch.no_grad():
        st = m.step(m.step(m.initial_state(seed=0)))
    assert calls == [] and torch.isfinite(st["q"]).all() and float(st["q"].abs().max()) > 0


@pytest.mark.parametrize("name", fftplan.INVERSE)
@pytest.mark.parametrize("norm", ["forward", "backward"])
def test_fft_plan_patterns_are_the_same_transform(name, norm, monkeypatch):
    monkeypatch.setenv("PELAGOS_QG_FFT", name)
    plan = fftplan.FFTPlan(24, 32)
    x = torch.randn(2, 3, 24, 32, dtype=torch.float64)
    xh = torch.fft.rfft2(x)
    out, tmp, fh = torch.empty_like(x), torch.empty_like(xh), torch.empty_like(xh)
    ref = torch.fft.irfft2(xh, s=(24, 32), norm=norm)
    got = plan.irfft2(xh, out, norm, tmp)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-13 * float(ref.abs().max()))
    torch.testing.assert_close(plan.rfft2(x, fh, tmp), xh, rtol=0, atol=1e-13 * float(xh.abs().max()))


def test_fft_plan_measures_once_per_shape_and_rejects_unknown_patterns(monkeypatch):
    monkeypatch.delenv("PELAGOS_QG_FFT", raising=False)
    monkeypatch.setattr(fftplan, "_chosen", {})
    plan = fftplan.FFTPlan(16, 16)
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    fh, tmp = torch.fft.rfft2(x), torch.empty(1, 2, 16, 9, dtype=torch.complex128)
    plan.rfft2(x, fh, tmp)
    plan.rfft2(x, fh, tmp)
    assert [k[0] for k in fftplan._chosen] == ["rfft2"]
    assert set(fftplan._chosen.values()) <= set(fftplan.FORWARD)
    monkeypatch.setenv("PELAGOS_QG_FFT", "fastest-please")
    with pytest.raises(ValueError, match="PELAGOS_QG_FFT"):
        plan.irfft2(fh, x, "forward", tmp)
