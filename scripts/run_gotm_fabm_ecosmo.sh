#!/usr/bin/env bash
# Run GOTM+FABM (built by scripts/build_gotm_fabm.sh) on GOTM's nns_annual case with FABM's ECOSMO test
# configuration: the reference for pelagos's ECOSMO (docs/ecosmo.md "Against GOTM+FABM").
#
#   scripts/run_gotm_fabm_ecosmo.sh [FABM_YAML]      (default: ../shared/data/fabm/fabm-nersc-ecosmo.yaml)
#
# The case's gotm.yaml gets: fabm use: true, yaml_file: the ECOSMO fabm.yaml, numerics split_factor: 2 (two
# 1800 s Euler source substeps per hourly step; with one, resuspension drives sed1 negative and GOTM stops),
# and two outputs: physics.nc (hourly, the physics pelagos is driven with) and ecosmo.nc (6-hourly, all of
# FABM's variables); atmospheric CO2 (for pml/carbonate, which does not feed back on ECOSMO) is 0. Result in .side/gotm/run_ecosmo/; wall time in .side/gotm/run_ecosmo/wall_seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
side="$here/.side/gotm"
yaml="${1:-$here/../shared/data/fabm/fabm-nersc-ecosmo.yaml}"
run="$side/run_ecosmo"
rm -rf "$run"; cp -r "$side/cases/nns_annual" "$run"
cp "$yaml" "$run/fabm-ecosmo.yaml"
cd "$run"
"${PYTHON:-python3}" - <<'PY'
import re
t = open("gotm.yaml").read()
i = t.index("\nfabm:")
j = t.index("\n", t.index("   input:", i))  # end of the fabm block's first lines we replace
fabm = """
fabm:
   use: true
   yaml_file: fabm-ecosmo.yaml
   freshwater_impact: true
   feedbacks:
      shade: false
      albedo: false
      surface_drag: false
   repair_state: false
   numerics:
      ode_method: FE
      split_factor: 2
      w_adv_discr: P2_PDM
      cnpar: 1.0
   input:
      mole_fraction_of_carbon_dioxide_in_air:   # pml/carbonate needs it; no feedback on ECOSMO
         method: constant
         constant_value: 0.0"""
t = t[:i] + fabm + t[j:]
k = t.index("\noutput:")
t = t[:k] + """
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
"""
open("gotm.yaml", "w").write(t)
PY
start=$(date +%s.%N)
"$side/build/gotm" > gotm.log 2>&1
end=$(date +%s.%N)
echo "$end - $start" | bc > wall_seconds
echo "GOTM+FABM ECOSMO year: $(cat wall_seconds) s wall; output in $run"
