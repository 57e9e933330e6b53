"""Registry entries of the QG models: kinds ``qg`` (two layers), ``qg_layered`` (N layers), ``qg_bt`` (one).

Options are the models' constructor arguments with pyqg's names, units and defaults (see
:mod:`pelagos.qg.models`); ``dt`` in the ``time:`` section of a configuration overrides ``dt`` here, and
``initial: {seed: …}`` seeds the random initial PV. ``closure: {type: Smagorinsky | BackscatterBiharmonic |
ZannaBolton2020, ...its arguments}`` attaches one of pyqg's parameterizations; neural closures are attached in
Python or trained by the hybrid configuration (:mod:`pelagos.qg.hybrid`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.registry import BuildContext, ModelKind
from . import parameterizations as P
from .models import BTModel, LayeredModel, QGModel

CLOSURES = {
    "Smagorinsky": P.Smagorinsky,
    "BackscatterBiharmonic": P.BackscatterBiharmonic,
    "ZannaBolton2020": P.ZannaBolton2020,
}


@dataclass
class QGInitial:
    """``initial:`` section of the QG kinds: seed of pyqg's random initial PV."""

    seed: int = 0


@dataclass
class _Grid:
    nx: int = 64
    ny: int | None = None
    L: float = 1e6
    W: float | None = None
    dt: float = 7200.0
    rek: float = 5.787e-7
    filterfac: float = 23.6
    closure: dict | None = None


@dataclass
class QGOptions(_Grid):
    """``model:`` options of kind ``qg`` (pyqg ``QGModel``): grid, dt [s], rek [s-1], filterfac, beta
    [m-1 s-1], rd [m], delta [-], H1 [m], U1, U2 [m s-1]."""

    beta: float = 1.5e-11
    rd: float = 15000.0
    delta: float = 0.25
    H1: float = 500.0
    U1: float = 0.025
    U2: float = 0.0


@dataclass
class LayeredOptions(_Grid):
    """``model:`` options of kind ``qg_layered`` (pyqg ``LayeredModel``): nz layers with thicknesses ``H``
    [m], densities ``rho`` [kg m-3], background velocities ``U`` [m s-1] (lists of nz; defaults as
    :class:`~pelagos.qg.LayeredModel`), f [s-1], g [m s-2], beta [m-1 s-1]."""

    nz: int = 3
    beta: float = 1.5e-11
    f: float = 0.0001236812857687059
    g: float = 9.81
    H: list[float] | None = None
    rho: list[float] | None = None
    U: list[float] | None = None


@dataclass
class BTOptions(_Grid):
    """``model:`` options of kind ``qg_bt`` (pyqg ``BTModel``): beta [m-1 s-1], rd [m] (0 = ∞), H [m], U
    [m s-1]."""

    beta: float = 0.0
    rd: float = 0.0
    H: float = 1.0
    U: float = 0.0


def _kwargs(options, ctx: BuildContext) -> dict:
    kw = asdict(options)
    if ctx.dt is not None:
        kw["dt"] = float(ctx.dt)
    kw["dtype"] = getattr(torch, ctx.dtype)
    closure = kw.pop("closure", None)
    if closure:
        c = dict(closure)
        ctype = c.pop("type", None)
        if ctype not in CLOSURES:
            raise ConfigError(f"model.closure.type {ctype!r} is not a closure; valid: {', '.join(CLOSURES)}")
        try:
            kw["parameterization"] = CLOSURES[ctype](**c)
        except TypeError as err:
            raise ConfigError(f"model.closure ({ctype}): {err}") from None
    return kw


def _build_qg(o: QGOptions, ctx: BuildContext) -> QGModel:
    return QGModel(**_kwargs(o, ctx))


def _build_layered(o: LayeredOptions, ctx: BuildContext) -> LayeredModel:
    return LayeredModel(**_kwargs(o, ctx))


def _build_bt(o: BTOptions, ctx: BuildContext) -> BTModel:
    return BTModel(**_kwargs(o, ctx))


def run_extras(model, n_steps: int):
    """What ``pelagos run`` adds for QG: time-mean diagnostics of the second half and a plot of the run."""
    from .diagnostics import diagnostics

    acc: dict[str, Any] = {"sum": None, "count": 0}

    def accumulate(sim, state, t, step):
        if step >= n_steps // 2:
            d = diagnostics(model, state)
            acc["sum"] = d if acc["sum"] is None else {k: acc["sum"][k] + d[k] for k in d}
            acc["count"] += 1

    def finish(out: Path, state) -> list[Path]:
        import xarray as xr

        from .dataset import to_dataset
        from .plots import plot_run

        ds = xr.load_dataset(out, decode_times=False)
        if acc["sum"]:
            mean = to_dataset(model, state, diagnostics=True)
            for name, total in acc["sum"].items():
                ds[name + "_mean"] = (mean[name].dims, (total / acc["count"]).numpy())
            ds.to_netcdf(out)
        files = []
        try:  # a plot never fails a run
            batch = [d for d in ds["q"].dims if d not in ("time", "lev", "y", "x")]
            pds = ds.rename({batch[0]: "run"}) if batch and batch[0] != "run" else ds
            if "run" not in pds["q"].dims:
                pds = pds.assign(q=pds["q"].expand_dims("run", axis=1))
            png = out.with_suffix(".png")
            fig = plot_run(model, pds, png)
            import matplotlib.pyplot as plt

            plt.close(fig)
            files.append(png)
        except Exception:
            pass
        return files

    return accumulate, finish


def _inputs(model, state):
    """The QG state's independent input is q (qh, the AB3 history and level follow from it at the start)."""
    return [state["q"]], model.state_from_q


def _loss(state):
    return [1e7 * state["q"]]


# Conformance: free parameters whose log-transformed values FD can perturb (β has no transform and a tiny
# value); the gradient check runs through q (the spectral leaves are complex).
_CONF = {"steps": 3, "perturb": False, "inputs": _inputs, "loss": _loss}

KIND = ModelKind(
    "qg",
    _build_qg,
    options=QGOptions,
    initial=QGInitial,
    example=lambda: QGModel(nx=16, dt=6 * 3600.0),
    description="two-layer quasi-geostrophic model (pyqg QGModel), pseudo-spectral, doubly periodic",
    conformance={**_CONF, "free": ["rek", "rd", "delta"]},
    run_extras=run_extras,
)
KIND_LAYERED = ModelKind(
    "qg_layered",
    _build_layered,
    options=LayeredOptions,
    initial=QGInitial,
    example=lambda: LayeredModel(nz=3, nx=8, dt=6 * 3600.0),
    description="N-layer quasi-geostrophic model (pyqg LayeredModel)",
    conformance={**_CONF, "free": ["rek", "H_0", "f"]},
    run_extras=run_extras,
)
KIND_BT = ModelKind(
    "qg_bt",
    _build_bt,
    options=BTOptions,
    initial=QGInitial,
    example=lambda: BTModel(nx=8, dt=6 * 3600.0, rd=5e4, beta=1e-11),
    description="single-layer (equivalent) barotropic quasi-geostrophic model (pyqg BTModel)",
    conformance={**_CONF, "free": ["rek", "kd2"]},
    run_extras=run_extras,
)

__all__ = ["KIND", "KIND_BT", "KIND_LAYERED", "BTOptions", "LayeredOptions", "QGInitial", "QGOptions"]
