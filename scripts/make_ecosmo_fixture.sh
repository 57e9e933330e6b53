#!/usr/bin/env bash
# GOTM+FABM runs behind tests/data/ecosmo/ (after scripts/build_gotm_fabm.sh and run_gotm_fabm_ecosmo.sh):
#   1. the ECOSMO case up to 1998-04-11 00:00 (day 100): GOTM's restart.nc then holds the full state in float64
#      (physics and every FABM variable);
#   2. from that restart, three days with hourly output (physics.nc, ecosmo.nc).
# Day 100 is chosen because every plankton state is then far above ECOSMO's anti-extinction thresholds
# (docs/ecosmo.md): no state sits within round-off of a switch, so the comparison tests the equations and
# numerics, not the bits of the arithmetic. scripts/make_ecosmo_fixture.py cuts the fixture from them.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
side="$here/.side/gotm"
base="$side/run_ecosmo"
a="$side/run_day100"; b="$side/run_day100_3d"
rm -rf "$a" "$b"
cp -r "$base" "$a"; rm -f "$a"/*.nc
sed -i 's/^   stop: .*/   stop: 1998-04-11 00:00:00/' "$a/gotm.yaml"
(cd "$a" && "$side/build/gotm" > gotm.log 2>&1)
cp -r "$base" "$b"; rm -f "$b"/*.nc
cp "$a/restart.nc" "$b/restart.nc"
sed -i 's/^   start: .*/   start: 1998-04-11 00:00:00/; s/^   stop: .*/   stop: 1998-04-14 00:00:00/' "$b/gotm.yaml"
sed -i 's/^   load: false/   load: true/' "$b/gotm.yaml"
sed -i 's/      time_step: 6/      time_step: 1/' "$b/gotm.yaml"
(cd "$b" && "$side/build/gotm" > gotm.log 2>&1)
echo "restart at day 100: $a/restart.nc; 3 days from it: $b"
