"""An ECOSMO column run interrupted and resumed from its restart equals the uninterrupted run bit for bit,
including the 24-hour running means of PAR and surface PAR that ECOSMO's cyanobacteria and N fixation read
(the restart tests of the run loop use models without running means; a resume that re-created the means
instead of restoring them would pass those)."""

from __future__ import annotations

from pathlib import Path

import torch

from pelagos.bgc.fabm_yaml import load_system
from pelagos.column import ColumnForcing, ColumnModel
from pelagos.core.restart import load_restart
from pelagos.core.simulation import MemoryWriter, RestartPolicy, Simulation
from pelagos.io.config import resolve_path

FIXTURE = Path(__file__).parent / "data" / "ecosmo" / "nns_day100_3d.nc"


def _model():
    yaml = resolve_path("builtin:fabm/fabm-nersc-ecosmo.yaml", None)
    # with cyanobacteria (their growth gate and N fixation read the means; in the North Sea's S = 35 the
    # salinity gate keeps them off) and the parmean diagnostic (the 24-h mean PAR, written to the output)
    system = load_system(yaml, drop=("CO2",), parameters={"ECO": {"use_cyanos": True}}, dtype=torch.float64)
    forcing = ColumnForcing.from_gotm(FIXTURE, dtype=torch.float64, stop=40 * 3600.0)
    return ColumnModel(system, forcing, dt=3600.0, split_factor=2)


def _flat(state, prefix=""):
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_interrupted_and_resumed_ecosmo_run_equals_the_uninterrupted_one(tmp_path):
    model = _model()
    assert model.means  # ECOSMO asks for the 24-h means of PAR and surface PAR
    ref_mem = MemoryWriter()
    ref = Simulation(
        model, model.initial_state(), n_steps=36, output_every=6, writers=[ref_mem], progress=False
    ).run()

    class StopAt:
        def __call__(self, sim, state, t, step):
            if step == 18:
                sim.request_stop()

    policy = RestartPolicy(tmp_path / "eco.restart.pt", every_steps=6)
    part = Simulation(
        model, model.initial_state(), n_steps=36, output_every=6, restart=policy, callbacks=[StopAt()],
        progress=False, log=lambda _: None,
    ).run()  # fmt: skip
    assert part.interrupted and part.step == 18
    saved = _flat(load_restart(policy.path, model.initial_state()).state)
    assert any(k.startswith("_means/") for k in saved)  # the means are in the restart
    mem = MemoryWriter()
    done = Simulation(
        model, model.initial_state(), n_steps=36, output_every=6, writers=[mem], restart=policy,
        progress=False, log=lambda _: None,
    ).run()  # fmt: skip
    assert not done.interrupted and done.step == 36
    a, b = _flat(ref.state), _flat(done.state)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the records written after the resume equal the uninterrupted run's, the 24-h mean PAR included
    n = len(mem.times)
    assert "ECO_parmean" in mem.records[-1] and float(mem.records[-1]["ECO_parmean"].max()) > 0
    assert mem.times == ref_mem.times[-n:]
    for r1, r2 in zip(ref_mem.records[-n:], mem.records):
        for k in r1:
            assert torch.equal(r1[k], r2[k]), k


def test_the_restart_test_would_see_means_recreated_on_resume():
    # what the test above guards against: resuming with freshly initialised means changes the state
    model = _model()
    from pelagos.core import rollout

    with torch.no_grad():
        mid = rollout(model, model.initial_state(), 18, save_every=18, include_initial=False).final
        fresh = dict(mid)
        fresh["_means"] = model.initial_state(t0=18 * 3600.0)["_means"]
        a = rollout(model, mid, 18, t0=18 * 3600.0, save_every=18, include_initial=False).final
        b = rollout(model, fresh, 18, t0=18 * 3600.0, save_every=18, include_initial=False).final
    key = "downwelling_photosynthetic_radiative_flux@mean86400"
    assert not torch.equal(a["_means"][key]["mean"], b["_means"][key]["mean"])
