"""Potential evapotranspiration from temperature: Hargreaves & Samani (1985) in the FAO-56 form.

    PET = 0.0023 · 0.408 · Ra · (T_mean + 17.8) · √(T_max − T_min)          (mm/d)

with T in °C, T_mean = (T_max + T_min)/2, and Ra the extraterrestrial radiation (MJ m⁻² d⁻¹; the factor
0.408 converts it to mm/d of evaporated water) from latitude φ and day of year J (Allen et al. 1998, FAO-56
eqs. 21–25):

    d_r = 1 + 0.033 cos(2πJ/365),   δ = 0.409 sin(2πJ/365 − 1.39),   ω_s = arccos(−tan φ tan δ),
    Ra  = (24·60/π) G_sc d_r [ω_s sin φ sin δ + cos φ cos δ sin ω_s],   G_sc = 0.0820 MJ m⁻² min⁻¹.

``arccos`` is taken of a clamped argument (polar day/night), negative diurnal ranges count as 0 and PET is
clipped at 0 (very cold days). Differentiable in the temperatures (where the range is > 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SOLAR_CONSTANT = 0.0820  # MJ m-2 min-1
MJ_TO_MM = 0.408  # mm d-1 of evaporated water per MJ m-2 d-1


def extraterrestrial_radiation(lat_deg: Tensor | float, day_of_year: Tensor | int) -> Tensor:
    """Daily extraterrestrial radiation Ra (MJ m⁻² d⁻¹) at latitude ``lat_deg`` (°N) on ``day_of_year``
    (1–366); arguments broadcast."""
    J = torch.as_tensor(day_of_year, dtype=torch.float64)
    phi = torch.deg2rad(torch.as_tensor(lat_deg, dtype=torch.float64))
    dr = 1.0 + 0.033 * torch.cos(2.0 * math.pi * J / 365.0)
    delta = 0.409 * torch.sin(2.0 * math.pi * J / 365.0 - 1.39)
    ws = torch.arccos(torch.clamp(-torch.tan(phi) * torch.tan(delta), -1.0, 1.0))
    return (
        (24.0 * 60.0 / math.pi)
        * SOLAR_CONSTANT
        * dr
        * (ws * torch.sin(phi) * torch.sin(delta) + torch.cos(phi) * torch.cos(delta) * torch.sin(ws))
    )


def hargreaves(tmin: Tensor, tmax: Tensor, lat_deg: Tensor | float, day_of_year: Tensor | int) -> Tensor:
    """Hargreaves potential evapotranspiration (mm/d).

    Args:
        tmin, tmax: daily minimum and maximum air temperature (°C), e.g. ``(n_days, n_basins)``.
        lat_deg: latitude (°N), broadcasting against the temperatures (e.g. ``(n_basins,)``).
        day_of_year: 1–366, broadcasting against the temperatures (e.g. ``(n_days, 1)``).

    Returns:
        PET (mm/d) in the dtype of ``tmin`` (float64 arithmetic for the radiation).
    """
    tmin = torch.as_tensor(tmin)
    tmax = torch.as_tensor(tmax, dtype=tmin.dtype)
    ra = extraterrestrial_radiation(lat_deg, day_of_year).to(tmin.dtype)
    tmean = 0.5 * (tmax + tmin)
    pet = 0.0023 * MJ_TO_MM * ra * (tmean + 17.8) * torch.sqrt(torch.clamp(tmax - tmin, min=0.0))
    return torch.clamp(pet, min=0.0)
