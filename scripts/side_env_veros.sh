#!/usr/bin/env bash
# Side environment with the Veros ocean model (reference only, never imported by pelagos):
#   .side/veros  =  veros 1.7.0 + jax (CPU).
# Usage (from the repository root):  bash scripts/side_env_veros.sh
# Then:  .side/veros/bin/python scripts/veros_reference.py --help
# Paths are relative to the repository root; `.side/` is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=.side/veros
PY=${PYTHON:-python3}
if [ ! -x "$ENV/bin/python" ]; then
    "$PY" -m venv "$ENV"
fi
"$ENV/bin/python" -m pip install -q --upgrade pip setuptools wheel cython
# veros 1.7.0 ships as an sdist (a Cython extension for the tridiagonal solver is built on install);
# "veros[jax]" pulls jax/jaxlib for the CPU.
"$ENV/bin/python" -m pip install -q "veros[jax]==1.7.0"
# quick check: the acc_basic setup imports and sets up with the jax backend
VEROS_BACKEND=jax VEROS_LINEAR_SOLVER=scipy_jax VEROS_DISKLESS_MODE=1 VEROS_LOGLEVEL=warning \
    "$ENV/bin/python" - <<'PYEOF'
import jax
jax.config.update("jax_enable_x64", True)
import veros
from veros.setups.acc_basic import ACCBasicSetup
sim = ACCBasicSetup(override=dict(runlen=2 * 43200.0))
sim.setup()
print("veros", veros.__version__, "jax", jax.__version__, "acc_basic set up:", sim.state.settings.nx,
      sim.state.settings.ny, sim.state.settings.nz)
PYEOF
