"""Measured choice among equivalent ``torch.fft`` call patterns for the no-grad QG step (CPU).

A 2-D real transform is one 1-D transform along each axis; torch's CPU backend (MKL) runs a batched 2-D
``irfft2`` as a strided complex transform along y into a freshly allocated intermediate, then a real one
along x. How fast that is depends on the size: at 64² one batched call is best (call overhead dominates),
at 256² a per-field y transform into a reused buffer followed by one batched x transform was ~15 % faster,
and at 512² the batched inverse was twice as slow as a loop over fields (CPU time, 1 thread). So, like
FFTW's ``MEASURE`` planner, :class:`FFTPlan` times the candidate patterns on the first use of a shape and
keeps the fastest (the batched call unless another is at least 7 % faster). All candidates compute the
same transform (the same 1-D passes with the same normalisation), so the choice changes speed only.

Set ``PELAGOS_QG_FFT=<name>`` (``batched``, ``fields``, ``split``) to force a pattern (read when a plan first
meets a shape, i.e. before a model's first step).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

INVERSE = ("batched", "fields", "split")
FORWARD = ("batched", "fields", "split")


def _irfft2_batched(xh, out, s, norm, tmp):
    return torch.fft.irfft2(xh, s=s, norm=norm, out=out)


def _irfft2_fields(xh, out, s, norm, tmp):
    xf, of = xh.reshape(-1, *xh.shape[-2:]), out.view(-1, *out.shape[-2:])
    for i in range(xf.shape[0]):
        torch.fft.irfft2(xf[i], s=s, norm=norm, out=of[i])
    return out


def _irfft2_split(xh, out, s, norm, tmp):
    # complex transform along y field by field into the reused buffer, then one batched real one along x
    xf, tf = xh.reshape(-1, *xh.shape[-2:]), tmp.view(-1, *tmp.shape[-2:])
    for i in range(xf.shape[0]):
        torch.fft.ifft(xf[i], dim=-2, norm=norm, out=tf[i])
    return torch.fft.irfft(tmp, n=s[-1], dim=-1, norm=norm, out=out)


def _rfft2_batched(x, out, tmp):
    return torch.fft.rfft2(x, out=out)


def _rfft2_fields(x, out, tmp):
    xf, of = x.reshape(-1, *x.shape[-2:]), out.view(-1, *out.shape[-2:])
    for i in range(xf.shape[0]):
        torch.fft.rfft2(xf[i], out=of[i])
    return out


def _rfft2_split(x, out, tmp):
    # one batched real transform along x into the buffer, then the complex one along y field by field
    torch.fft.rfft(x, dim=-1, out=tmp)
    tf, of = tmp.view(-1, *tmp.shape[-2:]), out.view(-1, *out.shape[-2:])
    for i in range(tf.shape[0]):
        torch.fft.fft(tf[i], dim=-2, out=of[i])
    return out


_INV: dict[str, Callable] = {"batched": _irfft2_batched, "fields": _irfft2_fields, "split": _irfft2_split}
_FWD: dict[str, Callable] = {"batched": _rfft2_batched, "fields": _rfft2_fields, "split": _rfft2_split}
_chosen: dict[tuple, str] = {}  # (kind, shape, dtype, device) -> pattern, shared by all models


def _time(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()  # warm-up (MKL descriptor creation, first touch of the output)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _choose(kind: str, key: tuple, candidates: dict[str, Callable[[], object]]) -> str:
    forced = os.environ.get("PELAGOS_QG_FFT")
    if forced:
        if forced not in candidates:
            raise ValueError(f"PELAGOS_QG_FFT={forced!r}: choose one of {sorted(candidates)}")
        return forced
    full = (kind, *key)
    if full not in _chosen:
        times = {n: _time(f) for n, f in candidates.items()}
        best = min(times, key=times.__getitem__)
        # one batched call unless another pattern is clearly faster: a timing taken while other jobs run
        # should not lock in a pattern that only won by noise
        _chosen[full] = best if times[best] < 0.93 * times["batched"] else "batched"
    return _chosen[full]


class FFTPlan:
    """Inverse (c2r) and forward (r2c) 2-D transforms over the last two axes, each by the fastest of the
    patterns above for this shape. ``tmp``: a complex buffer of the spectral shape (reused scratch).
    One plan serves one model (one dtype and device); its own table skips the global lookup per call, so
    ``PELAGOS_QG_FFT`` is read when a plan first meets a shape."""

    def __init__(self, ny: int, nx: int) -> None:
        self.s = (ny, nx)
        self._fns: dict[tuple, Callable] = {}

    def _pick(self, kind: str, x: torch.Tensor, extra: tuple, table: dict, call: Callable) -> Callable:
        key = (x.shape, *extra)
        f = self._fns.get(key)
        if f is None:
            name = "batched"
            if x.device.type == "cpu":
                cands = {n: (lambda g=g: call(g)) for n, g in table.items()}
                name = _choose(kind, (tuple(x.shape), x.dtype, x.device.type, *extra), cands)
            f = self._fns[key] = table[name]
        return f

    def irfft2(self, xh: torch.Tensor, out: torch.Tensor, norm: str, tmp: torch.Tensor) -> torch.Tensor:
        f = self._pick("irfft2", xh, (norm,), _INV, lambda g: g(xh, out, self.s, norm, tmp))
        return f(xh, out, self.s, norm, tmp)

    def rfft2(self, x: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
        f = self._pick("rfft2", x, (), _FWD, lambda g: g(x, out, tmp))
        return f(x, out, tmp)
