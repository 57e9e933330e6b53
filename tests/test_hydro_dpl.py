"""dPL for HBV: metrics against hand values, gradients through the networks vs float64 finite differences,
checkpoints and resume, data-parallel training equal to one process, recovery of the hidden mapping of the
semi-synthetic benchmark, and clear errors for bad configurations."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket

import numpy as np
import pytest
import torch

from pelagos.core.errors import ConfigError, ShapeError
from pelagos.core.paths import DATA_DIR
from pelagos.hydro import metrics
from pelagos.hydro.dpl import DplModel, ETNet
from pelagos.hydro.lstm_baseline import LSTMBaseline
from pelagos.hydro.synthetic import SyntheticSpec, make_benchmark
from pelagos.hydro.train import TrainSpec, load_checkpoint, run_window, train

ROOT = DATA_DIR / "camels_us_sample"  # shipped with pelagos: 4 basins' forcing + attributes of all 671


# -- metrics ------------------------------------------------------------------------------------------------
def test_nse_kge_hand_values_and_nan_mask():
    obs = torch.tensor([[1.0], [2.0], [float("nan")], [3.0], [4.0]])
    sim = torch.tensor([[1.0], [2.0], [100.0], [3.0], [5.0]])
    # mean 2.5, Σ(o−ō)² = 5, Σ(s−o)² = 1
    assert metrics.nse(sim, obs).item() == pytest.approx(0.8)
    # sim = 2·obs: r = 1, α = 2, β = 2 -> KGE = 1 − √2
    assert metrics.kge(2 * obs, obs).item() == pytest.approx(1 - math.sqrt(2))
    assert metrics.nse(obs, obs).item() == pytest.approx(1.0)
    assert metrics.rmse(sim, obs).item() == pytest.approx(math.sqrt(1 / 4))
    assert metrics.basin_std(obs).item() == pytest.approx(math.sqrt(5 / 4))
    const = torch.ones(4, 1)
    assert torch.isnan(metrics.nse(const, const)).all()  # no variance: undefined, not 1
    with pytest.raises(ShapeError):
        metrics.nse(torch.ones(3, 2), torch.ones(3, 1))


def test_nse_star_and_rmse_comb_hand_values():
    obs = torch.tensor([[1.0, 0.0], [3.0, float("nan")], [2.0, 2.0]])
    sim = torch.tensor([[2.0, 1.0], [3.0, 7.0], [0.0, 2.0]])
    std = torch.tensor([0.9, 1.9])
    # valid errors: basin0: 1, 0, −2 (w = 1/1²), basin1: 1, 0 (w = 1/2²): (1 + 0 + 4 + 0.25 + 0) / 5
    assert metrics.nse_star_loss(sim, obs, std).item() == pytest.approx(5.25 / 5)
    assert metrics.nse_star_loss(sim, obs, std, count=10).item() == pytest.approx(5.25 / 10)
    o = np.array([1.0, 0.0, 3.0, 2.0, 2.0])
    s = np.array([2.0, 1.0, 3.0, 0.0, 2.0])

    def t(q):
        return np.log10(np.sqrt(q + 1e-6) + 0.1)

    want = 0.75 * np.sqrt(np.mean((s - o) ** 2)) + 0.25 * np.sqrt(np.mean((t(s) - t(o)) ** 2))
    assert metrics.rmse_comb_loss(sim, obs).item() == pytest.approx(want, rel=1e-6)


# -- small data ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    """12 semi-synthetic basins, 3 synthetic years (warm-up, train, test)."""
    spec = SyntheticSpec(
        root=str(ROOT), n_basins=12, n_years=3, train_years=1, ungauged_fraction=0.25, seed=3
    )
    return make_benchmark(spec)


TINY_SPEC = TrainSpec(epochs=2, batch_basins=8, rho=120, warmup=30, lr=0.01, seed=5, progress=False)


def test_benchmark_forcing_matches_attributes(tiny):
    d = tiny
    col = {n: j for j, n in enumerate(d.attribute_names)}
    P, T = d.forcing[..., 0].double(), d.forcing[..., 1].double()
    # precipitation mean and snow fraction as the CAMELS attributes say (by construction)
    np.testing.assert_allclose(P.mean(0).numpy(), d.attributes_raw[:, col["p_mean"]], rtol=1e-5)
    snow = (P * (T < 0)).sum(0) / P.sum(0)
    np.testing.assert_allclose(snow.numpy(), d.attributes_raw[:, col["frac_snow"]], atol=0.02)
    np.testing.assert_allclose(
        d.forcing[..., 2].double().mean(0).numpy(), d.attributes_raw[:, col["pet_mean"]], rtol=1e-5
    )
    assert set(np.concatenate(list(d.splits.values()))) == set(range(12))
    assert d.truth["Q"].shape == d.obs.shape and bool((d.obs >= 0).all())


# -- gradients through the networks -------------------------------------------------------------------------
def _fd_check(model: torch.nn.Module, loss_fn, seed: int = 0, eps: float = 1e-6) -> tuple[float, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(seed)
    direc = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    model.zero_grad()
    loss_fn().backward()
    ad = sum((p.grad * d).sum() for p, d in zip(params, direc)).item()
    with torch.no_grad():
        for p, d in zip(params, direc):
            p.add_(eps * d)
        up = loss_fn().item()
        for p, d in zip(params, direc):
            p.sub_(2 * eps * d)
        down = loss_fn().item()
        for p, d in zip(params, direc):
            p.add_(eps * d)
    return ad, (up - down) / (2 * eps)


@pytest.mark.parametrize("kind", ["mlp", "lstm_dynamic_nmul2", "mlp_et_net_smooth"])
def test_gradients_through_network_weights_match_fd(tiny, kind, float64_default):
    torch.manual_seed(0)
    f = tiny.forcing[:200, :3].double()
    z = tiny.attributes[:3].double()
    obs = tiny.obs[130:200, :3].double()
    std = metrics.basin_std(obs)
    if kind == "mlp":
        m = DplModel(z.shape[1], network="mlp", hidden=8, layers=1)
    elif kind == "lstm_dynamic_nmul2":
        m = DplModel(z.shape[1], network="lstm", hidden=6, nmul=2, dynamic=["BETA", "K0"])
        m.fit_normalisation(f)
    else:
        m = DplModel(z.shape[1], network="mlp", hidden=8, layers=1, process={"ET": ETNet(4)}, smooth=20.0)
    m = m.double()
    with torch.no_grad():  # move the outputs off mid-range so the test sees non-trivial sigmoids
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape))

    def loss():
        q = m(f, z, warmup=130, warmup_mode="graph").Q
        return metrics.nse_star_loss(q, obs, std)

    ad, fd = _fd_check(m, loss)
    assert ad == pytest.approx(fd, rel=1e-5, abs=1e-9)
    assert abs(ad) > 1e-6


def test_lstm_baseline_gradient_matches_fd(float64_default):
    torch.manual_seed(1)
    m = LSTMBaseline(4, hidden=5, dropout=0.0).double()
    f = torch.rand(40, 3, 3, dtype=torch.float64) * torch.tensor([5.0, 10.0, 3.0])
    z = torch.randn(3, 4, dtype=torch.float64)
    obs = torch.rand(30, 3, dtype=torch.float64)

    def loss():
        return metrics.nse_star_loss(m(f, z, warmup=10), obs, metrics.basin_std(obs))

    ad, fd = _fd_check(m, loss)
    assert ad == pytest.approx(fd, rel=1e-6)


# -- checkpoints, resume, data parallel ---------------------------------------------------------------------
def test_checkpoint_round_trip_and_resume_equals_uninterrupted(tiny, tmp_path):
    na = tiny.attributes.shape[1]
    torch.manual_seed(0)
    straight = DplModel(na, hidden=8, layers=1)
    h_straight = train(straight, tiny, TINY_SPEC, checkpoint=tmp_path / "a.pt")
    ck = load_checkpoint(tmp_path / "a.pt")  # weights_only=True
    fresh = DplModel(na, hidden=8, layers=1)
    fresh.load_state_dict(ck["model"])
    for k, v in straight.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])
    assert ck["epoch"] == 1 and ck["history"] == h_straight
    # one epoch, "crash", resume for the second: same weights as two epochs straight
    torch.manual_seed(0)
    part = DplModel(na, hidden=8, layers=1)
    train(part, tiny, dataclasses.replace(TINY_SPEC, epochs=1), checkpoint=tmp_path / "b.pt")
    torch.manual_seed(0)
    resumed = DplModel(na, hidden=8, layers=1)
    h = train(resumed, tiny, TINY_SPEC, checkpoint=tmp_path / "b.pt", resume=True)
    assert h == h_straight
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_load_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|global"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_sharded_batch_gradients_add_up_to_one_process(tiny, float64_default):
    # The data-parallel step: each rank's NSE* divided by the global count; their gradients sum to the
    # one-process gradient (what the all-reduce computes).
    torch.manual_seed(0)
    m = DplModel(tiny.attributes.shape[1], hidden=8, layers=1).double()
    d = dataclasses.replace(
        tiny, forcing=tiny.forcing.double(), obs=tiny.obs.double(), attributes=tiny.attributes.double()
    )
    b = torch.as_tensor(d.splits["gauged"][:6])
    days = slice(365, 425)
    std = metrics.basin_std(d.obs[365:730])
    count = (~torch.isnan(d.obs[days][:, b])).sum()

    def grad(bb):
        m.zero_grad()
        sim = run_window(m, d, bb, 335, 30, 60)
        metrics.nse_star_loss(sim, d.obs[days][:, bb], std[bb], count=count).backward()
        return [p.grad.clone() for p in m.parameters()]

    whole = grad(b)
    parts = [grad(b[r::2]) for r in range(2)]
    for g, g0, g1 in zip(whole, *parts):
        torch.testing.assert_close(g0 + g1, g, rtol=1e-10, atol=1e-13)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_rank_process_group_equals_plain_training(tiny, tmp_path):
    import torch.distributed as dist

    na = tiny.attributes.shape[1]
    torch.manual_seed(0)
    plain = DplModel(na, hidden=8, layers=1)
    train(plain, tiny, dataclasses.replace(TINY_SPEC, epochs=1))
    torch.manual_seed(0)
    grouped = DplModel(na, hidden=8, layers=1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        train(grouped, tiny, dataclasses.replace(TINY_SPEC, epochs=1))
    finally:
        dist.destroy_process_group()
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(grouped.state_dict()[k], v, rtol=0, atol=0)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_default_dtype(torch.float64)
        data = make_benchmark(
            SyntheticSpec(
                root=str(ROOT), n_basins=12, n_years=3, train_years=1, ungauged_fraction=0.25, seed=3
            ),
            dtype=torch.float64,
        )
        torch.manual_seed(0)
        m = DplModel(data.attributes.shape[1], hidden=8, layers=1)
        train(m, data, dataclasses.replace(TINY_SPEC, epochs=1))
        if rank == 0:
            torch.save(m.state_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes (~20 s on a loaded 2-core machine)
def test_two_processes_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        data = make_benchmark(
            SyntheticSpec(
                root=str(ROOT), n_basins=12, n_years=3, train_years=1, ungauged_fraction=0.25, seed=3
            ),
            dtype=torch.float64,
        )
        torch.manual_seed(0)
        m = DplModel(data.attributes.shape[1], hidden=8, layers=1)
        train(m, data, dataclasses.replace(TINY_SPEC, epochs=1))
    finally:
        torch.set_default_dtype(old)
    got = torch.load(out, weights_only=True)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=1e-9, atol=1e-12)


# -- recovery of the hidden mapping --------------------------------------------------------------------------
def test_dpl_recovers_hidden_mapping_far_better_than_chance():
    """120 semi-synthetic basins, trained on 84 for 300 days (100 warm-up + 200 with loss, the same cold start
    as the synthetic truth); judged on the 36 held-out basins: the learned attribute → parameter maps
    correlate with the hidden ones (the untrained network's do not), and the parameter error is far below
    chance."""
    from pelagos.hydro.experiment import _unit
    from pelagos.hydro.hbv import PARAMETER_NAMES

    torch.set_num_threads(1)
    d = make_benchmark(
        SyntheticSpec(
            root=str(ROOT),
            n_basins=120,
            n_years=3,
            train_years=1,
            held_out_hucs=[],
            ungauged_fraction=0.3,
            seed=7,
        )
    )
    n = 300
    d = dataclasses.replace(
        d,
        dates=d.dates[:n],
        forcing=d.forcing[:n],
        obs=d.obs[:n],
        periods={
            "warmup_end": str(d.dates[99]),
            "train": (str(d.dates[100]), str(d.dates[n - 1])),
            "test": (str(d.dates[100]), str(d.dates[n - 1])),
        },
    )
    names = list(PARAMETER_NAMES)
    truth = _unit(d.truth["params"], names)
    held = d.splits["ungauged"]

    def score(m):
        with torch.no_grad():
            u = _unit(m.parameters_for(None, d.attributes), names)
        corr = np.median([np.corrcoef(u[held, j], truth[held, j])[0, 1] for j in range(len(names))])
        return corr, np.sqrt(((u[held] - truth[held]) ** 2).mean(0)).mean()

    torch.manual_seed(0)
    m = DplModel(d.attributes.shape[1], hidden=16, layers=1)
    corr0, _ = score(m)
    hist = train(m, d, TrainSpec(epochs=20, batch_basins=200, rho=200, warmup=100, lr=0.03, progress=False))
    corr, rmse = score(m)
    chance = np.sqrt(((np.random.default_rng(0).uniform(size=truth.shape) - truth)[held] ** 2).mean(0)).mean()
    assert hist[-1] < 0.3 * hist[0]
    assert corr > 0.35 and corr > corr0 + 0.25, (corr0, corr)
    assert rmse < 0.6 * chance, (rmse, chance)


# -- configuration errors -----------------------------------------------------------------------------------
def test_bad_specs_give_clear_errors():
    with pytest.raises(ConfigError, match="need network: lstm"):
        DplModel(5, network="mlp", dynamic=["BETA"])
    with pytest.raises(ConfigError, match="not HBV parameters"):
        DplModel(5, network="lstm", dynamic=["BETAX"])
    with pytest.raises(ConfigError, match="n_basins"):
        DplModel(5, network="table")
    with pytest.raises(ConfigError, match="n_basins must be at least 4"):
        SyntheticSpec(n_basins=2).validate()
    with pytest.raises(ConfigError, match="n_years"):
        SyntheticSpec(n_years=2, train_years=2).validate()
    with pytest.raises(ConfigError, match=r"train\.batch_basins"):
        TrainSpec(batch_basins=0).validate()


def test_window_that_does_not_fit_is_refused(tiny):
    m = DplModel(tiny.attributes.shape[1], hidden=4, layers=1)
    with pytest.raises(ConfigError, match="shorten warmup or rho"):
        train(m, tiny, dataclasses.replace(TINY_SPEC, warmup=800, rho=365))


def test_unknown_camels_basin_is_refused():
    from pelagos.hydro.train import load_camels_data

    with pytest.raises(ConfigError, match="unknown CAMELS basin"):
        load_camels_data(ROOT, ["01022500", "99999999"])


# -- the command --------------------------------------------------------------------------------------------
def _config(tmp_path, **sections):
    import yaml

    cfg = {
        "model": {"kind": "hbv", "nmul": 1},
        "data": {
            "kind": "synthetic",
            "root": "builtin:camels_us_sample",
            "n_basins": 12,
            "n_years": 3,
            "train_years": 1,
            "ungauged_fraction": 0.25,
            "seed": 3,
        },
        "dpl": {"network": "mlp", "hidden": 8, "layers": 1},
        "train": {"epochs": 1, "batch_basins": 8, "rho": 120, "warmup": 30, "seed": 5},
        "compare": {"models": ["dpl", "calibration", "lstm"], "lstm_hidden": 8},
        "output": {"file": "out/run"},
    }
    for k, v in sections.items():
        cfg[k] = v if k == "model" else {**cfg.get(k, {}), **v}
    p = tmp_path / "dpl.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_cli_train_then_evaluate_writes_metrics_and_figures(tmp_path):
    import json

    from pelagos.cli import main

    cfg = _config(tmp_path)
    assert main(["hydro", "train", str(cfg), "--no-progress"]) == 0
    for m in ("dpl", "calibration", "lstm"):
        assert (tmp_path / "out" / f"run_{m}.pt").exists()
    assert main(["hydro", "evaluate", str(cfg)]) == 0
    res = json.loads((tmp_path / "out" / "run_metrics.json").read_text())
    assert set(res["nse"]) == {"gauged", "ungauged", "region"}
    assert "dpl" in res["nse"]["gauged"] and "lstm" in res["nse"]["gauged"]
    assert "dPL (mlp)" in res["parameters"]["region"] and "ET" in res["untrained"]
    for fig in (
        "nse_cdf",
        "hydrographs",
        "parameter_maps",
        "parameters_vs_attributes",
        "untrained_outputs",
        "training_curves",
    ):
        assert (tmp_path / "out" / f"run_{fig}.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("sections", "match"),
    [
        ({"train": {"epoch": 3}}, "did you mean 'epochs'"),
        ({"data": {"kind": "grib"}}, "data.kind must be 'synthetic' or 'camels'"),
        ({"data": {"n_basins": 2}}, "n_basins must be at least 4"),
        ({"dpl": {"network": "lstm", "dynamic": ["BETAX"]}}, "not HBV parameters"),
        ({"compare": {"models": []}}, "compare.models is empty"),
        ({"model": {"kind": "lorenz63"}}, "use model: {kind: hbv}"),
        ({"data": {"root": "nowhere"}}, "is not a folder"),
        ({"train": {"optimizer": "sgd"}}, "train.optimizer must be one of"),
    ],
)
def test_bad_configurations_are_refused_with_the_fix(tmp_path, sections, match):
    from pelagos.hydro import experiment

    with pytest.raises(ConfigError, match=re.escape(match)):
        cfg = experiment.load(_config(tmp_path, **sections))
        experiment.build_model(cfg, "dpl", make_benchmark(cfg.data))


def test_configuration_without_data_section_is_refused(tmp_path):
    import yaml

    from pelagos.hydro import experiment

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": {"kind": "hbv"}, "train": {"epochs": 1}}))
    with pytest.raises(ConfigError, match="no `data:` section"):
        experiment.load(p)
