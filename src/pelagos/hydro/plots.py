"""Figures of the dPL experiments: NSE CDFs, hydrographs, parameter maps and parameters vs attributes, untrained
outputs (ET, SWE) against the truth, training curves. Each function writes one PNG and returns its path."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "plot_hydrographs",
    "plot_nse_cdf",
    "plot_parameter_maps",
    "plot_parameters_vs_attributes",
    "plot_training_curves",
    "plot_untrained_outputs",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_nse_cdf(nse: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike) -> Path:
    """Empirical CDFs of NSE: ``nse[split][model]`` = per-basin NSE; one panel per split (x from −1 to 1)."""
    plt = _plt()
    splits = list(nse)
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for model, v in nse[split].items():
            v = np.sort(np.asarray(v, dtype=float)[np.isfinite(v)])
            if len(v) == 0:
                continue
            ax.step(np.clip(v, -1, 1), np.arange(1, len(v) + 1) / len(v), where="post",
                    label=f"{model} (median {np.median(v):.2f})")  # fmt: skip
        ax.set_xlim(-1, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("NSE (test period)")
        ax.set_title(f"{split} basins")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("fraction of basins ≤ NSE")
    return _save(fig, path)


def plot_hydrographs(dates: np.ndarray, series: Sequence[Mapping[str, np.ndarray]], titles: Sequence[str],
                     path: str | os.PathLike) -> Path:  # fmt: skip
    """One panel per basin: ``series[i]`` maps a label (``observed``, ``truth``, a model) to daily discharge
    (mm/d) on ``dates``."""
    plt = _plt()
    fig, axes = plt.subplots(len(series), 1, figsize=(10, 2.4 * len(series)), squeeze=False)
    for ax, s, title in zip(axes[:, 0], series, titles):
        for label, v in s.items():
            style = {"observed": dict(color="k", lw=0.8, ls="", marker=".", ms=2)}.get(label, dict(lw=1.0))
            ax.plot(dates, v, label=label, **style)
        ax.set_ylabel("Q (mm/d)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, ncol=5, loc="upper right")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_parameter_maps(lon: np.ndarray, lat: np.ndarray, maps: Mapping[str, Mapping[str, np.ndarray]],
                        path: str | os.PathLike, *, held_out: np.ndarray | None = None) -> Path:  # fmt: skip
    """``maps[parameter][source]`` (e.g. ``truth``, ``dPL``, ``calibration``): per-basin values plotted at the
    gauges (lon, lat °), one row per parameter, the same colour scale across a row. ``held_out`` marks basins
    (boolean) drawn with a black edge."""
    plt = _plt()
    params = list(maps)
    ncol = max(len(v) for v in maps.values())
    fig, axes = plt.subplots(len(params), ncol, figsize=(3.6 * ncol, 2.4 * len(params)), squeeze=False)
    for r, p in enumerate(params):
        vals = [np.asarray(v, dtype=float) for v in maps[p].values()]
        lo = np.nanmin([np.nanpercentile(v, 2) for v in vals])
        hi = np.nanmax([np.nanpercentile(v, 98) for v in vals])
        for c, (src, v) in enumerate(maps[p].items()):
            ax = axes[r][c]
            edge = np.where(held_out, "k", "none") if held_out is not None else "none"
            sc = ax.scatter(lon, lat, c=v, s=9, vmin=lo, vmax=hi, cmap="viridis", edgecolors=edge, linewidths=0.4)
            ax.set_title(f"{p}: {src}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(sc, ax=list(axes[r]), shrink=0.8)
    return _save(fig, path)


def plot_parameters_vs_attributes(pairs: Sequence[tuple[str, str]], attrs: Mapping[str, np.ndarray],
                                  params: Mapping[str, Mapping[str, np.ndarray]],
                                  path: str | os.PathLike) -> Path:  # fmt: skip
    """Scatter of parameter vs attribute for each ``(parameter, attribute)`` pair; ``params[parameter][source]``
    per basin (sources overlaid)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.6 * len(pairs), 3.2), squeeze=False)
    for ax, (p, a) in zip(axes[0], pairs):
        for src, v in params[p].items():
            ax.scatter(attrs[a], v, s=5, alpha=0.6, label=src)
        ax.set_xlabel(a)
        ax.set_ylabel(p)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_untrained_outputs(dates: np.ndarray, panels: Sequence[tuple[str, Mapping[str, np.ndarray]]],
                           path: str | os.PathLike) -> Path:  # fmt: skip
    """Panels ``(title, {label: series})`` of outputs never trained on (ET mm/d, SWE mm) vs the truth."""
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.3 * len(panels)), squeeze=False)
    for ax, (title, s) in zip(axes[:, 0], panels):
        for label, v in s.items():
            ax.plot(dates, v, label=label, lw=1.2 if label == "truth" else 0.9,
                    color="k" if label == "truth" else None)  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_training_curves(histories: Mapping[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """Loss per epoch of each trained model (log scale)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, h in histories.items():
        ax.semilogy(np.arange(1, len(h) + 1), h, marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
