"""``pelagos hydro train|evaluate``: the dPL experiments from one configuration (read by the one loader,
:func:`pelagos.io.config.load_config`, with the command's own sections in ``extra_sections``)::

    model:   {kind: hbv}                       # the process model (its options, e.g. smooth, if the kind has them)
    data:    {kind: synthetic, root: ../shared/data/camels_us_sample, n_basins: 200, ...}   # or kind: camels
    dpl:     {network: mlp, nmul: 1, dynamic: [], hidden: 64, layers: 2, dropout: 0.0, process: []}
    train:   {epochs: 20, batch_basins: 100, rho: 365, warmup: 365, loss: nse_star, optimizer: adam, lr: 0.01}
    compare: {models: [dpl, lstm, calibration], lstm_hidden: 64, lstm_lr: 0.005, calibration_lr: 0.05}
    output:  {file: results/hydro_dpl}         # base name: <base>_<model>.pt, <base>_metrics.json, figures

``train`` trains every model of ``compare.models`` on the gauged basins' training period and writes a
checkpoint per model and ``<base>_training.json`` (loss curves, seconds per epoch). ``evaluate`` rebuilds the
data (seeded), loads the checkpoints (``weights_only=True``) and writes ``<base>_metrics.json`` and figures:
NSE/KGE per split on the test period; on the semi-synthetic data also parameter error against the hidden truth,
spatial coherence (Moran's I) of the parameter maps and untrained outputs (ET, SWE) against the true ones.
Per-basin calibration has no parameters in held-out basins; they take those of the nearest gauged basin
(great-circle distance between gauges: regionalisation by spatial proximity).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..core.errors import ConfigError
from .synthetic import SyntheticSpec
from .train import BasinData, TrainSpec

__all__ = ["CamelsSpec", "CompareSpec", "DplSpec", "evaluate_models", "load", "train_models"]

MODELS = ("dpl", "lstm", "calibration")


@dataclass
class CamelsSpec:
    """``data: {kind: camels}``: real CAMELS-US basins (forcing and USGS flow)."""

    root: str = "../shared/data/camels_us_sample"
    gauge_ids: list[str] = field(default_factory=lambda: ["01022500", "01547700", "02064000", "03015500"])
    warmup_end: str = "2000-12-31"
    train: tuple[str, str] = ("2001-01-01", "2001-12-31")
    test: tuple[str, str] = ("2002-01-01", "2002-12-31")


@dataclass
class DplSpec:
    """``dpl:``: the parameter network (:class:`pelagos.hydro.dpl.DplModel`)."""

    network: Literal["mlp", "lstm"] = "mlp"
    nmul: int = 1
    dynamic: list[str] = field(default_factory=list)
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.0
    process: list[Literal["ET"]] = field(default_factory=list)  # fluxes replaced by a network
    smooth: float | None = None

    def validate(self, where: str = "dpl") -> None:
        if self.nmul < 1 or self.hidden < 1 or self.layers < 0:
            raise ConfigError("dpl.nmul and dpl.hidden must be >= 1, dpl.layers >= 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dpl.dropout must be in [0, 1); got {self.dropout}")


@dataclass
class CompareSpec:
    """``compare:``: which models to train and the baselines' settings."""

    models: list[Literal["dpl", "lstm", "calibration"]] = field(default_factory=lambda: ["dpl"])
    lstm_hidden: int = 64
    lstm_dropout: float = 0.4
    lstm_lr: float = 0.005
    lstm_epochs: int | None = None  # None: train.epochs
    calibration_lr: float = 0.05
    calibration_epochs: int | None = None

    def validate(self, where: str = "compare") -> None:
        if not self.models:
            raise ConfigError(f"compare.models is empty; choose from {list(MODELS)}")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"compare.models lists a model twice: {self.models}")


def _data_section(raw: Any, where: str):
    from ..io.config import from_mapping

    if raw is None:
        raise ConfigError(f"the configuration has no `{where}:` section (kind: synthetic | camels, ...)")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping; got {raw!r}")
    raw = dict(raw)
    kind = raw.pop("kind", "synthetic")
    if kind == "synthetic":
        return from_mapping(SyntheticSpec, raw, where)
    if kind == "camels":
        return from_mapping(CamelsSpec, raw, where)
    raise ConfigError(f"{where}.kind must be 'synthetic' or 'camels'; got {kind!r}")


@dataclass
class HydroConfig:
    """A loaded ``pelagos hydro`` configuration."""

    data: SyntheticSpec | CamelsSpec
    dpl: DplSpec
    train: TrainSpec
    compare: CompareSpec
    smooth: float | None
    out_dir: Path
    name: str

    def path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.name}_{suffix}"


def load(source: str | os.PathLike | Mapping[str, Any], *, overrides: list[str] | None = None,
         output: str | os.PathLike | None = None) -> HydroConfig:  # fmt: skip
    """Read a ``pelagos hydro`` configuration (module docstring) with the one loader."""
    from ..core.paths import resolve_path
    from ..io.config import load_config

    cfg = load_config(
        source,
        overrides=overrides,
        extra_sections={"data": _data_section, "dpl": DplSpec, "train": TrainSpec, "compare": CompareSpec},
    )
    if cfg.kind.name != "hbv":
        raise ConfigError(f"`pelagos hydro` trains parameter networks for HBV: use model: {{kind: hbv}}; "
                          f"got {cfg.kind.name!r}")  # fmt: skip
    data = cfg.extra["data"]
    data = dataclasses.replace(data, root=str(resolve_path(data.root, cfg.base)))
    if not Path(data.root).is_dir():
        raise ConfigError(f"data.root {data.root} is not a folder (the CAMELS-US folder with the attribute tables)")
    if output is not None:
        out = Path(output)
    elif cfg.output.file:
        out = resolve_path(cfg.output.file, cfg.base)
    else:
        out = Path("results") / (Path(cfg.path).stem if cfg.path else "hydro_dpl")
    dpl = cfg.extra["dpl"] or DplSpec()
    smooth = dpl.smooth if dpl.smooth is not None else getattr(cfg.model, "smooth", None)
    return HydroConfig(
        data=data,
        dpl=dpl,
        train=cfg.extra["train"] or TrainSpec(),
        compare=cfg.extra["compare"] or CompareSpec(),
        smooth=smooth,
        out_dir=out.parent,
        name=out.name.removesuffix(".nc"),
    )


def build_data(cfg: HydroConfig) -> BasinData:
    """The data of the configuration (semi-synthetic benchmark or real CAMELS basins)."""
    from .synthetic import make_benchmark
    from .train import load_camels_data

    if isinstance(cfg.data, SyntheticSpec):
        return make_benchmark(cfg.data)
    d = cfg.data
    return load_camels_data(d.root, d.gauge_ids, warmup_end=d.warmup_end, train=tuple(d.train), test=tuple(d.test))


def build_model(cfg: HydroConfig, which: str, data: BasinData) -> torch.nn.Module:
    """A fresh (seeded) model ``which`` ∈ dpl | lstm | calibration for ``data``."""
    from .dpl import DplModel, ETNet
    from .lstm_baseline import LSTMBaseline

    torch.manual_seed(cfg.train.seed)
    na = data.attributes.shape[1]
    if which == "dpl":
        d = cfg.dpl
        proc = {p: ETNet() for p in d.process}
        return DplModel(na, network=d.network, nmul=d.nmul, dynamic=d.dynamic, hidden=d.hidden, layers=d.layers,
                        dropout=d.dropout, process=proc, smooth=cfg.smooth)  # fmt: skip
    if which == "lstm":
        c = cfg.compare
        return LSTMBaseline(na, hidden=c.lstm_hidden, dropout=c.lstm_dropout)
    if which == "calibration":
        return DplModel(na, network="table", n_basins=data.obs.shape[1], nmul=cfg.dpl.nmul, smooth=cfg.smooth)
    raise ConfigError(f"unknown model {which!r}; valid: {list(MODELS)}")


def _spec_for(cfg: HydroConfig, which: str) -> TrainSpec:
    c = cfg.compare
    if which == "lstm":
        return dataclasses.replace(cfg.train, lr=c.lstm_lr, epochs=c.lstm_epochs or cfg.train.epochs)
    if which == "calibration":
        return dataclasses.replace(cfg.train, lr=c.calibration_lr, optimizer="adam",
                                   epochs=c.calibration_epochs or cfg.train.epochs)  # fmt: skip
    return cfg.train


def train_models(cfg: HydroConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> list[Path]:
    """Train every model of ``compare.models``; checkpoints ``<base>_<model>.pt`` and ``<base>_training.json``."""
    from .train import _world, train

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    data = build_data(cfg)
    log(f"data: {data.obs.shape[1]} basins × {data.obs.shape[0]} days; splits "
        + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items()))  # fmt: skip
    rank, world = _world()
    record: dict[str, Any] = {"world_size": world, "threads": torch.get_num_threads(), "models": {}}
    paths = []
    for which in cfg.compare.models:
        model = build_model(cfg, which, data)
        spec = _spec_for(cfg, which)
        ck = cfg.path(f"{which}.pt")
        t0 = time.perf_counter()
        hist = train(model, data, spec, checkpoint=ck, resume=resume, log=lambda s, w=which: log(f"[{w}] {s}"))
        sec = time.perf_counter() - t0
        record["models"][which] = {"history": hist, "seconds": sec, "epochs": spec.epochs,
                                   "seconds_per_epoch": sec / max(1, spec.epochs),
                                   "n_parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
        log(f"[{which}] {sec:.1f} s ({sec / max(1, spec.epochs):.2f} s/epoch)")
        paths.append(ck)
    if rank == 0:
        p = cfg.path("training.json")
        p.write_text(json.dumps(record, indent=1))
        paths.append(p)
    return paths


# -- evaluation ------------------------------------------------------------------------------------------------
def _nearest(lat: np.ndarray, lon: np.ndarray, targets: np.ndarray, donors: np.ndarray) -> np.ndarray:
    """For each target basin, the donor basin of smallest great-circle distance."""
    la, lo = np.radians(lat), np.radians(lon)
    t, d = targets[:, None], donors[None, :]
    c = np.sin(la[t]) * np.sin(la[d]) + np.cos(la[t]) * np.cos(la[d]) * np.cos(lo[t] - lo[d])
    return donors[np.argmax(c, axis=1)]


class _Regionalised(torch.nn.Module):
    """Per-basin calibration applied to any basin through its donor (nearest gauged basin)."""

    def __init__(self, inner: torch.nn.Module, donor: np.ndarray):
        super().__init__()
        self.inner = inner
        self.donor = torch.as_tensor(donor)

    def forward(self, forcing, attributes, *, basins, **kw):
        return self.inner(forcing, attributes, basins=self.donor[basins], **kw)


def morans_i(values: np.ndarray, lat: np.ndarray, lon: np.ndarray, k: int = 5) -> float:
    """Moran's I of a per-basin map with binary weights to each basin's ``k`` nearest gauges (1: perfectly
    clustered, ≈ −1/(n−1): spatially random)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n <= k:
        return float("nan")
    la, lo = np.radians(lat), np.radians(lon)
    c = np.sin(la[:, None]) * np.sin(la[None]) + np.cos(la[:, None]) * np.cos(la[None]) * np.cos(lo[:, None] - lo[None])
    np.fill_diagonal(c, -2.0)
    nn_idx = np.argsort(-c, axis=1)[:, :k]
    z = v - v.mean()
    num = (z[:, None] * z[nn_idx]).sum() / (n * k)
    return float(num / (z**2).mean()) if (z**2).mean() > 0 else float("nan")


def _stats(v: torch.Tensor | np.ndarray) -> dict[str, float]:
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"n": 0}
    return {"n": len(v), "median": float(np.median(v)), "mean": float(np.mean(v)),
            "p25": float(np.percentile(v, 25)), "p75": float(np.percentile(v, 75))}  # fmt: skip


def _unit(params: Mapping[str, torch.Tensor], names) -> np.ndarray:
    """Physical parameters → [0, 1] (component mean), ``(n_basins, n_params)``."""
    from .hbv import PARAMETERS

    cols = []
    for n in names:
        v = params[n].detach().double()
        v = v.mean(-1) if v.dim() == 2 else v
        lo, hi = PARAMETERS[n].lo, PARAMETERS[n].hi
        cols.append(((v - lo) / (hi - lo)).numpy())
    return np.stack(cols, 1)


def evaluate_models(cfg: HydroConfig, *, log: Callable[[str], None] = print) -> list[Path]:
    """Evaluate the trained models (module docstring); returns the paths written."""
    from . import plots
    from .hbv import PARAMETER_NAMES
    from .metrics import kge, nse
    from .train import load_checkpoint, predict

    data = build_data(cfg)
    te = data.period("test")
    w = data.first_day
    sl = slice(te.start - w, te.stop - w)
    obs = data.obs[te]
    models: dict[str, torch.nn.Module] = {}
    for which in cfg.compare.models:
        m = build_model(cfg, which, data)
        ck = cfg.path(f"{which}.pt")
        m.load_state_dict(load_checkpoint(ck)["model"])
        models[which] = m
    gauged = data.splits["gauged"]
    if "calibration" in models:
        donor = np.arange(data.obs.shape[1])
        held = np.setdiff1d(donor, gauged)
        if len(held):
            donor[held] = _nearest(data.lat, data.lon, held, gauged)
        models["calibration"] = _Regionalised(models["calibration"], donor)
    label = {"dpl": f"dPL ({cfg.dpl.network})", "lstm": "LSTM", "calibration": "per-basin calibration"}
    outs = {k: predict(m, data) for k, m in models.items()}
    q = {k: (o if torch.is_tensor(o) else o.Q)[sl] for k, o in outs.items()}
    if data.truth is not None:
        q["truth (noise-free)"] = data.truth["Q"][te]
    res: dict[str, Any] = {"n_basins": int(data.obs.shape[1]), "test_period": list(data.periods["test"]),
                           "splits": {k: len(v) for k, v in data.splits.items()}, "nse": {}, "kge": {}}  # fmt: skip
    nse_all = {k: nse(v, obs).numpy() for k, v in q.items()}
    kge_all = {k: kge(v, obs).numpy() for k, v in q.items()}
    splits = {k: v for k, v in data.splits.items() if len(v)}
    cdf: dict[str, dict[str, np.ndarray]] = {}
    for s, idx in splits.items():
        res["nse"][s] = {k: _stats(v[idx]) for k, v in nse_all.items()}
        res["kge"][s] = {k: _stats(v[idx]) for k, v in kge_all.items()}
        cdf[s] = {label.get(k, k): v[idx] for k, v in nse_all.items()}
        log(f"{s:9s} median NSE: " + ", ".join(f"{label.get(k, k)} {res['nse'][s][k].get('median', float('nan')):.3f}"
                                               for k in nse_all))  # fmt: skip
    paths = []
    figdir = cfg.out_dir
    paths.append(plots.plot_nse_cdf(cdf, figdir / f"{cfg.name}_nse_cdf.png"))
    # hydrographs: the median-NSE basin of each split (by the first model)
    first = next(iter(models))
    dates = data.dates[te]
    series, titles = [], []
    for s, idx in splits.items():
        v = nse_all[first][idx]
        if not np.isfinite(v).any():
            continue
        b = idx[np.nanargmin(np.abs(v - np.nanmedian(v)))]
        d = {"observed": obs[:, b].numpy()}
        if data.truth is not None:
            d["truth"] = data.truth["Q"][te][:, b].numpy()
        for k in models:
            d[label[k]] = q[k][:, b].numpy()
        series.append(d)
        titles.append(f"{s} basin {data.gauge_ids[b]} (HUC {data.huc02[b]:02d}): "
                      + ", ".join(f"{label[k]} NSE {nse_all[k][b]:.2f}" for k in models))  # fmt: skip
    paths.append(plots.plot_hydrographs(dates, series, titles, figdir / f"{cfg.name}_hydrographs.png"))
    # parameters
    names = list(PARAMETER_NAMES)
    learned = {}
    for k in ("dpl", "calibration"):
        if k in models and not torch.is_tensor(outs[k]):
            m = models[k]
            with torch.no_grad():
                if k == "dpl":
                    p = m.parameters_for(data.forcing[: w + 365], data.attributes)
                    p = {n: (v.mean(0) if (n in m.dynamic) else v) for n, v in p.items()}
                else:
                    p = m.inner.parameters_for(None, data.attributes, m.donor)
            learned[k] = _unit(p, names)
    res["parameters"] = {}
    if data.truth is not None and learned:
        true_u = _unit(data.truth["params"], names)
        rng = np.random.default_rng(0)
        const = true_u[gauged].mean(0)
        for s, idx in splits.items():
            entry: dict[str, Any] = {}
            cand = {**{label[k]: v for k, v in learned.items()},
                    "constant (gauged mean of the truth)": np.broadcast_to(const, true_u.shape),
                    "random (uniform in the bounds)": rng.uniform(size=true_u.shape)}  # fmt: skip
            for src, v in cand.items():
                err = v[idx] - true_u[idx]
                corr = [float(np.corrcoef(v[idx, j], true_u[idx, j])[0, 1]) if np.std(v[idx, j]) > 0 and len(idx) > 2
                        else float("nan") for j in range(len(names))]  # fmt: skip
                entry[src] = {"rmse_unit": dict(zip(names, np.sqrt((err**2).mean(0)).round(4).tolist())),
                              "rmse_unit_mean": float(np.sqrt((err**2).mean(0)).mean()),
                              "corr": dict(zip(names, np.round(corr, 3).tolist())),
                              "corr_median": float(np.nanmedian(corr)) if np.isfinite(corr).any() else None}  # fmt: skip
            res["parameters"][s] = entry
            log(f"{s:9s} parameter RMSE (unit scale, mean over 14): "
                + ", ".join(f"{k} {e['rmse_unit_mean']:.3f}" for k, e in entry.items()))  # fmt: skip
        # spatial coherence
        res["morans_i"] = {}
        allb = np.arange(data.obs.shape[1])
        for src, v in {"truth": true_u, **{label[k]: v for k, v in learned.items()}}.items():
            mi = [morans_i(v[allb, j], data.lat, data.lon) for j in range(len(names))]
            res["morans_i"][src] = {"per_parameter": dict(zip(names, np.round(mi, 3).tolist())),
                                    "median": float(np.nanmedian(mi))}  # fmt: skip
        maps_names = ["FC", "K2", "CFMAX", "BETA"]
        maps = {n: {"truth": true_u[:, names.index(n)], **{label[k]: v[:, names.index(n)] for k, v in learned.items()}}
                for n in maps_names}  # fmt: skip
        held_mask = ~np.isin(np.arange(data.obs.shape[1]), gauged)
        paths.append(plots.plot_parameter_maps(data.lon, data.lat, maps, figdir / f"{cfg.name}_parameter_maps.png",
                                               held_out=held_mask))  # fmt: skip
        attrs = {a: data.attributes_raw[:, data.attribute_names.index(a)] for a in
                 ("max_water_content", "geol_permeability", "frac_snow", "aridity")}  # fmt: skip
        pairs = [("FC", "max_water_content"), ("K2", "geol_permeability"), ("CFMAX", "frac_snow"), ("BETA", "aridity")]
        pv = {n: {"truth": true_u[:, names.index(n)], **{label[k]: v[:, names.index(n)] for k, v in learned.items()}}
              for n, _ in pairs}  # fmt: skip
        paths.append(plots.plot_parameters_vs_attributes(pairs, attrs, pv, figdir / f"{cfg.name}_parameters_vs_attributes.png"))
        # untrained outputs
        res["untrained"] = {}
        for var in ("ET", "SWE"):
            tv = data.truth[var][te]
            res["untrained"][var] = {}
            for k in learned:
                sim = outs[k].__getattribute__(var)[sl]
                e = nse(sim, tv).numpy()
                res["untrained"][var][label[k]] = {s: _stats(e[idx]) for s, idx in splits.items()}
        snowy = int(np.argmax(data.truth["SWE"][te].max(0).values.numpy()))
        any_b = int(splits.get("region", gauged)[0])
        panels = []
        for var, b, unit in (("ET", any_b, "mm/d"), ("SWE", snowy, "mm")):
            d = {"truth": data.truth[var][te][:, b].numpy()}
            for k in learned:
                d[label[k]] = getattr(outs[k], var)[sl][:, b].numpy()
            panels.append((f"{var} ({unit}), basin {data.gauge_ids[b]} (never trained on {var})", d))
        paths.append(plots.plot_untrained_outputs(dates, panels, figdir / f"{cfg.name}_untrained_outputs.png"))
    elif learned:
        res["parameters"]["values"] = {label[k]: {data.gauge_ids[i]: dict(zip(names, np.round(v[i], 3).tolist()))
                                                  for i in range(len(data.gauge_ids))} for k, v in learned.items()}  # fmt: skip
    tj = cfg.path("training.json")
    if tj.exists():
        tr = json.loads(tj.read_text())
        res["training"] = {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in tr["models"].items()}
        paths.append(plots.plot_training_curves({label.get(k, k): v["history"] for k, v in tr["models"].items()},
                                                figdir / f"{cfg.name}_training_curves.png"))  # fmt: skip
    mp = cfg.path("metrics.json")
    mp.write_text(json.dumps(res, indent=1, default=float))
    return [mp, *paths]
