"""One conformance test for every registered model kind (``pelagos.core.registry.model_kinds()``).

Each kind's ``example()`` (a small float64 model) must satisfy the Model contract:

- pure step: the same call twice gives the same answer, and the inputs are left unchanged;
- batch = loop: stepping B members at once equals stepping each alone;
- float64 gradients of a few steps w.r.t. the state and the free parameters agree with central finite
  differences along random directions (``pelagos.core.gradcheck``);
- forward mode (jvp) equals reverse mode (vjp) through those steps;
- restart equality: the state's leaves saved with ``torch.save`` and read back with
  ``torch.load(weights_only=True)`` into the template of ``initial_state`` continue bit-for-bit;
- declared variables: ``output`` gives every declared variable with shape ``(*batch, *dims)`` and every
  named dim has a coordinate of the right length; the observation operator of each variable is differentiable
  (gradient = finite differences).

Per-kind settings live in ``ModelKind.conformance`` (``steps``, ``batch``, ``free``: parameters to make free,
``tol``, ``h``, ``initial``: keyword options of ``initial_state``, ``inputs``: ``(model, state) -> (tensors,
rebuild)`` for models whose state holds more than
its independent inputs, ``perturb``, ``skip``: names of checks to skip, with the reason in the kind).
"""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.utils._pytree as pytree

from pelagos.core.errors import ConfigError
from pelagos.core.gradcheck import check_directional, check_jvp_vjp
from pelagos.core.model import Model, Variable
from pelagos.core.registry import (
    BuildContext,
    ModelKind,
    _registered,
    get_model_kind,
    model_kinds,
    register_model,
)
from pelagos.core.rollout import rollout

KINDS = model_kinds()


# -- helpers ----------------------------------------------------------------------------------------------
def _real(t) -> bool:
    return torch.is_tensor(t) and t.is_floating_point()


def _leaves(state):
    return pytree.tree_flatten(state)


def _clone(state):
    return pytree.tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, state)


def _equal(a, b) -> bool:
    la, sa = _leaves(a)
    lb, sb = _leaves(b)
    return sa == sb and all(torch.equal(x, y) for x, y in zip(la, lb))


def _close(a, b, rtol=1e-10, atol=1e-14) -> bool:
    la, sa = _leaves(a)
    lb, sb = _leaves(b)
    return sa == sb and all(torch.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(la, lb))


def _member(state, b: int):
    """Member ``b`` of a batched state, keeping a batch dim of 1."""
    return pytree.tree_map(lambda t: t[b : b + 1] if torch.is_tensor(t) and t.ndim else t, state)


def _perturb(state, seed: int, scale: float = 1e-2):
    """Members made different: every real floating leaf × (1 + scale·N(0,1)), member by member."""
    g = torch.Generator().manual_seed(seed)

    def p(t):
        if not _real(t) or t.ndim == 0:
            return t
        return t * (1 + scale * torch.randn(t.shape, generator=g, dtype=t.dtype))

    return pytree.tree_map(p, state)


def _setup(name: str):
    kind = get_model_kind(name)
    conf = dict(kind.conformance)
    model = kind.make_example()
    assert isinstance(model, Model), f"{name}: example() must return a pelagos Model"
    B = int(conf.get("batch", 2))
    state = model.initial_state(B, **conf.get("initial", {}))
    if conf.get("perturb", True):
        state = _perturb(state, seed=1)
    return kind, conf, model, state, B


def _inputs(conf, model, state):
    """(tensors to differentiate, rebuild(tensors) -> state): the kind's own, or every real leaf."""
    if "inputs" in conf:
        return conf["inputs"](model, state)
    leaves, spec = _leaves(state)
    idx = [i for i, t in enumerate(leaves) if _real(t)]

    def rebuild(*xs):
        new = list(leaves)
        for i, x in zip(idx, xs):
            new[i] = x
        return pytree.tree_unflatten(new, spec)

    return [leaves[i] for i in idx], rebuild


def _run(model, state, n: int, t0: float = 0.0):
    return rollout(model, state, n, t0=t0, save_every=n, include_initial=False).final


def _skip(conf, check: str):
    reason = conf.get("skip", {}).get(check)
    if reason:
        pytest.skip(reason)


def _default_points(model: Model, var: Variable, m: int = 2) -> dict:
    """Points inside the grid: between the first two and the last two coordinate values of each dim."""
    coords = model.output_coordinates()
    at = {}
    for d in var.dims:
        c = coords.get(d)
        v = torch.as_tensor(c.values, dtype=torch.float64).reshape(-1) if c is not None else None
        if v is None or v.numel() < 2:
            at[d] = [0.0] * m if v is None or v.numel() < 2 else [float(v[0])] * m
            continue
        at[d] = [float(0.7 * v[0] + 0.3 * v[1]), float(0.4 * v[-2] + 0.6 * v[-1])][:m]
    return at


# -- the conformance test ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KINDS)
def test_model_conforms(name):
    check_model_kind(name)


def check_model_kind(name: str) -> None:
    """Every check above on the registered kind ``name`` (also used for the docs' example model)."""
    kind, conf, model, state, B = _setup(name)
    steps = int(conf.get("steps", 2))
    tol = float(conf.get("tol", 1e-6))
    h = float(conf.get("h", 1e-5))
    t0 = float(conf.get("t0", 0.0))
    assert model.dt > 0, f"{name}: dt must be > 0"
    assert kind.description, f"{name}: give the kind a one-line description"
    if kind.options is not None:
        kind.options()  # every option has a default

    # 1. pure step: same call twice, inputs unchanged
    before = _clone(state)
    s1 = model.step(state, t0)
    s2 = model.step(state, t0)
    assert _equal(s1, s2), f"{name}: step is not deterministic"
    assert _equal(state, before), f"{name}: step changed its input state"

    # 2. batch = loop
    for b in range(B):
        one = _member(state, b)
        alone = model.step(one, t0)
        together = _member(s1, b)
        assert _close(alone, together), f"{name}: member {b} stepped alone differs from the batch"

    # 3. declared variables, their shapes and coordinates
    variables = model.output_variables()
    assert variables, f"{name}: no declared variables"
    names = [v.name for v in variables]
    assert len(set(names)) == len(names), f"{name}: variable names repeat: {names}"
    out = model.output(state, t0)
    coords = model.output_coordinates()
    for v in variables:
        assert v.name in out, f"{name}: output() lacks declared variable {v.name!r}"
        x = out[v.name]
        assert tuple(x.shape[:1]) == (B,), f"{name}: {v.name} shape {tuple(x.shape)} has no batch dim {B}"
        assert x.ndim == 1 + len(v.dims), f"{name}: {v.name} shape {tuple(x.shape)} vs dims {v.dims}"
        for d, n in zip(v.dims, x.shape[1:]):
            if d in coords:
                c = torch.as_tensor(coords[d].values)
                assert c.numel() == n, f"{name}: coordinate {d!r} has {c.numel()} values, dim has {n}"
    with pytest.raises(Exception, match="did you mean"):
        model.variable(names[0] + "x")

    # 4. restart equality: leaves through torch.save / torch.load(weights_only=True), then continue
    mid = _run(model, state, 2, t0)
    leaves, spec = _leaves(mid)
    buf = io.BytesIO()
    torch.save({"leaves": leaves, "t": t0 + 2 * model.dt}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    template_spec = _leaves(model.initial_state(B))[1]
    assert template_spec == spec, f"{name}: the state's structure changed while running"
    restored = pytree.tree_unflatten(loaded["leaves"], template_spec)
    assert _equal(_run(model, restored, 2, loaded["t"]), _run(model, mid, 2, t0 + 2 * model.dt)), (
        f"{name}: a restored state does not continue bit-for-bit"
    )

    # 5. gradients through a few steps w.r.t. the state and the free parameters (float64)
    _skip(conf, "gradients")
    free = conf.get("free", "all")
    model.select_free(free)
    u0 = model.free_vector().to(torch.float64)
    xs, rebuild = _inputs(conf, model, state)
    xs = [x.detach() for x in xs]

    loss = conf.get("loss", lambda s: [t for t in _leaves(s)[0] if _real(t)])

    def final(u, *x):
        with model.using(u):
            return loss(_run(model, rebuild(*x), steps, t0))

    def of_params(u):
        return final(u, *xs)

    def of_state(*x):
        return final(u0, *x)

    checks = [("state", of_state, xs)] + ([("parameters", of_params, [u0])] if u0.numel() else [])
    for what, fn, args in checks:
        rep = check_directional(fn, args, n_directions=2, h=h, tol=tol, seed=3)
        assert rep.passed, f"{name}: gradient w.r.t. the {what}\n{rep}"
    _skip(conf, "jvp")
    rep = check_jvp_vjp(final, [u0, *xs], n_directions=2, tol=float(conf.get("jvp_tol", 1e-9)))
    assert rep.passed, f"{name}:\n{rep}"

    # 6. observation operators: differentiable in the state
    for v in variables[: int(conf.get("observe_max", 3))]:
        at = conf.get("observe", {}).get(v.name) or _default_points(model, v)
        H = model.observation_operator(v.name, at)
        y = H(state)
        assert y.shape[0] == B and y.ndim == 2, f"{name}: H({v.name}) has shape {tuple(y.shape)}"
        assert torch.isfinite(y).all()
        rep = check_directional(lambda *x, H=H: H(rebuild(*x)), xs, n_directions=1, h=h, tol=tol, seed=5)
        assert rep.passed, f"{name}: observation operator of {v.name!r}\n{rep}"


# -- registration -----------------------------------------------------------------------------------------
class _Decay(Model):
    """dx/dt = −k x, exact exponential step: the smallest model that follows the contract."""

    def __init__(self, k: float = 0.1, dt: float = 1.0):
        super().__init__()
        self.dt = dt
        self.declare_parameter("k", k, units="s-1", bounds=(0.0, None), dtype=torch.float64)

    def initial_state(self, batch=None):
        x = torch.ones(3, dtype=torch.float64)
        return x if batch is None else x.expand(batch, 3).clone()

    def step(self, x, t):
        return x * torch.exp(-self.param_b("k", x.ndim) * self.dt)

    def output_variables(self):
        return [Variable("x", "1", "decaying thing", ("i",))]


def test_register_model_lists_it_and_builds_it():
    kind = ModelKind("test_decay", lambda o, ctx: _Decay(), description="decay")
    try:
        register_model(kind)
        assert "test_decay" in model_kinds()
        assert get_model_kind("test_decay") is kind
        m = get_model_kind("test_decay").make_example()
        assert torch.allclose(
            m.step(m.initial_state(), 0.0), torch.full((3,), math.exp(-0.1), dtype=torch.float64)
        )
        with pytest.raises(ConfigError, match="registered already"):
            register_model(kind)
        register_model(kind, replace=True)
    finally:
        _registered.pop("test_decay", None)
    assert "test_decay" not in model_kinds()
    with pytest.raises(ConfigError, match="did you mean"):
        get_model_kind("lorenz9")


def test_entry_point_models_are_found(monkeypatch):
    import pelagos.core.registry as reg

    monkeypatch.setattr(reg, "_load_entry_points", lambda: {"ep_toy": "pelagos.core.toy:KIND"})
    try:
        assert "ep_toy" in reg.model_kinds()
        kind = reg.get_model_kind("ep_toy")
        assert kind.name == "ep_toy"
        assert kind.make_example().step(kind.make_example().initial_state(), 0.0).shape == (8,)
    finally:
        _registered.pop("ep_toy", None)


def test_builtin_kinds_are_registered_and_build_with_defaults():
    for name in ("column", "qg", "qg_layered", "qg_bt", "lorenz63", "lorenz96", "box", "toy_diffusion"):
        assert name in KINDS
        kind = get_model_kind(name)
        assert kind.options is not None
    m = get_model_kind("lorenz96").build(get_model_kind("lorenz96").options(nx=12), BuildContext())
    assert m.nx == 12


@pytest.mark.parametrize("name", ["column", "box", "qg", "qg_layered", "qg_bt", "lorenz63", "lorenz96",
                                  "toy_diffusion"])  # fmt: skip
def test_builtin_kind_builds_from_its_defaults_and_steps(name):
    kind = get_model_kind(name)
    ctx = kind.default_context()
    model = kind.build(kind.default_options(), ctx)
    initial = kind.initial() if kind.initial is not None else None
    opts = {k: v for k, v in vars(initial).items() if v} if initial is not None else {}
    s = model.initial_state(None, **opts)
    s1 = model.step(s, 0.0)
    assert all(
        torch.isfinite(t).all() for t in _leaves(s1)[0] if torch.is_tensor(t) and t.is_floating_point()
    )
    assert model.parameters_table()


def _wrapped_qg():
    from pelagos.qg import QGModel
    from pelagos.qg.interval import QGInterval

    return QGInterval(QGModel(nx=8, dt=6 * 3600.0), n_sub=2)


def _stacked_column():
    from pelagos.column.kind import example
    from pelagos.column.stacked import StackedColumn

    return StackedColumn(example())


@pytest.mark.parametrize(
    "kind",
    [
        ModelKind("wrapped_qg_interval", None, example=_wrapped_qg, description="QG seen through q only",
                  conformance={"free": ["qg.rek", "qg.rd"], "perturb": False, "loss": lambda q: [1e7 * q]}),
        ModelKind("wrapped_stacked_column", None, example=_stacked_column, description="column as a tensor",
                  conformance={"t0": 6 * 3600.0, "free": ["npzd.rmax", "nuh_scale"],
                               "initial": {"profiles": {"npzd_phy": [0.9, 1.2, 1.6, 1.9],
                                                        "npzd_det": [2.0, 1.5, 1.2, 1.0]}}}),
    ],
    ids=lambda k: k.name,
)  # fmt: skip
def test_wrappers_conform(kind):
    """The tensor-state views the inverse methods use (QGInterval, StackedColumn) follow the contract too."""
    register_model(kind)
    try:
        check_model_kind(kind.name)
    finally:
        _registered.pop(kind.name, None)


def test_a_users_package_adds_a_model_through_its_entry_point(tmp_path, monkeypatch, capsys):
    """A package outside pelagos declares ``[project.entry-points."pelagos.models"]``; without any import or
    registration call, `pelagos models` lists its kind and `pelagos run` runs a configuration of it."""
    from pelagos.cli import main

    pkg = tmp_path / "site"
    (pkg / "userbox").mkdir(parents=True)
    (pkg / "userbox" / "__init__.py").write_text(
        "import torch\n"
        "from pelagos.core import Model\n"
        "from pelagos.core.model import Variable\n"
        "from pelagos.core.registry import ModelKind\n\n"
        "class Decay(Model):\n"
        "    dt = 1.0\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.declare_parameter('k', 0.5, units='s-1', bounds=(0.0, None), dtype=torch.float64)\n"
        "    def initial_state(self, batch=None):\n"
        "        x = torch.ones(2, dtype=torch.float64)\n"
        "        return x if batch is None else x.expand(batch, 2).clone()\n"
        "    def step(self, x, t):\n"
        "        return x * torch.exp(-self.param_b('k', x.ndim) * self.dt)\n"
        "    def output_variables(self):\n"
        "        return [Variable('x', '1', 'decaying', ('i',))]\n\n"
        "KIND = ModelKind('user_decay', lambda o, ctx: Decay(), description='a user model')\n"
    )
    dist = pkg / "userbox-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userbox\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pelagos.models]\nuser_decay = userbox:KIND\n")
    monkeypatch.syspath_prepend(str(pkg))
    try:
        assert main(["models"]) == 0
        assert "user_decay" in capsys.readouterr().out
        cfg = tmp_path / "run.yaml"
        cfg.write_text(
            f"model: {{kind: user_decay}}\ntime: {{duration: 3}}\noutput: {{file: {tmp_path}/o.nc}}\n"
        )
        assert main(["run", str(cfg), "--no-progress"]) == 0
        import xarray as xr

        x = xr.load_dataset(tmp_path / "o.nc")["x"].values
        assert x.shape[0] == 4 and math.isclose(float(x[-1].ravel()[0]), math.exp(-1.5), rel_tol=1e-6)
    finally:
        _registered.pop("user_decay", None)
