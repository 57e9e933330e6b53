"""Restart files: moved to :mod:`pelagos.core.restart` (one format for every model, loaded with
``weights_only=True``); re-exported here."""

from ..core.restart import Restart, config_fingerprint, load_restart, save_restart

__all__ = ["Restart", "config_fingerprint", "load_restart", "save_restart"]
