#!/usr/bin/env bash
# Side environment with MHPI's hydrodl2 (HBV 1.0 reference implementation) for scripts/make_hbv_fixtures.py.
#
# hydrodl2 is under the Penn State non-commercial licence: pelagos never imports, copies or depends on it; it is
# only *run* here, in a separate virtual environment under .side/ (git-ignored), to produce the small reference
# fixture tests/data/hydro/hbv_reference.npz that tests/test_hydro_hbv.py compares pelagos's HBV against.
#
# The side env holds hydrodl2 (pinned) and its two light dependencies; torch and numpy are taken from the
# project's own environment through a .pth file (hydrodl2 only needs plain torch), so nothing large is
# downloaded. Usage (from the repository root):
#     bash scripts/side_env_hbv_reference.sh [PYTHON]        # PYTHON: the project's python (default: python3)
#     .side/hbv_ref/bin/python scripts/make_hbv_fixtures.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
ENV=.side/hbv_ref
HYDRODL2_VERSION=1.4.0
"$PY" -m venv "$ENV"
"$ENV/bin/python" -m pip install --quiet --no-deps "hydrodl2==${HYDRODL2_VERSION}" tqdm platformdirs
# torch / numpy from the project environment (appended after the side env's own site-packages)
PROJECT_SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SIDE_SITE=$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PROJECT_SITE" > "$SIDE_SITE/zz_project_site.pth"
"$ENV/bin/python" -c 'import hydrodl2, torch; print("hydrodl2", hydrodl2.__version__ if hasattr(hydrodl2, "__version__") else "?", "torch", torch.__version__)'
