"""``pelagos assimilate CONFIG.yaml``: state estimation (4D-Var window or an ensemble filter) for tensor
states.

Skeleton of the generic driver; the water-column wiring (dict states, profile operators, forcing) will add its
own model factory and observation operator. Example::

    model: {factory: pelagos.models:Lorenz96}
    observations: {synthetic: {n: 100, every: 1, sigma: 1.0}}
    method: enkf                      # enkf | pertobs | letkf | fourdvar
    ensemble: {N: 20, infl: 1.02, spread: 1.0, seed: 0}
    background: {std: 1.0}            # fourdvar: B = std² I (or length_scale: L for a Gaussian correlation)
    output: analysis.json
"""

from __future__ import annotations

import argparse
import json

NAME = "assimilate"
HELP = "assimilate observations into a model state (4D-Var, EnKF, LETKF)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML configuration (see docs/inverse.md)")
    parser.add_argument("--output", default=None, help="result file (.json); overrides `output:`")
    parser.add_argument("--progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..io.inverse_config import is_column_config, run_inverse_cli

    if is_column_config(args.config):  # a water-column run configuration (docs/column_inverse.md)
        return run_inverse_cli(args.config, mode="assimilate", progress=getattr(args, "progress", False))

    import torch

    from ..core.covariance import CorrelatedCovariance, DiagonalCovariance
    from ..core.errors import ConfigError
    from ..inverse.config import build_model, build_observations, build_state, load_config
    from ..inverse.ensemble import ensemble_filter
    from ..inverse.fourdvar import fourdvar

    cfg = load_config(args.config)
    model = build_model(cfg)
    x_true = build_state(cfg, model)
    obs, _ = build_observations(cfg, model, x_true)
    if not torch.is_tensor(x_true):
        raise ConfigError("pelagos assimilate (generic skeleton) handles tensor states only")
    method = cfg.get("method", "enkf")
    out: dict = {"method": method}
    if method == "fourdvar":
        b = cfg.get("background") or {}
        n = x_true.shape[-1]
        B = (
            CorrelatedCovariance(torch.arange(n, dtype=torch.float64), b.get("std", 1.0), b["length_scale"])
            if "length_scale" in b
            else DiagonalCovariance(b.get("std", 1.0), n)
        )
        g = torch.Generator().manual_seed(int(b.get("seed", 0)))
        xb = x_true + B.sqrt_apply(torch.randn(x_true.shape, generator=g, dtype=x_true.dtype))
        r = fourdvar(model, obs, xb, B, progress=args.progress)
        out.update(
            cost=r.cost,
            history=r.history,
            n_evals=r.n_evals,
            analysis=r.analysis.tolist(),
            analysis_rmse=float((r.analysis - x_true).pow(2).mean().sqrt()),
            background_rmse=float((xb - x_true).pow(2).mean().sqrt()),
        )
    elif method in ("enkf", "sqrt", "pertobs", "letkf"):
        e = cfg.get("ensemble") or {}
        g = torch.Generator().manual_seed(int(e.get("seed", 0)))
        N = int(e.get("N", 20))
        E0 = x_true + float(e.get("spread", 1.0)) * torch.randn(
            N, *x_true.shape, generator=g, dtype=x_true.dtype
        )
        kind = "sqrt" if method == "enkf" else method
        loc = None
        if kind == "letkf":
            c = torch.arange(x_true.shape[-1], dtype=torch.float64)
            idx = getattr(obs.operator, "index", torch.arange(obs.m)).to(torch.float64)
            loc = {
                "state_coords": c,
                "obs_coords": idx,
                "radius": float(e.get("radius", 4.0)),
                "period": float(x_true.shape[-1]) if e.get("periodic", True) else None,
            }
        r = ensemble_filter(
            model,
            obs,
            E0,
            method=kind,
            infl=float(e.get("infl", 1.0)),
            rot=bool(e.get("rot", False)),
            localization=loc,
            generator=g,
            progress=args.progress,
        )
        out.update(times=r.times.tolist(), spread=r.spread.tolist(), final_mean=r.mean[-1].tolist())
    else:
        raise ConfigError(f"unknown method {method!r}; valid: fourdvar, enkf, pertobs, letkf")
    dest = args.output or cfg.get("output")
    if dest:
        with open(dest, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"wrote {dest}")
    else:
        print(json.dumps({k: v for k, v in out.items() if not isinstance(v, list)}, indent=2))
    return 0
