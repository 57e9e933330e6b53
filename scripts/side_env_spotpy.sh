#!/usr/bin/env bash
# Side environment with SPOTPY (MIT licence; Houska et al. 2015) for scripts/sceua_hbv.py: SCE-UA calibration of
# pelagos's own HBV, side by side with the gradient calibration of `pelagos calibrate`.
#
# SPOTPY is not a pelagos dependency: it lives in a virtual environment under .side/ (git-ignored). The side env
# holds spotpy only (pinned); numpy, scipy, torch and pelagos's own dependencies come from the project's
# environment through a .pth file, so nothing large is downloaded. Usage (from the repository root):
#     bash scripts/side_env_spotpy.sh [PYTHON]        # PYTHON: the project's python (default: python3)
#     PYTHONPATH=src .side/spotpy/bin/python scripts/sceua_hbv.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
ENV=.side/spotpy
SPOTPY_VERSION=1.6.7
"$PY" -m venv "$ENV"
"$ENV/bin/python" -m pip install --quiet --no-deps "spotpy==${SPOTPY_VERSION}"
PROJECT_SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SIDE_SITE=$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PROJECT_SITE" > "$SIDE_SITE/zz_project_site.pth"
"$ENV/bin/python" -c 'import spotpy, torch; print("spotpy", spotpy.__version__, "torch", torch.__version__)'
