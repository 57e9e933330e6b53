"""HBV as a pelagos :class:`~pelagos.core.Model` and the registered model kind ``hbv``.

One step is one day (``dt = 86400 s``); model time 0 is 00:00 of the forcing's first date (:attr:`epoch`). The
step from ``t`` to ``t + dt`` uses the forcing of the date ``epoch + t`` and leaves in the state the fluxes of
that day, so the record at time ``T`` (written by :class:`~pelagos.core.simulation.Simulation`) holds the
totals of the day that *ends* at ``T`` (as a gauge read at 24:00): observed daily discharge of date ``D`` is
compared with the state at ``D + 1 day``, 00:00 (:func:`observation_time`).

State (a dict; a leading member dim ``B`` when ``initial_state(B)``): the stores ``SNOWPACK``,
``MELTWATER``, ``SM``, ``SUZ``, ``SLZ`` ``(B, n_basins, nmul)`` (mm), the unit-hydrograph memory ``Qhist``
``(B, n_basins, 14)`` (mm/d, the last 14 days of unrouted runoff) and the last day's ``Q``, ``Q_unrouted``,
``ET`` ``(B, n_basins)`` (mm/d).

Parameters: the 14 of :data:`pelagos.hydro.hbv.PARAMETERS`, with their bounds (the inverse methods work in the
logit of the bounds) and units. A value is a number (every basin), or, set in Python or through the option
``basin_parameters``, one value per basin ``(n_basins,)`` or per basin and component ``(n_basins, nmul)``
(route_a/route_b: per basin). Inside :meth:`Model.using` (the inverse methods) a value with a leading dim is
per *member*: ``(B,)`` or ``(B, n_basins)``.

Forcing: CAMELS-US (``camels_root`` + ``gauge_ids``; ``builtin:camels_us_sample`` is the 4-basin sample) or
per-basin CSV files (``csv``), cut to ``start``..``end``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.errors import ConfigError, ForcingError, ObservationError, ShapeError
from ..core.model import Coordinate, Model, Variable
from ..core.registry import BuildContext, ModelKind
from .camels import SAMPLE, SAMPLE_BASINS, Basin, check_same_days, load_basin, read_basin_csv
from .hbv import DEFAULTS, HBV_PARAMETER_NAMES, INITIAL_STORE, PARAMETERS, STORES, hbv_day
from .unit_hydrograph import UH_LENGTH, gamma_weights, route_step

DAY = 86400.0  # s


@dataclass
class HBVForcingData:
    """Daily forcing of ``n_basins`` basins on common dates: ``(n_days, n_basins)`` tensors P (mm/d), T (°C),
    PET (mm/d), observed Q (mm/d, NaN where missing)."""

    dates: np.ndarray  # datetime64[D]
    gauge_ids: list[str]
    P: Tensor
    T: Tensor
    PET: Tensor
    Q_obs: Tensor

    @property
    def n_days(self) -> int:
        return len(self.dates)

    @property
    def t_start(self) -> float:
        return 0.0

    @property
    def t_stop(self) -> float:
        return self.n_days * DAY

    def check_covers(self, t0: float, t1: float) -> None:
        if t0 < -1e-6 or t1 > self.t_stop + 1e-6:
            raise ForcingError(
                f"the run ({t0 / DAY:g} to {t1 / DAY:g} days after {self.dates[0]}) is outside the forcing, "
                f"which covers {self.dates[0]} to {self.dates[-1]} ({self.n_days} days); "
                "choose time.start/stop inside it"
            )

    @classmethod
    def from_basins(cls, basins: list[Basin], dtype: torch.dtype = torch.float64) -> HBVForcingData:
        check_same_days(basins)

        def stack(attr: str) -> Tensor:
            return torch.as_tensor(np.stack([getattr(b, attr) for b in basins], 1), dtype=dtype)

        return cls(basins[0].dates, [b.gauge_id for b in basins], stack("prcp"), stack("tmean"), stack("pet"),
                   stack("q_obs"))  # fmt: skip


def observation_time(model: HBVModel, date: str | np.datetime64) -> float:
    """Model time (s) of the record holding the daily totals of ``date``: the end of that day."""
    d = np.datetime64(str(date)[:10], "D")
    return float(((d - model.forcing.dates[0]).astype(int) + 1) * DAY)


class HBVModel(Model):
    """HBV 1.0 for ``n_basins`` basins, one day per step (see the module docstring).

    Args:
        forcing: the basins' daily forcing.
        nmul: parallel components per basin (outputs are their mean).
        route: route Q with the gamma unit hydrograph (else ``Q`` = ``Q_unrouted``).
        smooth: sharpness of the smooth thresholds (``None``: hard, the reference).
        process: ``{flux: f}``, fluxes replaced by functions (see :func:`pelagos.hydro.hbv.run_hbv`).
        values: parameter values (physical): numbers or per-basin tensors.
    """

    dt = DAY

    def __init__(
        self,
        forcing: HBVForcingData,
        *,
        nmul: int = 1,
        route: bool = True,
        smooth: float | None = None,
        process: Mapping[str, Callable[[dict], Tensor]] | None = None,
        values: Mapping[str, Any] | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if int(nmul) < 1:
            raise ConfigError(f"hbv: nmul must be >= 1; got {nmul}")
        self.forcing = forcing
        self.nmul, self.route, self.smooth = int(nmul), bool(route), smooth
        self.process = dict(process or {})
        self.n_basins = len(forcing.gauge_ids)
        self._dtype = dtype
        d0 = forcing.dates[0].astype(_dt.date)
        self.epoch = _dt.datetime(d0.year, d0.month, d0.day)
        for n, spec in PARAMETERS.items():
            self.declare_parameter(n, DEFAULTS[n], units=spec.units, bounds=(spec.lo, spec.hi),
                                   description=spec.long_name, dtype=dtype)  # fmt: skip
        for n, v in (values or {}).items():
            self.set_parameter_value(n, v)

    # -- parameters ------------------------------------------------------------------------------------
    def set_parameter_value(self, name: str, value: float | Tensor) -> None:
        v = torch.as_tensor(value, dtype=self._dtype)
        if v.ndim >= 1 and name in PARAMETERS:
            ok = (self.n_basins,) if name not in HBV_PARAMETER_NAMES else None
            shapes = [(self.n_basins,), (self.n_basins, self.nmul)] if ok is None else [ok]
            if tuple(v.shape) not in shapes:
                raise ShapeError(
                    f"hbv parameter {name}: a value of shape {tuple(v.shape)}; give a number or one value "
                    f"per basin {shapes} (basins: {self.forcing.gauge_ids})"
                )
        super().set_parameter_value(name, v)

    def _param(self, name: str, lead: tuple[int, ...]) -> Tensor:
        """Value broadcasting against ``(*lead, n_basins, nmul)``."""
        v = self.param(name)
        if v.ndim == 0:
            return v
        over = self.params.active_overrides
        if over is not None and name in over:  # per member (the inverse methods' ensembles)
            if len(lead) != 1 or v.shape[0] != lead[0]:
                raise ShapeError(
                    f"hbv: parameter {name} has {tuple(v.shape)} values for a state batch {lead}"
                )
            if v.ndim == 1:
                return v.reshape(-1, 1, 1)
            return v.reshape(v.shape[0], self.n_basins, -1)
        v = v.reshape(self.n_basins, -1)  # stored per basin (and component)
        return v

    def hbv_parameters(self, lead: tuple[int, ...] = ()) -> dict[str, Tensor]:
        """Physical values of the 14 parameters, shaped to broadcast against ``(*lead, n_basins, nmul)``."""
        return {n: self._param(n, lead) for n in PARAMETERS}

    # -- the contract ----------------------------------------------------------------------------------
    def initial_state(
        self, batch: int | None = None, *, store: float = INITIAL_STORE, dtype: torch.dtype | None = None
    ) -> dict[str, Tensor]:
        """Every store at ``store`` mm (default 0.001), empty routing memory, zero fluxes; ``batch=None``: no
        member dim."""
        lead = () if batch is None else (int(batch),)
        kw = {"dtype": dtype or self._dtype}
        st = {k: torch.full((*lead, self.n_basins, self.nmul), float(store), **kw) for k in STORES}
        st["Qhist"] = torch.zeros(*lead, self.n_basins, UH_LENGTH - 1, **kw)
        for k in ("Q", "Q_unrouted", "ET"):
            st[k] = torch.zeros(*lead, self.n_basins, **kw)
        return st

    def day_index(self, t: float | Tensor) -> int:
        k = round(float(t) / DAY)
        if not 0 <= k < self.forcing.n_days:
            raise ForcingError(
                f"hbv: model time {float(t):g} s is day {k} of a forcing with {self.forcing.n_days} days "
                f"({self.forcing.dates[0]} to {self.forcing.dates[-1]})"
            )
        return k

    def step(self, state: Mapping[str, Tensor], t: float | Tensor) -> dict[str, Tensor]:
        k = self.day_index(t)
        sm = state["SM"]
        lead = tuple(sm.shape[:-2])
        p = self.hbv_parameters(lead)
        f = self.forcing
        P, T, PET = (x[k].to(sm.dtype)[:, None] for x in (f.P, f.T, f.PET))  # (n_basins, 1)
        stores, fluxes = hbv_day(tuple(state[s] for s in STORES), P, T, PET, p, self.smooth, self.process, k)
        q_unrouted = (fluxes[10] + fluxes[11] + fluxes[12]).mean(-1)  # Q0 + Q1 + Q2, mean over components
        if self.route:
            ra, rb = p["route_a"], p["route_b"]
            ra = ra.reshape(*ra.shape[:-2], -1) if ra.ndim >= 2 else ra  # (..., n_basins|1)
            rb = rb.reshape(*rb.shape[:-2], -1) if rb.ndim >= 2 else rb
            w = gamma_weights(ra, rb).to(sm.dtype)
            q, hist = route_step(q_unrouted, w, state["Qhist"])
        else:
            q = q_unrouted
            hist = torch.cat([state["Qhist"], q_unrouted[..., None]], -1)[..., 1:]
        new = dict(zip(STORES, stores))
        new.update(Qhist=hist, Q=q, Q_unrouted=q_unrouted, ET=fluxes[7].mean(-1))
        return new

    def output_variables(self) -> list[Variable]:
        b = ("basin",)
        return [
            Variable(
                "Q",
                "mm d-1",
                "discharge, routed (daily total of the day ending at the time)",
                b,
                "diagnostic",
            ),
            Variable("Q_unrouted", "mm d-1", "runoff before routing (Q0 + Q1 + Q2)", b, "diagnostic"),
            Variable("ET", "mm d-1", "actual evapotranspiration", b, "diagnostic"),
            Variable("SWE", "mm", "snow water equivalent (frozen + liquid water in the snow)", b),
            Variable("SM", "mm", "soil moisture", b),
            Variable("SUZ", "mm", "upper groundwater zone storage", b),
            Variable("SLZ", "mm", "lower groundwater zone storage", b),
        ]

    def output(self, state: Mapping[str, Tensor], t: float = 0.0) -> dict[str, Tensor]:
        return {
            "Q": state["Q"],
            "Q_unrouted": state["Q_unrouted"],
            "ET": state["ET"],
            "SWE": (state["SNOWPACK"] + state["MELTWATER"]).mean(-1),
            "SM": state["SM"].mean(-1),
            "SUZ": state["SUZ"].mean(-1),
            "SLZ": state["SLZ"].mean(-1),
        }

    def output_coordinates(self) -> dict[str, Coordinate]:
        ids = self.forcing.gauge_ids
        if all(g.isdigit() for g in ids):
            vals, long = [float(int(g)) for g in ids], "USGS gauge id"
        else:
            vals, long = [float(i) for i in range(len(ids))], "basin index (see the gauge_id attribute)"
        return {"basin": Coordinate(torch.tensor(vals, dtype=torch.float64), "1", long)}

    def basin_index(self, basin: Any) -> int:
        """Position of a basin given as a gauge id (``"01022500"``, ``1022500``) or its coordinate value."""
        ids = self.forcing.gauge_ids
        coord = self.output_coordinates()["basin"].values.tolist()
        s = str(basin).strip()
        if s in ids:
            return ids.index(s)
        try:
            x = float(s)
        except ValueError:
            x = None
        if x is not None and x in coord:
            return coord.index(x)
        raise ObservationError(f"unknown basin {basin!r}; this run has basins {ids}")

    def observation_operator(self, variable: str, at: Mapping[str, Any] | None = None):
        """``H(state) -> (*batch, m)``: ``variable`` at the basins ``at={"basin": [...]}`` (gauge ids or
        coordinate values; exact, no interpolation between basins). Without ``at``: every basin."""
        var = self.variable(variable)
        at = dict(at or {})
        extra = [d for d in at if d != "basin"]
        if extra:
            raise ObservationError(
                f"hbv variable {variable!r} has the one dim 'basin'; cannot locate it along {extra}"
            )
        pts = at.get("basin")
        if pts is None:
            idx = list(range(self.n_basins))
        else:
            pts = pts.tolist() if hasattr(pts, "tolist") else pts
            pts = [pts] if isinstance(pts, str | int | float) else list(pts)
            idx = [self.basin_index(b) for b in pts]
        return _BasinOperator(self, var.name, torch.tensor(idx, dtype=torch.long))


class _BasinOperator:
    def __init__(self, model: HBVModel, name: str, index: Tensor) -> None:
        self.model, self.name, self.index = model, name, index

    @property
    def m(self) -> int:
        return int(self.index.numel())

    def __call__(self, state: Mapping[str, Tensor]) -> Tensor:
        return self.model.output(state, 0.0)[self.name][..., self.index]


# -- registration ------------------------------------------------------------------------------------------
@dataclass
class HBVOptions:
    """``model:`` options of kind ``hbv``.

    ``basin_parameters``: ``{gauge_id: {name: value or [nmul values]}}`` per-basin values (physical units)
    on top of the defaults and ``parameters:``.
    """

    nmul: int = 1
    route: bool = True
    smooth: float = 0.0  # sharpness of smooth thresholds; 0 = hard thresholds (the reference)
    basin_parameters: dict = field(default_factory=dict)


@dataclass
class HBVForcing:
    """``forcing:`` of kind ``hbv``: CAMELS-US (``camels_root`` + ``gauge_ids``) or per-basin CSV files."""

    camels_root: str = SAMPLE
    gauge_ids: list[str] = field(default_factory=lambda: list(SAMPLE_BASINS))
    source: str = "daymet"
    csv: list[str] = field(default_factory=list)
    start: str = "2000-01-01"
    end: str = "2002-12-31"


def load_forcing(
    f: HBVForcing, ctx: BuildContext | None = None, dtype: torch.dtype = torch.float64
) -> HBVForcingData:
    """The basins of a ``forcing:`` section (paths resolved against the configuration's folder)."""
    resolve = ctx.path if ctx is not None else (lambda p: p)
    start, end = (str(x) if x not in (None, "") else None for x in (f.start, f.end))
    if f.csv:
        basins = [read_basin_csv(resolve(p), start, end) for p in f.csv]
    else:
        if not f.gauge_ids:
            raise ConfigError("forcing.gauge_ids: give at least one CAMELS basin (or forcing.csv: [files])")
        root = resolve(f.camels_root)
        basins = [load_basin(root, g, start, end, source=f.source) for g in f.gauge_ids]
    return HBVForcingData.from_basins(basins, dtype)


def _basin_values(o: HBVOptions, forcing: HBVForcingData, nmul: int) -> dict[str, Tensor]:
    if not o.basin_parameters:
        return {}
    ids = forcing.gauge_ids
    out: dict[str, Tensor] = {}
    for gid, vals in o.basin_parameters.items():
        g = str(gid).zfill(8) if str(gid).isdigit() else str(gid)
        if g not in ids:
            raise ConfigError(f"model.basin_parameters: basin {gid!r} is not in the forcing's basins {ids}")
        if not isinstance(vals, Mapping):
            raise ConfigError(f"model.basin_parameters.{gid} must be a mapping {{name: value}}; got {vals!r}")
        for n, v in vals.items():
            if n not in PARAMETERS:
                raise ConfigError(
                    f"model.basin_parameters.{gid}: unknown parameter {n!r}; valid: {list(PARAMETERS)}"
                )
            if n not in out:
                shape = (len(ids), nmul) if n in HBV_PARAMETER_NAMES else (len(ids),)
                out[n] = torch.full(shape, DEFAULTS[n], dtype=torch.float64)
            out[n][ids.index(g)] = torch.as_tensor(v, dtype=torch.float64)
    return out


def _build(o: HBVOptions, ctx: BuildContext) -> HBVModel:
    if ctx.dt is not None and abs(float(ctx.dt) - DAY) > 1e-9:
        raise ConfigError(f"hbv runs in daily steps: time.dt must be 86400 (s) or absent; got {ctx.dt}")
    dtype = getattr(torch, ctx.dtype)
    forcing = load_forcing(ctx.forcing if ctx.forcing is not None else HBVForcing(), ctx, dtype)
    values = _basin_values(o, forcing, int(o.nmul))
    smooth = float(o.smooth) if o.smooth else None
    return HBVModel(forcing, nmul=o.nmul, route=o.route, smooth=smooth, values=values, dtype=dtype)


def example() -> HBVModel:
    """Two sample basins, 60 days from 2000-03-01, two components with different values, float64."""
    f = load_forcing(HBVForcing(gauge_ids=["01022500", "03015500"], start="2000-03-01", end="2000-04-29"))
    m = HBVModel(f, nmul=2)
    m.set_parameter_value("FC", torch.tensor([[150.0, 300.0], [200.0, 400.0]], dtype=torch.float64))
    m.set_parameter_value("route_b", torch.tensor([1.0, 3.0], dtype=torch.float64))
    return m


KIND = ModelKind(
    "hbv",
    _build,
    options=HBVOptions,
    forcing=HBVForcing,
    example=example,
    description="HBV 1.0 rainfall-runoff model (daily, batched basins, gamma unit-hydrograph routing)",
    conformance={
        "steps": 4,
        "t0": 20 * DAY,
        "initial": {"store": 20.0},
        "free": ["BETA", "K1", "K2", "LP", "PERC", "TT", "CFMAX", "route_a"],  # FC, route_b: per basin
        "observe": {v: {"basin": ["01022500", "03015500"]} for v in ("Q", "Q_unrouted", "ET")},
    },
)
