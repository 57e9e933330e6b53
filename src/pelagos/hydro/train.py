"""Training dPL models (and the LSTM baseline, and per-basin calibration) across basins.

One loop (:func:`train`) for every model of :mod:`pelagos.hydro.dpl` and :mod:`pelagos.hydro.lstm_baseline`:

- **data**: a :class:`BasinData` (forcing ``(n_days, n_basins, 3)`` = P mm/d, T °C, PET mm/d; observed
  discharge mm/d with NaN where missing; z-scored attributes; splits; periods), from
  :func:`pelagos.hydro.synthetic.make_benchmark` or :func:`load_camels_data`;
- **batches** of ``batch_basins`` training basins × one window of ``warmup + rho`` days whose last ``rho`` days
  lie in the training period (the warm-up may reach back before it); an epoch has
  ``ceil(n_train_basins / batch_basins) · max(1, n_train_days // rho)`` iterations (as dMG);
- **warm-up**: the first ``warmup`` days spin up HBV's stores and are cut (``warmup_mode`` "no_grad" or
  "graph", see :meth:`DplModel.forward`);
- **loss**: NSE* (σ_b of each basin over the training period) or RMSE-comb (:mod:`pelagos.hydro.metrics`);
- **optimiser**: Adam or Adadelta (lr 1.0 in dMG);
- **progress** (tqdm) and **checkpoints** (``torch.save`` of state dicts + the sampler's RNG state; read with
  ``torch.load(weights_only=True)``) after each epoch; ``resume=True`` continues from the checkpoint and gives
  the same weights as an uninterrupted run;
- **data parallel** with ``torch.distributed`` (``torchrun``, gloo on CPU): every rank draws the same batch
  (same seeded sampler), takes its share of the batch's basins (``basins[rank::world]``), divides its squared
  errors by the number of valid entries of the *global* batch and all-reduces (sums) the gradients, so every
  rank takes the optimiser step of one process holding the whole batch (equal up to float summation order;
  with dropout > 0 the masks differ between the two, so equality holds for dropout 0 or in distribution).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from ..core.errors import ConfigError, ShapeError
from .metrics import basin_std, nse_star_loss, rmse_comb_loss

__all__ = ["BasinData", "TrainSpec", "load_camels_data", "predict", "train"]


@dataclass
class BasinData:
    """Forcing, observations and attributes of a set of basins (see the module docstring for units).

    ``splits``: name → integer positions (``gauged`` is trained on; ``ungauged``, ``region`` are held out).
    ``periods``: ``warmup_end`` (date; days up to it only spin up), ``train`` and ``test`` (date pairs,
    inclusive). ``truth`` (semi-synthetic only): true ``params`` (physical), ``Q`` (noise-free), ``ET``, ``SWE``
    from day 0.
    """

    gauge_ids: list[str]
    dates: np.ndarray
    forcing: torch.Tensor
    obs: torch.Tensor
    attributes: torch.Tensor
    attribute_names: list[str]
    attributes_raw: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    huc02: np.ndarray
    splits: dict[str, np.ndarray]
    periods: dict[str, Any]
    truth: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        nd, nb = self.obs.shape
        if self.forcing.shape != (nd, nb, 3):
            raise ShapeError(
                f"forcing must be (n_days, n_basins, 3) = ({nd}, {nb}, 3); got {tuple(self.forcing.shape)}"
            )
        if self.attributes.shape[0] != nb:
            raise ShapeError(f"attributes have {self.attributes.shape[0]} rows for {nb} basins")
        if len(self.dates) != nd:
            raise ShapeError(f"{len(self.dates)} dates for {nd} days of forcing")

    def day(self, date: str) -> int:
        """Position of ``date`` (YYYY-MM-DD) in :attr:`dates`; a clear error when outside."""
        d = np.datetime64(date, "D")
        dates = self.dates.astype("datetime64[D]")
        if d < dates[0] or d > dates[-1]:
            raise ConfigError(f"date {date} is outside the data ({dates[0]} … {dates[-1]})")
        return int(np.searchsorted(dates, d))

    def period(self, name: str) -> slice:
        """Day positions of period ``train`` / ``test`` (inclusive dates) as a slice."""
        a, b = self.periods[name]
        return slice(self.day(a), self.day(b) + 1)

    @property
    def first_day(self) -> int:
        """First day after the warm-up (evaluation runs start their outputs here)."""
        return self.day(self.periods["warmup_end"]) + 1


def load_camels_data(root: str | os.PathLike, gauge_ids: Sequence[str], *,
                     warmup_end: str = "2000-12-31", train: tuple[str, str] = ("2001-01-01", "2001-12-31"),
                     test: tuple[str, str] = ("2002-01-01", "2002-12-31"), dtype=torch.float32) -> BasinData:  # fmt: skip
    """Real CAMELS basins (forcing + USGS flow through ``pelagos.hydro.camels``), attributes normalised over all
    basins of the attribute tables (the same attributes and transform as the semi-synthetic benchmark). The
    series end at the last day that every basin's forcing covers. All basins are ``gauged``."""
    from .camels import load_attributes, load_basin
    from .synthetic import ATTRIBUTES, normalise_attributes

    if not gauge_ids:
        raise ConfigError("data.gauge_ids is empty: name at least one CAMELS basin (8-digit USGS id)")
    names = list(ATTRIBUTES)
    ids_all, _, vals = load_attributes(root, names=names)
    ids_all = [str(g) for g in ids_all]
    missing = [g for g in gauge_ids if str(g) not in ids_all]
    if missing:
        raise ConfigError(f"unknown CAMELS basin id(s) {missing}; the attribute tables under {root} list "
                          f"{len(ids_all)} basins")  # fmt: skip
    z_all, _, _ = normalise_attributes(vals, names)
    geo_tab = load_attributes(root, names=["gauge_lat", "gauge_lon"])
    geo = geo_tab.values
    pos = [ids_all.index(str(g)) for g in gauge_ids]
    basins = [load_basin(root, str(g)) for g in gauge_ids]
    n = min(len(b.dates) for b in basins)
    dates = basins[0].dates[:n]
    forcing = np.stack([np.stack([b.prcp[:n], b.tmean[:n], b.pet[:n]], -1) for b in basins], 1)
    obs = np.stack([np.asarray(b.q_obs[:n], dtype=float) for b in basins], 1)
    return BasinData(
        gauge_ids=[str(g) for g in gauge_ids],
        dates=dates,
        forcing=torch.as_tensor(forcing, dtype=dtype),
        obs=torch.as_tensor(obs, dtype=dtype),
        attributes=torch.as_tensor(z_all[pos], dtype=dtype),
        attribute_names=names,
        attributes_raw=vals[pos],
        lat=geo[pos, 0],
        lon=geo[pos, 1],
        huc02=np.array([int(geo_tab.huc02[i]) for i in pos]),
        splits={"gauged": np.arange(len(gauge_ids))},
        periods={"warmup_end": warmup_end, "train": tuple(train), "test": tuple(test)},
    )


@dataclass
class TrainSpec:
    """Training settings (the ``train:`` section of ``pelagos hydro``)."""

    epochs: int = 20
    batch_basins: int = 100
    rho: int = 365  # days per window with loss
    warmup: int = 365  # spin-up days before each window (cut from the loss)
    warmup_mode: Literal["no_grad", "graph"] = "no_grad"
    loss: Literal["nse_star", "rmse_comb"] = "nse_star"
    optimizer: Literal["adam", "adadelta"] = "adam"
    lr: float = 0.01
    seed: int = 111111
    threads: int | None = None  # torch threads (None: leave as is)
    progress: bool | None = None  # tqdm bar (None: when stderr is a terminal)

    def validate(self, where: str = "train") -> None:
        for k in ("epochs", "batch_basins", "rho"):
            if getattr(self, k) < 1:
                raise ConfigError(f"train.{k} must be >= 1; got {getattr(self, k)}")
        if self.warmup < 0:
            raise ConfigError(f"train.warmup must be >= 0; got {self.warmup}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0; got {self.lr}")


def _optimizer(spec: TrainSpec, params) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr)
    if spec.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=spec.lr)
    raise ConfigError(f"train.optimizer must be 'adam' or 'adadelta'; got {spec.optimizer!r}")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _q(out) -> torch.Tensor:
    return out.Q if hasattr(out, "Q") else out


def run_window(model: torch.nn.Module, data: BasinData, basins: torch.Tensor, start: int, warmup: int,
               length: int, warmup_mode: str = "no_grad") -> torch.Tensor:  # fmt: skip
    """Simulated discharge ``(length, n)`` of ``model`` for ``basins`` over days ``start+warmup …`` after a
    ``warmup``-day spin-up from day ``start``."""
    sl = slice(start, start + warmup + length)
    f = data.forcing[sl][:, basins]
    z = data.attributes[basins]
    return _q(model(f, z, warmup=warmup, warmup_mode=warmup_mode, basins=basins))


def train(
    model: torch.nn.Module,
    data: BasinData,
    spec: TrainSpec,
    *,
    basins: Sequence[int] | np.ndarray | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Train ``model`` on ``basins`` (default: ``data.splits["gauged"]``) over the training period; returns
    the mean loss of each epoch (all epochs, including those before a resume)."""
    spec.validate()
    if spec.threads:
        torch.set_num_threads(int(spec.threads))
    rank, world = _world()
    basins = np.asarray(data.splits["gauged"] if basins is None else basins, dtype=int)
    if len(basins) == 0:
        raise ConfigError("no training basins (the gauged split is empty)")
    tr = data.period("train")
    t0, t1 = tr.start, tr.stop  # loss days must lie in [t0, t1)
    n_train_days = t1 - t0
    rho = min(spec.rho, n_train_days)
    lo = max(t0 - spec.warmup, 0)  # first possible window start
    hi = t1 - rho - spec.warmup  # last possible window start
    if hi < lo:
        raise ConfigError(
            f"train.warmup ({spec.warmup}) + rho ({rho}) days do not fit before the end of the training period "
            f"({data.periods['train'][1]}); shorten warmup or rho"
        )
    std = basin_std(data.obs[tr]).to(data.obs.dtype)
    if spec.loss == "nse_star" and bool(torch.isnan(std[basins]).any()):
        raise ConfigError("some training basins have no observed discharge in the training period")
    fn = getattr(model, "fit_normalisation", None)
    if fn is not None:
        f_train = data.forcing[tr][:, basins]
        try:
            fn(f_train, data.obs[tr][:, basins])
        except TypeError:
            fn(f_train)
    opt = _optimizer(spec, model.parameters())
    gen = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    history: list[float] = []
    first = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        ck = load_checkpoint(checkpoint)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        history = list(ck["history"])
        first = int(ck["epoch"]) + 1
    bs = min(spec.batch_basins, len(basins))
    n_iter = math.ceil(len(basins) / bs) * max(1, n_train_days // rho)
    show = spec.progress if spec.progress is not None else (sys.stderr.isatty() and rank == 0)
    bar = None
    if show and first < spec.epochs:
        from tqdm.auto import tqdm

        bar = tqdm(total=(spec.epochs - first) * n_iter, desc="dPL training", unit="it")
    model.train()
    for epoch in range(first, spec.epochs):
        total = 0.0
        for _ in range(n_iter):
            pick = torch.randperm(len(basins), generator=gen)[:bs]
            start = int(torch.randint(lo, hi + 1, (1,), generator=gen))
            b_all = torch.as_tensor(basins[pick.numpy()])
            b_loc = b_all[rank::world]
            days = slice(start + spec.warmup, start + spec.warmup + rho)
            obs_all = data.obs[days][:, b_all]
            count = (~torch.isnan(obs_all)).sum().to(data.obs.dtype)
            opt.zero_grad(set_to_none=False)
            if len(b_loc):
                sim = run_window(model, data, b_loc, start, spec.warmup, rho, spec.warmup_mode)
                obs = data.obs[days][:, b_loc]
                if spec.loss == "nse_star":
                    loss = nse_star_loss(sim, obs, std[b_loc], count=count)
                else:
                    if world > 1:
                        raise ConfigError("data-parallel training supports loss nse_star only")
                    loss = rmse_comb_loss(sim, obs)
                loss.backward()
                val = loss.detach()
            else:
                val = torch.zeros((), dtype=data.obs.dtype)
            if world > 1:
                for p in model.parameters():
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                val = val.clone()
                dist.all_reduce(val, op=dist.ReduceOp.SUM)
            opt.step()
            total += float(val)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(val):.4f}")
        history.append(total / n_iter)
        if log is not None and rank == 0:
            log(f"epoch {epoch + 1}/{spec.epochs}: loss {history[-1]:.5f}")
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, model, opt, gen, epoch, history)
        if world > 1:
            dist.barrier()
    if bar is not None:
        bar.close()
    model.eval()
    return history


def save_checkpoint(path, model, opt, gen: torch.Generator, epoch: int, history: list[float]) -> None:
    """State dicts of model and optimiser, sampler and torch RNG states, epoch and loss history; written to a
    temporary file and renamed (a crash leaves the previous checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": int(epoch),
            "history": [float(h) for h in history],
        },
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (tensors and plain containers only)."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist; run `pelagos hydro train` first") from None


def predict(model: torch.nn.Module, data: BasinData, basins: Sequence[int] | np.ndarray | None = None,
            *, chunk: int = 256):  # fmt: skip
    """Run ``model`` over the whole series for ``basins`` (default all), the days up to
    ``periods["warmup_end"]`` as warm-up (inside no graph); returns the model's output from the first day after
    the warm-up (an ``HBVOutput`` for dPL models, a tensor for the LSTM), basins in the order given."""
    idx = np.arange(data.obs.shape[1]) if basins is None else np.asarray(basins, dtype=int)
    w = data.first_day
    outs = []
    model.eval()
    with torch.no_grad():
        for k in range(0, len(idx), chunk):
            b = torch.as_tensor(idx[k : k + chunk])
            outs.append(
                model(data.forcing[:, b], data.attributes[b], warmup=w, warmup_mode="graph", basins=b)
            )
    if torch.is_tensor(outs[0]):
        return torch.cat(outs, 1)
    return _cat_outputs(outs)


def _cat_outputs(outs: list) -> Any:
    first = outs[0]
    if len(outs) == 1:
        return first
    import dataclasses

    vals: dict[str, Any] = {}
    for f in dataclasses.fields(first):
        v = [getattr(o, f.name) for o in outs]
        if f.name in ("uh", "initial_storage"):  # per basin: (n_basins, ...)
            vals[f.name] = None if v[0] is None else torch.cat(v, 0)
        elif f.name == "state":
            vals[f.name] = {k: torch.cat([x[k] for x in v], 0) for k in v[0]}
        elif torch.is_tensor(v[0]):  # (n_days, n_basins)
            vals[f.name] = torch.cat(v, 1)
        else:
            vals[f.name] = v[0]
    return dataclasses.replace(first, **vals)
