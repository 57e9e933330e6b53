"""Calibration and data assimilation of a water column from YAML: the run configuration (see
:mod:`pelagos.io.config`) plus two sections, ``observations:`` and ``method:``. ``pelagos calibrate CONFIG``
and ``pelagos assimilate CONFIG`` call :func:`run_inverse`.

Example (``examples/npzd_calibration.yaml``)::

    forcing: {file: builtin:nns_annual_22x5m.nc}
    bgc: {fabm_yaml: builtin:fabm/fabm-gotm-npzd.yaml}
    time: {start: "1998-03-01", stop: "1998-05-01", dt: 21600}
    numerics: {coarsen_layers: 2}        # optional: merge layers (conservative), forcing averaged over dt
    observations:
      file: npzd_obs.csv                 # long format: time,depth,variable,value,sigma
      log: true                          # or per variable {npzd_phy: true, npzd_nut: false}
    method:
      kind: calibrate                    # calibrate | 4dvar | esmda
      free: [npzd.rmax, npzd.gmax]
      priors: {npzd.rmax: {mean: 0.8, rel_std: 0.5}}
      max_iter: 40
      results: ../results/npzd_calibration.json
      plots: ../results/npzd_calibration
    output: {file: ../results/npzd_calibration_analysis.nc, interval: 86400}

``observations`` instead of ``file`` may describe a twin: ``synthetic: {truth: {name: value}, patterns:
[{variable, depths, every (s)}], noise: lognormal|relative|none, rel: 0.2, seed: 0, write: obs.csv}``.

``method`` keys: ``kind``; ``free`` (parameter names); ``priors`` (``{name: {mean, std (unconstrained) or
rel_std (fraction of the mean)}}``; default: every free parameter gets ``rel_std: prior_rel_std`` around its
configured value); ``control_state`` (4D-Var always controls it) with ``background: {rel_std, floor,
length_scale (m)}``; ``optimizer``, ``max_iter``, ``gtol``; ``uncertainty`` (gauss-newton | hessian | none);
``members``, ``alphas``, ``seed`` (ES-MDA); ``results`` (JSON/YAML), ``plots`` (folder). Outputs: the results
file (estimates, std, 95 % intervals, prior, cost history, model runs, wall time), the analysed run's NetCDF
(``output.file``, the window rerun with the estimates and, when controlled, the analysed initial state) and
plots (cost, parameter trajectories, observations vs model before/after, depth–time sections).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from ..core.errors import ConfigError
from .config import load_config, read_yaml_mapping, resolve_path

__all__ = ["METHOD_DEFAULTS", "OBSERVATION_DEFAULTS", "load_inverse_config", "run_inverse"]

OBSERVATION_DEFAULTS: dict[str, Any] = {"file": None, "log": False, "synthetic": None}
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "truth": {},
    "patterns": [],
    "noise": "lognormal",
    "rel": 0.2,
    "seed": 0,
    "write": None,
}
METHOD_DEFAULTS: dict[str, Any] = {
    "kind": "calibrate",
    "free": [],
    "priors": {},
    "prior_rel_std": 0.5,
    "control_state": False,
    "background": {"rel_std": 0.3, "floor": 1e-3, "length_scale": 20.0},
    "optimizer": "lbfgs",
    "max_iter": 50,
    "gtol": 1e-7,
    "uncertainty": "gauss-newton",
    "members": 64,
    "alphas": 4,
    "seed": 0,
    "results": None,
    "plots": None,
    "truth": None,
}
KINDS = ("calibrate", "4dvar", "esmda")


def _check_keys(section: str, given: Mapping, defaults: Mapping) -> dict:
    if not isinstance(given, Mapping):
        raise ConfigError(f"section {section!r} must be a mapping; got {given!r}")
    for k in given:
        if k not in defaults:
            raise ConfigError(f"unknown key {section}.{k}; valid keys: {', '.join(defaults)}")
    return {**copy.deepcopy(dict(defaults)), **copy.deepcopy(dict(given))}


def load_inverse_config(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read and validate an inverse configuration -> ``{"run": cfg, "observations": ..., "method": ...}``."""
    raw, base_path = read_yaml_mapping(source, "an inverse configuration")
    base = str(base_path) if base_path is not None else None
    obs = raw.pop("observations", None)
    meth = raw.pop("method", None)
    if obs is None:
        raise ConfigError("the configuration has no 'observations:' section (a CSV file or a synthetic twin)")
    if meth is None:
        raise ConfigError(
            "the configuration has no 'method:' section (kind: calibrate | 4dvar | esmda, free: [...])"
        )
    coarsen = None
    num = raw.get("numerics") or {}
    if isinstance(num, Mapping) and "coarsen_layers" in num:
        num = dict(num)
        coarsen = int(num.pop("coarsen_layers"))
        raw["numerics"] = num
    raw.setdefault("_base", base)
    run = load_config(raw)
    run["_coarsen_layers"] = coarsen
    o = _check_keys("observations", obs, OBSERVATION_DEFAULTS)
    if (o["file"] is None) == (o["synthetic"] is None):
        raise ConfigError("observations needs exactly one of 'file' (a CSV) or 'synthetic' (a twin)")
    if o["synthetic"] is not None:
        o["synthetic"] = _check_keys("observations.synthetic", o["synthetic"], SYNTHETIC_DEFAULTS)
        if not o["synthetic"]["patterns"]:
            raise ConfigError("observations.synthetic.patterns is empty; give [{variable, depths, every}]")
    m = _check_keys("method", meth, METHOD_DEFAULTS)
    m["kind"] = str(m["kind"]).lower().replace("-", "").replace("_", "")
    if m["kind"] not in KINDS:
        raise ConfigError(f"method.kind {meth.get('kind')!r} is not one of {', '.join(KINDS)}")
    m["background"] = _check_keys("method.background", m["background"] or {}, METHOD_DEFAULTS["background"])
    if isinstance(m["free"], str):
        m["free"] = [m["free"]]
    if not m["free"] and m["kind"] != "4dvar":
        raise ConfigError(
            "method.free is empty: list the parameters to estimate, e.g. [npzd.rmax, npzd.gmax]"
        )
    if m["uncertainty"] in (None, "none", False):
        m["uncertainty"] = None
    return {"run": run, "observations": o, "method": m}


# -- building blocks ------------------------------------------------------------------------------------
def _window(model, run: Mapping) -> tuple[float, float]:
    f = model.forcing
    t0 = f.seconds(run["time"]["start"]) if run["time"]["start"] is not None else f.t_start
    t1 = f.seconds(run["time"]["stop"]) if run["time"]["stop"] is not None else f.t_stop
    n = round((t1 - t0) / model.dt)
    if n < 1 or abs(n * model.dt - (t1 - t0)) > 1e-6 * model.dt:
        raise ConfigError(
            f"time.stop - time.start ({t1 - t0:g} s) must be a positive multiple of dt ({model.dt:g} s)"
        )
    return t0, t1


def _build(run: Mapping):
    """(ColumnModel, StackedColumn or None) of the configuration, coarsened if asked."""
    from ..column.coarsen import coarsen_forcing
    from ..column.model import ColumnModel
    from ..column.stacked import StackedColumn
    from .run import build_model

    col = build_model(run)
    if run.get("_coarsen_layers"):
        t0, t1 = _window(col, run)
        f = coarsen_forcing(col.forcing, layers=run["_coarsen_layers"], dt=col.dt, start=t0, stop=t1)
        num = {k: v for k, v in run["numerics"].items() if k not in ("dtype", "columns")}
        if isinstance(num.get("light"), list):
            num["light"] = tuple(num["light"])
        values = {n: col.get_parameter_value(n) for n in col.parameter_names()}
        col = ColumnModel(col.bgc, f, dt=col.dt, **num)
        for n, v in values.items():
            col.set_parameter_value(n, v)
    try:
        return col, StackedColumn(col)
    except ConfigError:
        return col, None


def _set_priors(model, method: Mapping) -> None:
    for n in method["free"]:
        spec = model.parameter_spec(n)
        given = dict((method["priors"] or {}).get(n, {}))
        bad = set(given) - {"mean", "std", "rel_std"}
        if bad:
            raise ConfigError(
                f"method.priors.{n}: unknown keys {sorted(bad)}; use mean, std (unconstrained) or rel_std"
            )
        mean = float(given.get("mean", model.get_parameter_value(n).detach()))
        if "std" in given:
            std = float(given["std"])
        else:
            rel = float(given.get("rel_std", method["prior_rel_std"]))
            u = spec.transform.inverse(torch.tensor(mean, dtype=torch.float64)).requires_grad_(True)
            (dx,) = torch.autograd.grad(spec.transform.forward(u), u)
            std = rel * max(abs(mean), 1e-12) / max(abs(float(dx)), 1e-300)
        model.set_prior(n, mean, std)
        model.set_parameter_value(n, mean)


def _observations(cfg: Mapping, model, x0, t0: float, t1: float):
    from ..core.obsio import (
        Sampling,
        read_observations,
        regular_times,
        synthetic_observations,
        write_observations,
    )

    o = cfg["observations"]
    base = Path(cfg["run"]["_base"]) if cfg["run"].get("_base") else Path.cwd()
    if o["file"] is not None:
        return read_observations(resolve_path(o["file"], base), model, start=t0, stop=t1, log=o["log"]), None
    s = o["synthetic"]
    truth = {k: float(v) for k, v in (s["truth"] or {}).items()}
    pats = []
    for i, p in enumerate(s["patterns"]):
        if not isinstance(p, Mapping) or not {"variable", "depths", "every"} <= set(p):
            raise ConfigError(
                f"observations.synthetic.patterns[{i}] needs variable, depths and every (s); got {p!r}"
            )
        d = p["depths"] if isinstance(p["depths"], list) else [p["depths"]]
        when = regular_times(model, t0, t1, float(p["every"]), offset=p.get("offset"))
        pats.append(Sampling(p["variable"], {"depth": d}, when))
    raw = {
        n: model.parameter_spec(n).transform.inverse(torch.tensor(v, dtype=torch.float64))
        for n, v in truth.items()
    }
    rel = float(s["rel"])
    if not rel > 0:
        raise ConfigError(f"observations.synthetic.rel must be > 0; got {rel}")
    noise = {
        "lognormal": ("lognormal", rel, 0.0),
        "relative": ("gaussian", 0.0, rel),
        "none": ("none", 0.0, rel),
    }
    if s["noise"] not in noise:
        raise ConfigError(
            f"observations.synthetic.noise must be lognormal, relative or none; got {s['noise']!r}"
        )
    kind, sigma, rel_sigma = noise[s["noise"]]
    ctx = model.using(raw) if raw else _Null()
    with ctx:
        obs = synthetic_observations(
            model,
            x0,
            None,
            pats,
            start=t0,
            noise=kind,
            sigma=sigma,
            rel_sigma=rel_sigma,
            generator=torch.Generator().manual_seed(int(s["seed"])),
        )
    if s["write"]:
        write_observations(obs, resolve_path(s["write"], base))
    return obs, truth


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _background(model, xb: torch.Tensor, bg: Mapping):
    from ..column.background import ColumnBackground

    h = model.forcing.sample(
        0.0 if model.forcing.t_start <= 0 <= model.forcing.t_stop else model.forcing.t_start, ["h"]
    )["h"][0].to(torch.float64)
    z = torch.flip(torch.cumsum(torch.flip(h, [0]), 0), [0]) - 0.5 * h
    std = float(bg["rel_std"]) * xb.abs() + float(bg["floor"])
    return ColumnBackground(std, z, float(bg["length_scale"]))


# -- the driver -----------------------------------------------------------------------------------------
def run_inverse(
    source: str | os.PathLike | Mapping[str, Any], *, mode: str | None = None, progress: bool = False
) -> dict[str, Any]:
    """Run the calibration / assimilation a configuration describes; returns the results dict (also written
    to ``method.results``). ``mode``: ``"calibrate"`` or ``"assimilate"`` — checks that ``method.kind`` fits
    the command (calibrate: calibrate/esmda; assimilate: 4dvar/esmda)."""
    from ..inverse.calibrate import calibrate
    from ..inverse.forward import predict

    cfg = load_inverse_config(source)
    run, meth = cfg["run"], cfg["method"]
    kind = meth["kind"]
    if mode == "calibrate" and kind == "4dvar":
        raise ConfigError(
            "`pelagos calibrate` runs method.kind calibrate or esmda; use `pelagos assimilate` for 4dvar"
        )
    if mode == "assimilate" and kind == "calibrate":
        raise ConfigError(
            "`pelagos assimilate` runs method.kind 4dvar or esmda; use `pelagos calibrate` for calibrate"
        )
    wall0 = time.perf_counter()
    col, stacked = _build(run)
    model = stacked if stacked is not None else col
    t0, t1 = _window(col, run)
    dtype = getattr(torch, run["numerics"]["dtype"])
    state0 = col.initial_state(1, profiles=run["initial"] or None, t0=t0, dtype=dtype)
    x0 = stacked.stack(state0)[0] if stacked is not None else state0
    obs, truth = _observations(cfg, model, x0, t0, t1)
    truth = truth or (meth["truth"] or None)
    model.select_free(meth["free"])
    _set_priors(model, meth)
    names = model.free_parameter_names()
    control_state = bool(meth["control_state"]) or kind == "4dvar"
    B = None
    if control_state:
        if stacked is None:
            raise ConfigError(
                "initial-state control needs a biology with interior variables only (no running means)"
            )
        B = _background(col, x0, meth["background"])
    u_prior = model.free_vector().clone()
    with torch.no_grad(), model.using(u_prior) if names else _Null():
        pred_before = predict(model, x0, obs, t0=t0)
    result: dict[str, Any] = {
        "method": kind,
        "config": str(source) if not isinstance(source, Mapping) else None,
    }
    x_an = x0
    if kind in ("calibrate", "4dvar"):
        if kind == "calibrate":
            res = calibrate(
                model,
                obs,
                x0,
                t0=t0,
                control_state=control_state,
                B=B,
                optimizer=meth["optimizer"],
                max_iter=int(meth["max_iter"]),
                gtol=float(meth["gtol"]),
                uncertainty=meth["uncertainty"] if names else None,
                progress=progress,
            )
            if control_state and res.initial_state is not None:
                x_an = res.initial_state.detach()
            pres = res
            hist, n_evals, n_iter = res.history, res.n_evals, res.n_iter
        else:
            from ..inverse.fourdvar import fourdvar

            r = fourdvar(
                model,
                obs,
                x0,
                B,
                t0=t0,
                params=bool(names),
                max_iter=int(meth["max_iter"]),
                gtol=float(meth["gtol"]),
                uncertainty=meth["uncertainty"],
                progress=progress,
            )
            x_an, pres = r.analysis, r.params
            hist, n_evals, n_iter = r.history, r.n_evals, r.n_iter
            if pres is not None:
                model.load_free_vector(pres.z[: len(names)].to(model.free_vector().dtype))
        result.update(
            cost_history=hist,
            n_evals=n_evals,
            n_iter=n_iter,
        )
        if pres is not None:
            d = pres.to_dict()
            result.update(
                {
                    k: d[k]
                    for k in (
                        "names",
                        "estimates",
                        "std",
                        "interval95",
                        "prior",
                        "initial",
                        "parameter_history",
                        "cost_terms",
                        "converged",
                        "message",
                    )
                }
            )
    else:  # ES-MDA
        from ..inverse.ensemble import esmda, sample_prior

        if stacked is None:
            raise ConfigError("ES-MDA needs a biology with interior variables only (no running means)")
        g = torch.Generator().manual_seed(int(meth["seed"]))
        Ne = int(meth["members"])
        U = sample_prior(model, Ne, generator=g)
        E = esmda(
            model,
            obs,
            x0.expand(Ne, *x0.shape).clone(),
            U,
            alphas=meth["alphas"],
            t0=t0,
            generator=g,
            progress=progress,
        )
        model.load_free_vector(E.params.mean(0).to(model.free_vector().dtype))
        result.update(
            names=names,
            estimates=E.mean,
            std=E.std,
            cost_history=E.history,
            n_evals=E.n_evals * Ne,
            members=Ne,
            prior={
                n: {
                    "mean": float(
                        model.parameter_spec(n).transform.forward(
                            torch.tensor(model.parameter_spec(n).prior.mean)
                        )
                    )
                }
                for n in names
            },
        )
    with torch.no_grad():
        pred_after = predict(model, x_an, obs, t0=t0)
    result["misfit"] = {"before": float(obs.nll(pred_before)), "after": float(obs.nll(pred_after))}
    result["n_obs"] = obs.n_obs
    result["wall_time"] = time.perf_counter() - wall0
    if truth:
        result["truth"] = truth
    base = Path(run["_base"]) if run.get("_base") else Path.cwd()
    files = []
    # the analysed run
    if run["output"]["file"]:
        files.append(_analysed_run(run, col, stacked, x_an, names, model))
    if meth["plots"]:
        files += _plots(
            resolve_path(meth["plots"], base),
            result,
            obs,
            pred_before,
            pred_after,
            t0,
            truth,
            files[0] if files else None,
        )
    result["files"] = [str(f) for f in files]
    if meth["results"]:
        p = resolve_path(meth["results"], base)
        p.parent.mkdir(parents=True, exist_ok=True)
        clean = json.loads(json.dumps(result, default=float))
        p.write_text(
            json.dumps(clean, indent=2) if p.suffix == ".json" else yaml.safe_dump(clean, sort_keys=False)
        )
        result["files"].append(str(p))
    return result


def _analysed_run(run: Mapping, col, stacked, x_an, names, model) -> Path:
    from .run import run_config

    cfg = copy.deepcopy(dict(run))
    cfg.pop("_coarsen_layers", None)
    estimates = {n: float(model.get_parameter_value(n).detach()) for n in names}
    cfg["parameters"] = {**cfg["parameters"], **estimates}
    if stacked is not None:
        cfg["initial"] = {v: x_an[i].tolist() for i, v in enumerate(stacked.variables)}
    cfg["restart"] = {"file": None, "every": None}
    if run.get("_coarsen_layers"):  # the analysed run uses the configured (fine) grid: no initial profiles
        cfg["initial"] = {}
    return run_config(cfg, resume=False, progress=False)


def _plots(folder: Path, result: Mapping, obs, before, after, t0: float, truth, nc_path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(result["cost_history"], marker=".")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cost J" if result["method"] != "esmda" else "ensemble-mean misfit")
    fig.tight_layout()
    files.append(folder / "cost.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    ph = result.get("parameter_history") or {}
    if ph:
        names = list(ph)
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
        for ax, n in zip(axes[0], names):
            ax.plot(ph[n], label="estimate")
            if n in result.get("prior", {}):
                ax.axhline(result["prior"][n]["mean"], color="gray", ls="--", label="prior")
            if truth and n in truth:
                ax.axhline(truth[n], color="k", ls=":", label="truth")
            ax.set_title(n, fontsize=9)
            ax.set_xlabel("iteration")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        files.append(folder / "parameters.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    # observations vs model before / after, one panel per observed quantity (at most 8)
    from ..core.obsio import column_label

    cols = obs.columns or [(f"obs{j}", "") for j in range(obs.m)]
    m = min(obs.m, 8)
    fig, axes = plt.subplots(1, m, figsize=(3.3 * m, 3), squeeze=False)
    days = ((obs.times - t0) / 86400.0).numpy()
    b = before.reshape(obs.n_times, -1, obs.m)[:, 0]
    a = after.reshape(obs.n_times, -1, obs.m)[:, 0]
    for j, ax in enumerate(axes[0][:m]):
        ok = torch.isfinite(obs.values[:, j]).numpy()
        ax.plot(days[ok], obs.values[ok, j].numpy(), "ko", mfc="none", label="observed")
        ax.plot(days[ok], b[ok, j].numpy(), "C1x--", label="before")
        ax.plot(days[ok], a[ok, j].numpy(), "C0.-", label="after")
        ax.set_title(column_label(cols[j]), fontsize=9)
        ax.set_xlabel("days")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    files.append(folder / "obs_vs_model.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    if nc_path is not None:
        from .plots import plot_output

        files += list(plot_output(nc_path, folder))
    return files


def is_column_config(path: str | os.PathLike) -> bool:
    """True for a water-column run configuration (a top-level ``forcing:`` section) — what `pelagos calibrate`
    / `pelagos assimilate` hand to :func:`run_inverse`."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, Mapping) and "forcing" in raw


def run_inverse_cli(path: str | os.PathLike, *, mode: str, progress: bool = False) -> int:
    """Run :func:`run_inverse` and print a short summary (the CLI entry point)."""
    res = run_inverse(path, mode=mode, progress=progress)
    print(
        f"{res['method']}: misfit {res['misfit']['before']:.4g} -> {res['misfit']['after']:.4g} "
        f"({res['n_obs']} observations), {res.get('n_evals', '?')} model runs, {res['wall_time']:.1f} s"
    )
    for n in res.get("names", []):
        sd = res.get("std", {}).get(n)
        print(f"  {n:24s} {res['estimates'][n]:.6g}" + (f" ± {sd:.3g}" if sd is not None else ""))
    for f in res.get("files", []):
        print(f"wrote {f}")
    return 0
