"""Generate the small pyqg reference fixtures used by ``tests/test_qg*.py``.

Runs with the *real* pyqg 0.7.2 in a side virtual environment (pyqg is not a pelagos dependency)::

    python3 -m venv /work/venvs/pyqg
    /work/venvs/pyqg/bin/pip install "numpy<2" "cython<3" setuptools setuptools_scm wheel pyfftw
    SETUPTOOLS_SCM_PRETEND_VERSION=0.7.2 /work/venvs/pyqg/bin/pip install --no-build-isolation pyqg==0.7.2
    /work/venvs/pyqg/bin/python scripts/make_qg_fixtures.py

Writes ``tests/fixtures/qg/*.npz`` (float64, a few hundred KB in all).
Every case records its initial q and the
model settings, so the tests rebuild the same run in pelagos and compare.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pyqg
from pyqg import parameterizations as pp

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "qg"
YEAR = 360 * 86400.0


def seeded_q(seed: int, nz: int, n: int, scale: float = 1e-6) -> np.ndarray:
    """pyqg-like random initial PV (upper layer only for two layers), from a seeded legacy RNG."""
    rng = np.random.RandomState(seed)
    q = np.zeros((nz, n, n))
    q[0] = 1e-7 * rng.rand(n, n) + scale * rng.rand(1, n)
    return q


def save(name: str, settings: dict, **arrays: np.ndarray) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / f"{name}.npz", settings=json.dumps(settings), **arrays)
    print(f"{name}: {sum(a.nbytes for a in arrays.values()) / 1024:.0f} KB raw", file=sys.stderr)


def run_steps(m, n: int) -> None:
    for _ in range(n):
        m._step_forward()


def two_layer_trajectory() -> None:
    """nx=32 and nx=64, dt=3600, 1000 steps from the same q0; q stored at a few step counts."""
    for nx, keep in ((32, (1, 2, 3, 10, 100, 1000)), (64, (1000,))):
        settings = dict(nx=nx, dt=3600.0)
        m = pyqg.QGModel(**settings, log_level=0)
        m.diagnostics = {}
        q0 = seeded_q(nx, 2, nx)
        m.set_q(q0.copy())
        out = {"q0": q0}
        for n in range(1, max(keep) + 1):
            m._step_forward()
            if n in keep:
                out[f"q{n}"] = m.q.copy()
        save(f"two_layer_nx{nx}", settings, **out)


def spun_up() -> None:
    """nx=32 spun up 3 years (dt 7200): 10 steps, diagnostics at the 10th step, closure outputs."""
    settings = dict(nx=32, dt=7200.0, rek=5.787e-7, beta=1.5e-11, U1=0.03, U2=0.005, delta=0.3, rd=14000.0)
    m = pyqg.QGModel(**settings, log_level=0)
    m.diagnostics = {}
    m.set_q(seeded_q(7, 2, 32))
    run_steps(m, int(3 * YEAR / settings["dt"]))
    q_spun = m.q.copy()

    # a fresh model from the spun-up q: 10 steps (FE, AB2, AB3 ...), diagnostics captured in step 10
    m2 = pyqg.QGModel(**settings, log_level=0)
    diags = dict(m2.diagnostics)
    m2.diagnostics = {}
    m2.set_q(q_spun.copy())
    captured = {}
    orig = m2._calc_diagnostics

    def capture():
        if m2.tc == 9:
            m2._calc_derived_fields()
            for name, d in diags.items():
                captured["diag_" + name] = np.asarray(d["function"](m2), dtype=np.float64)
        orig()

    m2._calc_diagnostics = capture
    run_steps(m2, 10)
    out = {"q_spun": q_spun, "q10": m2.q.copy(), **captured}

    # parameterization outputs at the spun-up state
    m3 = pyqg.QGModel(**settings, log_level=0)
    m3.diagnostics = {}
    m3.set_q(q_spun.copy())
    m3._invert()
    du, dv = pp.Smagorinsky(constant=0.1)(m3)
    out["smag_du"], out["smag_dv"] = du, dv
    out["bb_dq"] = pp.BackscatterBiharmonic(smag_constant=0.08, back_constant=0.99)(m3)
    du, dv = pp.ZannaBolton2020()(m3)
    out["zb_du"], out["zb_dv"] = du, dv

    # 10 steps with a composed q-parameterization inside the model
    param = pp.BackscatterBiharmonic() + 0.5 * pp.BackscatterBiharmonic(smag_constant=0.1, back_constant=0.5)
    m4 = pyqg.QGModel(**settings, log_level=0, q_parameterization=param)
    m4.diagnostics = {}
    m4.set_q(q_spun.copy())
    run_steps(m4, 10)
    out["q10_bb"] = m4.q.copy()
    m5 = pyqg.QGModel(**settings, log_level=0, uv_parameterization=pp.Smagorinsky(constant=0.15))
    m5.diagnostics = {}
    m5.set_q(q_spun.copy())
    run_steps(m5, 10)
    out["q10_smag"] = m5.q.copy()
    save("two_layer_spun", settings, **out)


def layered_and_bt() -> None:
    settings = dict(nx=32, nz=3, dt=3600.0)
    m = pyqg.LayeredModel(**settings, log_level=0)
    m.diagnostics = {}
    rng = np.random.RandomState(3)
    q0 = 1e-7 * rng.randn(3, 32, 32)
    m.set_q(q0.copy())
    run_steps(m, 200)
    save(
        "layered_nz3",
        {
            **settings,
            "H": m.Hi.tolist(),
            "rho": m.rhoi.tolist(),
            "U": m.Ubg.tolist(),
            "f": float(m.f),
            "g": float(m.g),
        },
        q0=q0,
        q200=m.q.copy(),
    )

    settings = dict(nx=32, dt=3600.0, beta=1e-11, rek=1e-7, L=2e6)
    m = pyqg.BTModel(**settings, log_level=0)
    m.diagnostics = {}
    rng = np.random.RandomState(4)
    q0 = 1e-6 * rng.randn(1, 32, 32)
    m.set_q(q0.copy())
    run_steps(m, 200)
    save("barotropic", settings, q0=q0, q200=m.q.copy())


if __name__ == "__main__":
    print("pyqg", pyqg.__version__, file=sys.stderr)
    two_layer_trajectory()
    spun_up()
    layered_and_bt()
