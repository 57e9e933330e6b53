"""`make demo`: the pelagos flagship — a 4D-Var twin experiment on the Northern North Sea NPZD water column
(examples/flagship_nns_twin.py, described in docs/flagship.md). The core demo (diffusivity recovery through an
implicit diffusion model) is still there: `python examples/core_diffusivity_demo.py`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flagship_nns_twin import main

if __name__ == "__main__":
    main(sys.argv[1:])
