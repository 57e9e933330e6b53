"""SDA pipeline (issue 13): data generation, standardisation, streaming windows, scenario operators,
baselines, a tiny end-to-end run against climatology, and the CLI's configuration errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pelagos.cli import main
from pelagos.core import ConfigError
from pelagos.io import sda_run as P
from pelagos.qg.sda_data import CHANNELS, SDAData, SDADataConfig, channels_from_q, generate, make_models

TINY = dict(
    nx=32,
    coarse_nx=8,
    L=5e5,
    dt=3600.0,
    members=6,
    spinup_members=1,
    spinup_years=0.6,
    branch_days=20,
    segments=6,
    length=8,
    gap=2,
    split=[4 / 6, 1 / 6, 1 / 6],
    seed=3,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: small batched FFTs and convolutions gain nothing from two, and on a loaded machine
    two OpenMP threads waiting for each other at every barrier made the data generation 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(one_thread, tmp_path_factory) -> SDAData:
    root = tmp_path_factory.mktemp("sda") / "data"
    generate(SDADataConfig(**TINY), root, log=lambda s: None)
    return SDAData(root)


def test_generate_shapes_split_and_statistics(tiny):
    c = tiny.config
    assert {s: tiny.n_trajectories(s) for s in ("train", "valid", "test")} == {
        "train": 24,
        "valid": 6,
        "test": 6,
    }
    x = tiny.load("train", standardised=False)
    assert x.shape == (24, c.length, 6, 8, 8) and torch.isfinite(x).all()
    # stored statistics are those of the training split: the standardised split has mean 0, std 1
    z = tiny.standardise(x)
    assert torch.allclose(z.mean((0, 1, 3, 4)), torch.zeros(6), atol=1e-4)
    assert torch.allclose(z.std((0, 1, 3, 4), unbiased=False), torch.ones(6), atol=1e-3)
    assert torch.allclose(tiny.unstandardise(z), x, rtol=1e-5, atol=1e-12)
    assert torch.equal(tiny.load("train"), z)
    # physical scales: PV ~ 1e-6..1e-5 s-1, velocities ~ cm/s; upper layer more energetic
    s = tiny.std.numpy()
    assert 1e-8 < s[0] < 1e-4 and 1e-4 < s[1] < 1.0 and s[1] > s[4]
    # the channels are one function of the coarse PV: u, v from the coarse model's inversion
    hi, lo, C = make_models(c)
    q0 = tiny.hires_initial("test")
    ch = channels_from_q(lo, C(q0.to(hi.dtype))).float()
    assert torch.allclose(
        ch, tiny.load("test", standardised=False)[:, 0], rtol=1e-4, atol=1e-6 * float(s.max())
    )
    # members do not straddle splits
    import netCDF4

    members = {}
    for split in ("train", "valid", "test"):
        with netCDF4.Dataset(tiny.path(split)) as nc:
            members[split] = set(np.asarray(nc["member"][:]).tolist())
    assert not (members["train"] & members["test"]) and not (members["train"] & members["valid"])


def test_streaming_windows_equal_in_memory(tiny):
    a = tiny.windows("valid", 3, random=False, in_memory=True)
    b = tiny.windows("valid", 3, random=False, in_memory=False)
    assert len(a) == len(b) == 6 * (tiny.config.length - 2) and not b.in_memory
    for i in range(len(a)):
        assert torch.equal(a[i], b[i])
    full = tiny.load("valid")
    n, s = a.index(7)
    assert torch.equal(a[7], full[n, s : s + 3])
    # random windows through a DataLoader with workers (each opens its own file handle)
    r = tiny.windows("train", 5, random=True, in_memory=False, generator=torch.Generator().manual_seed(0))
    batch = next(iter(torch.utils.data.DataLoader(r, batch_size=4, num_workers=1)))
    assert batch.shape == (4, 5, 6, 8, 8)
    tr = tiny.load("train")
    for k in range(4):  # every window is a contiguous piece of its trajectory
        assert any(torch.equal(batch[k], tr[k, s : s + 5]) for s in range(tiny.config.length - 4))


def test_scenario_operators():
    g = P.Scenario(P.ScenarioConfig("g", "grid", stride=4, every=2, sigma=0.01), length=8, n=16)
    assert g.times.tolist() == [0, 2, 4, 6] and g.m_t == 4 * 16 and g.m == 4 * 64
    x = torch.randn(3, 8, 6, 16, 16)
    y = g.A(x)
    assert y.shape == (3, g.m)
    assert torch.equal(y.sort(1).values, x[:, g.mask].sort(1).values)  # the observed entries, nothing else
    assert g.mask[:, [0, 3]].sum() == 0 and g.mask[1].sum() == 0  # q unobserved, odd states unobserved
    st = P.Scenario(
        P.ScenarioConfig("s", "stations", channels=list(CHANNELS), n_stations=20, sigma=0.1), 8, 16
    )
    assert st.m_t == 6 * 20 and st.mask[0, 0].sum() == 20
    pos = st.positions(5e5)
    assert pos.shape == (st.m_t, 2)
    # the positions follow the order of A's values: observe a field equal to x-coordinate index
    field = torch.zeros(1, 8, 6, 16, 16)
    field[..., :, :] = torch.arange(16.0)
    xs = st.A(field)[0, : st.m_t]
    assert torch.allclose((pos[:, 0] / (5e5 / 16) - 0.5).float(), xs)
    obs = st.observation_set(st.observe(field[0], torch.Generator().manual_seed(0)), lambda s: s, 86400.0)
    assert obs.values.shape == (8, 1, st.m_t) and float(obs.times[1]) == 86400.0
    with pytest.raises(ConfigError, match="channels"):
        P.Scenario(P.ScenarioConfig("b", channels=["w1"]), 8, 16)


def test_state_operator_matches_stored_states(tiny):
    sc = P.Scenario(P.ScenarioConfig("g", "grid", stride=2), tiny.config.length, 8)
    model, _, lo, C = P._interval_model(tiny)
    op = P._StateOperator(tiny, sc, lo, C)
    q0 = tiny.hires_initial("test", [0])
    truth = tiny.load("test", [0])[0]
    assert torch.allclose(op(q0).float(), sc.observe_state(truth[:1]), atol=1e-4)
    # one QGInterval step = the data interval: the model reproduces the stored trajectory's next state
    x = P._trajectory_channels(model, op, q0, 3)[0]
    assert torch.allclose(x, truth[:3], atol=1e-3)


def test_end_to_end_beats_climatology(tiny, tmp_path):
    torch.manual_seed(0)
    tc = P.TrainConfig(
        window=3,
        hidden=[16, 32],
        blocks=1,
        kernel=3,
        expansion=2,
        embedding=16,
        batch_size=8,
        epochs=80,
        lr=3e-3,
        ema=0.9,
        valid_batches=2,
        parameterization="skip",
    )
    r = P.train(tiny, tc, tmp_path, log=lambda s: None)
    h = r["history"]
    assert h["valid"][-1] < h["valid"][0]
    # checkpoints load with weights_only=True and a second call resumes (nothing left to do)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == tc.epochs - 1
    assert P.train(tiny, tc, tmp_path, log=lambda s: None)["history"]["train"] == h["train"]
    scs = [P.Scenario(P.ScenarioConfig("grid", "grid", stride=2, sigma=0.05), tiny.config.length, 8)]
    scfg = P.SampleConfig(steps=32, corrections=1, gamma=1e-2, samples=3, truths=2)
    samples = P.sample_scenarios(
        tiny, tmp_path / "score.pt", scs, scfg, tmp_path / "samples.pt", log=lambda s: None
    )
    bcfg = P.BaselineConfig(
        methods=["climatology", "enkf", "fourdvar"], fourdvar_max_iter=3, enkf_members=6, enkf_radius=1.5e5
    )
    m = P.evaluate(tiny, scs, scfg, bcfg, tmp_path, sda_samples=samples, log=lambda s: None, figures=True)
    print(P.summary_table(m))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["methods"]) == {"sda", "fourdvar", "enkf", "climatology"}
    sda, clim = m["methods"]["sda"]["grid"], m["methods"]["climatology"]["grid"]
    assert sda["rmse_obs"] < 0.5 * clim["rmse_obs"]
    assert sda["rmse_unobs"] < 0.5 * clim["rmse_unobs"]
    assert 0.05 < sda["residual_std_over_sigma"] < 3
    assert clim["rmse_obs"] == pytest.approx(clim["rmse_unobs"], rel=0.5)  # both ≈ 1 in standardised units
    assert m["methods"]["fourdvar"]["grid"]["cost"]["model_steps"] > 0
    assert (tmp_path / "sda_rmse.png").exists() and (tmp_path / "sda_grid_fields.png").exists()


def test_skip_parameterisation():
    """eps = sigma(t) x_t + alpha(t) F(x_t, t): exact where alpha -> 0; F's weights under net."""
    from pelagos.inverse.sda import VPSDE

    tc = P.TrainConfig(window=3, hidden=[8, 16], parameterization="skip")
    net = P.build_net(tc)
    x = torch.randn(2, 4, 6, 8, 8)
    sde = VPSDE(lambda x, t: x)
    for t in (0.0, 0.3, 1.0):
        tt = torch.full((2,), t)
        a, s = sde.alpha(tt)[0], sde.sigma(tt)[0]
        assert torch.allclose(net(x, tt), s * x + a * net.net(x, tt), atol=1e-6)
    assert torch.allclose(
        net(x, torch.ones(2)), x, atol=5e-3 * float(net.net(x, torch.ones(2)).detach().abs().max()) + 1e-6
    )
    assert all(k.startswith("net.") for k in net.state_dict())
    with pytest.raises(ConfigError, match="parameterization"):
        P.TrainConfig(parameterization="x").validate("train")


def test_cli_errors_on_bad_config(tmp_path, capsys):
    base = "model: {kind: qg, nx: 32, L: 500000.0}\ntime: {dt: 3600}\noutput: {file: out}\n"
    cases = {
        "train: {epochz: 3}\n": "train.epochz; did you mean 'epochs'",
        "data: {nx: 32}\n": "data.nx: the simulation model is set in the model section; use model.nx",
        "data: {coarse_nx: 5}\n": "must be a multiple",
        "scenarios: [{name: a, channels: [w1]}]\n": "channels: unknown",
        "baselines: {methods: [3dvar]}\n": "methods: unknown",
        "sampel: {steps: 3}\n": "did you mean 'sample'",
    }
    for extra, msg in cases.items():
        f = tmp_path / "bad.yaml"
        f.write_text(base + extra)
        assert main(["sda", "generate", str(f)]) == 1
        assert msg in capsys.readouterr().err
    f = tmp_path / "lorenz.yaml"
    f.write_text("model: {kind: lorenz63}\n")
    assert main(["sda", "train", str(f)]) == 1
    assert "model.kind: qg" in capsys.readouterr().err
    f = tmp_path / "ok.yaml"
    f.write_text(base)
    assert main(["sda", "train", str(f)]) == 1  # no data yet
    assert "pelagos sda generate" in capsys.readouterr().err


def test_data_parallel_training_with_torchrun(tiny, tmp_path):
    """Two gloo processes under torchrun: each trains on its share, losses are all-reduced, rank 0 writes."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from pelagos.io import sda_run as P\n"
        "from pelagos.qg.sda_data import SDAData\n"
        "tc = P.TrainConfig(window=3, hidden=[8, 16], epochs=2, batch_size=4, valid_batches=1)\n"
        "P.train(SDAData(sys.argv[1]), tc, sys.argv[2], log=lambda s: None)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)]
    cmd += [str(tiny.root), str(tmp_path / "out")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((tmp_path / "out" / "training.json").read_text())
    assert info["world_size"] == 2 and len(info["history"]["train"]) == 2
    net, _ = P.load_score(tmp_path / "out" / "score.pt")
    assert all(torch.isfinite(p).all() for p in net.parameters())
