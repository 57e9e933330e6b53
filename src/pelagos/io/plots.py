"""Plots of model output and of estimations, with the same conventions everywhere.

- x axes in **days since a stated date** (the first output time, or the model's epoch); model seconds without
  an epoch are labelled as such;
- every y axis carries **units** (depth-integrated concentrations in ``… m-2``, not ``mmol m-3 · m``);
- figures use matplotlib's constrained layout, so no label is clipped;
- a depth–time section says whether it shows **snapshots** at the output times or **means over the output
  interval** (CF ``cell_methods: "time: mean"``), and a panel that is zero everywhere says why instead of
  staying blank (light-driven rates such as PPR or PAR are zero in snapshots that fall at night).

Water-column output: :func:`plot_sections`, :func:`plot_integrals`, :func:`plot_output`. Estimations (any
model): :func:`plot_cost`, :func:`plot_parameter_history`, :func:`plot_observation_fit`.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

DAY = 86400.0


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ds(source):
    import xarray as xr

    return source if isinstance(source, xr.Dataset) else xr.open_dataset(source)


def _format_date(t) -> str:
    s = str(np.datetime_as_string(np.datetime64(t, "s"))) if not isinstance(t, str) else t
    s = s.replace("T", " ")
    return s[:-3] if s.endswith(":00") else s  # "1998-01-01 00:00"


def time_axis(times, epoch: _dt.datetime | None = None) -> tuple[np.ndarray, str]:
    """``(days, label)`` for a time axis.

    ``times``: datetime64 values (as xarray decodes CF times), or model seconds (numbers). Datetimes and
    seconds with an ``epoch`` give days since the first time, labelled ``"days since YYYY-MM-DD hh:mm"``;
    seconds without an epoch give model days, labelled so.
    """
    t = np.asarray(times)
    if t.size == 0:
        return t.astype(float), "days"
    if np.issubdtype(t.dtype, np.datetime64):
        t0 = t.min()
        return (t - t0) / np.timedelta64(1, "s") / DAY, f"days since {_format_date(t0)}"
    sec = t.astype(float)
    if epoch is not None:
        t0 = float(np.nanmin(sec))
        start = np.datetime64(epoch.replace(tzinfo=None), "s") + np.timedelta64(round(t0), "s")
        return (sec - t0) / DAY, f"days since {_format_date(start)}"
    return sec / DAY, "model time (days since model time 0)"


def integrated_units(units: str) -> str:
    """Units of a depth integral ∫ c dz of a quantity in ``units``: ``mmol m-3`` → ``mmol m-2``,
    ``mmol m-3 d-1`` → ``mmol m-2 d-1``, ``m s-1`` → ``m2 s-1``; without a length unit ``"<units> m"``."""
    u = (units or "").strip()
    if not u or u in ("1", "-"):
        return "m"
    m = re.search(r"(?<![\w^])m(\^?-?\d+)?(?![\w])", u)
    if m is not None:
        exp = int(m.group(1).lstrip("^")) if m.group(1) else 1
        if m.start() > 0 and u[m.start() - 1] == "/":  # "mmol/m^3": the length unit is in the denominator
            new = exp - 1
            rep = "" if new == 0 else ("m" if new == 1 else f"m^{new}")
            start = m.start() - 1 if new == 0 else m.start()
            out = (u[:start] + rep + u[m.end() :]).strip()
            return re.sub(r"\s+", " ", out) or "1"
        new = exp + 1
        rep = "" if new == 0 else ("m" if new == 1 else f"m{new}")
        out = (u[: m.start()] + rep + u[m.end() :]).strip()
        return re.sub(r"\s+", " ", out) or "1"
    return f"{u} m"


def _time_kind(da) -> str:
    """'mean' (CF cell_methods time: mean), else 'snapshot'."""
    cm = str(da.attrs.get("cell_methods", ""))
    return "mean" if re.search(r"time\s*:\s*mean", cm) else "snapshot"


def _label(da, name: str) -> str:
    ln = da.attrs.get("long_name")
    return name + (f" — {ln}" if ln and ln != name else "")


def _same_time_of_day(times) -> str | None:
    """``"all at 00:00"`` when every (datetime) output time has the same clock time, else None."""
    t = np.asarray(times)
    if t.size == 0 or not np.issubdtype(t.dtype, np.datetime64):
        return None
    sec = (t - t.astype("datetime64[D]")) / np.timedelta64(1, "s")
    if np.all(sec == sec[0]):
        return f"all at {int(sec[0]) // 3600:02d}:{int(sec[0]) % 3600 // 60:02d}"
    return None


def profile_variables(ds) -> list[str]:
    """Names of the (time, column, z) variables of an output dataset."""
    return [n for n, v in ds.data_vars.items() if v.dims == ("time", "column", "z")]


def plot_sections(
    source, variables: Sequence[str] | None = None, *, column: int = 0, out: str | os.PathLike | None = None
):
    """Depth–time sections (pcolormesh) of each profile variable of one column; returns the figure.

    Each panel's title says whether the field is a snapshot at the output times or a mean over the output
    interval; a field that is zero (or missing) everywhere is labelled so rather than left as a blank panel.
    """
    plt = _plt()
    ds = _ds(source)
    names = list(variables or profile_variables(ds))
    fig, axes = plt.subplots(
        len(names), 1, figsize=(9, 1.9 * len(names) + 0.8), sharex=True, squeeze=False, layout="constrained"
    )
    days, xlabel = time_axis(ds["time"].values)
    z = ds["z"].values
    for ax, n in zip(axes[:, 0], names):
        da = ds[n]
        v = np.asarray(da.isel(column=column).values, dtype=float).T
        kind = _time_kind(da)
        m = ax.pcolormesh(days, z, v, shading="nearest", cmap="viridis")
        fig.colorbar(m, ax=ax, label=da.attrs.get("units", "") or "1")
        ax.set_ylabel("z (m)")
        when = "mean over each output interval" if kind == "mean" else "snapshots at the output times"
        ax.set_title(f"{_label(da, n)} ({when})", fontsize=9)
        finite = v[np.isfinite(v)]
        if finite.size == 0 or not np.any(finite != 0):
            msg = "no values" if finite.size == 0 else "zero at every output time"
            if kind == "snapshot" and finite.size:
                msg += f" ({clock})" if (clock := _same_time_of_day(ds["time"].values)) else ""
                msg += (
                    "\nlight-driven rates vanish in night-time snapshots: "
                    "write interval means, or output at other times of day"
                )
            ax.text(
                0.5,
                0.5,
                msg,
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.6"},
            )
    axes[-1, 0].set_xlabel(xlabel)
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def plot_integrals(
    source, variables: Sequence[str] | None = None, *, column: int = 0, out: str | os.PathLike | None = None
):
    """Depth-integrated (Σ h·c, per m²) time series of the state variables, one panel each."""
    plt = _plt()
    ds = _ds(source)
    if variables is None:
        roles = {n: ds[n].attrs.get("pelagos_role") for n in profile_variables(ds)}
        variables = [n for n, r in roles.items() if r == "state"] or [
            n for n, r in roles.items() if r != "physics"
        ]
    names = list(variables)
    ncol = min(3, max(1, len(names)))
    nrow = -(-len(names) // ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(4.2 * ncol, 2.5 * nrow + 0.6), sharex=True, squeeze=False, layout="constrained"
    )
    days, xlabel = time_axis(ds["time"].values)
    h = ds["h"].isel(column=column).values
    for ax, n in zip(axes.flat, names):
        v = ds[n].isel(column=column).values
        ax.plot(days, np.sum(v * h, axis=-1), lw=1.2)
        ax.set_title(f"{n}, depth integral", fontsize=9)
        ax.set_ylabel(integrated_units(ds[n].attrs.get("units", "")), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=8)
    if len(names) % ncol and nrow > 1:  # the last row is short: label the panels above the gaps too
        for ax in axes[-2][len(names) % ncol :]:
            ax.set_xlabel(xlabel, fontsize=8)
            ax.xaxis.set_tick_params(labelbottom=True)
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def plot_output(path: str | os.PathLike, outdir: str | os.PathLike | None = None) -> list[Path]:
    """Both plots of an output file, written next to it (or to ``outdir``); returns the PNG paths."""
    plt = _plt()
    p = Path(path)
    d = Path(outdir) if outdir else p.parent
    d.mkdir(parents=True, exist_ok=True)
    a, b = d / f"{p.stem}_sections.png", d / f"{p.stem}_integrals.png"
    plt.close(plot_sections(p, out=a))
    plt.close(plot_integrals(p, out=b))
    return [a, b]


# -- estimations -----------------------------------------------------------------------------------------
def plot_cost(history: Sequence[float], *, method: str = "", ylabel: str | None = None, out=None):
    """Cost against iteration (log scale). The cost ½Σ((H(x) − y)/σ)² + prior terms is dimensionless."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    ax.semilogy(range(len(history)), history, marker=".")
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel or "cost J (dimensionless)")
    if method:
        ax.set_title(method, fontsize=9)
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def plot_parameter_history(
    history: Mapping[str, Sequence[float]],
    *,
    units: Mapping[str, str] | None = None,
    prior: Mapping[str, Mapping] | None = None,
    truth: Mapping[str, float] | None = None,
    out=None,
):
    """Each parameter's value over the iterations (y axis in the parameter's units), with the prior mean and,
    in a twin experiment, the truth."""
    plt = _plt()
    names = list(history)
    n = max(len(names), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3), squeeze=False, layout="constrained")
    units = units or {}
    for ax, name in zip(axes[0], names):
        ax.plot(history[name], label="estimate")
        if prior and name in prior and prior[name].get("mean") is not None:
            ax.axhline(prior[name]["mean"], color="gray", ls="--", label="prior mean")
        if truth and name in truth:
            ax.axhline(truth[name], color="k", ls=":", label="truth")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel(units.get(name) or "1")
    if names:
        axes[0][0].legend(fontsize=8)
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def plot_observation_fit(
    times,
    observed,
    before,
    after,
    *,
    titles: Sequence[str],
    units: Sequence[str],
    epoch: _dt.datetime | None = None,
    max_panels: int = 8,
    out=None,
):
    """Observed values against the model before and after the estimation, one panel per observed quantity.

    ``times``: (T,) model seconds (with ``epoch``) or datetime64; ``observed``/``before``/``after``: (T, m)
    (NaN = not observed); ``titles``/``units``: per quantity (``units`` label the y axes).
    """
    plt = _plt()
    observed, before, after = (np.asarray(a, dtype=float) for a in (observed, before, after))
    m = min(observed.shape[1], max_panels)
    fig, axes = plt.subplots(
        1, max(m, 1), figsize=(3.4 * max(m, 1), 3.1), squeeze=False, layout="constrained"
    )
    days, xlabel = time_axis(times, epoch)
    for j, ax in enumerate(axes[0][:m]):
        ok = np.isfinite(observed[:, j])
        ax.plot(days[ok], observed[ok, j], "ko", mfc="none", label="observed")
        ax.plot(days[ok], before[ok, j], "C1x--", label="before")
        ax.plot(days[ok], after[ok, j], "C0.-", label="after")
        ax.set_title(titles[j], fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(units[j] or "1", fontsize=8)
    if m:
        axes[0][0].legend(fontsize=8)
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def plot_sensitivity_map(result: Mapping, *, out=None, title: str | None = None):
    """The loss map of ``pelagos sensitivity`` (``result`` as in its JSON): filled contours of log10 L on the
    unconstrained axes (ticks in physical values), forward-mode descent directions −∇L as arrows of unit
    length coloured by log10 |∇L|, the configured value (first guess, ○) and the truth of a twin (★)."""
    plt = _plt()
    a, b = result["names"]
    ua = np.asarray(result["unconstrained"][a])
    ub = np.asarray(result["unconstrained"][b])
    loss = np.asarray(result["loss"])  # (len ua, len ub)
    g = np.asarray(result["grad_unconstrained"])  # (len ua, len ub, 2)
    log_scale = {n: result.get("transforms", {}).get(n) == "log" for n in (a, b)}
    marks = result.get("marks_unconstrained", {})
    fig, ax = plt.subplots(figsize=(6.4, 5.2), layout="constrained")
    A, B = np.meshgrid(ua, ub, indexing="ij")
    cs = ax.contourf(A, B, np.log10(np.maximum(loss, 1e-300)), levels=20, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="log10 misfit L (dimensionless)")
    norm = np.hypot(g[..., 0], g[..., 1])
    safe = np.where(norm > 0, norm, 1.0)
    q = ax.quiver(A, B, -g[..., 0] / safe, -g[..., 1] / safe, np.log10(np.maximum(norm, 1e-300)),
                  cmap="autumn", angles="xy", pivot="mid", scale=1.0 / (0.6 * (ua[1] - ua[0])),
                  scale_units="xy", width=0.006)  # fmt: skip
    fig.colorbar(q, ax=ax, label="log10 |∇L| (per unit log parameter)", location="bottom", shrink=0.7)
    styles = {"configured": ("wo", "first guess (configured)"), "truth": ("w*", "truth")}
    for key, (style, label) in styles.items():
        if key in marks:
            ax.plot(*marks[key], style, mfc="none" if key == "configured" else "w", ms=12, mew=2, label=label)
    if marks:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.6)
    units = result.get("units", {})
    for axis, n, u in ((ax.xaxis, a, ua), (ax.yaxis, b, ub)):
        vals = np.asarray(result["values"][n])
        idx = np.unique(np.linspace(0, len(u) - 1, min(len(u), 5)).round().astype(int))
        axis.set_ticks(u[idx])
        axis.set_ticklabels([f"{v:.3g}" for v in vals[idx]])
        lab = f"{n} ({units[n]})" if units.get(n) else n
        axis.set_label_text(lab + (", log scale" if log_scale[n] else ""))
    default = f"misfit and forward-mode descent directions ({result.get('model', '')})"
    ax.set_title(title or default, fontsize=9)
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig
