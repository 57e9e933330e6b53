"""Draft model kinds (column, qg, qg_layered, qg_bt, lorenz63, lorenz96) used only while the real ones
(one ``KIND`` per model module, registered in :data:`pelagos.core.registry.BUILTIN`) are not there.

:func:`ensure_draft_kinds` registers a draft only for a name the registry does not know, so the real kinds
win as soon as they exist; then this module can go. TEMPORARY GLUE (issue 9, helper cfg).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.registry import ModelKind, model_kinds, register_model


# -- Lorenz (as KIND96/KIND63 of pelagos.models.lorenz on the contract branch) ---------------------------
@dataclass
class Lorenz96Options:
    """``model:`` of lorenz96: ``nx`` variables on a ring, forcing ``F``, step ``dt`` (model time units)."""

    nx: int = 40
    F: float = 8.0
    dt: float = 0.05


@dataclass
class Lorenz63Options:
    """``model:`` of lorenz63."""

    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0
    dt: float = 0.01


def _lorenz_class(base):
    class Draft(base):
        def initial_state(self, batch=None, *, dtype=None):  # the contract's convention
            x = base.initial_state(self, () if batch is None else (int(batch),), dtype=dtype or torch.float64)
            return x

    Draft.__name__ = Draft.__qualname__ = base.__name__
    return Draft


def _build_l96(options, ctx):
    from ..models.lorenz import Lorenz96

    m = _lorenz_class(Lorenz96)(nx=options.nx, F=options.F, dt=ctx.dt or options.dt)
    return m.to(getattr(torch, ctx.dtype))


def _build_l63(options, ctx):
    from ..models.lorenz import Lorenz63

    m = _lorenz_class(Lorenz63)(options.sigma, options.rho, options.beta, dt=ctx.dt or options.dt)
    return m.to(getattr(torch, ctx.dtype))


# -- the water column ----------------------------------------------------------------------------------------
@dataclass
class ColumnOptions:
    """``model:`` of column: the biogeochemistry, a fabm.yaml (``fabm_yaml``) or its ``instances`` inline."""

    fabm_yaml: str | None = None
    instances: dict | None = None
    drop: list[str] = field(default_factory=list)
    drop_unsupported: bool = False

    def validate(self, where: str) -> None:
        if not self.fabm_yaml and not self.instances:
            raise ConfigError(
                f"{where} needs fabm_yaml (a path) or instances (a fabm.yaml 'instances' mapping)"
            )


@dataclass
class ColumnForcingOptions:
    """``forcing:`` of column: a GOTM output NetCDF; ``bottom_stress`` (Pa) when the file has no taub."""

    file: str = "builtin:nns_annual_22x5m.nc"
    bottom_stress: float | None = None


@dataclass
class ColumnNumerics:
    """``numerics:`` of column (docs/running.md)."""

    ode_method: str = "euler"
    sinking_method: str = "P2_PDM"
    cnpar: float = 1.0
    light: str | list[float] = "I"
    nuh_lag: bool = True
    repair: bool = False
    split_factor: int = 1
    chunk_columns: int | None = None
    columns: int = 1
    coarsen_layers: int | None = None  # merge layers (conservative) and average the forcing over dt


@dataclass
class ColumnInitial:
    """``initial:`` of column: ``profiles`` {global name: value or list over layers (bottom first)}."""

    profiles: dict = field(default_factory=dict)


def _build_column(options, ctx):
    from ..bgc.system import BGCSystem
    from ..column.forcing import ColumnForcing
    from ..column.model import ColumnModel

    dtype = getattr(torch, ctx.dtype)
    f = ctx.forcing if ctx.forcing is not None else ColumnForcingOptions()
    forcing = ColumnForcing.from_gotm(ctx.path(f.file), bottom_stress=f.bottom_stress, dtype=dtype)
    source: Any = ctx.path(options.fabm_yaml) if options.fabm_yaml else {"instances": options.instances}
    bgc = BGCSystem.from_yaml(
        source, drop=tuple(options.drop or ()), drop_unsupported=options.drop_unsupported, dtype=dtype
    )
    num = dataclasses.asdict(ctx.numerics if ctx.numerics is not None else ColumnNumerics())
    for k in ("coarsen_layers", "columns"):  # coarsening: pelagos.io.build; columns: the batch
        num.pop(k, None)
    if isinstance(num.get("light"), list):
        num["light"] = tuple(num["light"])
    model = ColumnModel(bgc, forcing, dt=float(ctx.dt or 3600.0), **num)
    return model.to(dtype)


# -- QG ------------------------------------------------------------------------------------------------------
def _options_from_signature(name: str, cls, skip=("dt", "dtype", "device", "parameterization")):
    fields = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name in ("self",) or p.name in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = Any
        fields.append((p.name, ann, field(default=p.default)))
    if any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()):
        from ..qg.base import SpectralQG

        have = {f[0] for f in fields}
        for p in inspect.signature(SpectralQG.__init__).parameters.values():
            if p.name not in have and p.name != "self" and p.name not in skip:
                fields.append((p.name, Any, field(default=p.default)))
    fields.append(("closure", dict | None, field(default=None)))
    return dataclasses.make_dataclass(name, fields)


@dataclass
class QGInitial:
    """``initial:`` of the QG kinds: ``seed`` of pyqg's random initial PV."""

    seed: int = 0


def _qg_builder(cls_name: str):
    def build(options, ctx):
        from ..qg import models as M
        from ..qg import parameterizations as P

        spec = {k: v for k, v in dataclasses.asdict(options).items() if k != "closure"}
        closures = {
            "Smagorinsky": P.Smagorinsky,
            "BackscatterBiharmonic": P.BackscatterBiharmonic,
            "ZannaBolton2020": P.ZannaBolton2020,
        }
        if options.closure:
            c = dict(options.closure)
            ctype = c.pop("type", None)
            if ctype not in closures:
                raise ConfigError(f"unknown closure type {ctype!r}; valid: {', '.join(closures)}")
            spec["parameterization"] = closures[ctype](**c)
        if ctx.dt:
            spec["dt"] = ctx.dt
        spec["dtype"] = getattr(torch, ctx.dtype)
        try:
            return getattr(M, cls_name)(**spec)
        except TypeError as err:
            raise ConfigError(f"model section: {err}") from err

    return build


def _drafts() -> list[ModelKind]:
    from ..qg.models import BTModel, LayeredModel, QGModel

    return [
        ModelKind(
            "lorenz96", _build_l96, options=Lorenz96Options,
            description="Lorenz-96 ring (RK4), the standard data-assimilation test bed",
        ),
        ModelKind(
            "lorenz63", _build_l63, options=Lorenz63Options,
            description="Lorenz-63 (RK4), three variables x, y, z",
        ),
        ModelKind(
            "column", _build_column, options=ColumnOptions, forcing=ColumnForcingOptions,
            numerics=ColumnNumerics, initial=ColumnInitial,
            description="GOTM-style water column with FABM-style biogeochemistry (forcing from a GOTM run)",
        ),
        ModelKind(
            "qg", _qg_builder("QGModel"), options=_options_from_signature("QGOptions", QGModel),
            initial=QGInitial, description="two-layer quasi-geostrophic model (pyqg QGModel)",
        ),
        ModelKind(
            "qg_layered", _qg_builder("LayeredModel"),
            options=_options_from_signature("LayeredOptions", LayeredModel), initial=QGInitial,
            description="N-layer quasi-geostrophic model (pyqg LayeredModel)",
        ),
        ModelKind(
            "qg_bt", _qg_builder("BTModel"), options=_options_from_signature("BTOptions", BTModel),
            initial=QGInitial, description="barotropic (one-layer) quasi-geostrophic model (pyqg BTModel)",
        ),
    ]  # fmt: skip


_done = False


def ensure_draft_kinds() -> None:
    """Register the drafts whose names the registry does not know yet (idempotent)."""
    global _done
    if _done:
        return
    _done = True
    have = set(model_kinds())
    for k in _drafts():
        if k.name not in have:
            register_model(k)
