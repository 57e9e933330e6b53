"""The compiled column step (pelagos.column.compiled, ``ColumnModel(compile=True)``) against the plain step.

The compiled step runs the same operations fused by Inductor: states and outputs must agree with the plain
step to rounding (float64), gradients must match the plain step's and finite differences. Compiling costs
tens of seconds on a loaded machine, so the fast tests share one small model (4 layers, NPZD); the year-long
checks on the NNS physics and ECOSMO are slow-marked.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from pelagos.bgc.system import BGCSystem
from pelagos.column import ColumnForcing, ColumnModel, compact_forcing_path
from pelagos.column import compiled as cc
from pelagos.column import fused as fused_mod
from pelagos.column.kind import example
from pelagos.core.errors import ConfigError, SolverError
from pelagos.core.rollout import rollout
from pelagos.io.config import resolve_path

pytestmark = pytest.mark.skipif(not cc.cxx_available(), reason="no C++ compiler: the compiled step is off")

F64 = torch.float64
T0 = 6 * 3600.0


def _start(model: ColumnModel, B: int = 3) -> dict:
    s = model.initial_state(B, t0=T0)
    g = torch.Generator().manual_seed(1)
    for k in ("npzd_phy", "npzd_zoo", "npzd_det"):
        s[k] = s[k] + torch.rand(s[k].shape, generator=g, dtype=F64)
    return s


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the field's magnitude (max abs), per variable."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.fixture(autouse=True)
def _inductor_program(monkeypatch):
    """These tests are about the Inductor program: the fused kernel (which ``compile`` runs first where it
    can, tests/test_column_fused.py) is off."""
    monkeypatch.setattr(fused_mod, "_ENABLED", False)


@pytest.fixture(scope="module")
def models() -> tuple[ColumnModel, ColumnModel]:
    plain = example()
    fast = example()
    fast.compile_mode = "on"
    return plain, fast


def test_compile_option_parsing():
    assert cc.compile_mode(True) == "on" and cc.compile_mode("auto") == "auto"
    assert cc.compile_mode("no") == "off"
    with pytest.raises(ConfigError, match=r"numerics\.compile"):
        cc.compile_mode("sometimes")


def test_compiled_step_and_output_match_plain(models):
    plain, fast = models
    s = _start(plain)
    rmax = torch.tensor([0.8, 1.0, 1.3], dtype=F64)  # per-column parameter through `using`
    with torch.no_grad():
        with plain.using({"npzd.rmax": torch.log(rmax)}):
            ref = rollout(plain, s, 30, t0=T0).final
            out_ref = plain.output(ref, T0 + 30 * 3600.0)
        with fast.using({"npzd.rmax": torch.log(rmax)}):
            got = rollout(fast, s, 30, t0=T0).final
            out = fast.output(got, T0 + 30 * 3600.0)
    assert fast.__dict__.get("_compiled_step_obj") is not None  # the compiled path ran
    for k in ref:
        assert _rel(got[k], ref[k]) < 1e-12, k
    for k in out_ref:
        torch.testing.assert_close(out[k], out_ref[k], rtol=1e-12, atol=1e-14)


def test_output_names_give_the_same_fields_and_skip_what_they_do_not_need(models, monkeypatch):
    """``output(state, t, names)`` (what Simulation asks for inside an output interval: the mean fields): the
    full output's values of those names, plain and compiled; a forcing field, a state or a column total alone
    does not evaluate the biology; an unknown name is a clear error."""
    plain, fast = models
    s = _start(plain)
    t = T0 + 3600.0
    names = tuple(v.name for v in plain.output_variables() if v.mean)
    assert "PAR" in names and len(names) >= 3  # the NPZD diagnostics and PAR
    with torch.no_grad():
        full = plain.output(s, t)
        some = plain.output(s, t, names=names)
        fast_some = fast.output(s, t, names=names)
    assert tuple(some) == names and tuple(fast_some) == names
    for k in names:
        assert torch.equal(some[k], full[k]), k
        torch.testing.assert_close(fast_some[k], full[k], rtol=1e-12, atol=1e-14)
    with pytest.raises(ConfigError, match="no field"):
        plain.output(s, t, names=("PAR", "npzd_nothing"))
    total = next(k for k in full if k.startswith("total_"))

    def no_rates(*args, **kw):
        raise AssertionError("the biology was evaluated for fields that do not need it")

    monkeypatch.setattr(plain, "_rates", no_rates)
    cheap = plain.output(s, t, names=("h", "nuh", total, "npzd_phy"))
    for k in cheap:
        assert torch.equal(cheap[k], full[k]), k


def test_compiled_gradients_match_plain_and_finite_differences(models):
    plain, fast = models
    s = _start(plain)
    n = 12

    def loss(model: ColumnModel, log_rmax: torch.Tensor, nuh: torch.Tensor, phy0: torch.Tensor):
        x0 = dict(s, npzd_phy=phy0)
        with model.using({"npzd.rmax": log_rmax, "nuh_scale": nuh}):
            fin = rollout(model, x0, n, t0=T0, checkpoint=4).final
        return (fin["npzd_phy"] ** 2).sum() + fin["npzd_det"].sum()

    base = (torch.zeros(3, dtype=F64), torch.zeros((), dtype=F64), s["npzd_phy"].clone())
    grads = {}
    for name, model in (("plain", plain), ("fast", fast)):
        xs = [x.clone().requires_grad_(True) for x in base]
        grads[name] = torch.autograd.grad(loss(model, *xs), xs)
    for gp, gf in zip(grads["plain"], grads["fast"]):
        torch.testing.assert_close(gf, gp, rtol=1e-10, atol=1e-14)
    # central differences of the compiled path along a random direction
    g = torch.Generator().manual_seed(3)
    dirs = [torch.randn(x.shape, generator=g, dtype=F64) for x in base]
    eps = 1e-6
    with torch.no_grad():
        up = loss(fast, *[x + eps * d for x, d in zip(base, dirs)])
        dn = loss(fast, *[x - eps * d for x, d in zip(base, dirs)])
    fd = float(up - dn) / (2 * eps)
    ad = sum(float((gx * d).sum()) for gx, d in zip(grads["fast"], dirs))
    assert fd == pytest.approx(ad, rel=1e-6)


def test_no_compiler_warns_once_and_runs_plain(monkeypatch):
    m = example()
    m.compile_mode = "on"
    monkeypatch.setattr(cc, "cxx_available", lambda: False)
    monkeypatch.setattr(cc, "_warned_no_cxx", False)
    s = m.initial_state(1, t0=T0)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        a = m.step(s, T0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.step(a, T0 + 3600.0)
    assert m.compile_mode == "off"
    torch.testing.assert_close(a["npzd_phy"], example().step(s, T0)["npzd_phy"], rtol=0, atol=0)


def test_sinking_loop_grows_when_columns_need_more_substeps():
    """Fast sinking (Courant > 1 per step) needs GOTM's sub-steps: the compiled step notices and recompiles
    with the larger loop, giving the plain step's result."""
    from pelagos.bgc.npzd import NPZD

    f = example().forcing
    fl = {k: v[0] for k, v in f.fields.items()}
    thin = ColumnForcing(f.time, fl["h"] * 0.2, fl["temp"], fl["salt"], fl["nuh"],
                         fl["I_0"])  # fmt: skip
    plain = ColumnModel(BGCSystem({"npzd": NPZD()}), thin).to(F64)
    fast = ColumnModel(BGCSystem({"npzd": NPZD()}), thin, compile=True).to(F64)
    fast_sink = {"npzd.w_d": torch.tensor(-100.0, dtype=F64)}  # m/d: 4.2 m per hour through 1 m layers
    raw = {k: fast.parameter_spec(k).transform.inverse(v) for k, v in fast_sink.items()}
    s = _start(plain, 2)
    with torch.no_grad():
        with plain.using(raw):
            ref = rollout(plain, s, 4, t0=T0).final
        with fast.using(raw):
            got = rollout(fast, s, 4, t0=T0).final
    assert fast._compiled_step_obj.loop > 1
    for k in ref:
        assert _rel(got[k], ref[k]) < 1e-12, k


@pytest.mark.slow
def test_compiled_year_nns_npzd_agrees_and_gradient_is_exact():
    """A model year of the NNS NPZD column (compact 22-layer physics, hourly): compiled (one step per call
    and in blocks) vs plain <= 1e-12, and a finite-difference check of the compiled path's gradient over
    the year."""
    f = ColumnForcing.from_gotm(compact_forcing_path())
    bgc = BGCSystem.from_yaml(resolve_path("builtin:fabm/fabm-gotm-npzd.yaml", None))
    plain = ColumnModel(bgc, f).to(F64)
    fast = ColumnModel(BGCSystem.from_yaml(resolve_path("builtin:fabm/fabm-gotm-npzd.yaml", None)), f).to(F64)
    fast.compile_mode = "on"
    t0, n = f.t_start, 8760
    s = plain.initial_state(2, t0=t0)
    with torch.no_grad():
        ref = rollout(plain, s, n, t0=t0).final
        got = rollout(fast, s, n, t0=t0).final  # every step saved: one compiled step per call
        blocks = rollout(fast, s, n, t0=t0, save_every=24).final  # daily saves: blocks of block_steps
    assert fast._compiled_step_obj._block is not None
    for k in ref:
        assert _rel(got[k], ref[k]) < 1e-12, k
        assert _rel(blocks[k], ref[k]) < 1e-12, k

    def loss(log_rmax: torch.Tensor) -> torch.Tensor:
        with fast.using({"npzd.rmax": log_rmax}):
            fin = rollout(fast, s, n, t0=t0, checkpoint="sqrt").final
        return fin["npzd_phy"].sum() + fin["npzd_nut"].sum()

    x = torch.zeros(2, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(x), x)
    d = torch.tensor([0.6, -0.8], dtype=F64)
    eps = 1e-5
    with torch.no_grad():
        fd = (float(loss(eps * d)) - float(loss(-eps * d))) / (2 * eps)
    assert fd == pytest.approx(float((g * d).sum()), rel=1e-5)


@pytest.mark.slow
def test_compiled_ecosmo_matches_plain():
    """ECOSMO (19 states, bottom fluxes, running means of surface PAR): two days, compiled vs plain."""
    f = ColumnForcing.from_gotm(compact_forcing_path(), stop=3 * 86400.0, bottom_stress=0.05)
    yaml = resolve_path("builtin:fabm/fabm-nersc-ecosmo.yaml", None)
    plain = ColumnModel(BGCSystem.from_yaml(yaml, drop_unsupported=True), f).to(F64)
    fast = ColumnModel(BGCSystem.from_yaml(yaml, drop_unsupported=True), f).to(F64)
    fast.compile_mode = "on"
    s = plain.initial_state(2, t0=T0)
    with torch.no_grad():
        ref = rollout(plain, s, 48, t0=T0).final
        got = rollout(fast, s, 48, t0=T0).final
        o_ref, o = plain.output(ref, T0 + 48 * 3600.0), fast.output(got, T0 + 48 * 3600.0)
    for k in ref:
        if k != "_means":
            assert _rel(got[k], ref[k]) < 1e-12, k
    for key, buf in ref["_means"].items():
        torch.testing.assert_close(got["_means"][key]["mean"], buf["mean"], rtol=1e-12, atol=1e-12)
    for k in o_ref:
        torch.testing.assert_close(o[k], o_ref[k], rtol=1e-11, atol=1e-12)


# -- the multi-step block (ColumnModel.step_block: k steps per compiled call) ------------------------------
def _mean_model(**kw) -> ColumnModel:
    """The example column with a daily running mean of PAR in the biology's environment (as ECOSMO's), at
    dt = 1800 s on hourly forcing: the forcing is interpolated and the running-mean plans alternate."""
    from pelagos.bgc.npzd import NPZD

    class NPZDMean(NPZD):
        def __init__(self) -> None:
            super().__init__()
            self.register_dependency(
                "parmean", "downwelling_photosynthetic_radiative_flux", "W m-2", mean_period=86400.0,
                mean_resolution=3600.0,
            )  # fmt: skip

    return ColumnModel(BGCSystem({"npzd": NPZDMean()}), example().forcing, dt=1800.0, **kw).to(F64)


def test_forcing_sample_many_equals_sample():
    f = example().forcing
    times = [T0, T0 + 1800.0, T0 + 3600.0, T0 + 5000.0, T0 + 7200.0]
    many = f.sample_many(times, ["h", "nuh", "I_0"])
    for j, t in enumerate(times):
        one = f.sample(t, ["h", "nuh", "I_0"])
        for k in one:
            assert torch.equal(many[k][j], one[k]), (k, t)
    hourly = f.sample_many(times[::2], ["nuh"])  # on the records: a gather, no interpolation
    assert all(torch.equal(hourly["nuh"][j], f.sample(t, ["nuh"])["nuh"]) for j, t in enumerate(times[::2]))


def test_block_matches_plain_with_saves_chunks_and_running_means():
    """Blocks of 4 steps (never across a save point: save_every = 6 gives blocks 4 + 2), columns in chunks
    of 2 of 3, per-column parameters, a running mean with alternating plans: states and saved entries equal
    the plain step's."""
    plain, fast = _mean_model(), _mean_model(compile=True, block_steps=4, chunk_columns=2)
    s = _start(plain)
    rmax = {"npzd.rmax": torch.log(torch.tensor([0.8, 1.0, 1.3], dtype=F64))}
    with torch.no_grad():
        with plain.using(rmax):
            ref = rollout(plain, s, 12, t0=T0, save_every=6)
        with fast.using(rmax):
            got = rollout(fast, s, 12, t0=T0, save_every=6)
    assert fast._compiled_step_obj._block is not None  # the block ran
    assert got.steps == ref.steps == [0, 6, 12]
    for k in ref.final:
        if k != "_means":
            assert _rel(got.final[k], ref.final[k]) < 1e-12, k
            assert _rel(got.states[k], ref.states[k]) < 1e-12, k
    for key, buf in ref.final["_means"].items():
        for part in buf:
            assert _rel(got.final["_means"][key][part], buf[part]) < 1e-12, (key, part)


def test_block_gradients_match_plain_step():
    """The block's backward (compiled by AOTAutograd) gives the plain step's gradients, and the same as the
    compiled single step, to parameters (per column and shared) and the initial state."""
    plain = example()
    fast = example()
    fast.compile_mode, fast.block_steps = "on", 4
    s = _start(plain)

    def loss(model: ColumnModel, log_rmax: torch.Tensor, nuh: torch.Tensor, phy0: torch.Tensor):
        with model.using({"npzd.rmax": log_rmax, "nuh_scale": nuh}):
            fin = rollout(model, dict(s, npzd_phy=phy0), 8, t0=T0, save_every=8).final
        return (fin["npzd_phy"] ** 2).sum() + fin["npzd_det"].sum() + fin["npzd_zoo"].sum()

    base = (torch.zeros(3, dtype=F64), torch.zeros((), dtype=F64), s["npzd_phy"].clone())
    grads = {}
    for name, model in (("plain", plain), ("fast", fast)):
        xs = [x.clone().requires_grad_(True) for x in base]
        grads[name] = torch.autograd.grad(loss(model, *xs), xs)
    assert fast._compiled_step_obj._block is not None
    for gp, gf in zip(grads["plain"], grads["fast"]):
        torch.testing.assert_close(gf, gp, rtol=1e-10, atol=1e-14)
    # what the block keeps for its backward (cc._ACTIVATION_BUDGET = 0): about its inputs, not every
    # intermediate of its 4 steps (≈ 2 state sizes per block here; ≈ 20 with AOTAutograd's default split)
    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss(fast, *[x.clone().requires_grad_(True) for x in base])
    state_bytes = sum(v.numel() * v.element_size() for v in s.values() if torch.is_tensor(v))
    assert 0 < sum(kept) / 2 <= 4 * state_bytes  # two blocks of 4 steps


def test_block_with_a_control_vector_traces_once_and_matches_plain_gradient():
    """Parameters installed from one flat control vector (views of it, as ``pelagos calibrate`` does) enter
    the block's nested compile region as copies (region inputs may not alias): the steps are still traced
    once (``block_regions``) and the gradient to the vector equals the plain step's."""
    plain, fast = example(), example()
    fast.compile_mode, fast.block_steps = "on", 3
    names = ["npzd.rmax", "npzd.gmax"]
    for m in (plain, fast):
        m.select_free(names)
    s = _start(plain)
    u0 = torch.tensor([0.1, -0.2], dtype=F64)

    def loss(model: ColumnModel, u: torch.Tensor) -> torch.Tensor:
        with model.using(u):  # a flat tensor: u[0], u[1] are views of one storage
            fin = rollout(model, s, 7, t0=T0, save_every=7).final
        return (fin["npzd_phy"] ** 2).sum() + fin["npzd_zoo"].sum()

    grads = []
    for model in (plain, fast):
        u = u0.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(loss(model, u), u)[0])
    cs = fast._compiled_step_obj
    assert cs._block is not None and cs.block_regions
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-14)


def test_block_falls_back_to_tracing_every_step_after_a_graph_break():
    """A step the nested compile region cannot hold (here a graph break, as a user's model may have) makes the
    block trace every step instead: same states as the plain step."""
    plain, fast = example(), example()
    fast.compile_mode, fast.block_steps = "on", 3
    inner = fast._step_columns

    def breaking(*a, **k):
        torch._dynamo.graph_break()
        return inner(*a, **k)

    fast._step_columns = breaking
    s = _start(plain)
    with torch.no_grad():
        ref = rollout(plain, s, 6, t0=T0, save_every=6).final
        got = rollout(fast, s, 6, t0=T0, save_every=6).final
    assert fast._compiled_step_obj._block is not None and not fast._compiled_step_obj.block_regions
    for k in ref:
        if k != "_means":
            assert _rel(got[k], ref[k]) < 1e-12, k


def test_simulation_interval_means_through_the_block():
    """Simulation with interval-mean outputs (what `pelagos run` writes) takes the block with the outputs
    summed inside it: the records equal the plain step-and-output loop's."""
    from pelagos.core.simulation import MemoryWriter, Simulation

    plain, fast = _mean_model(), _mean_model(compile=True, block_steps=4)
    recs = {}
    for name, model in (("plain", plain), ("fast", fast)):
        s = _start(model, 2)
        w = MemoryWriter()
        with torch.no_grad():
            Simulation(model, s, start=T0, n_steps=12, output_every=6, writers=[w], progress=False).run()
        recs[name] = w.stacked()
    assert fast._compiled_step_obj._block is not None
    assert fast._compiled_step_obj.block_regions  # steps and their mean outputs traced once
    assert any(v.mean for v in fast.output_variables())
    for k, ref in recs["plain"].items():
        got = recs["fast"][k]
        assert _rel(got, ref) < 1e-12 if ref.abs().max() > 0 else torch.equal(got, ref), k


def test_block_float32_and_sinking_loop_growth():
    """float32 blocks agree with the plain float32 step to float32 rounding; fast sinking (Courant > 1)
    grows the block's sinking loop and redoes the block: the plain step's result."""
    from pelagos.bgc.npzd import NPZD

    f = example().forcing
    fl = {k: v[0] for k, v in f.fields.items()}
    thin = ColumnForcing(f.time, fl["h"] * 0.2, fl["temp"], fl["salt"], fl["nuh"], fl["I_0"])
    plain = ColumnModel(BGCSystem({"npzd": NPZD()}), thin).to(F64)
    fast = ColumnModel(BGCSystem({"npzd": NPZD()}), thin, compile=True, block_steps=4).to(F64)
    raw = {"npzd.w_d": fast.parameter_spec("npzd.w_d").transform.inverse(torch.tensor(-100.0, dtype=F64))}
    s = _start(plain, 2)
    with torch.no_grad():
        with plain.using(raw):
            ref = rollout(plain, s, 4, t0=T0, save_every=4).final
        with fast.using(raw):
            got = rollout(fast, s, 4, t0=T0, save_every=4).final
    assert fast._compiled_step_obj.loop > 1
    for k in ref:
        assert _rel(got[k], ref[k]) < 1e-12, k
    p32 = example().to(torch.float32)
    f32 = example().to(torch.float32)
    f32.compile_mode, f32.block_steps = "on", 4
    s32 = {k: v.float() for k, v in _start(example()).items()}
    with torch.no_grad():
        ref = rollout(p32, s32, 8, t0=T0, save_every=8).final
        got = rollout(f32, s32, 8, t0=T0, save_every=8).final
    assert f32._compiled_step_obj._block is not None
    for k in ref:
        assert _rel(got[k], ref[k]) < 1e-5, k


def test_block_falls_back_inside_torch_func_and_when_off():
    """``step_block`` declines (None: the loop steps) without compile, with block_steps = 1 and inside
    torch.func transforms; rollout's results are then the plain step's."""
    m = example()
    with pytest.raises(ConfigError, match="block_steps"):
        ColumnModel(m.bgc, m.forcing, block_steps=0)
    s = _start(m)
    assert m.step_block(s, [T0, T0 + 3600.0]) is None  # compile off
    fast = example()
    fast.compile_mode, fast.block_steps = "on", 1
    assert fast.step_block(s, [T0, T0 + 3600.0]) is None
    fast.block_steps = 4

    def fin(phy: torch.Tensor) -> torch.Tensor:
        return rollout(fast, dict(s, npzd_phy=phy), 3, t0=T0, save_every=3).final["npzd_phy"].sum()

    v = torch.ones_like(s["npzd_phy"])
    _, jv = torch.func.jvp(fin, (s["npzd_phy"],), (v,))
    _, jv_ref = torch.func.jvp(
        lambda p: rollout(m, dict(s, npzd_phy=p), 3, t0=T0).final["npzd_phy"].sum(), (s["npzd_phy"],), (v,)
    )
    torch.testing.assert_close(jv, jv_ref, rtol=1e-12, atol=0)


def test_each_model_gets_its_own_compiled_code():
    """dynamo keeps at most 8 compiled variants per code object: models must not share one (the ninth model
    of a process, e.g. in an ensemble or a calibration, would silently run uncompiled)."""
    a, b = example(), example()
    fa, fb = cc._own_code(cc._step_core, a), cc._own_code(cc._step_core, b)
    assert fa.__code__ is not fb.__code__
    assert fa.__globals__["_MODEL"] is a and fb.__globals__["_MODEL"] is b


def test_block_declines_forward_mode_duals_and_runs_for_the_stacked_column():
    """Forward-mode dual tensors take the compiled jvp step, not the block (``step_block`` declines); the
    tensor-state view the inverse methods step (StackedColumn) takes the block: same states and gradients
    as the plain column."""
    import torch.autograd.forward_ad as fwAD

    from pelagos.column.stacked import StackedColumn

    fast = example()
    fast.compile_mode, fast.block_steps = "on", 4
    s = _start(fast)
    with fwAD.dual_level():
        dual = dict(s, npzd_phy=fwAD.make_dual(s["npzd_phy"], torch.ones_like(s["npzd_phy"])))
        assert fast.step_block(dual, [T0, T0 + 3600.0]) is None
    plain = StackedColumn(example())
    stacked = StackedColumn(fast)
    x0 = plain.stack(s)

    def run(model: StackedColumn, log_rmax: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with model.using({"npzd.rmax": log_rmax}):
            tr = rollout(model, x, 10, t0=T0, save_every=5)
        return tr.states

    out = {}
    for name, model in (("plain", plain), ("fast", stacked)):
        u = torch.zeros(3, dtype=F64, requires_grad=True)
        x = x0.clone().requires_grad_(True)
        states = run(model, u, x)
        out[name] = (states.detach(), *torch.autograd.grad((states**2).sum(), (u, x)))
    assert fast._compiled_step_obj._block is not None  # the block ran
    assert _rel(out["fast"][0], out["plain"][0]) < 1e-12
    for gf, gp in zip(out["fast"][1:], out["plain"][1:]):
        torch.testing.assert_close(gf, gp, rtol=1e-10, atol=1e-14)


def test_a_failed_solve_in_the_compiled_block_is_a_solver_error(models):
    """Inductor's C++ wrapper reports a failed custom-op call as an untyped RuntimeError; the compiled step
    turns a failed tridiagonal solve back into SolverError (what line searches and LM treat as a rejected
    trial), and leaves other errors alone."""
    plain, fast = models
    s = _start(plain)
    s["npzd_det"] = s["npzd_det"].clone()
    s["npzd_det"][1, 2] = float("nan")
    with torch.no_grad(), pytest.raises(SolverError, match="tridiagonal solve"):
        rollout(fast, s, 12, t0=T0)
    assert fast.__dict__["_compiled_step_obj"].block_regions  # it was the block's program that failed

    def other() -> None:
        raise RuntimeError("index out of range")

    with pytest.raises(RuntimeError, match="index out of range") as info:  # not the solve's: left alone
        cc._run_program(other)
    assert not isinstance(info.value, SolverError)
