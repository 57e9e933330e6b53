"""FABM-style base class for biogeochemical models.

A model declares, in ``__init__``:

- state variables (:meth:`BGCModel.register_state_variable`): units, initial value, minimum, constant
  vertical movement (m s-1, negative = sinking), specific light extinction, membership of conserved
  quantities (e.g. ``conserved={"total_nitrogen": 1.0}``), and whether it lives in the interior, at the
  bottom or surface;
- parameters (:meth:`BGCModel.register_parameter`): value in the *yaml units* (e.g. d-1) plus a
  ``scale_factor`` to SI (e.g. 1/86400); these are ``pelagos.core`` parameters, so they can be made free;
- dependencies on standard environment variables (:meth:`BGCModel.register_dependency`), optionally as a
  running temporal mean;
- state dependencies (links to other instances' variables, resolved by fabm.yaml ``coupling:``);
- diagnostics (:meth:`BGCModel.register_diagnostic_variable`);
- structural options (:meth:`BGCModel.register_option`: booleans/integers/strings such as ``use_chl``; not
  calibratable), which decide what gets registered.

Configuration (the ``parameters:`` block of a fabm.yaml instance) reaches the model *during* ``__init__``,
as in FABM's ``get_parameter``: build a configured model with ``Model.from_config({"rmax": 2.0})``; then
``register_parameter``/``register_option`` return/set the configured value instead of the default, and any key
the model never asked for is reported by :meth:`BGCModel.unused_config` (the yaml reader turns that into a
``ConfigError`` with suggestions). ``Model()`` alone gives the defaults.

and implements pure process functions. All rates are per second (SI), per m3 for interior variables and per m2
for surface/bottom fluxes. Tensors:

- ``s`` (state view): ``{local name: tensor}``; interior variables have shape ``(..., nz)`` (``nz = 1`` for a
  box), bottom/surface variables shape ``(...,)``. State dependencies appear under their local name.
- ``env``: ``{standard name: tensor}``; interior quantities ``(..., nz)``, horizontal ones ``(...,)``,
  global ones scalars. A temporal mean is under ``f"{standard_name}@mean{period_seconds}"``
  (see :func:`mean_key`).

Optional :meth:`BGCModel.do_ppdd` returns the same interior sources as production/destruction *transfers*
``{(source, destination): rate}`` (local names, rate >= 0, ``None`` for "outside the system") for
positivity-preserving Patankar integrators (Burchard et al. 2003).

Process functions return dicts keyed by local names (own state variables or state dependencies — a source on
a state dependency is a source on the linked variable of another instance). The host (box or column driver)
decides how to integrate and transport; the model never does.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..core.errors import ConfigError
from ..core.model import Model

Domain = Literal["interior", "bottom", "surface"]
DepDomain = Literal["interior", "horizontal", "global"]

# FABM standard variable names pelagos hosts know how to provide.
STANDARD_VARIABLES = {
    "temperature": ("degC", "interior"),
    "practical_salinity": ("PSU", "interior"),
    "density": ("kg m-3", "interior"),
    "pressure": ("dbar", "interior"),
    "cell_thickness": ("m", "interior"),
    "depth": ("m", "interior"),
    "downwelling_photosynthetic_radiative_flux": ("W m-2", "interior"),
    "downwelling_shortwave_flux": ("W m-2", "interior"),
    "attenuation_coefficient_of_photosynthetic_radiative_flux": ("m-1", "interior"),
    "surface_downwelling_photosynthetic_radiative_flux": ("W m-2", "horizontal"),
    "surface_downwelling_shortwave_flux": ("W m-2", "horizontal"),
    "bottom_stress": ("Pa", "horizontal"),
    "bottom_depth": ("m", "horizontal"),
    "wind_speed": ("m s-1", "horizontal"),
    "latitude": ("degree_north", "horizontal"),
    "longitude": ("degree_east", "horizontal"),
    "number_of_days_since_start_of_the_year": ("d", "global"),
}


def mean_key(standard_name: str, period: float) -> str:
    """Key under which a host provides the running mean of ``standard_name`` over ``period`` seconds."""
    return f"{standard_name}@mean{int(period)}"


@dataclass
class StateVariable:
    name: str
    units: str
    long_name: str = ""
    initial_value: float = 0.0
    minimum: float | None = 0.0
    maximum: float | None = None
    vertical_movement: float = 0.0  # m s-1, positive up (negative = sinking)
    specific_light_extinction: float = 0.0  # m-1 per unit concentration
    domain: Domain = "interior"
    conserved: dict[str, float] = field(
        default_factory=dict
    )  # quantity -> factor (units of quantity per unit)
    no_river_dilution: bool = False
    no_precipitation_dilution: bool = False


@dataclass
class Dependency:
    name: str
    standard_name: str
    units: str = ""
    domain: DepDomain = "interior"
    required: bool = True
    mean_period: float | None = None  # seconds: a running temporal mean instead of the instantaneous value
    mean_resolution: float | None = None  # seconds between samples of that mean

    @property
    def key(self) -> str:
        return (
            self.standard_name if self.mean_period is None else mean_key(self.standard_name, self.mean_period)
        )


@dataclass
class StateDependency:
    name: str
    units: str = ""
    long_name: str = ""
    required: bool = True
    domain: Domain = "interior"


@dataclass
class DiagnosticVariable:
    name: str
    units: str
    long_name: str = ""
    domain: DepDomain = "interior"


# Configuration (and parameter dtype) handed to the next BGCModel being constructed (BGCModel.from_config).
_PENDING_CONFIG: list[dict[str, Any]] = []
_PENDING_DTYPE: list[torch.dtype | None] = []


@contextlib.contextmanager
def configuring(parameters: Mapping[str, Any] | None, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Within this block, the next :class:`BGCModel` constructed reads ``parameters`` as its configuration
    and stores its parameters in ``dtype`` (default: torch's default dtype)."""
    _PENDING_CONFIG.append(dict(parameters or {}))
    _PENDING_DTYPE.append(dtype)
    try:
        yield
    finally:
        _PENDING_CONFIG.pop()
        _PENDING_DTYPE.pop()


def close_matches(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for a near-miss of ``name`` among ``valid``, else ``""``."""
    m = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
    if not m:
        lower = {v.lower(): v for v in valid}
        m = [lower[name.lower()]] if name.lower() in lower else []
    return f" (did you mean {' or '.join(repr(x) for x in m)}?)" if m else ""


class BGCModel(Model):
    """Base class of FABM-style biogeochemical models (see module docstring for the contract).

    Subclasses set ``fabm_name`` (e.g. ``"gotm/npzd"``) and register everything in ``__init__``.
    """

    fabm_name: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.state_variables: dict[str, StateVariable] = {}
        self.dependencies: dict[str, Dependency] = {}
        self.state_dependencies: dict[str, StateDependency] = {}
        self.diagnostic_variables: dict[str, DiagnosticVariable] = {}
        self.scale_factors: dict[str, float] = {}
        self.option_values: dict[str, Any] = {}  # structural options (register_option)
        self.instance_name: str = ""  # set by BGCSystem
        # Configuration (yaml "parameters:") this model is being built with; entries are ticked off as read.
        # FABM matches parameter names case-insensitively (fabm.yaml files write "A" for gotm/light's "a").
        self._config: dict[str, Any] = dict(_PENDING_CONFIG[-1]) if _PENDING_CONFIG else {}
        self._param_dtype: torch.dtype | None = _PENDING_DTYPE[-1] if _PENDING_DTYPE else None
        self._config_used: set[str] = set()

    def _config_key(self, name: str) -> str | None:
        """The configuration key that sets ``name`` (case-insensitive), ticked off as read; None if absent."""
        for k in self._config:
            if k.lower() == name.lower():
                self._config_used.add(k)
                return k
        return None

    @classmethod
    def from_config(
        cls, parameters: Mapping[str, Any] | None = None, *, dtype: torch.dtype | None = None, **kwargs: Any
    ) -> BGCModel:
        """Build the model with these yaml-unit parameter/option values (FABM ``get_parameter`` semantics).

        Keys naming a keyword argument of the constructor (case-insensitive) are passed to it (structural
        switches such as ECOSMO's ``use_chl``); the others are read by ``register_parameter`` and
        ``register_option``.
        Raises ``ConfigError`` naming any key the model does not know (with close matches).
        """
        ctor = cls._constructor_options()
        config: dict[str, Any] = {}
        kw: dict[str, Any] = {}
        for k, v in (parameters or {}).items():
            if k.lower() in ctor:
                kw[ctor[k.lower()]] = v
            else:
                config[k] = v
        kw.update(kwargs)
        with configuring(config, dtype):
            model = cls(**kw)
        unused = model.unused_config()
        if unused:
            valid = model.configurable_names()
            msgs = [f"{k!r}{close_matches(k, valid)}" for k in unused]
            raise ConfigError(
                f"model {cls.fabm_name or cls.__name__!r} has no parameter(s) {', '.join(msgs)}; "
                f"valid: {', '.join(valid) or '(none)'}"
            )
        return model

    def unused_config(self) -> list[str]:
        """Configuration keys given to this model that it never read (i.e. unknown parameters)."""
        return [k for k in self._config if k not in self._config_used]

    @classmethod
    def _constructor_options(cls) -> dict[str, str]:
        """{lower-case name: name} of the constructor's keyword arguments."""
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = inspect.signature(cls.__init__).parameters.values()
        return {p.name.lower(): p.name for p in params if p.kind in kinds and p.name != "self"}

    def configurable_names(self) -> list[str]:
        """Names accepted in the yaml ``parameters:`` block: parameters, options, constructor switches."""
        return [*self.params.specs, *self.option_values, *self._constructor_options().values()]

    # -- registration ------------------------------------------------------------------------------------
    def register_state_variable(self, name: str, units: str, long_name: str = "", **kw) -> StateVariable:
        self._check_new(name)
        var = StateVariable(name, units, long_name, **kw)
        self.state_variables[name] = var
        return var

    def register_parameter(
        self,
        name: str,
        default: float,
        units: str = "-",
        long_name: str = "",
        *,
        scale_factor: float = 1.0,
        minimum: float | None = None,
        maximum: float | None = None,
        transform: str = "auto",
    ) -> float:
        """Declare a parameter in yaml units; :meth:`p` returns it times ``scale_factor`` (SI).

        If the model is being built from configuration holding ``name``, that value is used (the declared
        ``default`` stays the FABM default shown in tables). Returns the value in yaml units.
        """
        self.declare_parameter(
            name,
            default,
            units=units,
            bounds=(minimum, maximum),
            description=long_name,
            transform=transform,
            dtype=self._param_dtype,
        )
        self.scale_factors[name] = float(scale_factor)
        key = self._config_key(name)
        if key is not None:
            value = self._config[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(
                    f"parameter {name!r} of {self.fabm_name or type(self).__name__} must be a number "
                    f"({units}); got {value!r}"
                )
            if float(value) in (minimum, maximum) and transform == "auto":
                # A value exactly on a bound (e.g. a rate switched off with 0) cannot be written through the
                # log/logit transform: keep it with an identity transform (still checked against the bounds).
                del self.params.specs[name]
                del self.params.raw[name]
                self.declare_parameter(
                    name,
                    default,
                    units=units,
                    bounds=(minimum, maximum),
                    description=long_name,
                    transform="identity",
                    dtype=self._param_dtype,
                )
            self.params.set(name, float(value))
            return float(value)
        return float(default)

    def register_option(self, name: str, default: Any, long_name: str = "", *, choices: Any = None) -> Any:
        """Declare a structural option (bool/int/str; not calibratable) and return its configured value."""
        if name in self.option_values or name in self.params.specs:
            raise ConfigError(f"{type(self).__name__}: option {name!r} registered twice")
        value = default
        key = self._config_key(name)
        if key is not None:
            value = self._config[key]
            kind = type(default)
            ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise ConfigError(
                    f"option {name!r} of {self.fabm_name or type(self).__name__} must be a {kind.__name__}; "
                    f"got {value!r}"
                )
            if choices is not None and value not in choices:
                raise ConfigError(f"option {name!r} = {value!r} is not one of {list(choices)}")
        self.option_values[name] = value
        return value

    def register_dependency(
        self,
        name: str,
        standard_name: str,
        units: str = "",
        domain: DepDomain | None = None,
        *,
        required: bool = True,
        mean_period: float | None = None,
        mean_resolution: float | None = None,
    ) -> Dependency:
        if domain is None:
            if standard_name not in STANDARD_VARIABLES:
                raise ConfigError(
                    f"dependency {name!r}: give a domain for non-standard variable {standard_name!r}"
                )
            domain = STANDARD_VARIABLES[standard_name][1]  # type: ignore[assignment]
        dep = Dependency(name, standard_name, units, domain, required, mean_period, mean_resolution)
        self.dependencies[name] = dep
        return dep

    def register_state_dependency(
        self, name: str, units: str = "", long_name: str = "", **kw
    ) -> StateDependency:
        self._check_new(name)
        sd = StateDependency(name, units, long_name, **kw)
        self.state_dependencies[name] = sd
        return sd

    def register_diagnostic_variable(
        self, name: str, units: str, long_name: str = "", domain: DepDomain = "interior"
    ) -> DiagnosticVariable:
        d = DiagnosticVariable(name, units, long_name, domain)
        self.diagnostic_variables[name] = d
        return d

    def _check_new(self, name: str) -> None:
        if name in self.state_variables or name in self.state_dependencies:
            raise ConfigError(f"{type(self).__name__}: variable {name!r} registered twice")

    # -- parameter access --------------------------------------------------------------------------------
    def p(self, name: str, ndim: int = 0) -> torch.Tensor:
        """Parameter in SI units (value × scale_factor); ``ndim`` as in :meth:`Model.param_b`.

        Without autograd (``torch.no_grad``, e.g. a plain forward run) the value is cached until the
        unconstrained tensor is replaced or modified in place; with autograd it is recomputed every call so
        that every graph, jvp or vmap sees its own parameter tensors.
        """
        if torch.is_grad_enabled() or torch.compiler.is_compiling():  # traced: the value joins the graph
            v = self.param_b(name, ndim) if ndim else self.param(name)
            return v * self.scale_factors[name]
        store = self.__dict__.get("_store_ref")
        if store is None:
            store = self.__dict__["_store_ref"] = self.params
        ov = store.active_overrides
        u = ov[name] if ov is not None and name in ov else store.raw._parameters[name]
        cache = self.__dict__.setdefault("_p_cache", {})
        # .to()/.double() swap a parameter's .data without bumping its version: key on the storage too.
        sig = (u._version, u.data_ptr(), u.dtype, u.device)
        hit = cache.get((name, ndim))
        if hit is not None and hit[0] is u and hit[1] == sig:
            return hit[2]
        v = self.param_b(name, ndim) if ndim else self.param(name)
        v = v * self.scale_factors[name]
        cache[(name, ndim)] = (u, sig, v)
        return v

    # -- processes (override) ----------------------------------------------------------------------------
    def do(
        self, s: dict[str, torch.Tensor], env: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Interior sources (units s-1 · state units) and interior diagnostics."""
        return {}, {}

    def do_surface(
        self, s: dict[str, torch.Tensor], env: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Surface fluxes into the water (per m2 per s; positive = into the water) and surface diagnostics.

        Interior variables receive these in the top cell (divided by its thickness); surface-attached
        variables receive them as their own sources.
        """
        return {}, {}

    def do_bottom(
        self, s: dict[str, torch.Tensor], env: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Bottom fluxes into the water (per m2 per s) and bottom-state sources; bottom diagnostics.

        In ``s`` and ``env``, interior quantities are given at the bottom cell only, shape ``(...,)``.
        """
        return {}, {}

    def do_ppdd(
        self, s: dict[str, torch.Tensor], env: dict[str, torch.Tensor]
    ) -> tuple[dict[tuple[str | None, str | None], torch.Tensor], dict[str, torch.Tensor]] | None:
        """Interior sources as production/destruction transfers, or None if the model does not provide them.

        Returns ``({(source, destination): rate}, diagnostics)``: each rate (>= 0, state units per s) moves
        matter from local variable ``source`` to ``destination``; ``None`` as source means production from
        outside the system (e.g. DIC not modelled), as destination a loss to outside. The net of all transfers
        must equal :meth:`do`.
        """
        return None

    def vertical_movement(
        self, s: dict[str, torch.Tensor], env: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Vertical velocity of interior variables (m s-1, positive up); default: the registered constants."""
        ref = next(iter(s.values()), None)
        out: dict[str, torch.Tensor] = {}
        if ref is None:  # a model without state (e.g. gotm/light) moves nothing
            return out
        for n, v in self.state_variables.items():
            if v.domain == "interior" and v.vertical_movement != 0.0:
                out[n] = torch.full_like(s.get(n, ref), v.vertical_movement)
        return out

    def light_extinction(
        self, s: dict[str, torch.Tensor], env: dict[str, torch.Tensor]
    ) -> torch.Tensor | None:
        """This model's contribution to the PAR attenuation coefficient (m-1), or None.

        Default: Σ specific_light_extinction × concentration. Override to add constant background terms.
        """
        total = None
        for n, v in self.state_variables.items():
            if v.domain == "interior" and v.specific_light_extinction != 0.0:
                term = v.specific_light_extinction * s[n]
                total = term if total is None else total + term
        return total

    def conserved_quantities(self, s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-cell contributions to conserved quantities (e.g. total_nitrogen) from own state variables."""
        out: dict[str, torch.Tensor] = {}
        for n, v in self.state_variables.items():
            for q, f in v.conserved.items():
                out[q] = out.get(q, 0.0) + f * s[n]
        return out
