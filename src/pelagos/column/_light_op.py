"""Build and load ``pelagos::light_scan``, GOTM's light sum as a C++ operator (``_light_op.cpp``).

:func:`pelagos.column.light.gotm_light` adds the half-layer bio-extinctions from the surface down in
GOTM's order. Eagerly that is ``torch.cumsum`` over the flipped, interleaved halves; under
``torch.compile`` on CPU that cumsum is an aten call Inductor cannot fuse, which reads its reversed,
interleaved input one element at a time (≈ 0.6 ms of a 1024-column step, docs/bench_column.md). The
operator does the same additions in the same order with the same double accumulator, so the compiled light
equals the eager one to the bit; its backward is one forward cumsum (differentiable).

The library is built once per torch version and source (:func:`pelagos.core._cbuild.build_torch_library`,
cached on disk) when the compiled column step is first set up, and loaded with ``torch.ops.load_library``.
Without a C++ compiler the light keeps the cumsum (same results; the tridiagonal operator's build already
warns once about the missing compiler). ``PELAGOS_LIGHT_SCAN=aten`` chooses the cumsum without trying.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..core._cbuild import build_torch_library, op_registered

ENV = "PELAGOS_LIGHT_SCAN"
SOURCE = Path(__file__).with_name("_light_op.cpp")
_C_PART = "int pelagos_light_op_c(void) { return 1; }\n"  # the build takes a C part; this op has none

LOADED = False  # read by gotm_light under torch.compile (dynamo guards on it)
_state: dict[str, object] = {}


def load() -> bool:
    """Build (first time) and load the operator; whether ``torch.ops.pelagos.light_scan`` is usable on CPU.
    Never raises: a failure is kept in :func:`build_error` and the light keeps its cumsum."""
    global LOADED
    if "done" in _state:
        return LOADED
    _state["done"] = True
    if os.environ.get(ENV, "auto").lower() in ("aten", "torch", "off"):
        return False
    try:
        if not op_registered("pelagos::light_scan"):
            torch.ops.load_library(str(build_torch_library("light_op", _C_PART, SOURCE.read_text())))
        torch.library.register_fake("pelagos::light_scan", _fake, lib=_lib())
    except Exception as exc:  # no compiler, no headers, a compile error: the eager cumsum stays
        _state["error"] = f"{type(exc).__name__}: {exc}"
        return False
    LOADED = True
    return True


def build_error() -> str | None:
    """Why the operator is not in use (``None`` if it is, or was never tried)."""
    return _state.get("error")  # type: ignore[return-value]


def _lib() -> torch.library.Library:
    if "lib" not in _state:
        _state["lib"] = torch.library.Library("pelagos", "FRAGMENT")  # kept alive with the registration
    return _state["lib"]  # type: ignore[return-value]


def _fake(half: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return half.new_empty(half.shape), half.new_empty(half.shape)
