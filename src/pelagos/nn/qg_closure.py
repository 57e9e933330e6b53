"""Convolutional closures for the QG models (doubly periodic: circular padding everywhere).

``QGClosureCNN`` maps normalised low-res PV layers (B, nz, ny, nx) to a normalised subgrid PV forcing of the
same shape; wrap it with :class:`pelagos.qg.parameterizations.NeuralClosure` (which applies the physical
scales) to use it inside a model. Translation equivariant by construction; width 16, 3×3, 4 layers (the
hybrid pipeline's default) has 5 234 weights, width 32, 5×5, 4 layers 54 498.
"""

from __future__ import annotations

import torch
from torch import nn


class QGClosureCNN(nn.Module):
    """Fully convolutional net: ``layers`` circular convolutions of width ``hidden``, GELU in between.

    Args: nz input/output channels (layers of the QG model), hidden channels, number of conv layers, kernel
    size (odd). The last layer starts at zero so a fresh closure is exactly "no closure".
    """

    def __init__(
        self, nz: int = 2, hidden: int = 32, layers: int = 4, kernel: int = 5, zero_last: bool = True
    ) -> None:
        super().__init__()
        if kernel % 2 == 0 or layers < 1:
            raise ValueError(
                f"QGClosureCNN needs an odd kernel and >= 1 layer; got kernel={kernel}, layers={layers}"
            )
        chans = [nz] + [hidden] * (layers - 1) + [nz]
        convs = []
        for i in range(layers):
            convs.append(
                nn.Conv2d(chans[i], chans[i + 1], kernel, padding=kernel // 2, padding_mode="circular")
            )
        self.convs = nn.ModuleList(convs)
        if zero_last:
            nn.init.zeros_(self.convs[-1].weight)
            nn.init.zeros_(self.convs[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = nn.functional.gelu(x)
        return x
