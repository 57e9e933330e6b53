"""docs/adding_a_model.md's example (examples/my_model.py) runs end to end and its kind conforms."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from pelagos.core.registry import _registered
from test_conformance import check_model_kind

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_model.py"


def _load():
    spec = importlib.util.spec_from_file_location("pelagos_example_my_model", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_example_model_runs_gradchecks_calibrates_and_assimilates():
    mod = _load()
    try:
        out = mod.main(verbose=False)
        assert out["gradcheck"].passed, out["gradcheck"]
        cal = out["calibration"]
        assert abs(cal.estimates["mu"] - 1.2) < 4 * cal.std["mu"]
        assert abs(cal.estimates["m"] - 0.15) < 4 * cal.std["m"]
        assert out["err_enkf"] < 0.8 * out["err_free"]
        check_model_kind("np_box")  # the same conformance test as every built-in model
    finally:
        _registered.pop("np_box", None)
