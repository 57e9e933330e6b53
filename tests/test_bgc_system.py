"""BGCSystem: global names, couplings (state, constant, standard variable), boundary fluxes, conservation."""

import pytest
import torch

from pelagos.bgc import BGCModel, BGCSystem
from pelagos.bgc.box import BoxModel, StepForcing
from pelagos.core.errors import ConfigError, ForcingError
from pelagos.core.rollout import rollout


class Oxygen(BGCModel):
    """Oxygen consumed in the water (first order), air-sea exchange at the surface, a sediment pool."""

    fabm_name = "test/oxygen"

    def __init__(self):
        super().__init__()
        self.register_parameter("k", 0.1, "d-1", scale_factor=1 / 86400, minimum=0.0, maximum=10.0)
        self.register_parameter("kw", 5.0, "m d-1", scale_factor=1 / 86400, minimum=0.0, maximum=100.0)
        self.register_parameter("o2_sat", 300.0, "mmol m-3", minimum=0.0, maximum=1000.0)
        tot = {"total_oxygen": 1.0}
        self.register_state_variable(
            "o2", "mmol m-3", "oxygen", initial_value=250.0, minimum=0.0, conserved=tot
        )
        self.register_state_variable(
            "sed", "mmol m-2", "sediment O2 debt", initial_value=10.0, domain="bottom", conserved=tot
        )
        self.register_state_dependency("sink", "mmol m-3", "where consumed O2 goes")
        self.register_dependency("temp", "temperature")

    def do(self, s, env):
        r = self.p("k", s["o2"].ndim) * s["o2"] * (1 + 0.0 * env["temperature"])
        return {"o2": -r, "sink": r}, {"resp": r}

    def do_surface(self, s, env):
        return {"o2": self.p("kw") * (self.p("o2_sat") - s["o2"])}, {}

    def do_bottom(self, s, env):
        f = 1e-6 * s["o2"]  # per m2 per s out of the bottom cell into the sediment pool
        return {"o2": -f, "sed": f}, {}


class Pool(BGCModel):
    fabm_name = "test/pool"

    def __init__(self):
        super().__init__()
        self.register_state_variable("c", "mmol m-3", initial_value=0.0, conserved={"total_oxygen": 1.0})


def make(couple="pool/c"):
    return BGCSystem({"ox": Oxygen(), "pool": Pool()}, {"ox/sink": couple}).double()


def test_global_names_domains_and_required_env():
    s = make()
    assert s.interior_names == ["ox_o2", "pool_c"] and s.bottom_names == ["ox_sed"] and s.surface_names == []
    assert s.required_env == {"temperature": ("interior", "degC")}
    st = s.initial_state((3,), nz=4, dtype=torch.float64)
    assert st["ox_o2"].shape == (3, 4) and st["ox_sed"].shape == (3,)
    assert [v.posconc for v in s.variables] == [True, True, True]
    assert "ox.k" in s.parameter_names()


def test_sources_on_state_dependency_go_to_the_linked_variable_and_conserve():
    s = make()
    st = s.initial_state((2,), nz=3, dtype=torch.float64)
    env = {"temperature": torch.full((2, 3), 10.0, dtype=torch.float64)}
    rates, diags = s.interior_sources(st, env)
    torch.testing.assert_close(rates["pool_c"], -rates["ox_o2"])
    assert "ox_resp" in diags
    # constant coupling: the consumed oxygen leaves the system
    s2 = make(couple=5.0)
    r2, _ = s2.interior_sources(st, env)
    assert float(r2["pool_c"].abs().max()) == 0.0 and float(r2["ox_o2"].abs().max()) > 0


def test_surface_and_bottom_fluxes_and_column_totals():
    s = make()
    st = s.initial_state((2,), nz=3, dtype=torch.float64)
    top = {k: (v[..., -1] if k in s.interior_names else v) for k, v in st.items()}
    bot = {k: (v[..., 0] if k in s.interior_names else v) for k, v in st.items()}
    fs, _ = s.surface_fluxes(top, {})
    fb, _ = s.bottom_fluxes(bot, {})
    assert float(fs["ox_o2"][0]) == pytest.approx(5.0 / 86400 * 50.0)
    torch.testing.assert_close(fb["ox_sed"], -fb["ox_o2"])
    h = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64).expand(2, 3)
    tot = s.conserved_quantities(st, h=h)["total_oxygen"]
    torch.testing.assert_close(tot, torch.full((2,), 250.0 * 6 + 10.0, dtype=torch.float64))
    per_cell = s.conserved_quantities(st)["total_oxygen"]
    assert per_cell.shape == (2, 3)


def test_box_divides_boundary_fluxes_by_depth_and_conserves_bottom_pool():
    s = BGCSystem({"ox": Oxygen(), "pool": Pool()}, {"ox/sink": "pool/c"}).double()
    with s.using({"ox.kw": torch.tensor(-50.0, dtype=torch.float64)}):  # kw ~ 0: no air-sea exchange
        box = BoxModel(s, depth=20.0, dt=3600.0, method="rk4")
        st0 = s.initial_state(())
        env = box.environment(
            st0, {"surface_downwelling_shortwave_flux": torch.tensor(0.0), "temperature": torch.tensor(5.0)}
        )
        rates, _ = box._rates(st0, env)
        assert float(rates["ox_o2"][0]) == pytest.approx(-0.1 / 86400 * 250.0 - 1e-6 * 250.0 / 20.0, rel=1e-6)
        assert float(rates["ox_sed"]) == pytest.approx(1e-6 * 250.0)
        f = {"surface_downwelling_shortwave_flux": torch.zeros(48), "temperature": torch.full((48,), 5.0)}
        box = BoxModel(s, StepForcing(f, 3600.0), depth=20.0, dt=3600.0, method="rk4")
        traj = rollout(box, st0, 48).states
    h = torch.full_like(traj["ox_o2"], 20.0)
    tot = s.conserved_quantities(traj, h=h)["total_oxygen"]
    assert float((tot - tot[0]).abs().max()) < 1e-10 * float(tot[0])


def test_dependency_coupled_to_another_standard_name_and_missing_env():
    s = BGCSystem({"ox": Oxygen(), "pool": Pool()}, {"ox/sink": "pool/c", "ox/temp": "depth"}).double()
    assert "depth" in s.required_env and "temperature" not in s.required_env
    st = s.initial_state((), nz=2, dtype=torch.float64)
    s.interior_sources(st, {"depth": torch.ones(2, dtype=torch.float64)})
    with pytest.raises(ForcingError, match=r"instance 'ox' .* needs 'depth'"):
        s.interior_sources(st, {"temperature": torch.ones(2, dtype=torch.float64)})


def test_configuration_errors():
    with pytest.raises(
        ConfigError, match=r"'sink' .* is not coupled; add coupling: \{sink: <instance>/<variable>\}"
    ):
        BGCSystem({"ox": Oxygen(), "pool": Pool()})
    with pytest.raises(ConfigError, match="target 'ox/sed' is a bottom variable, need interior"):
        BGCSystem({"ox": Oxygen()}, {"ox/sink": "ox/sed"})
    with pytest.raises(ConfigError, match="instance name 'models' is not usable"):
        BGCSystem({"models": Pool()})
    with pytest.raises(ConfigError, match=r"unknown instance 'oxx' \(did you mean 'ox'\?\)"):
        BGCSystem({"ox": Oxygen(), "pool": Pool()}, {"oxx/sink": "pool/c"})
    with pytest.raises(ConfigError, match=r"no parameter\(s\) 'K2'"):
        Oxygen.from_config({"K2": 1.0})
    m = Oxygen.from_config({"K": 0.0})  # case-insensitive (FABM); a value on its bound is accepted
    assert float(m.param("k")) == 0.0


def test_parameter_cache_follows_dtype_changes_and_new_values():
    from pelagos.bgc import NPZD

    m = NPZD()
    with torch.no_grad():
        a = m.p("rmax")
        assert m.p("rmax") is a  # cached without autograd
        m.double()
        assert m.p("rmax").dtype == torch.float64  # .double() swaps .data: the cache notices
        m.set_parameter_value("rmax", 2.0)
        assert float(m.p("rmax")) * 86400 == pytest.approx(2.0)
    r = m.p("rmax")
    assert r is not m.p("rmax")  # with autograd every call builds its own graph


def test_vmap_through_sources_and_integrators_equals_loop():
    from pelagos.bgc import packaged_yaml
    from pelagos.bgc.integrate import integrate_sources

    s = BGCSystem.from_yaml(packaged_yaml()).double()
    env = {
        "downwelling_photosynthetic_radiative_flux": torch.full((3,), 60.0, dtype=torch.float64),
        "surface_downwelling_photosynthetic_radiative_flux": torch.tensor(200.0, dtype=torch.float64),
    }

    def f(x):
        st = {k: x[i] for i, k in enumerate(s.interior_names)}
        out = integrate_sources(lambda q: s.interior_sources(q, env)[0], st, 3600.0, "rk2")
        out = integrate_sources(None, out, 3600.0, "mprk2", ppdd=lambda q: s.production_destruction(q, env))
        return torch.stack([out[k] for k in s.interior_names])

    X = torch.rand(5, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.1
    torch.testing.assert_close(torch.func.vmap(f)(X), torch.stack([f(x) for x in X]), rtol=1e-13, atol=1e-15)
