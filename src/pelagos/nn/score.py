"""Local score (noise-prediction) network for score-based data assimilation of trajectories.

:class:`LocalScoreNet` predicts the noise ``eps`` that was added to a trajectory of states
``x_t`` of shape ``(B, L, C, H, W)`` (batch, time, channels, y, x) at diffusion time ``t`` in [0, 1].
Architecture (after the two-layer QG study of Rozet & Louppe 2023, written from its description):

- a 2-D U-Net applied to every state independently (states are folded into the batch axis), with
  **circular padding** (doubly periodic domain), stride-2 down-sampling, nearest up-sampling and skip
  connections by addition;
- **inverted-bottleneck residual blocks** ``x + W2 SiLU(W1 LN(x + E t))`` with ``W1`` a k×k convolution
  ``C -> 4C`` and ``W2`` a 1×1 convolution ``4C -> C``; ``LN`` normalises over channels at every pixel;
  ``E t`` is a learned projection of the (sinusoidal) diffusion-time embedding;
- **temporal blocks** ``x + V2 SiLU(V1 LN(x))`` with ``V1`` a convolution along time of size 3 (zero padded,
  ``C -> 4C``) and ``V2`` a 1×1 one, applied at every pixel. There are exactly ``k = window // 2`` of them on
  any path from input to output, so the output at state ``i`` depends on states ``i-k .. i+k`` only: the
  network is a *local* score (a pseudo Markov blanket of ``2k+1`` states) and, being convolutional in time,
  applies to trajectories of any length ``L``; it is trained on windows of ``window = 2k+1`` states.
- optional gradient checkpointing of every block (``torch.utils.checkpoint``, ``use_reentrant=False``): the
  4C-wide intermediates are recomputed in the backward pass instead of stored.

With ``spatial=False`` the states are vectors ``(B, L, C)`` (e.g. Lorenz systems): the same network with 1×1
"convolutions" and no down-sampling.

The network is translation equivariant for circular shifts that are multiples of ``2**(len(hidden)-1)``
grid points (the down-sampling factor); it holds no positional input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..core.errors import ConfigError, ShapeError

__all__ = ["ChannelNorm", "LocalScoreNet", "ResidualBlock", "TemporalBlock", "TimeEmbedding"]


class TimeEmbedding(nn.Module):
    """Diffusion time ``t`` (..., in [0, 1]) -> features (..., ``features``).

    ``[cos(pi n t), sin(pi n t)]`` for ``n = 1..frequencies``, then Linear-SiLU-Linear.
    """

    def __init__(self, features: int = 64, frequencies: int = 16, width: int = 256) -> None:
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, frequencies + 1), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * frequencies, width), nn.SiLU(), nn.Linear(width, features))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        w = self.freqs.to(t) * t[..., None]
        return self.mlp(torch.cat([w.cos(), w.sin()], dim=-1))


class ChannelNorm(nn.Module):
    """Layer normalisation over the channel axis ``dim`` (no affine parameters): zero mean, unit variance of
    the channels at every pixel / time, so it commutes with spatial and temporal shifts."""

    def __init__(self, dim: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=self.dim, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps)


def _conv2d(cin: int, cout: int, kernel: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, padding_mode="circular", **kw)


class ResidualBlock(nn.Module):
    """Inverted-bottleneck residual block on ``(N, C, H, W)``: ``x + W2 SiLU(W1 LN(x + E emb))``."""

    def __init__(
        self, channels: int, emb: int, kernel: int = 3, expansion: int = 4, checkpoint: bool = False
    ) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.modulate = nn.Linear(emb, channels)
        self.norm = ChannelNorm(1)
        self.expand = _conv2d(channels, expansion * channels, kernel)
        self.project = nn.Conv2d(expansion * channels, channels, 1)

    def _residue(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = x + self.modulate(emb)[..., None, None]
        return self.project(nn.functional.silu(self.expand(self.norm(h))))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled():
            return x + _checkpoint(self._residue, x, emb, use_reentrant=False)
        return x + self._residue(x, emb)


class TemporalBlock(nn.Module):
    """Residual convolution along time at every pixel: ``x + V2 SiLU(V1 LN(x))`` on ``(B, L, C, H, W)``.

    ``V1``: Conv1d over time, size ``kernel`` (odd, zero padding), ``C -> expansion*C``; ``V2``: 1×1 back to
    ``C``. Receptive field ``±kernel//2`` states.
    """

    def __init__(self, channels: int, kernel: int = 3, expansion: int = 4, checkpoint: bool = False) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.norm = ChannelNorm(1)
        self.expand = nn.Conv1d(channels, expansion * channels, kernel, padding=kernel // 2)
        self.project = nn.Conv1d(expansion * channels, channels, 1)

    def _residue(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C, H, W = x.shape
        h = x.permute(0, 3, 4, 2, 1).reshape(B * H * W, C, L)
        h = self.project(nn.functional.silu(self.expand(self.norm(h))))
        return h.reshape(B, H, W, C, L).permute(0, 4, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled():
            return x + _checkpoint(self._residue, x, use_reentrant=False)
        return x + self._residue(x)


def _as_levels(name: str, value: int | Sequence[int], n: int) -> tuple[int, ...]:
    out = (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != n:
        raise ConfigError(
            f"LocalScoreNet: {name} has {len(out)} entries but hidden has {n}; give one per level"
        )
    return out


class LocalScoreNet(nn.Module):
    """Noise predictor ``eps(x_t, t)`` for trajectories ``x_t`` (B, L, C, H, W) (or (B, L, C) if not spatial).

    Args:
        channels: state channels C (e.g. 6 for q, u, v of two QG layers).
        window: ``2k+1``, the states a local score sees (temporal receptive field ``±k``); odd, >= 1.
        hidden: channel widths of the U-Net levels (one level per entry; ``2**(len(hidden)-1)`` must divide
            H and W when spatial).
        blocks: residual blocks per level (int or one per level), on each of the down and up paths.
        kernel: spatial kernel size (odd; forced to 1 when not spatial).
        embedding: width of the diffusion-time embedding.
        expansion: inverted-bottleneck expansion factor.
        spatial: states are 2-D fields (True) or vectors (False).
        checkpoint: gradient checkpointing of every residual and temporal block (less memory, more time).

    ``forward(x_t, t)`` with ``t`` a scalar or (B,) tensor in [0, 1] returns a tensor shaped like ``x_t``.
    """

    def __init__(
        self,
        channels: int,
        window: int = 9,
        hidden: Sequence[int] = (16, 32, 64),
        blocks: int | Sequence[int] = 3,
        kernel: int = 5,
        embedding: int = 64,
        expansion: int = 4,
        spatial: bool = True,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ConfigError(f"LocalScoreNet: window must be odd and >= 1 (2k+1); got {window}")
        if kernel < 1 or kernel % 2 == 0:
            raise ConfigError(f"LocalScoreNet: kernel must be odd; got {kernel}")
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1:
            raise ConfigError(f"LocalScoreNet: hidden must list >= 1 positive widths; got {hidden}")
        n = len(hidden)
        blocks = _as_levels("blocks", blocks, n)
        self.channels, self.window, self.spatial = int(channels), int(window), bool(spatial)
        self.hidden, self.levels = hidden, n
        self.factor = 2 ** (n - 1) if spatial else 1
        ks = kernel if spatial else 1
        self.embed = TimeEmbedding(embedding)

        # k temporal blocks placed round-robin over (deepest level first) down/up positions
        k = window // 2
        positions = [(lv, side) for lv in range(n - 1, 0, -1) for side in ("down", "up")] or [
            (0, "down"),
            (0, "up"),
        ]
        count = {p: 0 for p in positions}
        for i in range(k):
            count[positions[i % len(positions)]] += 1

        def temporal(lv: int, side: str) -> nn.ModuleList:
            return nn.ModuleList(
                TemporalBlock(hidden[lv], 3, expansion, checkpoint) for _ in range(count.get((lv, side), 0))
            )

        self.heads, self.tails = nn.ModuleList(), nn.ModuleList()
        self.down_time, self.up_time = nn.ModuleList(), nn.ModuleList()
        self.down_blocks, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for lv in range(n):
            if lv == 0:
                head = _conv2d(self.channels, hidden[0], ks)
                tail = _conv2d(hidden[0], self.channels, ks)
            elif spatial:
                head = nn.Conv2d(hidden[lv - 1], hidden[lv], 2, stride=2)
                tail = nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"), _conv2d(hidden[lv], hidden[lv - 1], ks)
                )
            else:
                head = nn.Conv2d(hidden[lv - 1], hidden[lv], 1)
                tail = nn.Conv2d(hidden[lv], hidden[lv - 1], 1)
            self.heads.append(head)
            self.tails.append(tail)
            self.down_time.append(temporal(lv, "down"))
            self.up_time.append(temporal(lv, "up"))
            self.down_blocks.append(
                nn.ModuleList(
                    ResidualBlock(hidden[lv], embedding, ks, expansion, checkpoint) for _ in range(blocks[lv])
                )
            )
            self.up_blocks.append(
                nn.ModuleList(
                    ResidualBlock(hidden[lv], embedding, ks, expansion, checkpoint) for _ in range(blocks[lv])
                )
            )

    @property
    def checkpoint(self) -> bool:
        return any(m.checkpoint for m in self.modules() if isinstance(m, ResidualBlock | TemporalBlock))

    @checkpoint.setter
    def checkpoint(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, ResidualBlock | TemporalBlock):
                m.checkpoint = bool(value)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        nd = 5 if self.spatial else 3
        if x.ndim != nd or x.shape[2] != self.channels:
            want = "(B, L, C, H, W)" if self.spatial else "(B, L, C)"
            raise ShapeError(
                f"LocalScoreNet expects x_t of shape {want} with C={self.channels}; got {tuple(x.shape)}"
            )
        if self.spatial and (x.shape[-1] % self.factor or x.shape[-2] % self.factor):
            raise ShapeError(
                f"LocalScoreNet: H, W = {tuple(x.shape[-2:])} must be multiples of {self.factor} "
                f"(2**(levels-1) for {self.levels} levels); crop/pad the fields or use fewer levels"
            )
        squeeze = not self.spatial
        if squeeze:
            x = x[..., None, None]
        B, L = x.shape[:2]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(B)
        emb = self.embed(t).repeat_interleave(L, dim=0)  # (B*L, E), one per state

        def per_state(f, h, *args):  # (B, L, C, H, W) -> f on (B*L, C, H, W)
            y = f(h.flatten(0, 1), *args)
            return y.unflatten(0, (B, L))

        h = x
        skips = []
        for lv in range(self.levels):
            h = per_state(self.heads[lv], h)
            for blk in self.down_time[lv]:
                h = blk(h)
            for blk in self.down_blocks[lv]:
                h = per_state(blk, h, emb)
            skips.append(h)
        for lv in range(self.levels - 1, -1, -1):
            h = h + skips[lv] if lv < self.levels - 1 else h
            for blk in self.up_blocks[lv]:
                h = per_state(blk, h, emb)
            for blk in self.up_time[lv]:
                h = blk(h)
            h = per_state(self.tails[lv], h)
        if squeeze:
            h = h[..., 0, 0]
        return h
