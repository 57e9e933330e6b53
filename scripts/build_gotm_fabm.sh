#!/usr/bin/env bash
# Side build of GOTM + FABM (the reference for pelagos's ECOSMO), under <repo>/.side/gotm (git-ignored).
#
#   scripts/build_gotm_fabm.sh [MIRROR]
#
# Needs gfortran, cmake, make and netCDF-Fortran (Debian: apt-get install gfortran cmake libnetcdff-dev).
# Sources: bare git mirrors of the public repositories (default: /work/.mirror/<owner>+<name>/repo, as made by
# the session's fetch tool; any directory with the same layout, or clones of GitHub, work):
#   gotm-model/code (GOTM 84f8d8e) with its pinned submodules fabm-model/fabm (980a0eaa),
#   BoldingBruggeman/flexout (+ BoldingBruggeman/fortran-yaml), BoldingBruggeman/stim, TEOS-10/GSW-Fortran,
#   CVMix/CVMix-src; the case from gotm-model/cases (a5d5076) nns_annual.
# Result: .side/gotm/build/gotm (the executable) and .side/gotm/cases/nns_annual (case directory).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
mirror="${1:-/work/.mirror}"
physics="${PHYSICS:-$here/../shared/data/gotm_nns_annual/physics_hourly.nc}"
side="$here/.side/gotm"
GOTM_COMMIT=84f8d8e9
CASES_COMMIT=a5d5076
mkdir -p "$side"
cd "$side"

checkout() {  # bare-dir commit dest
  local bare="$1" commit="$2" dest="$3"
  rm -rf "$dest"; mkdir -p "$dest"
  git --git-dir="$bare" archive "$commit" | tar -x -C "$dest"
}
sub() {  # submodule path in a tree, its commit
  git --git-dir="$1" ls-tree "$2" "$3" | awk '{print $3}'
}

g="$mirror/gotm-model+code/repo"
checkout "$g" "$GOTM_COMMIT" src
for pair in "extern/fabm fabm-model+fabm" "extern/flexout BoldingBruggeman+flexout" \
            "extern/stim BoldingBruggeman+stim" "extern/gsw TEOS-10+GSW-Fortran" \
            "extern/CVMix-src CVMix+CVMix-src"; do
  set -- $pair
  c="$(sub "$g" "$GOTM_COMMIT" "$1")"
  echo "$1 @ $c"
  if [ "$1" = extern/gsw ]; then
    # the mirror lacks GSW's large generated SAAR atlas (and a test data file): take the rest, then put in a
    # one-site SAAR recovered from GOTM's own output of this case (scripts/gsw_site_saar.py explains)
    rm -rf "src/$1"; mkdir -p "src/$1"
    git --git-dir="$mirror/$2/repo" ls-tree -r "$c" | while read -r mode type blob path; do
      case "$path" in modules/gsw_mod_saar_data.f90|test/gsw_data_v3_0.nc) continue ;; esac
      mkdir -p "src/$1/$(dirname "$path")"
      git --git-dir="$mirror/$2/repo" cat-file blob "$blob" > "src/$1/$path"
    done
    "${PYTHON:-python3}" "$here/scripts/gsw_site_saar.py" "$physics" site_saar
    cp site_saar/gsw_mod_saar_data.f90 "src/$1/modules/"
    cp site_saar/gsw_saar.f90 "src/$1/toolbox/"
  else
    checkout "$mirror/$2/repo" "$c" "src/$1"
  fi
done
c="$(sub "$mirror/BoldingBruggeman+flexout/repo" "$(sub "$g" "$GOTM_COMMIT" extern/flexout)" extern/fortran-yaml)"
# flexout pins fortran-yaml d10f56b (Nov 2025); if the mirror's snapshot predates it, take the newest it has
# (a YAML reader: no effect on the numbers)
git --git-dir="$mirror/BoldingBruggeman+fortran-yaml/repo" cat-file -e "$c^{commit}" 2>/dev/null || c=HEAD
echo "extern/flexout/extern/fortran-yaml @ $c"
checkout "$mirror/BoldingBruggeman+fortran-yaml/repo" "$c" src/extern/flexout/extern/fortran-yaml

mkdir -p build
cmake -S src -B build -DCMAKE_BUILD_TYPE=Release -DGOTM_USE_FABM=ON -DCMAKE_Fortran_COMPILER=gfortran > build.log
make -C build -j2 gotm_exe >> build.log
rm -rf cases; mkdir -p cases
git --git-dir="$mirror/gotm-model+cases/repo" archive "$CASES_COMMIT" nns_annual | tar -x -C cases
echo "built: $side/build/gotm; case: $side/cases/nns_annual"
