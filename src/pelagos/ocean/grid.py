"""z-level Arakawa C-grid on the sphere (longitude/latitude in degrees), optionally zonally re-entrant.

Layout of every 3-D field: ``(..., nz, ny, nx)`` with any leading batch dims; level ``k = 0`` is the
surface layer, ``k = nz − 1`` the deepest. On the C-grid

- tracers (``temp``, ``salt``, density, pressure) sit at cell centres ``T(k, j, i)`` = (``zt[k]``, ``yt[j]``,
  ``xt[i]``);
- ``u`` (eastward, m s⁻¹) sits on the *east* face of ``T(k, j, i)``, at longitude ``xu[i] = xt[i] + Δλ/2``;
- ``v`` (northward, m s⁻¹) sits on the *north* face, at latitude ``yv[j] = yt[j] + Δφ/2``;
- vertical transports sit on the top face of each cell (``zw`` are the cell bottoms).

Vertically the T points follow Veros with ``vertical="veros"``: the faces are the cumulative layer
thicknesses, but each interior face lies midway between the two T points around it, so ``zt`` is not the
cell centre (acc_basic: ``zt = −14, −26, −70, …`` m instead of ``−10, −34, −68, …``; see
:func:`pelagos.ocean.eos.vertical_grid`); the TKE closure needs it. ``vertical="centred"`` (default) puts them
at the cell centres. Veros's construction only works for smoothly varying thicknesses: where it would put a
T point outside its cell the grid raises :class:`~pelagos.core.errors.ConfigError`.

The land mask comes from ``kbot`` in Veros's convention: ``kbot[j, i] = 0`` is land, ``kbot = 1`` a column
that reaches the deepest level, ``kbot = m`` one whose deepest wet cell is the m-th from the bottom. Faces
are wet when both neighbouring cells are. Without ``cyclic`` the western and eastern edges are walls; the
southern and northern edges are always walls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..core.errors import ConfigError

EARTH_RADIUS = 6370e3  # m (Veros)
OMEGA = 2 * math.pi / 86164.0  # s-1, Earth's rotation rate (sidereal day)

__all__ = ["EARTH_RADIUS", "OMEGA", "Grid", "acc_grid"]


class Grid(torch.nn.Module):
    """Spherical z-level C-grid; every array a buffer (moves with ``.to(device)``).

    Args:
        nx, ny: number of cells in longitude and latitude.
        dz: layer thicknesses, surface first, m (length nz).
        kbot: ``(ny, nx)`` integer array in Veros's convention (0 land, 1 full depth; see module doc).
        x0, y0: longitude/latitude of the south-west corner of the grid, degrees.
        dlon, dlat: cell size, degrees.
        cyclic: zonally re-entrant (the east edge joins the west edge).
        radius: sphere radius, m.
        vertical: ``"centred"`` (T points at the cell centres; default) or ``"veros"`` (as Veros places them).
        dtype: floating dtype of the metric arrays.

    Attributes (all tensors): ``xt, xu`` (nx) and ``yt, yv`` (ny) in degrees; ``dz`` (nz) m;
    ``zt`` (nz) height
    of the T points (m, negative below the surface); ``zw`` (nz) height of cell bottoms; ``dzw`` (nz−1)
    distance between T points k and k+1 (m); ``dzw_w`` (nz) Veros's ``dzw``: the box size of the W point on
    the top face of each cell (``dzw_w[1:] = dzw``, ``dzw_w[0]`` the surface box, twice ``|zt[0]|``);
    ``dxt`` (ny, 1) zonal width of T/u cells at ``yt`` (m); ``dxv``
    (ny, 1) at ``yv``; ``dy`` () meridional width (m); ``area_t``/``area_v`` (ny, 1) m²; ``cos_t, cos_v,
    tan_t, f_t`` (ny, 1); masks ``mask_t, mask_u, mask_v`` (nz, ny, nx) of 0/1 in the grid dtype; ``nlev``
    (ny, nx) number of wet levels.
    """

    def __init__(
        self,
        nx: int,
        ny: int,
        dz: Sequence[float] | torch.Tensor,
        kbot: torch.Tensor,
        *,
        x0: float = 0.0,
        y0: float = -40.0,
        dlon: float = 2.0,
        dlat: float = 2.0,
        cyclic: bool = True,
        radius: float = EARTH_RADIUS,
        vertical: str = "centred",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        dz = torch.as_tensor(dz, dtype=dtype).reshape(-1)
        nz = dz.numel()
        if nx < 2 or ny < 2 or nz < 1:
            raise ConfigError(f"ocean grid: need nx ≥ 2, ny ≥ 2, nz ≥ 1; got nx={nx}, ny={ny}, nz={nz}")
        if not bool((dz > 0).all()):
            raise ConfigError("ocean grid: every layer thickness dz must be > 0 m")
        if not (dlon > 0 and dlat > 0):
            raise ConfigError(f"ocean grid: dlon and dlat must be > 0 degrees; got {dlon}, {dlat}")
        if not (y0 >= -90 and y0 + ny * dlat <= 90):
            raise ConfigError(
                f"ocean grid: latitudes {y0}..{y0 + ny * dlat} leave [-90, 90]; reduce ny or dlat"
            )
        if vertical not in ("veros", "centred"):
            raise ConfigError(f"ocean grid: vertical must be 'veros' or 'centred'; got {vertical!r}")
        self.vertical = vertical
        kbot = torch.as_tensor(kbot).to(torch.int64)
        if tuple(kbot.shape) != (ny, nx):
            raise ConfigError(
                f"ocean grid: kbot must have shape (ny, nx) = ({ny}, {nx}); got {tuple(kbot.shape)}"
            )
        if bool((kbot < 0).any()) or bool((kbot > nz).any()):
            raise ConfigError(f"ocean grid: kbot must lie in [0, nz={nz}] (0 = land, 1 = full depth)")
        self.nx, self.ny, self.nz, self.cyclic = int(nx), int(ny), int(nz), bool(cyclic)
        self.radius, self.dlon, self.dlat, self.x0, self.y0 = float(radius), float(dlon), float(dlat), x0, y0
        deg = math.pi / 180
        xt = x0 + dlon * (torch.arange(nx, dtype=dtype) + 0.5)
        yt = y0 + dlat * (torch.arange(ny, dtype=dtype) + 0.5)
        zw = -torch.cumsum(dz, 0)
        if vertical == "veros":
            from .eos import vertical_grid

            vg = vertical_grid(dz)
            zt, dzw_w = vg.zt, vg.dzw
            top = torch.cat([torch.zeros_like(zw[:1]), zw[:-1]])
            if not bool(((zt < top) & (zt > zw)).all()):
                raise ConfigError(
                    "ocean grid: Veros's vertical grid puts T points outside their cells for these layer "
                    f"thicknesses (zt = {[round(float(z), 1) for z in zt]} m); use thicknesses that vary "
                    "more smoothly (e.g. nz ≤ 15 for acc_grid) or vertical='centred' (without TKE mixing)"
                )
        else:
            zt = zw + 0.5 * dz
            dzw_w = torch.cat([dz[:1], 0.5 * (dz[1:] + dz[:-1])])
        nlev = torch.where(kbot > 0, nz - kbot + 1, torch.zeros_like(kbot))
        k = torch.arange(nz).reshape(nz, 1, 1)
        mask_t = (k < nlev).to(dtype)
        cos_t = torch.cos(yt * deg).reshape(ny, 1)
        cos_v = torch.cos((yt + 0.5 * dlat) * deg).reshape(ny, 1)
        reg = self.register_buffer
        reg("xt", xt)
        reg("xu", xt + 0.5 * dlon)
        reg("yt", yt)
        reg("yv", yt + 0.5 * dlat)
        reg("dz", dz)
        reg("zt", zt)
        reg("zw", zw)
        reg("dzw", dzw_w[1:].clone())
        reg("dzw_w", dzw_w)
        reg("cos_t", cos_t)
        reg("cos_v", cos_v)
        reg("tan_t", torch.tan(yt * deg).reshape(ny, 1))
        reg("f_t", 2 * OMEGA * torch.sin(yt * deg).reshape(ny, 1))
        reg("dxt", radius * cos_t * dlon * deg)
        reg("dxv", radius * cos_v * dlon * deg)
        reg("dy", torch.tensor(radius * dlat * deg, dtype=dtype))
        reg("nlev", nlev)
        reg("kbot", kbot)
        reg("mask_t", mask_t)
        reg("mask_u", mask_t * self.east(mask_t))
        reg("mask_v", mask_t * self.north(mask_t))
        self.register_buffer("area_t", self.dxt * self.dy)
        self.register_buffer("area_v", self.dxv * self.dy)
        # depth of u and v columns (m), for the barotropic transport
        self.register_buffer("h_u", (self.mask_u * dz.reshape(nz, 1, 1)).sum(0))
        self.register_buffer("h_v", (self.mask_v * dz.reshape(nz, 1, 1)).sum(0))
        if not bool(mask_t.any()):
            raise ConfigError("ocean grid: kbot marks every column as land (no ocean cell)")

    # -- neighbours (zero outside the domain; x wraps around when cyclic) ----------------------------------
    def east(self, a: torch.Tensor) -> torch.Tensor:
        """Value of the eastern neighbour ``a[..., i+1]``."""
        if self.cyclic:
            return torch.roll(a, -1, -1)
        return torch.nn.functional.pad(a[..., 1:], (0, 1))

    def west(self, a: torch.Tensor) -> torch.Tensor:
        """Value of the western neighbour ``a[..., i-1]``."""
        if self.cyclic:
            return torch.roll(a, 1, -1)
        return torch.nn.functional.pad(a[..., :-1], (1, 0))

    def north(self, a: torch.Tensor) -> torch.Tensor:
        """``a[..., j+1, :]`` (zero north of the last row)."""
        return torch.nn.functional.pad(a[..., 1:, :], (0, 0, 0, 1))

    def south(self, a: torch.Tensor) -> torch.Tensor:
        """``a[..., j-1, :]`` (zero south of the first row)."""
        return torch.nn.functional.pad(a[..., :-1, :], (0, 0, 1, 0))

    def below(self, a: torch.Tensor) -> torch.Tensor:
        """``a[..., k+1, :, :]`` (zero below the deepest level)."""
        return torch.nn.functional.pad(a[..., 1:, :, :], (0, 0, 0, 0, 0, 1))

    def above(self, a: torch.Tensor) -> torch.Tensor:
        """``a[..., k-1, :, :]`` (zero above the surface)."""
        return torch.nn.functional.pad(a[..., :-1, :, :], (0, 0, 0, 0, 1, 0))

    @property
    def dz3(self) -> torch.Tensor:
        """Layer thickness shaped ``(nz, 1, 1)``, m."""
        return self.dz.reshape(-1, 1, 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.nz, self.ny, self.nx)


def acc_dz(nz: int = 15) -> list[float]:
    """Veros acc_basic layer thicknesses, surface first (m): ``[50, 70, 100, 140, 190, …, 690]/2.5``
    (20 m at the top, 2080 m in all). Other ``nz`` spread the same 2080 m over ``nz`` layers growing linearly
    with depth (whole tens of metres)."""
    ddz = [
        50.0,
        70.0,
        100.0,
        140.0,
        190.0,
        240.0,
        290.0,
        340.0,
        390.0,
        440.0,
        490.0,
        540.0,
        590.0,
        640.0,
        690.0,
    ]
    dz15 = [d / 2.5 for d in ddz]
    if nz == 15:
        return dz15
    if nz < 1:
        raise ConfigError(f"acc_dz: nz must be ≥ 1; got {nz}")
    raw = [1.0 + 0.5 * i for i in range(nz)]
    dz = [10.0 * round(208.0 * r / sum(raw)) for r in raw]  # whole tens of metres
    dz[-1] += 2080.0 - sum(dz)
    return dz


def acc_grid(
    resolution: float = 2.0,
    *,
    nz: int = 15,
    dtype: torch.dtype = torch.float64,
    x0: float = -2.0,
    y0: float = -42.0,
    lat_extent: float = 84.0,
    lon_extent: float = 60.0,
    vertical: str = "veros",
) -> Grid:
    """The Veros ``acc_basic`` geometry: a re-entrant channel south of 20°S joined to a closed basin.

    As Veros builds it (its ``x_origin, y_origin`` are the first *faces* including the halo shift, so the T
    points of the 2° grid are ``xt = −1, 1, …, 57°`` and ``yt = −41, …, 41°``): domain 2°W–58°E × 42°S–42°N at
    ``resolution`` degrees (2° gives 30 × 42 × 15), flat bottom at 2080 m, land where ``xt ≤ 1°`` and
    ``yt ≥ −20°`` (Veros: ``kbot = (xt > 1) | (yt < −20)``: two columns at 2°, 11 channel rows). At
    resolutions
    too coarse for a T point at ``xt ≤ 1°`` the first column is the wall. ``vertical``: see :class:`Grid`
    (Veros's by default, as the TKE closure needs).
    """
    if resolution <= 0:
        raise ConfigError(f"acc_grid: resolution must be > 0 degrees; got {resolution}")
    nx = round(lon_extent / resolution)
    ny = round(lat_extent / resolution)
    if nx < 3 or ny < 3:
        raise ConfigError(f"acc_grid: resolution {resolution}° gives only {nx} × {ny} cells; use a finer one")
    xt = x0 + resolution * (torch.arange(nx, dtype=torch.float64) + 0.5)
    yt = y0 + resolution * (torch.arange(ny, dtype=torch.float64) + 0.5)
    wall = 1.0 if bool((xt <= 1.0).any()) else float(xt[0])
    wet = (xt.reshape(1, nx) > wall) | (yt.reshape(ny, 1) < -20.0)
    kbot = wet.to(torch.int64)
    return Grid(nx, ny, acc_dz(nz), kbot, x0=x0, y0=y0, dlon=resolution, dlat=resolution, cyclic=True,
                vertical=vertical, dtype=dtype)  # fmt: skip
