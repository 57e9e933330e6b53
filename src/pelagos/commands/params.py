"""``pelagos params KIND`` — the parameters table of a model kind (names, units, defaults, bounds)."""

from __future__ import annotations

import argparse

NAME = "params"
HELP = "print the parameters of a model kind (name, value, units, bounds, description)"
DESCRIPTION = """Print the parameters of a model kind: the names `parameters:` and `method.free` take.

  pelagos params lorenz96
  pelagos params column --config examples/nns_annual_npzd.yaml   # the parameters of that configuration"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", help="a model kind (see `pelagos models`)")
    p.add_argument(
        "--config", default=None, help="build the model from this configuration instead of the example"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a configuration entry (with --config)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ..core.errors import ConfigError
    from ..core.registry import get_model_kind

    kind = get_model_kind(args.kind)
    if args.config:
        from ..io.build import build_model
        from ..io.config import load_config

        cfg = load_config(args.config, overrides=args.overrides)
        if cfg.kind.name != kind.name:
            raise ConfigError(f"{args.config} configures model kind {cfg.kind.name!r}, not {kind.name!r}")
        model = build_model(cfg)
    else:
        try:
            model = kind.make_example()
        except Exception as err:
            raise ConfigError(
                f"model kind {kind.name!r} needs a configuration to be built ({err}); "
                f"use `pelagos params {kind.name} --config CONFIG.yaml`"
            ) from None
    print(f"{kind.name}: {kind.description}" if kind.description else kind.name)
    print(model.parameters_table())
    return 0
