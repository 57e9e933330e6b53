"""The 20-parameter ECOSMO study's batched tools (examples/ecosmo_identifiability.py), on a short window.

The central-difference Jacobian of all 20 parameters comes from ONE batched run of 41 columns; its product
with the residuals must be the adjoint gradient of the same cost (float64), and a batch of controls must give
each column's own residuals.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "gotm" / "nns_annual_first49h.nc"
SHORT = [
    f"forcing.file={FIXTURE}",
    "time.stop=1998-01-01 10:00:00",
    "numerics.coarsen_layers=22",  # 110 x 1 m -> 5 x 22 m
    "observations.synthetic.patterns=[{variable: ECO_no3, depths: [surface, 60], every: 7200}, "
    "{variable: ECO_diachl, depths: [surface], every: 3600}, "
    "{variable: ECO_oxy, depths: [80], every: 10800}]",
]


def _study():
    spec = importlib.util.spec_from_file_location(
        "ecosmo_identifiability", ROOT / "examples" / "ecosmo_identifiability.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_batched_fd_jacobian_equals_adjoint_gradient() -> None:
    torch.set_default_dtype(torch.float64)
    try:
        mod = _study()
        tw = mod.Twin(mod.CONFIG, SHORT)
        assert tw.p == 20 and tw.model.nz == 5
        z = tw.z0  # the first guess: 20 % off the truth, a non-zero misfit
        Jm, r = mod.batched_jacobian(tw.residuals, z, rel_step=1e-4)
        assert Jm.shape == (r.numel(), 20)
        zz = z.clone().requires_grad_(True)
        J = 0.5 * tw.residuals(zz[None]).pow(2).sum()
        (g,) = torch.autograd.grad(J, zz)
        assert float(g.abs().max()) > 0
        torch.testing.assert_close(Jm.T @ r, g, rtol=1e-4, atol=1e-6 * float(g.abs().max()))
        # a batch of controls: each column runs with its own parameters
        Z = torch.stack([z, tw.truth])
        with torch.no_grad():
            R = tw.residuals(Z)
            torch.testing.assert_close(R[1], tw.residuals(tw.truth[None])[0])
            torch.testing.assert_close(R[0], r)
    finally:
        torch.set_default_dtype(torch.float32)


def test_continuation_stages_use_their_window_and_end_on_the_full_cost(tmp_path) -> None:
    """``--lm-start continuation``: stage 1 sees only the observations up to its date, stage 2 starts from
    stage 1's estimate, the last stage's cost is the full window's cost at its estimate, and the twin's
    observations are the full set again afterwards."""
    torch.set_default_dtype(torch.float64)
    try:
        mod = _study()
        tw = mod.Twin(mod.CONFIG, SHORT)
        full = tw.obs
        rec = mod.Recorder(tmp_path / "continuation.json")
        stages = ["1998-01-01 05:00:00", "1998-01-01 10:00:00"]
        mod.part_lm_continuation(tw, rec, stages, [6, 4], 1e-6, [], "bundle")
        assert tw.obs is full
        s1, s2 = rec.data["stage_1"], rec.data["stage_2"]
        assert rec.data["continuation"]["runs"] == ["stage_1", "stage_2"]
        first = full.window(-1e30, tw.t0 + 5 * 3600.0)  # 1998-01-01 05:00
        assert 0 < first.n_times < full.n_times  # the first window holds some, not all, observation times
        assert s1["n_obs"] == first.n_obs < full.n_obs
        assert s2["n_obs"] == full.n_obs
        # the first run of each stage is at its start: stage 1 at the first guess, stage 2 at stage 1's end
        torch.testing.assert_close(torch.tensor(s1["start_rel_error"]), tw.rel_error(tw.z0))
        torch.testing.assert_close(torch.tensor(s2["start_rel_error"]), torch.tensor(s1["rel_error"]))
        assert s1["cost"] < s1["log"][0]["cost"]  # LM descended on the short window
        with torch.no_grad():
            z = torch.tensor(s2["z"])
            j_full = 0.5 * float(tw.residuals(z[None]).pow(2).sum())
            j1 = 0.5 * float(tw.residuals(torch.tensor(s1["z"])[None]).pow(2).sum())
        assert abs(s2["year_cost"] - j_full) <= 1e-9 * j_full
        assert abs(s2["cost"] - j_full) <= 1e-9 * j_full  # the last stage minimises the full cost itself
        assert abs(s1["year_cost"] - j1) <= 1e-9 * j1 and s1["year_cost"] > s1["cost"]
    finally:
        torch.set_default_dtype(torch.float32)


def test_adaptive_continuation_halves_a_refused_step(tmp_path) -> None:
    """``--adaptive RATIO,MIN_DAYS``: a step whose new window costs more than RATIO × the expected fit is
    halved (whole hours) until it is no longer than MIN_DAYS; a lenient ratio keeps the given schedule."""
    torch.set_default_dtype(torch.float64)
    try:
        mod = _study()
        tw = mod.Twin(mod.CONFIG, SHORT)
        stages = ["1998-01-01 05:00:00", "1998-01-01 10:00:00"]
        strict = mod.Recorder(tmp_path / "strict.json")  # every new window is refused while the step > 2.4 h
        mod.part_lm_continuation(tw, strict, stages, [2], 1e-6, [], "bundle", adaptive=(1e-9, 0.1))
        sched = [s[11:16] for s in strict.data["continuation"]["schedule"]]
        assert sched == ["05:00", "07:00", "09:00", "10:00"]
        assert [r["end"][11:16] for r in strict.data["continuation"]["refusals"]] == ["10:00", "10:00"]
        lenient = mod.Recorder(tmp_path / "lenient.json")
        mod.part_lm_continuation(tw, lenient, stages, [2], 1e-6, [], "bundle", adaptive=(1e9, 0.1))
        assert lenient.data["continuation"]["schedule"] == stages
        assert lenient.data["continuation"]["refusals"] == []
    finally:
        torch.set_default_dtype(torch.float32)
