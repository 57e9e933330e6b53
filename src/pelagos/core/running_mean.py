"""Running temporal means of the environment (FABM's ``temporal_mean``), as pure functions on a small buffer.

FABM keeps, for a mean over ``period`` seconds at ``resolution`` seconds, ``n = period / resolution`` point
samples of the input taken at times ``t_first + k·resolution`` (each sample linearly interpolated between the
two host calls that bracket it), and returns at time ``t``

    mean(t) = (1/n) Σ samples + (t − t_last_sample)/period · (x(t) − oldest sample)

i.e. the mean of the stored samples corrected for the part of the window that has moved since the last sample.
At start-up every sample equals the first input. This is the algorithm of ``fabm_update_time`` (re-stated,
not copied). Here the sample times are the multiples of ``resolution`` on the model clock (FABM aligns them to
its first call; the two agree when a run starts on a whole multiple, e.g. at 00:00 with hourly resolution).

The buffer is a dict of tensors whose *leading* dims are those of the input (batch first) and whose last dim
holds the ``n`` samples, oldest first. Nothing is changed in place, so autograd/jvp pass through.
"""

from __future__ import annotations

import math

import torch

from .errors import ConfigError

__all__ = ["running_mean_apply", "running_mean_init", "running_mean_plan", "running_mean_update"]


def _n_samples(period: float, resolution: float) -> int:
    if not (period > 0 and resolution > 0):
        raise ConfigError(f"running mean: period ({period}) and resolution ({resolution}) must be > 0 s")
    n = period / resolution
    if abs(n - round(n)) > 1e-9 * max(1.0, n):
        raise ConfigError(
            f"running mean: period {period:g} s is not a whole number of resolutions {resolution:g} s; "
            "choose a resolution that divides the period"
        )
    return round(n)


def running_mean_init(x: torch.Tensor, *, period: float = 86400.0, resolution: float = 3600.0) -> dict:
    """Buffer for a running mean started with value ``x`` (any shape): every sample = ``x``, mean = ``x``."""
    n = _n_samples(period, resolution)
    return {"samples": x.unsqueeze(-1).expand(*x.shape, n).clone(), "last": x, "mean": x}


def running_mean_plan(
    t: float, t_prev: float, *, period: float = 86400.0, resolution: float = 3600.0
) -> tuple:
    """The clock-only part of an update from ``t_prev`` to ``t`` (s): the interpolation weights of the samples
    taken in ``(t_prev, t]``, the fraction of the window ``period`` (s) since the last sample, and the sample
    count. It depends on the model clock only, so a compiled step can take it as a constant."""
    n = _n_samples(period, resolution)
    t, t_prev = float(t), float(t_prev)
    if not t > t_prev:
        raise ConfigError(f"running mean: time must increase (t={t:g} s after t_prev={t_prev:g} s)")
    # Sample times k·resolution in (t_prev, t]: each a linear interpolation between last (t_prev) and x (t);
    # only the last n can survive.
    k0 = math.floor(t_prev / resolution + 1e-9) + 1
    k1 = math.floor(t / resolution + 1e-9)
    ws = tuple((k * resolution - t_prev) / (t - t_prev) for k in range(max(k0, k1 - n + 1), k1 + 1))
    return ws, (t - k1 * resolution) / period, n


def running_mean_apply(buf: dict, x: torch.Tensor, plan: tuple) -> dict:
    """New buffer from the old one, the value ``x`` at the new time and a :func:`running_mean_plan`."""
    ws, frac, n = plan
    samples, last = buf["samples"], buf["last"]
    new = [last if w <= 0.0 else x if w >= 1.0 else torch.lerp(last, x, w) for w in ws]
    if new:
        samples = torch.cat([samples[..., len(new) :], torch.stack(new, dim=-1)], dim=-1)[..., -n:]
    mean = samples.mean(dim=-1)
    if frac != 0.0:
        mean = mean + frac * (x - samples[..., 0])
    return {"samples": samples, "last": x, "mean": mean}


def running_mean_update(
    buf: dict,
    x: torch.Tensor,
    t: float,
    t_prev: float,
    *,
    period: float = 86400.0,
    resolution: float = 3600.0,
) -> dict:
    """New buffer after the host reached time ``t`` (s) with value ``x``; the previous call was at ``t_prev``.

    ``buf["mean"]`` of the result is the running mean at ``t``. ``t``/``t_prev`` are plain floats (the model
    clock), so the sampling pattern is fixed by the clock, not by tensor values.
    """
    plan = running_mean_plan(t, t_prev, period=period, resolution=resolution)
    n = plan[2]
    if buf["samples"].shape[-1] != n:
        raise ConfigError(
            f"running mean buffer holds {buf['samples'].shape[-1]} samples; period/resolution needs {n}"
        )
    return running_mean_apply(buf, x, plan)
