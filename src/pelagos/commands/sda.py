"""``pelagos sda generate|train|sample|evaluate CONFIG.yaml`` — score-based data assimilation on QG."""

from __future__ import annotations

import argparse

NAME = "sda"
HELP = "score-based data assimilation on the QG model: data, training, posterior samples, evaluation"
DESCRIPTION = """Score-based data assimilation (SDA) on the two-layer QG model:

  pelagos sda generate CONFIG.yaml   simulate, coarse-grain, split and write the trajectories (<dir>/data)
  pelagos sda train CONFIG.yaml      train the score network (resumes from <dir>/checkpoint.pt; --fresh)
  pelagos sda sample CONFIG.yaml     posterior trajectories for every scenario (<dir>/samples.pt)
  pelagos sda evaluate CONFIG.yaml   SDA vs 4D-Var vs LETKF vs climatology: <dir>/metrics.json, figures
  pelagos sda all CONFIG.yaml        the four in a row

<dir> is output.file of the configuration (or --output). See docs/sda.md and examples/sda_small.yaml;
`torchrun --nproc_per_node N -m pelagos.cli sda train CONFIG.yaml` trains data-parallel."""

ACTIONS = {
    "generate": "simulate the QG model, coarse-grain, split train/valid/test, write NetCDF + statistics",
    "train": "train the local score network (AdamW, linear decay, EMA, checkpoints; resumes)",
    "sample": "draw SDA posterior trajectories for every scenario and evaluated truth",
    "evaluate": "score SDA and the baselines (4D-Var, LETKF, climatology); write metrics.json and figures",
    "all": "generate, train, sample and evaluate",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import add_config_arguments

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in ACTIONS.items():
        q = sub.add_parser(action, help=text, description=text)
        q.add_argument("config", help="SDA configuration, e.g. examples/sda_small.yaml")
        add_config_arguments(q, output_help="working folder (overrides output.file)")
        if action in ("train", "all"):
            q.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")


def _physical(data_cfg) -> dict:
    """The data settings that change the data (not threads, device or batching)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(data_cfg).items() if k not in ("threads", "device", "batch")}


def run(args: argparse.Namespace) -> int:

    from ..core.errors import ConfigError
    from ..io import sda_run as P
    from ..io.build import show_progress
    from ..qg.sda_data import SDAData, generate

    cfg = P.load_sda_config(args.config, overrides=args.overrides, output=args.output)
    progress = show_progress(args.progress)
    d = cfg.dir
    d.mkdir(parents=True, exist_ok=True)
    actions = ["generate", "train", "sample", "evaluate"] if args.action == "all" else [args.action]
    for action in actions:
        if action == "generate":
            generate(cfg.data, d / "data", progress=progress)
            print(f"wrote {d / 'data'}")
            continue
        data = SDAData(d / "data")
        if _physical(data.config) != _physical(cfg.data):
            raise ConfigError(
                f"the data in {d / 'data'} were generated with other data settings than {args.config}; "
                "run `pelagos sda generate` again"
            )
        if action == "train":
            r = P.train(data, cfg.train, d, resume=not getattr(args, "fresh", False), progress=progress)
            print(f"wrote {r['path']}")
        elif action == "sample":
            P.sample_scenarios(
                data, d / "score.pt", cfg.scenario_objects(), cfg.sample, d / "samples.pt", progress=progress
            )
            print(f"wrote {d / 'samples.pt'}")
        else:
            samples = None
            sp, wp = d / "samples.pt", d / "score.pt"
            if wp.exists():
                names = [s.name for s in cfg.scenarios]
                samples = P.load_samples(sp, cfg.sample, names)
                if samples is None or sp.stat().st_mtime < wp.stat().st_mtime:
                    P.sample_scenarios(data, wp, cfg.scenario_objects(), cfg.sample, sp, progress=progress)
                    samples = P.load_samples(sp)
            else:
                print(f"no trained network at {wp}: evaluating the baselines only")
            m = P.evaluate(
                data,
                cfg.scenario_objects(),
                cfg.sample,
                cfg.baselines,
                d,
                sda_samples=samples,
                progress=progress,
            )
            print(P.summary_table(m))
            print(f"wrote {d / 'metrics.json'}")
            for f in m.get("figures", []):
                print(f"wrote {f}")
    return 0
