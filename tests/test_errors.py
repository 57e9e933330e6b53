"""Error hierarchy and validation helpers: right class, and a message that names the thing, the value/shape
and the fix."""

from __future__ import annotations

import pytest
import torch

from pelagos.core import (
    ConfigError,
    ForcingError,
    ObservationError,
    PelagosError,
    ShapeError,
    SolverError,
    StabilityError,
)
from pelagos.core.errors import check_choice, check_finite, check_positive, check_shape


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (ConfigError, ValueError),
        (ForcingError, ValueError),
        (ShapeError, ValueError),
        (ObservationError, ValueError),
        (StabilityError, RuntimeError),
        (SolverError, RuntimeError),
    ],
)
def test_hierarchy(cls, builtin):
    assert issubclass(cls, PelagosError) and issubclass(cls, builtin)
    with pytest.raises(builtin):  # callers catching the builtin class still catch ours
        raise cls("x")


def test_check_finite_names_first_bad_index():
    x = torch.zeros(3, 4)
    assert check_finite("temp", x) is x
    x[1, 2] = float("nan")
    x[2, 0] = float("inf")
    with pytest.raises(
        ForcingError, match=r"temp contains NaN/Inf \(first at index \(1, 2\), shape \(3, 4\)\)"
    ):
        check_finite("temp", x, fix="fill gaps first")
    with pytest.raises(ForcingError, match="fill gaps first"):
        check_finite("temp", x, fix="fill gaps first")
    check_finite("ints", torch.arange(3))  # integer tensors are always finite
    check_finite("list", [1.0, 2.0])


def test_check_positive():
    check_positive("h", torch.tensor([1.0, 2.0]))
    check_positive("nu", 0.0, strict=False)
    with pytest.raises(ConfigError, match=r"h must be > 0 everywhere; got minimum 0\."):
        check_positive("h", torch.tensor([1.0, 0.0]), fix="layer thicknesses must be positive.")
    with pytest.raises(ConfigError, match=">= 0 everywhere; got minimum -2"):
        check_positive("nu", torch.tensor([-2.0, 1.0]), strict=False)


def test_check_shape():
    x = torch.zeros(5, 3, 30)
    check_shape("T", x, (30,))
    check_shape("T", x, (None, 30))
    check_shape("T", x, (5, 3, 30))
    with pytest.raises(ShapeError, match=r"T has shape \(5, 3, 30\); expected \(\.\.\., 31\)\. use nlev"):
        check_shape("T", x, (31,), fix="use nlev")
    with pytest.raises(ShapeError, match=r"expected \(\.\.\., \*, 2, 30\)"):
        check_shape("T", x, (None, 2, 30))
    with pytest.raises(ShapeError):
        check_shape("T", torch.zeros(30), (2, 30))  # too few dims


def test_check_choice():
    assert check_choice("scheme", "tvd", ["upwind", "tvd"]) == "tvd"
    with pytest.raises(ConfigError, match="unknown scheme 'tdv'; valid: 'upwind', 'tvd'"):
        check_choice("scheme", "tdv", ["upwind", "tvd"])


def test_cli_reports_pelagos_errors_without_traceback(capsys):
    from pelagos.cli import main

    assert main(["gradcheck", "--model", "nope"]) == 1
    err = capsys.readouterr().err
    assert "pelagos gradcheck: error: unknown model 'nope'" in err and "Traceback" not in err
