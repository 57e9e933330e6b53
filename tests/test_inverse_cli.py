"""`pelagos calibrate` / `pelagos assimilate` generic drivers on Lorenz twins; configuration errors."""

from __future__ import annotations

import json

import pytest

from pelagos.cli import main


def _cfg(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_calibrate_cli_twin(tmp_path, capsys):
    out = tmp_path / "res.json"
    cfg = _cfg(
        tmp_path,
        f"""
model: {{factory: "pelagos.models:Lorenz63"}}
observations: {{synthetic: {{n: 8, every: 5, sigma: 0.5, seed: 1}}}}
free: [rho]
priors: {{rho: {{mean: 25.0, std: 0.5}}}}
optimizer: {{name: lbfgs, max_iter: 50}}
output: {out}
""",
    )
    assert main(["calibrate", str(cfg)]) == 0
    d = json.loads(out.read_text())
    assert abs(d["estimates"]["rho"] - 28.0) < 3 * d["std"]["rho"]
    assert d["std"]["rho"] < 0.1 * 25.0 * 0.5  # far below the prior std (≈ 12.5 in physical units)
    assert d["initial"]["rho"] == pytest.approx(25.0)


def test_assimilate_cli_enkf(tmp_path):
    out = tmp_path / "a.json"
    cfg = _cfg(
        tmp_path,
        f"""
model: {{factory: "pelagos.models:Lorenz96", args: {{nx: 10}}}}
observations: {{synthetic: {{n: 40, every: 1, sigma: 1.0}}}}
method: enkf
ensemble: {{N: 10, infl: 1.05, spread: 1.0}}
output: {out}
""",
    )
    assert main(["assimilate", str(cfg)]) == 0
    d = json.loads(out.read_text())
    assert len(d["spread"]) == 40 and 0 < d["spread"][-1] < 1.5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("model: {factory: 'pelagos.models:Nope'}\n", "cannot be imported"),
        ("modle: {}\n", "unknown key"),
        ("model: {factory: 'pelagos.models:Lorenz63'}\nobservations: {file: x.csv}\n", "start"),
        (
            "model: {factory: 'pelagos.models:Lorenz63'}\nobservations: {synthetic: {n: 3}}\nfree: [gamma]\n",
            "unknown parameter 'gamma'",
        ),
    ],
)
def test_bad_configs_give_clear_errors(tmp_path, capsys, text, match):
    assert main(["calibrate", str(_cfg(tmp_path, text))]) == 1
    assert match in capsys.readouterr().err
