"""``pelagos qg run CONFIG.yaml`` (= ``pelagos run``): NetCDF output, plot, clear configuration errors;
``pelagos qg train-closure|evaluate`` on the one configuration loader."""

import numpy as np
import pytest
import xarray as xr

from pelagos.cli import main
from pelagos.core import ConfigError
from pelagos.qg import config


def test_qg_run_writes_netcdf_and_plot(tmp_path):
    cfg = tmp_path / "qg.yaml"
    cfg.write_text(
        "model: {kind: qg, nx: 16, rek: 1.0e-6}\n"
        "time: {duration: 8 days, dt: 7200.0}\n"
        "output: {file: out/t.nc, interval: 2 days}\n"
    )
    assert main(["qg", "run", str(cfg), "--no-progress"]) == 0
    ds = xr.open_dataset(tmp_path / "out" / "t.nc")
    assert ds["q"].dims[0] == "time" and ds["q"].dims[-3:] == ("lev", "y", "x")
    assert ds.sizes["time"] in (4, 5) and np.isfinite(ds["q"]).all()
    assert float(ds.attrs["rek"]) == pytest.approx(1e-6)
    assert "KEspec_mean" in ds and (tmp_path / "out" / "t.png").exists()


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        config.load({"modle": {}})
    with pytest.raises(ConfigError, match="unknown model kind 'sqg'"):
        config.load({"model": {"kind": "sqg"}})
    with pytest.raises(ConfigError, match=r"model\.rekk; did you mean 'rek'"):
        config.load({"model": {"kind": "qg", "nx": 16, "rekk": 1.0}})
    with pytest.raises(ConfigError, match=r"hybrid\.nx_hrr; did you mean 'nx_hr'"):
        config.load({"model": {"kind": "qg"}, "hybrid": {"nx_hrr": 3}})
    with pytest.raises(ConfigError, match=r"`pelagos qg` runs the QG kinds"):
        config.load({"model": {"kind": "lorenz63"}})
    assert main(["qg", "run", str(tmp_path / "missing.yaml")]) == 1


def test_train_closure_and_evaluate_tiny(tmp_path):
    cfg = tmp_path / "hy.yaml"
    cfg.write_text(
        "model: {kind: qg, L: 5.0e5}\n"
        "hybrid: {nx_hr: 32, nx_lr: 16, spinup_years: 0.05, data_years: 0.03, offline_iters: 20,\n"
        "         online_iters: 4, curriculum: [2, 3], eval_days: [1], eval_starts: 2, eval_years: 0.02,\n"
        "         n_train: 2, n_test: 1}\n"
        "output: {file: out/tiny.nc}\n"
    )
    assert main(["qg", "evaluate", str(cfg)]) == 1  # nothing trained yet: a clear error
    assert main(["qg", "train-closure", str(cfg)]) == 0
    out = tmp_path / "out"
    table = (out / "tiny_evaluation.md").read_text()
    for label in ("no closure", "Smagorinsky", "BackscatterBiharmonic", "offline CNN", "online CNN"):
        assert label in table
    assert main(["qg", "evaluate", str(cfg)]) == 0
    import json

    curves = json.loads((out / "tiny_training.json").read_text())["curves"]
    assert len(curves["offline"]) >= 1 and curves["online"][0]["n"] == 2


def test_closure_option_of_the_qg_kind():
    """``model.closure`` attaches one of pyqg's parameterizations (and is refused when unknown)."""
    from pelagos.io.build import build_model
    from pelagos.io.config import load_config
    from pelagos.qg.parameterizations import Smagorinsky

    cfg = load_config(
        {"model": {"kind": "qg", "nx": 16, "closure": {"type": "Smagorinsky", "constant": 0.2}}}
    )
    m = build_model(cfg)
    assert isinstance(m.parameterization, Smagorinsky) and m.parameterization.constant == 0.2
    assert build_model(load_config({"model": {"kind": "qg", "nx": 16}})).parameterization is None
    with pytest.raises(ConfigError, match="Smagorinsky"):
        build_model(load_config({"model": {"kind": "qg", "nx": 16, "closure": {"type": "Smag"}}}))
