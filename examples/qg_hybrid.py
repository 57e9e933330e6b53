"""Hybrid QG closures end to end (small default configuration: 2 CPU cores, minutes).

    .venv/bin/python examples/qg_hybrid.py [--gpu] [--out benchmarks/results/qg_hybrid.json] [--data F.pt]

High-res 128² two-layer runs → coarse-grained 32² truth and (q̄, S_q) pairs → offline CNN → online CNN
(unrolled solver, curriculum up to 4 days, trajectory + KE-spectrum loss) → evaluation against no closure,
Smagorinsky, BackscatterBiharmonic. Writes the JSON results, a markdown table and figures under
docs/figures/ (qg_hybrid_*.png). ``--data F.pt`` caches the generated data (loaded if F.pt exists).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from dataclasses import asdict, replace

import torch

from pelagos.qg.hybrid import HybridConfig, evaluate, make_data, run_pipeline, summary_table

ROOT = pathlib.Path(__file__).resolve().parents[1]


def plots(out: dict, figdir: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    c = out["curves"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
    ax[0].plot([r["iter"] for r in c["offline"]], [r["train"] for r in c["offline"]], label="train")
    ax[0].plot([r["iter"] for r in c["offline"]], [r["val"] for r in c["offline"]], label="validation")
    ax[0].set(title="offline (a priori): normalised MSE of S_q", xlabel="iteration", yscale="log")
    ax[0].legend()
    it = [r["iter"] for r in c["online"]]
    ax[1].plot(it, [r["loss"] for r in c["online"]], ".-", label="total")
    ax[1].plot(it, [r["traj"] for r in c["online"]], ".-", label="trajectory term")
    if "spec" in c["online"][0]:
        ax[1].plot(it, [r["spec"] for r in c["online"]], ".-", label="KE-spectrum term")
    for r0, r1 in zip(c["online"][:-1], c["online"][1:]):
        if r1["n"] != r0["n"]:
            ax[1].axvline(r1["iter"], color="0.7", lw=0.8)
            ax[1].text(r1["iter"], ax[1].get_ylim()[1], f" n={r1['n']}", fontsize=7, va="top")
    ax[1].set(title="online (a posteriori) loss; curriculum n [steps]", xlabel="iteration", yscale="log")
    ax[1].legend(fontsize=7)
    if "val" in c["online"][0]:
        ax[2].plot(it, [r["val"] / r["val_no_closure"] for r in c["online"]], ".-")
        ax[2].axhline(1.0, color="k", lw=0.8)
        ax[2].set(
            title="online loss on held-out windows / no closure's",
            xlabel="iteration (after the step)",
            ylabel="ratio (< 1: better than no closure)",
        )
    fig.tight_layout()
    fig.savefig(figdir / "qg_hybrid_training.png", dpi=110)
    res = out["results"]
    nb = res["_n_resolved_bins"] + 1  # the resolved bins and the first one in the filter band
    kr = torch.tensor(res["_kr"])[:nb]
    truth_ke = torch.tensor(res["_truth_ke_ispec"])[:, :nb]
    fig, ax = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for lev in range(2):
        ax[0, lev].loglog(kr, truth_ke[lev], "k", lw=2.5, label="truth (128², same k)")
        for k, r in res.items():
            if not k.startswith("_") and "ke_ispec" in r:
                ke = torch.tensor(r["ke_ispec"])[lev, :nb]
                ax[0, lev].loglog(kr, ke, label=k)
                ax[1, lev].semilogx(kr, ke / truth_ke[lev], ".-", label=k)
        years = out["config"]["eval_years"]
        ax[0, lev].set(title=f"KE spectrum, layer {lev + 1}: 2nd half of {years:g}-year runs")
        ax[1, lev].axhline(1.0, color="k", lw=1)
        ax[1, lev].axvspan(0.5 * float(kr[-2] + kr[-1]), float(kr[-1]) * 1.1, color="0.9")
        ax[1, lev].set(ylim=(0, 2.5), xlabel="k [rad/m]", ylabel="model / truth")
    ax[0, 0].legend(fontsize=7)
    ax[1, 0].text(0.5 * float(kr[-2] + kr[-1]), 2.3, " filter\n band", fontsize=7)
    fig.tight_layout()
    fig.savefig(figdir / "qg_hybrid_spectra.png", dpi=110)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    kinds = [("rmse_days", "all scales"), ("rmse_days_resolved", "outside filter band")]
    for j, (key, what) in enumerate(kinds):
        ref = res["no closure"][key]
        for k, r in res.items():
            if not k.startswith("_") and r.get(key):
                days = sorted(r[key], key=float)
                ax[j].plot([float(d) for d in days], [r[key][d] / ref[d] for d in days], "o-", label=k)
        ax[j].set(title=f"forecast RMSE / no closure's ({what})", xlabel="lead time [days]", xscale="log")
    ax[0].set(ylabel="ratio (< 1: better)")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figdir / "qg_hybrid_rmse.png", dpi=110)
    truth = out["data"]["truth"]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3.6))
    for lev in range(2):
        im = ax[lev].imshow(truth[-1, 0, lev].numpy(), origin="lower", cmap="RdBu_r")
        ax[lev].set(title=f"coarse-grained q, layer {lev + 1}")
        fig.colorbar(im, ax=ax[lev], shrink=0.8)
    fig.tight_layout()
    fig.savefig(figdir / "qg_hybrid_q.png", dpi=110)
    plt.close("all")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", action="store_true", help="the larger configuration (256² → 64²) on CUDA")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "qg_hybrid.json"))
    ap.add_argument("--data", default=None, help="cache file for the generated data (.pt)")
    ap.add_argument("--seed", type=int, default=None, help="another seed (data, weights, windows)")
    ap.add_argument("--figdir", default=str(ROOT / "docs" / "figures"), help="where the figures go")
    ap.add_argument("--long-years", type=float, default=0.0, help="also run the CNNs this long (climate)")
    args = ap.parse_args()
    torch.set_num_threads(1 if not args.gpu else torch.get_num_threads())
    cfg = HybridConfig.gpu() if args.gpu else HybridConfig()
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    data = None
    if args.data and pathlib.Path(args.data).exists():
        data = torch.load(args.data, weights_only=False)
        same = ("nx_hr", "nx_lr", "dt", "model", "coarsen", "n_train", "n_test", "spinup_years", "spinup_nx")
        same += ("spinup_hr_years", "ic_amplitude", "data_years", "pair_every", "seed")
        if any(data["config"][k] != asdict(cfg)[k] for k in same):
            raise SystemExit(f"{args.data} was made with another configuration; delete it")
    t0 = time.time()
    if data is None:
        data = make_data(cfg)
        if args.data:
            torch.save(data, args.data)
    t_data = time.time() - t0
    out = run_pipeline(cfg, data=data)
    out["seconds"]["data"] = round(t_data, 1)  # 0 when loaded from the cache
    table = summary_table(out["results"])
    table_resolved = summary_table(out["results"], rmse="rmse_days_resolved")
    print(table)
    print("RMSE* on the scales outside the low-res filter band:")
    print(table_resolved)
    print("wall time [s]:", out["seconds"])
    serial = {
        "config": out["config"],
        "seconds": out["seconds"],
        "curves": out["curves"],
        "results": out["results"],
        "table": table,
        "table_resolved_scales": table_resolved,
    }
    pathlib.Path(args.out).write_text(json.dumps(serial, indent=1, default=str))
    torch.save(
        {k: v.state_dict() for k, v in out["closures"].items()}, pathlib.Path(args.out).with_suffix(".pt")
    )
    plots(out, pathlib.Path(args.figdir))
    if args.long_years > 0:
        long_runs(cfg, data, out["closures"], args.long_years, pathlib.Path(args.out))


def long_runs(cfg: HybridConfig, data: dict, closures: dict, years: float, out: pathlib.Path) -> None:
    """Climate check over ``years`` (no short-term scores); added to the JSON under "long_run"."""
    lcfg = replace(cfg, eval_days=[], eval_years=years)
    t0 = time.time()
    runs = {"no closure": None, "offline CNN": closures["offline"], "online CNN": closures["online"]}
    res = evaluate(lcfg, data, runs)
    keep = ("stable_years", "blew_up", "ke_log10_err", "similarity", "ke_ispec")
    serial = json.loads(out.read_text())
    serial["long_run"] = {
        "years": years,
        "members": cfg.eval_members,
        "seconds": round(time.time() - t0, 1),
        **{k: {f: r.get(f) for f in keep} for k, r in res.items() if not k.startswith("_")},
    }
    out.write_text(json.dumps(serial, indent=1, default=str))
    for k, r in serial["long_run"].items():
        if isinstance(r, dict):
            print(k, "stable", r["stable_years"], "KE log-err", r["ke_log10_err"], "sim", r["similarity"])


if __name__ == "__main__":
    main()
