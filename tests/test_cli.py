"""The command line and the one configuration loader: flags every command shares, strict keys with
suggestions, old formats refused with migration text, short messages instead of tracebacks."""

from __future__ import annotations

import pytest
import xarray as xr
import yaml

from pelagos import __version__
from pelagos.cli import main
from pelagos.core.errors import ConfigError
from pelagos.io.config import load_config, parse_duration

L63 = """
model: {kind: lorenz63, dtype: float64}
time: {start: 0, duration: 0.5, dt: 0.01}
output: {interval: 0.1}
"""


def _cfg(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_models_and_params(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for kind in ("column", "qg", "lorenz63", "lorenz96"):
        assert kind in out
    assert main(["params", "lorenz63"]) == 0
    out = capsys.readouterr().out
    assert "rho" in out and "sigma" in out and "beta" in out
    assert main(["params", "lorenz633"]) == 1
    assert "did you mean 'lorenz63'" in capsys.readouterr().err


def test_run_any_model_with_output_and_set(tmp_path, capsys):
    cfg = _cfg(tmp_path, L63)
    out = tmp_path / "l63.nc"
    assert main(["run", str(cfg), "--output", str(out), "--set", "time.duration=0.3", "--no-progress"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    ds = xr.open_dataset(out, decode_times=False)
    assert ds.sizes["time"] == 4  # 0, 0.1, 0.2, 0.3


def test_run_defaults_under_results(tmp_path, monkeypatch, capsys):
    cfg = _cfg(tmp_path, L63, name="mine.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(cfg), "--no-progress"]) == 0
    assert (tmp_path / "results" / "mine.nc").exists()
    assert "wrote results/mine.nc" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("modle: {kind: lorenz63}\n", "unknown configuration section 'modle'; did you mean 'model'"),
        ("model: {kind: lorenz63}\ntime: {stpo: 1}\n", r"unknown key time\.stpo; did you mean 'stop'"),
        ("model: {kind: lorenz96, nxx: 10}\n", r"unknown key model\.nxx; did you mean 'nx'"),
        ("model: {kind: lorenz63}\ntime: {dt: -1}\n", r"time\.dt must be a positive"),
        ("model: {kind: lorenz63}\noutput: {interval: 'ten days'}\n", r"output\.interval must be a duration"),
        ("model: {kind: lorenz63}\noutput: {precision: float16}\n", "must be one of 'float32', 'float64'"),
        (
            "model: {kind: lorenz63}\ntime: {start: 1, stop: 0.5}\n",
            r"time\.stop \(model time 0\.5\) is not after",
        ),
        ("model: {kind: lorenz63}\nparameters: {rhoo: 1}\n", "unknown parameter 'rhoo'"),
        ("model: {kind: lorenz633}\n", "did you mean 'lorenz63'"),
        ("title: x\n", r"model: \{kind: NAME"),
    ],
)
def test_bad_configurations_name_the_key(tmp_path, capsys, text, match):
    assert (
        main(["run", str(_cfg(tmp_path, text + "time: {duration: 1}\n" if "time" not in text else text))])
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("pelagos run: error:")
    import re

    assert re.search(match, err), err
    assert "Traceback" not in err


def test_unknown_keys_inside_method_and_observations(tmp_path):
    base = "model: {kind: lorenz63}\ntime: {duration: 1}\n"
    with pytest.raises(ConfigError, match=r"method\.max_iterr; did you mean 'max_iter'"):
        load_config(_cfg(tmp_path, base + "method: {kind: calibrate, max_iterr: 3}\n"))
    with pytest.raises(ConfigError, match=r"observations\.synthetic\.sigmaa; did you mean 'sigma'"):
        load_config(
            _cfg(tmp_path, base + "observations: {synthetic: {sigmaa: 5, patterns: [{variable: x}]}}\n")
        )
    with pytest.raises(ConfigError, match=r"method\.kind 'enkff' is not one of .*did you mean 'enkf'"):
        load_config(_cfg(tmp_path, base + "method: {kind: enkff}\n"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("bgc: {fabm_yaml: x.yaml}\nforcing: {file: f.nc}\n", r"model: \{kind: column, fabm_yaml: x\.yaml\}"),
        ("model: {factory: 'pelagos.models:Lorenz63'}\n", r"model: \{kind: lorenz63\}"),
        ("model: {type: QGModel, nx: 16}\n", r"model: \{kind: qg, \.\.\.\}"),
        ("model: {kind: lorenz96}\nmethod: enkf\n", r"method: \{kind: enkf, \.\.\.\}"),
        ("model: {kind: lorenz63}\nfree: [rho]\n", "top-level free: the old inverse format"),
        ("model: {kind: qg}\nrun: {years: 1}\n", r"time: \{duration: '2 years'\}"),
        ("model: {kind: qg}\noutput: {dir: out, name: q}\n", r"output: \{file: results/NAME\.nc\}"),
        ("model: {kind: column}\nnumerics: {dtype: float32}\n", r"model: \{dtype: float32\}"),
        ("model: {kind: column}\noutput: {progress: false}\n", "--no-progress"),
        ("model: {kind: column}\ninitial: {npzd_phy: 0.1}\n", r"initial: \{profiles: \{npzd_phy: 0\.1\}\}"),
    ],
)
def test_old_formats_say_how_to_migrate(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_cfg(tmp_path, text))


def test_set_overrides_are_validated_like_the_file(tmp_path):
    p = _cfg(tmp_path, L63)
    cfg = load_config(p, overrides=["time.dt=0.02", "parameters.rho=25", "model.dtype=float32"])
    assert cfg.time.dt == 0.02 and cfg.parameters == {"rho": 25} and cfg.dtype == "float32"
    cfg = load_config(p, overrides=["time.dt=1e-2", "parameters.rho=2.5e1"])  # YAML 1.1: strings
    assert cfg.time.dt == 0.01 and cfg.parameters == {"rho": 25.0}
    with pytest.raises(ConfigError, match=r"unknown key time\.dtt; did you mean 'dt'"):
        load_config(p, overrides=["time.dtt=1"])
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_config(p, overrides=["time.dt"])


def test_binary_and_non_utf8_configurations_give_one_line(tmp_path, capsys):
    b = tmp_path / "restart.pt"
    b.write_bytes(b"PK\x03\x04\x00\x00binary\xff\xfe")
    for cmd in ("run", "calibrate", "assimilate"):
        assert main([cmd, str(b)]) == 1
        err = capsys.readouterr().err
        assert "is not a YAML text file" in err and "Traceback" not in err
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("title: caf\xe9\n".encode("latin-1"))
    assert main(["run", str(latin)]) == 1
    assert "not UTF-8" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_ctrl_c_exits_130_with_a_message(tmp_path, monkeypatch, capsys):
    import pelagos.io.build as build

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "run", interrupted)
    assert main(["run", str(_cfg(tmp_path, L63))]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "rerun to resume" in err and "Traceback" not in err


def test_help_texts(capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    out = capsys.readouterr().out
    assert "observations:" in out and "\n  method:" in out  # the example block keeps its lines
    assert "--set SECTION.KEY=VALUE" in out and "--output PATH" in out and "--no-progress" in out
    with pytest.raises(SystemExit):
        main(["qg", "run", "--help"])
    out = capsys.readouterr().out
    assert "--restart" in out and "--fresh" in out and "train-closure" not in out
    with pytest.raises(SystemExit):
        main(["qg", "--help"])
    assert "train-closure" in capsys.readouterr().out


def test_durations():
    assert parse_duration("30 days", "x") == 30 * 86400
    assert parse_duration("2 years", "x") == 2 * 360 * 86400
    assert parse_duration(3600, "x") == 3600.0
    with pytest.raises(ConfigError, match="duration"):
        parse_duration("soon", "x")


def test_column_run_with_restart_and_fresh(tmp_path, capsys):
    cfg = _cfg(
        tmp_path,
        """
model: {kind: column, instances: {npzd: {model: gotm/npzd}}}
forcing: {file: builtin:nns_annual_22x5m.nc}
time: {start: "1998-04-01", stop: "1998-04-02", dt: 3600}
output: {interval: 6 h}
""",
    )
    out, rs = tmp_path / "col.nc", tmp_path / "col.restart.pt"
    args = ["run", str(cfg), "--output", str(out), "--restart", str(rs), "--no-progress"]
    assert main(args) == 0
    assert out.exists() and rs.exists()
    ds = xr.open_dataset(out)
    assert ds.sizes["time"] == 5 and "npzd_phy" in ds
    ds.close()
    assert main([*args, "--fresh"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out


def test_every_example_configuration_loads():
    from pathlib import Path

    from pelagos.hydro.experiment import EXTRA_SECTIONS as HYDRO_SECTIONS
    from pelagos.io.sda_run import EXTRA_SECTIONS as SDA_SECTIONS
    from pelagos.qg.config import hybrid_section

    examples = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))
    assert len(examples) >= 8
    for p in examples:
        if "instances" in yaml.safe_load(p.read_text()):  # a fabm.yaml a column config points to
            from pelagos.bgc.system import BGCSystem

            assert BGCSystem.from_yaml(p, drop_unsupported=True).interior_names, p
            continue
        # each command's own sections: pelagos hydro and pelagos sda both name sections `data` and `train`
        sections = (
            HYDRO_SECTIONS
            if p.name.startswith("hydro_")
            else SDA_SECTIONS
            if p.name.startswith("sda_")
            else {}
        )
        cfg = load_config(p, extra_sections={"hybrid": hybrid_section, **sections})
        assert cfg.kind.name in ("column", "qg", "lorenz63", "lorenz96", "hbv", "acc"), p
