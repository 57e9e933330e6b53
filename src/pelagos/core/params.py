"""Physical parameters: declaration with metadata, free/frozen selection, unconstrained transforms, priors.

A model declares each physical parameter once (name, units, default, bounds, description). The value is stored
*unconstrained* (``raw``) as an ``nn.Parameter``; the physical value is ``transform.forward(raw)``:

- no bounds            -> identity
- lower bound only     -> x = lo + exp(u)            ("log")
- both bounds          -> x = lo + (hi - lo) sigmoid(u) ("logit")
- upper bound only     -> x = hi - exp(u)

Optimisers therefore never leave the admissible range. A Gaussian prior N(mean, std²) can be attached in the
unconstrained space. A value is a scalar ``()`` or carries one leading batch dimension ``(B,)`` (one value per
column / ensemble member / basin); models broadcast it with :meth:`Model.param_b`.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from .errors import ConfigError


class Transform:
    """Map between unconstrained ``u`` and physical ``x``."""

    name = "identity"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class LowerBounded(Transform):
    lo: float
    name = "log"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.lo + torch.exp(u)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x - self.lo)


@dataclass(frozen=True)
class UpperBounded(Transform):
    hi: float
    name = "log-upper"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.hi - torch.exp(u)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.hi - x)


@dataclass(frozen=True)
class Interval(Transform):
    lo: float
    hi: float
    name = "logit"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.lo + (self.hi - self.lo) * torch.sigmoid(u)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        s = (x - self.lo) / (self.hi - self.lo)
        return torch.log(s) - torch.log1p(-s)


def make_transform(bounds: tuple[float | None, float | None], kind: str = "auto") -> Transform:
    """Choose the transform for ``bounds``; ``kind`` may force ``identity``."""
    lo, hi = bounds
    if kind == "identity" or (lo is None and hi is None):
        return Transform()
    if lo is not None and hi is not None:
        return Interval(float(lo), float(hi))
    if lo is not None:
        return LowerBounded(float(lo))
    return UpperBounded(float(hi))


@dataclass
class Prior:
    """Gaussian prior N(mean, std²) on the *unconstrained* value."""

    mean: float
    std: float

    def nll(self, u: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((u - self.mean) / self.std) ** 2


@dataclass
class ParameterSpec:
    """Metadata of one physical parameter."""

    name: str
    default: float
    units: str = "-"
    bounds: tuple[float | None, float | None] = (None, None)
    description: str = ""
    transform: Transform = field(default_factory=Transform)
    prior: Prior | None = None

    def check(self, value: torch.Tensor) -> None:
        lo, hi = self.bounds
        v = value.detach()
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ConfigError(
                f"parameter {self.name!r} value contains NaN/Inf; give a finite value in {self.units}"
            )
        # Bounds are open for log/logit transforms (the transform cannot reach them).
        open_ = not isinstance(self.transform, Transform) or self.transform.name != "identity"
        if lo is not None and bool((v < lo).any() or (open_ and (v <= lo).any())):
            raise ConfigError(
                f"parameter {self.name!r} = {float(v.min()):g} {self.units} is below its lower bound {lo:g}"
                f"; choose a value inside {self.bounds}"
            )
        if hi is not None and bool((v > hi).any() or (open_ and (v >= hi).any())):
            raise ConfigError(
                f"parameter {self.name!r} = {float(v.max()):g} {self.units} is above its upper bound {hi:g}"
                f"; choose a value inside {self.bounds}"
            )


class ParameterStore(torch.nn.Module):
    """Holds declared parameters of a model. Mixed into :class:`pelagos.core.Model`."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: dict[str, ParameterSpec] = {}
        self.raw = torch.nn.ParameterDict()
        self._override: dict[str, torch.Tensor] | None = None

    # -- declaration -------------------------------------------------------------------------------------
    def declare(
        self,
        name: str,
        default: float,
        *,
        units: str = "-",
        bounds: tuple[float | None, float | None] = (None, None),
        description: str = "",
        transform: str = "auto",
        dtype: torch.dtype | None = None,
    ) -> None:
        if name in self.specs:
            raise ConfigError(f"parameter {name!r} declared twice")
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(
                f"parameter name {name!r} must be a Python identifier (no dots: sub-model parameters get "
                "their dotted prefix from the module tree)"
            )
        lo, hi = bounds
        if lo is not None and hi is not None and not float(lo) < float(hi):
            raise ConfigError(f"parameter {name!r}: lower bound {lo} must be below upper bound {hi}")
        spec = ParameterSpec(
            name, float(default), units, bounds, description, make_transform(bounds, transform)
        )
        x = torch.as_tensor(float(default), dtype=dtype or torch.get_default_dtype())
        spec.check(x)
        self.specs[name] = spec
        self.raw[name] = torch.nn.Parameter(spec.transform.inverse(x), requires_grad=False)

    # -- values ------------------------------------------------------------------------------------------
    def _spec(self, name: str) -> ParameterSpec:
        if name not in self.specs:
            raise ConfigError(unknown_parameter_message(name, list(self.specs)))
        return self.specs[name]

    def value(self, name: str) -> torch.Tensor:
        spec = self._spec(name)
        u = self._override[name] if self._override is not None and name in self._override else self.raw[name]
        return spec.transform.forward(u)

    def set(self, name: str, value: float | torch.Tensor) -> None:
        spec = self._spec(name)
        p = self.raw[name]
        x = torch.as_tensor(value, dtype=p.dtype, device=p.device)
        spec.check(x)
        u = spec.transform.inverse(x)
        with torch.no_grad():
            if u.shape == p.shape:
                p.copy_(u)  # in place: optimisers and references holding ``p`` keep seeing it
            else:  # e.g. a batch of values (B,) replacing a scalar
                self.raw[name] = torch.nn.Parameter(u.clone(), requires_grad=p.requires_grad)

    def set_prior(self, name: str, mean: float | None = None, std: float = 1.0) -> None:
        """Gaussian prior in unconstrained space, centred on the physical ``mean`` (default: the default)."""
        spec = self._spec(name)
        m = spec.default if mean is None else mean
        if not (math.isfinite(std) and std > 0):
            raise ConfigError(
                f"prior of {name!r}: std must be finite and > 0 (unconstrained units); got {std!r}"
            )
        try:
            spec.check(torch.tensor(float(m), dtype=torch.float64))
        except ConfigError as err:
            raise ConfigError(f"prior mean of {name!r} is not admissible: {err}") from None
        spec.prior = Prior(
            float(spec.transform.inverse(torch.tensor(float(m), dtype=torch.float64))), float(std)
        )

    # -- free / frozen -----------------------------------------------------------------------------------
    def select_free(self, names: Iterable[str] | str | None) -> list[str]:
        """Make exactly ``names`` free (``requires_grad``), freeze everything else; ``"all"`` frees all."""
        if names == "all":
            names = list(self.specs)
        names = [] if names is None else [names] if isinstance(names, str) else list(names)
        for n in names:
            self._spec(n)
        for n, p in self.raw.items():
            p.requires_grad_(n in names)
        return self.free_names()

    def free_names(self) -> list[str]:
        return [n for n, p in self.raw.items() if p.requires_grad]

    @property
    def has_overrides(self) -> bool:
        """Whether :meth:`overriding` values are installed (cheap: hot paths ask this every step)."""
        return self._override is not None

    @property
    def active_overrides(self) -> Mapping[str, torch.Tensor] | None:
        """The installed overrides themselves (not a copy; ``None`` when none): read-only use in hot paths."""
        return self._override

    @property
    def overrides(self) -> dict[str, torch.Tensor]:
        """The unconstrained values installed by :meth:`overriding` (a copy; ``{}`` when none)."""
        return dict(self._override or {})

    @contextlib.contextmanager
    def replacing_overrides(self, raw_values: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Install exactly these overrides (``{}``: none) for the block, then restore the previous ones."""
        for n in raw_values:
            self._spec(n)
        old = self._override
        self._override = dict(raw_values) or None
        try:
            yield
        finally:
            self._override = old

    @contextlib.contextmanager
    def overriding(self, raw_values: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Temporarily use these unconstrained values (e.g. a batch ``(Ne,)`` each); pure, no copy."""
        for n in raw_values:
            self._spec(n)
        old = self._override
        self._override = {**(old or {}), **raw_values}
        try:
            yield
        finally:
            self._override = old

    # -- reporting ---------------------------------------------------------------------------------------
    def table_rows(self, prefix: str = "") -> list[dict]:
        rows = []
        for n, spec in self.specs.items():
            v = self.value(n).detach()
            rows.append(
                {
                    "name": prefix + n,
                    "value": float(v) if v.numel() == 1 else v.tolist(),
                    "default": spec.default,
                    "units": spec.units,
                    "bounds": spec.bounds,
                    "transform": spec.transform.name,
                    "free": self.raw[n].requires_grad,
                    "description": spec.description,
                }
            )
        return rows


def unknown_parameter_message(name: str, valid: list[str]) -> str:
    """``unknown parameter 'x'; did you mean 'y'? valid: ...`` (the hint only when a name is close)."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return f"unknown parameter {name!r}{hint} valid: {', '.join(valid)}"


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of parameter rows (as from ``Model.parameters_table(as_rows=True)``)."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.6g}" if math.isfinite(v) else str(v)
        if isinstance(v, tuple):
            return "(" + ", ".join("-" if b is None else f"{b:g}" for b in v) + ")"
        if isinstance(v, list):
            return f"[{len(v)} values]"
        return str(v)

    cols = ["name", "value", "units", "bounds", "free", "description"]
    cells = [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(out)
