"""Training data of score-based data assimilation (SDA): QG trajectories on disk, standardised, streamed.

Pipeline (:func:`generate`), every piece from :mod:`pelagos.qg`:

1. a two-layer :class:`~pelagos.qg.QGModel` on the simulation grid (``nx``², domain ``L``, step ``dt``);
2. ``spinup_members`` seeded white-noise initial PV fields (rms ``ic_amplitude`` s⁻¹, both layers) run
   ``spinup_years`` to statistical equilibrium, all members in one batch;
3. when ``members > spinup_members`` the spun-up states are replicated, each copy perturbed by white noise of
   ``branch_noise`` × the layer's PV std, and run ``branch_days`` more so that the copies decorrelate (the
   study's "5 years + 60 days"); members are then advanced together, ``batch`` at a time (memory);
4. each member's run is cut into ``segments`` trajectories of ``length`` snapshots ``interval`` s apart, with
   ``gap`` skipped snapshots between two trajectories of one member;
5. every snapshot is coarse-grained (:class:`~pelagos.qg.coarsen.Coarsener`, ``coarsen`` filter) to
   ``coarse_nx``² and turned into the six channels ``q1, u1, v1, q2, u2, v2`` (PV [s⁻¹] and anomaly
   velocities [m s⁻¹] of the upper and lower layer; u, v from the coarse PV by the coarse model's inversion,
   so the channels of a state are one function of its PV);
6. members are split into train / valid / test by ``split`` fractions (whole members, so no test trajectory
   shares a run with a training one) and written, as they are produced, to ``train.nc``, ``valid.nc``,
   ``test.nc`` in physical units (float32, NetCDF-4, one chunk per trajectory, variable ``x`` with dims
   ``trajectory, time, channel, y, x``); with ``keep_hires_initial`` the simulation-grid PV at the start of
   each trajectory too (``q0_hr``, for the 4D-Var / EnKF baselines, which run the simulation model);
7. per-channel mean and std of the training set (one streaming pass) are stored in every file and in
   ``stats.json``: the network sees ``(x − mean) / std``.

:class:`TrajectoryWindows` serves windows of ``2k+1`` consecutive standardised states, read from memory when
the split fits in ``memory_limit`` bytes and otherwise streamed from the file (one open handle per
DataLoader worker); both give the same tensors.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError

__all__ = [
    "CHANNELS",
    "SDAData",
    "SDADataConfig",
    "TrajectoryWindows",
    "channels_from_q",
    "generate",
    "make_models",
]

CHANNELS = ("q1", "u1", "v1", "q2", "u2", "v2")
UNITS = {"q": "s-1", "u": "m s-1", "v": "m s-1"}
SPLITS = ("train", "valid", "test")
DAY = 86400.0
YEAR = 360 * DAY  # pyqg's model year


@dataclass
class SDADataConfig:
    """``data:`` section of an SDA configuration (units in brackets).

    The defaults are the small CPU configuration (64² on 500 km → 32², 256 trajectories of 16 days).
    """

    nx: int = 64  # simulation grid points per side
    coarse_nx: int = 32  # stored grid (nx must be a multiple)
    L: float = 5e5  # domain side [m]
    dt: float = 3600.0  # model step [s]
    model: dict = field(default_factory=dict)  # other QGModel options (rek, beta, rd, delta, U1, ...)
    coarsen: str = "spectral"  # spectral | gaussian | block
    members: int = 16  # independent runs
    spinup_members: int | None = 2  # runs spun up from noise (None: all members)
    spinup_years: float = 3.0  # [360-day years]
    branch_days: float = 60.0  # run after branching the spun-up states [days]
    branch_noise: float = 0.05  # perturbation of a branched copy, fraction of the layer PV std
    ic_amplitude: float = 3e-6  # rms of the initial white-noise PV [s-1]
    segments: int = 16  # trajectories cut from each member's run
    length: int = 16  # states per trajectory
    interval: float = 86400.0  # time between two states [s]
    gap: int = 4  # snapshots skipped between two trajectories of one member
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train, valid, test (by member)
    batch: int | None = None  # members advanced at once (None: all)
    keep_hires_initial: bool = True  # store q0_hr, the simulation-grid PV at each trajectory start
    dtype: str = "float64"  # of the simulation (float32 on a GPU halves memory)
    device: str = "cpu"
    threads: int | None = 1  # torch CPU threads while simulating (None: torch's default)
    seed: int = 0

    def validate(self, where: str) -> None:
        if self.nx % self.coarse_nx or self.coarse_nx > self.nx:
            raise ConfigError(
                f"{where}.nx = {self.nx} must be a multiple of {where}.coarse_nx = {self.coarse_nx}"
            )
        if self.coarsen not in ("spectral", "gaussian", "block"):
            raise ConfigError(f"{where}.coarsen must be spectral, gaussian or block; got {self.coarsen!r}")
        if len(self.split) != 3 or any(s < 0 for s in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"{where}.split must be three fractions (train, valid, test) summing to 1")
        steps = self.interval / self.dt
        if abs(steps - round(steps)) > 1e-9 or steps < 1:
            raise ConfigError(
                f"{where}.interval = {self.interval} s must be a whole number of model steps dt = {self.dt} s"
            )
        for name in ("members", "segments", "length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1")
        if self.spinup_members is not None and not 1 <= self.spinup_members <= self.members:
            raise ConfigError(f"{where}.spinup_members must lie in [1, members = {self.members}]")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"{where}.dtype must be float32 or float64; got {self.dtype!r}")
        n = self.member_split()
        if n["train"] < 1:
            raise ConfigError(f"{where}: no training member ({self.members} members, split {self.split})")

    def member_split(self) -> dict[str, int]:
        """Members per split: valid and test get round(f·members) (at least 1 when f > 0), train the rest."""
        n = {}
        for name, f in zip(SPLITS[1:], self.split[1:], strict=True):
            n[name] = 0 if f == 0 else max(1, round(f * self.members))
        n["train"] = self.members - n["valid"] - n["test"]
        return {s: n[s] for s in SPLITS}

    @property
    def steps_per_state(self) -> int:
        return round(self.interval / self.dt)


def make_models(cfg: SDADataConfig):
    """``(hires, lores, coarsener)``: the simulation model, the model of the stored grid, and the map."""
    from .coarsen import Coarsener, lowres_like
    from .models import QGModel

    try:
        hi = QGModel(
            nx=cfg.nx, L=cfg.L, dt=cfg.dt, dtype=getattr(torch, cfg.dtype), device=cfg.device, **cfg.model
        )
    except TypeError as err:
        raise ConfigError(f"data.model: {err}") from None
    lo = lowres_like(hi, cfg.coarse_nx)
    return hi, lo, Coarsener(hi, lo, cfg.coarsen)


def channels_from_q(lores, q: torch.Tensor) -> torch.Tensor:
    """The six channels ``(…, 6, ny, nx)`` (q1, u1, v1, q2, u2, v2) of coarse PV ``q (…, 2, ny, nx)`` [s⁻¹]:
    velocities from the inversion of ``lores`` (differentiable)."""
    lead = q.shape[:-3]
    qf = q.reshape(-1, *q.shape[-3:])
    f = lores.flow(lores.state_from_q(qf))
    x = torch.stack([f.q[:, 0], f.u[:, 0], f.v[:, 0], f.q[:, 1], f.u[:, 1], f.v[:, 1]], 1)
    return x.reshape(*lead, 6, *q.shape[-2:])


def _spin(model, st, n: int, progress: Callable[[int], None] | None = None):
    from ..core.rollout import rollout

    for k in range(0, n, 500):
        m = min(500, n - k)
        st = rollout(model, st, m, save_every=10**9, include_initial=False).final
        if progress:
            progress(m)
    if n:
        model.check_cfl(st)
    return st


# -- writing -------------------------------------------------------------------------------------------------
class _Writer:
    """One split's NetCDF file, appended a trajectory batch at a time (``trajectory`` is unlimited)."""

    def __init__(self, path: Path, cfg: SDADataConfig, lo, hi) -> None:
        import netCDF4

        self.path = path
        nc = netCDF4.Dataset(path, "w", format="NETCDF4")
        n = cfg.coarse_nx
        nc.createDimension("trajectory", None)
        nc.createDimension("time", cfg.length)
        nc.createDimension("channel", len(CHANNELS))
        nc.createDimension("y", n)
        nc.createDimension("x", n)
        v = nc.createVariable(
            "x",
            "f4",
            ("trajectory", "time", "channel", "y", "x"),
            chunksizes=(1, cfg.length, len(CHANNELS), n, n),
        )
        v.long_name = "trajectories of q1, u1, v1, q2, u2, v2 (physical units, see channel_units)"
        nc.createVariable("member", "i4", ("trajectory",)).long_name = "simulation run of the trajectory"
        t0 = nc.createVariable("t0", "f8", ("trajectory",))
        t0.units, t0.long_name = "s", "model time of the first state (from the start of the data run)"
        tv = nc.createVariable("time", "f8", ("time",))
        tv.units = "s"
        tv[:] = np.arange(cfg.length) * cfg.interval
        cv = nc.createVariable("channel", str, ("channel",))
        for i, c in enumerate(CHANNELS):
            cv[i] = c
        g = lo.grid
        nc.createVariable("y", "f8", ("y",))[:] = g.y[:, 0].cpu().numpy()
        nc.createVariable("x_coord", "f8", ("x",))[:] = g.x[0].cpu().numpy()
        if cfg.keep_hires_initial:
            nc.createDimension("lev", 2)
            nc.createDimension("y_hr", cfg.nx)
            nc.createDimension("x_hr", cfg.nx)
            q = nc.createVariable(
                "q0_hr", "f8", ("trajectory", "lev", "y_hr", "x_hr"), chunksizes=(1, 2, cfg.nx, cfg.nx)
            )
            q.units, q.long_name = "s-1", "simulation-grid PV at the first state of the trajectory"
        nc.channel_units = json.dumps([UNITS[c[0]] for c in CHANNELS])
        nc.config = json.dumps(asdict(cfg))
        nc.title = "pelagos SDA training data (two-layer QG)"
        self.nc, self.n = nc, 0

    def append(self, x: np.ndarray, member: np.ndarray, t0: float, q0: np.ndarray | None) -> None:
        k = x.shape[0]
        sl = slice(self.n, self.n + k)
        self.nc["x"][sl] = x
        self.nc["member"][sl] = member
        self.nc["t0"][sl] = np.full(k, t0)
        if q0 is not None and "q0_hr" in self.nc.variables:
            self.nc["q0_hr"][sl] = q0
        self.n += k

    def close(self) -> None:
        self.nc.close()


def _stream_stats(path: Path, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``x`` in one pass (float64 sums), chunk trajectories at a time."""
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        v = nc["x"]
        n = v.shape[0]
        s1 = np.zeros(v.shape[2])
        s2 = np.zeros(v.shape[2])
        cnt = 0
        for i in range(0, n, chunk):
            a = np.asarray(v[i : i + chunk], dtype=np.float64)
            s1 += a.sum(axis=(0, 1, 3, 4))
            cnt += a.shape[0] * a.shape[1] * a.shape[3] * a.shape[4]
        mean = s1 / cnt
        for i in range(0, n, chunk):
            a = np.asarray(v[i : i + chunk], dtype=np.float64)
            s2 += ((a - mean[None, None, :, None, None]) ** 2).sum(axis=(0, 1, 3, 4))
    return mean, np.sqrt(s2 / cnt)


def generate(
    cfg: SDADataConfig, out_dir: str | Path, *, log: Callable[[str], None] = print, progress: bool = False
) -> dict:
    """Simulate, coarse-grain, split and write the SDA data set (see module docstring); returns a summary with
    the paths, the statistics and the cost (model steps, wall time)."""
    import netCDF4

    cfg.validate("data")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hi, lo, C = make_models(cfg)
    dev, dtype = hi.device, hi.dtype
    nsplit = cfg.member_split()
    owner = np.concatenate([np.full(nsplit[s], i) for i, s in enumerate(SPLITS)])  # member -> split index
    writers = {s: _Writer(out / f"{s}.nc", cfg, lo, hi) for s in SPLITS}
    n_spin = round(cfg.spinup_years * YEAR / cfg.dt)
    n_branch = round(cfg.branch_days * DAY / cfg.dt)
    spm = cfg.members if cfg.spinup_members is None else cfg.spinup_members
    t_start = time.perf_counter()
    steps = 0  # member-steps of the simulation model
    bar = None
    total = spm * n_spin + (cfg.members * n_branch if spm < cfg.members else 0)
    total += cfg.members * cfg.segments * (cfg.length + cfg.gap) * cfg.steps_per_state
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="SDA data (member-steps)", unit_scale=True, leave=False)
        except ImportError:  # pragma: no cover
            bar = None

    def tick(batch: int):
        return (lambda k: bar.update(k * batch)) if bar is not None else None

    with torch.no_grad():
        # 1-2. spin-up of spm members, seeded one by one (independent of how members are batched)
        q0 = torch.stack(
            [
                cfg.ic_amplitude
                * torch.randn(
                    2,
                    cfg.nx,
                    cfg.nx,
                    dtype=torch.float64,
                    generator=torch.Generator().manual_seed(cfg.seed * 100003 + i),
                )
                for i in range(spm)
            ]
        )
        st = _spin(hi, hi.state_from_q(q0.to(dtype=dtype, device=dev)), n_spin, tick(spm))
        steps += spm * n_spin
        log(f"spin-up: {n_spin} steps of {cfg.nx}² x {spm} members, {time.perf_counter() - t_start:.0f} s")
        q_spun = st["q"]
        sdq = q_spun.std(dim=(0, 2, 3), keepdim=True)
        # 3-6. members, batch at a time
        B = cfg.batch or cfg.members
        for b0 in range(0, cfg.members, B):
            idx = list(range(b0, min(cfg.members, b0 + B)))
            q = q_spun[[i % spm for i in idx]]
            if spm < cfg.members:
                noise = torch.stack(
                    [
                        torch.randn(
                            2,
                            cfg.nx,
                            cfg.nx,
                            dtype=torch.float64,
                            generator=torch.Generator().manual_seed(cfg.seed * 100003 + 50000 + i),
                        )
                        for i in idx
                    ]
                ).to(dtype=dtype, device=dev)
                q = (
                    q
                    + cfg.branch_noise
                    * sdq
                    * noise
                    * torch.tensor([float(i >= spm) for i in idx], dtype=dtype, device=dev)[
                        :, None, None, None
                    ]
                )
                st = _spin(hi, hi.state_from_q(q), n_branch, tick(len(idx)))
                steps += len(idx) * n_branch
            else:
                st = hi.state_from_q(q)
            t_run = 0.0
            for _ in range(cfg.segments):
                traj, q0_hr = [], st["q"].cpu().numpy().astype(np.float64)
                for i in range(cfg.length):
                    if i:
                        st = _spin(hi, st, cfg.steps_per_state, tick(len(idx)))
                    traj.append(channels_from_q(lo, C(st["q"])).float().cpu())
                st = _spin(hi, st, cfg.steps_per_state * (cfg.gap + 1), tick(len(idx)))
                steps += len(idx) * cfg.steps_per_state * (cfg.length + cfg.gap)
                x = torch.stack(traj, 1).numpy()  # (b, L, 6, n, n)
                for si, s in enumerate(SPLITS):
                    sel = [j for j, m in enumerate(idx) if owner[m] == si]
                    if sel:
                        writers[s].append(
                            x[sel],
                            np.asarray(idx)[sel],
                            t_run,
                            q0_hr[sel] if cfg.keep_hires_initial else None,
                        )
                t_run += (cfg.length + cfg.gap) * cfg.interval
            log(
                f"members {idx[0]}-{idx[-1]}: {cfg.segments} trajectories each, "
                f"{time.perf_counter() - t_start:.0f} s"
            )
    if bar is not None:
        bar.close()
    for w in writers.values():
        w.close()
    mean, std = _stream_stats(out / "train.nc")
    for s in SPLITS:
        with netCDF4.Dataset(out / f"{s}.nc", "a") as nc:
            nc.createVariable("mean", "f8", ("channel",))[:] = mean
            nc.createVariable("std", "f8", ("channel",))[:] = std
            nc["mean"].long_name = "per-channel mean of the training set (physical units)"
            nc["std"].long_name = "per-channel std of the training set (physical units)"
    wall = time.perf_counter() - t_start
    summary = {
        "paths": {s: str(out / f"{s}.nc") for s in SPLITS},
        "trajectories": {s: writers[s].n for s in SPLITS},
        "channels": list(CHANNELS),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "model_steps": steps,
        "wall_time_s": wall,
        "config": asdict(cfg),
    }
    (out / "stats.json").write_text(json.dumps(summary, indent=1))
    log(f"data: {summary['trajectories']} trajectories in {out}, {steps} member-steps, {wall:.0f} s")
    return summary


# -- reading -------------------------------------------------------------------------------------------------
class SDAData:
    """The data set written by :func:`generate` in ``root``: statistics, splits, (un)standardisation."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        p = self.root / "stats.json"
        if not p.exists():
            raise ConfigError(
                f"no SDA data in {self.root} (stats.json missing); run `pelagos sda generate` first"
            )
        info = json.loads(p.read_text())
        self.info = info
        self.config = SDADataConfig(**info["config"])
        self.mean = torch.tensor(info["mean"], dtype=torch.float32)
        self.std = torch.tensor(info["std"], dtype=torch.float32)

    def path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return self.root / f"{split}.nc"

    def _bc(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v.to(x).reshape(-1, 1, 1)  # channel is the third dim from the end

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Physical ``(…, 6, H, W)`` → standardised ``(x − mean) / std``."""
        return (x - self._bc(x, self.mean)) / self._bc(x, self.std)

    def unstandardise(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised → physical units (inverse of :meth:`standardise`)."""
        return z * self._bc(z, self.std) + self._bc(z, self.mean)

    def n_trajectories(self, split: str) -> int:
        import netCDF4

        with netCDF4.Dataset(self.path(split)) as nc:
            return int(nc["x"].shape[0])

    def load(self, split: str, index=None, *, standardised: bool = True) -> torch.Tensor:
        """Whole trajectories ``(N, L, 6, H, W)`` of a split (all, or those in ``index``), float32."""
        import netCDF4

        with netCDF4.Dataset(self.path(split)) as nc:
            v = nc["x"]
            a = np.asarray(v[:] if index is None else v[np.asarray(index)], dtype=np.float32)
        x = torch.from_numpy(a)
        return self.standardise(x) if standardised else x

    def hires_initial(self, split: str, index=None) -> torch.Tensor:
        """Simulation-grid PV at the first state of trajectories ``(N, 2, nx, nx)`` [s⁻¹], float64."""
        import netCDF4

        with netCDF4.Dataset(self.path(split)) as nc:
            if "q0_hr" not in nc.variables:
                raise ConfigError(
                    f"{self.path(split)} has no q0_hr: generate the data with data.keep_hires_initial: true "
                    "to run the 4D-Var / EnKF baselines"
                )
            v = nc["q0_hr"]
            return torch.from_numpy(
                np.asarray(v[:] if index is None else v[np.asarray(index)], dtype=np.float64)
            )

    def windows(self, split: str, window: int, **kw) -> TrajectoryWindows:
        return TrajectoryWindows(self.path(split), window, self.mean, self.std, **kw)


class TrajectoryWindows(torch.utils.data.Dataset):
    """Windows of ``window`` consecutive standardised states ``(window, 6, H, W)`` of one split.

    ``random=True`` (training, as the study): item i is a window of trajectory i starting at a random time;
    ``random=False``: every (trajectory, start) pair once, in order (validation, tests). The split is read
    into memory when its size is at most ``memory_limit`` bytes (``in_memory`` forces either way); otherwise
    each item is read from the NetCDF file (one handle per process / DataLoader worker).
    """

    def __init__(
        self,
        path: str | Path,
        window: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        random: bool = True,
        in_memory: bool | None = None,
        memory_limit: float = 2e9,
        generator: torch.Generator | None = None,
    ) -> None:
        import netCDF4

        self.path, self.window, self.random = Path(path), int(window), bool(random)
        with netCDF4.Dataset(self.path) as nc:
            self.shape = tuple(int(s) for s in nc["x"].shape)
        L = self.shape[1]
        if not 1 <= self.window <= L:
            raise ConfigError(f"window {window} must lie in [1, trajectory length {L}]")
        self.mean = mean.float().reshape(-1, 1, 1)
        self.std = std.float().reshape(-1, 1, 1)
        size = 4 * math.prod(self.shape)
        self.in_memory = size <= memory_limit if in_memory is None else bool(in_memory)
        self._data = None
        self._nc = None
        if self.in_memory:
            with netCDF4.Dataset(self.path) as nc:
                self._data = torch.from_numpy(np.asarray(nc["x"][:], dtype=np.float32))
        self.generator = generator
        self.starts = L - self.window + 1

    def __len__(self) -> int:
        return self.shape[0] if self.random else self.shape[0] * self.starts

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_nc"] = None  # netCDF handles are not picklable: each worker opens its own
        return d

    def index(self, i: int) -> tuple[int, int]:
        """(trajectory, first state) of item ``i``."""
        if self.random:
            s = int(torch.randint(self.starts, (1,), generator=self.generator))
            return int(i), s
        return int(i) // self.starts, int(i) % self.starts

    def read(self, n: int, s: int) -> torch.Tensor:
        """Standardised states ``s … s+window−1`` of trajectory ``n``."""
        if self._data is not None:
            x = self._data[n, s : s + self.window]
        else:
            if self._nc is None:
                import netCDF4

                self._nc = netCDF4.Dataset(self.path)
            x = torch.from_numpy(np.asarray(self._nc["x"][n, s : s + self.window], dtype=np.float32))
        return (x - self.mean) / self.std

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.read(*self.index(i))
