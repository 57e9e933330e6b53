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
"${PYTHON:-python3}" "$here/scripts/gotm_fabm_case.py" gotm.yaml --fabm-yaml fabm-ecosmo.yaml --split-factor 2 --co2 --outputs ecosmo
start=$(date +%s.%N)
"$side/build/gotm" > gotm.log 2>&1
end=$(date +%s.%N)
echo "$end - $start" | bc > wall_seconds
echo "GOTM+FABM ECOSMO year: $(cat wall_seconds) s wall; output in $run"
