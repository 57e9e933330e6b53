"""CLI commands, one module each (see pelagos.cli)."""
