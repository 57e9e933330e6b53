"""QG closures against pyqg, composition, neural closures, coarse-graining operators."""

import json
import math
import pathlib

import numpy as np
import pytest
import torch

from pelagos.core import ConfigError
from pelagos.qg import QGModel
from pelagos.qg.coarsen import Coarsener, lowres_like
from pelagos.qg.parameterizations import BackscatterBiharmonic, NeuralClosure, Smagorinsky, ZannaBolton2020

FIX = pathlib.Path(__file__).parent / "fixtures" / "qg"


def spun():
    d = np.load(FIX / "two_layer_spun.npz")
    s = json.loads(str(d["settings"]))
    return QGModel(**s), s, d


def rel(a, b):
    return float(np.abs(a.detach().numpy() - b).max() / np.abs(b).max())


def test_closures_match_pyqg_outputs():
    m, _, d = spun()
    f = m.flow(m.state_from_q(torch.tensor(d["q_spun"])[None]))
    du, dv = Smagorinsky(0.1)(f)
    assert rel(du[0], d["smag_du"]) < 1e-12 and rel(dv[0], d["smag_dv"]) < 1e-12
    assert rel(BackscatterBiharmonic()(f)[0], d["bb_dq"]) < 1e-12
    du, dv = ZannaBolton2020()(f)
    assert rel(du[0], d["zb_du"]) < 1e-12 and rel(dv[0], d["zb_dv"]) < 1e-12


@pytest.mark.parametrize(
    "closure,key",
    [
        (
            BackscatterBiharmonic() + 0.5 * BackscatterBiharmonic(smag_constant=0.1, back_constant=0.5),
            "q10_bb",
        ),
        (Smagorinsky(0.15), "q10_smag"),
    ],
)
def test_model_with_closure_matches_pyqg_10_steps(closure, key):
    _, s, d = spun()
    m = QGModel(**s, parameterization=closure)
    st = m.state_from_q(torch.tensor(d["q_spun"])[None])
    for _ in range(10):
        st = m.step(st)
    assert rel(st["q"][0], d[key]) < 1e-11
    assert rel(st["q"][0], d["q10"]) > 1e-3  # the closure matters


def test_composition_is_linear_and_mixes_kinds():
    m, _, d = spun()
    f = m.flow(m.state_from_q(torch.tensor(d["q_spun"])[None]))
    a, b = Smagorinsky(0.1), BackscatterBiharmonic()
    mix = 2.0 * a + b
    assert mix.kind == "mixed"
    ref = 2.0 * a.spectral_tendency(f) + b.spectral_tendency(f)
    assert torch.allclose(mix.spectral_tendency(f), ref, rtol=1e-13, atol=0)
    with pytest.raises(ConfigError, match="mix"):
        mix(f)
    s2 = a + Smagorinsky(0.2)
    du, _ = s2(f)
    assert torch.allclose(du, a(f)[0] + Smagorinsky(0.2)(f)[0])


def test_neural_closure_linear_net_equals_scaled_q_closure():
    _, s, d = spun()
    net = torch.nn.Conv2d(2, 2, 1, bias=False).double()
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 0] = net.weight[1, 1] = 1.0
    nc = NeuralClosure(net, inputs="q", kind="q", input_scale=1e-5, output_scale=-1e-12)  # dq = -1e-7 q
    m2 = QGModel(**s, parameterization=nc)
    st = m2.state_from_q(torch.tensor(d["q_spun"])[None])
    f = m2.tendency(st)
    ref = -1e-7 * m2.fft(st["q"])
    assert torch.allclose(f.dqh_param, ref, rtol=0, atol=1e-13 * float(ref.abs().max()))
    assert any(p is net.weight for p in m2.parameters())


def test_coarsen_band_limited_field_and_zero_forcing():
    hi = QGModel(nx=64, dt=3600.0)
    lo = lowres_like(hi, 32)
    assert lo.nx == 32 and float(lo.param("rek")) == float(hi.param("rek"))
    x, y = hi.grid.x, hi.grid.y
    L = hi.L
    q = 1e-6 * (
        torch.sin(2 * math.pi * 2 * x / L) * torch.cos(2 * math.pi * y / L) + torch.cos(2 * math.pi * x / L)
    )
    q = torch.stack([q, -0.3 * q])[None]
    xl, yl = lo.grid.x, lo.grid.y
    ql = 1e-6 * (
        torch.sin(2 * math.pi * 2 * xl / L) * torch.cos(2 * math.pi * yl / L)
        + torch.cos(2 * math.pi * xl / L)
    )
    for kind in ("spectral", "gaussian"):
        C = Coarsener(hi, lo, kind)
        out = C(q)
        if kind == "spectral":  # low modes pass the low-res filter unchanged
            assert torch.allclose(out[0, 0], ql, atol=1e-20, rtol=1e-12)
            _, Sq = C.subgrid_forcing(hi.state_from_q(q))
            assert float(Sq.abs().max()) < 1e-12 * float(hi.tendency(hi.state_from_q(q)).dqhdt.abs().max())
        else:
            assert float(out.abs().max()) < float(q.abs().max())
    B = Coarsener(hi, lo, "block")
    r = torch.arange(64.0, dtype=torch.float64)
    field = (r[:, None] + 2 * r[None, :]).expand(1, 2, 64, 64)
    blk = B(field)
    assert blk.shape == (1, 2, 32, 32) and float(blk[0, 0, 0, 0]) == (0 + 2 + 1 + 3) / 4
    # block mean of a linear field is its value at the coarse cell centre; same for the spectral operator
    # on a band-limited field (checked above), so both operators share the low-res grid
    assert torch.allclose(blk[0, 0], field[0, 0].reshape(32, 2, 32, 2).mean(dim=(1, 3)))


def test_subgrid_forcing_nonzero_for_turbulent_state_and_errors():
    hi = QGModel(nx=64, dt=3600.0)
    lo = lowres_like(hi, 16)
    q = 1e-6 * torch.randn(2, 2, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    qbar, Sq = Coarsener(hi, lo, "spectral").subgrid_forcing(hi.state_from_q(q))
    assert qbar.shape == Sq.shape == (2, 2, 16, 16)
    assert float(Sq.abs().max()) > 0
    with pytest.raises(ConfigError, match="ratio"):
        Coarsener(hi, lowres_like(hi, 24), "spectral")
    with pytest.raises(ConfigError, match="kind"):
        Coarsener(hi, lo, "median")
