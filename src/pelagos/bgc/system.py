"""``BGCSystem``: a set of coupled BGC model instances, seen by a host through *global* variable names.

A host (box or water column) never talks to the instances directly. It gives the system a state dict keyed by
global names ``f"{instance}_{variable}"`` (FABM/GOTM output names, e.g. ``npzd_phy``) and an environment dict
keyed by FABM standard names (see :data:`pelagos.bgc.base.STANDARD_VARIABLES` and
:func:`~pelagos.bgc.base.mean_key`) and gets back rates, fluxes, sinking velocities, light extinction and
conserved totals in the same global names.

Shapes: interior variables ``(..., nz)`` (``nz = 1`` for a box), bottom/surface variables ``(...,)``;
interior environment ``(..., nz)``, horizontal ``(...,)``, global scalars. Rates are per second.

Couplings (fabm.yaml ``coupling:``) link a *state dependency* of one instance to a state variable of another
(``"nut/c"`` or its global name ``"nut_c"``), or hold it at a constant (a number). A *dependency* on an
environment variable may be coupled to another standard name or to a state variable. Sources a model puts on a
state dependency go to the linked variable; on a constant or an unlinked optional dependency they are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import ConfigError, ForcingError
from ..core.model import Model
from .base import STANDARD_VARIABLES, BGCModel, close_matches

Tensor = torch.Tensor
Transfers = dict[tuple[str | None, str | None], Tensor]


@dataclass(frozen=True)
class VariableInfo:
    """A state variable as the host sees it."""

    name: str  # global name f"{instance}_{local}"
    instance: str
    local: str
    units: str
    long_name: str
    domain: str  # interior | bottom | surface
    initial_value: float
    minimum: float | None
    maximum: float | None
    vertical_movement: float  # registered constant (m s-1, positive up); see BGCSystem.vertical_velocities
    no_river_dilution: bool = False
    no_precipitation_dilution: bool = False

    @property
    def posconc(self) -> bool:
        """GOTM's ``posconc``: positive-definite transport for variables with a minimum >= 0."""
        return self.minimum is not None and self.minimum >= 0.0


@dataclass(frozen=True)
class DiagnosticInfo:
    name: str
    instance: str
    local: str
    units: str
    long_name: str
    domain: str


# How a state dependency / dependency of an instance is resolved.
#   ("state", global_name) | ("const", value) | ("env", env_key) | ("none", None)
Link = tuple[str, Any]


class BGCSystem(Model):
    """Coupled BGC instances (see module docstring).

    Args:
        instances: ``{instance name: BGCModel}`` in output order.
        couplings: ``{"instance/dependency": target}`` with target ``"other/variable"``, a global name
            ``"other_variable"``, a standard variable name (for environment dependencies) or a number
            (a constant).
        initialization: ``{global or "instance/variable": initial value}`` overriding the models' defaults.
        require_initialization: every state variable must then be given in ``initialization``.
        check_conservation: ask hosts to report conserved quantities (stored; the box driver honours it).
    """

    _transparent_name = True

    def __init__(
        self,
        instances: Mapping[str, BGCModel],
        couplings: Mapping[str, Any] | None = None,
        *,
        initialization: Mapping[str, float] | None = None,
        require_initialization: bool = False,
        check_conservation: bool = False,
    ) -> None:
        super().__init__()
        if not instances:
            raise ConfigError("BGCSystem needs at least one model instance")
        self.instance_names: list[str] = []
        for name, model in instances.items():
            self._add_instance(name, model)
        self.check_conservation = bool(check_conservation)
        self.dropped: list[tuple[str, str, str]] = []  # (instance, model, reason), filled by the yaml reader
        self.notes: list[str] = []
        self._build_variables()
        self._resolve_couplings(dict(couplings or {}))
        self._initial = {v.name: v.initial_value for v in self.variables}
        for key, value in (initialization or {}).items():
            self._initial[self._global_state_name(key, "initialization")] = float(value)
        if require_initialization:
            given = {self._global_state_name(k, "initialization") for k in (initialization or {})}
            missing = [v.name for v in self.variables if v.name not in given]
            if missing:
                raise ConfigError(
                    f"require_initialization is true but no initial value is given for: {', '.join(missing)}"
                )
        # The infos hosts read carry the configured initial values.
        self.variables = [dataclasses.replace(v, initial_value=self._initial[v.name]) for v in self.variables]
        self._var = {v.name: v for v in self.variables}

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, source: Any, **kwargs: Any) -> BGCSystem:
        """Build from a fabm.yaml path, text or dict; see :func:`pelagos.bgc.fabm_yaml.load_system`."""
        from .fabm_yaml import load_system

        return load_system(source, **kwargs)

    def _add_instance(self, name: str, model: BGCModel) -> None:
        if not isinstance(model, BGCModel):
            raise ConfigError(f"instance {name!r} is a {type(model).__name__}, not a BGCModel")
        if (
            not name.isidentifier()
            or hasattr(type(self), name)
            or name in self.__dict__
            or name in ("params",)
        ):
            raise ConfigError(
                f"instance name {name!r} is not usable: it must be a Python identifier that does not clash "
                f"with an attribute of {type(self).__name__}"
            )
        model.instance_name = name
        self.add_module(name, model)
        self.instance_names.append(name)

    @property
    def models(self) -> dict[str, BGCModel]:
        return {n: self._modules[n] for n in self.instance_names}  # type: ignore[misc]

    def _build_variables(self) -> None:
        self.variables: list[VariableInfo] = []
        self.diagnostics: list[DiagnosticInfo] = []
        self._local_to_global: dict[str, dict[str, str]] = {}
        for inst, m in self.models.items():
            own = {}
            for v in m.state_variables.values():
                g = f"{inst}_{v.name}"
                own[v.name] = g
                self.variables.append(
                    VariableInfo(
                        g,
                        inst,
                        v.name,
                        v.units,
                        v.long_name,
                        v.domain,
                        float(v.initial_value),
                        v.minimum,
                        v.maximum,
                        float(v.vertical_movement),
                        v.no_river_dilution,
                        v.no_precipitation_dilution,
                    )
                )
            self._local_to_global[inst] = own
            for d in m.diagnostic_variables.values():
                self.diagnostics.append(
                    DiagnosticInfo(f"{inst}_{d.name}", inst, d.name, d.units, d.long_name, d.domain)
                )
        names = [v.name for v in self.variables]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"global variable names collide: {sorted(dup)}; rename an instance")
        self._var = {v.name: v for v in self.variables}
        self.interior_names = [v.name for v in self.variables if v.domain == "interior"]
        self.bottom_names = [v.name for v in self.variables if v.domain == "bottom"]
        self.surface_names = [v.name for v in self.variables if v.domain == "surface"]

    def _global_state_name(self, key: str, what: str) -> str:
        """Accept ``inst/var``, ``inst.var`` or a global name ``inst_var``."""
        for sep in ("/", "."):
            if sep in key:
                inst, _, local = key.partition(sep)
                if inst not in self._local_to_global:
                    raise ConfigError(
                        f"{what}: unknown instance {inst!r} in {key!r}"
                        f"{close_matches(inst, self.instance_names)}; "
                        f"instances: {', '.join(self.instance_names)}"
                    )
                own = self._local_to_global[inst]
                if local not in own:
                    raise ConfigError(
                        f"{what}: instance {inst!r} has no state variable {local!r}"
                        f"{close_matches(local, list(own))}; "
                        f"its state variables: {', '.join(own) or '(none)'}"
                    )
                return own[local]
        if key in self._var:
            return key
        valid = [v.name for v in self.variables]
        raise ConfigError(
            f"{what}: unknown state variable {key!r}{close_matches(key, valid)}; valid: {', '.join(valid)}"
        )

    def _resolve_couplings(self, couplings: dict[str, Any]) -> None:
        self._links: dict[str, dict[str, Link]] = {n: {} for n in self.instance_names}
        self._env_links: dict[str, dict[str, Link]] = {n: {} for n in self.instance_names}
        for key, target in couplings.items():
            sep = "/" if "/" in key else "."
            inst, _, local = key.partition(sep)
            if inst not in self._links:
                raise ConfigError(
                    f"coupling {key!r}: unknown instance {inst!r}{close_matches(inst, self.instance_names)}; "
                    f"instances: {', '.join(self.instance_names)}"
                )
            m = self.models[inst]
            if local in m.state_dependencies:
                self._links[inst][local] = self._state_target(key, target, m.state_dependencies[local].domain)
            elif local in m.dependencies:
                self._env_links[inst][local] = self._env_target(key, target)
            else:
                valid = [*m.state_dependencies, *m.dependencies]
                raise ConfigError(
                    f"coupling {key!r}: model {m.fabm_name or type(m).__name__} (instance {inst!r}) has no "
                    f"dependency {local!r}{close_matches(local, valid)}; "
                    f"couplable: {', '.join(valid) or '(none)'}"
                )
        for inst, m in self.models.items():
            for name, sd in m.state_dependencies.items():
                if name in self._links[inst]:
                    continue
                if sd.required:
                    avail = [f"{v.instance}/{v.local}" for v in self.variables if v.domain == sd.domain]
                    raise ConfigError(
                        f"instance {inst!r}: state dependency {name!r} ({sd.long_name or 'no description'}, "
                        f"{sd.units}) is not coupled; add coupling: {{{name}: <instance>/<variable>}} "
                        f"(available: {', '.join(avail)})"
                    )
                self._links[inst][name] = ("none", None)
            for name, dep in m.dependencies.items():
                self._env_links[inst].setdefault(name, ("env", dep.key))

    def _state_target(self, key: str, target: Any, domain: str) -> Link:
        if isinstance(target, int | float) and not isinstance(target, bool):
            return ("const", float(target))
        if not isinstance(target, str):
            raise ConfigError(
                f"coupling {key!r}: target must be 'instance/variable' or a number; got {target!r}"
            )
        g = self._global_state_name(target, f"coupling {key!r}")
        if self._var[g].domain != domain:
            raise ConfigError(
                f"coupling {key!r}: target {target!r} is a {self._var[g].domain} variable, need {domain}"
            )
        return ("state", g)

    def _env_target(self, key: str, target: Any) -> Link:
        if isinstance(target, int | float) and not isinstance(target, bool):
            return ("const", float(target))
        if isinstance(target, str) and target in STANDARD_VARIABLES:
            return ("env", target)
        if isinstance(target, str) and ("/" in target or target in self._var):
            return ("state", self._global_state_name(target, f"coupling {key!r}"))
        valid = list(STANDARD_VARIABLES)
        raise ConfigError(
            f"coupling {key!r}: target {target!r} is neither a standard variable"
            f"{close_matches(str(target), valid)} "
            f"nor 'instance/variable'"
        )

    # -- what the host must provide ------------------------------------------------------------------------
    def _env_requirements(self, required: bool) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for inst, m in self.models.items():
            for name, dep in m.dependencies.items():
                kind, key = self._env_links[inst][name]
                if kind == "env" and dep.required == required:
                    units = STANDARD_VARIABLES.get(dep.standard_name, (dep.units, dep.domain))[0]
                    out[key] = (dep.domain, units)
        return out

    @property
    def required_env(self) -> dict[str, tuple[str, str]]:
        """``{env key: (domain, units)}`` the host must provide (standard names or running-mean keys)."""
        return self._env_requirements(True)

    @property
    def optional_env(self) -> dict[str, tuple[str, str]]:
        return self._env_requirements(False)

    @property
    def light_model(self) -> BGCModel | None:
        """The instance that computes light for the host (FABM ``gotm/light``), if any."""
        for m in self.models.values():
            if getattr(m, "computes_light", False):
                return m
        return None

    # -- state ---------------------------------------------------------------------------------------------
    def initial_state(
        self,
        batch: int | tuple[int, ...] | None = None,
        *,
        nz: int = 1,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, Tensor]:
        """Every variable at its initial value: interior ``(*batch, nz)``, bottom/surface ``(*batch,)``.

        ``batch``: ``None`` (no batch dim), an int ``B`` or a tuple of batch dims. A system is a component of
        a host (box, column), which owns the time step; this only lays out its variables.
        """
        batch_shape = () if batch is None else (int(batch),) if isinstance(batch, int) else tuple(batch)
        dtype = dtype or torch.get_default_dtype()
        out = {}
        for v in self.variables:
            shape = (*batch_shape, nz) if v.domain == "interior" else tuple(batch_shape)
            out[v.name] = torch.full(shape, self._initial[v.name], dtype=dtype, device=device)
        return out

    def initial_values(self) -> dict[str, float]:
        return dict(self._initial)

    # -- views ---------------------------------------------------------------------------------------------
    def _view(self, inst: str, state: Mapping[str, Tensor], domains: tuple[str, ...]) -> dict[str, Tensor]:
        m = self._modules[inst]
        s: dict[str, Tensor] = {}
        ref = None
        for local, g in self._local_to_global[inst].items():
            if m.state_variables[local].domain in domains and g in state:
                s[local] = state[g]
                ref = state[g] if ref is None else ref
        for local, (kind, tgt) in self._links[inst].items():
            if m.state_dependencies[local].domain not in domains:
                continue
            if kind == "state":
                if tgt not in state:
                    raise ForcingError(f"state lacks {tgt!r} (coupled to {inst}/{local})")
                s[local] = state[tgt]
                ref = state[tgt] if ref is None else ref
        for local, (kind, tgt) in self._links[inst].items():
            if kind == "const" and m.state_dependencies[local].domain in domains:
                base = ref if ref is not None else next(iter(state.values()))
                s[local] = torch.full_like(base, tgt)
        return s

    def _env_view(
        self, inst: str, env: Mapping[str, Tensor], state: Mapping[str, Tensor]
    ) -> Mapping[str, Tensor]:
        m = self._modules[inst]
        extra = {}
        for name, (kind, tgt) in self._env_links[inst].items():
            key = m.dependencies[name].key
            if kind == "env" and tgt != key:
                if tgt not in env:
                    raise ForcingError(
                        f"instance {inst!r} ({m.fabm_name}) needs {tgt!r} (its dependency {name!r} is "
                        f"coupled to it); the host must provide it"
                    )
                extra[key] = env[tgt]
            elif kind == "state":
                extra[key] = state[tgt]
            elif kind == "const":
                extra[key] = torch.as_tensor(tgt)
        return {**env, **extra} if extra else env

    def _call(self, inst: str, fn: str, *args: Any) -> Any:
        try:
            return getattr(self._modules[inst], fn)(*args)
        except KeyError as e:
            key = e.args[0] if e.args else "?"
            raise ForcingError(
                f"instance {inst!r} ({self.models[inst].fabm_name}) needs {key!r} in its {fn} inputs; "
                f"the host must provide it (required env: {', '.join(self.required_env)})"
            ) from None

    def _collect(self, inst: str, rates: Mapping[str, Tensor], out: dict[str, Tensor]) -> None:
        own = self._local_to_global[inst]
        for local, r in rates.items():
            if local in own:
                g = own[local]
            else:
                kind, g = self._links[inst].get(local, ("none", None))
                if kind != "state":
                    continue  # constant or unlinked optional dependency: the source leaves the system
            out[g] = out[g] + r if g in out else r

    def _zeros_for(
        self, names: list[str], state: Mapping[str, Tensor], out: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        res = {}
        for g in names:
            if g in out:
                res[g] = out[g] if out[g].shape == state[g].shape else out[g].expand_as(state[g]).clone()
            elif g in state:
                res[g] = torch.zeros_like(state[g])
        return res

    # -- processes -----------------------------------------------------------------------------------------
    def interior_sources(
        self, state: Mapping[str, Tensor], env: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Rates (state units per s, ``(..., nz)``) of every interior variable, and interior diagnostics."""
        rates: dict[str, Tensor] = {}
        diags: dict[str, Tensor] = {}
        for inst in self.instance_names:
            s = self._view(inst, state, ("interior",))
            r, dg = self._call(inst, "do", s, self._env_view(inst, env, state))
            self._collect(inst, r, rates)
            diags.update({f"{inst}_{k}": v for k, v in dg.items()})
        return self._zeros_for(self.interior_names, state, rates), diags

    def _boundary(self, fn: str, domain: str, state: Mapping[str, Tensor], env: Mapping[str, Tensor]):
        fluxes: dict[str, Tensor] = {}
        diags: dict[str, Tensor] = {}
        for inst in self.instance_names:
            s = self._view(inst, state, ("interior", domain))
            r, dg = self._call(inst, fn, s, self._env_view(inst, env, state))
            self._collect(inst, r, fluxes)
            diags.update({f"{inst}_{k}": v for k, v in dg.items()})
        return fluxes, diags

    def surface_fluxes(
        self, state_top: Mapping[str, Tensor], env_top: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per m2 per s: into the top cell for interior variables, own source for surface variables."""
        return self._boundary("do_surface", "surface", state_top, env_top)

    def bottom_fluxes(
        self, state_bottom: Mapping[str, Tensor], env_bottom: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per m2 per s: into the bottom cell for interior variables, own source for bottom variables."""
        return self._boundary("do_bottom", "bottom", state_bottom, env_bottom)

    def vertical_velocities(
        self, state: Mapping[str, Tensor], env: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """m s-1, positive up, ``(..., nz)``, for the interior variables that move (others are absent)."""
        out: dict[str, Tensor] = {}
        for inst in self.instance_names:
            s = self._view(inst, state, ("interior",))
            w = self._call(inst, "vertical_movement", s, self._env_view(inst, env, state))
            own = self._local_to_global[inst]
            for local, v in w.items():
                if local in own:
                    g = own[local]
                    out[g] = v if v.shape == state[g].shape else v.expand_as(state[g])
        return out

    def light_extinction(self, state: Mapping[str, Tensor], env: Mapping[str, Tensor]) -> Tensor:
        """Total biological PAR attenuation (m-1), ``(..., nz)``; zeros when no model contributes."""
        total = None
        for inst in self.instance_names:
            k = self._call(inst, "light_extinction", self._view(inst, state, ("interior",)), env)
            if k is not None:
                total = k if total is None else total + k
        ref = state[self.interior_names[0]] if self.interior_names else next(iter(state.values()))
        if total is None:
            return torch.zeros_like(ref)
        return total if total.shape == ref.shape else total.expand_as(ref)

    def production_destruction(self, state: Mapping[str, Tensor], env: Mapping[str, Tensor]) -> Transfers:
        """Interior sources as transfers ``{(src, dst): rate}`` in global names (None = outside).

        Instances without ``do_ppdd`` contribute their net rates as exchanges with the outside (positive part
        produced, negative part lost): positivity is kept by MP schemes, conservation for those only if exact.
        """
        from .integrate import merge_transfers, transfers_from_rates

        parts: list[Transfers] = []
        for inst in self.instance_names:
            s = self._view(inst, state, ("interior",))
            e = self._env_view(inst, env, state)
            res = self._call(inst, "do_ppdd", s, e)
            if res is None:
                r, _ = self._call(inst, "do", s, e)
                tmp: dict[str, Tensor] = {}
                self._collect(inst, r, tmp)
                parts.append(transfers_from_rates(tmp))
                continue
            t, _ = res
            mapped: Transfers = {}
            for (src, dst), r in t.items():
                key = (self._map_local(inst, src), self._map_local(inst, dst))
                if key == (None, None):
                    continue
                mapped[key] = mapped[key] + r if key in mapped else r
            parts.append(mapped)
        return merge_transfers(*parts)

    def _map_local(self, inst: str, local: str | None) -> str | None:
        if local is None:
            return None
        own = self._local_to_global[inst]
        if local in own:
            return own[local]
        kind, g = self._links[inst].get(local, ("none", None))
        return g if kind == "state" else None

    def conserved_quantities(self, state: Mapping[str, Tensor], h: Tensor | None = None) -> dict[str, Tensor]:
        """Σ factor × variable per conserved quantity (from the ``conserved`` metadata).

        Without ``h``: per cell, interior variables only, ``(..., nz)``. With ``h`` (``(..., nz)``, m): column
        totals per m2, Σ h·c over layers plus the bottom/surface pools, ``(...,)``.
        """
        out: dict[str, Tensor] = {}
        for inst, m in self.models.items():
            for local, v in m.state_variables.items():
                g = self._local_to_global[inst][local]
                if g not in state:
                    continue
                for q, f in v.conserved.items():
                    c = state[g]
                    if v.domain == "interior":
                        term = f * c if h is None else f * (c * h).sum(-1)
                    elif h is None:
                        continue
                    else:
                        term = f * c
                    out[q] = out[q] + term if q in out else term
        return out

    def describe(self) -> str:
        """Human-readable summary: instances, variables, couplings, required environment."""
        lines = ["instances:"]
        for inst, m in self.models.items():
            lines.append(f"  {inst}: {m.fabm_name or type(m).__name__}")
            for local, (kind, tgt) in self._links[inst].items():
                lines.append(f"    {local} -> {tgt if kind != 'none' else '(not coupled)'}")
        lines.append("state variables: " + ", ".join(v.name for v in self.variables))
        lines.append("required env: " + ", ".join(self.required_env))
        for inst, model, reason in self.dropped:
            lines.append(f"dropped {inst} ({model}): {reason}")
        lines.extend(self.notes)
        return "\n".join(lines)
