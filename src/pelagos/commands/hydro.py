"""``pelagos hydro train|evaluate CONFIG.yaml`` — differentiable parameter learning (dPL) for HBV."""

from __future__ import annotations

import argparse

NAME = "hydro"
HELP = "differentiable hydrology: train and evaluate dPL (parameter networks for HBV) and its baselines"
DESCRIPTION = """Differentiable parameter learning for HBV:

  pelagos hydro train CONFIG.yaml      train dPL (and the LSTM / per-basin calibration baselines named in
                                       compare.models); checkpoints <output>_<model>.pt, <output>_training.json
  pelagos hydro evaluate CONFIG.yaml   NSE/KGE per split, parameter error and spatial coherence against the
                                       synthetic truth, untrained outputs; <output>_metrics.json and figures

Data-parallel training: torchrun --nproc_per_node=N -m pelagos.cli hydro train CONFIG.yaml (gloo on CPU).
Examples: examples/hydro_dpl_synthetic.yaml, examples/hydro_dpl_camels4.yaml. See docs/hydro_dpl.md."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import add_config_arguments

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (
        ("train", "train the models of compare.models on the gauged basins; writes checkpoints"),
        ("evaluate", "evaluate the trained models; writes <output>_metrics.json and figures"),
    ):
        q = sub.add_parser(action, help=text, description=text)
        q.add_argument("config", help="dPL configuration, e.g. examples/hydro_dpl_synthetic.yaml")
        add_config_arguments(q, output_help="output base name: files go next to it (overrides output.file)")
        if action == "train":
            q.add_argument("--resume", action="store_true", help="continue from the checkpoints if present")


def run(args: argparse.Namespace) -> int:
    import os

    from ..hydro import experiment

    cfg = experiment.load(args.config, overrides=args.overrides, output=args.output)
    if args.progress is not None:
        cfg.train.progress = args.progress
    if args.action == "train":
        import torch.distributed as dist

        started = False
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
            started = True
        try:
            paths = experiment.train_models(cfg, resume=args.resume)
        finally:
            if started:
                dist.destroy_process_group()
        if started and int(os.environ.get("RANK", "0")) != 0:
            return 0
    else:
        paths = experiment.evaluate_models(cfg)
    for p in paths:
        print(f"wrote {p}")
    return 0
