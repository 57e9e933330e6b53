"""Error hierarchy and input-validation helpers.

Every error names the offending thing (variable, file, parameter), what was wrong with it and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


class PelagosError(Exception):
    """Base class of every error pelagos raises on purpose."""


class ConfigError(PelagosError, ValueError):
    """A configuration (YAML, keyword arguments) is invalid: unknown key, missing entry, wrong type."""


class ForcingError(PelagosError, ValueError):
    """Forcing data is missing, malformed, contains NaN, or does not cover the run."""


class StabilityError(PelagosError, RuntimeError):
    """A numerical stability limit is exceeded (Courant number, CFL) or the state became non-finite."""


class ShapeError(PelagosError, ValueError):
    """Tensors have incompatible shapes."""


class SolverError(PelagosError, RuntimeError):
    """A linear or nonlinear solve failed (zero pivot, no convergence)."""


class ObservationError(PelagosError, ValueError):
    """Observations are invalid: unknown variable, time outside the run, negative sigma."""


def check_finite(name: str, x: torch.Tensor, *, fix: str = "") -> torch.Tensor:
    """Raise ``ForcingError`` if ``x`` holds NaN or Inf, naming ``name`` and the first bad index."""
    if not torch.is_tensor(x):
        x = torch.as_tensor(x)
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = torch.nonzero(~torch.isfinite(x))[0].tolist()
        hint = f" {fix}" if fix else ""
        raise ForcingError(
            f"{name} contains NaN/Inf (first at index {tuple(bad)}, shape {tuple(x.shape)}).{hint}"
        )
    return x


def check_positive(name: str, x: torch.Tensor | float, *, strict: bool = True, fix: str = "") -> None:
    """Raise ``ValueError``-type ``PelagosError`` if ``x`` is not (strictly) positive everywhere."""
    t = torch.as_tensor(x)
    bad = (t <= 0) if strict else (t < 0)
    if bool(bad.any()):
        what = "> 0" if strict else ">= 0"
        vmin = float(t.min())
        hint = f" {fix}" if fix else ""
        raise ConfigError(f"{name} must be {what} everywhere; got minimum {vmin:g}.{hint}")


def check_shape(name: str, x: torch.Tensor, expected: Sequence[int | None], *, fix: str = "") -> None:
    """Check ``x.shape`` against ``expected`` (``None`` = any size); leading dims may be extra batch dims."""
    shape = tuple(x.shape)
    k = len(expected)
    tail = shape[-k:] if k else ()
    ok = len(shape) >= k and all(e is None or e == s for e, s in zip(expected, tail))
    if not ok:
        exp = tuple("*" if e is None else e for e in expected)
        hint = f" {fix}" if fix else ""
        raise ShapeError(f"{name} has shape {shape}; expected (..., {', '.join(map(str, exp))}).{hint}")


def check_choice(name: str, value: str, valid: Iterable[str]) -> str:
    """Raise ``ConfigError`` if ``value`` is not one of ``valid``, listing the valid ones."""
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(map(repr, valid))}")
    return value


class Interrupted(PelagosError):  # noqa: N818 - the name says what happened; it is not a failure
    """A run was stopped by Ctrl-C (``KeyboardInterrupt``): the output written so far and the restart are
    valid.

    Raised by :class:`pelagos.core.simulation.Simulation` (from the ``KeyboardInterrupt``); the command line
    prints its message and exits with status 130. ``t`` / ``step``: model time and step of the last completed
    output (where a rerun resumes).
    """

    def __init__(self, message: str, *, t: float | None = None, step: int | None = None) -> None:
        super().__init__(message)
        self.t = t
        self.step = step
