"""Parameters and the Model contract: transforms (round trip, bounds respected, derivative), declaration,
select_free, dotted names of sub-models, flat vectors, `using` with a batch, priors, table."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pelagos.core import ConfigError, Model, rollout
from pelagos.core.params import Interval, LowerBounded, Transform, UpperBounded, make_transform

D = torch.float64


# -- transforms ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bounds", "cls", "name"),
    [
        ((None, None), Transform, "identity"),
        ((0.0, None), LowerBounded, "log"),
        ((None, 5.0), UpperBounded, "log-upper"),
        ((-1.0, 3.0), Interval, "logit"),
    ],
)
def test_make_transform_kind(bounds, cls, name):
    t = make_transform(bounds)
    assert type(t) is cls and t.name == name
    assert type(make_transform(bounds, "identity")) is Transform


@settings(max_examples=60, deadline=None)
@given(u=st.floats(-30, 30), lo=st.floats(-1e3, 1e3), width=st.floats(1e-3, 1e3))
def test_transforms_respect_bounds_and_round_trip(u, lo, width):
    hi = lo + width
    ut = torch.tensor(u, dtype=D)
    for t, ok in (
        # open bounds mathematically; in float64 lo + exp(u) rounds onto lo when exp(u) < eps·|lo|
        (LowerBounded(lo), lambda x: x > lo or (x == lo and math.exp(u) < 1e-15 * abs(lo))),
        (UpperBounded(hi), lambda x: x < hi or (x == hi and math.exp(u) < 1e-15 * abs(hi))),
        (Interval(lo, hi), lambda x: lo <= x <= hi),
    ):
        uu = ut.clone().requires_grad_()
        x = t.forward(uu)
        assert math.isfinite(float(x.detach())) and ok(float(x.detach()))
        # round trip, to the accuracy float64 allows: x carries round-off ~eps·(|x| + |bounds|), which maps
        # back to u through 1/|dx/du| (large where the transform saturates)
        (dxdu,) = torch.autograd.grad(x, uu)
        err = 4 * 2.2e-16 * (abs(float(x.detach())) + abs(lo) + abs(hi)) / max(abs(float(dxdu)), 1e-300)
        if err < 1.0:
            assert abs(float(t.inverse(x.detach())) - u) <= 1e-12 * abs(u) + err


def test_transform_derivative_matches_analytic():
    u = torch.tensor([-2.0, 0.0, 1.5], dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(Interval(1.0, 4.0).forward(u).sum(), u)
    s = torch.sigmoid(u.detach())
    torch.testing.assert_close(g, 3.0 * s * (1 - s))
    (g,) = torch.autograd.grad(LowerBounded(2.0).forward(u).sum(), u)
    torch.testing.assert_close(g, torch.exp(u.detach()))


# -- a model tree -----------------------------------------------------------------------------------------
class Bio(Model):
    def __init__(self):
        super().__init__()
        self.declare_parameter("rmax", 1.0, units="1/d", bounds=(0.0, None), description="max growth")
        self.declare_parameter("alpha", 0.3, units="-", bounds=(0.0, 1.0), description="efficiency")


class Column(Model):
    dt = 60.0

    def __init__(self):
        super().__init__()
        self.declare_parameter("kappa", 1e-3, units="m2/s", bounds=(0.0, None), description="diffusivity")
        self.declare_parameter("offset", -2.0, units="K", description="unbounded")
        self.bio = Bio()

    def step(self, x, t):
        r = self.bio.param_b("rmax", x.ndim) * self.bio.param_b("alpha", x.ndim)
        return (
            x + self.dt * 1e-4 * (r * x - self.param_b("kappa", x.ndim) * 1e3 * x) + 0 * self.param("offset")
        )


def test_declared_values_names_and_table():
    m = Column()
    assert m.parameter_names() == ["kappa", "offset", "bio.rmax", "bio.alpha"]
    assert float(m.param("kappa").detach()) == pytest.approx(1e-3, rel=1e-6)
    assert float(m.get_parameter_value("bio.alpha").detach()) == pytest.approx(0.3, rel=1e-6)
    rows = m.parameters_table(as_rows=True)
    assert [r["name"] for r in rows] == m.parameter_names()
    assert rows[2]["units"] == "1/d" and rows[3]["bounds"] == (0.0, 1.0) and rows[3]["transform"] == "logit"
    text = m.parameters_table()
    assert "bio.rmax" in text and "max growth" in text and "(0, 1)" in text
    assert m.parameter_spec("bio.rmax").description == "max growth"


def test_set_value_keeps_parameter_object_and_bounds():
    m = Column()
    p_before = m.bio.params.raw["rmax"]
    m.select_free(["bio.rmax"])
    m.set_parameter_value("bio.rmax", 2.5)
    assert m.bio.params.raw["rmax"] is p_before  # optimisers holding it still see it
    assert p_before.requires_grad
    assert float(m.get_parameter_value("bio.rmax").detach()) == pytest.approx(2.5, rel=1e-6)
    with pytest.raises(ConfigError, match=r"'alpha' = 1\.5 .* above its upper bound 1"):
        m.set_parameter_value("bio.alpha", 1.5)
    with pytest.raises(ConfigError, match="below its lower bound 0"):
        m.set_parameter_value("kappa", 0.0)  # open bound of the log transform
    with pytest.raises(ConfigError, match="NaN"):
        m.set_parameter_value("offset", float("nan"))


def test_select_free_and_flat_vector_round_trip():
    m = Column()
    assert m.select_free(["bio.alpha", "kappa"]) == ["kappa", "bio.alpha"]  # declaration order
    assert [p.requires_grad for p in m.parameters()] == [True, False, False, True]
    u = m.free_vector()
    torch.testing.assert_close(u, torch.tensor([math.log(1e-3), math.log(0.3 / 0.7)]), rtol=1e-5, atol=1e-6)
    m.load_free_vector(u + torch.tensor([1.0, 0.0]))
    assert float(m.param("kappa").detach()) == pytest.approx(1e-3 * math.e, rel=1e-5)
    assert m.select_free("all") == m.parameter_names()
    assert m.select_free(None) == [] and m.free_vector().numel() == 0
    with pytest.raises(ConfigError, match=r"unknown parameter 'bio\.rmx'"):
        m.select_free(["bio.rmx"])
    with pytest.raises(ConfigError, match="2 parameters are free"):
        m.select_free(["kappa", "offset"])
        m.unflatten(torch.zeros(3))


def test_using_is_pure_and_takes_a_batch():
    m = Column().double()
    m.select_free(["kappa", "bio.rmax"])
    u = m.free_vector()
    x0 = torch.ones(4, dtype=D)
    ref = rollout(m, x0, 3).final
    ub = torch.stack([u, u + torch.tensor([0.5, -0.5], dtype=D), u])  # (B=3, p=2)
    with m.using(ub):
        assert m.param("kappa").shape == (3,)
        xb = rollout(m, x0.expand(3, 4), 3).final
    assert m.param("kappa").shape == ()  # restored
    torch.testing.assert_close(xb[0], ref)
    torch.testing.assert_close(xb[2], ref)
    assert not torch.allclose(xb[1], ref)
    for i in range(3):  # each member equals a single run with that member's values
        with m.using({"kappa": ub[i, 0], "bio.rmax": ub[i, 1]}):
            torch.testing.assert_close(rollout(m, x0, 3).final, xb[i])
    # nested using: inner overrides, outer comes back
    with m.using({"kappa": u[0] + 1}), m.using({"bio.rmax": u[1] - 1}):
        assert float(m.param("kappa").detach()) == pytest.approx(math.exp(float(u[0]) + 1))
    torch.testing.assert_close(m.free_vector(), u)
    with pytest.raises(ConfigError, match="unknown parameter"), m.using({"nope": u[0]}):
        pass


def test_gradient_through_using_is_the_chain_rule_of_the_transform():
    m = Column().double()
    m.select_free(["bio.alpha"])
    u = m.free_vector().clone().requires_grad_()
    with m.using(u):
        a = m.get_parameter_value("bio.alpha")
    (g,) = torch.autograd.grad(a, u)
    s = torch.sigmoid(u.detach())
    torch.testing.assert_close(g, s * (1 - s))


def test_prior_nll():
    m = Column().double()
    m.select_free(["kappa", "bio.alpha"])
    assert float(m.prior_nll()) == 0.0  # no priors yet
    m.set_prior("kappa", mean=1e-2, std=2.0)  # Gaussian in log space, centred at log(1e-2)
    m.set_prior("bio.rmax", std=1.0)  # not free: does not count
    u = m.free_vector()
    expect = 0.5 * ((u[0] - math.log(1e-2)) / 2.0) ** 2
    torch.testing.assert_close(m.prior_nll(), expect)
    ub = torch.stack([u, u + 1.0])
    nll_b = m.prior_nll({"kappa": ub[:, 0]})  # a batch sums over members
    torch.testing.assert_close(nll_b, expect + 0.5 * ((u[0] + 1 - math.log(1e-2)) / 2.0) ** 2)
    torch.testing.assert_close(
        m.prior_nll(u + torch.tensor([2.0, 0.0], dtype=D)), 0.5 * ((u[0] + 2 - math.log(1e-2)) / 2.0) ** 2
    )
    with pytest.raises(ConfigError, match="std"):
        m.set_prior("kappa", std=0.0)
    with pytest.raises(ConfigError, match="prior mean"):
        m.set_prior("bio.alpha", mean=2.0)


def test_declaration_errors():
    m = Model()
    m.declare_parameter("a", 1.0, bounds=(0.0, 2.0))
    with pytest.raises(ConfigError, match="declared twice"):
        m.declare_parameter("a", 1.0)
    with pytest.raises(ConfigError, match="above its upper bound"):
        m.declare_parameter("b", 3.0, bounds=(0.0, 2.0))
    with pytest.raises(ConfigError, match=r"lower bound .* must be below"):
        m.declare_parameter("c", 1.0, bounds=(2.0, 1.0))
    with pytest.raises(ConfigError, match="name"):
        m.declare_parameter("d.e", 1.0)


def test_unknown_parameter_suggests_close_names():
    m = Column()
    with pytest.raises(ConfigError, match=r"did you mean 'bio\.rmax'"):
        m.get_parameter_value("bio.rmx")
    with pytest.raises(ConfigError, match=r"valid: kappa, offset, bio\.rmax, bio\.alpha"):
        m.set_parameter_value("zzz", 1.0)


def test_module_conversions_keep_parameters():
    m = Column()
    m.select_free(["kappa"])
    m = m.double()
    assert m.param("kappa").dtype == D and m.params.raw["kappa"].requires_grad
    sd = m.state_dict()
    m2 = Column().double()
    m2.load_state_dict(sd)
    assert float(m2.param("kappa").detach()) == float(m.param("kappa").detach())
