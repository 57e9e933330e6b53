"""dPL training time per epoch: one training iteration of each dPL network (and the LSTM baseline) on a
batch of basins × a 365-day window after a 365-day warm-up, timed, and the epoch of two protocols derived
from it.

An iteration = the parameter network, the no-grad HBV warm-up (365 d), HBV over the 365-day window in the
graph, the NSE* loss, backward and an Adam step. An epoch as dMG counts it has ``ceil(n_basins / batch) ·
(n_train_days // 365)`` iterations: 671 basins × 15 training years (Feng et al. 2022) = 7 · 15 = 105
iterations at batch 100; the semi-synthetic benchmark of docs/hydro_dpl.md is printed too. Float32, one
torch thread, best of ``--repeat``, **CPU time** of the process (on the shared machine other jobs deschedule
the run; with one thread its CPU time is what the wall time would be on an idle core). Writes
``benchmarks/results/hydro_dpl.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from pelagos.hydro.dpl import DplModel
from pelagos.hydro.lstm_baseline import LSTMBaseline
from pelagos.hydro.metrics import nse_star_loss

ROOT = Path(__file__).resolve().parent.parent


def _batch(n: int, days: int, n_attr: int = 27):
    g = torch.Generator().manual_seed(0)
    P = torch.rand(days, n, generator=g) ** 3 * 20
    T = (
        10
        + 12 * torch.sin(torch.arange(days)[:, None] * 2 * math.pi / 365)
        + torch.randn(days, n, generator=g)
    )
    E = torch.clamp(2 + 1.5 * torch.sin(torch.arange(days)[:, None] * 2 * math.pi / 365), min=0.1).expand(
        days, n
    )
    f = torch.stack([P, T, E], -1)
    return f, torch.randn(n, n_attr, generator=g), torch.rand(365, n, generator=g) * 3


def best_cpu(fn, repeat: int) -> float:
    """Minimum process CPU time of ``fn()`` over ``repeat`` calls after one untimed call (seconds)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="*", default=[25, 100])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for bs in args.batch:
        f, z, obs = _batch(bs, 730)
        std = obs.std(0)
        models = {
            "dPL MLP (static, nmul 1)": DplModel(z.shape[1], network="mlp"),
            "dPL MLP (static, nmul 16)": DplModel(z.shape[1], network="mlp", nmul=16),
            "dPL LSTM (BETA dynamic, nmul 16)": DplModel(
                z.shape[1], network="lstm", nmul=16, dynamic=["BETA"], hidden=256
            ),
            "LSTM baseline (hidden 128)": LSTMBaseline(z.shape[1], hidden=128),
        }
        for name, m in models.items():
            opt = torch.optim.Adam(m.parameters(), lr=1e-3)

            def it(m=m, opt=opt, f=f, z=z, obs=obs, std=std):
                opt.zero_grad()
                out = m(f, z, warmup=365, warmup_mode="no_grad")
                q = out if torch.is_tensor(out) else out.Q
                nse_star_loss(q, obs, std).backward()
                opt.step()

            t = best_cpu(it, args.repeat)
            row = {
                "model": name,
                "batch": bs,
                "s_per_iteration": t,
                "camels671_15y_epoch_s": t * math.ceil(671 / bs) * 15,
                "synthetic138_epoch_s": t * math.ceil(138 / bs) * 3,
            }
            rows.append(row)
            print(
                f"{name:36s} batch {bs:4d}: {t:7.2f} s/iteration; epoch 671 basins × 15 y "
                f"{row['camels671_15y_epoch_s'] / 60:6.1f} min; semi-synthetic (138 gauged × 3 y) "
                f"{row['synthetic138_epoch_s']:6.1f} s"
            )
    res = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": 1,
        "rows": rows,
    }
    out = ROOT / "benchmarks" / "results" / "hydro_dpl.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
