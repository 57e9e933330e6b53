"""Work-arounds for warnings that come from inside PyTorch, not from pelagos.

The first forward-mode derivative of a process (``torch.autograd.forward_ad.make_dual``, ``torch.func.jvp``,
``jacfwd``) imports ``torch._decomp.decompositions_for_jvp``, a module of torch itself that still compiles its
decompositions with ``torch.jit.script`` and so emits one ``DeprecationWarning`` ("`torch.jit.script` is
deprecated") per decomposition — 18 with torch 2.13, 36 in a two-worker test run. pelagos never calls
``torch.jit.script``; before its own forward-mode derivatives (Gauss–Newton Jacobians, ``check_jvp_vjp``)
:func:`load_jvp_decompositions` imports that module once with exactly this warning silenced (nothing else
is filtered, and nothing changes numerically: torch would import the same module at the same point anyway).
"""

from __future__ import annotations

import contextlib
import warnings

_loaded = False


def load_jvp_decompositions() -> None:
    """Import torch's forward-mode decompositions now, without torch's own ``torch.jit.script`` warnings."""
    global _loaded
    if _loaded:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning
        )
        with contextlib.suppress(ImportError):  # a torch without this private module: nothing to silence
            from torch._decomp import decompositions_for_jvp  # noqa: F401
    _loaded = True
