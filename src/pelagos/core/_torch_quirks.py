"""Work-arounds for warnings that come from inside PyTorch, not from pelagos.

The first forward-mode derivative of a process (``torch.autograd.forward_ad.make_dual``, ``torch.func.jvp``,
``jacfwd``) imports ``torch._decomp.decompositions_for_jvp``, a module of torch itself that still compiles its
decompositions with ``torch.jit.script`` and so emits one ``DeprecationWarning`` ("`torch.jit.script` is
deprecated") per decomposition — 18 with torch 2.13, 36 in a two-worker test run. pelagos never calls
``torch.jit.script``; before its own forward-mode derivatives (Gauss–Newton Jacobians, ``check_jvp_vjp``)
:func:`load_jvp_decompositions` imports that module once with exactly this warning silenced (nothing else
is filtered, and nothing changes numerically: torch would import the same module at the same point anyway).

It also installs :func:`fast_zero_tangents`: in forward mode an input without a tangent (a constant, a
forcing field, a fixed parameter) gets a "zero tensor" as its tangent, and with torch 2.13 arithmetic on zero
tensors runs through torch's Python reference implementations (≈ 0.3–1 ms per ``mul``/``add`` against ≈ 2 µs):
a Gauss–Newton Jacobian of the water column cost 7–8 forward runs instead of ≈ 1.5.

:func:`jvp_within_dual_level` lets a ``torch.func.jvp`` (the compiled column step's forward mode,
:class:`pelagos.column.compiled.CompiledJvpStep`) run inside an open ``forward_ad.dual_level``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

_loaded = False


_zero_lib = None


def _real(a: object) -> object:
    import torch

    if torch.is_tensor(a) and a._is_zerotensor():
        return torch.zeros(a.shape, dtype=a.dtype, device=a.device)
    return a


def fast_zero_tangents() -> None:
    """Run ``mul``/``add``/``sub``/``div`` on torch's zero tensors as ordinary tensor arithmetic.

    The zero tensors (``torch._efficientzerotensor``) torch creates for missing tangents are materialised as
    zeros and the ordinary kernel runs; the values are the same (``0 · x``, ``0 + x`` in IEEE arithmetic),
    only the torch 2.13 fallback through its Python reference kernels is skipped. Installed once per process.
    """
    global _zero_lib
    if _zero_lib is not None:
        return
    import torch

    def binary(op):
        def kernel(a, b, **kw):
            return op(_real(a), _real(b), **kw)

        return kernel

    lib = torch.library.Library("aten", "IMPL")  # kernels for torch's own ZeroTensor dispatch key
    with warnings.catch_warnings():  # torch says once that it replaces its kernel: that is the point here
        warnings.filterwarnings("ignore", message=r"(?s).*Overriding a previously registered kernel")
        for name, op in (("mul.Tensor", torch.mul), ("add.Tensor", torch.add), ("sub.Tensor", torch.sub),
                         ("div.Tensor", torch.div)):  # fmt: skip
            lib.impl(name, binary(op), "ZeroTensor")
    _zero_lib = lib


def load_jvp_decompositions() -> None:
    """Import torch's forward-mode decompositions now, without torch's own ``torch.jit.script`` warnings,
    and install :func:`fast_zero_tangents`."""
    global _loaded
    if _loaded:
        return
    fast_zero_tangents()
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning
        )
        with contextlib.suppress(ImportError):  # a torch without this private module: nothing to silence
            from torch._decomp import decompositions_for_jvp  # noqa: F401
    _loaded = True


@contextlib.contextmanager
def jvp_within_dual_level() -> Iterator[bool]:
    """Let ``torch.func.jvp`` run (or be traced by ``torch.compile``) inside an open forward-AD level.

    Autograd has one forward-mode level: ``torch.func.jvp`` enters it when it is the outermost forward-mode
    transform (its counter ``torch._functorch.eager_transforms.JVP_NESTING`` is 0) and raises "Nested forward
    mode AD is not supported" if a ``dual_level`` is already open; nested inside another ``jvp`` it reuses
    the open level. This context counts the open ``dual_level`` as that outer ``jvp``, so a ``jvp`` of plain
    (primal, tangent) tensors — what the compiled column step's forward mode traces — reuses the level instead
    of opening a second one; it touches no dual tensor of the caller. Yields ``False`` (and changes nothing)
    on a torch without that counter: the caller then keeps its plain forward-mode path.
    """
    try:
        from torch._functorch import eager_transforms as et
    except ImportError:  # pragma: no cover - a torch without functorch's eager transforms
        yield False
        return
    if not isinstance(getattr(et, "JVP_NESTING", None), int):  # pragma: no cover - another torch layout
        yield False
        return
    et.JVP_NESTING += 1
    try:
        yield True
    finally:
        et.JVP_NESTING -= 1
