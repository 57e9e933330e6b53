"""Shortwave and PAR in the water column as GOTM computes them for FABM (two-band law + bio self-shading).

GOTM layout: index 0 = bottom layer, nz-1 = surface. Going down from the surface, the bio-extinction of each
layer is accumulated in two halves, one before and one after its centre (gotm_fabm ``light``):

    PAR_i   = I_0 (1 - A) exp(-z_i/g2 - sum_{j above i} k_j h_j - k_i h_i/2)
    SWR_i   = PAR_i + I_0 A exp(-z_i/g1)
    k_par_i = 1/g2 + k_i,           bioshade_i = exp(-sum_{j >= i} k_j h_j)

with ``z_i`` the centre depth below the surface, ``I_0`` the net surface shortwave (W m-2, after albedo) and
``(A, g1, g2)`` the Jerlov-type split (A: fraction in the red band absorbed with e-folding depth g1; the
rest, taken as PAR, decays with g2).

Parity quirk (GOTM ``set_env_gotm_fabm``): the *surface* PAR a FABM model reads from GOTM is I_0 itself
(total shortwave), not (1-A) I_0. This module does not hide that: the driver passes I_0 as surface PAR.
"""

from __future__ import annotations

import torch

from ..core.errors import ConfigError
from . import _light_op
from ._checks import as_tensor, batch_shape, check_last, check_nonneg, check_pos
from .grid import centre_depth

__all__ = ["JERLOV", "gotm_light", "jerlov"]

# Jerlov water types (A [-], g1 [m], g2 [m]) as tabulated in GOTM (Paulson & Simpson 1977)
JERLOV: dict[str, tuple[float, float, float]] = {
    "I": (0.58, 0.35, 23.0),
    "1": (0.68, 1.20, 28.0),  # "type 1 (upper 50 m)"
    "IA": (0.62, 0.60, 20.0),
    "IB": (0.67, 1.00, 17.0),
    "II": (0.77, 1.50, 14.0),
    "III": (0.78, 1.40, 7.9),
}


def jerlov(name: str) -> tuple[float, float, float]:
    """``(A, g1, g2)`` of a Jerlov water type (``"I"``, ``"1"``, ``"IA"``, ``"IB"``, ``"II"``, ``"III"``;
    also accepts GOTM's yaml spellings such as ``"jerlov-ii"``)."""
    key = str(name).strip().upper()
    for prefix in ("JERLOV-", "JERLOV_", "JERLOV "):
        key = key.removeprefix(prefix)
    key = {"1_50M": "1", "I_50M": "1", "1-50M": "1"}.get(key, key)
    if key not in JERLOV:
        raise ConfigError(
            f"unknown Jerlov water type {name!r}; valid: {', '.join(JERLOV)} (or give A, g1, g2)."
        )
    return JERLOV[key]


def gotm_light(
    I_0: torch.Tensor | float,
    h: torch.Tensor,
    k_bio: torch.Tensor | None = None,
    *,
    A: float | torch.Tensor = 0.58,
    g1: float | torch.Tensor = 0.35,
    g2: float | torch.Tensor = 23.0,
) -> dict[str, torch.Tensor]:
    """PAR, shortwave and PAR attenuation at layer centres, as GOTM's light routine for FABM.

    Args:
        I_0: net shortwave at the surface (W m-2, after albedo), float or tensor of batch shape (...,).
        h: layer thickness (m), (..., nz), bottom first.
        k_bio: biological attenuation of PAR (m-1), (..., nz), >= 0 (sum of the models' contributions);
            None = clear water.
        A, g1, g2: Jerlov split (``JERLOV[...]``); floats or tensors of batch shape (...,). Default type I.

    Returns:
        dict with ``PAR`` and ``SWR`` (W m-2), ``k_par`` (m-1), ``bioshade`` (-, the bio-only transmission
        below each layer, GOTM's feedback to the heat equation) and ``z`` (centre depth, m), each (..., nz).
    """
    if not torch.is_tensor(h) or not h.is_floating_point():
        raise ConfigError(f"h must be a floating-point tensor (..., nz); got {type(h).__name__}.")
    nz = h.shape[-1]
    check_pos("h", h, "Pass layer thicknesses in metres, bottom layer first.")
    I0 = as_tensor(I_0, h)
    if k_bio is None:
        k_bio = torch.zeros_like(h)
    k_bio = as_tensor(k_bio, h)
    check_last("k_bio", k_bio, nz, "attenuation per layer")
    check_nonneg("k_bio", k_bio, "Light attenuation coefficients are >= 0 (m-1).")
    A, g1, g2 = (as_tensor(x, h) for x in (A, g1, g2))
    check_pos("g1", g1, "e-folding depths are in metres.")
    check_pos("g2", g2, "e-folding depths are in metres.")
    batch_shape(
        ["I_0", "h", "k_bio", "A", "g1", "g2"],
        [I0.shape, h.shape[:-1], k_bio.shape[:-1], A.shape, g1.shape, g2.shape],
    )
    col = [x[..., None] if x.dim() > 0 else x for x in (I0, A, g1, g2)]
    I0, A, g1, g2 = col

    z = centre_depth(h)
    at_centre, below = _extinction_sums(k_bio * h / 2)
    par = I0 * (1 - A) * torch.exp(-z / g2 - at_centre)
    swr = par + I0 * A * torch.exp(-z / g1)
    return {"PAR": par, "SWR": swr, "k_par": 1 / g2 + k_bio, "bioshade": torch.exp(-below), "z": z}


def _extinction_sums(half: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The accumulated bio-extinction (-) at each layer centre and below each layer, from the half-layer
    extinctions ``half = k h / 2`` (..., nz): added from the surface down, interleaved (before, after each
    centre), in GOTM's order, so the sums match its running sum exactly. Compiled on CPU this is the C++
    operator ``pelagos::light_scan`` (the same additions, same accumulator: the same bits) instead of a
    cumsum Inductor cannot fuse; not inside the compiled forward-mode program, which needs a tangent."""
    if torch.compiler.is_compiling() and half.device.type == "cpu" and _light_op.LOADED and not _in_jvp():
        return torch.ops.pelagos.light_scan(half)
    flipped = half.flip(-1)
    cum = torch.cumsum(torch.stack([flipped, flipped], -1).flatten(-2), -1)
    return cum[..., 0::2].flip(-1), cum[..., 1::2].flip(-1)


def _in_jvp() -> bool:
    from . import compiled  # imported already whenever something is compiling

    return compiled._TANGENT_SOLVE
