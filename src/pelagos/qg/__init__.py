"""pelagos.qg — pseudo-spectral quasi-geostrophic models in pyqg's conventions, diagnostics and closures."""

from .base import Flow, QGState, SpectralQG
from .coarsen import Coarsener, lowres_like
from .grid import SpectralGrid
from .models import BTModel, LayeredModel, QGModel
from .parameterizations import (
    BackscatterBiharmonic,
    NeuralClosure,
    Parameterization,
    Smagorinsky,
    ZannaBolton2020,
)

__all__ = [
    "BTModel",
    "BackscatterBiharmonic",
    "Coarsener",
    "Flow",
    "LayeredModel",
    "NeuralClosure",
    "Parameterization",
    "QGModel",
    "QGState",
    "Smagorinsky",
    "SpectralGrid",
    "SpectralQG",
    "ZannaBolton2020",
    "lowres_like",
]
