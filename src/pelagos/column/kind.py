"""Registry entry of the water column (kind ``column``): FABM-style biogeochemistry in a GOTM-driven column.

Configuration sections (all keys optional):

- ``model: {kind: column, fabm_yaml: PATH, instances: {...}, drop: [...], drop_unsupported: false}``: the
  biology, a fabm.yaml file (``builtin:fabm/fabm-gotm-npzd.yaml`` by default) or its ``instances:`` inline;
- ``forcing: {file: PATH, bottom_stress: Pa}``: GOTM physics (NetCDF; ``builtin:nns_annual_22x5m.nc``);
- ``numerics: {ode_method, sinking_method, cnpar, light, nuh_lag, repair, split_factor, chunk_columns,
  compile, block_steps, columns}``: see :class:`~pelagos.column.model.ColumnModel`; ``columns`` is the
  batch of ``initial_state``; ``compile: true | false | auto`` runs the compiled step
  (:mod:`pelagos.column.compiled`: same results, faster steps, a compile of tens of seconds at the first
  step; ``auto`` = on when a C++ compiler is found); ``block_steps`` (default 12) steps per compiled call;
- ``initial: {profiles: {name: value}}``: initial profiles over the BGC initial values.

``time.dt`` (s) is the step (3600 when absent); the configuration's dtype is that of forcing and parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.registry import BuildContext, ModelKind


@dataclass
class ColumnOptions:
    """``model:`` options of kind ``column``: the biology."""

    fabm_yaml: str | None = "builtin:fabm/fabm-gotm-npzd.yaml"
    instances: dict | None = None
    drop: list[str] = field(default_factory=list)
    drop_unsupported: bool = False


@dataclass
class ColumnForcingOptions:
    """``forcing:`` section of kind ``column``: a GOTM output file and an optional bottom stress [Pa]."""

    file: str = "builtin:nns_annual_22x5m.nc"
    bottom_stress: float | None = None


@dataclass
class ColumnNumerics:
    """``numerics:`` section of kind ``column`` (see :class:`~pelagos.column.model.ColumnModel`)."""

    ode_method: str = "euler"
    sinking_method: str = "P2_PDM"
    cnpar: float = 1.0
    light: str | list[float] = "I"
    nuh_lag: bool = True
    repair: bool = False
    split_factor: int = 1
    chunk_columns: int | None = None
    compile: bool | str = False  # true | false | auto: the compiled step (pelagos.column.compiled)
    block_steps: int = 12  # with compile: steps per compiled call (ColumnModel.step_block)
    columns: int = 1
    coarsen_layers: int | None = None  # merge layers by this factor (applied by pelagos.io.build)


@dataclass
class ColumnInitial:
    """``initial:`` section of kind ``column``: ``profiles`` {global name: value or list over layers}."""

    profiles: dict = field(default_factory=dict)


def build(options: ColumnOptions, ctx: BuildContext):
    from ..bgc.system import BGCSystem
    from .forcing import ColumnForcing
    from .model import ColumnModel

    dtype = getattr(torch, ctx.dtype)
    fo = ctx.forcing if ctx.forcing is not None else ColumnForcingOptions()
    num = ctx.numerics if ctx.numerics is not None else ColumnNumerics()
    forcing = ColumnForcing.from_gotm(ctx.path(fo.file), bottom_stress=fo.bottom_stress, dtype=dtype)
    source: Any = ctx.path(options.fabm_yaml) if options.fabm_yaml else {"instances": options.instances}
    bgc = BGCSystem.from_yaml(
        source, drop=tuple(options.drop or ()), drop_unsupported=bool(options.drop_unsupported), dtype=dtype
    )
    model = ColumnModel(
        bgc,
        forcing,
        dt=float(ctx.dt) if ctx.dt is not None else 3600.0,
        ode_method=num.ode_method,
        sinking_method=num.sinking_method,
        cnpar=num.cnpar,
        light=tuple(num.light) if isinstance(num.light, list | tuple) else num.light,
        nuh_lag=num.nuh_lag,
        repair=num.repair,
        split_factor=num.split_factor,
        chunk_columns=num.chunk_columns,
        compile=num.compile,
        block_steps=num.block_steps,
    )
    return model.to(dtype)


def example():
    """Four layers, two days of analytic forcing (diurnal light, varying mixing), gotm/npzd; float64."""
    from ..bgc.npzd import NPZD
    from ..bgc.system import BGCSystem
    from .forcing import ColumnForcing
    from .model import ColumnModel

    f64 = torch.float64
    nz, hours = 4, 48
    t = torch.arange(hours + 1, dtype=f64) * 3600.0
    zi = torch.linspace(0, 1, nz + 1, dtype=f64)
    nuh = 1e-3 * (1.5 + torch.sin(2 * math.pi * t / 86400.0))[:, None] * (0.2 + zi)[None, :]
    nuh[:, 0] = nuh[:, -1] = 0.0
    I0 = 50.0 + 250.0 * torch.clamp(torch.sin(2 * math.pi * (t / 86400.0 - 0.25)), min=0.0)
    forcing = ColumnForcing(
        t,
        torch.full((hours + 1, nz), 5.0, dtype=f64),
        torch.full((hours + 1, nz), 12.0, dtype=f64),
        torch.full((hours + 1, nz), 35.0, dtype=f64),
        nuh,
        I0,
    )
    return ColumnModel(BGCSystem({"npzd": NPZD()}), forcing, dt=3600.0).to(f64)


KIND = ModelKind(
    "column",
    build,
    options=ColumnOptions,
    forcing=ColumnForcingOptions,
    numerics=ColumnNumerics,
    initial=ColumnInitial,
    example=example,
    description="GOTM-style water column carrying FABM-style biogeochemistry (npzd, ecosmo, ...)",
    # a bloom with vertical structure: uniform (or zero) profiles sit on the kinks of the TVD limiter
    conformance={
        "steps": 2,
        "t0": 6 * 3600.0,
        "free": ["npzd.rmax", "npzd.gmax", "nuh_scale"],
        "initial": {
            "profiles": {
                "npzd_phy": [0.9, 1.2, 1.6, 1.9],
                "npzd_zoo": [0.1, 0.15, 0.2, 0.3],
                "npzd_det": [2.0, 1.5, 1.2, 1.0],
            }
        },
    },
)

__all__ = ["KIND", "ColumnForcingOptions", "ColumnInitial", "ColumnNumerics", "ColumnOptions"]
