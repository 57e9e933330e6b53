"""The one configuration loader of pelagos: every command, every model, one strict mechanism.

A configuration is a YAML mapping with these sections (all optional except ``model``; docs/running.md lists
every key)::

    title: free text
    model:        {kind: column | qg | lorenz96 | ..., dtype: float64, <the kind's options>}
    forcing:      {<the kind's forcing options>}
    time:         {start, stop | duration, dt}
    numerics:     {<the kind's numerics options>}
    parameters:   {name: physical value, ...}
    initial:      {batch: N, restart: spinup.restart.pt, <the kind's initial-state options>}
    observations: {file: obs.csv, log: false} | {synthetic: {...}}
    method:       {kind: calibrate | 4dvar | weak4dvar | enkf | letkf | esmda, <its options>}
    output:       {file, interval, precision, variables}
    restart:      {file, every}

**The choice: dataclasses and one strict loader** (:func:`from_mapping`), not pydantic. Every section is a
dataclass; a model kind (:mod:`pelagos.core.registry`) brings the dataclasses of its own sections (``model``
options, ``forcing``, ``numerics``, ``initial``), so a new model declares its configuration in the module
that defines it, with no second schema language and no new dependency. The loader rejects unknown keys
everywhere with a "did you mean", checks types (int/float/str/bool/list/dict/Literal/nested dataclasses),
reports a missing required key by its dotted name, and calls a dataclass's ``validate()`` when it has one.

``--set section.key=value`` (every command) edits the mapping before validation, so overrides are checked
like the file. Configurations of earlier pelagos versions (top-level ``bgc:``, ``model: {factory: ...}``,
``model: {type: QGModel}``, ``method: enkf`` as a string, the top-level ``free:``/``priors:``/``ensemble:``
keys, QG's ``run:`` section) are refused with the exact edit that migrates them.

File paths: ``builtin:NAME`` is a file shipped in ``pelagos/data``; other relative paths are relative to the
configuration file's folder.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..core.errors import ConfigError
from ..core.paths import DATA_DIR, resolve_path  # noqa: F401  (re-exported)

__all__ = [
    "METHODS",
    "SECTIONS",
    "Config",
    "from_mapping",
    "load_config",
    "parse_duration",
    "parse_overrides",
    "read_yaml_mapping",
    "resolve_path",
]


# -- the strict loader ---------------------------------------------------------------------------------------
def _did_you_mean(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_key_message(where: str, key: str, valid: Sequence[str]) -> str:
    what = f"key {where}.{key}" if where else f"configuration section {key!r}"
    listing = ", ".join(valid) if valid else "(none: this section takes no keys)"
    return f"unknown {what}{_did_you_mean(key, valid)} (valid: {listing})"


def _as_float(s: str) -> float | str:
    """``float(s)`` when ``s`` reads as a number, else ``s``."""
    try:
        return float(s)
    except ValueError:
        return s


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, tuple, Sequence):
        return "a list"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (ints are accepted for floats)."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{where} must be one of {', '.join(map(repr, allowed))}; got {value!r}"
                + _did_you_mean(str(value), [str(a) for a in allowed])
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:  # Optional[X]: X's own message
            return _coerce(real[0], value, where)
        if isinstance(value, Mapping):  # a mapping can only be meant for the dataclass/dict member
            for a in real:
                if dataclasses.is_dataclass(a):
                    return _coerce(a, value, where)
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {_describe(tp)}; got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    if origin in (list, Sequence) or tp in (list,):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        return tuple(value)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping; got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 and 5.0e5 (no exponent sign) as strings
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return str(value)
    return value


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """An instance of the dataclass ``cls`` from ``data`` (a mapping), strictly.

    Unknown keys → :class:`ConfigError` with a "did you mean"; missing required fields (no default) → named;
    values type-checked against the annotations; ``validate(where)`` is called when the class defines it.
    Fields whose name starts with ``_`` are not configurable.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys; got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    for k in data:
        if k not in fields:
            raise ConfigError(unknown_key_message(where, k, list(fields)))
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: accept any value
        hints = {}
    kwargs = {}
    for name, f in fields.items():
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if name in data and data[name] is None and has_default:
            continue  # `key: null` (or --set key=) means the default
        if name in data:
            kwargs[name] = _coerce(hints.get(name, Any), data[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name} is required")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where}: {err}") from err
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def to_mapping(obj: Any) -> Any:
    """A dataclass instance (recursively) as plain dicts/lists (for fingerprints and results files)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_mapping(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    return obj


# -- durations and times -------------------------------------------------------------------------------------
_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "year": 360 * 86400.0, "years": 360 * 86400.0,  # 360-day model years (pyqg)
}  # fmt: skip


def parse_duration(value: Any, where: str) -> float:
    """Seconds (model time units) from a number or a string ``"N unit"`` (s, min, h, days, years of 360 d)."""
    if isinstance(value, bool):
        raise ConfigError(
            f"{where} must be a duration (a number of seconds or e.g. '30 days'); got {value!r}"
        )
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*([A-Za-z]+)\s*", str(value))
    if m and m.group(2).lower() in _UNITS:
        try:
            return float(m.group(1)) * _UNITS[m.group(2).lower()]
        except ValueError:
            pass
    raise ConfigError(
        f"{where} must be a duration: a number of seconds or 'N unit' with unit one of s, min, h, days, "
        f"years (360 d); got {value!r}"
    )


def _positive_duration(value: Any, where: str) -> float | None:
    if value is None:
        return None
    v = parse_duration(value, where)
    if not v > 0:
        raise ConfigError(f"{where} must be a positive duration; got {value!r}")
    return v


# -- sections common to every model ------------------------------------------------------------------------
Number = float
TimeValue = float | str | _dt.datetime | _dt.date


@dataclass
class TimeSection:
    """``time:`` — the window and the step.

    ``start``/``stop``: ISO dates (models with a calendar, e.g. the column's forcing) or numbers in model time
    (seconds; Lorenz: model time units); ``duration`` instead of ``stop`` (seconds or ``"2 years"``);
    ``dt``: the model step (default: the model's own); ``spinup``: run this long from the initial state
    before ``start`` and start from where it got (e.g. onto the Lorenz attractor); nothing is written.
    """

    start: TimeValue | None = None
    stop: TimeValue | None = None
    duration: float | str | None = None
    dt: float | None = None
    spinup: float | str | None = None

    def validate(self, where: str) -> None:
        for k in ("start", "stop"):  # YAML reads unquoted dates as date/datetime objects
            v = getattr(self, k)
            if isinstance(v, (_dt.date, _dt.datetime)):
                setattr(self, k, v.isoformat(sep=" ") if isinstance(v, _dt.datetime) else v.isoformat())
        if self.dt is not None and not self.dt > 0:
            raise ConfigError(f"{where}.dt must be a positive number of seconds; got {self.dt!r}")
        if self.stop is not None and self.duration is not None:
            raise ConfigError(f"{where}: give stop or duration, not both")
        if self.duration is not None:
            self.duration = _positive_duration(self.duration, f"{where}.duration")
        self.spinup = _positive_duration(self.spinup, f"{where}.spinup")


@dataclass
class OutputSection:
    """``output:`` — the NetCDF file of ``pelagos run`` (and of the analysed run after an inverse method)."""

    file: str | None = None
    interval: float | str | None = None  # seconds (or "1 day") between records; default: every step
    precision: Literal["float32", "float64"] = "float32"
    variables: list[str] | None = None  # default: every declared output variable

    def validate(self, where: str) -> None:
        self.interval = _positive_duration(self.interval, f"{where}.interval")


@dataclass
class RestartSection:
    """``restart:`` — restart file and how often it is written (model time)."""

    file: str | None = None
    every: float | str | None = None

    def validate(self, where: str) -> None:
        self.every = _positive_duration(self.every, f"{where}.every")


# -- observations ----------------------------------------------------------------------------------------
@dataclass
class PatternSection:
    """One sampling pattern of a synthetic twin: ``variable`` at the points ``at`` every ``every`` seconds.

    ``at``: ``{dim: [values]}`` in the units of the model's coordinates (e.g. ``{x: [0, 10, 20]}`` for
    Lorenz-96, ``{lev: [0, 0], y: [...], x: [...]}`` for QG); ``depths``: the water column's shortcut
    (m positive down, ``surface``, ``integral``); neither: every point of the variable.
    """

    variable: str
    every: float | str | None = None  # default: every step
    at: dict | None = None
    depths: list | float | str | None = None
    offset: float | str | None = None

    def validate(self, where: str) -> None:
        self.every = _positive_duration(self.every, f"{where}.every")
        if self.offset is not None:
            self.offset = parse_duration(self.offset, f"{where}.offset")
        if self.depths is not None and not isinstance(self.depths, list):
            self.depths = [self.depths]


@dataclass
class SyntheticSection:
    """``observations.synthetic:`` — a twin: run the model (with ``truth`` parameter values), sample it with
    ``patterns`` and add noise. ``noise``: ``gaussian`` (σ = ``sigma`` + ``rel``·|value|), ``lognormal``
    (σ = ``rel`` on log values), ``relative`` (σ = ``rel``·|value|), ``none`` (σ as ``gaussian``).
    ``write``: also write the observations as a CSV (reusable as ``observations.file``). ``initial_error``:
    the truth starts from the configured initial state plus Gaussian noise of this std (state units), so that
    state estimation has something to find (the configured state is then the background)."""

    patterns: list[PatternSection] = field(default_factory=list)
    truth: dict = field(default_factory=dict)
    initial_error: float = 0.0
    noise: Literal["gaussian", "lognormal", "relative", "none"] = "gaussian"
    sigma: float = 0.0
    rel: float = 0.0
    seed: int = 0
    write: str | None = None

    def validate(self, where: str) -> None:
        if not self.patterns:
            raise ConfigError(f"{where}.patterns is empty; give [{{variable, every, at}}]")
        if self.noise in ("lognormal", "relative") and not self.rel > 0:
            raise ConfigError(f"{where}.rel must be > 0 for noise: {self.noise}")
        if self.noise in ("gaussian", "none") and not (self.sigma > 0 or self.rel > 0):
            raise ConfigError(f"{where}: give sigma > 0 (or rel > 0) for noise: {self.noise}")


@dataclass
class ObservationsSection:
    """``observations:`` — a file (long CSV ``time,<coordinates>,variable,value,sigma`` or NetCDF; see
    docs/inverse.md) or a synthetic twin. ``log``: compare log values (σ is then the std of the log), for all
    variables or per variable ``{name: true}``."""

    file: str | None = None
    log: bool | dict = False
    synthetic: SyntheticSection | None = None

    def validate(self, where: str) -> None:
        if (self.file is None) == (self.synthetic is None):
            raise ConfigError(f"{where} needs exactly one of 'file' (a CSV/NetCDF) or 'synthetic' (a twin)")


# -- methods ----------------------------------------------------------------------------------------------
@dataclass
class PriorSection:
    """Gaussian prior of one parameter, in its unconstrained (log/logit) space: ``mean`` in physical units,
    ``std`` in the unconstrained space, or ``rel_std``: a fraction of the mean."""

    mean: float | None = None
    std: float | None = None
    rel_std: float | None = None

    def validate(self, where: str) -> None:
        if self.std is not None and self.rel_std is not None:
            raise ConfigError(f"{where}: give std or rel_std, not both")
        for k in ("std", "rel_std"):
            v = getattr(self, k)
            if v is not None and not v > 0:
                raise ConfigError(f"{where}.{k} must be > 0; got {v!r}")


@dataclass
class CovarianceSection:
    """An error covariance of the state (4D-Var's B, weak 4D-Var's Q): standard deviation ``std`` (state
    units) or ``rel_std``·|x| + ``floor``, with a Gaussian correlation of ``length_scale`` along the state's
    coordinate (m for the column, grid index otherwise); no ``length_scale``: diagonal."""

    std: float | None = None
    rel_std: float | None = None
    floor: float = 0.0
    length_scale: float | None = None

    def validate(self, where: str) -> None:
        if (self.std is None) == (self.rel_std is None):
            raise ConfigError(f"{where} needs exactly one of std or rel_std")


def _bg_default() -> CovarianceSection:
    return CovarianceSection(rel_std=0.3, floor=1e-3)


@dataclass
class _MethodBase:
    """Keys every method takes."""

    kind: str = ""
    free: list[str] = field(default_factory=list)  # parameters to estimate
    priors: dict[str, PriorSection] = field(default_factory=dict)
    prior_rel_std: float = 0.5  # prior of a free parameter without an entry in priors
    seed: int = 0
    results: str | None = None  # results file (.json or .yaml); default results/<config>_<kind>.json
    plots: str | None = None  # folder of the plots; none: no plots
    truth: dict | None = None  # parameter values drawn on the plots (twins)

    def validate(self, where: str) -> None:
        pr = {}
        for n, p in (self.priors or {}).items():
            pr[n] = p if isinstance(p, PriorSection) else from_mapping(PriorSection, p, f"{where}.priors.{n}")
        self.priors = pr


@dataclass
class CalibrateMethod(_MethodBase):
    """Gradient calibration of parameters (optionally also the initial state, with ``background``).

    ``stages``: continuation in the window length. The end times of the stages before the last (ISO dates or
    model seconds, read as ``time.start``); each stage calibrates on the observations up to its end from the
    previous stage's estimate, the last on all of them (:func:`pelagos.io.inverse_run.run_inverse`)."""

    optimizer: Literal["lbfgs", "adam", "gauss-newton", "levenberg-marquardt"] = "lbfgs"
    max_iter: int = 50
    lr: float = 0.05
    gtol: float = 1e-7
    uncertainty: Literal["gauss-newton", "hessian", "cg", "none"] = "gauss-newton"
    control_state: bool = False
    background: CovarianceSection = field(default_factory=_bg_default)
    # continuation in the window length: end times of the stages before the last (dates or model seconds,
    # as time.start); each stage calibrates on the observations up to its end, from the previous estimate
    stages: list[TimeValue] | None = None

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.stages is None:
            return
        if not self.stages:
            raise ConfigError(
                f"{where}.stages is empty: list the end dates of the stages before the last "
                "(e.g. stages: ['1998-03-01', '1998-05-01']) or leave the key out"
            )
        if self.control_state:
            raise ConfigError(
                f"{where}.stages warm-starts the parameters only: it cannot be combined with "
                f"{where}.control_state (drop one of them)"
            )
        # YAML reads unquoted dates as date/datetime objects: the ISO text, as in time.start
        self.stages = [
            (v.isoformat(sep=" ") if isinstance(v, _dt.datetime) else v.isoformat())
            if isinstance(v, (_dt.date, _dt.datetime))
            else v
            for v in self.stages
        ]


@dataclass
class FourDVarMethod(_MethodBase):
    """Strong-constraint 4D-Var: the initial state (and the free parameters, if any) over the window."""

    optimizer: Literal["lbfgs", "gauss-newton"] = "lbfgs"
    max_iter: int = 50
    gtol: float = 1e-9
    uncertainty: Literal["gauss-newton", "hessian", "cg", "none"] = "gauss-newton"
    background: CovarianceSection = field(default_factory=_bg_default)


@dataclass
class WeakFourDVarMethod(FourDVarMethod):
    """Weak-constraint 4D-Var: also a model-error forcing every ``model_error_every`` steps, covariance Q."""

    model_error: CovarianceSection = field(default_factory=lambda: CovarianceSection(rel_std=0.1, floor=1e-3))
    model_error_every: int = 1


@dataclass
class EnKFMethod(_MethodBase):
    """Ensemble Kalman filter (``variant``: ``sqrt`` = ETKF, ``pertobs`` = stochastic EnKF); free parameters
    are estimated jointly (augmented state)."""

    members: int = 20
    inflation: float = 1.0
    rotate: bool = False
    variant: Literal["sqrt", "pertobs"] = "sqrt"
    spread: CovarianceSection = field(default_factory=lambda: CovarianceSection(std=1.0))


@dataclass
class LETKFMethod(_MethodBase):
    """Local ETKF: each state coordinate is analysed with the observations within ``radius`` (Gaspari–Cohn
    taper; grid index units, or m for the column); ``periodic``: a cyclic domain (Lorenz-96)."""

    members: int = 20
    inflation: float = 1.0
    rotate: bool = False
    radius: float = 4.0
    periodic: bool = True
    spread: CovarianceSection = field(default_factory=lambda: CovarianceSection(std=1.0))


@dataclass
class ESMDAMethod(_MethodBase):
    """Ensemble smoother with multiple data assimilation of parameters (and the initial state)."""

    members: int = 64
    alphas: int | list[float] = 4
    control_state: bool = False
    spread: CovarianceSection = field(default_factory=_bg_default)


METHODS: dict[str, type] = {
    "calibrate": CalibrateMethod,
    "4dvar": FourDVarMethod,
    "weak4dvar": WeakFourDVarMethod,
    "enkf": EnKFMethod,
    "letkf": LETKFMethod,
    "esmda": ESMDAMethod,
}
_METHOD_ALIASES = {
    "fourdvar": "4dvar", "strong4dvar": "4dvar", "weakfourdvar": "weak4dvar", "wc4dvar": "weak4dvar",
    "etkf": "enkf", "sqrt": "enkf", "pertobs": "enkf", "es-mda": "esmda",
}  # fmt: skip


def _method(raw: Any, where: str = "method") -> Any:
    if isinstance(raw, str):
        raise ConfigError(
            f"method: {raw!r} as a string is the old format; write `method: {{kind: {raw}, ...}}` "
            "(the old top-level ensemble:/background:/free:/priors: keys go inside method:, "
            "see docs/running.md)"
        )
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping with kind: {' | '.join(METHODS)}")
    raw = dict(raw)
    kind = str(raw.get("kind", "")).lower().replace("_", "").replace(" ", "")
    kind = _METHOD_ALIASES.get(kind, kind)
    if kind not in METHODS:
        hint = _did_you_mean(kind, list(METHODS)) if kind else ""
        raise ConfigError(f"{where}.kind {raw.get('kind')!r} is not one of {', '.join(METHODS)}{hint}")
    if str(raw.get("kind")).lower() == "pertobs":
        raw.setdefault("variant", "pertobs")
    raw["kind"] = kind
    return from_mapping(METHODS[kind], raw, where)


# -- the model section -----------------------------------------------------------------------------------
MODEL_KEYS = ("kind", "dtype")  # keys of `model:` every kind takes; the rest are the kind's options


@dataclass
class Config:
    """A validated configuration. ``model``: the kind's options dataclass (or None); ``kind``: its
    :class:`~pelagos.core.registry.ModelKind`; ``raw``: the mapping as given (after ``--set``), for
    fingerprints; ``base``: the folder of the file (relative paths); ``path``: the file (or None)."""

    kind: Any
    model: Any = None
    dtype: str = "float64"
    title: str = ""
    forcing: Any = None
    time: TimeSection = field(default_factory=TimeSection)
    numerics: Any = None
    parameters: dict = field(default_factory=dict)
    initial: Any = None
    batch: int | None = None
    initial_restart: str | None = None
    observations: ObservationsSection | None = None
    method: Any = None
    output: OutputSection = field(default_factory=OutputSection)
    restart: RestartSection = field(default_factory=RestartSection)
    extra: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    base: Path | None = None
    path: Path | None = None

    def resolve(self, value: Any) -> Path:
        """A path from the configuration: ``builtin:NAME`` or relative to the file's folder."""
        return resolve_path(value, self.base)

    @property
    def stem(self) -> str:
        """A short name for default output files: the configuration file's stem (or the model kind)."""
        return self.path.stem if self.path is not None else self.kind.name

    def context(self):
        from ..core.registry import BuildContext

        return BuildContext(
            forcing=self.forcing, numerics=self.numerics, dt=self.time.dt, dtype=self.dtype, base=self.base
        )


SECTIONS = (
    "title", "model", "forcing", "time", "numerics", "parameters", "initial",
    "observations", "method", "output", "restart",
)  # fmt: skip


# -- old formats: say how to migrate ------------------------------------------------------------------------
def _migration(raw: Mapping) -> None:
    model = raw.get("model")
    if "bgc" in raw:
        b = raw["bgc"] if isinstance(raw["bgc"], Mapping) else {}
        keys = ", ".join(f"{k}: {v}" for k, v in b.items()) or "fabm_yaml: ..."
        raise ConfigError(
            "this is the old water-column format: the `bgc:` section moved into `model:`. Write "
            f"`model: {{kind: column, {keys}}}` instead of `bgc: {{...}}`; `numerics.dtype` becomes "
            "`model.dtype`, `numerics.columns` becomes `initial.batch`, `output.progress` goes (use "
            "--no-progress). See docs/running.md"
        )
    if isinstance(model, Mapping) and "factory" in model:
        fac = str(model.get("factory"))
        name = fac.rpartition(":")[2].lower()
        raise ConfigError(
            f"`model: {{factory: {fac}}}` is the old format: models are chosen by kind, e.g. "
            f"`model: {{kind: {name if name else 'lorenz63'}}}` (with `args:` entries as keys of model:; "
            "`set:` becomes `parameters:`); `pelagos models` lists the kinds"
        )
    if isinstance(model, Mapping) and "type" in model and "kind" not in model:
        t = str(model.get("type"))
        kind = {"QGModel": "qg", "LayeredModel": "qg_layered", "BTModel": "qg_bt"}.get(t, t)
        raise ConfigError(
            f"`model: {{type: {t}}}` is the old QG format: write `model: {{kind: {kind}, ...}}`; the "
            "`run:` section becomes `time: {duration: '2 years'}`, `initial: {batch: 1, seed: 0}` and "
            "`output: {file: results/NAME.nc, interval: '30 days'}`; `closure:` goes into model: "
            "(see docs/running.md)"
        )
    num = raw.get("numerics")
    if isinstance(num, Mapping) and "dtype" in num:
        raise ConfigError(
            f"numerics.dtype moved: write `model: {{dtype: {num['dtype']}}}` (`numerics.columns` stays, "
            "or use `initial: {batch: N}`)"
        )
    out0 = raw.get("output")
    if isinstance(out0, Mapping) and "progress" in out0:
        raise ConfigError(
            "output.progress is gone: a progress bar shows on a terminal; `--no-progress` turns it off"
        )
    init = raw.get("initial")
    if (
        isinstance(model, Mapping)
        and model.get("kind") == "column"
        and isinstance(init, Mapping)
        and set(init) - {"profiles", "batch", "restart"}
    ):
        names = ", ".join(f"{k}: {v}" for k, v in init.items() if k not in ("profiles", "batch", "restart"))
        raise ConfigError(
            f"initial profiles of the column go under `profiles:`: write `initial: {{profiles: {{{names}}}}}`"
        )
    if isinstance(raw.get("method"), str):
        _method(raw["method"])
    old_top = [k for k in ("free", "priors", "set", "optimizer", "ensemble", "background", "uncertainty",
                           "initial_state", "dtype", "window") if k in raw]  # fmt: skip
    if old_top:
        raise ConfigError(
            f"top-level {', '.join(old_top)}: the old inverse format. Parameter values go in `parameters:`; "
            "free, priors, optimizer, uncertainty, background and the ensemble settings (members, inflation) "
            "go inside `method: {kind: ..., ...}`; dtype goes in `model:`; initial_state in `initial:`. "
            "See docs/running.md"
        )
    if "run" in raw and "run" not in SECTIONS:
        raise ConfigError(
            "the `run:` section is the old QG format: use `time: {duration: '2 years'}`, "
            "`initial: {batch: 1, seed: 0}` and `output: {file: ..., interval: '30 days'}`"
        )
    out = raw.get("output")
    if isinstance(out, Mapping) and ("dir" in out or "name" in out):
        raise ConfigError(
            "`output: {dir, name}` is the old QG format: write `output: {file: results/NAME.nc}` "
            "(plots and other files go next to it)"
        )
    if isinstance(out, str):
        raise ConfigError(
            f"`output: {out}` (a results file) is the old inverse format: write "
            f"`method: {{results: {out}}}`; "
            "`output:` is the NetCDF section `{file, interval, precision, variables}`"
        )


# -- reading files ---------------------------------------------------------------------------------------
def read_yaml_mapping(source: str | os.PathLike | Mapping[str, Any], what: str = "a configuration"):
    """A YAML file (or an already parsed mapping, deep-copied) as a dict, and the file's folder (or None).

    A binary or non-UTF-8 file, invalid YAML or a non-mapping gives a one-line :class:`ConfigError`.
    """
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), None
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"configuration file {str(path)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a configuration file")
    data = path.read_bytes()
    try:
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path} is not a YAML text file (binary or not UTF-8); give a configuration such as "
            "examples/nns_annual_npzd.yaml"
        ) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: {what} must be a YAML mapping (section: ...) at the top level")
    return dict(raw), path.resolve().parent


def parse_overrides(items: Sequence[str] | None) -> list[tuple[list[str], Any]]:
    """``["section.key=value", ...]`` → ``[(["section", "key"], value), ...]``; values are read as YAML
    (``1e-6`` a number, ``[a, b]`` a list, ``true`` a bool)."""
    out = []
    for item in items or []:
        key, sep, val = str(item).partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected section.key=value (e.g. --set time.dt=1800)")
        try:
            value = yaml.safe_load(val) if val.strip() else None
        except yaml.YAMLError:
            value = val
        out.append((key.split("."), value))
    return out


def apply_overrides(raw: dict, overrides: Sequence[str] | Sequence[tuple[list[str], Any]] | None) -> dict:
    """Set each ``section.key=value`` in the mapping ``raw`` (creating sections as needed)."""
    pairs = parse_overrides(overrides) if overrides and isinstance(overrides[0], str) else (overrides or [])
    for parts, value in pairs:
        d = raw
        for i, p in enumerate(parts[:-1]):
            if d.get(p) is None:
                d[p] = {}
            if not isinstance(d[p], dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a section")
            d = d[p]
        d[parts[-1]] = value
    return raw


def _kind_section(cls: type | None, given: Any, where: str, kind: str) -> Any:
    if cls is None:
        if given not in (None, {}) and given != []:
            raise ConfigError(f"model kind {kind!r} takes no `{where}:` section; remove it")
        return None
    return from_mapping(cls, given, where)


def load_config(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    overrides: Sequence[str] | None = None,
    require: Sequence[str] = (),
    extra_sections: Mapping[str, type] | None = None,
) -> Config:
    """Read (if a path), apply ``--set`` overrides, validate and return a :class:`Config`.

    ``require``: sections that must be present (``("observations", "method")`` for the inverse commands).
    ``extra_sections``: ``{name: dataclass or validator(raw, where)}`` of command-specific sections
    (``hybrid`` of ``pelagos qg
    train-closure``), validated by the same loader; their instances land in ``Config.extra``.
    """
    from ..core.registry import get_model_kind

    raw, base = read_yaml_mapping(source, "a configuration")
    if "_base" in raw:  # a mapping that carries its folder
        given = raw.pop("_base")
        base = Path(given) if given else base
    apply_overrides(raw, overrides)
    _migration(raw)
    extra_sections = dict(extra_sections or {})
    valid = list(SECTIONS) + list(extra_sections)
    for key in raw:
        if key not in valid:
            raise ConfigError(unknown_key_message("", key, valid))
    for sec in require:
        if raw.get(sec) is None:
            hint = {
                "observations": " (file: obs.csv, or synthetic: {patterns: [...]})",
                "method": f" (kind: {' | '.join(METHODS)}, free: [...])",
            }.get(sec, "")
            raise ConfigError(f"the configuration has no `{sec}:` section{hint}")
    msec = raw.get("model")
    if not isinstance(msec, Mapping) or not msec.get("kind"):
        from ..core.registry import model_kinds

        raise ConfigError(f"`model: {{kind: NAME, ...}}` is required; kinds: {', '.join(model_kinds())}")
    msec = dict(msec)
    kind = get_model_kind(str(msec.pop("kind")))
    dtype = msec.pop("dtype", "float64")
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"model.dtype must be float32 or float64; got {dtype!r}")
    if kind.options is None and msec:
        raise ConfigError(unknown_key_message("model", next(iter(msec)), list(MODEL_KEYS)))
    options = from_mapping(kind.options, msec, "model") if kind.options is not None else None
    initial_raw = (
        dict(raw.get("initial") or {}) if isinstance(raw.get("initial"), Mapping) else raw.get("initial")
    )
    if initial_raw is not None and not isinstance(initial_raw, Mapping):
        raise ConfigError(f"initial must be a mapping; got {initial_raw!r}")
    batch = None
    initial_restart = None
    if initial_raw:
        batch = initial_raw.pop("batch", None)
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ConfigError(f"initial.batch must be a positive integer; got {batch!r}")
        initial_restart = initial_raw.pop("restart", None)
        if initial_restart is not None and not isinstance(initial_restart, str):
            raise ConfigError(
                f"initial.restart must be the path of a restart file (restart.file of `pelagos run`); "
                f"got {initial_restart!r}"
            )
    if kind.initial is not None:
        initial = from_mapping(kind.initial, initial_raw, "initial")
    else:  # a free mapping {state variable: value}, checked against the model when it is built
        initial = dict(initial_raw or {})
    params = raw.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"parameters must be a mapping {{name: value}}; got {params!r}")
    params = dict(params)
    for n, v in params.items():
        if isinstance(v, str):  # YAML 1.1 reads 1e-6 as a string
            v = _as_float(v)
            params[n] = v
        if isinstance(v, bool) or not isinstance(v, (int, float, list)):
            raise ConfigError(f"parameters.{n} must be a number (physical units); got {v!r}")
    title = raw.get("title") or ""
    cfg = Config(
        kind=kind,
        model=options,
        dtype=str(dtype),
        title=str(title),
        forcing=_kind_section(kind.forcing, raw.get("forcing"), "forcing", kind.name),
        time=from_mapping(TimeSection, raw.get("time"), "time"),
        numerics=_kind_section(kind.numerics, raw.get("numerics"), "numerics", kind.name),
        parameters=dict(params),
        initial=initial,
        batch=batch,
        initial_restart=initial_restart,
        observations=(
            from_mapping(ObservationsSection, raw["observations"], "observations")
            if raw.get("observations") is not None
            else None
        ),
        method=_method(raw["method"]) if raw.get("method") is not None else None,
        output=from_mapping(OutputSection, raw.get("output"), "output"),
        restart=from_mapping(RestartSection, raw.get("restart"), "restart"),
        extra={
            k: from_mapping(c, raw.get(k), k) if dataclasses.is_dataclass(c) else c(raw.get(k), k)
            for k, c in extra_sections.items()
        },
        raw=raw,
        base=base,
        path=None if isinstance(source, Mapping) else Path(source),
    )
    return cfg


def fingerprint_mapping(cfg: Config) -> dict:
    """What a restart must match: every section except output, restart, observations, method."""
    return {
        k: v for k, v in cfg.raw.items() if k not in ("output", "restart", "observations", "method", "title")
    }
