"""pelagos.qg — pseudo-spectral quasi-geostrophic models in pyqg's conventions, diagnostics and closures."""

from .base import Flow, QGState, SpectralQG
from .grid import SpectralGrid
from .models import BTModel, LayeredModel, QGModel

__all__ = ["BTModel", "Flow", "LayeredModel", "QGModel", "QGState", "SpectralGrid", "SpectralQG"]
