"""Differentiable parameter learning (dPL): a network maps basin attributes (and forcings) to the parameters of
the differentiable HBV model (:mod:`pelagos.hydro.hbv`); both are trained end to end on many basins at once
(Tsai et al. 2021; Feng et al. 2022).

Parameter networks (each returns raw outputs; :class:`DplModel` applies a sigmoid and the published bounds
through ``hbv.scale_parameters``):

- :class:`AttributeMLP` — ``g_A``: an MLP on the z-scored static attributes of each basin → every parameter
  static (one value per basin and component). It can be applied to any basin with attributes, gauged or not.
- :class:`ForcingLSTM` — ``g_z``: an LSTM on the normalised daily forcings (log(P+1), T, PET) concatenated
  with the attributes repeated along time. The **static** parameters and routing are its output at the
  **last** time step of the window (broadcast over the window); the **dynamic** ones (e.g. ``BETA``) use the
  output of every day.
- :class:`BasinTable` — no network: one free vector of raw parameters per basin, the per-basin gradient
  calibration baseline trained by the same loop (:mod:`pelagos.hydro.train`).

``nmul`` parallel HBV components each get their own parameters (HBV averages their runoff); the two routing
parameters ``route_a``, ``route_b`` are per basin. :class:`DplModel` = parameter network + HBV (+ optional
networks replacing a flux through ``run_hbv``'s ``process`` hook, :class:`ETNet`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ..core.errors import ConfigError, ShapeError

__all__ = ["AttributeMLP", "BasinTable", "DplModel", "ETNet", "ForcingLSTM", "ROUTING", "normalise_forcing"]

ROUTING = ("route_a", "route_b")


def _hbv_names() -> list[str]:
    from .hbv import HBV_PARAMETER_NAMES

    return list(HBV_PARAMETER_NAMES)


def normalise_forcing(forcing: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Network inputs from forcing ``(n_days, n_basins, 3)`` = [P mm/d, T °C, PET mm/d]: ``log(P+1)``, T, PET,
    each z-scored with ``mean``/``std`` (shape ``(3,)``, computed by :meth:`DplModel.fit_normalisation`)."""
    x = torch.cat([torch.log1p(torch.clamp(forcing[..., :1], min=0.0)), forcing[..., 1:]], -1)
    return (x - mean) / std


class AttributeMLP(nn.Module):
    """MLP ``(n_basins, n_attributes) → (n_basins, n_out)``: ``len(hidden)`` layers of width ``hidden[i]``
    with tanh, dropout between them, a linear output layer (initialised small: parameters start mid-range)."""

    def __init__(self, n_in: int, n_out: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        w = n_in
        for h in hidden:
            layers += [nn.Linear(w, h), nn.Tanh()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            w = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(w, n_out)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z))


class ForcingLSTM(nn.Module):
    """LSTM ``(n_days, n_basins, n_in) → (n_days, n_basins, n_out)`` with a linear input layer, one LSTM layer of
    ``hidden`` units and a linear head (dropout on the LSTM output)."""

    def __init__(self, n_in: int, n_out: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.lstm = nn.LSTM(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_out)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(torch.relu(self.inp(x)))
        return self.head(self.drop(h))


class BasinTable(nn.Module):
    """One free raw-parameter vector per basin ``(n_basins, n_out)`` (per-basin calibration), initialised at 0
    (mid-range after the sigmoid). Indexed by the basins' positions in the dataset."""

    def __init__(self, n_basins: int, n_out: int):
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(n_basins, n_out))

    def forward(self, basins: torch.Tensor) -> torch.Tensor:
        return self.raw[basins]


class ETNet(nn.Module):
    """A network replacing HBV's evapotranspiration: ``ET = PET · σ(MLP(SM/FC, T/10, PET/5))`` (mm/d), i.e. a
    learned soil-moisture stress function in (0, 1) instead of ``min(SM/(LP·FC), 1)``. Called by
    ``run_hbv`` through its ``process={"ET": ...}`` hook; HBV keeps ET ≤ SM."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def stress(self, sm_over_fc: torch.Tensor, T: torch.Tensor, PET: torch.Tensor) -> torch.Tensor:
        x = torch.stack([sm_over_fc, T / 10.0, PET / 5.0], -1)
        return torch.sigmoid(self.mlp(x))[..., 0]

    def forward(self, ctx: dict) -> torch.Tensor:
        """``ctx``: run_hbv's process context (``SM``, ``FC`` ``(n_basins, nmul)``, ``T``, ``PET``
        ``(n_basins, 1)``); returns ET ``(n_basins, nmul)`` mm/d."""
        sm, fc = ctx["SM"], ctx["FC"]
        pet, t = ctx["PET"].expand_as(sm), ctx["T"].expand_as(sm)
        return pet * self.stress(sm / fc, t, pet)


class DplModel(nn.Module):
    """Parameter network + HBV: ``Q = HBV(forcing; g(attributes, forcing))``.

    ``network``: ``"mlp"`` (:class:`AttributeMLP`, all parameters static), ``"lstm"`` (:class:`ForcingLSTM`,
    the ``dynamic`` parameters vary by day, the others from the last step) or ``"table"`` (:class:`BasinTable`,
    per-basin calibration; needs ``n_basins``). ``nmul``: parallel HBV components. ``process``: optional
    networks replacing HBV fluxes, e.g. ``{"ET": ETNet()}`` (passed to ``run_hbv(process=...)``).
    ``smooth``: sharpness of HBV's smooth thresholds (None: the exact HBV 1.0 thresholds).
    """

    def __init__(
        self,
        n_attributes: int,
        *,
        network: Literal["mlp", "lstm", "table"] = "mlp",
        nmul: int = 1,
        dynamic: Sequence[str] = (),
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.0,
        n_basins: int | None = None,
        process: dict[str, nn.Module] | None = None,
        smooth: float | None = None,
        n_forcing: int = 3,
    ):
        super().__init__()
        names = _hbv_names()
        bad = [d for d in dynamic if d not in names]
        if bad:
            raise ConfigError(
                f"dynamic parameter(s) {bad} are not HBV parameters (valid: {', '.join(names)})"
            )
        if network not in ("mlp", "lstm", "table"):
            raise ConfigError(f"network must be 'mlp', 'lstm' or 'table'; got {network!r}")
        if dynamic and network != "lstm":
            raise ConfigError(f"dynamic parameters {list(dynamic)} need network: lstm (got {network!r})")
        if nmul < 1:
            raise ConfigError(f"nmul must be >= 1; got {nmul}")
        self.network_kind = network
        self.names = names
        self.dynamic = list(dynamic)
        self.static = [n for n in names if n not in self.dynamic]
        self.nmul = int(nmul)
        self.smooth = smooth
        n_out = len(names) * nmul + len(ROUTING)
        if network == "mlp":
            self.net: nn.Module = AttributeMLP(n_attributes, n_out, (hidden,) * layers, dropout)
        elif network == "lstm":
            self.net = ForcingLSTM(n_forcing + n_attributes, n_out, hidden, dropout)
        else:
            if n_basins is None:
                raise ConfigError("network 'table' (per-basin calibration) needs n_basins")
            self.net = BasinTable(n_basins, n_out)
        self.process = nn.ModuleDict(process or {})
        self.register_buffer("forcing_mean", torch.zeros(n_forcing))
        self.register_buffer("forcing_std", torch.ones(n_forcing))

    # -- parameters ------------------------------------------------------------------------------------------
    def fit_normalisation(self, forcing: torch.Tensor) -> None:
        """Set the input normalisation from forcing ``(n_days, n_basins, 3)`` (training basins and period)."""
        x = torch.cat([torch.log1p(torch.clamp(forcing[..., :1], min=0.0)), forcing[..., 1:]], -1)
        x = x.reshape(-1, x.shape[-1])
        self.forcing_mean.copy_(x.mean(0))
        self.forcing_std.copy_(torch.clamp(x.std(0), min=1e-6))

    def _split(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """raw ``(..., n_out)`` → physical parameters: HBV ones ``(..., nmul)``, routing ``(...)``."""
        from .hbv import scale_parameters

        k = len(self.names)
        s = torch.sigmoid(raw)
        hb = s[..., : k * self.nmul].reshape(*s.shape[:-1], self.nmul, k)
        phys = scale_parameters(hb, self.names)
        rout = scale_parameters(s[..., k * self.nmul :], list(ROUTING))
        return {**phys, **rout}

    def parameters_for(
        self, forcing: torch.Tensor | None, attributes: torch.Tensor, basins: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Physical HBV parameters for a window: static ``(n_basins, nmul)``, dynamic ``(n_days, n_basins,
        nmul)``, routing ``(n_basins,)``. ``forcing`` (raw, ``(n_days, n_basins, 3)``) is needed by the LSTM;
        ``basins`` (dataset positions) by the table."""
        if self.network_kind == "mlp":
            return self._split(self.net(attributes))
        if self.network_kind == "table":
            if basins is None:
                raise ConfigError("per-basin calibration (network 'table') needs the basin indices")
            return self._split(self.net(basins))
        if forcing is None:
            raise ConfigError("the LSTM parameter network needs the forcing")
        if forcing.shape[1] != attributes.shape[0]:
            raise ShapeError(f"forcing has {forcing.shape[1]} basins, attributes {attributes.shape[0]}")
        x = normalise_forcing(forcing, self.forcing_mean, self.forcing_std)
        x = torch.cat([x, attributes.expand(x.shape[0], *attributes.shape)], -1)
        out = self.net(x)  # (T, B, n_out)
        last = self._split(out[-1])
        if self.dynamic:
            every = self._split(out)
            for n in self.dynamic:
                last[n] = every[n]
        return last

    # -- the model -------------------------------------------------------------------------------------------
    def hbv(self, forcing: torch.Tensor, params: dict[str, torch.Tensor], *, state=None, warmup: int = 0):
        """``run_hbv`` on forcing ``(n_days, n_basins, 3)`` with ``params`` (and this model's process nets)."""
        from .hbv import run_hbv

        kw = {}
        if len(self.process):
            kw["process"] = dict(self.process.items())
        return run_hbv(forcing[..., 0], forcing[..., 1], forcing[..., 2], params, state=state, warmup=warmup,
                       smooth=self.smooth, check=False, **kw)  # fmt: skip

    def forward(
        self,
        forcing: torch.Tensor,
        attributes: torch.Tensor,
        *,
        warmup: int = 0,
        warmup_mode: Literal["no_grad", "graph"] = "no_grad",
        overlap: int = 0,
        basins: torch.Tensor | None = None,
    ):
        """Run the window ``forcing`` ``(n_days, n_basins, 3)`` (mm/d, °C, mm/d); the first ``warmup`` days
        spin up the stores and are cut from the output (an ``HBVOutput`` of ``n_days − warmup`` days).

        ``warmup_mode="no_grad"``: the first ``warmup − overlap`` days run without a graph (cheap; the
        parameters' effect on the initial stores is not differentiated) and hand their final state (stores and
        the routing history) to the run in the graph; ``"graph"``: the whole warm-up is differentiated (dMG's
        ``warm_up_states=False``)."""
        params = self.parameters_for(forcing, attributes, basins)
        if warmup_mode not in ("no_grad", "graph"):
            raise ConfigError(f"warmup_mode must be 'no_grad' or 'graph'; got {warmup_mode!r}")
        cut = warmup - overlap if warmup_mode == "no_grad" else 0
        if cut <= 0:
            return self.hbv(forcing, params, warmup=warmup)
        head = {n: (v[:cut] if n in self.dynamic else v).detach() for n, v in params.items()}
        with torch.no_grad():
            spin = self.hbv(forcing[:cut], head)
        state = spin.state
        tail = {n: (v[cut:] if n in self.dynamic else v) for n, v in params.items()}
        return self.hbv(forcing[cut:], tail, state=state, warmup=warmup - cut)
