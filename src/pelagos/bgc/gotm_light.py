"""FABM ``gotm/light``: GOTM's two-band light as a model instance that the host evaluates over the column.

FABM computes it column-wise (``get_light``/``do_column``); pelagos leaves column loops to the host, so the
instance only declares its parameters (``a``, ``g1``, ``g2``; matched case-insensitively, the ECOSMO test
case writes ``A``) and offers :meth:`GotmLight.column_light`, which a host calls when
``BGCSystem.light_model`` is this instance (the box driver does). From the surface down, with z the depth of
a layer centre and half of each layer's own attenuation counted at its centre:

    par0 = swr0 (1 − a)                                  surface PAR (replaces GOTM's I_0 "surface PAR")
    PAR  = swr0 (1 − a) exp(−z/g2 − Σ k_bio dz)
    SWR  = PAR + swr0 a exp(−z/g1)

With this instance present a model's "surface PAR" is (1 − a)·swr0, not the whole I_0 that GOTM's own light
hands FABM — the GOTM surface-PAR quirk applies only without it.
"""

from __future__ import annotations

import torch

from .base import BGCModel


class GotmLight(BGCModel):
    """FABM ``gotm/light`` (see module docstring)."""

    fabm_name = "gotm/light"
    computes_light = True

    def __init__(self) -> None:
        super().__init__()
        self.register_parameter(
            "a", 0.58, "-", "non-visible fraction of shortwave radiation", minimum=0.0, maximum=1.0
        )
        self.register_parameter(
            "g1", 0.35, "m", "e-folding depth of non-visible fraction", minimum=0.0, maximum=100.0
        )
        self.register_parameter(
            "g2", 23.0, "m", "e-folding depth of visible fraction", minimum=0.0, maximum=1000.0
        )
        self.register_dependency("swr0", "surface_downwelling_shortwave_flux", "W m-2")
        self.register_diagnostic_variable("par", "W m-2", "photosynthetically active radiation")
        self.register_diagnostic_variable("swr", "W m-2", "shortwave radiation")
        self.register_diagnostic_variable(
            "par0", "W m-2", "surface photosynthetically active radiation", "horizontal"
        )

    def column_light(
        self, swr0: torch.Tensor, h: torch.Tensor, k_bio: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """PAR, SWR at layer centres ``(..., nz)`` and surface PAR ``(...,)`` (W m-2).

        ``h``: layer thickness (m), ``k_bio``: biological attenuation (m-1), both ``(..., nz)`` in GOTM layout
        (index 0 = bottom, nz-1 = surface); ``swr0``: surface shortwave ``(...,)``.
        """
        nd = h.ndim
        a, g1, g2 = self.p("a", nd), self.p("g1", nd), self.p("g2", nd)
        swr0 = torch.as_tensor(swr0, dtype=h.dtype)
        s0 = swr0.unsqueeze(-1) if swr0.ndim else swr0
        # Depth of centres and attenuation integral from the surface: reverse cumulative sums.
        z_top = torch.flip(torch.cumsum(torch.flip(h, [-1]), -1), [-1]) - h  # depth of each layer's top
        z = z_top + 0.5 * h
        kh = k_bio * h
        ext = torch.flip(torch.cumsum(torch.flip(kh, [-1]), -1), [-1]) - 0.5 * kh
        par = s0 * (1.0 - a) * torch.exp(-z / g2 - ext)
        swr = par + s0 * a * torch.exp(-z / g1)
        par0 = swr0 * (1.0 - self.p("a", swr0.ndim))
        return {"par": par, "swr": swr, "par0": par0}
