"""``pelagos calibrate CONFIG.yaml``: gradient calibration of a model's parameters against observations.

Generic over models (``model.factory: module:callable``); the water-column specific parts (observation
operator
for ``npzd_phy``-like variables, forcing) come from the model itself. Example::

    model: {factory: pelagos.models:Lorenz63}
    observations: {synthetic: {n: 20, every: 5, sigma: 1.0, seed: 0}}   # or file: obs.csv + start: ISO date
    set: {rho: 25.0}                  # first guess (physical values)
    free: [rho, beta]
    priors: {rho: {mean: 25.0, std: 0.5}}
    optimizer: {name: lbfgs, max_iter: 100}
    uncertainty: hessian
    output: calibration.json
"""

from __future__ import annotations

import argparse

NAME = "calibrate"
HELP = "calibrate model parameters against observations (gradient-based, with Laplace uncertainty)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML configuration (see `pelagos calibrate --help` docs/inverse.md)")
    parser.add_argument("--output", default=None, help="result file (.json/.yaml); overrides `output:`")
    parser.add_argument("--progress", action="store_true", help="show a progress bar with the current cost")


def run(args: argparse.Namespace) -> int:
    from ..io.inverse_config import is_column_config, run_inverse_cli

    if is_column_config(args.config):  # a water-column run configuration (docs/column_inverse.md)
        return run_inverse_cli(args.config, mode="calibrate", progress=getattr(args, "progress", False))

    import torch

    from ..inverse.calibrate import calibrate
    from ..inverse.config import build_model, build_observations, build_state, load_config

    cfg = load_config(args.config)
    model = build_model(cfg)
    state = build_state(cfg, model)
    obs, truth = build_observations(cfg, model, state)
    free = cfg.get("free") or []
    model.select_free(free)
    for name, pr in (cfg.get("priors") or {}).items():
        model.set_prior(name, mean=pr.get("mean"), std=float(pr.get("std", 1.0)))
    if truth is not None:  # twin: start the estimation from the prior means
        for name in free:
            pr = model.parameter_spec(name).prior
            if pr is not None:
                first_guess = model.parameter_spec(name).transform.forward(torch.tensor(pr.mean))
                model.set_parameter_value(name, float(first_guess))
    opt = cfg.get("optimizer") or {}
    res = calibrate(
        model,
        obs,
        state,
        optimizer=opt.get("name", "lbfgs"),
        max_iter=int(opt.get("max_iter", 100)),
        lr=float(opt.get("lr", 0.05)),
        uncertainty=cfg.get("uncertainty", "hessian"),
        progress=args.progress,
    )
    print(res.summary())
    out = args.output or cfg.get("output")
    if out:
        res.save(out)
        print(f"wrote {out}")
    return 0
