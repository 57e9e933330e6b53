"""`make demo`: the pelagos demo. For now the core demo (diffusivity recovery through an implicit diffusion
model, see examples/core_diffusivity_demo.py); the water-column flagship will take its place."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core_diffusivity_demo import main

if __name__ == "__main__":
    main()
