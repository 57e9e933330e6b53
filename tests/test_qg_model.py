"""QG models against real pyqg 0.7.2 trajectories (fixtures from scripts/make_qg_fixtures.py)."""

import json
import pathlib

import numpy as np
import pytest
import torch

from pelagos.core import ConfigError, Model, ShapeError, StabilityError
from pelagos.core.rollout import rollout
from pelagos.qg import BTModel, LayeredModel, QGModel

FIX = pathlib.Path(__file__).parent / "fixtures" / "qg"


def load(name):
    d = np.load(FIX / f"{name}.npz")
    return json.loads(str(d["settings"])), d


def rel(a, b):
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else a
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_two_layer_1000_steps_matches_pyqg_nx64():
    s, d = load("two_layer_nx64")
    m = QGModel(**s)
    with torch.no_grad():  # the fused no-autograd path
        traj = rollout(m, m.state_from_q(torch.tensor(d["q0"])[None]), 1000, save_every=1000)
    assert rel(traj.final["q"][0], d["q1000"]) < 1e-10
    assert float(traj.times[-1]) == 1000 * 3600.0


def test_fast_path_equals_general_path_with_mixed_bootstrap_levels():
    m = QGModel(nx=32, dt=3600.0)
    a = m.initial_state(batch=1, seed=1)
    for _ in range(4):
        a = m.step(a)
    b = m.initial_state(batch=1, seed=2)  # level 0 next to level 2 in one batch
    mixed = {k: torch.cat([a[k], b[k]]) for k in a}
    general = {**mixed, "qh": mixed["qh"].clone().requires_grad_(True)}  # needs autograd: general path
    for _ in range(3):
        general = m.step(general)
    general = {k: v.detach() for k, v in general.items()}
    with torch.no_grad():
        fast = mixed
        for _ in range(3):
            fast = m.step(fast)
    for k in ("q", "qh", "dqhdt_p", "ablevel"):
        assert torch.allclose(fast[k], general[k], rtol=1e-13, atol=1e-13 * float(general[k].abs().max())), k
    assert fast["ablevel"].tolist() == [2.0, 2.0]
    # a large grid takes the field-by-field inverse FFT branch of the fast path
    big = QGModel(nx=256, dt=3600.0)
    s0 = big.initial_state(seed=0)
    with torch.no_grad():
        f1 = big.step(s0)
    g1 = {k: v.detach() for k, v in big.step({**s0, "qh": s0["qh"].clone().requires_grad_(True)}).items()}
    assert torch.allclose(f1["q"], g1["q"], rtol=0, atol=1e-13 * float(g1["q"].abs().max()))


@pytest.mark.parametrize("path", ["fast", "one-node", "recorded"])
def test_two_layer_bootstrap_steps_match_pyqg_nx32(path):
    """Each step implementation against pyqg: the no-grad fused path, the one-autograd-node step with its
    hand-written adjoint (qg/adjoint.py), and the op-by-op recorded graph."""
    s, d = load("two_layer_nx32")
    m = QGModel(**s)
    m.fused_backward = path != "recorded"
    q0 = torch.tensor(d["q0"])[None].requires_grad_(path != "fast")
    st = m.state_from_q(q0)
    for n in range(1, 101):
        st = m.step(st, 0.0)
        if f"q{n}" in d.files:  # steps 1, 2, 3 exercise FE, AB2, first AB3
            assert rel(st["q"][0], d[f"q{n}"]) < 1e-12, n
    assert st["q"].requires_grad == (path != "fast")
    if path == "one-node":
        assert type(st["q"].grad_fn).__name__ == "QGStepBackward"


def test_spun_up_state_10_steps_matches_pyqg_nondefault_params():
    s, d = load("two_layer_spun")
    m = QGModel(**s)
    st = m.state_from_q(torch.tensor(d["q_spun"])[None])
    for _ in range(10):
        st = m.step(st)
    assert rel(st["q"][0], d["q10"]) < 1e-11


def test_layered_three_layers_matches_pyqg():
    s, d = load("layered_nz3")
    m = LayeredModel(nx=32, nz=3, dt=s["dt"], H=s["H"], rho=s["rho"], U=s["U"], f=s["f"], g=s["g"])
    st = m.state_from_q(torch.tensor(d["q0"])[None])
    for _ in range(200):
        st = m.step(st)
    assert rel(st["q"][0], d["q200"]) < 1e-10


def test_barotropic_matches_pyqg():
    s, d = load("barotropic")
    m = BTModel(**s)
    st = m.state_from_q(torch.tensor(d["q0"])[None])
    for _ in range(200):
        st = m.step(st)
    assert rel(st["q"][0], d["q200"]) < 1e-10


def test_layered_with_two_layers_equals_qgmodel():
    # N-layer stretching matrix with nz=2 must equal the two-layer F1, F2 form for matching H, rho, f
    f, g, H1, H2, rho = 1e-4, 9.81, 500.0, 2000.0, (1025.0, 1025.5)
    gp = g * (rho[1] - rho[0]) / rho[0]
    rd = np.sqrt(gp * H1 * H2 / (H1 + H2)) / f
    lm = LayeredModel(nx=16, nz=2, H=[H1, H2], rho=list(rho), U=[0.02, 0.0], f=f, g=g, dt=3600.0)
    qm = QGModel(nx=16, rd=rd, delta=H1 / H2, H1=H1, U1=0.02, U2=0.0, dt=3600.0)
    q = qm.random_q(2, seed=1)
    a, b = lm.state_from_q(q), qm.state_from_q(q)
    for _ in range(20):
        a, b = lm.step(a), qm.step(b)
    assert rel(a["q"], b["q"].numpy()) < 1e-9


def test_is_model_with_parameters_and_batch_of_trajectories():
    m = QGModel(nx=16)
    assert isinstance(m, Model)
    rows = {r["name"]: r for r in m.parameters_table(as_rows=True)}
    assert rows["rek"]["transform"] == "log" and rows["rek"]["units"] == "s-1"
    assert QGModel(nx=16, rek=0.0).parameters_table(as_rows=True)[0]["transform"] == "identity"
    names = list(rows)
    for n in ("rek", "beta", "rd", "delta", "H1", "U1", "U2", "filterfac"):
        assert n in names
    assert m.select_free(["rek", "beta"]) == ["rek", "beta"]
    q = m.random_q(3, seed=5)
    together = m.step(m.step(m.state_from_q(q)))
    for i in range(3):  # batch members evolve independently
        alone = m.step(m.step(m.state_from_q(q[i : i + 1])))
        assert torch.allclose(together["q"][i], alone["q"][0], rtol=0, atol=1e-20)
    assert not torch.equal(m.random_q(1, seed=1), m.random_q(1, seed=2))
    assert torch.equal(m.random_q(1, seed=1), m.random_q(1, seed=1))


def test_step_is_pure():
    m = QGModel(nx=16)
    st = m.initial_state(batch=1, seed=0)
    before = {k: v.clone() for k, v in st.items()}
    a, b = m.step(st), m.step(st)
    for k in st:
        assert torch.equal(st[k], before[k])
        assert torch.equal(a[k], b[k])


def test_float32_close_to_float64():
    m64, m32 = QGModel(nx=32, dt=3600.0), QGModel(nx=32, dt=3600.0, dtype=torch.float32)
    q = m64.random_q(1, seed=0)
    a, b = m64.state_from_q(q), m32.state_from_q(q.float())
    for _ in range(100):
        a, b = m64.step(a), m32.step(b)
    assert b["q"].dtype == torch.float32
    assert rel(b["q"].double(), a["q"].numpy()) < 1e-4


def test_parameter_batch_equals_separate_runs():
    m = QGModel(nx=16, dt=3600.0)
    q = m.random_q(2, seed=3)
    rek = torch.tensor([1e-7, 9e-7], dtype=torch.float64)
    with m.using({"rek": torch.log(rek)}):  # rek > 0 is stored as log(rek)
        st = m.state_from_q(q)
        for _ in range(30):
            st = m.step(st)
    for i in range(2):
        m2 = QGModel(nx=16, dt=3600.0, rek=float(rek[i]))
        s2 = m2.state_from_q(q[i : i + 1])
        for _ in range(30):
            s2 = m2.step(s2)
        assert rel(st["q"][i], s2["q"][0].numpy()) < 1e-13


def test_errors_are_clear():
    m = QGModel(nx=16)
    with pytest.raises(ShapeError, match="leading batch dim"):
        m.state_from_q(torch.zeros(2, 16, 16))
    with pytest.raises(ConfigError, match="nx"):
        QGModel(nx=15)
    with pytest.raises(ConfigError, match="rd"):
        QGModel(nx=16, rd=-5.0)
    with pytest.raises(ConfigError, match="rho"):
        LayeredModel(nx=16, nz=3, rho=[1025.0, 1024.0, 1026.0])


def test_cfl_raises_stability_error():
    m = QGModel(nx=16, dt=3600.0)
    st = m.initial_state()
    m.check_cfl(st)  # quiet initial state is fine
    # CFL = max|u+U| dt/dx: with only the background U1 it is U1 dt/dx
    assert torch.allclose(
        m.cfl(m.state_from_q(torch.zeros(1, 2, 16, 16))),
        torch.tensor([0.025 * 3600 / m.grid.dx], dtype=torch.float64),
    )
    big = QGModel(nx=16, dt=3600.0 * 1000)
    with pytest.raises(StabilityError, match="CFL"):
        big.check_cfl(big.state_from_q(torch.zeros(1, 2, 16, 16)))
    bad = dict(st)
    bad["q"] = st["q"].clone()
    bad["q"][0, 0, 0, 0] = float("nan")
    with pytest.raises(StabilityError, match="not finite"):
        m.check_cfl(bad)
