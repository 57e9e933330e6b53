"""A plain LSTM rainfall–runoff baseline in the NeuralHydrology style (Kratzert et al. 2019).

Inputs per day: the normalised forcings (log(P+1), T, PET; the same normalisation as the dPL networks)
concatenated with the basin's z-scored static attributes; a linear embedding, one LSTM layer (forget-gate bias
initialised to ``initial_forget_bias``, as NeuralHydrology's CudaLSTM), dropout and a linear head predicting
discharge in units of the training discharge's standard deviation (denormalised to mm/d on output). Trained with
the NSE* loss by the same loop as dPL (:func:`pelagos.hydro.train.train`); the first ``warmup`` days of a
window only spin up the LSTM state (sequence-to-sequence, warm-up cut), so it sees the same data as dPL.
It outputs discharge only: no ET, snow or stores (what the dPL comparison is about).
"""

from __future__ import annotations

import torch
from torch import nn

from .dpl import normalise_forcing

__all__ = ["LSTMBaseline"]


class LSTMBaseline(nn.Module):
    """``Q = head(LSTM([forcing_norm, attributes]))`` (mm/d). ``forward(forcing (n_days, n_basins, 3),
    attributes (n_basins, n_attr), *, warmup)`` → ``(n_days − warmup, n_basins)``."""

    def __init__(self, n_attributes: int, *, hidden: int = 64, dropout: float = 0.4,
                 initial_forget_bias: float = 3.0, n_forcing: int = 3):  # fmt: skip
        super().__init__()
        self.embed = nn.Linear(n_forcing + n_attributes, hidden)
        self.lstm = nn.LSTM(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():  # PyTorch gate order: input, forget, cell, output
            self.lstm.bias_hh_l0[hidden : 2 * hidden].fill_(initial_forget_bias)
        self.register_buffer("forcing_mean", torch.zeros(n_forcing))
        self.register_buffer("forcing_std", torch.ones(n_forcing))
        self.register_buffer("q_scale", torch.ones(()))

    def fit_normalisation(self, forcing: torch.Tensor, obs: torch.Tensor | None = None) -> None:
        """Input normalisation from training forcing ``(n_days, n_basins, 3)``; discharge scale (mm/d) from
        the training observations (NaN left out)."""
        x = torch.cat([torch.log1p(torch.clamp(forcing[..., :1], min=0.0)), forcing[..., 1:]], -1)
        x = x.reshape(-1, x.shape[-1])
        self.forcing_mean.copy_(x.mean(0))
        self.forcing_std.copy_(torch.clamp(x.std(0), min=1e-6))
        if obs is not None:
            o = obs[~torch.isnan(obs)]
            self.q_scale.copy_(torch.clamp(o.std(), min=1e-6))

    def forward(self, forcing: torch.Tensor, attributes: torch.Tensor, *, warmup: int = 0, **_: object):
        x = normalise_forcing(forcing, self.forcing_mean, self.forcing_std)
        x = torch.cat([x, attributes.expand(x.shape[0], *attributes.shape)], -1)
        h, _ = self.lstm(torch.tanh(self.embed(x)))
        q = self.head(self.drop(h))[..., 0] * self.q_scale
        return q[warmup:]
