"""Switch FABM on in a copy of GOTM's nns_annual ``gotm.yaml`` and set its outputs (the reference runs'
one case editor: ``run_gotm_fabm_npzd.sh`` and ``run_gotm_fabm_ecosmo.sh`` call it).

    python scripts/gotm_fabm_case.py gotm.yaml --fabm-yaml fabm.yaml --split-factor 1 --outputs npzd

FABM numerics are pelagos's column defaults (forward Euler, P2_PDM sinking, cnpar 1, no feedbacks, no repair).
``--co2`` adds a constant-zero atmospheric CO2 input (pml/carbonate in ECOSMO's yaml needs one; it does not
feed back on ECOSMO). ``--outputs``: ``npzd`` = the four NPZD variables daily (small, so output does not
dominate a timing); ``ecosmo`` = the physics pelagos is driven with, hourly, plus every FABM variable
6-hourly.
"""

from __future__ import annotations

import argparse

FABM = """
fabm:
   use: true
   yaml_file: {yaml}
   freshwater_impact: true
   feedbacks:
      shade: false
      albedo: false
      surface_drag: false
   repair_state: false
   numerics:
      ode_method: FE
      split_factor: {split}
      w_adv_discr: P2_PDM
      cnpar: 1.0
   input:"""

CO2 = """
      mole_fraction_of_carbon_dioxide_in_air:
         method: constant
         constant_value: 0.0"""

OUTPUTS = {
    "npzd": """
output:
   npzd:
      time_unit: day
      time_step: 1
      time_method: point
      variables:
      - source: npzd_nut
      - source: npzd_phy
      - source: npzd_zoo
      - source: npzd_det
""",
    "ecosmo": """
output:
   physics:
      time_unit: hour
      time_step: 1
      time_method: point
      variables:
      - source: h
      - source: z
      - source: zi
      - source: temp
      - source: salt
      - source: salt_p
      - source: nuh
      - source: I_0
      - source: taub
   ecosmo:
      time_unit: hour
      time_step: 6
      time_method: point
      variables:
      - source: /*
""",
}


def edit(text: str, *, fabm_yaml: str, split_factor: int, co2: bool, outputs: str) -> str:
    """``text`` of gotm.yaml with its ``fabm:`` head replaced and its ``output:`` section replaced."""
    i = text.index("\nfabm:")
    j = text.index("\n", text.index("   input:", i))  # end of the fabm block's first lines we replace
    text = text[:i] + FABM.format(yaml=fabm_yaml, split=split_factor) + (CO2 if co2 else "") + text[j:]
    k = text.index("\noutput:")
    return text[:k] + OUTPUTS[outputs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gotm_yaml")
    ap.add_argument("--fabm-yaml", required=True, help="fabm.yaml name in the run directory")
    ap.add_argument("--split-factor", type=int, default=1)
    ap.add_argument("--co2", action="store_true")
    ap.add_argument("--outputs", choices=sorted(OUTPUTS), required=True)
    a = ap.parse_args()
    with open(a.gotm_yaml) as f:
        text = f.read()
    text = edit(text, fabm_yaml=a.fabm_yaml, split_factor=a.split_factor, co2=a.co2, outputs=a.outputs)
    with open(a.gotm_yaml, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
