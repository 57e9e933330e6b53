"""The compiled column step: :meth:`ColumnModel.step` as one program built by ``torch.compile`` (Inductor).

Why: a column step is a few hundred small tensor operations (transport, light, the user's FABM-style
biology, the source integrator). For one column of 110 layers each operation costs microseconds of Python and
dispatch and nanoseconds of arithmetic; Inductor traces the step once (the biology included: any model written
against :class:`~pelagos.bgc.base.BGCModel`, not only the shipped ones) and fuses the elementwise work into a
few C++ loops. The forcing lookup, the time bookkeeping of running means and the sinking sub-step count stay
outside, in Python, and are handed in as inputs or constants, so the compiled program has no value-dependent
branch:

- forcing: the fields at ``t + dt`` (and ``nuh`` at ``t``) are sampled outside; the parameter scalings
  (``nuh_scale``, ``I0_scale``) are inside, so gradients to them flow;
- running means (FABM's temporal means): the sampling pattern of a step depends on the clock only; it is
  computed outside (:meth:`CompiledStep.mean_plans`) and is the same tuple of constants every hourly step;
- sinking: GOTM's per-column sub-step count is computed inside; the program loops a fixed number of times
  (``loop``, 1 at first) and returns the count the columns needed: when that is larger (faster sinking,
  thinner layers) the step is redone with the larger loop (one recompilation), so the result is always the
  plain step's;
- the tridiagonal solve is :func:`pelagos.core.tridiagonal.solve_tridiagonal`, which under ``torch.compile``
  is the custom operator ``pelagos::solve_tridiagonal`` (the compiled Thomas kernel, its fused adjoint as
  the backward): no graph break; the matrix is factorised once per column for all tracers.

Blocks of steps (:meth:`CompiledStep.block`, used by :meth:`ColumnModel.step_block` and so by the run loop):
``k`` steps in one compiled program (the loop unrolled by tracing), their forcing sampled in one call and
stacked, their running-mean plans handed in as a tuple of constants; optionally the outputs after every
step summed in float64 (interval means) and the outputs after the last. One call then pays the per-call
cost (guards, wrappers, forcing lookup) for ``k`` steps. Dynamo traces one step as a nested compile region
and stamps it out for the others (then inlines them: Inductor still gets one flat graph), so tracing costs
about one step whatever ``k``; Inductor's code generation and C++ compile still grow with ``k``
(docs/column_compiled.md). torch's ``scan`` higher-order op would compile once whatever ``k``, but Inductor
(torch 2.13) fails to lower it for this step.

Same operations as the plain step, so the same result up to the rounding of fused code (float64 agreement
over a model year is tested in tests/test_column_compiled.py). Gradients: AOTAutograd compiles the backward
of the same program. Forward mode (dual tensors of ``torch.autograd.forward_ad``) runs a compiled
``torch.func.jvp`` of the same program (:class:`CompiledJvpStep`, at the end of this file). Falls back to the
plain step, silently, inside ``torch.func`` transforms (vmap, jvp), and, with one warning, when no C++
compiler is found.

Cost: the first step of a run compiles (tens of seconds on a loaded 2-core machine; see
docs/bench_column.md); Inductor keeps compiled kernels in its on-disk cache (``TORCHINDUCTOR_CACHE_DIR``,
default under /tmp), so later runs of the same model and batch pay mostly the tracing.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import types
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch._functorch.config  # the activation budget of _program_config
from torch.utils._pytree import tree_structure, tree_unflatten

from ..core.errors import ConfigError, PelagosError, SolverError
from ..core.running_mean import running_mean_plan
from ..core.tridiagonal import solve_tridiagonal as _solve_tridiagonal

__all__ = [
    "CompiledStep",
    "compile_mode",
    "compiled_step",
    "cxx_available",
    "diffuse_implicit",
]

_MODES = {
    True: "on",
    False: "off",
    "true": "on",
    "on": "on",
    "yes": "on",
    "false": "off",
    "off": "off",
    "no": "off",
    "auto": "auto",
}
_warned_no_cxx = False
_COUNTER = itertools.count()
# Inductor options: a C++ wrapper (the kernel calls of a step are C++, not generated Python).
_OPTIONS: dict[str, Any] = {"cpp_wrapper": os.environ.get("PELAGOS_COLUMN_CPP_WRAPPER", "1") == "1"}


# AOTAutograd's split of a program that records a graph into forward and backward: with a budget of 0 the
# forward keeps only what the backward cannot recompute (the block's inputs, the solves' results) and the
# backward program recomputes the elementwise work, fused with it. One column, a 12-step block: 25 saved
# tensors (25 kB) instead of 514 (355 kB), forward with graph 62 instead of 104 µs/step, forward + backward
# 123 instead of 163 µs/step (docs/column_compiled.md, "What the backward keeps").
_ACTIVATION_BUDGET = float(os.environ.get("PELAGOS_COLUMN_ACTIVATION_BUDGET") or "0")


@contextlib.contextmanager
def _program_config(inline: bool) -> Iterator[None]:
    """Configuration read when a compiled program is built, set for its calls only (a direct set:
    ``config.patch`` costs ≈ 16 µs a call, this ≈ 4). ``inline``: the block's steps are traced once as a
    nested compile region, then inlined (``inline_invoke_subgraph``: Inductor sees one flat graph). The
    activation budget above is set for every call, with gradients or not: it changes only programs that
    record a graph, but AOTAutograd keys every program on it, and one key lets a run without gradients and
    one with them enabled share the cached inference programs."""
    dyn = torch._dynamo.config
    aot = torch._functorch.config
    old = dyn.inline_invoke_subgraph, aot.activation_memory_budget
    if inline:
        dyn.inline_invoke_subgraph = True
    aot.activation_memory_budget = _ACTIVATION_BUDGET
    try:
        yield
    finally:
        dyn.inline_invoke_subgraph, aot.activation_memory_budget = old


def compile_mode(value: bool | str) -> str:
    """``"on"``, ``"off"`` or ``"auto"`` from a ``compile`` option (bool or string)."""
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, bool | str):
        mode = _MODES.get(key)
        if mode is not None:
            return mode
    raise ConfigError(f"numerics.compile must be true, false or 'auto'; got {value!r}")


@functools.cache
def cxx_available() -> bool:
    """Whether Inductor can build CPU kernels here: a C++ compiler (``$CXX``, g++, c++ or clang++)."""
    names = [os.environ.get("CXX") or "", "g++", "c++", "clang++"]
    return any(n and shutil.which(n) for n in names)


def _plain_only(state: Mapping, model: Any) -> bool:
    """Calls the compiled step cannot take: torch.func transforms and forward-mode AD."""
    from torch._C._functorch import is_functorch_wrapped_tensor

    stores = model.__dict__.get("_param_stores")
    if stores is None:  # the stores of a model tree are fixed once built
        stores = model.__dict__["_param_stores"] = list(model._stores().values())
    leaves = [v for v in state.values() if torch.is_tensor(v)]
    leaves += [v for s in stores for v in s.overrides.values() if torch.is_tensor(v)]
    for v in leaves:
        if is_functorch_wrapped_tensor(v) or torch.autograd.forward_ad.unpack_dual(v).tangent is not None:
            return True
    return False


def compiled_step(model: Any, state: Mapping) -> CompiledStep | None:
    """The model's :class:`CompiledStep` if this call may use it, else ``None`` (plain step)."""
    global _warned_no_cxx
    if not cxx_available():
        if not _warned_no_cxx:
            warnings.warn(
                "pelagos column: numerics.compile is on but no C++ compiler (g++, c++, clang++ or $CXX) was "
                "found; running the plain (slower) step. Install one (e.g. apt-get install g++) to compile.",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_no_cxx = True
        model.compile_mode = "off"
        return None
    if _plain_only(state, model):
        return _compiled_jvp_step(model, state)  # forward-mode duals: the compiled jvp program, or None
    cs = model.__dict__.get("_compiled_step_obj")
    if cs is None:
        cs = model.__dict__["_compiled_step_obj"] = CompiledStep(model)
    return cs


def diffuse_implicit(a: torch.Tensor, c: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``A Y_new = Y`` for tracers ``Y`` (V, B, nz) with GOTM's cnpar = 1 matrix from ``a, c`` ((B or 1, nz),
    :func:`~pelagos.column.diffusion.diffusion_matrix`): the same rows as the plain step's solve, factorised
    once per column for all V tracers, or once for all columns when they share the matrix."""
    V, B, nz = Y.shape
    if a.ndim < 2 or a.shape[-2] == 1:
        # one matrix for all columns (physics shared by the columns): factorised once, the V·B tracer
        # profiles are its right-hand sides, solved a vector of them at a time, in place, no layout copies
        rows = [x.reshape(1, 1, nz) for x in (-a, 1.0 + a + c, -c)]
        rhs = Y.reshape(1, V * B, nz)
        if _TANGENT_SOLVE:
            return _solve_with_tangent(*rows, rhs).reshape(V, B, nz)
        return _solve_tridiagonal(*rows, rhs).reshape(V, B, nz)
    B = max(B, a.shape[-2])

    def col(x: torch.Tensor) -> torch.Tensor:
        return x.expand(B, nz).unsqueeze(1).contiguous()

    rhs = Y.expand(V, B, nz).transpose(0, 1).contiguous()
    if _TANGENT_SOLVE:  # the forward-mode program (CompiledJvpStep): a solve with a tangent
        return _solve_with_tangent(col(-a), col(1.0 + a + c), col(-c), rhs).transpose(0, 1)
    x = _solve_tridiagonal(col(-a), col(1.0 + a + c), col(-c), rhs)  # the custom op under compile
    return x.transpose(0, 1)


def _run_program(program: Any, *args: Any, inline: bool = False) -> Any:
    """``program(*args)`` under :func:`_program_config` (``inline``: a block's nested regions), with a failed
    tridiagonal solve raised as :class:`~pelagos.core.errors.SolverError`.
    The operator raises it (naming the failing input) in eager code, but Inductor's C++ wrapper only says that
    the operator call failed: an untyped ``RuntimeError`` that callers which reject a failed trial (line
    searches, Levenberg–Marquardt, ES-MDA members) would not recognise. Other errors pass through."""
    try:
        with _program_config(inline):
            return program(*args)
    except RuntimeError as err:
        if isinstance(err, PelagosError) or "pelagos::solve_tridiagonal" not in str(err):
            raise
        raise SolverError(
            "pelagos column (compiled step): the tridiagonal solve of the diffusion step failed (a "
            "non-finite solution: NaN or Inf in the state, the forcing or a parameter, or a step that blew "
            "up). Run the same step with numerics.compile: false (ColumnModel(compile=False)) for the "
            "message that names the input."
        ) from err


def _step_core(state: dict, raw: dict, plans: dict, loop: int) -> tuple[dict, Any]:
    m = _MODEL  # noqa: F821 - bound per model by _own_code
    return m._step_columns(state, None, m._scale_physics(raw), fast=(plans, loop))


def _leaves_like(template: Any, tree: Any) -> list:
    """The tensors of the nested dict ``tree`` in the key order of ``template`` (same keys at every level),
    so that ``tree_unflatten(leaves, tree_structure(template))`` rebuilds ``tree``; a tensor carried over
    unchanged is copied (a nested compile region may not return an input)."""
    if isinstance(template, Mapping):
        if not isinstance(tree, Mapping) or set(tree) != set(template):
            raise RuntimeError("compiled column block: a step changed the structure of the state")
        return [x for k in template for x in _leaves_like(template[k], tree[k])]
    return [tree.clone() if tree is template else tree]  # a region may not return its input


def _region_step(model: Any) -> Any:
    """One step of ``model`` for :func:`_block_core`, traced once per block and stamped out for the others
    (``torch.compiler.nested_compile_region``): the new state's tensors in ``state``'s order, the sinking
    sub-steps needed (0 without sinking), then the outputs named in ``means`` after the step (float64 copies
    of the floating-point ones: what the block sums). Flat tensors out, none of them an input: what a region
    may return. The model is a closure variable, not a global: dynamo guards an inlined function's globals
    through its module."""

    def step(state: dict, raw: dict, plan: dict, loop: int, nuh_out: Any, means: tuple) -> tuple:
        new, need = model._step_columns(state, None, model._scale_physics(raw), fast=(plan, loop))
        if need is None:
            need = torch.zeros((), dtype=torch.int64)
        vals = []
        if means:
            out = model._output_from(new, model._scale_physics(dict(raw, nuh=nuh_out)), means)
            for name in means:
                x = out[name]
                vals.append(x.to(torch.float64, copy=True) if x.is_floating_point() else x.clone())
        return (*_leaves_like(state, new), need, *vals)

    return torch.compiler.nested_compile_region(step)


def _block_core(state: dict, raws: dict, plans: tuple, loop: int, means: tuple) -> tuple:
    """``len(plans)`` steps in one program. ``raws``: the forcing of step ``j`` as entry ``j`` of each
    stacked field (``"nuh_out"``: ``nuh`` at the end of step ``j``, for the outputs). With ``means``: also
    the float64 sums over the steps of those outputs and the last outputs (every field).

    The loop is unrolled: the first step is traced as it is (it may change the state's structure, e.g. key
    order), the others go through ``_REGION`` (:func:`_region_step`, a nested compile region; with their
    mean outputs but the last), which dynamo traces once and stamps out; the stamped graph is inlined
    (``inline_invoke_subgraph``), so Inductor still sees, and fuses, one flat program. This cuts the
    tracing of a block by about ``k``."""
    m = _MODEL  # noqa: F821 - bound per model by _own_code
    region = _REGION  # noqa: F821 - bound per model by _own_code
    needs, sums, out = [], {}, None
    last = len(plans) - 1
    for j, plan in enumerate(plans):
        raw = {k: v[j] for k, v in raws.items() if k != "nuh_out"}
        nuh_out = raws["nuh_out"][j] if means else None
        vals = None
        if j == 0 or region is None:
            state, need = m._step_columns(state, None, m._scale_physics(raw), fast=(plan, loop))
        else:
            inside = means if j < last else ()  # the last step's outputs (every field) are computed below
            spec = tree_structure(state)
            res = region(state, raw, plan, loop, nuh_out, inside)
            n = spec.num_leaves
            state, need = tree_unflatten(list(res[:n]), spec), res[n]
            vals = dict(zip(inside, res[n + 1 :], strict=True)) if inside else None
        if need is not None:
            needs.append(need)
        if means:  # the mean fields after each step; every field after the last (the caller writes them)
            if vals is None:
                names = None if j == last else means
                out = m._output_from(state, m._scale_physics(dict(raw, nuh=nuh_out)), names)
                vals = {}
                for name in means:
                    x = out[name]
                    vals[name] = x.to(torch.float64) if x.is_floating_point() else x
            for name in means:
                sums[name] = vals[name] if j == 0 else sums[name] + vals[name]
    need = torch.stack(needs).amax() if needs else None
    return state, need, sums, out


def _output_core(state: dict, raw: dict, names: tuple | None = None) -> dict:
    m = _MODEL  # noqa: F821 - bound per model by _own_code
    return m._output_from(state, m._scale_physics(raw), names)


def _own_code(fn: Any, model: Any, **names: Any) -> Any:
    """``fn`` with a code object of its own and ``_MODEL`` (and ``names``) bound to ``model`` in its globals:
    dynamo keeps its compiled variants per code object (at most ``recompile_limit`` = 8), so each model gets
    its own cache instead of sharing one (the ninth model of a process would otherwise run uncompiled)."""
    name = f"{fn.__name__}_{next(_COUNTER)}"
    g = dict(fn.__globals__, _MODEL=model, **names)
    return types.FunctionType(fn.__code__.replace(co_name=name), g, name, fn.__defaults__)


@contextlib.contextmanager
def _unaliased_overrides(model: Any) -> Iterator[None]:
    """Installed parameter overrides that are views (e.g. entries of one control vector, as
    :meth:`~pelagos.core.model.Model.using` makes them) replaced by copies for the call: the block's nested
    compile region takes them as inputs, and its inputs may not alias. The copies are differentiable."""
    with contextlib.ExitStack() as stack:
        for store in model.__dict__.get("_param_stores") or ():
            ov = store.active_overrides
            if ov and any(torch.is_tensor(v) and v._is_view() for v in ov.values()):
                vals = {n: v.clone() if torch.is_tensor(v) and v._is_view() else v for n, v in ov.items()}
                stack.enter_context(store.replacing_overrides(vals))
        yield


class CompiledStep:
    """The compiled step of one :class:`~pelagos.column.model.ColumnModel` (see the module doc)."""

    def __init__(self, model: Any) -> None:
        from . import _light_op

        _light_op.load()  # GOTM's light sum as one C++ operator in the programs below (built once, cached)
        self.model = model
        self.loop = 1  # sinking sub-step iterations compiled in; grows when the columns need more
        self._fn = torch.compile(_own_code(_step_core, model), dynamic=False, options=_OPTIONS)
        self._out: Any = None  # the compiled output, built on first use
        self._block: Any = None  # the compiled multi-step block, built on first use
        self.block_regions = True  # whether the block traces its steps once (False: a region was refused)

    def output(self, state: Mapping, raw: Mapping, names: tuple | None = None) -> dict:
        """:meth:`ColumnModel.output` (diagnostics, light, totals) as a compiled program (``names``: only
        those fields; one program per distinct tuple)."""
        if self._out is None:
            self._out = torch.compile(_own_code(_output_core, self.model), dynamic=False, options=_OPTIONS)
        return _run_program(self._out, dict(state), dict(raw), names)

    def mean_plans(self, t: float) -> dict[str, tuple]:
        """Sampling plans of the model's running means for the step ``t -> t + dt``."""
        m = self.model
        return {
            key: running_mean_plan(t + m.dt, t, period=per, resolution=res)
            for key, (_, per, res) in m.means.items()
        }

    def block(self, state: dict, raws: Mapping, plans: tuple, means: tuple = ()) -> tuple[dict, dict, Any]:
        """``len(plans)`` steps as one compiled call (see :meth:`ColumnModel.step_block`): the new state, the
        float64 sums over the steps of the outputs named in ``means`` and the last outputs (``None`` without
        ``means``). ``raws``: stacked forcing (:meth:`ColumnModel._raw_block`), ``plans``: one
        :meth:`mean_plans` per step."""
        if self._block is None:
            fn = _own_code(_block_core, self.model, _REGION=_region_step(self.model))
            self._block = torch.compile(fn, dynamic=False, options=_OPTIONS)
        while True:
            try:
                with _unaliased_overrides(self.model):
                    args = (state, dict(raws), plans, self.loop, means)
                    new, need, sums, out = _run_program(self._block, *args, inline=True)
            except torch._dynamo.exc.UncapturedHigherOrderOpError:
                # a step the region cannot hold (e.g. a graph break in a user's model): trace every step
                self.block_regions = False
                fn = _own_code(_block_core, self.model, _REGION=None)
                self._block = torch.compile(fn, dynamic=False, options=_OPTIONS)
                continue
            if need is None or self._grow(int(need)):
                return new, sums, out

    def _grow(self, n: int) -> bool:
        """Whether a step that needed ``n`` sinking sub-steps is done (else the loop grows: redo it)."""
        from .advection import ITMAX, warn_substeps_clipped

        if n <= self.loop:
            return True
        if n >= ITMAX:
            warn_substeps_clipped(stacklevel=5)
        self.loop = n
        return False

    def __call__(self, state: dict, raw: Mapping, plans: dict) -> dict:
        while True:
            new, need = _run_program(self._fn, state, dict(raw), plans, self.loop)
            if need is None or self._grow(int(need)):
                return new


# -- forward mode (jvp) on the compiled step ---------------------------------------------------------------
# Kept apart from the step path above: ``compiled_step`` hands forward-mode calls (dual tensors) to
# ``_compiled_jvp_step``, and ``diffuse_implicit`` asks ``_TANGENT_SOLVE``; nothing else is shared.
#
# Forward-mode AD (``torch.autograd.forward_ad`` dual tensors, e.g. the batched Gauss–Newton Jacobian of
# :meth:`pelagos.inverse.problem.VariationalProblem.jacobian`) cannot enter a ``torch.compile``'d function,
# but ``torch.func.jvp`` inside one can: dynamo traces it, AOTAutograd writes out the primal and tangent
# operations, Inductor fuses both. The dual inputs are split into primal and tangent outside, the program
# returns both, and they are joined into dual tensors again: to the caller it is the plain step.
_TANGENT_SOLVE = False  # True while the jvp program runs: diffuse_implicit's solve then carries a tangent
_JVP_ENABLED = os.environ.get("PELAGOS_COLUMN_COMPILED_JVP", "1") == "1"


def _solve_with_tangent(
    lower: torch.Tensor, diag: torch.Tensor, upper: torch.Tensor, rhs: torch.Tensor
) -> torch.Tensor:
    """``A x = rhs`` (diagonals ``(B, 1, N)``, ``rhs (B, K, N)``) inside ``torch.func.jvp``.

    The custom operator has no forward-mode rule, so it sees primal values only: one call solves for the
    ``K`` right-hand sides and the ``N`` columns of the identity together (one factorisation per column),
    giving ``x`` and ``A⁻¹``. The tangent ``dx = A⁻¹ (d rhs − dA x)`` is ``A⁻¹`` applied to the residual
    ``rhs − A x`` (primal ≈ 0, tangent ``d rhs − dA x``); ``x + (y − y.detach())`` has exactly the
    operator's primal value and that tangent."""
    import torch.nn.functional as F

    lo, di, up = lower.detach(), diag.detach(), upper.detach()
    B, K, n = rhs.shape
    eye = torch.eye(n, dtype=rhs.dtype, device=rhs.device).expand(B, n, n)
    both = _solve_tridiagonal(lo, di, up, torch.cat([rhs.detach(), eye], dim=1))
    x, inv_t = both[:, :K], both[:, K:]  # inv_t[b, k, i] = (A⁻¹)[i, k]
    xm, xp = F.pad(x[..., :-1], (1, 0)), F.pad(x[..., 1:], (0, 1))
    y = (rhs - (lower * xm + diag * x + upper * xp)) @ inv_t
    return x + (y - y.detach())


def _jvp_core(sp: dict, st: dict, ovp: list, ovt: list, raw: dict, plans: dict, loop: int) -> Any:
    """``torch.func.jvp`` of the compiled step's core in the state ``sp`` (tangent ``st``) and the parameter
    overrides ``ovp`` of the model's stores (tangents ``ovt``): ``(new, d new, need)``."""
    m = _MODEL  # noqa: F821 - bound per model by _own_code
    stores = m.__dict__["_param_stores"]

    def f(s: dict, ov: list) -> Any:
        for x, o in zip(stores, ov, strict=True):
            x._override = o or None
        try:
            return m._step_columns(s, None, m._scale_physics(raw), fast=(plans, loop))
        finally:
            for x in stores:
                x._override = None

    return torch.func.jvp(f, (sp, ovp), (st, ovt), has_aux=True)


def _split_dual(tree: Any) -> tuple[Any, Any]:
    """``(primal, tangent)`` of a (nested) dict/list of dual tensors at forward-AD level 0, both contiguous
    (views of a stacked state change strides: one compiled program for every step); missing and efficient-zero
    tangents are plain zeros."""
    if isinstance(tree, Mapping):
        pairs = {k: _split_dual(x) for k, x in tree.items()}
        return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
    if isinstance(tree, list):
        pairs = [_split_dual(x) for x in tree]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    p, t = torch._unpack_dual(tree, 0)
    if t is None or t._is_zerotensor():
        # forward AD's efficient zero tangents carry another dispatch key: as inputs they would fail dynamo's
        # guards and recompile the program every call until its recompile limit (then it runs uncompiled)
        t = torch.zeros_like(p, memory_format=torch.contiguous_format)
    return _dense(p), _dense(t)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of a new contiguous tensor (views with size-1 dims count as contiguous but
    keep other strides, which the compiled program is specialised on)."""
    want, acc = [], 1
    for n in reversed(t.shape):
        want.append(acc)
        acc *= max(n, 1)
    if t.stride() == tuple(reversed(want)):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _join_dual(p: Any, t: Any) -> Any:
    if isinstance(p, Mapping):
        return {k: _join_dual(p[k], t[k]) for k in p}
    # the program may return a broadcast view (stride 0: e.g. a running mean of a forcing field, the same for
    # every column), into which make_dual cannot copy a tangent: dense copies of such outputs only
    return torch._make_dual(_dense(p), _dense(t), 0)


def _compiled_jvp_step(model: Any, state: Mapping) -> CompiledJvpStep | None:
    """The model's :class:`CompiledJvpStep` for a forward-mode call (dual tensors at the one forward-AD level,
    floating point, inside no ``torch.func`` transform), else ``None`` (plain step)."""
    import torch.autograd.forward_ad as fwAD
    from torch._C._functorch import is_functorch_wrapped_tensor, peek_interpreter_stack

    if not _JVP_ENABLED or fwAD._current_level != 0 or peek_interpreter_stack() is not None:
        return None
    stores = model.__dict__["_param_stores"]  # set by _plain_only
    leaves = [v for v in state.values() if torch.is_tensor(v)]
    leaves += [v for m in state.values() if isinstance(m, Mapping) for b in m.values() for v in b.values()]
    leaves += [v for s in stores for v in (s.active_overrides or {}).values()]
    if any(
        not torch.is_tensor(v) or is_functorch_wrapped_tensor(v) or not v.is_floating_point() for v in leaves
    ):
        return None
    cs = model.__dict__.get("_compiled_step_obj")  # the model's CompiledStep (its sinking loop is shared)
    if cs is None:
        cs = model.__dict__["_compiled_step_obj"] = CompiledStep(model)
    js = model.__dict__.get("_compiled_jvp_obj")
    if js is None:
        js = model.__dict__["_compiled_jvp_obj"] = CompiledJvpStep(cs)
    return js


class CompiledJvpStep:
    """Forward mode on the compiled step of one model: called like :class:`CompiledStep` with dual tensors
    (state and/or parameter overrides), it returns the plain step's dual new state: the compiled step's
    primal values and the tangent of the same operations (the solve's by ``A⁻¹``:
    :func:`_solve_with_tangent`)."""

    def __init__(self, cs: CompiledStep) -> None:
        self.cs = cs
        self.model = cs.model
        self._fn = torch.compile(_own_code(_jvp_core, cs.model), dynamic=False, options=_OPTIONS)
        self._t: float | None = None
        self._works: bool | None = None  # None until the first call has compiled (or failed to)

    def mean_plans(self, t: float) -> dict[str, tuple]:
        self._t = float(t)  # kept for the plain fallback below
        return self.cs.mean_plans(t)

    def output(self, state: Mapping, raw: Mapping, names: tuple | None = None) -> dict:
        """Diagnostics of a dual state: the plain computation (outputs are not on the hot path)."""
        m = self.model
        return m._output_from(state, m._scale_physics(raw), names)

    def __call__(self, state: dict, raw: Mapping, plans: dict) -> dict:
        m = self.model
        if self._works is False or any(
            torch._unpack_dual(v, 0).tangent is not None for v in raw.values() if torch.is_tensor(v)
        ):  # the program could not be built, or forcing with a tangent: the plain step
            return m._step_columns(state, self._t, m._scale_physics(raw))
        if self._works is None:
            try:
                out = self._run(state, raw, plans)
            except SolverError:  # the program ran and the state is bad: the caller's error, not a fallback
                raise
            except Exception as err:  # a model whose jvp dynamo cannot trace: the plain step from now on
                first = str(err).splitlines()[0] if str(err) else ""
                warnings.warn(
                    f"pelagos column: forward mode on the compiled step failed ({type(err).__name__}: "
                    f"{first}); running forward mode on the plain step. Set PELAGOS_COLUMN_COMPILED_JVP=0 "
                    "to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._works = False
                return m._step_columns(state, self._t, m._scale_physics(raw))
            self._works = True
            return out
        return self._run(state, raw, plans)

    def _run(self, state: dict, raw: Mapping, plans: dict) -> dict:
        global _TANGENT_SOLVE
        from ..core._torch_quirks import jvp_within_dual_level

        m = self.model
        stores = m.__dict__["_param_stores"]
        saved = [s._override for s in stores]
        ovp, ovt = _split_dual([dict(o or {}) for o in saved])
        sp, st = _split_dual(state)
        with jvp_within_dual_level() as ok:
            if not ok:  # pragma: no cover - a torch without the nesting counter
                return m._step_columns(state, self._t, m._scale_physics(raw))
            try:
                for s in stores:  # the program installs its own (primal) overrides: no dual tensor enters it
                    s._override = None
                _TANGENT_SOLVE = True
                while True:
                    args = (sp, st, ovp, ovt, dict(raw), plans, self.cs.loop)
                    new_p, new_t, need = _run_program(self._fn, *args)
                    if need is None or self.cs._grow(int(need)):  # the sinking loop is the step's
                        break
            finally:
                _TANGENT_SOLVE = False
                for s, o in zip(stores, saved, strict=True):
                    s._override = o
        return _join_dual(new_p, new_t)
