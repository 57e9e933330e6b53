"""Per-basin gradient calibration of HBV on the 4 CAMELS-US sample basins through ``pelagos calibrate``
(examples/hbv_calibrate.yaml, one run per basin), scored with NSE/KGE on the calibration (2001) and test
(2002) years, plus the hydrograph figure of docs/hydro_calibration.md.

    PYTHONPATH=src nice python scripts/hbv_calibrate_camels4.py [--out DIR] [--set KEY=VALUE ...]

Writes OUT/summary.json (per basin: estimates, NSE/KGE first guess and calibrated, model runs, wall time,
the series) and docs/figures/hydro_calibration_hydrographs.png (with --figure).

``--report DIR [DIR ...]`` calibrates nothing: it merges the summaries of earlier runs (e.g. basins calibrated
in two processes) into OUT/summary.json, adds the SCE-UA hydrographs of benchmarks/results/hydro_sceua.json
(scripts/sceua_hbv.py) when present, and draws the figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pelagos.hydro.calibration import calibrate_basins
from pelagos.hydro.camels import SAMPLE_BASINS

ROOT = Path(__file__).resolve().parents[1]


def figure(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    basins = summary["basins"]
    fig, axes = plt.subplots(len(basins), 1, figsize=(11, 2.6 * len(basins)), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (g, b) in zip(axes, basins.items()):
        s = b["series"]
        d = np.array(s["dates"], dtype="datetime64[D]")
        ax.plot(d, s["Q_obs"], color="k", lw=1.0, label="observed (USGS)")
        ax.plot(d, s["Q_first_guess"], color="tab:gray", lw=0.8, ls="--", label="first guess")
        ax.plot(d, s["Q_calibrated"], color="tab:blue", lw=0.9, label="calibrated (gradient)")
        if "Q_sceua" in s:
            ax.plot(d, s["Q_sceua"], color="tab:orange", lw=0.8, alpha=0.8, label="calibrated (SCE-UA)")
        ax.axvspan(np.datetime64("2000-01-01"), np.datetime64("2001-01-01"), color="0.92", lw=0)
        ax.axvline(np.datetime64("2002-01-01"), color="0.5", lw=0.8)
        c, t = b["calibrated"]["calibration"], b["calibrated"]["test"]
        fg = b["first_guess"]
        ax.set_title(
            f"{g}: NSE calibration {c['NSE']:.2f} (first guess {fg['calibration']['NSE']:.2f}), "
            f"test {t['NSE']:.2f} ({fg['test']['NSE']:.2f})",
            fontsize=9,
        )
        ax.set_ylabel("Q (mm/d)")
    axes[0].legend(fontsize=8, ncol=4, loc="upper right")
    axes[0].text(
        np.datetime64("2000-03-01"), axes[0].get_ylim()[1] * 0.85, "warm-up", fontsize=8, color="0.4"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(folders: list[str], out: Path) -> dict:
    """Merge the summary.json of ``folders`` (later ones win per basin), add SCE-UA series; write OUT."""
    import json

    from pelagos.hydro.calibration import evaluate
    from pelagos.hydro.camels import SAMPLE

    summary: dict = {}
    for f in folders:
        s = json.loads((Path(f) / "summary.json").read_text())
        for g, b in s["basins"].items():  # where pelagos calibrate's own results file is
            b.setdefault("results", str((Path(f) / f"calibrate_{g}.json").resolve()))
        basins = {**summary.get("basins", {}), **s["basins"]}
        summary = {**s, "basins": basins}
    sce_path = ROOT / "benchmarks" / "results" / "hydro_sceua.json"
    if sce_path.exists():
        sce = json.loads(sce_path.read_text())
        for g, b in summary["basins"].items():
            if g in sce.get("basins", {}):
                cal, test = tuple(summary["calibration"]), tuple(summary["test"])
                ev = evaluate(
                    SAMPLE, g, sce["basins"][g]["best"], start="2000-01-01", calibration=cal, test=test
                )
                b["series"]["Q_sceua"] = ev["Q_sim"]
                b["sceua"] = {k: ev[k] for k in ("calibration", "test")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for g, b in summary["basins"].items():
        fg, c = b["first_guess"], b["calibrated"]
        line = (f"| {g} | {fg['calibration']['NSE']:.3f} / {fg['test']['NSE']:.3f} | "
                f"{c['calibration']['NSE']:.3f} / {c['test']['NSE']:.3f} | "
                f"{c['calibration']['KGE']:.3f} / {c['test']['KGE']:.3f} | {b['n_evals']} |")  # fmt: skip
        if "sceua" in b:
            sc = b["sceua"]
            line += (f" {sc['calibration']['NSE']:.3f} / {sc['test']['NSE']:.3f} | "
                     f"{sc['calibration']['KGE']:.3f} / {sc['test']['KGE']:.3f} |")  # fmt: skip
        print(line)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "hbv_calibrate.yaml"))
    ap.add_argument("--basins", nargs="*", default=list(SAMPLE_BASINS))
    ap.add_argument("--out", default="results/hbv_calibrate")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--figure", default=None, help="also draw the hydrographs to this PNG")
    ap.add_argument("--report", nargs="*", default=None, help="merge these result folders; no calibration")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.report is not None:
        summary = merge(args.report, Path(args.out))
    else:
        summary = calibrate_basins(args.config, args.basins, out_dir=args.out, overrides=args.overrides)
    if args.figure:
        figure(summary, Path(args.figure))
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
