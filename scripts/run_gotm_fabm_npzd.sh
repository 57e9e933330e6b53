#!/usr/bin/env bash
# Time GOTM+FABM (built by scripts/build_gotm_fabm.sh) on GOTM's nns_annual case with FABM's gotm/npzd
# (../shared/data/fabm/fabm-gotm-npzd.yaml): the reference of benchmarks/column.py.
#
#   scripts/run_gotm_fabm_npzd.sh [RUN_DIR]        (default: a fresh temporary directory)
#
# The case is copied (the shared .side/gotm is never written to); gotm.yaml gets fabm use: true with the NPZD
# yaml, FABM numerics as pelagos's column defaults (Euler, split_factor 1, P2_PDM sinking, cnpar 1), and one
# daily output of the four NPZD variables (so that output does not dominate the timing). GOTM's k-epsilon
# turbulence and mean flow run as usual: the time includes the physics. Prints one JSON line:
# {"cpu_s": GOTM's own "CPU time" line, "user_s", "sys_s", "wall_s"} (from /usr/bin/time).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
side="$here/.side/gotm"
yaml="$here/../shared/data/fabm/fabm-gotm-npzd.yaml"
run="${1:-$(mktemp -d /tmp/gotm_npzd.XXXXXX)}"
rm -rf "$run"; cp -r "$side/cases/nns_annual" "$run"
cp "$yaml" "$run/fabm.yaml"
cd "$run"
"${PYTHON:-python3}" "$here/scripts/gotm_fabm_case.py" gotm.yaml --fabm-yaml fabm.yaml --split-factor 1 --outputs npzd
/usr/bin/time -f "%U %S %e" -o time.txt "$side/build/gotm" > gotm.log 2>&1
cpu=$(grep -E "^ *CPU time:" gotm.log | awk '{print $3}')
read -r user sys wall < time.txt
echo "{\"cpu_s\": $cpu, \"user_s\": $user, \"sys_s\": $sys, \"wall_s\": $wall, \"run_dir\": \"$run\"}"
