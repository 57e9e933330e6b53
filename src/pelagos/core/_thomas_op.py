"""Build and load the C++ registration of the tridiagonal operator (``_thomas_op.cpp``).

``pelagos::solve_tridiagonal`` and ``pelagos::solve_tridiagonal_adjoint`` get C++ CPU kernels (the C
Thomas kernels of :mod:`pelagos.core._thomas_c`, compiled from the same source with the same flags and
linked in) and the solve a C++ autograd kernel, registered with ``TORCH_LIBRARY``. The library is
compiled once with the system C and C++ compilers against the installed torch (about 10-30 s), cached on
disk by a hash of the sources, flags, compilers and torch version (:func:`pelagos.core._cbuild.
build_torch_library`), and loaded with ``torch.ops.load_library`` when :mod:`pelagos.core.tridiagonal`
is imported (the operator's schema must exist before anything can trace it). Eager calls then cost a
few microseconds of dispatch instead of a Python kernel, the backward runs without a Python autograd
node, and Inductor's C++ wrapper calls the operator through the dispatcher without Python.

If the build or the load fails (no C++ compiler, no torch headers, a compiler error), :func:`load`
warns once and returns ``None``: the operator is then registered from Python (``torch.library``), with
the same kernels through ``ctypes`` and the same results. ``PELAGOS_TRIDIAGONAL_OP=python`` chooses
that registration without trying the build (no warning).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from . import _thomas_c
from ._cbuild import build_torch_library, op_registered

ENV = "PELAGOS_TRIDIAGONAL_OP"
SOURCE = Path(__file__).with_name("_thomas_op.cpp")

_state: dict[str, object] = {}


def _build() -> Path:
    return build_torch_library(
        "thomas_op", _thomas_c._SOURCE, SOURCE.read_text(), defines=(f"PELAGOS_VBYTES={_thomas_c.VBYTES}",)
    )


def load() -> Path | None:
    """Load (building it first if needed) the C++ operator library; its path, or ``None`` if the Python
    registration is to be used (chosen by ``PELAGOS_TRIDIAGONAL_OP=python``, or the build/load failed:
    then one ``RuntimeWarning`` says why)."""
    if "path" in _state:
        return _state["path"]  # type: ignore[return-value]
    path = None
    if op_registered("pelagos::solve_tridiagonal"):
        # the schema exists already (a second copy of the library, or the Python registration): loading
        # would abort the process on the duplicate definition
        _state["error"] = "pelagos::solve_tridiagonal is already registered in this process"
    elif os.environ.get(ENV, "auto").lower() not in ("python", "torch"):
        try:
            path = _build()
            torch.ops.load_library(str(path))
        except Exception as exc:  # any failure -> the Python registration, reported once
            path = None
            _state["error"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                "pelagos: the C++ tridiagonal operator could not be built or loaded "
                f"({_state['error']}); torch.ops.pelagos.solve_tridiagonal is registered from Python "
                "instead (same kernels and results; about 15 µs more per call and a Python autograd node). "
                "Install a C++ compiler (or set CXX) for the C++ operator, or set "
                f"{ENV}=python to choose the Python registration without this warning.",
                RuntimeWarning,
                stacklevel=3,
            )
    _state["path"] = path
    return path


def build_error() -> str | None:
    """Why the C++ operator is not in use (``None`` if it is, or if the Python one was chosen)."""
    return _state.get("error")  # type: ignore[return-value]
