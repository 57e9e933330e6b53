"""fabm.yaml reader and registry: FABM's test-case files (the copies shipped in pelagos/data/fabm) load;
malformed files give errors naming it."""

import hashlib

import pytest
import torch

from pelagos.bgc import BGCSystem, load_system, register_model
from pelagos.bgc.base import BGCModel
from pelagos.bgc.fabm_yaml import packaged_yaml
from pelagos.bgc.registry import UnsupportedModelError, get_model_class
from pelagos.core.errors import ConfigError
from pelagos.core.paths import DATA_DIR

DATA = DATA_DIR / "fabm"  # copies of FABM's test-case files, shipped with the package (no ../shared needed)

# SHA-256 of the upstream files (fabm-model/fabm testcases/, commit b5704db, as in ../shared/data/fabm)
UPSTREAM_SHA256 = {
    "fabm-gotm-npzd.yaml": "891eace426fb15350bd218744c2184074ffdcf36ac525f8349890233a0e67f0d",
    "fabm-nersc-ecosmo.yaml": "f55deb64c99ddd241b373e9e80538b1221f8bb9430e88ee20a40769c96afe292",
    "fabm-examples-npzd-components.yaml": "e67a6a2d21cb69571f7bfa7b17a2bbfac7aa4fbe736f2d8815a73abc39caf5c4",
    "env_nns_annual.dat": "03d66ba16b248af5448642a678ea4fbfaa24889c1b5aed778276250946c83246",
}


def test_packaged_gotm_npzd_yaml_loads():
    system = BGCSystem.from_yaml(packaged_yaml())
    assert system.interior_names == ["npzd_nut", "npzd_phy", "npzd_zoo", "npzd_det"]
    assert system.initial_values() == {"npzd_nut": 4.5, "npzd_phy": 1e-15, "npzd_zoo": 1e-15, "npzd_det": 4.5}
    assert [v.initial_value for v in system.variables] == [4.5, 1e-15, 1e-15, 4.5]
    # yaml values differing from the FABM defaults: gmax 0.2 (default 0.5), alpha 1.35 (0.3)
    assert float(system.get_parameter_value("npzd.gmax")) == pytest.approx(0.2)
    assert float(system.get_parameter_value("npzd.alpha")) == pytest.approx(1.35)
    assert system.parameter_spec("npzd.gmax").default == 0.5
    assert set(system.required_env) == {
        "downwelling_photosynthetic_radiative_flux",
        "surface_downwelling_photosynthetic_radiative_flux",
    }


@pytest.mark.parametrize("name", sorted(UPSTREAM_SHA256))
def test_packaged_fabm_files_are_the_upstream_files(name):
    """Each shipped copy is the upstream file byte for byte once its provenance header ('# ' lines) is cut."""
    lines = (DATA / name).read_bytes().splitlines(keepends=True)
    n_header = next(i for i, line in enumerate(lines) if not line.startswith(b"# "))
    assert n_header >= 2  # the header says where the file comes from
    assert hashlib.sha256(b"".join(lines[n_header:])).hexdigest() == UPSTREAM_SHA256[name]
    assert packaged_yaml() == DATA / "fabm-gotm-npzd.yaml"


def test_components_yaml_loads_with_couplings():
    system = BGCSystem.from_yaml(DATA / "fabm-examples-npzd-components.yaml")
    assert system.interior_names == ["nut_c", "phy_c", "zoo_c", "det_c"]
    assert system._links["zoo"]["grazing_target"] == ("state", "phy_c")
    assert system._links["phy"]["mortality_target"] == ("state", "det_c")
    assert float(system.get_parameter_value("zoo.gmax")) == pytest.approx(0.2)
    st = system.initial_state((2,), nz=3, dtype=torch.float64)
    env = {
        "downwelling_photosynthetic_radiative_flux": torch.full((2, 3), 50.0, dtype=torch.float64),
        "surface_downwelling_photosynthetic_radiative_flux": torch.full((2,), 300.0, dtype=torch.float64),
    }
    rates, _ = system.interior_sources(st, env)
    assert float(sum(rates.values()).abs().max()) < 1e-20


def test_ecosmo_yaml_needs_carbonate_dropped():
    path = DATA / "fabm-nersc-ecosmo.yaml"
    with pytest.raises(UnsupportedModelError, match=r"pml/carbonate.*drop=\('CO2',\)"):
        BGCSystem.from_yaml(path)
    system = BGCSystem.from_yaml(path, drop=("co2",))
    assert [d[0] for d in system.dropped] == ["CO2"]
    assert system.light_model is not None and system.light_model.fabm_name == "gotm/light"
    assert float(system.get_parameter_value("light.a")) == pytest.approx(0.58)  # yaml writes "A"
    assert "ECO_no3" in system.interior_names and "ECO_sed1" in system.bottom_names
    assert system.initial_values()["ECO_no3"] == 1200.0
    same = BGCSystem.from_yaml(path, drop_unsupported=True)
    assert same.instance_names == system.instance_names


CASE = """
instances:
  npzd:
    model: gotm/npzd
    parameters:
      rmax: 1.5
    initialization:
      nut: 3.0
"""


def test_text_and_dict_sources_and_overrides():
    s = load_system(CASE, parameters={"npzd": {"gmax": 0.3}})
    assert float(s.get_parameter_value("npzd.rmax")) == pytest.approx(1.5)
    assert float(s.get_parameter_value("npzd.gmax")) == pytest.approx(0.3)
    assert s.initial_values()["npzd_nut"] == 3.0


@pytest.mark.parametrize(
    "text,pattern",
    [
        (
            CASE.replace("rmax: 1.5", "rmx: 1.5"),
            r"no parameter\(s\) 'rmx' \(did you mean 'rmax'\?\).*valid: p0, z0",
        ),
        (CASE.replace("gotm/npzd", "gotm/npdz"), r"unknown model 'gotm/npdz' \(did you mean 'gotm/npzd'\?\)"),
        (CASE.replace("    model: gotm/npzd\n", ""), r"instance 'npzd' has no 'model:' key"),
        (CASE.replace("nut: 3.0", "nutr: 3.0"), r"no state variable 'nutr' \(did you mean 'nut'\?\)"),
        (CASE.replace("instances:", "instance:"), r"unknown key 'instance' \(did you mean 'instances'\?\)"),
        (
            CASE.replace("    parameters:", "    parameter:"),
            r"unknown key 'parameter' \(did you mean 'parameters'\?\)",
        ),
        (CASE.replace("rmax: 1.5", "rmax: fast"), r"'rmax'.*must be a number"),
        (CASE.replace("rmax: 1.5", "rmax: -1.0"), r"'rmax' = -1 d-1 is below its lower bound"),
        (CASE + "    coupling:\n      dic: carb/c\n", r"unknown instance 'carb'"),
        (CASE + "    coupling:\n      dic: npzd/dic\n", r"no state variable 'dic'"),
        (CASE + "    coupling:\n      dicc: npzd/nut\n", r"no dependency 'dicc' \(did you mean 'dic'\?\)"),
        ("instances: {}\n", r"no instances"),
        (
            CASE + "require_initialization: true\n",
            r"no initial value is given for: npzd_phy, npzd_zoo, npzd_det",
        ),
    ],
)
def test_malformed_yaml_errors_name_the_problem(text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_system(text)


COMPONENTS = """
instances:
  nut:
    model: examples/npzd_nut
  det:
    model: examples/npzd_det
    coupling:
      mineralisation_target: {target}
"""


def test_coupling_forms_and_missing_required_coupling():
    a = load_system(COMPONENTS.format(target="nut/c"))
    b = load_system(COMPONENTS.format(target="nut_c"))  # FABM's global-name form
    assert a._links["det"] == b._links["det"] == {"mineralisation_target": ("state", "nut_c")}
    with pytest.raises(ConfigError, match=r"mineralisation_target.*is not coupled.*available: nut/c, det/c"):
        load_system(COMPONENTS.replace("    coupling:\n      mineralisation_target: {target}\n", ""))


def test_dropped_instance_couplings_follow_the_documented_rules():
    text = COMPONENTS.format(target="nut/c").replace(
        "  nut:\n    model: examples/npzd_nut\n",
        "  nut:\n    model: examples/npzd_nut\n    initialization:\n      c: 7.0\n",
    )
    # required coupling to a dropped instance with an initial value -> held at that value, with a warning
    with pytest.warns(UserWarning, match="held constant at its initial value 7"):
        s = load_system(text, drop=("nut",))
    assert s._links["det"]["mineralisation_target"] == ("const", 7.0)
    # an explicit constant wins
    s2 = load_system(text, drop=("nut",), couplings={"det/mineralisation_target": 1.0})
    assert s2._links["det"]["mineralisation_target"] == ("const", 1.0)
    # no value known -> error naming the coupling
    with pytest.raises(
        ConfigError, match=r"det/mineralisation_target is coupled to 'nut/c' of dropped instance"
    ):
        load_system(COMPONENTS.format(target="nut/c"), drop=("nut",))
    # use: false counts as dropped; unknown drop names are errors
    with pytest.raises(ConfigError, match="dropped instance 'nut' \\(use: false\\)"):
        load_system(
            COMPONENTS.format(target="nut/c").replace(
                "model: examples/npzd_nut", "model: examples/npzd_nut\n    use: false"
            )
        )
    with pytest.raises(ConfigError, match=r"drop: no instance 'nutt' \(did you mean 'nut'\?\)"):
        load_system(text, drop=("nutt",))


def test_unsupported_model_error_and_drop_unsupported():
    text = CASE + "  CO2:\n    model: pml/carbonate\n    parameters:\n      alk_param: false\n"
    with pytest.raises(
        UnsupportedModelError, match=r"'pml/carbonate' \(carbonate chemistry.*drop=\('CO2',\)"
    ):
        load_system(text)
    s = load_system(text, drop_unsupported=True)
    assert s.instance_names == ["npzd"] and s.dropped[0][:2] == ("CO2", "pml/carbonate")


def test_register_user_model_and_case_insensitive_parameters():
    class Tracer(BGCModel):
        def __init__(self):
            super().__init__()
            self.register_parameter("Decay", 0.1, "d-1", scale_factor=1 / 86400, minimum=0.0, maximum=10.0)
            self.register_state_variable("c", "mmol m-3", initial_value=1.0)

        def do(self, s, env):
            return {"c": -self.p("Decay", s["c"].ndim) * s["c"]}, {}

    register_model("test/tracer_yaml", Tracer, overwrite=True)
    assert get_model_class("test/tracer_yaml") is Tracer
    s = load_system("instances:\n  t:\n    model: test/tracer_yaml\n    parameters:\n      decay: 0.5\n")
    assert float(s.get_parameter_value("t.Decay")) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="already registered"):
        register_model("test/tracer_yaml", Tracer)


def test_dtype_option_stores_parameters_in_float64():
    s = load_system(CASE, dtype=torch.float64)
    assert s.get_parameter_value("npzd.rmax").dtype == torch.float64
    assert float(s.get_parameter_value("npzd.rmax")) == 1.5  # exact: no float32 rounding
    assert torch.get_default_dtype() == torch.float32


def test_dtype_option_never_touches_the_global_default_dtype(monkeypatch):
    """Parameters take their dtype where they are declared: torch's global default is not switched, not even
    for a moment (another thread could create tensors in between)."""
    calls = []
    monkeypatch.setattr(torch, "set_default_dtype", lambda d: calls.append(d))
    s = load_system(CASE, dtype=torch.float64)
    assert calls == [] and {p.dtype for p in s.parameters()} == {torch.float64}
