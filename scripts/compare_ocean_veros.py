"""pelagos's ``acc`` ocean vs Veros ``acc_basic``: ACC transport over 2 model years from rest, BSF
pattern, and the response to r_bot × 2 and A_h × 0.5 (Veros side: the fixture written by
``scripts/veros_reference.py``).

    PYTHONPATH=src python scripts/compare_ocean_veros.py [--years 2] [--geometry veros|pelagos]
        [--out docs/figures/ocean_veros] [--runs base,rbot2,ah05,both] [--short veros_acc_short.npz]

``--geometry veros`` (default) builds pelagos's model on Veros's exact geometry and forcing read from the
fixture (T rows at 41°S…41°N, two land columns, Veros's wind stress and restoring SST, initial temperature
``15 (1 − zt/zw_bottom)`` on Veros's zt); ``--geometry pelagos`` uses ``pelagos.ocean.acc_model`` as it is.
The ACC transport is computed the same way on both sides: Σ u·dy·dz over a full meridional section (Sv),
averaged over all longitudes. The runs are members of one batched pelagos model (per-member A_h, r_bot).
Writes ``compare.json``, ``compare.png`` and each pelagos run as ``pelagos_<geometry>_<run>.npz`` into
``--out`` (``--load`` re-plots from those).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "ocean"
YEAR = 365 * 86400.0
FACTORS = {"base": (1.0, 1.0), "rbot2": (1.0, 2.0), "ah05": (0.5, 1.0), "both": (0.5, 2.0)}


def build_model(geometry: str, a_h_factor: float, r_bot_factor: float, mixing: str = "tke"):
    from pelagos.ocean import acc_model
    from pelagos.ocean.eos import vertical_grid
    from pelagos.ocean.grid import Grid
    from pelagos.ocean.model import OceanModel

    g0 = np.load(DATA / "veros_acc_grid.npz")
    a_h = float(g0["A_h"]) * a_h_factor
    r_bot = float(g0["r_bot"]) * r_bot_factor
    if geometry == "pelagos":
        m = acc_model(2.0, A_h=a_h, r_bot=r_bot, mixing=mixing)
        return m, m.initial_state()
    ny, nx = g0["kbot"].shape
    dz = torch.as_tensor(g0["dzt"])
    grid = Grid(nx, ny, dz, torch.as_tensor(g0["kbot"]), x0=-2.0, y0=-42.0, dlon=2.0, dlat=2.0, cyclic=True,
                vertical="veros")  # fmt: skip
    # zonally uniform in the open ocean; a middle column (the last one is masked by the wrap onto the land)
    taux = torch.as_tensor(g0["surface_taux"][:, nx // 2])
    m = OceanModel(
        grid, dt_mom=float(g0["dt_mom"]), dt_tracer=float(g0["dt_tracer"]), taux=taux,
        t_star=torch.as_tensor(g0["t_star"]), A_h=a_h, r_bot=r_bot, taux_ref=0.1, mixing=mixing,
    )  # fmt: skip
    s = m.initial_state()
    vg = vertical_grid(dz)
    temp = 15.0 * (1.0 - vg.zt / vg.zw[-1]).reshape(-1, 1, 1) * grid.mask_t
    s["temp"] = temp.to(s["temp"]).expand_as(s["temp"]).clone()
    return m, s


def transport_sv(m, u: torch.Tensor) -> float:
    g = m.grid
    per_x = (u * g.mask_u * g.dz.reshape(-1, 1, 1)).sum((-3, -2)) * float(g.dy)
    return float(per_x.mean()) / 1e6


def run(geometry: str, labels: list[str], years: float, every: int) -> dict[str, dict]:
    """All ``labels`` at once as one batched pelagos model (member b: A_h, r_bot scaled by FACTORS[label])."""
    m, s = build_model(geometry, 1.0, 1.0)
    a_h, r_bot = float(m.param("A_h")), float(m.param("r_bot"))
    B = len(labels)
    m.set_parameter_value("A_h", torch.tensor([a_h * FACTORS[k][0] for k in labels], dtype=m.dtype))
    m.set_parameter_value("r_bot", torch.tensor([r_bot * FACTORS[k][1] for k in labels], dtype=m.dtype))
    s = {k: v.expand(B, *v.shape).clone() for k, v in s.items()}
    steps_per_year = round(YEAR / m.dt_tracer)
    n = round(years * steps_per_year)
    rec = {k: dict(time_days=[0.0], transport=[0.0], psi=[], transport_year_end=[]) for k in labels}
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(1, n + 1):
            s = m.step(s, (i - 1) * m.dt_tracer)
            if i % every == 0:
                for b, k in enumerate(labels):
                    rec[k]["time_days"].append(i * m.dt_tracer / 86400.0)
                    rec[k]["transport"].append(transport_sv(m, s["u"][b]))
                    if not math.isfinite(rec[k]["transport"][-1]):
                        raise RuntimeError(f"pelagos {k}: non-finite transport at step {i}")
            if i % steps_per_year == 0:
                psi = m.output(s)["psi"].detach().cpu().numpy()
                for b, k in enumerate(labels):
                    rec[k]["psi"].append(psi[b])
                    rec[k]["transport_year_end"].append(transport_sv(m, s["u"][b]))
                    acc = rec[k]["transport_year_end"][-1]
                    print(f"  pelagos {k}: year {i // steps_per_year}: ACC {acc:.2f} Sv "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    wall = time.perf_counter() - t0
    out = {}
    for k in labels:
        out[k] = {name: np.array(v) for name, v in rec[k].items()}
        out[k]["ms_per_step"] = 1e3 * wall / max(n, 1) / B
    return out


def short_compare(path: Path) -> dict:
    """pelagos ``base`` from the same state of rest as Veros, stepped to each step stored in ``path`` (written
    by ``veros_reference.py --short``): max |pelagos − Veros| / max |Veros| of u, v, temp, tke and of the
    kappaM, kappaH used during the step, and the ACC transport."""
    ref = np.load(path)
    m, s = build_model("veros", 1.0, 1.0)
    res = {}
    with torch.no_grad():
        for n in range(1, int(ref["steps"].max()) + 1):
            mix = m.vertical_mixing(s)
            s = m.step(s, (n - 1) * m.dt_tracer)
            if n not in set(int(k) for k in ref["steps"]):
                continue
            ours = {k: s[k] for k in ("u", "v", "temp", "tke")}
            ours.update(kappaM=mix["kappaM"], kappaH=mix["kappaH"])
            row = {}
            for k, x in ours.items():
                r = ref[f"{k}_{n}"].astype(np.float64)
                row[k] = float(np.abs(x.numpy() - r).max() / max(np.abs(r).max(), 1e-30))
            row["transport"] = [transport_sv(m, s["u"]), float(ref[f"transport_{n}"])]
            res[n] = row
            print(f"step {n}: " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in row.items()), flush=True)  # fmt: skip
    return res


def pattern_stats(a: np.ndarray, b: np.ndarray) -> dict:
    """Pattern correlation and normalised RMS difference of two BSF maps (means removed), both in Sv, and
    the range of each in the closed basin (corner rows 12… = north of 20°S, columns 2… = east of the land)."""
    a = a - a.mean()
    b = b - b.mean()
    corr = float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))
    basin = (slice(12, None), slice(2, None))
    return dict(corr=corr, nrmse=float(np.sqrt(((a - b) ** 2).mean()) / np.sqrt((b * b).mean())),
                range_pelagos=float(a.max() - a.min()), range_veros=float(b.max() - b.min()),
                basin_range_pelagos=float(np.ptp(a[basin])),
                basin_range_veros=float(np.ptp(b[basin])))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--years", type=float, default=2.0)
    ap.add_argument("--geometry", choices=("veros", "pelagos"), default="veros")
    ap.add_argument("--runs", default="base,rbot2,ah05,both")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "ocean_veros")
    ap.add_argument("--load", action="store_true", help="reuse the pelagos runs saved in --out")
    ap.add_argument("--short", type=Path, default=None,
                    help="only compare a few steps from rest with a veros_acc_short.npz")  # fmt: skip
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.short is not None:
        torch.set_num_threads(1)
        res = short_compare(a.short)
        (a.out / "short_compare.json").write_text(json.dumps({str(k): v for k, v in res.items()}, indent=1))
        return
    torch.set_num_threads(1)
    vr = np.load(DATA / "veros_acc_runs.npz")
    res, ours = {"years": a.years, "geometry": a.geometry, "runs": {}}, {}
    labels = a.runs.split(",")
    saved = {k: a.out / f"pelagos_{a.geometry}_{k}.npz" for k in labels}
    if a.load and all(p.exists() for p in saved.values()):
        for k in labels:
            ours[k] = {name: v for name, v in np.load(saved[k]).items()}
            ours[k]["ms_per_step"] = float(ours[k]["ms_per_step"])
    else:
        ours = run(a.geometry, labels, a.years, a.every)
        for k in labels:
            np.savez_compressed(saved[k], **ours[k])
    for label in labels:
        p = ours[label]
        v_year = vr[f"{label}_transport_year_end"]
        ny = min(len(v_year), len(p["transport_year_end"]))
        rel = [float(p["transport_year_end"][k] / v_year[k] - 1) for k in range(ny)]
        entry = dict(
            pelagos_Sv=[float(x) for x in p["transport_year_end"]], veros_Sv=[float(x) for x in v_year[:ny]],
            rel_diff=rel, within_10pct=[abs(r) <= 0.10 for r in rel], pelagos_ms_per_step=p["ms_per_step"],
        )  # fmt: skip
        if a.geometry == "veros" and ny:
            psi_v = vr[f"{label}_psi_year_end"][ny - 1].astype(np.float64)
            psi_p = p["psi"][ny - 1]
            if psi_p.shape == psi_v.shape:
                entry["bsf_last_year"] = pattern_stats(psi_p, psi_v)
        res["runs"][label] = entry
        print(f"{label}: {json.dumps(entry)}", flush=True)
    if "base" in ours:
        for label in ("rbot2", "ah05", "both"):
            if label not in ours:
                continue
            resp = {}
            for k in range(min(len(res["runs"][label]["veros_Sv"]), len(res["runs"][label]["pelagos_Sv"]))):
                dp = res["runs"][label]["pelagos_Sv"][k] - res["runs"]["base"]["pelagos_Sv"][k]
                dv = res["runs"][label]["veros_Sv"][k] - res["runs"]["base"]["veros_Sv"][k]
                resp[f"year{k + 1}"] = dict(pelagos_dSv=dp, veros_dSv=dv, same_sign=dp * dv > 0,
                                            rel_diff=dp / dv - 1 if dv else None)  # fmt: skip
            res[f"response_{label}"] = resp
    (a.out / "compare.json").write_text(json.dumps(res, indent=1))
    plot(ours, vr, a.out / "compare.png")
    print(json.dumps(res, indent=1))


def plot(ours: dict, vr, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, col in zip(("base", "rbot2", "ah05", "both"), ("k", "C0", "C1", "C2")):
        if label in ours:
            ax[0].plot(
                ours[label]["time_days"] / 365, ours[label]["transport"], col, label=f"pelagos {label}"
            )
        if f"{label}_time_days" in vr.files:
            ax[0].plot(
                vr[f"{label}_time_days"] / 365, vr[f"{label}_transport"], col + "--", label=f"Veros {label}"
            )
    ax[0].set(xlabel="years", ylabel="ACC transport (Sv)", title="transport through the channel")
    ax[0].legend(fontsize=7)
    if "base" in ours and len(ours["base"]["psi"]):
        k = len(ours["base"]["psi"]) - 1
        for axi, (name, psi) in zip(ax[1:], (("pelagos", ours["base"]["psi"][k]),
                                            ("Veros", vr["base_psi_year_end"][k]))):  # fmt: skip
            im = axi.pcolormesh(psi - psi.mean(), cmap="RdBu_r", shading="auto")
            fig.colorbar(im, ax=axi, label="Sv (mean removed)")
            axi.set(title=f"{name} BSF, end of year {k + 1}", xlabel="i", ylabel="j")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
