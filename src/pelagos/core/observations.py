"""``ObservationSet``: times, an observation operator, values and their errors.

Layout: ``values`` has shape ``(n_t, *batch, m)`` — ``n_t`` observation times, optional batch dims (stations,
columns) and ``m`` observed quantities per time. ``NaN`` marks a missing value; it is masked out of every sum
and
never reaches a gradient. Errors are either ``sigma`` (broadcastable to ``values``) or a covariance ``cov`` of
shape ``(m, m)`` or ``(n_t, m, m)`` (then no value may be missing).

The negative log-likelihood (up to a constant) is ``½ Σ ((H(x) − y)/σ)²``; with ``log=True`` the comparison is
made on ``log(· + floor)`` (concentrations with multiplicative errors) and σ is then the std of the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .errors import ObservationError, ShapeError
from .operators import IdentityOperator, Operator


@dataclass
class ObservationSet:
    """Observations of a model run (see module docstring for shapes and conventions).

    Attributes:
        times: ``(n_t,)`` observation times in model time units (s for the water column), increasing.
        values: ``(n_t, *batch, m)``; ``NaN`` = missing.
        sigma: error std, broadcastable to ``values`` (ignored where ``cov`` is given).
        operator: ``H(state) -> (*batch, m)``; default: the (tensor) state itself.
        cov: optional error covariance ``(m, m)`` or ``(n_t, m, m)``.
        log: compare ``log(H + floor)`` with ``log(y + floor)``; a bool or a bool per column ``(m,)``.
        columns: labels of the ``m`` quantities, e.g. ``[("npzd_phy", 5.0), ...]`` (variable, depth in m).
    """

    times: torch.Tensor
    values: torch.Tensor
    sigma: torch.Tensor | float | None = None
    operator: Operator | None = None
    cov: torch.Tensor | None = None
    log: bool | torch.Tensor = False
    log_floor: float = 1e-6
    columns: list | None = None
    start: object = None  # datetime of model time 0 when built from dated files
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = torch.as_tensor(self.values)
        if not self.values.is_floating_point():
            self.values = self.values.to(torch.get_default_dtype())
        self.times = torch.as_tensor(self.times, dtype=torch.float64).flatten()
        if self.values.ndim < 2 or self.values.shape[0] != self.times.numel():
            raise ShapeError(
                f"observation values have shape {tuple(self.values.shape)}; expected "
                f"(n_t={self.times.numel()}, "
                "*batch, m) — one row per observation time"
            )
        if self.times.numel() > 1 and not bool((self.times[1:] > self.times[:-1]).all()):
            raise ObservationError(
                "observation times must be strictly increasing (merge duplicate times first)"
            )
        if self.operator is None:
            self.operator = IdentityOperator()
        if self.cov is not None:
            self.cov = torch.as_tensor(self.cov, dtype=self.values.dtype)
            m = self.values.shape[-1]
            if self.cov.shape[-2:] != (m, m) or self.cov.ndim not in (2, 3):
                raise ShapeError(
                    f"observation covariance has shape {tuple(self.cov.shape)}; expected ({m}, {m})"
                )
            if bool(torch.isnan(self.values).any()):
                raise ObservationError(
                    "missing values (NaN) cannot be combined with a full error covariance; use "
                    "sigma, or fill them"
                )
            chol, info = torch.linalg.cholesky_ex(self.cov)
            if bool((info != 0).any()):
                raise ObservationError(
                    "the observation error covariance is not symmetric positive definite (Cholesky failed)"
                )
            self._chol = chol
        else:
            self.sigma = self._checked_sigma(self.sigma)
        self.mask = torch.isfinite(self.values)
        self._ready = True

    def __setattr__(self, name: str, value: object) -> None:
        # sigma assigned after construction (e.g. ``obs.sigma = 0.05 * obs.values.abs()``) is checked too
        if name == "sigma" and self.__dict__.get("_ready") and self.cov is None:
            value = self._checked_sigma(value)
        super().__setattr__(name, value)

    def _checked_sigma(self, sigma: object) -> torch.Tensor:
        """``sigma`` broadcast to ``values``; finite and > 0 wherever a value is given (else an error)."""
        if sigma is None:
            raise ObservationError("observation errors missing: give sigma (std) or cov (covariance)")
        s = torch.as_tensor(sigma, dtype=self.values.dtype)
        try:
            s = torch.broadcast_to(s, self.values.shape)
        except RuntimeError as err:
            raise ShapeError(
                f"sigma of shape {tuple(s.shape)} does not broadcast to values {tuple(self.values.shape)}"
            ) from err
        given = torch.isfinite(self.values)
        bad = given & ~(torch.isfinite(s) & (s > 0))
        if bool(bad.any()):
            i = tuple(torch.nonzero(bad)[0].tolist())
            raise ObservationError(
                f"observation error sigma must be finite and > 0 where a value is given; got {float(s[i])} "
                f"at {self._where(i)}"
            )
        return s

    def _where(self, index: tuple) -> str:
        """Where entry ``index`` (time index first) came from: ``file:line`` when read from a file, else
        its index and time (a date when the set has a ``start``)."""
        lines = self.meta.get("lines") if isinstance(self.meta, dict) else None
        if lines:
            key = (index[0], index[-1]) if len(index) > 1 else None
            if key in lines:
                return lines[key]
            for (i, _), loc in lines.items():
                if i == index[0]:
                    return loc
        return f"index {index} (time {self._time_text(float(self.times[index[0]]))})"

    def _line_of(self, i: int) -> str:
        lines = self.meta.get("lines") if isinstance(self.meta, dict) else None
        locs = sorted({loc for (k, _), loc in (lines or {}).items() if k == i})
        return f", {locs[0]}" if locs else ""

    def _time_text(self, t: float) -> str:
        import datetime as _dt

        if isinstance(self.start, _dt.datetime):
            return (self.start + _dt.timedelta(seconds=t)).strftime("%Y-%m-%d %H:%M:%S")
        return f"{t:g}"

    # -- sizes -------------------------------------------------------------------------------------------
    @property
    def n_times(self) -> int:
        return int(self.times.numel())

    @property
    def m(self) -> int:
        return int(self.values.shape[-1])

    @property
    def n_obs(self) -> int:
        """Number of non-missing observed values."""
        return int(self.mask.sum())

    def __len__(self) -> int:
        return self.n_obs

    # -- time axis ---------------------------------------------------------------------------------------
    def step_indices(self, dt: float, t0: float = 0.0, n_steps: int | None = None) -> torch.Tensor:
        """Model step index of each observation time (time ``t0 + k dt`` after ``k`` steps; ``t0``, ``dt`` in
        model seconds, the units of ``times``).

        Raises ``ObservationError`` naming the first time that is not on the step grid or outside the run.
        """
        k = (self.times - float(t0)) / float(dt)
        kr = torch.round(k)
        off = (k - kr).abs() > 1e-6 * torch.clamp(k.abs(), min=1.0)
        if bool(off.any()):
            i = int(torch.nonzero(off)[0])
            raise ObservationError(
                f"observation time {self._time_text(float(self.times[i]))} (row {i}{self._line_of(i)}) is "
                f"not a multiple of the model step dt={dt:g} after t0={self._time_text(float(t0))}; move it "
                "to the step grid or change dt"
            )
        before = kr < 0
        after = kr > n_steps if n_steps is not None else torch.zeros_like(before)
        if bool((before | after).any()):
            i = int(torch.nonzero(before | after)[0])
            end = "" if n_steps is None else f", {self._time_text(t0 + n_steps * dt)}"
            raise ObservationError(
                f"observation time {self._time_text(float(self.times[i]))} (row {i}{self._line_of(i)}) is "
                f"outside the run [{self._time_text(float(t0))}{end}]"
            )
        return kr.long()

    def select(self, index: Sequence[int] | slice | torch.Tensor) -> ObservationSet:
        """Observations at a subset of the times (same operator and conventions)."""
        if isinstance(index, slice):
            index = torch.arange(self.n_times)[index]
        idx = torch.as_tensor(index, dtype=torch.long).flatten()
        sig = None if self.cov is not None else self.sigma[idx]
        cov = None if self.cov is None else (self.cov if self.cov.ndim == 2 else self.cov[idx])
        return ObservationSet(
            self.times[idx],
            self.values[idx],
            sig,
            operator=self.operator,
            cov=cov,
            log=self.log,
            log_floor=self.log_floor,
            columns=self.columns,
            start=self.start,
            meta=self._meta_for(idx),
        )

    def _meta_for(self, idx: torch.Tensor) -> dict:
        meta = dict(self.meta)
        if isinstance(meta.get("lines"), dict):
            new = {int(old): k for k, old in enumerate(idx.tolist())}
            meta["lines"] = {(new[i], j): loc for (i, j), loc in meta["lines"].items() if i in new}
        if torch.is_tensor(meta.get("truth")) and meta["truth"].shape[:1] == self.values.shape[:1]:
            meta["truth"] = meta["truth"][idx]
        return meta

    def window(self, t_start: float, t_end: float) -> ObservationSet:
        """Observations with ``t_start <= t <= t_end`` (model seconds, the units of ``times``)."""
        keep = (self.times >= t_start) & (self.times <= t_end)
        return self.select(torch.nonzero(keep).flatten())

    # -- misfit ------------------------------------------------------------------------------------------
    def _log_mask(self, like: torch.Tensor) -> torch.Tensor | None:
        if isinstance(self.log, bool):
            return torch.ones(self.m, dtype=torch.bool) if self.log else None
        lm = torch.as_tensor(self.log, dtype=torch.bool)
        return lm if bool(lm.any()) else None

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        """Apply the (optional) log transform to predicted or observed values."""
        lm = self._log_mask(h)
        if lm is None:
            return h
        logged = torch.log(h.clamp(min=0) + self.log_floor)
        return torch.where(lm.to(h.device), logged, h)

    def residual(self, pred: torch.Tensor) -> torch.Tensor:
        """Whitened residual ``(H(x) − y)/σ`` (or ``L⁻¹(H(x) − y)``), zero where ``y`` is missing.

        ``pred``: ``(n_t, *batch, m)`` (e.g. from :func:`pelagos.inverse.predict`); its batch dims broadcast
        against those of ``values`` (an ensemble (Ne, m) against shared observations (m,)).
        """
        if pred.shape[0] != self.n_times or pred.shape[-1] != self.m:
            raise ShapeError(
                f"predictions have shape {tuple(pred.shape)}; expected (n_t={self.n_times}, *batch, "
                f"m={self.m})"
            )
        extra = pred.ndim - self.values.ndim  # leading batch dims of pred (ensemble members) not in values
        if extra < 0:
            raise ShapeError(
                f"predictions {tuple(pred.shape)} have fewer dims than values {tuple(self.values.shape)}"
            )

        def lift(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], *([1] * extra), *t.shape[1:])

        y = lift(self.values.to(pred))
        mask = lift(self.mask.to(pred.device))
        y0 = torch.where(mask, y, torch.zeros((), dtype=pred.dtype))
        d = self.transform(pred) - self.transform(y0)
        if self.cov is not None:
            L = self._chol.to(pred)
            if L.ndim == 3:
                L = L.reshape(L.shape[0], *([1] * (d.ndim - 2)), *L.shape[1:])
            else:
                L = L.expand(*d.shape[:-1], *L.shape)
            r = torch.linalg.solve_triangular(L, d.unsqueeze(-1), upper=False).squeeze(-1)
            return r
        r = d / lift(self.sigma.to(pred))
        return torch.where(torch.broadcast_to(mask, r.shape), r, torch.zeros((), dtype=r.dtype))

    def nll(self, pred: torch.Tensor, *, batch_dims: int = 0) -> torch.Tensor:
        """``½ Σ r²`` over times, batch and quantities; ``batch_dims=k`` keeps the first k batch dims."""
        r2 = 0.5 * self.residual(pred) ** 2
        if batch_dims == 0:
            return r2.sum()
        dims = [0, *range(1 + batch_dims, r2.ndim)]
        return r2.sum(dim=dims)

    # -- combining ---------------------------------------------------------------------------------------
    @staticmethod
    def stack(sets: Sequence[ObservationSet]) -> ObservationSet:
        """Stack sets of several stations/columns along a new batch dim: values ``(n_t, S, m)``.

        Times are merged (union); a station without a value at a merged time gets ``NaN`` there. All sets must
        share ``m``, the log convention and use sigma (not covariances).
        """
        if not sets:
            raise ObservationError("stack() needs at least one ObservationSet")
        m = sets[0].m
        for i, s in enumerate(sets):
            if s.m != m or s.values.ndim != 2 or s.cov is not None:
                raise ObservationError(
                    f"set {i}: stacking needs values of shape (n_t, m={m}) with sigma; got "
                    f"{tuple(s.values.shape)}"
                )
        times = torch.unique(torch.cat([s.times for s in sets]))
        dtype = sets[0].values.dtype
        vals = torch.full((times.numel(), len(sets), m), float("nan"), dtype=dtype)
        sig = torch.ones((times.numel(), len(sets), m), dtype=dtype)
        for j, s in enumerate(sets):
            idx = torch.searchsorted(times, s.times)
            vals[idx, j] = s.values.to(dtype)
            sig[idx, j] = s.sigma.to(dtype)
        return ObservationSet(
            times,
            vals,
            sig,
            operator=sets[0].operator,
            log=sets[0].log,
            log_floor=sets[0].log_floor,
            columns=sets[0].columns,
            start=sets[0].start,
        )

    def __repr__(self) -> str:
        t_first = float(self.times[0]) if self.n_times else 0.0
        t_last = float(self.times[-1]) if self.n_times else 0.0
        return (
            f"ObservationSet(n_times={self.n_times}, values={tuple(self.values.shape)}, n_obs={self.n_obs}, "
            f"t=[{t_first:g}, {t_last:g}],"
            f" log={self.log if isinstance(self.log, bool) else 'per-column'}, "
            f"errors={'cov' if self.cov is not None else 'sigma'})"
        )
