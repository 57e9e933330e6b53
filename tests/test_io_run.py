"""Run configuration, incremental NetCDF output, restart (bit-identical continuation), plots, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pelagos.cli import main
from pelagos.core.errors import ConfigError
from pelagos.io.config import load_config
from pelagos.io.run import run_config


def _cfg(tmp_path, **over):
    cfg = {
        "title": "io test",
        "model": {"kind": "column", "fabm_yaml": None, "instances": {"npzd": {"model": "gotm/npzd"}}},
        "forcing": {"file": "builtin:nns_annual_22x5m.nc"},
        "time": {"start": "1998-04-01 00:00:00", "stop": "1998-04-03 00:00:00", "dt": 3600},
        "numerics": {},
        "output": {"file": str(tmp_path / "out.nc"), "interval": 21600, "precision": "float64"},
        "restart": {"file": str(tmp_path / "out.restart.pt"), "every": 43200},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"extra_section": {}}, "unknown configuration section 'extra_section'"),
        ({"time": {"dt": -5}}, "time.dt must be a positive"),
        ({"numerics": {"odemethod": "euler"}}, r"unknown key numerics\.odemethod; did you mean 'ode_method'"),
        ({"model": {"dtype": "float16"}}, "model.dtype must be float32 or float64"),
        ({"forcing": {"file": "builtin:nope.nc"}}, "no built-in file 'builtin:nope.nc'"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        cfg = load_config(_cfg(tmp_path, **change))
        run_config(cfg)


def test_unknown_parameter_in_config_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown parameter 'npzd\.rmaxx'"):
        run_config(_cfg(tmp_path, parameters={"npzd.rmaxx": 1.0}))


def test_output_is_written_incrementally_and_restart_continues_bit_identically(tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full_dir.mkdir()
    cut_dir.mkdir()
    ref = run_config(_cfg(full_dir), resume=False)
    ds_ref = xr.load_dataset(ref)
    assert ds_ref.sizes["time"] == 9  # 2 days every 6 h, plus the initial record

    # Interrupted after one day: what was written so far is on disk and readable.
    cfg = _cfg(cut_dir)
    run_config(cfg, resume=False, stop_after=86400)
    part = xr.load_dataset(cut_dir / "out.nc")
    assert part.sizes["time"] == 5
    np.testing.assert_array_equal(part["npzd_phy"].values, ds_ref["npzd_phy"].values[:5])

    # Resume from the restart: the final file equals the uninterrupted run bit for bit.
    run_config(cfg, resume=True)
    done = xr.load_dataset(cut_dir / "out.nc")
    assert done.sizes["time"] == 9
    for name in ("npzd_nut", "npzd_phy", "npzd_zoo", "npzd_det", "npzd_PPR", "total_nitrogen"):
        np.testing.assert_array_equal(done[name].values, ds_ref[name].values, err_msg=name)


def test_restart_from_another_configuration_is_refused(tmp_path):
    run_config(_cfg(tmp_path), resume=False, stop_after=43200)
    other = _cfg(tmp_path, numerics={"ode_method": "rk2"})
    with pytest.raises(ConfigError, match="different configuration"):
        run_config(other, resume=True)


def test_cli_run_and_plot(tmp_path):
    import yaml

    cfg = _cfg(tmp_path, time={"stop": "1998-04-02 00:00:00"})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--fresh", "--no-progress", "--plot"]) == 0
    assert (tmp_path / "out_sections.png").stat().st_size > 10_000
    assert (tmp_path / "out_integrals.png").stat().st_size > 5_000
    ds = xr.load_dataset(tmp_path / "out.nc")
    assert ds["npzd_phy"].attrs["units"].startswith("mmol")
    assert ds["z"].values[0] < ds["z"].values[-1] < 0  # index 0 = bottom, negative down
    # bad configuration through the CLI: a clear message and exit code 1, no traceback
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {kind: column}\nforcing: {file: builtin:nns_annual_22x5m.nc}\noops: 1\n")
    assert main(["run", str(bad)]) == 1


def test_ctrl_c_during_run_config_leaves_valid_output_and_restart(tmp_path, monkeypatch, capsys):
    from pelagos.column.model import ColumnModel
    from pelagos.core.errors import Interrupted

    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir()
    cut_dir.mkdir()
    run_config(_cfg(ref_dir), resume=False)
    step = ColumnModel.step

    def ctrl_c_at_noon_day_one(self, state, t):
        if float(t) == self.forcing.seconds("1998-04-01 15:00:00"):
            raise KeyboardInterrupt
        return step(self, state, t)

    monkeypatch.setattr(ColumnModel, "step", ctrl_c_at_noon_day_one)
    with pytest.raises(
        Interrupted, match=r"^interrupted at 1998-04-01 12:00:00; output and restart are valid"
    ):
        run_config(_cfg(cut_dir), resume=False)
    part = xr.load_dataset(cut_dir / "out.nc")  # closed, readable
    assert part.sizes["time"] == 3
    monkeypatch.setattr(ColumnModel, "step", step)
    run_config(_cfg(cut_dir), resume=True)
    assert "resuming from restart at 1998-04-01 12:00:00" in capsys.readouterr().err
    a, b = xr.load_dataset(ref_dir / "out.nc"), xr.load_dataset(cut_dir / "out.nc")
    for name in ("npzd_phy", "npzd_PPR", "PAR", "total_nitrogen"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_column_diagnostics_are_interval_means_and_time_is_dates(tmp_path):
    path = run_config(_cfg(tmp_path, time={"stop": "1998-04-02 00:00:00"}), resume=False)
    ds = xr.load_dataset(path)
    assert str(ds.time.values[0])[:19] == "1998-04-01T00:00:00"
    assert ds["npzd_PPR"].attrs["cell_methods"] == "time: mean"
    assert ds["PAR"].attrs["cell_methods"] == "time: mean"
    assert ds["npzd_phy"].attrs["cell_methods"] == "time: point"
    # the 00-06 h record is the mean of the six hourly values after each step
    hourly = run_config(
        _cfg(tmp_path / "h", time={"stop": "1998-04-02 00:00:00"}, output={"interval": 3600}), resume=False
    )
    dh = xr.load_dataset(hourly)
    np.testing.assert_allclose(ds["PAR"].values[1], dh["PAR"].values[1:7].mean(0), rtol=1e-12)


def test_relative_paths_in_a_configuration_are_normalised(tmp_path):
    """``../results/x.nc`` in ``cfg/run.yaml`` is ``results/x.nc`` next to ``cfg``, with no ``..`` left in the
    path (it is printed as ``wrote PATH``)."""
    from pelagos.core.paths import resolve_path

    p = resolve_path("../results/x.nc", tmp_path / "cfg")
    assert p == tmp_path / "results" / "x.nc"
    assert ".." not in p.parts
    assert str(resolve_path("x.nc", None)) == "x.nc"


def test_another_output_gets_its_own_restart(tmp_path):
    """``run(cfg, output=...)`` of a configuration with a ``restart.file`` writes its restart next to that
    output, and neither resumes from nor overwrites the configured one."""
    from pelagos.io.build import run

    (tmp_path / "l63.yaml").write_text(
        "model: {kind: lorenz63, dtype: float64}\n"
        "time: {start: 0, duration: 0.1, dt: 0.01}\n"
        "output: {file: main.nc}\n"
        "restart: {file: main.restart.pt}\n"
    )
    files = run(tmp_path / "l63.yaml", output=tmp_path / "other.nc", progress=False)
    assert tmp_path / "other.restart.pt" in files
    assert not (tmp_path / "main.restart.pt").exists()
    files = run(tmp_path / "l63.yaml", progress=False)
    assert tmp_path / "main.restart.pt" in files
