"""``pelagos gradcheck``: gradient of a rollout vs finite differences over 1, 2, 4, … steps.

Models are looked up in :data:`MODELS`: name -> ``"module:function"`` returning ``(model, initial_state)``
with the parameters to check already free. Adding a model = adding one entry.
"""

from __future__ import annotations

import argparse
import importlib

from ..core.errors import ConfigError

NAME = "gradcheck"
HELP = "check a model's rollout gradients against central finite differences (float64)"

MODELS: dict[str, str] = {
    "diffusion1d": "pelagos.core.toy:diffusion1d_case",
    "npzd-column": "pelagos.commands._gradcheck_cases:npzd_column_case",
    "lorenz96": "pelagos.commands._gradcheck_cases:lorenz96_case",
    "qg": "pelagos.commands._gradcheck_cases:qg_case",
    "hbv": "pelagos.hydro.kind:gradcheck_case",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="diffusion1d", help=f"built-in model: {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="rollout lengths")
    parser.add_argument(
        "--wrt",
        choices=["params", "state", "both"],
        default=None,
        help="what to perturb (default: the case's)",
    )
    parser.add_argument("--h", type=float, default=None, help="finite-difference step (default: the case's)")
    parser.add_argument("--directions", type=int, default=2, help="random directions per length")
    parser.add_argument("--checkpoint", default=None, help="rollout checkpointing: an int segment or 'sqrt'")
    parser.add_argument(
        "--tol", type=float, default=None, help="relative tolerance (default: 1e-6 or the case's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", action="store_true", help="also print the model's parameter table")


def load_case(name: str):
    """``(model, state, options)`` of a registered model; options may set ``h`` and ``wrt`` defaults."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r} for gradcheck; valid: {', '.join(MODELS)}")
    module, _, func = MODELS[name].partition(":")
    case = getattr(importlib.import_module(module), func)()
    return (*case, {}) if len(case) == 2 else case


def run(args: argparse.Namespace) -> int:
    from ..core.gradcheck import rollout_gradient_report

    ckpt = args.checkpoint
    if ckpt is not None and ckpt != "sqrt":
        try:
            ckpt = int(ckpt)
        except ValueError:
            raise ConfigError(f"--checkpoint must be an int or 'sqrt'; got {ckpt!r}") from None
    model, state, options = load_case(args.model)
    wrt = args.wrt or options.get("wrt", "both")
    h = args.h or options.get("h", 1e-5)
    tol = args.tol or options.get("tol", 1e-6)
    if args.table:
        print(model.parameters_table())
        print()
    report = rollout_gradient_report(
        model,
        state,
        args.steps,
        wrt=wrt,
        h=h,
        loss=options.get("loss"),
        n_directions=args.directions,
        tol=tol,
        seed=args.seed,
        checkpoint=ckpt,
    )
    print(f"model: {args.model}")
    print(report)
    print()
    jr = rollout_jvp_report(model, state, max(args.steps), seed=args.seed, with_state=wrt != "params")
    print(jr)
    return 0 if report.passed and jr.passed else 1


def rollout_jvp_report(model, state, n_steps: int, seed: int = 0, with_state: bool = True):
    """Forward vs reverse mode for the map (free parameters[, initial state]) -> final state."""
    import copy

    import torch
    import torch.utils._pytree as pytree

    from ..core.gradcheck import check_jvp_vjp, promote64
    from ..core.rollout import rollout

    m = copy.deepcopy(model).to(torch.float64)

    leaves, spec = pytree.tree_flatten(state)

    fixed = [promote64(t) for t in leaves]

    def final(u, *s):
        with m.using(u):
            return rollout(m, pytree.tree_unflatten(list(s) if s else fixed, spec), n_steps).final

    return check_jvp_vjp(
        final,
        (m.free_vector().to(torch.float64), *(fixed if with_state else ())),
        seed=seed,
        title=f"forward mode (jvp) vs reverse mode (vjp) of the state after {n_steps} steps, float64",
    )
