"""Per-basin calibration of HBV on CAMELS basins through ``pelagos calibrate``, and its skill scores.

The calibration itself is the one path every model kind uses (:func:`pelagos.io.inverse_run.run_inverse`:
the registered kind ``hbv``, the observation stack, :func:`pelagos.inverse.calibrate`); this module only

- writes a basin's observed discharge as an observation file of that stack (:func:`write_observations_csv`),
  with ``σ`` = the standard deviation of the observed flow over the calibration period, so that the Gaussian
  misfit ``J = ½ Σ ((Q̂ − Q)/σ)²`` equals ``½ N (1 − NSE)``: minimising J maximises NSE;
- runs one calibration per basin (HBV parameters are basin-specific; ``pelagos calibrate`` estimates the
  scalar parameters of the basins in the run) with ``--set forcing.gauge_ids=[...]``-style overrides
  (:func:`calibrate_basins`);
- scores the first guess and the calibrated parameters with NSE and KGE (:mod:`pelagos.hydro.metrics`) on the
  calibration and the test period, from one continuous run over warm-up + calibration + test
  (:func:`evaluate`).

Time convention of the kind ``hbv``: the record at model time ``T`` holds the totals of the day ending at
``T``, so the discharge of date ``D`` is an observation at ``D + 1 day, 00:00``.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError
from .camels import load_basin
from .hbv import PARAMETERS, run_hbv
from .metrics import kge, nse

__all__ = ["calibrate_basins", "evaluate", "observation_std", "write_observations_csv"]


def _day(x: str | np.datetime64) -> np.datetime64:
    return np.datetime64(str(x)[:10], "D")


def observation_std(q: np.ndarray) -> float:
    """Population standard deviation of the observed flows (NaN left out), mm/d: the σ that makes the Gaussian
    misfit NSE-equivalent, ``Σ ((Q̂ − Q)/σ)² = N (1 − NSE)``."""
    v = q[np.isfinite(q)]
    if v.size < 2:
        raise ConfigError("fewer than two observed days in the calibration period: cannot form an NSE")
    return float(v.std())


def write_observations_csv(
    root: str | os.PathLike,
    gauge_id: str,
    start: str,
    end: str,
    path: str | os.PathLike,
    *,
    source: str = "daymet",
) -> Path:
    """Observed discharge of one CAMELS basin on the days ``start``..``end`` (inclusive) as a long-format
    observation CSV (``time,basin,variable,value,sigma``; Q in mm/d) for ``pelagos calibrate``.

    ``time`` is the end of each day (the kind ``hbv``'s record time); ``sigma`` is the standard deviation of
    the observed flow over these days (NSE-equivalent misfit); missing days are left out. Written by
    :func:`pelagos.core.obsio.write_observations`, the one writer of that format.
    """
    from ..core.observations import ObservationSet
    from ..core.obsio import write_observations

    b = load_basin(root, gauge_id, start, end, source=source)
    ends = b.dates + np.timedelta64(1, "D")  # the record of day D is at D + 1 day, 00:00
    epoch = _dt.datetime.fromisoformat(str(ends[0].astype("datetime64[D]")))
    obs = ObservationSet(
        times=torch.as_tensor((ends - ends[0]).astype("timedelta64[s]").astype(float)),
        values=torch.as_tensor(np.asarray(b.q_obs, dtype=float))[:, None],
        sigma=observation_std(b.q_obs),
        columns=[("Q", {"basin": b.gauge_id})],
        start=epoch,
    )
    return write_observations(obs, path)  # the one writer of the long format (missing days are left out)


def evaluate(
    root: str | os.PathLike,
    gauge_id: str,
    params: Mapping[str, float],
    *,
    start: str,
    calibration: tuple[str, str],
    test: tuple[str, str],
    nmul: int = 1,
    source: str = "daymet",
) -> dict[str, Any]:
    """NSE/KGE of HBV with ``params`` (physical values; missing ones take the kind's defaults) on the
    calibration and test periods of one basin, from one run from ``start`` (cold start: the days before the
    calibration period are warm-up) to the end of the test period.

    Returns ``{"calibration": {"NSE", "KGE"}, "test": {...}, "dates", "Q_sim", "Q_obs"}`` (mm/d).
    """
    from .hbv import DEFAULTS

    b = load_basin(root, gauge_id, start, test[1], source=source)
    t = b.tensors(torch.float64)
    p = {n: torch.tensor(float(params.get(n, DEFAULTS[n])), dtype=torch.float64) for n in PARAMETERS}
    p = {n: (v.expand(1, nmul) if n not in ("route_a", "route_b") else v.reshape(1)) for n, v in p.items()}
    with torch.no_grad():
        out = run_hbv(t["P"][:, None], t["T"][:, None], t["PET"][:, None], p)
    q = out.Q[:, 0]
    res: dict[str, Any] = {}
    for name, (a, z) in (("calibration", calibration), ("test", test)):
        i0 = int((_day(a) - b.dates[0]).astype(int))
        i1 = int((_day(z) - b.dates[0]).astype(int)) + 1
        sim, obs = q[i0:i1, None], t["Q"][i0:i1, None]
        res[name] = {"NSE": float(nse(sim, obs)[0]), "KGE": float(kge(sim, obs)[0])}
    res["dates"] = [str(d) for d in b.dates]
    res["Q_sim"] = q.tolist()
    res["Q_obs"] = t["Q"].tolist()
    return res


def calibrate_basins(
    config: str | os.PathLike,
    gauge_ids: Sequence[str],
    *,
    out_dir: str | os.PathLike = "results/hbv_calibrate",
    calibration: tuple[str, str] = ("2001-01-01", "2001-12-31"),
    test: tuple[str, str] = ("2002-01-01", "2002-12-31"),
    warmup_start: str = "2000-01-01",
    overrides: Sequence[str] = (),
    log=print,
) -> dict[str, Any]:
    """Calibrate HBV basin by basin with ``pelagos calibrate CONFIG`` and score each on calibration and test.

    For each basin: writes its observation file (:func:`write_observations_csv`, calibration period) to
    ``out_dir``, runs :func:`pelagos.io.inverse_run.run_inverse` on ``config`` with the basin, the file and a
    results path set by overrides (plus ``overrides``), then :func:`evaluate` for the first guess and the
    estimates. Returns (and writes to ``out_dir/summary.json``) a dict per basin.
    """
    import json

    from ..io.config import load_config
    from ..io.inverse_run import run_inverse

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"calibration": list(calibration), "test": list(test), "basins": {}}
    for g in gauge_ids:
        cfg0 = load_config(config, overrides=[f"forcing.gauge_ids=['{g}']", *overrides])
        root = cfg0.resolve(cfg0.forcing.camels_root)
        obs_file = write_observations_csv(root, g, calibration[0], calibration[1], out / f"obs_{g}.csv")
        first_guess = {**{n: float(v) for n, v in (cfg0.parameters or {}).items()}}
        ov = [
            f"forcing.gauge_ids=['{g}']",
            f"observations.file={obs_file.resolve()}",
            f"method.results={(out / f'calibrate_{g}.json').resolve()}",
            *overrides,
        ]
        t0 = time.perf_counter()
        res = run_inverse(config, mode="calibrate", overrides=ov)
        wall = time.perf_counter() - t0
        est = {**first_guess, **res.get("estimates", {})}
        kw = {"start": warmup_start, "calibration": calibration, "test": test, "nmul": int(cfg0.model.nmul)}
        before = evaluate(root, g, first_guess, **kw)
        after = evaluate(root, g, est, **kw)
        summary["basins"][g] = {
            "estimates": res.get("estimates", {}),
            "first_guess": {k: before[k] for k in ("calibration", "test")},
            "calibrated": {k: after[k] for k in ("calibration", "test")},
            "n_evals": res.get("n_evals"),
            "n_iter": res.get("n_iter"),
            "stop_reason": res.get("stop_reason"),
            "misfit": res.get("misfit"),
            "wall_time": wall,
            "results": str((out / f"calibrate_{g}.json").resolve()),
            "series": {"dates": after["dates"], "Q_obs": after["Q_obs"], "Q_first_guess": before["Q_sim"],
                       "Q_calibrated": after["Q_sim"]},
        }  # fmt: skip
        c, s = after["calibration"], after["test"]
        log(
            f"{g}: NSE cal {before['calibration']['NSE']:.3f} -> {c['NSE']:.3f}, test "
            f"{before['test']['NSE']:.3f} -> {s['NSE']:.3f}; KGE cal {c['KGE']:.3f}, test {s['KGE']:.3f}; "
            f"{res.get('n_evals')} model runs, {wall:.1f} s"
        )
        (out / "summary.json").write_text(json.dumps(summary, indent=1))  # after each basin
    return summary
