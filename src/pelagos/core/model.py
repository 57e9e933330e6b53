"""The ``Model`` contract every pelagos model follows.

A model is an ``nn.Module`` with

- physical parameters declared with metadata (:meth:`Model.declare_parameter`), listed by
  :meth:`Model.parameters_table`, made free in one call (:meth:`Model.select_free`), and run with other values
  (batched, differentiable, nothing written) through :meth:`Model.using`;
- ``initial_state(batch=None, **options) -> State``: the first argument always means the same thing in every
  model: ``None`` gives the model's single default member (for tensor-state models like Lorenz-96 that is a
  state without a batch dim), an int ``B`` gives ``B`` members stacked along a leading batch dim;
- a *pure* ``step(state, t) -> State``: no in-place change of its inputs, so autograd, ``torch.func.jvp`` and
  ``torch.func.vmap`` pass through it;
- ``dt``: the time step in seconds (or model time units), used by :func:`pelagos.core.rollout`; ``epoch``: the
  calendar date of model time 0 when the model has one (forcing files do), else ``None``;
- its **variables** (:meth:`Model.output_variables`: name, units, dims, role), their values on a state
  (:meth:`Model.output`) and the coordinates of their dims (:meth:`Model.output_coordinates`): what writers
  write and what observations can name;
- :meth:`Model.observation_operator`: ``H(state) -> (*batch, m)`` for a named variable at given coordinates,
  the hook every observation reader and inverse method uses.

``State`` is a tensor or a dict/dataclass of tensors with a leading batch dimension where that makes sense.
Parameters of sub-models (e.g. the biogeochemistry inside a water column) are addressed with dotted names
``"<submodule path>.<name>"``; the inverse methods only ever see these names and flat vectors.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError, ObservationError
from .params import ParameterStore, format_table, unknown_parameter_message

State = Any


@dataclass(frozen=True)
class Variable:
    """One named quantity of a model, as writers and observation operators see it.

    ``dims`` name the dimensions after the batch dim (``()`` for one number per member, ``("z",)`` for a
    profile, ``("lev", "y", "x")`` for a QG field); each named dim should have a coordinate in
    :meth:`Model.output_coordinates`. ``role``: ``"state"`` (a prognostic variable), ``"diagnostic"``
    (computed from the state) or ``"forcing"`` (prescribed). ``mean``: written as the mean over each output
    interval rather than a snapshot (diagnostics that vary within a day, e.g. PAR).
    """

    name: str
    units: str = ""
    long_name: str = ""
    dims: tuple[str, ...] = ()
    role: str = "state"
    mean: bool = False
    attrs: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Coordinate:
    """Values of one output dimension: 1-D, ``len(values)`` = the dim's size."""

    values: Any
    units: str = ""
    long_name: str = ""
    dims: tuple[str, ...] | None = None  # default: (name,)


def unknown_variable_message(name: str, valid: Sequence[str], what: str = "variable") -> str:
    """``unknown variable 'phy'; did you mean 'npzd_phy'? (valid: ...)``: a FABM-style global name that ends
    in ``_<name>``, the same name in other case, or a close spelling is suggested."""
    valid = list(valid)
    hits = [v for v in valid if v.endswith("_" + name) or v.lower() == name.lower()]
    hits += [v for v in difflib.get_close_matches(name, valid, n=2) if v not in hits]
    hint = f"; did you mean {hits[0]!r}?" if hits else ""
    return f"unknown {what} {name!r}{hint} (valid: {', '.join(valid)})"


def declared_variables(model: Any) -> list[Variable] | None:
    """``model.output_variables()``, or ``None`` when the model does not declare its variables."""
    fn = getattr(model, "output_variables", None)
    if fn is None:
        return None
    try:
        return list(fn())
    except NotImplementedError:
        return None


class Model(torch.nn.Module):
    """Base class of pelagos models (see module docstring for the contract)."""

    dt: float = 1.0
    epoch: _dt.datetime | None = None

    def __init__(self) -> None:
        super().__init__()
        self.params = ParameterStore()

    # -- the contract ------------------------------------------------------------------------------------
    def initial_state(self, batch: int | None = None, **options: Any) -> State:
        """The state at the start: ``batch=None`` one default member; ``batch=B``: a leading batch dim B."""
        raise NotImplementedError(f"{type(self).__name__} does not define initial_state()")

    def step(self, state: State, t: float | torch.Tensor) -> State:
        raise NotImplementedError(f"{type(self).__name__} does not define step()")

    # -- variables: what writers write and observations name ---------------------------------------------
    def output_variables(self) -> list[Variable]:
        """The model's variables (state first); no default: a model that writes output must define it."""
        raise NotImplementedError(
            f"{type(self).__name__} does not declare its variables; define output_variables()"
        )

    def output(self, state: State, t: float, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Values of :meth:`output_variables` on ``state`` at model time ``t``: ``{name: (*batch, *dims)}``.

        ``names``: only these fields (the same values as in the full dict). Optional in a model's own
        ``output``: when its signature has it, ``Simulation`` asks for the interval-mean fields alone after
        the steps inside an output interval, so a model can skip work no writer reads.

        Default: the entries of a dict state, or the tensor state itself under the single variable's name.
        """
        declared = [v.name for v in self.output_variables()]
        if isinstance(state, Mapping):
            out = {n: state[n] for n in declared if n in state}
        elif torch.is_tensor(state) and len(declared) == 1:
            out = {declared[0]: state}
        else:
            raise NotImplementedError(f"{type(self).__name__} must define output(state, t)")
        if names is None:
            return out
        missing = [n for n in names if n not in out]
        if missing:
            have = sorted(out)
            raise ConfigError(f"{type(self).__name__}.output() has no field(s) {missing}; it has {have}")
        return {n: out[n] for n in names}

    def output_coordinates(self) -> dict[str, Coordinate]:
        """Coordinates of the variables' dims (``{dim: Coordinate}``); default none (integer positions)."""
        return {}

    def variable(self, name: str) -> Variable:
        """The declared :class:`Variable` ``name``; unknown names raise with a "did you mean"."""
        vs = {v.name: v for v in self.output_variables()}
        if name not in vs:
            raise ObservationError(unknown_variable_message(name, list(vs)))
        return vs[name]

    def observation_operator(
        self, variable: str, at: Mapping[str, Any] | None = None
    ) -> Any:  # -> pelagos.core.operators.Operator
        """``H(state) -> (*batch, m)``: ``variable`` at the points ``at`` (``{dim: values}``, one value per
        observed point, all the same length m, in the units of :meth:`output_coordinates`; a dim missing from
        ``at`` must have size 1, or be absent). Differentiable in the state.

        Default: :meth:`output` of the variable, then linear interpolation along each named dim between the
        coordinate values (integer positions where the model gives none). Models override it when a quantity
        needs more (a column integral, a surface value, a spectral field evaluated at points).
        """
        from .operators import GridPointOperator

        var = self.variable(variable)
        return GridPointOperator(self, var, at or {})

    # -- declaring and reading parameters ----------------------------------------------------------------
    def declare_parameter(
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
        """Declare a physical parameter; ``dtype`` of its stored value (default: torch's default dtype)."""
        self.params.declare(
            name,
            default,
            units=units,
            bounds=bounds,
            description=description,
            transform=transform,
            dtype=dtype,
        )

    def param(self, name: str) -> torch.Tensor:
        """Physical value of this model's own parameter ``name``: shape ``()`` or ``(B,)``."""
        return self.params.value(name)

    def param_b(self, name: str, ndim: int) -> torch.Tensor:
        """Value shaped to broadcast against a tensor of ``ndim`` dims whose first dim is the batch."""
        v = self.params.value(name)
        return v if v.ndim == 0 else v.reshape(v.shape[0], *([1] * (ndim - 1)))

    # -- all parameters of the model tree, with dotted names ---------------------------------------------
    def _stores(self) -> dict[str, ParameterStore]:
        # Containers that set ``_transparent_name = True`` (e.g. the BGC system inside a column) do not add a
        # path segment, so users write "npzd.rmax" rather than "bgc.npzd.rmax".
        out = {}
        for path, mod in self.named_modules():
            if not isinstance(mod, Model):
                continue
            keep, m = [], self
            for part in path.split(".") if path else []:
                m = getattr(m, part)
                if not getattr(m, "_transparent_name", False):
                    keep.append(part)
            key = ".".join(keep)
            if key in out and out[key].specs and mod.params.specs:
                raise ConfigError(f"two sub-models declare parameters under the same name {key!r}")
            if key not in out or mod.params.specs:
                out[key] = mod.params
        return out

    def _resolve(
        self, name: str, stores: dict[str, ParameterStore] | None = None
    ) -> tuple[ParameterStore, str]:
        stores = self._stores() if stores is None else stores
        path, _, local = name.rpartition(".")
        if path in stores and local in stores[path].specs:
            return stores[path], local
        raise ConfigError(unknown_parameter_message(name, self.parameter_names()))

    def parameter_names(self) -> list[str]:
        return [(f"{p}." if p else "") + n for p, s in self._stores().items() for n in s.specs]

    def get_parameter_value(self, name: str) -> torch.Tensor:
        store, local = self._resolve(name)
        return store.value(local)

    def set_parameter_value(self, name: str, value: float | torch.Tensor) -> None:
        store, local = self._resolve(name)
        store.set(local, value)

    def parameter_spec(self, name: str):  # -> ParameterSpec
        store, local = self._resolve(name)
        return store.specs[local]

    def parameters_table(self, as_rows: bool = False) -> str | list[dict]:
        rows = [r for p, s in self._stores().items() for r in s.table_rows(prefix=f"{p}." if p else "")]
        return rows if as_rows else format_table(rows)

    def select_free(self, names: Iterable[str] | str | None) -> list[str]:
        """Free exactly ``names`` (dotted), freeze every other declared parameter; ``"all"`` frees all."""
        if names == "all":
            names = self.parameter_names()
        names = [] if names is None else [names] if isinstance(names, str) else list(names)
        for n in names:
            self._resolve(n)
        for path, store in self._stores().items():
            pre = f"{path}." if path else ""
            store.select_free([n for n in store.specs if pre + n in names])
        return self.free_parameter_names()

    def free_parameter_names(self) -> list[str]:
        return [(f"{p}." if p else "") + n for p, s in self._stores().items() for n in s.free_names()]

    def free_vector(self) -> torch.Tensor:
        """Unconstrained values of the free (scalar) parameters, shape ``(p,)``."""
        vals = []
        for n in self.free_parameter_names():
            store, local = self._resolve(n)
            vals.append(store.raw[local].detach().reshape(()))
        return torch.stack(vals) if vals else torch.zeros(0)

    def unflatten(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        names = self.free_parameter_names()
        if u.shape[-1] != len(names):
            raise ConfigError(
                f"vector has {u.shape[-1]} entries but {len(names)} parameters are free: {names}"
            )
        return {n: u[..., i] for i, n in enumerate(names)}

    @contextlib.contextmanager
    def using(self, raw_values: Mapping[str, torch.Tensor] | torch.Tensor) -> Iterator[None]:
        """Run with these *unconstrained* values of (dotted) parameters; a flat tensor means the free vector.

        Values may carry a batch dim ``(B,)`` (e.g. ensemble members). Pure: nothing is written to the model.
        """
        if torch.is_tensor(raw_values):
            raw_values = self.unflatten(raw_values)
        by_store: dict[int, tuple[ParameterStore, dict]] = {}
        for n, v in raw_values.items():
            store, local = self._resolve(n)
            by_store.setdefault(id(store), (store, {}))[1][local] = v
        with contextlib.ExitStack() as stack:
            for store, vals in by_store.values():
                stack.enter_context(store.overriding(vals))
            yield

    def parameter_overrides(self) -> dict[str, torch.Tensor]:
        """The unconstrained values installed now by :meth:`using` (dotted names); ``{}`` outside it."""
        out = {}
        for path, store in self._stores().items():
            pre = f"{path}." if path else ""
            out.update({pre + n: v for n, v in store.overrides.items()})
        return out

    @contextlib.contextmanager
    def using_only(self, raw_values: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Like :meth:`using`, but *replaces* whatever overrides are installed (``{}``: none at all).

        With :meth:`parameter_overrides` it re-installs a snapshot (a checkpointed segment recomputed after
        the ``using`` block ended) or a slice of one (columns stepped in chunks).
        """
        stores = self._stores()  # walked once (a deep model tree costs ~0.1 ms per walk)
        by_store: dict[int, tuple[ParameterStore, dict]] = {id(s): (s, {}) for s in stores.values()}
        for n, v in raw_values.items():
            store, local = self._resolve(n, stores)
            by_store[id(store)][1][local] = v
        with contextlib.ExitStack() as stack:
            for store, vals in by_store.values():
                stack.enter_context(store.replacing_overrides(vals))
            yield

    def load_free_vector(self, u: torch.Tensor) -> None:
        """Write unconstrained values ``u`` (shape ``(p,)``) into the free parameters."""
        for n, ui in self.unflatten(u.detach()).items():
            store, local = self._resolve(n)
            with torch.no_grad():
                store.raw[local].copy_(ui) if store.raw[local].shape == ui.shape else store.raw.__setitem__(
                    local, torch.nn.Parameter(ui.clone(), requires_grad=True)
                )

    def prior_nll(self, raw_values: Mapping[str, torch.Tensor] | torch.Tensor | None = None) -> torch.Tensor:
        """Σ of the Gaussian prior terms of the free parameters (in unconstrained space)."""
        if torch.is_tensor(raw_values):
            raw_values = self.unflatten(raw_values)
        total = torch.zeros(())
        for n in self.free_parameter_names():
            store, local = self._resolve(n)
            spec = store.specs[local]
            if spec.prior is None:
                continue
            u = raw_values[n] if raw_values is not None and n in raw_values else store.raw[local]
            total = total + spec.prior.nll(u).sum()
        return total

    def set_prior(self, name: str, mean: float | None = None, std: float = 1.0) -> None:
        store, local = self._resolve(name)
        store.set_prior(local, mean, std)
