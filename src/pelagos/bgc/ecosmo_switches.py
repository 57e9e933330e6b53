"""Hard (FABM-exact) or smooth switches for ECOSMO: Liebig minima, thresholds, oxic/anoxic branches.

One :class:`Switches` object decides, for a whole model, whether ``min``/``max``/threshold steps are the exact
FABM ones (``smooth=False``: value identical to the Fortran, derivative 0 across a step, one-sided at a kink)
or C∞ replacements (``smooth=True``) so that gradients exist everywhere:

- ``min(x1..xn) ≈ −w·log Σ exp(−xi/w)`` and ``max(x1..xn) ≈ w·log Σ exp(xi/w)`` (log-sum-exp, stable for ±inf
  arguments); they differ from the hard value by at most ``w·log(n)`` (at ties) and by an exponentially small
  amount away from them;
- ``step(x, x0) ≈ sigmoid((x − x0)/w)`` (exactly 1/2 at the threshold, 10–90 % rise over ``4.4·w``),
  :func:`pelagos.core.safe.smooth_step`.

The width is ``w = scale / sharpness``: ``sharpness`` is one dimensionless number for the model, ``scale`` a
characteristic magnitude per kind of switch (its units are those of the switched quantity), listed in
:data:`DEFAULT_SCALES` and overridable. As ``sharpness → ∞`` every smooth switch converges to the hard one at
points away from its threshold.

The log-sum-exp form is the same function as :func:`pelagos.core.safe.smooth_min`/``smooth_max`` (``b +
softplus(a − b) = log(eᵃ + eᵇ)``) written without the cancellation ``(x − lo) − (x − hi)`` those show for very
large or infinite arguments (the Chl:C ratio is infinite at PAR = 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce

import torch

from ..core.errors import ConfigError
from ..core.safe import smooth_step

# Characteristic magnitudes (width = scale / sharpness) of each kind of switch, in the units of the switched
# quantity. ECOSMO carries biomass and nutrients in mgC m-3 (C-equivalents).
DEFAULT_SCALES: dict[str, float] = {
    "limitation": 1.0,  # dimensionless Liebig minima, min(1, 100 τ²), Chl:C floor max(0.01, P)
    "silicate": 1.0,  # mgC m-3: max(Si − 80, 0)
    "loss_phyto": 0.1,  # mgC m-3: anti-extinction switches of fla, dia, bg (threshold 0.1)
    "loss_zoo": 0.01,  # mgC m-3: anti-extinction switches of micro-, mesozooplankton (threshold 0.01)
    "oxygen": 1.0,  # mmol O2 m-3: oxic / anoxic branches (O2 > 0)
    "nitrate": 1.0,  # mgC m-3: denitrification / O2 debt branch (NO3 > 0)
    "salinity": 1.0,  # PSU: cyanobacteria grow only for S ≤ 10
    "par": 1.0,  # W m-2: daily-mean light thresholds of cyanobacteria growth and N fixation
    "bottom_stress": 1.0e-3,  # N m-2: resuspension when τ_b ≥ crBotStr
    "chl2c": 1.0,  # mgC mgChl-1: clamp of the C:Chl ratio (the inverse Chl:C) to its bounds
}


class Switches:
    """Switch primitives shared by all ECOSMO processes (see module docstring)."""

    def __init__(
        self,
        smooth: bool = False,
        sharpness: float = 100.0,
        scales: dict[str, float] | None = None,
        only: Iterable[str] | None = None,
    ):
        if not (isinstance(sharpness, int | float) and sharpness > 0):
            raise ConfigError(f"ECOSMO: sharpness must be a positive number; got {sharpness!r}")
        unknown = set(scales or {}) - set(DEFAULT_SCALES)
        if unknown:
            raise ConfigError(
                f"ECOSMO: unknown switch scale(s) {sorted(unknown)}; valid kinds: {', '.join(DEFAULT_SCALES)}"
            )
        only_set = set(DEFAULT_SCALES) if only is None else set(only)
        bad = only_set - set(DEFAULT_SCALES)
        if bad:
            raise ConfigError(
                f"ECOSMO: unknown switch kind(s) {sorted(bad)} in smooth_only; valid kinds: "
                f"{', '.join(DEFAULT_SCALES)}"
            )
        self.smooth = bool(smooth)
        # the kinds made smooth (all by default when smooth; none when not)
        self.smooth_kinds = frozenset(only_set) if self.smooth else frozenset()
        self.sharpness = float(sharpness)
        self.scales = {**DEFAULT_SCALES, **(scales or {})}
        for k, v in self.scales.items():
            if not v > 0:
                raise ConfigError(f"ECOSMO: switch scale {k!r} must be > 0; got {v!r}")

    def width(self, kind: str) -> float:
        return self.scales[kind] / self.sharpness

    @staticmethod
    def _tensors(xs: tuple) -> list[torch.Tensor]:
        ref = next(x for x in xs if torch.is_tensor(x))
        return [
            x if torch.is_tensor(x) else torch.as_tensor(x, dtype=ref.dtype, device=ref.device) for x in xs
        ]

    def min(self, *xs: torch.Tensor | float, kind: str = "limitation") -> torch.Tensor:
        ts = self._tensors(xs)
        if kind not in self.smooth_kinds:
            return reduce(torch.minimum, ts)
        w = self.width(kind)
        return -w * torch.logsumexp(torch.stack(torch.broadcast_tensors(*ts)) / -w, dim=0)

    def max(self, *xs: torch.Tensor | float, kind: str = "limitation") -> torch.Tensor:
        ts = self._tensors(xs)
        if kind not in self.smooth_kinds:
            return reduce(torch.maximum, ts)
        w = self.width(kind)
        return w * torch.logsumexp(torch.stack(torch.broadcast_tensors(*ts)) / w, dim=0)

    def step(self, x: torch.Tensor, x0: float | torch.Tensor, kind: str, *, inclusive: bool) -> torch.Tensor:
        """Heaviside ``x ≥ x0`` (``inclusive``) or ``x > x0`` as 0./1. of x's dtype, or its smooth version."""
        if kind not in self.smooth_kinds:
            hit = (x >= x0) if inclusive else (x > x0)
            return hit.to(x.dtype)
        return smooth_step(x, 1.0 / self.width(kind), x0)
