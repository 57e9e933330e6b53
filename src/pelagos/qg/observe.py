"""Points for QG observations: ``at`` dicts for :meth:`SpectralQG.observation_operator(variable, at)`.

The QG models observe ``q``, ``psi``, ``u`` or ``v`` at points ``at = {"lev": layer index (0 = top),
"y": m, "x": m}`` (one value or a list per coordinate) through their observation operator
(:class:`~pelagos.qg.base.QGPointOperator`: bilinear on the doubly periodic grid, exact at the cell centres
``((i + ½) dx, (j + ½) dy)``, differentiable in the state). Observation files name the same coordinates in
columns ``lev,y,x`` (:func:`pelagos.core.obsio.read_observations`). Here: the ``at`` of cell centres, by flat
index into (nz, ny, nx) or drawn from a seed.
"""

from __future__ import annotations

import torch

__all__ = ["grid_points", "random_points"]


def grid_points(model, index) -> dict[str, list[float]]:
    """``at`` of the cell centres with flat indices ``index`` into (nz, ny, nx): ``{"lev": layer index,
    "y": m, "x": m}``."""
    qg = getattr(model, "qg", model)
    p = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    k, rest = p // (qg.ny * qg.nx), p % (qg.ny * qg.nx)
    iy, ix = rest // qg.nx, rest % qg.nx
    lev = torch.as_tensor(model.output_coordinates()["lev"].values, dtype=torch.float64).reshape(-1)
    g = qg.grid
    return {
        "lev": lev[k].tolist(),
        "y": ((iy + 0.5) * g.dy).tolist(),
        "x": ((ix + 0.5) * g.dx).tolist(),
    }


def random_points(model, m: int, seed: int = 0) -> dict[str, list[float]]:
    """``at`` of ``m`` distinct cell centres drawn from a seed (for ``model.observation_operator``): layer
    index, y and x in m, as :func:`grid_points`."""
    qg = getattr(model, "qg", model)
    n = qg.nz * qg.ny * qg.nx
    return grid_points(model, torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m])
