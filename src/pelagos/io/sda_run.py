"""SDA on the two-layer QG model, end to end: training driver, scenarios, baselines, evaluation, figures.

Everything around the diffusion model of :mod:`pelagos.inverse.sda` / :mod:`pelagos.nn.score`:

- :func:`train` — AdamW, linear learning-rate decay (per step, to 0), DSM loss on random windows of
  ``2k+1`` states streamed by :class:`~pelagos.qg.sda_data.TrajectoryWindows`, validation loss on fixed
  windows with fixed noise, EMA of the weights, a checkpoint every epoch (``torch.save`` of state dicts and
  plain numbers, read back with ``weights_only=True``) from which a new call resumes, progress bars, and
  data-parallel training when started by ``torchrun`` (``torch.distributed``, gloo on CPU, nccl on GPU).
- :class:`Scenario` — the observation scenarios of the study, as operators on standardised trajectories
  ``A(x (B, L, 6, H, W)) -> (B, m)`` (for SDA) and, per observed state, on the simulation model's PV
  (an :class:`~pelagos.core.observations.ObservationSet` for 4D-Var and the EnKF): ``grid`` (channels every
  ``stride`` points), ``stations`` (``n_stations`` random points), observed every ``every`` states.
- baselines on the same truths and observations: :func:`fourdvar_baseline` (strong-constraint 4D-Var of the
  initial simulation-grid PV through the simulation model, :func:`pelagos.inverse.fourdvar`, background =
  climatological mean with the climatological per-layer std), :func:`letkf_baseline` (LETKF with the
  simulation model, the analysis blocks of :mod:`pelagos.inverse.ensemble`), :func:`climatology_baseline`.
- :func:`evaluate` — RMSE of each sample and of the sample mean to the truth per channel and state, at
  observed and unobserved entries; spread; residual std of ``A(x) − y`` relative to σ_y; isotropic KE spectra;
  cost (simulation-model steps, network evaluations, wall time); ``metrics.json`` and figures.

All RMSEs are in standardised units (per-channel std of the training set = 1).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError
from ..qg.sda_data import CHANNELS, SDAData, channels_from_q, make_models

__all__ = [
    "BaselineConfig",
    "SampleConfig",
    "Scenario",
    "ScenarioConfig",
    "TrainConfig",
    "build_net",
    "climatology_baseline",
    "default_scenarios",
    "evaluate",
    "fourdvar_baseline",
    "letkf_baseline",
    "load_samples",
    "load_score",
    "sample_scenarios",
    "scenarios_section",
    "score_estimate",
    "summary_table",
    "train",
]

METHODS = ("sda", "fourdvar", "enkf", "climatology")


# ====================================================================================================
# configuration sections
# ====================================================================================================
@dataclass
class TrainConfig:
    """``train:`` — network (:class:`~pelagos.nn.score.LocalScoreNet`) and optimisation."""

    window: int = 5  # 2k+1 states seen by the local score
    hidden: list[int] = field(default_factory=lambda: [16, 32, 64])
    blocks: int | list[int] = 1
    kernel: int = 3
    embedding: int = 32
    expansion: int = 4
    checkpoint: bool = False  # gradient checkpointing inside the network
    # "eps": the network predicts the noise (the study); "skip": eps = sigma(t) x_t + alpha(t) F(x_t, t),
    # exact as alpha -> 0: the first sampling steps do not amplify the network error by 1/alpha (see docs)
    parameterization: str = "eps"
    batch_size: int = 16
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-3
    ema: float | None = 0.99  # EMA decay of the weights (None: off)
    clip: float | None = 1.0  # gradient-norm clipping
    valid_batches: int | None = 8  # validation batches per epoch (None: all windows)
    workers: int = 0  # DataLoader workers
    in_memory: bool | None = None  # None: load the split when it fits in 2 GB
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch CPU threads
    max_minutes: float | None = None  # stop after this wall time (a later call resumes)
    seed: int = 0

    def validate(self, where: str) -> None:
        if self.window < 1 or self.window % 2 == 0:
            raise ConfigError(f"{where}.window must be odd (2k+1); got {self.window}")
        for k in ("batch_size", "epochs"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{where}.{k} must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"{where}.lr must be > 0")
        if self.parameterization not in ("eps", "skip"):
            raise ConfigError(f"{where}.parameterization must be eps or skip; got {self.parameterization!r}")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ConfigError(f"{where}.ema must be in [0, 1) or null")


@dataclass
class SampleConfig:
    """``sample:`` — posterior sampling (:func:`pelagos.inverse.sda.sample`) and the evaluated truths."""

    steps: int = 64  # reverse-diffusion steps
    corrections: int = 1  # Langevin corrections per step
    tau: float = 0.5  # normalised Langevin step
    gamma: float = 1e-2  # variance of the denoiser error in the likelihood
    samples: int = 4  # posterior trajectories per observation set
    truths: int = 2  # test trajectories assimilated (the first ones of the test split)
    device: str = "auto"
    seed: int = 0

    def validate(self, where: str) -> None:
        if self.steps < 1 or self.corrections < 0 or self.samples < 1 or self.truths < 1:
            raise ConfigError(f"{where}: steps, samples, truths must be >= 1 and corrections >= 0")


@dataclass
class ScenarioConfig:
    """One entry of ``scenarios:`` — what is observed, where, when and how precisely (standardised units)."""

    name: str
    kind: str = "grid"  # grid | stations
    channels: list[str] = field(default_factory=lambda: ["u1", "v1", "u2", "v2"])
    stride: int = 4  # grid: every stride-th point in y and x (offset stride // 2)
    n_stations: int = 80  # stations: random distinct points (the same for every channel and state)
    every: int = 1  # observe states 0, every, 2 every, ...
    sigma: float = 0.01  # observation error std, standardised units
    seed: int = 0

    def validate(self, where: str) -> None:
        if self.kind not in ("grid", "stations"):
            raise ConfigError(f"{where}.kind must be grid or stations; got {self.kind!r}")
        bad = [c for c in self.channels if c not in CHANNELS]
        if bad or not self.channels:
            raise ConfigError(f"{where}.channels: unknown {bad}; valid: {', '.join(CHANNELS)}")
        if self.stride < 1 or self.every < 1 or self.n_stations < 1:
            raise ConfigError(f"{where}: stride, every and n_stations must be >= 1")
        if not self.sigma > 0:
            raise ConfigError(f"{where}.sigma must be > 0; got {self.sigma}")


def default_scenarios() -> list[ScenarioConfig]:
    """The study's two scenarios scaled to a 32² grid, plus a sparse-in-time one."""
    return [
        ScenarioConfig("velocity_grid", "grid", stride=4, sigma=0.01),
        ScenarioConfig("stations", "stations", channels=list(CHANNELS), n_stations=80, sigma=0.1, seed=1),
        ScenarioConfig("sparse_time", "grid", stride=4, every=4, sigma=0.01),
    ]


def scenarios_section(raw, where: str = "scenarios") -> list[ScenarioConfig]:
    """``scenarios:`` — a list of :class:`ScenarioConfig` mappings (default: :func:`default_scenarios`)."""
    from .config import from_mapping

    if raw is None:
        return default_scenarios()
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where} must be a non-empty list of {{name, kind, channels, ...}}")
    out = [from_mapping(ScenarioConfig, r, f"{where}[{i}]") for i, r in enumerate(raw)]
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: scenario names must be unique; got {names}")
    return out


@dataclass
class BaselineConfig:
    """``baselines:`` — which baselines run and their settings."""

    methods: list[str] = field(default_factory=lambda: ["fourdvar", "enkf", "climatology"])
    fourdvar_max_iter: int = 40  # L-BFGS iterations
    fourdvar_background_scale: float = 1.0  # B std = scale × climatological per-layer PV std
    fourdvar_checkpoint: int | str | None = None  # gradient checkpointing over states ("sqrt" at paper scale)
    enkf_members: int = 16
    enkf_inflation: float = 1.1
    enkf_radius: float = 40000.0  # localisation radius [m] (Gaspari–Cohn ≈ e^-½ there)
    climatology_samples: int = 4  # training trajectories drawn as climatology "samples" (spread)
    seed: int = 0

    def validate(self, where: str) -> None:
        bad = [m for m in self.methods if m not in METHODS[1:]]
        if bad:
            raise ConfigError(f"{where}.methods: unknown {bad}; valid: {', '.join(METHODS[1:])}")
        if self.enkf_members < 2:
            raise ConfigError(f"{where}.enkf_members must be >= 2")


# ====================================================================================================
# helpers
# ====================================================================================================
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked but CUDA is not available; use device: cpu (or auto)")
    return torch.device(name)


def _bar(iterable, progress: bool, **kw):
    if not progress:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, leave=False, **kw)


class _Counter(torch.nn.Module):
    """Wraps a noise predictor and counts its calls and the trajectories it saw."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls, self.items = net, 0, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.items += int(x.shape[0])
        return self.net(x, t)


class SkipEps(torch.nn.Module):
    """Noise predictor ``eps(x_t, t) = sigma(t) x_t + alpha(t) F(x_t, t)`` around a network ``F``.

    For standardised data ``sigma x_t`` is the best linear predictor of the noise, and it is exact as
    ``alpha -> 0``: the Tweedie denoiser ``(x_t - sigma eps)/alpha`` then carries ``F``'s error times
    ``sigma``, not ``1/alpha`` (≈ 1000 at t = 1 with the cosine schedule), so few-step sampling with an
    imperfectly trained ``F`` stays stable. The VP schedule is that of :class:`~pelagos.inverse.sda.VPSDE`.
    """

    def __init__(self, net: torch.nn.Module, eta: float = 1e-3) -> None:
        super().__init__()
        from ..inverse.sda import VPSDE

        self.net = net
        self._schedule = VPSDE(lambda x, t: x, eta=eta)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        shape = (-1,) + (1,) * (x.ndim - 1)
        a = self._schedule.alpha(t).reshape(shape)
        s = self._schedule.sigma(t).reshape(shape)
        return s * x + a * self.net(x, t)


def build_net(tcfg: TrainConfig, channels: int = len(CHANNELS)) -> torch.nn.Module:
    """The study's local score network with the ``train:`` settings (wrapped by :class:`SkipEps` when
    ``parameterization: skip``)."""
    from ..nn.score import LocalScoreNet

    net = LocalScoreNet(
        channels,
        window=tcfg.window,
        hidden=tuple(tcfg.hidden),
        blocks=tcfg.blocks if isinstance(tcfg.blocks, int) else tuple(tcfg.blocks),
        kernel=tcfg.kernel,
        embedding=tcfg.embedding,
        expansion=tcfg.expansion,
        checkpoint=tcfg.checkpoint,
    )
    return SkipEps(net) if tcfg.parameterization == "skip" else net


# ====================================================================================================
# training
# ====================================================================================================
def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (1 process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def train(
    data: SDAData,
    tcfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> dict:
    """Train the score network on ``data``'s train split; writes ``checkpoint.pt`` (every epoch, resumable)
    and ``score.pt`` (the final, EMA, weights with the network settings) in ``out_dir``. Under ``torchrun``
    every process trains on its share of the trajectories (DistributedDataParallel); rank 0 writes."""
    from ..inverse.sda import EMA, VPSDE, train_step

    tcfg.validate("train")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world, local = _dist_info()
    dev = _device(tcfg.device)
    if world > 1:
        import torch.distributed as dist

        if dev.type == "cuda":
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))
    torch.manual_seed(tcfg.seed)
    net = build_net(tcfg).to(dev)
    ema = EMA(net, tcfg.ema) if tcfg.ema is not None else None
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    sde = VPSDE(model, shape=(tcfg.window, len(CHANNELS), data.config.coarse_nx, data.config.coarse_nx))
    gen = torch.Generator().manual_seed(tcfg.seed + 1000 * rank)
    train_set = data.windows("train", tcfg.window, random=True, in_memory=tcfg.in_memory, generator=gen)
    valid_set = data.windows("valid", tcfg.window, random=False, in_memory=tcfg.in_memory)
    sampler = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, seed=tcfg.seed)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=tcfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=tcfg.workers,
        drop_last=len(train_set) >= tcfg.batch_size * world,
        generator=torch.Generator().manual_seed(tcfg.seed),
    )
    # validation: a fixed, spread-out subset of windows, fixed diffusion times and noise
    nv = len(valid_set)
    nvb = math.ceil(nv / tcfg.batch_size) if tcfg.valid_batches is None else tcfg.valid_batches
    pick = torch.linspace(0, nv - 1, min(nv, nvb * tcfg.batch_size)).round().long().unique()
    valid_batches = [
        torch.stack([valid_set[int(i)] for i in pick[j : j + tcfg.batch_size]])
        for j in range(0, len(pick), tcfg.batch_size)
    ]
    opt = torch.optim.AdamW(net.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    total = tcfg.epochs * max(1, len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    history: dict = {"train": [], "valid": [], "time": [], "lr": []}
    start_epoch = 0
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        free = ("max_minutes", "workers", "threads", "device", "in_memory")
        same = {k: v for k, v in state.get("train_config", {}).items() if k not in free} == {
            k: v for k, v in asdict(tcfg).items() if k not in free
        }
        if not same:
            log(f"{ckpt}: written with other train settings; starting afresh")
        else:
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            history = state["history"]
            start_epoch = int(state["epoch"]) + 1
            log(f"resuming from {ckpt} after epoch {start_epoch}")
    t_start = time.perf_counter()
    stopped = False
    for epoch in range(start_epoch, tcfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        model.train()
        losses = []
        for batch in _bar(loader, progress and rank == 0, desc=f"epoch {epoch + 1}/{tcfg.epochs}"):
            losses.append(train_step(sde, batch.to(dev), opt, ema, tcfg.clip))  # inverse.sda's one DSM step
            sched.step()
        # validation with the weights that will be used (EMA if on), same t and noise every epoch
        vnet = ema.module if ema is not None else net
        vsde = VPSDE(vnet, shape=sde.shape)
        vgen = torch.Generator(device=dev).manual_seed(12345)
        with torch.no_grad():
            vl = [float(vsde.loss(b.to(dev), generator=vgen)) for b in valid_batches]
        tl = sum(losses) / max(1, len(losses))
        if world > 1:
            import torch.distributed as dist

            t = torch.tensor([tl], device=dev)
            dist.all_reduce(t)
            tl = float(t) / world
        history["train"].append(tl)
        history["valid"].append(sum(vl) / max(1, len(vl)))
        history["time"].append(time.perf_counter() - t0)
        history["lr"].append(sched.get_last_lr()[0])
        if rank == 0:
            log(
                f"epoch {epoch + 1}/{tcfg.epochs}: train {tl:.4f}, valid {history['valid'][-1]:.4f}, "
                f"{history['time'][-1]:.1f} s"
            )
            torch.save(
                {
                    "net": net.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "train_config": asdict(tcfg),
                },
                ckpt,
            )
        if tcfg.max_minutes is not None and time.perf_counter() - t_start > 60 * tcfg.max_minutes:
            stopped = epoch + 1 < tcfg.epochs
            break
    final = ema.module if ema is not None else net
    n_params = sum(p.numel() for p in net.parameters())
    if rank == 0:
        torch.save(
            {"net": final.state_dict(), "train_config": asdict(tcfg), "history": history}, out / "score.pt"
        )
        (out / "training.json").write_text(
            json.dumps(
                {
                    "history": history,
                    "parameters": n_params,
                    "stopped_early": stopped,
                    "train_config": asdict(tcfg),
                    "world_size": world,
                },
                indent=1,
            )
        )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return {
        "history": history,
        "parameters": n_params,
        "stopped_early": stopped,
        "path": str(out / "score.pt"),
    }


def load_score(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The trained network of ``score.pt`` (weights read with ``weights_only=True``) and its settings."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"no trained network at {p}; run `pelagos sda train` first")
    state = torch.load(p, map_location=device, weights_only=True)
    tcfg = TrainConfig(**state["train_config"])
    net = build_net(tcfg)
    net.load_state_dict(state["net"])
    return net.to(device).eval(), tcfg


# ====================================================================================================
# scenarios
# ====================================================================================================
class Scenario:
    """An observation scenario on trajectories of ``length`` states of the 6 channels on an ``n × n`` grid.

    ``mask`` (L, 6, n, n) marks the observed entries; ``A(x)`` gathers them from standardised trajectories
    ``(B, L, 6, n, n)`` into ``(B, m)`` (state-major order: the ``m_t`` values of the first observed state,
    then the next one …); ``points`` are the observed (y, x) cell indices and ``times`` the observed states.
    """

    def __init__(self, cfg: ScenarioConfig, length: int, n: int) -> None:
        cfg.validate(f"scenario {cfg.name!r}")
        self.cfg, self.name, self.sigma = cfg, cfg.name, float(cfg.sigma)
        self.length, self.n = int(length), int(n)
        if cfg.kind == "grid":
            if cfg.stride > n:
                raise ConfigError(f"scenario {cfg.name!r}: stride {cfg.stride} exceeds the grid size {n}")
            r = torch.arange(cfg.stride // 2, n, cfg.stride)
            iy, ix = torch.meshgrid(r, r, indexing="ij")
            iy, ix = iy.reshape(-1), ix.reshape(-1)
        else:
            if cfg.n_stations > n * n:
                raise ConfigError(f"scenario {cfg.name!r}: {cfg.n_stations} stations > {n * n} grid points")
            p = torch.randperm(n * n, generator=torch.Generator().manual_seed(cfg.seed))[: cfg.n_stations]
            p = p.sort().values
            iy, ix = p // n, p % n
        self.iy, self.ix = iy, ix
        self.channels = torch.tensor([CHANNELS.index(c) for c in cfg.channels])
        self.times = torch.arange(0, self.length, cfg.every)
        m2 = torch.zeros(len(CHANNELS), n, n, dtype=torch.bool)
        m2[self.channels[:, None], iy[None, :], ix[None, :]] = True
        self.state_mask = m2  # (6, n, n)
        self.mask = torch.zeros(self.length, len(CHANNELS), n, n, dtype=torch.bool)
        self.mask[self.times] = m2
        self._flat = m2.reshape(-1).nonzero().squeeze(1)  # observed entries of one state (m_t,)

    @property
    def m_t(self) -> int:
        """Observed values per observed state."""
        return int(self._flat.numel())

    @property
    def m(self) -> int:
        return self.m_t * int(self.times.numel())

    def observe_state(self, s: torch.Tensor) -> torch.Tensor:
        """Observed values of standardised states ``(B, 6, n, n)`` → ``(B, m_t)``."""
        return s.reshape(s.shape[0], -1)[:, self._flat.to(s.device)]

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """The trajectory operator: ``(B, L, 6, n, n)`` → ``(B, m)`` (differentiable, linear)."""
        xs = x[:, self.times.to(x.device)]
        return xs.reshape(x.shape[0], xs.shape[1], -1)[..., self._flat.to(x.device)].reshape(x.shape[0], -1)

    def observe(self, truth: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy observations ``y = A(truth) + σ ε`` of one trajectory ``(L, 6, n, n)`` → ``(m,)``."""
        h = self.A(truth[None].float())[0]
        return h + self.sigma * torch.randn(h.shape, generator=generator, dtype=h.dtype)

    def positions(self, L: float) -> torch.Tensor:
        """(x, y) [m] of the observed points, ``(m_t, 2)``, one per observed value of a state (channel-major),
        on a domain of side ``L`` with cell centres at (i + ½) L / n."""
        d = L / self.n
        xy = torch.stack([(self.ix + 0.5) * d, (self.iy + 0.5) * d], 1).double()
        # order of _flat: channel-major over (6, n, n) entries, points sorted by flat (y, x) index
        order = (self.iy * self.n + self.ix).argsort()
        return xy[order].repeat(len(self.channels), 1)

    def observation_set(self, y: torch.Tensor, operator: Callable, interval: float):
        """The pelagos :class:`ObservationSet` of ``y (m,)``: times = observed states × ``interval`` [s],
        values ``(n_t, 1, m_t)`` (a batch of one), ``operator`` maps a model state to ``(1, m_t)``."""
        from ..core.observations import ObservationSet

        return ObservationSet(
            times=self.times.double() * interval,
            values=y.reshape(len(self.times), 1, self.m_t).double(),
            sigma=self.sigma,
            operator=operator,
        )


def observations(data: SDAData, scenario: Scenario, truth_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(truth (L, 6, n, n) standardised, y (m,))`` of test trajectory ``truth_index``; the noise is
    seeded by the scenario's seed and the index, so every method sees the same observations."""
    truth = data.load("test", [truth_index])[0]
    g = torch.Generator().manual_seed(10007 * scenario.cfg.seed + truth_index + 1)
    return truth, scenario.observe(truth, g)


class _StateOperator:
    """Simulation-grid PV ``(B, 2, N, N)`` → coarse standardised channels → the scenario's ``(B, m_t)``."""

    def __init__(self, data: SDAData, scenario: Scenario, lo, C) -> None:
        self.data, self.scenario, self.lo, self.C = data, scenario, lo, C
        self.m = scenario.m_t

    def channels(self, q: torch.Tensor) -> torch.Tensor:
        x = channels_from_q(self.lo, self.C(q))
        mean = self.data.mean.to(x).reshape(-1, 1, 1)
        std = self.data.std.to(x).reshape(-1, 1, 1)
        return (x - mean) / std

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        return self.scenario.observe_state(self.channels(q))


# ====================================================================================================
# SDA posterior sampling
# ====================================================================================================
def score_estimate(
    net: torch.nn.Module,
    scenario: Scenario,
    y: torch.Tensor,
    scfg: SampleConfig,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, dict]:
    """``scfg.samples`` posterior trajectories ``(S, L, 6, n, n)`` given ``y`` and the cost
    (network calls, trajectories through the network, wall time)."""
    from ..inverse.sda import VPSDE, GaussianScore, sample

    dev = next(net.parameters()).device
    counter = _Counter(net)
    sde = VPSDE(counter, shape=shape)
    post = GaussianScore(y.to(dev), scenario.A, scenario.sigma, sde, gamma=scfg.gamma)
    t0 = time.perf_counter()
    x = sample(
        post,
        batch=scfg.samples,
        steps=scfg.steps,
        corrections=scfg.corrections,
        tau=scfg.tau,
        generator=generator,
        device=dev,
        dtype=torch.float32,
        progress=progress,
    )
    cost = {
        "network_calls": counter.calls,
        "network_evals": counter.items,
        "model_steps": 0,
        "wall_time_s": time.perf_counter() - t0,
    }
    return x.detach().cpu(), cost


def sample_scenarios(
    data: SDAData,
    score_path: str | Path,
    scenarios: list[Scenario],
    scfg: SampleConfig,
    out_path: str | Path,
    *,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> dict:
    """SDA posterior samples for every scenario and the first ``scfg.truths`` test trajectories, saved to
    ``out_path`` (``torch.save``: ``{scenario: {"samples": (T, S, L, 6, n, n), "cost": [...]}}``)."""
    dev = _device(scfg.device)
    net, _ = load_score(score_path, dev)
    c = data.config
    shape = (c.length, len(CHANNELS), c.coarse_nx, c.coarse_nx)
    ntest = data.n_trajectories("test")
    if scfg.truths > ntest:
        raise ConfigError(f"sample.truths = {scfg.truths} but the test split has {ntest} trajectories")
    out: dict = {}
    for sc in scenarios:
        xs, costs = [], []
        for i in range(scfg.truths):
            _, y = observations(data, sc, i)
            g = torch.Generator(device=dev).manual_seed(scfg.seed + 7919 * i)
            x, cost = score_estimate(net, sc, y, scfg, shape, generator=g, progress=progress)
            xs.append(x)
            costs.append(cost)
            log(
                f"sda {sc.name} truth {i}: {scfg.samples} samples, {cost['network_calls']} network calls, "
                f"{cost['wall_time_s']:.1f} s"
            )
        out[sc.name] = {"samples": torch.stack(xs), "cost": costs}
    torch.save({"config": asdict(scfg), "scenarios": out}, out_path)
    return out


def load_samples(path: str | Path, scfg: SampleConfig | None = None, names=None) -> dict | None:
    """The samples of :func:`sample_scenarios` in ``path`` (``{scenario: {"samples", "cost"}}``), or None when
    the file is missing or was drawn with other sample settings / scenarios than ``scfg`` / ``names``."""
    p = Path(path)
    if not p.exists():
        return None
    saved = torch.load(p, weights_only=True)
    if "scenarios" in saved and "config" in saved:
        if scfg is not None and saved["config"] != asdict(scfg):
            return None
        saved = saved["scenarios"]
    if names is not None and set(saved) != set(names):
        return None
    if scfg is not None and any(v["samples"].shape[0] < scfg.truths for v in saved.values()):
        return None
    return saved


# ====================================================================================================
# baselines
# ====================================================================================================
def _interval_model(data: SDAData):
    from ..qg.interval import QGInterval

    hi, lo, C = make_models(data.config)
    return QGInterval(hi, data.config.steps_per_state), hi, lo, C


def _clim_std(data: SDAData) -> torch.Tensor:
    """Per-layer std (2,) of the simulation-grid PV at trajectory starts of the training split [s⁻¹]."""
    q = data.hires_initial("train")
    return q.std(dim=(0, 2, 3))


def _trajectory_channels(model, op: _StateOperator, q0: torch.Tensor, length: int) -> torch.Tensor:
    """Standardised channels ``(B, L, 6, n, n)`` of the simulation model's run from ``q0 (B, 2, N, N)``."""
    out, q = [], q0
    with torch.no_grad():
        for i in range(length):
            if i:
                q = model.step(q)
            out.append(op.channels(q).float())
    return torch.stack(out, 1)


def fourdvar_baseline(
    data: SDAData, scenario: Scenario, y: torch.Tensor, bcfg: BaselineConfig, *, progress: bool = False
) -> tuple[torch.Tensor, dict]:
    """Strong-constraint 4D-Var of the initial simulation-grid PV over the whole window (one trajectory,
    ``(1, L, 6, n, n)``) and its cost. Background: the climatological mean (zero PV anomaly) with the
    climatological per-layer std (× ``fourdvar_background_scale``), diagonal; L-BFGS."""
    from ..core.covariance import DiagonalCovariance
    from ..inverse.fourdvar import fourdvar

    model, hi, lo, C = _interval_model(data)
    op = _StateOperator(data, scenario, lo, C)
    obs = scenario.observation_set(y, op, model.dt)
    N = hi.nx
    xb = torch.zeros(1, 2, N, N, dtype=hi.dtype)
    std = (bcfg.fourdvar_background_scale * _clim_std(data)).reshape(1, 2, 1, 1).expand(1, 2, N, N)
    B = DiagonalCovariance(std.contiguous())
    B.n = N  # acts elementwise on the (1, 2, N, N) state (VariationalProblem checks the last dim)
    t0 = time.perf_counter()
    r = fourdvar(
        model,
        obs,
        xb,
        B,
        max_iter=bcfg.fourdvar_max_iter,
        checkpoint=bcfg.fourdvar_checkpoint,
        progress=progress,
    )
    wall = time.perf_counter() - t0
    x = _trajectory_channels(model, op, r.analysis, scenario.length)
    n_window = int(scenario.times.max()) * data.config.steps_per_state
    cost = {
        "model_steps": r.n_evals * n_window,
        "window_runs": r.n_evals,
        "gradients": r.n_evals,
        "iterations": r.n_iter,
        "network_evals": 0,
        "wall_time_s": wall,
        "cost_terms": {k: float(v) for k, v in r.cost_terms.items()},
        "converged": bool(r.converged),
    }
    return x, cost


def letkf_baseline(
    data: SDAData, scenario: Scenario, y: torch.Tensor, bcfg: BaselineConfig, *, truth_index: int = 0
) -> tuple[torch.Tensor, dict]:
    """LETKF with the simulation model: an ensemble of ``enkf_members`` simulation-grid PV fields drawn
    from the training trajectories' starts (climatology), forecast state to state, analysed at every observed
    state (Gaspari–Cohn localisation of radius ``enkf_radius`` in the horizontal, periodic). Returns the
    members' trajectories ``(Ne, L, 6, n, n)`` (analysis at observed states, forecast elsewhere) and the
    cost."""
    from ..inverse.ensemble import letkf_analysis, localization_taper, post_process

    model, hi, lo, C = _interval_model(data)
    op = _StateOperator(data, scenario, lo, C)
    pool = data.n_trajectories("train")
    g = torch.Generator().manual_seed(bcfg.seed + 31 * truth_index)
    pick = torch.randperm(pool, generator=g)[: bcfg.enkf_members].sort().values
    E = data.hires_initial("train", pick.tolist()).to(hi.dtype)
    Ne, N = E.shape[0], hi.nx
    d = hi.L / N
    yy, xx = torch.meshgrid((torch.arange(N) + 0.5) * d, (torch.arange(N) + 0.5) * d, indexing="ij")
    coords = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).double().repeat(2, 1)  # (2 N², 2)
    taper = localization_taper(coords, scenario.positions(hi.L), bcfg.enkf_radius, period=hi.L)
    yv = y.reshape(len(scenario.times), scenario.m_t).double()
    obs_at = {int(t): k for k, t in enumerate(scenario.times)}
    t0 = time.perf_counter()
    out = []
    steps = 0
    with torch.no_grad():
        for i in range(scenario.length):
            if i:
                E = model.step(E)
                steps += Ne * data.config.steps_per_state
            if i in obs_at:
                HEw = op(E).double() / scenario.sigma
                yw = yv[obs_at[i]] / scenario.sigma
                X = E.reshape(Ne, -1)
                Xa = torch.empty_like(X)
                for b in range(0, X.shape[1], 1024):  # blocks of state entries: bounded memory
                    Xa[:, b : b + 1024] = letkf_analysis(X[:, b : b + 1024], HEw, yw, taper[b : b + 1024])
                E = post_process(Xa, bcfg.enkf_inflation).reshape(E.shape)
            out.append(op.channels(E).float())
    wall = time.perf_counter() - t0
    cost = {"model_steps": steps, "members": Ne, "network_evals": 0, "wall_time_s": wall}
    return torch.stack(out, 1), cost


def climatology_baseline(
    data: SDAData, scenario: Scenario, bcfg: BaselineConfig
) -> tuple[torch.Tensor, dict]:
    """Climatology: ``climatology_samples`` training trajectories (their mean is the estimate's stand-in;
    the evaluation scores the climatological mean, zero in standardised units, as the estimate)."""
    n = data.n_trajectories("train")
    g = torch.Generator().manual_seed(bcfg.seed)
    pick = torch.randperm(n, generator=g)[: bcfg.climatology_samples].sort().values
    return data.load("train", pick.tolist()), {"model_steps": 0, "network_evals": 0, "wall_time_s": 0.0}


# ====================================================================================================
# metrics
# ====================================================================================================
def ke_spectrum(x: torch.Tensor, data: SDAData) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic kinetic-energy spectrum per layer of standardised states ``(…, 6, n, n)``: returns
    (integer wavenumbers 1 … n/2, spectrum (…, 2, n/2)) — ½(|û|² + |v̂|²) summed over annuli
    |k| ∈ [j−½, j+½)."""
    p = data.unstandardise(x.float())
    n = p.shape[-1]
    k = torch.fft.fftfreq(n, 1.0 / n)
    kk = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    bins = torch.round(kk).long()
    E = []
    for iu, iv in ((1, 2), (4, 5)):
        uh, vh = torch.fft.fft2(p[..., iu, :, :]) / n**2, torch.fft.fft2(p[..., iv, :, :]) / n**2
        e = 0.5 * (uh.abs() ** 2 + vh.abs() ** 2)
        E.append(torch.stack([e[..., bins == j].sum(-1) for j in range(1, n // 2 + 1)], -1))
    return np.arange(1, n // 2 + 1), torch.stack(E, -2).numpy()


def estimate_metrics(
    samples: torch.Tensor, truth: torch.Tensor, scenario: Scenario, y: torch.Tensor, *, point: bool = False
) -> dict:
    """Squared-error sums of one observation set: of the sample mean and of each sample, at observed and
    unobserved entries, per channel and state; spread; residuals of ``A(x) − y`` in units of σ_y.
    ``point=True``: the estimate is ``samples.mean(0)`` only (climatology's zero mean, 4D-Var's analysis)."""
    S = samples.shape[0]
    mask = scenario.mask
    mean = samples.mean(0)
    e_mean = (mean - truth) ** 2  # (L, C, H, W)
    e_samp = ((samples - truth[None]) ** 2).mean(0)
    var = samples.var(0) if S > 1 and not point else torch.zeros_like(mean)
    out = {}
    for name, m in (("obs", mask), ("unobs", ~mask)):
        mf = m.float()
        out[name] = {
            "n": float(mf.sum()),
            "se_mean": float((e_mean * mf).sum()),
            "se_samples": float((e_samp * mf).sum()),
            "var": float((var * mf).sum()),
            # per state and channel (L, C): sums and counts
            "se_mean_lc": (e_mean * mf).sum((-1, -2)).tolist(),
            "se_samples_lc": (e_samp * mf).sum((-1, -2)).tolist(),
            "n_lc": mf.sum((-1, -2)).tolist(),
        }
    r = (scenario.A(samples.float()) - y[None]) / scenario.sigma
    out["residual"] = {"sum_sq": float((r**2).sum()), "n": float(r.numel())}
    return out


def _pool(items: list[dict]) -> dict:
    """Pooled RMSEs over observation sets from the sums of :func:`estimate_metrics`."""

    def root(a, b):
        return float(math.sqrt(a / b)) if b > 0 else None

    res: dict = {}
    for name in ("obs", "unobs"):
        n = sum(d[name]["n"] for d in items)
        se_m = sum(d[name]["se_mean"] for d in items)
        se_s = sum(d[name]["se_samples"] for d in items)
        var = sum(d[name]["var"] for d in items)
        lc_n = np.sum([np.asarray(d[name]["n_lc"]) for d in items], 0)
        lc_m = np.sum([np.asarray(d[name]["se_mean_lc"]) for d in items], 0)
        lc_s = np.sum([np.asarray(d[name]["se_samples_lc"]) for d in items], 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            rm = np.where(lc_n > 0, np.sqrt(lc_m / np.maximum(lc_n, 1)), np.nan)
            rs = np.where(lc_n > 0, np.sqrt(lc_s / np.maximum(lc_n, 1)), np.nan)
        res[f"rmse_{name}"] = root(se_m, n)
        res[f"rmse_{name}_samples"] = root(se_s, n)
        res[f"spread_{name}"] = root(var, n)
        res[f"rmse_{name}_per_channel_state"] = {
            "mean": [[None if math.isnan(v) else round(float(v), 5) for v in row] for row in rm.T],
            "samples": [[None if math.isnan(v) else round(float(v), 5) for v in row] for row in rs.T],
        }
    rs_ = sum(d["residual"]["sum_sq"] for d in items)
    rn = sum(d["residual"]["n"] for d in items)
    res["residual_std_over_sigma"] = root(rs_, rn)
    return res


def _sum_costs(costs: list[dict]) -> dict:
    keys = ("model_steps", "network_evals", "wall_time_s")
    tot = {k: float(sum(c.get(k, 0) for c in costs)) / max(1, len(costs)) for k in keys}
    extra = (
        {k: v for k, v in costs[0].items() if k not in keys and isinstance(v, (int, float))} if costs else {}
    )
    return {**tot, **{f"{k}_first": v for k, v in extra.items()}}


def evaluate(
    data: SDAData,
    scenarios: list[Scenario],
    scfg: SampleConfig,
    bcfg: BaselineConfig,
    out_dir: str | Path,
    *,
    sda_samples: dict | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    figures: bool = True,
) -> dict:
    """Score SDA (``sda_samples`` from :func:`sample_scenarios`) and the baselines on the same truths and
    observations; write ``metrics.json`` (per method and scenario: pooled RMSE at observed / unobserved
    entries of the mean and of the samples, spread, residual std / σ_y, per channel and state, cost,
    KE spectra) and figures; return the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ms = scfg.truths
    steps_per = data.config.steps_per_state
    metrics: dict = {
        "units": "standardised (per-channel training std = 1)",
        "truths": ms,
        "channels": list(CHANNELS),
        "methods": {},
        "spectra": {},
    }
    keep: dict = {}
    # the baselines run the simulation model (minutes): their estimates are kept in baselines.pt and reused
    # while the data, the scenario and that method's settings are the same
    cache_path = out / "baselines.pt"
    cache: dict = {}
    if cache_path.exists():
        cache = torch.load(cache_path, weights_only=True).get("results", {})

    def fingerprint(meth: str, sc: Scenario) -> str:
        b = {k: v for k, v in asdict(bcfg).items() if k.startswith(meth) or k == "seed"}
        return json.dumps(
            {"data": data.info["config"], "baseline": b, "scenario": asdict(sc.cfg)}, sort_keys=True
        )

    for sc in scenarios:
        per: dict = {}
        costs: dict = {}
        spectra: dict = {}
        for i in range(ms):
            truth, y = observations(data, sc, i)
            est: dict = {}
            if sda_samples is not None and sc.name in sda_samples:
                est["sda"] = (sda_samples[sc.name]["samples"][i], sda_samples[sc.name]["cost"][i], False)
            if "climatology" in bcfg.methods:
                xs, c = climatology_baseline(data, sc, bcfg)
                est["climatology"] = (xs, c, True)
            for meth in ("fourdvar", "enkf"):
                if meth not in bcfg.methods:
                    continue
                key = f"{meth}/{sc.name}/{i}"
                if key not in cache or cache[key].get("fingerprint") != fingerprint(meth, sc):
                    if meth == "fourdvar":
                        xs, c = fourdvar_baseline(data, sc, y, bcfg, progress=progress)
                        log(
                            f"4D-Var {sc.name} truth {i}: {c['iterations']} iterations, "
                            f"{c['window_runs']} window runs, {c['wall_time_s']:.1f} s"
                        )
                    else:
                        xs, c = letkf_baseline(data, sc, y, bcfg, truth_index=i)
                        log(f"LETKF {sc.name} truth {i}: {c['members']} members, {c['wall_time_s']:.1f} s")
                    cache[key] = {"x": xs, "cost": c, "fingerprint": fingerprint(meth, sc)}
                    torch.save({"results": cache}, cache_path)
                est[meth] = (cache[key]["x"], cache[key]["cost"], meth == "fourdvar")
            for name, (xs, c, point) in est.items():
                if name == "climatology":  # the estimate is the climatological mean (0); samples give spread
                    m = estimate_metrics(xs, truth, sc, y)
                    m0 = estimate_metrics(torch.zeros_like(truth)[None], truth, sc, y, point=True)
                    for k in ("obs", "unobs"):
                        for s in ("se_mean", "se_mean_lc"):
                            m[k][s] = m0[k][s]
                else:
                    m = estimate_metrics(xs, truth, sc, y, point=point)
                per.setdefault(name, []).append(m)
                costs.setdefault(name, []).append(c)
                _, spec = ke_spectrum(xs, data)
                spectra.setdefault(name, []).append(spec.reshape(-1, *spec.shape[-2:]).mean(0))
                if i == 0:
                    keep.setdefault(sc.name, {})[name] = xs
            k, spec = ke_spectrum(truth, data)
            spectra.setdefault("truth", []).append(spec.mean(0))
            if i == 0:
                keep.setdefault(sc.name, {})["truth"] = truth
                keep[sc.name]["y"] = y
        for name in per:
            entry = _pool(per[name])
            entry["cost"] = _sum_costs(costs[name])
            metrics["methods"].setdefault(name, {})[sc.name] = entry
        metrics["spectra"][sc.name] = {n: np.mean(v, 0).tolist() for n, v in spectra.items()}
        metrics["spectra"]["wavenumber"] = k.tolist()
        metrics.setdefault("scenarios", {})[sc.name] = asdict(sc.cfg) | {"m": sc.m}
    metrics["steps_per_state"] = steps_per
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if figures:
        try:
            metrics["figures"] = [str(p) for p in make_figures(metrics, keep, scenarios, data, out)]
        except ImportError:  # pragma: no cover - matplotlib missing
            metrics["figures"] = []
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "metrics.md").write_text(summary_table(metrics) + "\n")
    return metrics


def summary_table(metrics: dict) -> str:
    """Markdown table: per scenario and method, RMSE (mean / samples) at observed and unobserved entries,
    spread, residual std / σ_y, cost."""
    rows = [
        "| scenario | method | RMSE obs (mean / samples) | RMSE unobs (mean / samples) | spread obs / unobs "
        "| resid. std / σ_y | model steps | network evals | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, p=3):
        return "–" if v is None else f"{v:.{p}f}"

    scen = list(next(iter(metrics["methods"].values())).keys()) if metrics["methods"] else []
    for sc in scen:
        for meth in METHODS:
            e = metrics["methods"].get(meth, {}).get(sc)
            if e is None:
                continue
            c = e["cost"]
            rows.append(
                f"| {sc} | {meth} | {f(e['rmse_obs'])} / {f(e['rmse_obs_samples'])} | {f(e['rmse_unobs'])} / "
                f"{f(e['rmse_unobs_samples'])} | {f(e['spread_obs'])} / {f(e['spread_unobs'])} | "
                f"{f(e['residual_std_over_sigma'], 2)} | {c['model_steps']:.0f} | {c['network_evals']:.0f} | "
                f"{c['wall_time_s']:.1f} |"
            )
    return "\n".join(rows)


# ====================================================================================================
# figures
# ====================================================================================================
def make_figures(
    metrics: dict, keep: dict, scenarios: list[Scenario], data: SDAData, out: Path
) -> list[Path]:
    """Per scenario: truth / observations / estimates of q in both layers at three states; RMSE per state at
    observed and unobserved entries; KE spectra. Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for sc in scenarios:
        k = keep.get(sc.name)
        if not k:
            continue
        L = sc.length
        days = sorted({0, L // 2, L - 1})
        rows = [("truth", k["truth"])]
        if "sda" in k:
            rows += [(f"SDA sample {j + 1}", k["sda"][j]) for j in range(min(2, k["sda"].shape[0]))]
        if "fourdvar" in k:
            rows.append(("4D-Var", k["fourdvar"][0]))
        if "enkf" in k:
            rows.append(("LETKF mean", k["enkf"].mean(0)))
        nrow = 1 + len(rows)
        fig, axes = plt.subplots(
            nrow, 2 * len(days), figsize=(2.0 * 2 * len(days), 2.0 * nrow), squeeze=False
        )
        # observations row: the first observed channel, NaN elsewhere
        ch = int(sc.channels[0])
        for j, d in enumerate(days):
            for li, cq in enumerate((0, 3)):
                col = 2 * j + li
                v = float(k["truth"][:, cq].abs().max())
                for r, (lab, x) in enumerate(rows):
                    ax = axes[r + (1 if r else 0), col]
                    ax.imshow(x[d, cq].numpy(), cmap="RdBu_r", vmin=-v, vmax=v, origin="lower")
                    if col == 0:
                        ax.set_ylabel(lab, fontsize=8)
                ax = axes[1, col]
                obs = torch.full((sc.n, sc.n), float("nan"))
                if sc.mask[d, ch].any():
                    obs[sc.mask[d, ch]] = k["truth"][d, ch][sc.mask[d, ch]]
                vo = float(k["truth"][:, ch].abs().max())
                ax.imshow(obs.numpy(), cmap="RdBu_r", vmin=-vo, vmax=vo, origin="lower")
                if col == 0:
                    ax.set_ylabel(f"obs {CHANNELS[ch]}", fontsize=8)
                axes[0, col].set_title(f"{CHANNELS[cq]}, state {d}", fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"SDA on QG — scenario {sc.name} (standardised units)", fontsize=9)
        fig.tight_layout()
        p = out / f"sda_{sc.name}_fields.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    # RMSE per state, all channels pooled
    fig, axes = plt.subplots(2, len(scenarios), figsize=(4 * len(scenarios), 6), squeeze=False)
    for j, sc in enumerate(scenarios):
        for r, where in enumerate(("obs", "unobs")):
            ax = axes[r, j]
            for meth in METHODS:
                e = metrics["methods"].get(meth, {}).get(sc.name)
                if e is None:
                    continue
                arr = np.array(e[f"rmse_{where}_per_channel_state"]["mean"], dtype=float)  # (C, L)
                n_ok = np.isfinite(arr).sum(0)
                mse = np.where(n_ok > 0, np.nansum(arr**2, 0) / np.maximum(n_ok, 1), np.nan)
                ax.plot(np.sqrt(mse), marker=".", label=meth)
            ax.set_title(
                f"{sc.name}: RMSE at {'observed' if where == 'obs' else 'unobserved'} entries", fontsize=8
            )
            ax.set_xlabel("state (days)")
            ax.set_yscale("log")
        axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    p = out / "sda_rmse.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)
    # spectra
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4 * len(scenarios), 3.2), squeeze=False)
    kw = np.asarray(metrics["spectra"]["wavenumber"])
    for j, sc in enumerate(scenarios):
        ax = axes[0, j]
        for name, spec in metrics["spectra"][sc.name].items():
            s = np.asarray(spec)
            ax.loglog(kw, s[0], label=f"{name} (upper)", lw=2 if name == "truth" else 1)
        ax.set_title(f"{sc.name}: KE spectrum, upper layer", fontsize=8)
        ax.set_xlabel("wavenumber (cycles per domain)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    p = out / "sda_spectra.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)
    return paths


# ====================================================================================================
# configuration file (the one loader, io.config.load_config, with this pipeline's extra sections)
# ====================================================================================================
_MODEL_KEYS_IN_DATA = {
    "nx": "model.nx",
    "L": "model.L",
    "dt": "time.dt (or model.dt)",
    "model": "model.<option>",
}


def _data_section(raw, where: str = "data") -> dict:
    """``data:`` — the fields of :class:`~pelagos.qg.sda_data.SDADataConfig` except the simulation
    model's (``nx``, ``L``, ``dt``, options), which come from ``model:`` / ``time:``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of SDADataConfig fields; got {raw!r}")
    for k, instead in _MODEL_KEYS_IN_DATA.items():
        if k in raw:
            raise ConfigError(f"{where}.{k}: the simulation model is set in the model section; use {instead}")
    return dict(raw)


EXTRA_SECTIONS = {
    "data": _data_section,
    "train": TrainConfig,
    "sample": SampleConfig,
    "scenarios": scenarios_section,
    "baselines": BaselineConfig,
}  # the sections an SDA configuration adds to those of io.config.load_config


@dataclass
class SDAConfig:
    """A loaded SDA configuration: every section as its dataclass, and the working folder."""

    data: object
    train: TrainConfig
    sample: SampleConfig
    scenarios: list[ScenarioConfig]
    baselines: BaselineConfig
    dir: Path
    threads: int | None = None

    def scenario_objects(self) -> list[Scenario]:
        return [Scenario(s, self.data.length, self.data.coarse_nx) for s in self.scenarios]


def load_sda_config(source, *, overrides=None, output=None) -> SDAConfig:
    """Read an SDA configuration with :func:`pelagos.io.config.load_config` (sections ``model`` (kind
    ``qg``: the simulation model), ``time`` (``dt``), ``data``, ``train``, ``sample``, ``scenarios``,
    ``baselines``, ``output: {file: working folder}``); every key is checked by the one strict loader."""
    from ..qg.sda_data import SDADataConfig
    from .config import from_mapping, load_config, to_mapping

    cfg = load_config(
        source,
        overrides=overrides,
        extra_sections=EXTRA_SECTIONS,
    )
    if cfg.kind.name != "qg":
        raise ConfigError(
            f"`pelagos sda` needs the two-layer QG model (model.kind: qg); got {cfg.kind.name!r}"
        )
    opts = to_mapping(cfg.model)
    if opts.pop("closure", None):
        raise ConfigError("model.closure: SDA data come from the model without a closure; remove it")
    for k in ("ny", "W"):
        v = opts.pop(k, None)
        if v is not None and v != opts.get("nx" if k == "ny" else "L"):
            raise ConfigError(f"model.{k}: SDA needs a square domain and grid; remove model.{k}")
    nx, L, dt = opts.pop("nx"), opts.pop("L"), opts.pop("dt")
    defaults = to_mapping(type(cfg.model)())
    opts = {k: v for k, v in opts.items() if v != defaults.get(k)}  # only what differs from pyqg's defaults
    if cfg.time.dt is not None:
        dt = float(cfg.time.dt)
    merged = {**cfg.extra["data"], "nx": nx, "L": L, "dt": dt, "model": opts}
    merged.setdefault("dtype", cfg.dtype)
    data = from_mapping(SDADataConfig, merged, "data")
    if output is not None:
        d = Path(output)
    elif cfg.output.file:
        d = cfg.resolve(cfg.output.file)
    else:
        d = Path("results") / cfg.stem
    return SDAConfig(
        data=data,
        train=cfg.extra["train"],
        sample=cfg.extra["sample"],
        scenarios=cfg.extra["scenarios"],
        baselines=cfg.extra["baselines"],
        dir=d,
    )
