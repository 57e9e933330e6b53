"""The model registry: ``kind`` name -> how to build the model from a configuration.

Adding a model is one module and one registration. A model module defines a :class:`ModelKind` (by
convention named ``KIND``) and registers it in one of two ways:

- inside pelagos: one line in :data:`BUILTIN` (``"name": "module:attribute"``, imported only when used);
- from a user's own package: an entry point in the group ``pelagos.models``, e.g. in its ``pyproject.toml``::

      [project.entry-points."pelagos.models"]
      my_box = "my_package.box:KIND"

  (or :func:`register_model` at run time, e.g. in a notebook).

``pelagos models`` lists the registered kinds; ``pelagos params KIND`` prints a kind's parameters table; the
configuration's ``model: {kind: NAME, ...}`` section selects one; the conformance test runs over all of them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .model import Model, unknown_variable_message

ENTRY_POINT_GROUP = "pelagos.models"


@dataclass
class ModelKind:
    """How to build one kind of model.

    Attributes:
        name: the ``model.kind`` of configurations.
        build: ``build(options, context) -> Model``. ``options``: an instance of ``options`` (the
            ``model:`` section less ``kind``, validated); ``context``: a :class:`BuildContext` (the other
            configuration sections the model may need: forcing, numerics, time step, the folder of the
            configuration file for relative paths, the dtype).
        options: a dataclass type holding the options of the ``model:`` section (all with defaults); the
            configuration loader checks keys and types against it. ``None``: no options.
        forcing, numerics, initial: dataclass types of the ``forcing:``, ``numerics:`` and ``initial:``
            sections for this kind (``None``: the section must be absent or empty). ``initial`` holds the
            keyword options of ``model.initial_state(batch, **options)``.
        example: ``example() -> Model``: a small, fast instance for tests (the conformance test) and for
            ``pelagos params``; defaults to ``build(options(), BuildContext())``.
        description: one line for ``pelagos models``.
        conformance: per-kind settings of the conformance test (``steps``, ``batch``, tolerances, ``skip``).
        run_extras: optional ``run_extras(model, n_steps) -> (callback, finish)``: what a family adds to
            ``pelagos run`` beyond the declared variables. ``callback(sim, state, t, step)`` runs at each
            output, ``finish(output_path, final_state) -> [written paths]`` after the run (e.g. QG's
            time-mean diagnostics and plot).
    """

    name: str
    build: Callable[[Any, BuildContext], Model]
    options: type | None = None
    forcing: type | None = None
    numerics: type | None = None
    initial: type | None = None
    example: Callable[[], Model] | None = None
    description: str = ""
    conformance: dict = field(default_factory=dict)
    run_extras: Callable[[Model, int], tuple[Callable, Callable]] | None = None

    def default_options(self) -> Any:
        return self.options() if self.options is not None else None

    def default_context(self) -> BuildContext:
        return BuildContext(
            forcing=self.forcing() if self.forcing is not None else None,
            numerics=self.numerics() if self.numerics is not None else None,
        )

    def make_example(self) -> Model:
        if self.example is not None:
            return self.example()
        return self.build(self.default_options(), self.default_context())


@dataclass
class BuildContext:
    """What a model builder may read besides its own options (all optional)."""

    forcing: Any = None  # an instance of ModelKind.forcing (or None)
    numerics: Any = None  # an instance of ModelKind.numerics (or None)
    dt: float | None = None
    dtype: str = "float64"
    base: Any = None  # folder of the configuration file (relative paths), or None
    seed: int = 0

    def path(self, value: Any) -> Any:
        """Resolve a file path from the configuration (``builtin:NAME``, or relative to the file)."""
        from .paths import resolve_path

        return resolve_path(value, self.base)


# name -> "module:attribute" of a ModelKind; one line per built-in model.
BUILTIN: dict[str, str] = {
    "column": "pelagos.column.kind:KIND",
    "qg": "pelagos.qg.kind:KIND",
    "qg_layered": "pelagos.qg.kind:KIND_LAYERED",
    "qg_bt": "pelagos.qg.kind:KIND_BT",
    "lorenz63": "pelagos.models.lorenz:KIND63",
    "lorenz96": "pelagos.models.lorenz:KIND96",
    "box": "pelagos.bgc.box:KIND",
    "toy_diffusion": "pelagos.core.toy:KIND",
    "hbv": "pelagos.hydro.kind:KIND",
}

_registered: dict[str, ModelKind] = {}


def register_model(kind: ModelKind, *, replace: bool = False) -> ModelKind:
    """Register ``kind`` (at run time). A second kind of the same name is an error unless ``replace``."""
    if not isinstance(kind, ModelKind):
        raise ConfigError(f"register_model expects a pelagos.core.registry.ModelKind; got {type(kind)}")
    if kind.name in _all_names() and not replace:
        raise ConfigError(f"model kind {kind.name!r} is registered already; pass replace=True to replace it")
    _registered[kind.name] = kind
    return kind


def _load_entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _all_names() -> dict[str, str | ModelKind]:
    names: dict[str, str | ModelKind] = dict(BUILTIN)
    for n, v in _load_entry_points().items():
        names.setdefault(n, v)  # a package cannot silently replace a built-in
    names.update(_registered)
    return names


def model_kinds() -> list[str]:
    """Names of every registered kind (built-in, entry points, run-time registrations), sorted."""
    return sorted(_all_names())


def get_model_kind(name: str) -> ModelKind:
    """The registered :class:`ModelKind` ``name`` (imports its module on first use)."""
    names = _all_names()
    if name not in names:
        raise ConfigError(unknown_variable_message(str(name), sorted(names), what="model kind"))
    target = names[name]
    if isinstance(target, ModelKind):
        return target
    mod, _, attr = target.partition(":")
    try:
        kind = getattr(importlib.import_module(mod), attr or "KIND")
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"model kind {name!r}: cannot import {target!r}: {err}") from err
    if not isinstance(kind, ModelKind):
        raise ConfigError(f"model kind {name!r}: {target!r} is not a pelagos.core.registry.ModelKind")
    if kind.name != name:
        kind = dataclasses.replace(kind, name=name)
    _registered[name] = kind
    return kind


def build_model(name: str, options: Any = None, context: BuildContext | None = None) -> Model:
    """Build a model of kind ``name`` from its (validated) options."""
    kind = get_model_kind(name)
    opts = kind.default_options() if options is None else options
    return kind.build(opts, context or kind.default_context())
