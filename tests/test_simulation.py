"""The one run loop: Simulation, writers, interval means, callbacks, restarts, Ctrl-C; safe restart files."""

from __future__ import annotations

import datetime as dt
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from pelagos.core.errors import ConfigError, Interrupted, StabilityError
from pelagos.core.model import Coordinate, Model, Variable
from pelagos.core.restart import load_restart, save_restart
from pelagos.core.simulation import (
    CFLCheck,
    CheckFinite,
    MemoryWriter,
    RestartPolicy,
    Simulation,
)
from pelagos.io.netcdf_writer import ModelNetCDFWriter
from pelagos.models.lorenz import Lorenz96

F64 = torch.float64
EPOCH = dt.datetime(2000, 1, 1)


class Wave(Model):
    """A tiny contract-following model: n damped oscillators driven by a daily cycle (state dict, batch B)."""

    epoch = EPOCH

    def __init__(self, n: int = 3, dt_s: float = 3600.0, interrupt_at: float | None = None) -> None:
        super().__init__()
        self.n, self.dt = n, dt_s
        self.interrupt_at = interrupt_at
        self.declare_parameter("k", 1e-5, units="s-1", bounds=(0.0, None), description="damping", dtype=F64)

    def initial_state(self, batch=None, **options):
        b = () if batch is None else (batch,)
        x = torch.linspace(1.0, 2.0, self.n, dtype=F64).expand(*b, self.n).clone()
        return {"x": x, "c": torch.zeros(b, dtype=F64)}

    def step(self, state, t):
        if self.interrupt_at is not None and float(t) >= self.interrupt_at:
            raise KeyboardInterrupt
        forcing = torch.sin(torch.tensor(2 * np.pi * (float(t) + self.dt) / 86400.0, dtype=F64))
        x = state["x"] * torch.exp(-self.param("k") * self.dt) + 0.1 * forcing
        return {"x": x, "c": state["c"] + self.dt}

    def output_variables(self):
        return [
            Variable("x", "mmol m-3", "oscillator amplitude", ("k",)),
            Variable("light", "W m-2", "daily light cycle", (), role="forcing", mean=True),
            Variable("x_sq_total", "mmol2 m-6", "sum of squares", (), role="diagnostic"),
        ]

    def output(self, state, t):
        light = torch.clamp(
            torch.sin(torch.tensor(2 * np.pi * float(t) / 86400.0, dtype=F64)), min=0.0
        ) * torch.ones_like(state["c"])
        return {"x": state["x"], "light": 100 * light, "x_sq_total": (state["x"] ** 2).sum(-1)}

    def output_coordinates(self):
        return {"k": Coordinate(torch.arange(self.n, dtype=F64), "1", "oscillator index")}


def _sim(model, path, restart=None, **kw):
    kw.setdefault("output_every", 6)
    return Simulation(
        model,
        model.initial_state(2),
        start="2000-01-01",
        stop="2000-01-03",
        writers=[ModelNetCDFWriter(path, model, precision="f8", title="wave test")],
        restart=restart,
        progress=False,
        **kw,
    )


def test_netcdf_of_declared_variables_opens_in_xarray_with_dates_and_attributes(tmp_path):
    model = Wave()
    mem = MemoryWriter()
    sim = _sim(model, tmp_path / "w.nc")
    sim.writers.append(mem)
    res = sim.run()
    assert res.step == res.n_steps == 48 and not res.interrupted and res.t == 48 * 3600.0
    assert tmp_path / "w.nc" in res.written_files
    ds = xr.load_dataset(tmp_path / "w.nc")
    assert ds.sizes == {"time": 9, "member": 2, "k": 3}
    assert ds["x"].dims == ("time", "member", "k") and ds["light"].dims == ("time", "member")
    assert str(ds.time.values[0])[:19] == "2000-01-01T00:00:00"
    assert str(ds.time.values[-1])[:19] == "2000-01-03T00:00:00"
    assert ds["x"].attrs["units"] == "mmol m-3" and ds["x"].attrs["long_name"] == "oscillator amplitude"
    assert (
        ds["light"].attrs["cell_methods"] == "time: mean" and ds["x"].attrs["cell_methods"] == "time: point"
    )
    assert ds["light"].attrs["pelagos_role"] == "forcing"
    assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["title"] == "wave test"
    np.testing.assert_array_equal(ds["k"].values, [0.0, 1.0, 2.0])
    # the memory writer saw the same records
    st = mem.stacked()
    np.testing.assert_array_equal(ds["x"].values, st["x"].numpy())
    mds = mem.to_dataset()
    np.testing.assert_array_equal(mds["x_sq_total"].values, ds["x_sq_total"].values)
    assert mds["x"].dims == ("time", "member", "k")
    torch.testing.assert_close(res.state["x"], st["x"][-1], rtol=0, atol=0)


def test_interval_means_average_the_steps_of_each_output_interval(tmp_path):
    model = Wave()
    hourly = MemoryWriter()
    Simulation(
        model, model.initial_state(2), n_steps=48, output_every=1, writers=[hourly], progress=False
    ).run()
    six = MemoryWriter()
    Simulation(model, model.initial_state(2), n_steps=48, output_every=6, writers=[six], progress=False).run()
    light_h = hourly.stacked()["light"]  # instantaneous values (an interval of one step)
    light_6 = six.stacked()["light"]
    torch.testing.assert_close(light_6[0], light_h[0])  # step 0: the instantaneous value
    for i in range(1, 9):
        torch.testing.assert_close(
            light_6[i], light_h[6 * (i - 1) + 1 : 6 * i + 1].mean(0), rtol=1e-14, atol=0
        )
    # snapshots are snapshots
    torch.testing.assert_close(six.stacked()["x"][1:], hourly.stacked()["x"][6::6], rtol=0, atol=0)
    assert float(light_6[2].max()) > 0  # noon-containing intervals are not blank


class WaveNames(Wave):
    """:class:`Wave` whose ``output`` takes ``names`` (only those fields) and logs what each call computed."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []

    def output(self, state, t, names=None):
        out = super().output(state, t)
        out = out if names is None else {n: out[n] for n in names}
        self.calls.append(tuple(out))
        return out


def test_interval_means_ask_only_for_the_mean_fields_and_equal_the_full_output_loop():
    """Inside an output interval Simulation asks a model whose ``output`` takes ``names`` for the mean fields
    only, and for every field after the interval's last step: the records (means and snapshots) equal those of
    the same model asked for every field at every step; a mean field left out would fail here."""
    ref, only = MemoryWriter(), MemoryWriter()
    base, model = Wave(), WaveNames()
    for m, w in ((base, ref), (model, only)):
        Simulation(m, m.initial_state(2), n_steps=20, output_every=6, writers=[w], progress=False).run()
    a, b = ref.stacked(), only.stacked()
    assert set(a) == set(b) >= {"x", "light", "x_sq_total"}
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    full = ("x", "light", "x_sq_total")
    # step 0; three intervals of 6 steps (5 mean-only calls, then a full one); the last of 2 steps (1 + 1)
    assert model.calls == [full] + ([("light",)] * 5 + [full]) * 3 + [("light",), full]
    assert float(b["light"][1:].abs().max()) > 0  # the means are not blank


def test_restart_resumes_bit_exactly_and_says_so(tmp_path):
    model = Wave()
    ref = _sim(model, tmp_path / "ref.nc").run()
    log: list[str] = []

    class StopAt:
        def __call__(self, sim, state, t, step):
            if step == 18:
                sim.request_stop()

    policy = RestartPolicy(tmp_path / "r.pt", every_steps=12)
    part = _sim(model, tmp_path / "cut.nc", restart=policy, callbacks=[StopAt()], log=log.append).run()
    assert part.interrupted and part.step == 18 and log == []
    assert xr.load_dataset(tmp_path / "cut.nc").sizes["time"] == 4
    assert load_restart(policy.path).step == 18  # written at the stop
    sim = _sim(model, tmp_path / "cut.nc", restart=policy, log=log.append)
    mem = MemoryWriter()  # a writer added on resume keeps what runs from there
    sim.writers.append(mem)
    done = sim.run()
    assert log == ["resuming from restart at 2000-01-01 18:00:00"]
    assert mem.times == [h * 3600.0 for h in (24, 30, 36, 42, 48)]
    assert not done.interrupted and done.step == 48
    a, b = xr.load_dataset(tmp_path / "ref.nc"), xr.load_dataset(tmp_path / "cut.nc")
    for name in ("x", "light", "x_sq_total", "time"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    for k in ref.state:
        assert torch.equal(ref.state[k], done.state[k])


def test_ctrl_c_leaves_readable_output_and_restart_then_resumes(tmp_path):
    ref = _sim(Wave(), tmp_path / "ref.nc").run()
    policy = RestartPolicy(tmp_path / "r.pt", every_steps=100)
    model = Wave(interrupt_at=20 * 3600.0)
    with pytest.raises(Interrupted) as info:
        _sim(model, tmp_path / "cut.nc", restart=policy).run()
    msg = str(info.value)
    assert msg == "interrupted at 2000-01-01 18:00:00; output and restart are valid; rerun to resume"
    assert info.value.step == 18
    part = xr.load_dataset(tmp_path / "cut.nc")  # closed and readable
    assert part.sizes["time"] == 4
    model.interrupt_at = None
    log: list[str] = []
    res = _sim(model, tmp_path / "cut.nc", restart=policy, log=log.append).run()
    assert "resuming from restart at 2000-01-01 18:00:00" in log
    a, b = xr.load_dataset(tmp_path / "ref.nc"), xr.load_dataset(tmp_path / "cut.nc")
    np.testing.assert_array_equal(a["x"].values, b["x"].values)
    assert torch.equal(ref.state["x"], res.state["x"])


def test_stale_restart_names_fresh_and_fresh_starts_over(tmp_path):
    policy = RestartPolicy(tmp_path / "r.pt")
    _sim(Wave(), tmp_path / "a.nc", restart=policy, fingerprint={"k": 1}).run()
    with pytest.raises(ConfigError, match=r"different configuration.*--fresh"):
        _sim(Wave(), tmp_path / "a.nc", restart=policy, fingerprint={"k": 2}).run()
    res = _sim(Wave(), tmp_path / "a.nc", restart=policy, fingerprint={"k": 2}, resume=False).run()
    assert res.step == 48
    # a restart of another state shape is refused, also naming --fresh
    other = Wave(n=4)
    with pytest.raises(ConfigError, match=r"--fresh"):
        _sim(other, tmp_path / "b.nc", restart=policy, fingerprint={"k": 2}).run()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_crafted_restart_is_refused_without_running_code(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format": "pelagos-restart", "version": 1, "leaves": [_Evil(marker)], "step": 0, "t": 0.0}
    if how == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ConfigError, match=r"refusing to load restart file .*Python objects"):
        load_restart(path)
    assert not marker.exists()
    # and through a run: the same clear refusal
    with pytest.raises(ConfigError, match="refusing"):
        _sim(Wave(), tmp_path / "o.nc", restart=RestartPolicy(path)).run()
    assert not marker.exists()
    # other files are no restart either
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ConfigError, match="not readable as a pelagos restart"):
        load_restart(tmp_path / "text.pt")
    torch.save({"a": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match="not a pelagos restart file"):
        load_restart(tmp_path / "weights.pt")


def test_restart_format_is_plain_and_loads_with_weights_only(tmp_path):
    model = Wave()
    state = model.initial_state(2)
    save_restart(
        tmp_path / "r.pt", state, step=3, t=10800.0, fingerprint="abc", records={"w": 4}, extra={"a": [1]}
    )
    raw = torch.load(tmp_path / "r.pt", weights_only=True)
    assert raw["format"] == "pelagos-restart" and raw["step"] == 3 and raw["records"] == {"w": 4}
    back = load_restart(tmp_path / "r.pt", model.initial_state(2), fingerprint="abc")
    assert back.step == 3 and back.t == 10800.0 and back.extra == {"a": [1]}
    assert set(back.state) == {"x", "c"} and torch.equal(back.state["x"], state["x"])
    with pytest.raises(ConfigError, match="only str/int/float"):
        save_restart(tmp_path / "r2.pt", state, step=0, t=0.0, extra={"obj": object()})


def test_every_torch_load_in_the_package_is_weights_only():
    src = Path(__file__).resolve().parents[1] / "src" / "pelagos"
    bad = []
    for f in src.rglob("*.py"):
        text = f.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            call = text[m.start() : i]
            if "weights_only=True" not in call:
                bad.append(f"{f.relative_to(src)}: {call}")
    assert not bad, bad


def test_callbacks_stop_a_blow_up_and_leave_output_and_restart(tmp_path):
    class Blows(Wave):
        def step(self, state, t):
            s = super().step(state, t)
            if float(t) >= 9 * 3600.0:
                s = {**s, "x": s["x"] * float("nan")}
            return s

    policy = RestartPolicy(tmp_path / "r.pt")
    with pytest.raises(StabilityError, match=r"non-finite \(\['x'\]\) by 2000-01-01 12:00:00"):
        _sim(Blows(), tmp_path / "b.nc", restart=policy, callbacks=[CheckFinite()]).run()
    ds = xr.load_dataset(tmp_path / "b.nc")
    assert ds.sizes["time"] == 3  # 0, 6 h, and the bad record at 12 h
    r = load_restart(policy.path)
    assert r.step == 6  # the last good output

    class HasCFL(Wave):
        def cfl(self, state):
            return state["c"] / 36000.0  # grows by 0.1 per step

    with pytest.raises(StabilityError, match=r"CFL number 1.2 >= 1 at 2000-01-01 12:00:00"):
        _sim(HasCFL(), tmp_path / "c.nc", callbacks=[CFLCheck()]).run()


def test_window_errors_and_dates(tmp_path):
    model = Wave()
    s0 = model.initial_state(2)
    with pytest.raises(
        ConfigError, match=r"stop \(1999-12-31 00:00:00\) is before start \(2000-01-01 00:00:00\)"
    ):
        Simulation(model, s0, start="2000-01-01", stop="1999-12-31")
    with pytest.raises(ConfigError, match="whole number of steps"):
        Simulation(model, s0, start=0.0, stop=5000.0)
    with pytest.raises(ConfigError, match=r"stop .* or n_steps"):
        Simulation(model, s0)
    with pytest.raises(ConfigError, match="output_every"):
        Simulation(model, s0, n_steps=3, output_every=0)
    sim = Simulation(model, s0, start="2000-01-02", n_steps=2)
    assert sim.start == 86400.0 and sim.stop == 86400.0 + 7200.0
    lz = Lorenz96(nx=8)
    with pytest.raises(ConfigError, match="has no epoch"):
        Simulation(lz, lz.initial_state(), start="2000-01-01", n_steps=1)

    class Undeclared(Lorenz96):  # a model that skipped output_variables()
        def output_variables(self):
            return Model.output_variables(self)

    with pytest.raises(ConfigError, match="does not declare its output variables"):
        ModelNetCDFWriter(tmp_path / "x.nc", Undeclared(nx=8))
    with pytest.raises(ConfigError, match="did you mean 'light'"):
        ModelNetCDFWriter(tmp_path / "x.nc", model, variables=["lihgt"])


class L96(Lorenz96):
    """Lorenz-96 with declared variables (what the contract asks of every model)."""

    def output_variables(self):
        return [Variable("x", "1", "Lorenz-96 variable", ("i",))]

    def output_coordinates(self):
        return {"i": Coordinate(np.arange(self.nx), "1", "site")}


def test_lorenz96_through_the_same_loop_without_batch_and_restart(tmp_path):
    model = L96(nx=8, dt=0.05)
    x0 = model.initial_state(dtype=F64)
    ref = Simulation(model, x0, n_steps=40, output_every=10, writers=[MemoryWriter()], progress=False).run()
    policy = RestartPolicy(tmp_path / "l.pt", every_steps=10)

    def stop(sim, state, t, step):
        if step == 20:
            sim.request_stop()

    w = ModelNetCDFWriter(tmp_path / "l.nc", model, precision="f8")
    Simulation(
        model, x0, n_steps=40, output_every=10, writers=[w], callbacks=[stop], restart=policy, progress=False
    ).run()
    log: list[str] = []
    w = ModelNetCDFWriter(tmp_path / "l.nc", model, precision="f8")
    res = Simulation(
        model, x0, n_steps=40, output_every=10, writers=[w], restart=policy, progress=False, log=log.append
    ).run()
    assert log == ["resuming from restart at model time 1"]
    assert torch.equal(res.state, ref.state)
    ds = xr.load_dataset(tmp_path / "l.nc")
    assert ds["x"].dims == ("time", "i") and ds.sizes["time"] == 5
    np.testing.assert_allclose(ds["time"].values, [0.0, 0.5, 1.0, 1.5, 2.0])
    np.testing.assert_array_equal(ds["x"].values[-1], ref.state.numpy())


def test_gradients_flow_with_grad_true_and_not_by_default():
    model = Wave()
    s0 = model.initial_state(2)
    s0["x"] = s0["x"].clone().requires_grad_()
    mem = MemoryWriter(detach=False)
    res = Simulation(model, s0, n_steps=4, output_every=2, writers=[mem], progress=False, grad=True).run()
    (g,) = torch.autograd.grad(mem.stacked()["x_sq_total"][-1].sum(), s0["x"])
    torch.testing.assert_close(g, 2 * res.state["x"].detach() * float(torch.exp(torch.tensor(-4 * 3600e-5))))
    res = Simulation(model, s0, n_steps=4, progress=False).run()
    assert not res.state["x"].requires_grad


def test_qg_run_goes_through_simulation_and_ctrl_c_keeps_the_output(tmp_path, monkeypatch):
    import pelagos.qg.dataset  # noqa: F401  (imported before the patch: it binds `diagnostics` at import)
    import pelagos.qg.diagnostics as qd
    from pelagos.io.build import run

    cfg = {  # 86 steps of 2 h, snapshots daily
        "model": {"kind": "qg", "nx": 16, "dt": 7200.0},
        "time": {"duration": 86 * 7200.0},
        "output": {"file": str(tmp_path / "q.nc"), "interval": "1 day"},
    }

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(qd, "diagnostics", ctrl_c)  # first called at the second half of the run
    lines: list[str] = []
    with pytest.raises(Interrupted, match="interrupted at model time"):
        run(cfg, log=lines.append, progress=False)
    ds = xr.load_dataset(tmp_path / "q.nc")
    # the one run loop keeps what was written before Ctrl-C: a readable file of the outputs so far
    assert ds["q"].dims == ("time", "member", "lev", "y", "x") and ds.sizes["time"] >= 4
    assert not any("q.png" in line for line in lines)  # no plot of an interrupted run


def test_buffered_netcdf_equals_a_flush_every_record_file(tmp_path):
    model = Wave()
    files = {}
    for name, kw in {"every": {"buffer_records": 1}, "buffered": {"buffer_records": 4}}.items():
        w = ModelNetCDFWriter(tmp_path / f"{name}.nc", model, precision="f8", **kw)
        sim = Simulation(
            model, model.initial_state(2), start="2000-01-01", stop="2000-01-03", output_every=5,
            writers=[w], progress=False,
        )  # fmt: skip
        sim.run()
        files[name] = xr.load_dataset(tmp_path / f"{name}.nc")
    a, b = files["every"], files["buffered"]
    assert a.sizes["time"] == b.sizes["time"] == 11  # the initial + 10 outputs: 3 flushes
    for v in ("time", "x", "light", "x_sq_total"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    with pytest.raises(ConfigError, match="buffer_records"):
        ModelNetCDFWriter(tmp_path / "z.nc", model, buffer_records=0)


def test_writer_holds_records_briefly_and_flushes_before_each_restart(tmp_path, monkeypatch):
    import pelagos.core.simulation as simmod

    model = Wave()
    w = ModelNetCDFWriter(tmp_path / "r.nc", model, precision="f8", buffer_records=100, flush_seconds=1e9)
    pending_at_restart = []
    real = simmod.save_restart

    def spy(*a, **k):
        pending_at_restart.append((len(w._pending), k["records"][w.key], w.record))
        return real(*a, **k)

    monkeypatch.setattr(simmod, "save_restart", spy)
    held = []
    sim = _sim(model, tmp_path / "r.nc", restart=RestartPolicy(tmp_path / "r.pt", every_steps=12))
    sim.writers = [w]
    sim.callbacks = [lambda s, state, t, k: held.append(len(w._pending))]
    sim.run()
    assert max(held) >= 2  # records were held in memory between restarts (buffering is on)
    # every restart was written with nothing pending, and counts exactly the records on disk
    assert pending_at_restart and all(p == 0 and r == n for p, r, n in pending_at_restart)
    # flush_seconds = 0: every record goes to disk at once
    w0 = ModelNetCDFWriter(tmp_path / "s.nc", model, precision="f8", flush_seconds=0.0)
    sim = _sim(model, tmp_path / "s.nc")
    sim.writers = [w0]
    sim.callbacks = [lambda s, state, t, k: held.append(-len(w0._pending))]
    held.clear()
    sim.run()
    assert held and max(held) == 0 == min(held)
