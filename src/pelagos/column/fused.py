"""The fused column kernel: a no-gradient forward step of many columns as one generated C loop nest.

Why: at ≥ 1000 columns the compiled step (:mod:`pelagos.column.compiled`, Inductor) spends its time between
kernels — the state, the face fluxes and the light's sums streamed through memory between Inductor's loops
and the tridiagonal solve — not in arithmetic (docs/bench_column.md, "Where the time goes"). Here one
generated C function does a whole step for a block of ``W`` columns (one SIMD vector: 8 float64 / 16
float32) with the block held in a few kB of local arrays: sinking (GOTM's ``adv_center`` with its
limiter), the implicit diffusion (Thomas, one factorisation per step shared by every column and tracer), the
light (GOTM's summation order), the biology and the Euler update — and then the next step, for all the steps
of a call, before the block goes back to memory. The per-column work is vectorised across the ``W`` columns.

The biology is not hand-written: the model's own ``light_extinction``, ``vertical_velocities`` and
``interior_sources`` (any FABM-style :class:`~pelagos.bgc.base.BGCModel`) are traced once with
``make_fx`` (fake tensors) and split by what each operation depends on:

- parameters and constants (evaluated once per call, in torch),
- the forcing (evaluated once per step, in torch: e.g. NPZD's light optimum from surface PAR),
- the cells (the state after transport, the light): emitted as straight-line C, one statement an
  operation, compiled once per model and batch layout (cached on disk by the source's hash).

Physics shared by the columns (one ``h``, ``nuh``, surface light: an ensemble, the benchmark) is turned into
rows once per step in torch; physics per column (many sites) is turned into rows inside the kernel, per
lane, with the same formulas.

Same operations as the plain step in the same order, except where C evaluates ``exp`` (glibc's vector
``exp`` under 4 ulp, or the scalar one) and the Thomas sweep multiplies by a reciprocal: float64 agreement
with the plain step is ~1e-15 per step (tested over a model year ≤ 1e-12 in tests/test_column_fused.py).

When it is used (:meth:`ColumnModel.step_block <pelagos.column.model.ColumnModel.step_block>`, the run
loops' multi-step hook): ``compile`` on (``numerics.compile``), CPU, float32/float64 (state and forcing of one
dtype), ``cnpar = 1``, Euler sources without splitting, no running means, no surface or bottom fluxes, GOTM's
light, and a model whose state-dependent arithmetic is elementwise from the operations of
:data:`_UNARY`/:data:`_BINARY`. Anything else runs the compiled step, unchanged; the reason is kept in
``model._fused_reason`` (``None`` when the kernel runs). ``PELAGOS_COLUMN_FUSED=0`` turns it off.

Gradients. With a gradient recorded (reverse mode) or tangents carried (forward mode, dual tensors of
``torch.autograd.forward_ad``: the batched Gauss–Newton Jacobian), the steps of a call become one autograd
node (:class:`_FusedSteps`) whose backward is a generated adjoint kernel and whose forward-mode rule is a
generated tangent-linear kernel, both from the same trace: the reverse/forward derivative of every cell
operation (torch's own derivative of each, ties of ``minimum``/``maximum`` split as torch splits them), and of
the skeleton (GOTM's light sum, repair, the implicit solve — transposed for the adjoint, the same
factorisation — and the TVD sinking sub-steps with their limiter; with ``nuh_scale`` or ``I0_scale`` free, the
diffusion matrix and the surface light too). The adjoint recomputes the call's steps
from the saved start state (O(state) memory between forward and backward; :func:`pelagos.core.rollout`'s
checkpoint segments keep working above it). The gradient reaches the parameters through the torch values
that feed the kernel (their own small graph). Not taken with a gradient: physics per column (the compiled
step's gradient runs), a derivative with respect to the layer thicknesses, ``torch.func`` transforms,
interval means. ``PELAGOS_COLUMN_FUSED_ADJOINT=0`` keeps gradients on the compiled step.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core import _cbuild
from ..core.errors import SolverError

__all__ = ["FusedColumn", "fused_column"]

_ENABLED = os.environ.get("PELAGOS_COLUMN_FUSED", "1") == "1"
# a gradient through the kernel (its generated adjoint); 0: the compiled step records gradients, as before
_ADJOINT = os.environ.get("PELAGOS_COLUMN_FUSED_ADJOINT", "1") == "1"
# Forward runs of fewer columns take the compiled (Inductor) step instead. 1: every call the kernel supports
# runs it. At one column in 24-step calls the kernel's per-call Python (the forcing's values of each step, the
# physics rows) makes it ~1.2x the Inductor block's time per step, but it starts in ~2 s instead of 6 s (a
# warm Inductor cache) or minutes (a cold one) (docs/column_fused.md, "Speed").
MIN_COLUMNS = int(os.environ.get("PELAGOS_COLUMN_FUSED_MIN", "1"))
_PAR = "downwelling_photosynthetic_radiative_flux"
_SWR = "downwelling_shortwave_flux"
_KPAR = "attenuation_coefficient_of_photosynthetic_radiative_flux"
_LIGHT = (_PAR, _SWR, _KPAR)
_LIMITERS = ("UPSTREAM", "P2_PDM", "SUPERBEE", "MUSCL")

aten = torch.ops.aten
# state-dependent operations the generator writes as C expressions of their (C) arguments
_UNARY = {
    aten.exp.default: "EXP({0})",
    aten.log.default: "LOG({0})",
    aten.sqrt.default: "SQRT({0})",
    aten.rsqrt.default: "((real)1 / SQRT({0}))",
    aten.neg.default: "(-{0})",
    aten.reciprocal.default: "((real)1 / {0})",
    aten.abs.default: "FABS({0})",
    aten.sigmoid.default: "((real)1 / ((real)1 + EXP(-{0})))",
    aten.tanh.default: "TANH({0})",
    aten.relu.default: "({0} > 0 ? {0} : (real)0)",
    aten.logical_not.default: "(!{0})",
}
_BINARY = {
    aten.add.Tensor: "({0} + {1})",
    aten.sub.Tensor: "({0} - {1})",
    aten.mul.Tensor: "({0} * {1})",
    aten.div.Tensor: "({0} / {1})",
    aten.maximum.default: "({0} > {1} ? {0} : {1})",
    aten.minimum.default: "({0} < {1} ? {0} : {1})",
    aten.gt.Tensor: "({0} > {1})",
    aten.ge.Tensor: "({0} >= {1})",
    aten.lt.Tensor: "({0} < {1})",
    aten.le.Tensor: "({0} <= {1})",
    aten.eq.Tensor: "({0} == {1})",
    aten.ne.Tensor: "({0} != {1})",
    aten.logical_and.default: "({0} && {1})",
    aten.logical_or.default: "({0} || {1})",
    aten.pow.Tensor_Tensor: "POW({0}, {1})",
}
for _s, _t in (
    (aten.add.Scalar, aten.add.Tensor),
    (aten.sub.Scalar, aten.sub.Tensor),
    (aten.mul.Scalar, aten.mul.Tensor),
    (aten.div.Scalar, aten.div.Tensor),
    (aten.gt.Scalar, aten.gt.Tensor),
    (aten.ge.Scalar, aten.ge.Tensor),
    (aten.lt.Scalar, aten.lt.Tensor),
    (aten.le.Scalar, aten.le.Tensor),
    (aten.eq.Scalar, aten.eq.Tensor),
    (aten.ne.Scalar, aten.ne.Tensor),
):
    _BINARY[_s] = _BINARY[_t]
# shape-only operations: the value of a cell is unchanged (broadcasting views and copies)
_SAME = {
    aten.expand.default,
    aten.unsqueeze.default,
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.squeeze.dim,
    aten.squeeze.default,
    aten.alias.default,
    aten.clone.default,
    aten.detach.default,
    aten.lift_fresh_copy.default,
    aten.contiguous.default,
}


def fused_column(model: Any, state: Mapping) -> FusedColumn | None:
    """The model's :class:`FusedColumn` if this call may use it (see the module doc), else ``None``."""
    if not _ENABLED or not getattr(model, "fused", True):
        return None
    fc = model.__dict__.get("_fused_obj")
    if fc is None:
        fc = model.__dict__["_fused_obj"] = FusedColumn(model)
    reason = fc.refuse(state)
    model.__dict__["_fused_reason"] = reason
    return None if reason else fc


def _effective_raw(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter's unconstrained value in use now (the override where one is installed)."""
    out = {}
    for path, store in model._stores().items():
        ov = store.active_overrides or {}
        pre = f"{path}." if path else ""
        for n, p in store.raw.items():
            out[pre + n] = ov.get(n, p)
    return out


class _UnsupportedError(Exception):
    pass


class FusedColumn:
    """The fused kernel of one :class:`~pelagos.column.model.ColumnModel` (see the module doc)."""

    max_steps = 240  # steps per kernel call (the per-step rows of a call are kept in memory)

    def __init__(self, model: Any) -> None:
        self.model = model
        self._plans: dict[tuple, Any] = {}  # traced and compiled, per layout
        self._static = self._static_reason()
        self.grad = False  # this call records a gradient (set by refuse)
        self.tangent = False  # this call carries forward-mode tangents (set by refuse)

    # -- when -----------------------------------------------------------------------------------------
    def _static_reason(self) -> str | None:
        m = self.model
        if m.cnpar != 1.0:
            return "cnpar != 1"
        if m.ode_method != "euler" or m.split_factor != 1:
            return "sources not Euler without splitting"
        if m.means:
            return "running means (temporal means of the environment)"
        if m.bottom or m.surface or m._has_surface or m._has_bottom:
            return "surface or bottom fluxes / variables"
        if getattr(m.bgc, "light_model", None) is not None:
            return "a FABM light instance"
        from .advection import _method_name

        if _method_name(m.sinking_method) not in _LIMITERS:
            return f"sinking method {m.sinking_method} (fused: {', '.join(_LIMITERS)})"
        if m.nz < 2:
            return "a single layer"
        return None

    def refuse(self, state: Mapping) -> str | None:
        """Why this call cannot use the kernel (``None``: it can)."""
        if self._static:
            return self._static
        m = self.model
        leaves = [state[n] for n in m.interior]
        x = leaves[0]
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return "not a CPU float32/float64 state"
        if any(t.shape != x.shape or t.dtype != x.dtype for t in leaves) or x.ndim != 2:
            return "state variables of different shapes"
        from torch._C._functorch import is_functorch_wrapped_tensor

        self.grad = self.tangent = False
        params = [v for s in m._stores().values() for v in (*s.raw.values(), *s.overrides.values())]
        for t in [*leaves, *params]:
            if is_functorch_wrapped_tensor(t):
                return "a torch.func transform"
            self.tangent = self.tangent or torch.autograd.forward_ad.unpack_dual(t).tangent is not None
            self.grad = self.grad or (t.requires_grad and torch.is_grad_enabled())
        if (self.grad or self.tangent) and not _ADJOINT:
            return "a gradient is recorded (PELAGOS_COLUMN_FUSED_ADJOINT=0)"
        return None

    # -- tracing ----------------------------------------------------------------------------------------
    def _plan(self, B: int, nz: int, dtype: torch.dtype, env: Mapping, prm: Mapping) -> Any:
        key = (B, nz, dtype, tuple((k, tuple(v.shape)) for k, v in env.items()),
               tuple((k, tuple(v.shape), v.dtype) for k, v in prm.items()))  # fmt: skip
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = _Plan(self.model, B, nz, dtype, env, prm)
            except _UnsupportedError as err:
                plan = str(err)
            self._plans[key] = plan
        return plan

    # -- running ----------------------------------------------------------------------------------------
    def steps(
        self, state: dict, raws: Mapping[str, torch.Tensor], means: Sequence[str] = ()
    ) -> tuple[dict, dict[str, torch.Tensor]] | str:
        """The steps whose forcing is stacked in ``raws`` (:meth:`ColumnModel._raw_block`; ``"nuh_out"``
        unused) from ``state``: ``(new state, {name: float64 sum over the steps of the field after each
        step})`` for ``means`` (state variables, diagnostics, ``PAR``), or a reason string when the kernel
        cannot take this call (the caller then runs the compiled step)."""
        m = self.model
        # set by refuse: a gradient is recorded through these steps, or tangents are carried (forward mode)
        grad = self.grad or self.tangent
        with torch.enable_grad() if self.grad else contextlib.nullcontext() if grad else torch.no_grad():
            x = state[m.interior[0]]
            B, nz = x.shape
            n = raws["h"].shape[0]
            phys = m._scale_physics({k: v for k, v in raws.items() if k != "nuh_out"})
            for k in ("h", "nuh"):
                if phys[k].ndim != 3 or phys[k].shape[1] not in (1, B):
                    return f"forcing {k} of shape {tuple(phys[k].shape[1:])} for {B} columns"
            env0 = m._base_env({k: v[0] for k, v in phys.items()})
            prm = _effective_raw(m)
            # the plain step promotes to a dimensioned input's wider dtype (0-dim parameters do not count)
            if phys["h"].dtype != x.dtype or any(v.ndim and v.dtype != x.dtype for v in prm.values()):
                return "forcing or per-column parameters of another dtype than the state"
            plan = self._plan(B, nz, x.dtype, env0, prm)
            if isinstance(plan, str):
                return plan
            missing = [q for q in means if q not in plan.mean_sources]
            if missing:
                return f"interval means of {missing}"
            if grad:
                if means:
                    return "interval means with a gradient"
                try:
                    new = plan.run_grad(state, phys, prm, n)
                except _UnsupportedError as err:
                    return str(err)
                return new if isinstance(new, str) else (new, {})
            return plan.run(state, phys, prm, tuple(means), n)


class _Plan:
    """One traced, generated and compiled kernel for a layout (batch, layers, dtype, input shapes)."""

    def __init__(self, model: Any, B: int, nz: int, dtype: torch.dtype, env: Mapping, prm: Mapping) -> None:
        from torch.fx.experimental.proxy_tensor import make_fx

        self.model, self.B, self.nz, self.dtype = model, B, nz, dtype
        m = model
        names = list(m.interior)
        self.env_names = [k for k, v in env.items() if torch.is_tensor(v)]
        self.env_shapes = {k: tuple(env[k].shape) for k in self.env_names}
        self.env_consts = {k: v for k, v in env.items() if not torch.is_tensor(v)}
        self.prm_names = list(prm)
        nv, ne = len(names), len(self.env_names)

        def f(*flat: torch.Tensor) -> list:
            sv = dict(zip(names, flat[:nv], strict=True))
            light = dict(zip(_LIGHT, flat[nv : nv + 3], strict=True))
            e = dict(zip(self.env_names, flat[nv + 3 : nv + 3 + ne], strict=True)) | self.env_consts
            p = dict(zip(self.prm_names, flat[nv + 3 + ne :], strict=True))
            with m.using_only(p), torch.enable_grad():  # parameters read through the graph, not a cache
                k = m.bgc.light_extinction(sv, e)
                ws = m.bgc.vertical_velocities(sv, e)
                rates, diag = m.bgc.interior_sources(sv, e | light)
            self.moving = [q for q in names if q in ws]
            self.diag_names = list(diag)
            self.rate_names = [q for q in names if q in rates]
            zero = torch.zeros_like(sv[names[0]])
            return [zero if k is None else k, *(ws[q] for q in self.moving),
                    *(rates[q] for q in self.rate_names), *(diag[d] for d in self.diag_names)]  # fmt: skip

        cells = [torch.empty(B, nz, dtype=dtype) for _ in range(nv + 3)]
        args = [*cells, *(env[k] for k in self.env_names), *(v.detach() for v in prm.values())]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm = make_fx(f, tracing_mode="fake")(*args)
        except Exception as err:  # data-dependent Python branches, unsupported tensor code
            raise _UnsupportedError(f"the model could not be traced ({type(err).__name__}: {err})") from err
        self.gm = gm
        # tracers in the kernel: moving first, as _transport stacks them
        self.order = self.moving + [q for q in names if q not in self.moving]
        self._classify(nv)
        self._libs: dict[tuple, ctypes.CDLL] = {}  # per kinds of the boundary values
        self.kinds: list[str] = []
        self.per_column = False
        # building the kernel with its adjoint (pelagos_fused_column_adj): the indices of the boundary values
        # whose adjoint it accumulates (those with a gradient to pass on), else None
        self.adjoint: tuple | None = None
        self.adjoint_calls = 0  # backward passes through the adjoint kernel (tests, benchmarks)
        self.tangent_bounds: tuple | None = None  # building the tangent kernel: the inputs with a tangent
        self.tangent_phys = False  # ... and tangents of the diffusion matrix and surface light
        self.tangent_calls = 0  # forward-mode passes through the tangent kernel
        self._p_key: tuple | None = None
        self.mean_sources = {q: ("state", self.order.index(q)) for q in names}
        self.mean_sources |= {d: ("diag", i) for i, d in enumerate(self.diag_names)}
        self.mean_sources["PAR"] = ("par", 0)

    # ---------------------------------------------------------------------------------------------------
    def _classify(self, nv: int) -> None:
        """Each node of the trace as 'C' (depends on the cells), 'F' (on the forcing) or 'P' (parameters and
        constants); the C part is what the kernel computes, the others feed it as inputs ("boundaries")."""
        g = self.gm.graph
        ph = [n for n in g.nodes if n.op == "placeholder"]
        ne = len(self.env_names)
        cls: dict[Any, str] = {}
        for i, n in enumerate(ph):
            cls[n] = "C" if i < nv + 3 else ("F" if i < nv + 3 + ne else "P")
        self.cell_inputs = {n: i for i, n in enumerate(ph[: nv + 3])}
        self.env_inputs = {n: self.env_names[i] for i, n in enumerate(ph[nv + 3 : nv + 3 + ne])}
        self.prm_inputs = {n: self.prm_names[i] for i, n in enumerate(ph[nv + 3 + ne :])}
        for n in g.nodes:
            if n.op == "get_attr" or (n.op == "call_function" and n.target in _CONSTS):
                cls[n] = "P"
            elif n.op == "call_function":
                deps = [cls[a] for a in n.all_input_nodes]
                cls[n] = "C" if "C" in deps else ("F" if "F" in deps else "P")
        # a cell divided by a value that is not a cell (NPZD's PAR / iopt): times its reciprocal, computed
        # once outside (one rounding more, a division less per cell)
        for n in list(g.nodes):
            d = n.args[1] if n.op == "call_function" and n.target is aten.div.Tensor else None
            if isinstance(d, torch.fx.Node) and cls[n] == "C" and cls[d] != "C" and not n.kwargs:
                with g.inserting_after(d):
                    r = g.call_function(aten.reciprocal.default, (d,))
                r.meta["val"] = d.meta.get("val")
                cls[r] = cls[d]
                n.target = aten.mul.Tensor
                n.args = (n.args[0], r)
        out = next(n for n in g.nodes if n.op == "output")
        outs = list(out.args[0])
        self.cls = cls
        swr_in = next(n for n, i in self.cell_inputs.items() if i == nv + 1)  # the SWR placeholder
        self.uses_swr = any(u.op != "output" for u in swr_in.users)
        nm, nr = len(self.moving), len(self.rate_names)
        self.k_node = outs[0]
        self.w_nodes = outs[1 : 1 + nm]
        self.rate_nodes = outs[1 + nm : 1 + nm + nr]
        self.diag_nodes = outs[1 + nm + nr :]
        for w in self.w_nodes:
            if cls[w] == "C":
                raise _UnsupportedError("sinking velocities that depend on the state")
        for n in g.nodes:
            if n.op == "call_function" and cls[n] == "C":
                t = n.target
                if t not in _UNARY and t not in _BINARY and t not in _SAME and t not in _CONSTS and t not in (
                    aten.where.self, aten.rsub.Scalar, aten.clamp.default, aten.clamp_min.default,
                    aten.clamp_max.default, aten.pow.Tensor_Scalar, aten._to_copy.default,
                ):  # fmt: skip
                    raise _UnsupportedError(f"operation {t} on the state")
                if t is aten._to_copy.default and n.kwargs.get("dtype") not in (None, self.dtype):
                    raise _UnsupportedError("a dtype change on the state")
        # boundaries: non-C values used by C nodes (and C-free outputs the kernel needs)
        self.bounds: list[Any] = []
        for n in g.nodes:
            if n.op == "call_function" and cls[n] == "C":
                for a in n.all_input_nodes:
                    if cls[a] != "C" and a not in self.bounds:
                        self.bounds.append(a)
        for o in [self.k_node, *self.rate_nodes, *self.diag_nodes]:
            if cls[o] != "C" and o not in self.bounds:
                self.bounds.append(o)
        # the F nodes to evaluate per step, the P nodes once per call: only those that feed the kernel
        need = set()
        stack = [*self.bounds, *self.w_nodes]
        while stack:
            n = stack.pop()
            if n in need or cls[n] == "C":
                continue
            need.add(n)
            stack.extend(n.all_input_nodes)
        order = [n for n in g.nodes if n in need]
        self.p_nodes = [n for n in order if cls[n] == "P" and n.op != "placeholder"]
        self.f_nodes = [n for n in order if cls[n] == "F" and n.op != "placeholder"]

    # ---------------------------------------------------------------------------------------------------
    def _eval(self, nodes: list, vals: dict) -> None:
        for n in nodes:
            if n.op == "get_attr":
                vals[n] = getattr(self.gm, n.target)
                continue
            if n.target in _CONSTS:  # zeros_like(cells) etc.: the value, broadcast where it is used
                vals[n] = torch.tensor(float(_CONSTS[n.target](n)), dtype=self.dtype)
                continue

            def get(a: Any) -> Any:
                return vals[a] if isinstance(a, torch.fx.Node) else a

            args = torch.fx.node.map_aggregate(n.args, get)
            kwargs = torch.fx.node.map_aggregate(n.kwargs, get)
            vals[n] = n.target(*args, **kwargs)

    def _p_values(self, prm: Mapping) -> dict:
        """The parameter-only values (and the compact kernel inputs among them), kept while the parameter
        tensors are the same objects, unmodified (a run's blocks; an optimiser's step replaces or modifies
        them)."""
        key = tuple((id(t), t._version) for t in prm.values())
        if key != self._p_key:
            vals: dict = {p: prm[k].detach() for p, k in self.prm_inputs.items()}
            self._eval(self.p_nodes, vals)
            for b in self.bounds:
                if self.cls[b] == "P":
                    vals[("compact", b)] = self._bound_kind(vals[b])
            self._p_key, self._p_vals, self._p_refs = key, vals, list(prm.values())  # refs: ids stay valid
        return self._p_vals

    def _f_values(self, vals: dict, phys: Mapping, n: int) -> dict:
        """The forcing-dependent values the kernel needs, for the ``n`` steps of ``phys`` (scaled physics
        stacked on a leading step dim) at once (``torch.vmap`` over the steps; a loop over them if vmap
        refuses), each as an (n, B, nz) view."""
        wanted = [b for b in self.bounds if self.cls[b] == "F"] + list(self.w_nodes)
        names = [(p, k) for p, k in self.env_inputs.items() if p.users]  # the forcing fields the model reads
        env = self.model._base_env(phys, names={k for _, k in names})
        xs = [torch.as_tensor(env[k]) for _, k in names]
        dims = tuple(0 if x.shape == (n, *self.env_shapes[k]) else None for x, (_, k) in zip(xs, names))

        def one(*e: torch.Tensor) -> tuple:
            v = dict(vals)
            v.update({p: x for (p, _), x in zip(names, e, strict=True)})
            self._eval(self.f_nodes, v)
            return tuple(torch.as_tensor(v[w], dtype=self.dtype) for w in wanted)

        try:
            outs = torch.vmap(one, in_dims=dims)(*xs)
        except Exception:  # an operation vmap has no rule for: step by step
            steps = [one(*(x if d is None else x[s] for x, d in zip(xs, dims))) for s in range(n)]
            outs = tuple(torch.stack([torch.broadcast_to(o[i], (self.B, self.nz)) for o in steps])
                         for i in range(len(wanted)))  # fmt: skip
        out = {}
        for w, o in zip(wanted, outs, strict=True):
            each = o.shape[1:]  # one step's shape, right-aligned against (B, nz)
            if len(each) > 2:
                raise _UnsupportedError("an input with more than 2 dims")
            out[w] = torch.broadcast_to(o.reshape(n, *([1] * (2 - len(each))), *each), (n, self.B, self.nz))
        return out

    def _rows(self, h: torch.Tensor, nuh: torch.Tensor, I0: torch.Tensor, wcs: list) -> tuple:
        """The physics rows the columns share, for the ``n`` steps of a call: ``(rows (n, NR, nz), I_0 (1 - A)
        (n,), sinking sub-steps (n, moving))``. ``h`` (n, nz), ``nuh`` (n, nz+1), ``I0`` (n, 1), ``wcs``: the
        moving tracers' centre velocities (n, nz)."""
        from .advection import (
            ITMAX,
            _limiter_coeffs,
            courant_substeps,
            face_velocities,
            warn_substeps_clipped,
        )
        from .diffusion import diffusion_matrix
        from .grid import centre_depth

        m, dt, n = self.model, self.model.dt, h.shape[0]
        a, c = diffusion_matrix(h, nuh, dt)
        z = centre_depth(h)
        # GOTM's light: PAR = I_0 (1 - A) exp(-z/g2 - bio); the shortwave adds I_0 A exp(-z/g1)
        rows = [h, -a, 1.0 + a + c, -c, -z / m.g2, I0 * m.A * torch.exp(-z / m.g1)]
        nsub = torch.ones(n, max(len(wcs), 1), dtype=torch.int32)
        for i, wc in enumerate(wcs):
            ww = face_velocities(wc, h)  # (n, nz+1)
            it = courant_substeps(ww, h, dt)  # (n,)
            if int(it.max()) >= ITMAX:
                warn_substeps_clipped(stacklevel=8)
            nsub[:, i] = it.to(torch.int32)
            itb = it.to(h.dtype)[:, None]
            w_int = ww[:, 1:-1]
            cour = w_int.abs() / itb * dt / (0.5 * (h[:, :-1] + h[:, 1:]))
            k = _limiter_coeffs(cour)
            fac = 1.0 / itb * dt
            # reciprocals: the kernel multiplies (2 r / (c + eps), fac (F_up - F_down) / h)
            rows += [w_int, k["1-c"], k["x+"], k["x-"], k["2/(1-c)"], 2.0 / k["c+eps"], fac / h]
        self.last_substeps = int(nsub.max())
        nz = h.shape[1]
        rowbuf = torch.stack([r.to(h.dtype).expand(n, -1) for r in _pad_rows(rows, nz)], 1).contiguous()
        return rowbuf, (I0 * (1 - m.A)).reshape(n).contiguous(), nsub

    def _bound_kind(self, t: torch.Tensor) -> tuple[str, torch.Tensor]:
        """A boundary value as (kind, compact values): 's' scalar, 'r' per layer, 'c' per column, 'f' both."""
        B, nz = self.B, self.nz
        t = torch.as_tensor(t, dtype=self.dtype)
        if t.ndim > 2:
            raise _UnsupportedError("an input with more than 2 dims")
        kind = self._kind(*torch.broadcast_to(t, (B, nz)).stride())
        return kind, self._compact(t, kind)

    def _kind(self, sb: int, sk: int) -> str:
        """'s' scalar, 'r' per layer, 'c' per column, 'f' both, from a (B, nz) view's strides."""
        per_col, per_layer = sb != 0 and self.B > 1, sk != 0 and self.nz > 1
        return "f" if per_col and per_layer else "c" if per_col else "r" if per_layer else "s"

    def _compact(self, t: torch.Tensor, kind: str) -> torch.Tensor:
        x = torch.broadcast_to(torch.as_tensor(t, dtype=self.dtype), (self.B, self.nz))
        comp = {"s": lambda: x[0, 0], "r": lambda: x[0], "c": lambda: x[:, 0], "f": lambda: x}[kind]()
        return comp.contiguous().reshape(-1)

    def _c_expr(self, n: Any, name: dict) -> str:
        """The C expression of the C node ``n`` (its arguments already named)."""
        t = n.target

        def a(i: int) -> str:
            x = n.args[i]
            if isinstance(x, torch.fx.Node):
                return name[x]
            if isinstance(x, bool):
                return "1" if x else "0"
            if isinstance(x, int | float):
                return f"((real){float(x)!r})"
            raise _UnsupportedError(f"argument {x!r} of {t}")

        if t in _SAME or t is aten._to_copy.default:
            return a(0)
        if t in _CONSTS:
            return f"((real){float(_CONSTS[t](n))!r})"
        if t in _UNARY:
            return _UNARY[t].format(a(0))
        if t in (aten.add.Tensor, aten.sub.Tensor) and n.kwargs.get("alpha", 1) != 1:
            op = "+" if t is aten.add.Tensor else "-"
            return f"({a(0)} {op} ((real){float(n.kwargs['alpha'])!r}) * {a(1)})"
        if t in _BINARY:
            return _BINARY[t].format(a(0), a(1))
        if t is aten.rsub.Scalar:
            alpha = float(n.kwargs.get("alpha", 1))
            return f"({a(1)} - {a(0)})" if alpha == 1 else f"({a(1)} - ((real){alpha!r}) * {a(0)})"
        if t is aten.where.self:
            return f"({a(0)} ? {a(1)} : {a(2)})"
        if t is aten.pow.Tensor_Scalar:
            e = n.args[1]
            if e == 2:
                return f"({a(0)} * {a(0)})"
            if e == 1:
                return a(0)
            if e == 0.5:
                return f"SQRT({a(0)})"
            return f"POW({a(0)}, ((real){float(e)!r}))"
        if t in (aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default):
            x = a(0)
            lo = n.args[1] if len(n.args) > 1 else n.kwargs.get("min")
            hi = n.args[2] if len(n.args) > 2 else n.kwargs.get("max")
            if t is aten.clamp_max.default:
                lo, hi = None, n.args[1]
            for v, op in ((lo, "<"), (hi, ">")):
                if v is not None:
                    lit = name[v] if isinstance(v, torch.fx.Node) else f"((real){float(v)!r})"
                    x = f"({x} {op} {lit} ? {lit} : {x})"
            return x
        raise _UnsupportedError(f"operation {t} on the state")

    def _straight(self, outs: list, indent: str) -> tuple[list[str], dict, list]:
        """Straight-line C for one cell computing the C nodes ``outs`` need: (lines, C name of every node
        used, the call nodes in graph order)."""
        need: set = set()
        stack = [o for o in outs if self.cls[o] == "C"]
        while stack:
            n = stack.pop()
            if n in need or self.cls[n] != "C":
                continue
            need.add(n)
            stack.extend(n.all_input_nodes)
        name: dict = {}
        lines: list[str] = []
        for i, (b, kind) in enumerate(zip(self.bounds, self.kinds, strict=True)):
            name[b] = {"s": f"bs{i}", "r": f"br{i}[k]", "c": f"bc{i}[j]", "f": f"bf{i}[kj]"}[kind[0]]
        cell_names = [f"Y[{self.order.index(q)}]" for q in self.model.interior] + [
            "PAR",
            "SWR",
            "KPAR",
        ]
        for n, i in self.cell_inputs.items():
            name[n] = f"{cell_names[i]}[kj]"
        nodes = []
        for n in self.gm.graph.nodes:
            if n in need and n.op == "call_function":
                v = f"v{len(lines)}"
                lines.append(
                    f"{indent}const {'int' if _is_bool(n) else 'real'} {v} = {self._c_expr(n, name)};"
                )
                name[n] = v
                nodes.append(n)
        return lines, name, nodes

    def emit(self, outs: list, targets: list[str], indent: str) -> str:
        """Straight-line C for one cell computing ``outs`` (nodes) into the lvalues ``targets``."""
        lines, name, _ = self._straight(outs, indent)
        for o, tgt in zip(outs, targets, strict=True):
            lines.append(f"{indent}{tgt} = {name[o]};")
        return "\n".join(lines)

    def emit_vjp(
        self, outs: list, seeds: list[str], cell_grads: list[str], indent: str, bounds: Any = None
    ) -> str:
        """Straight-line C for one cell: the forward of ``outs`` and then its vector-Jacobian product for the
        output adjoints ``seeds`` (C expressions), reverse mode node by node (torch's derivative of each
        operation, ties included): added to ``cell_grads[i]`` (lvalue of the adjoint of cell input ``i``:
        the state variables in ``model.interior`` order, PAR, SWR, KPAR) and to ``GB<i>[kj]`` (double, the
        adjoint of boundary value ``i``, for ``i`` in ``bounds``; default all)."""
        lines, name, nodes = self._straight(outs, indent)
        terms: dict = {}
        for o, sd in zip(outs, seeds, strict=True):
            terms.setdefault(o, []).append(f"({sd})")
        for n in reversed(nodes):
            if n not in terms or _is_bool(n):
                continue
            g = "g" + name[n]
            lines.append(f"{indent}const real {g} = {' + '.join(terms[n])};")
            for a, e in self._vjp_terms(n, name, g):
                terms.setdefault(a, []).append(e)
        for n, i in self.cell_inputs.items():
            if n in terms:
                lines.append(f"{indent}{cell_grads[i]} += {' + '.join(terms[n])};")
        for i, b in enumerate(self.bounds):
            if b in terms and (bounds is None or i in bounds):
                lines.append(f"{indent}GB{i}[kj] += (double)({' + '.join(terms[b])});")
        return "\n".join(lines)

    def emit_jvp(
        self, outs: list, targets: list[str], cell_tan: list[str], bound_tan: set, indent: str
    ) -> str:
        """Straight-line C for one cell: the forward of ``outs`` and their tangents (forward mode, torch's
        derivative of each operation, ties included) into the lvalues ``targets`` (one per output), from the
        tangents of the cell inputs (C values ``cell_tan``: state in ``model.interior`` order, PAR, SWR,
        KPAR) and of the boundary values whose index is in ``bound_tan`` (``d<name>``: ``dbs<i>``,
        ``dbr<i>[k]``, ...; the others have none)."""
        lines, name, nodes = self._straight(outs, indent)
        tan: dict = {}
        for n, i in self.cell_inputs.items():
            tan[n] = cell_tan[i]
        for i, b in enumerate(self.bounds):
            if i in bound_tan:
                tan[b] = "d" + name[b]
        for n in nodes:
            if _is_bool(n):
                continue
            e = self._jvp_expr(n, name, tan)
            if e is not None:
                tan[n] = "t" + name[n]
                lines.append(f"{indent}const real t{name[n]} = {e};")
        for o, tgt in zip(outs, targets, strict=True):
            lines.append(f"{indent}{tgt} = {tan.get(o, '(real)0')};")
        return "\n".join(lines)

    def _jvp_expr(self, n: Any, name: dict, tan: dict) -> str | None:
        """The tangent of the C node ``n`` as C (``None``: zero), from its arguments' tangents ``tan``."""
        adj = self._vjp_terms(n, name, "@G@")  # each argument's contribution per unit adjoint: d out / d arg
        terms = []
        for a, e in adj:
            if a in tan:
                terms.append(f"({tan[a]}) * ({e.replace('@G@', '(real)1')})")
        return " + ".join(terms) if terms else None

    def _vjp_terms(self, n: Any, name: dict, g: str) -> list[tuple[Any, str]]:
        """(argument node, its adjoint contribution as C) for the C node ``n`` whose adjoint is ``g``."""
        t, args, y = n.target, n.args, name[n]
        x = [a if isinstance(a, torch.fx.Node) else None for a in args]

        def v(i: int) -> str:  # the value of argument i
            a = args[i]
            return name[a] if isinstance(a, torch.fx.Node) else f"((real){float(a)!r})"

        def on(i: int, e: str) -> list:
            return [(x[i], e)] if i < len(x) and x[i] is not None and not _is_bool(x[i]) else []

        if t in _SAME or t is aten._to_copy.default:
            return on(0, g)
        if t in _CONSTS or _is_bool(n):
            return []
        alpha = float(n.kwargs.get("alpha", 1))
        al = "" if alpha == 1 else f"((real){alpha!r}) * "
        if t in (aten.add.Tensor, aten.add.Scalar):
            return on(0, g) + on(1, f"{al}{g}")
        if t in (aten.sub.Tensor, aten.sub.Scalar):
            return on(0, g) + on(1, f"-{al}{g}")
        if t is aten.rsub.Scalar:
            return on(0, f"-{al}{g}")
        if t in (aten.mul.Tensor, aten.mul.Scalar):
            return on(0, f"{g} * {v(1)}") + on(1, f"{g} * {v(0)}")
        if t in (aten.div.Tensor, aten.div.Scalar):
            return on(0, f"{g} / {v(1)}") + on(1, f"-{g} * {y} / {v(1)}")
        if t in (aten.maximum.default, aten.minimum.default):
            op = ">" if t is aten.maximum.default else "<"
            a0, a1 = v(0), v(1)
            w = f"({a0} {op} {a1} ? (real)1 : ({a0} == {a1} ? (real)0.5 : (real)0))"
            return on(0, f"{g} * {w}") + on(1, f"{g} * ((real)1 - {w})")
        if t is aten.where.self:
            return on(1, f"({v(0)} ? {g} : (real)0)") + on(2, f"({v(0)} ? (real)0 : {g})")
        if t is aten.pow.Tensor_Tensor:
            return on(0, f"{g} * {v(1)} * POW({v(0)}, {v(1)} - (real)1)") + on(
                1, f"(({v(0)} == 0 && {v(1)} >= 0) ? (real)0 : {g} * {y} * LOG({v(0)}))"
            )
        if t is aten.pow.Tensor_Scalar:
            e = float(args[1])
            if e == 0:
                return []
            if e == 1:
                return on(0, g)
            if e == 2:
                return on(0, f"{g} * (real)2 * {v(0)}")
            return on(0, f"{g} * ((real){e!r}) * POW({v(0)}, ((real){e - 1!r}))")
        if t in (aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default):
            lo = args[1] if len(args) > 1 else n.kwargs.get("min")
            hi = args[2] if len(args) > 2 else n.kwargs.get("max")
            if t is aten.clamp_max.default:
                lo, hi = None, args[1]
            if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
                raise _UnsupportedError("the gradient of a clamp to tensor bounds")
            cond = [f"{v(0)} >= ((real){float(lo)!r})"] if lo is not None else []
            cond += [f"{v(0)} <= ((real){float(hi)!r})"] if hi is not None else []
            return on(0, f"(({' && '.join(cond) or '1'}) ? {g} : (real)0)")
        a = v(0)
        unary = {
            aten.exp.default: f"{g} * {y}",
            aten.log.default: f"{g} / {a}",
            aten.sqrt.default: f"{g} / ((real)2 * {y})",
            aten.rsqrt.default: f"(real)-0.5 * {g} * {y} * {y} * {y}",
            aten.neg.default: f"-{g}",
            aten.reciprocal.default: f"-{g} * {y} * {y}",
            aten.abs.default: f"({a} > 0 ? {g} : ({a} < 0 ? -{g} : (real)0))",
            aten.sigmoid.default: f"{g} * {y} * ((real)1 - {y})",
            aten.tanh.default: f"{g} * ((real)1 - {y} * {y})",
            aten.relu.default: f"({y} > 0 ? {g} : (real)0)",
        }
        if t in unary:
            return on(0, unary[t])
        raise _UnsupportedError(f"the gradient of {t}")

    def _build(self) -> ctypes.CDLL:
        from ._fused_c import kernel_source

        self.src = kernel_source(self)
        flags = [*_cbuild.FLAGS, "-fopenmp-simd", "-ffp-contract=fast"]  # fused multiply-adds
        try:
            lib = _cbuild.build_library(
                "column_fused", self.src, [*flags, "-DPELAGOS_MVEC"], ["-lmvec", "-lm"]
            )
        except Exception:  # no glibc vector maths (not glibc, not x86-64): the scalar exp, slower
            lib = _cbuild.build_library("column_fused", self.src, flags, ["-lm"])
        f = lib.pelagos_fused_column
        f.restype = ctypes.c_int  # bit 0: a non-finite value in the new state; bit 1: sub-steps clipped
        i, p, d = ctypes.c_int, ctypes.c_void_p, ctypes.c_double
        f.argtypes = [i, i, i, d, p, p, p, p, p, p, i, p, i, i, p, p]
        if self.adjoint is not None:  # 0, or 4 when its work arrays could not be allocated
            g = lib.pelagos_fused_column_adj
            g.restype = ctypes.c_int
            g.argtypes = [i, i, i, d, p, p, p, p, p, p, p, p, p, p, i, i, i, i]
        if self.tangent_bounds is not None:  # bit 0: non-finite state or tangent; 4: no memory
            g = lib.pelagos_fused_column_tan
            g.restype = ctypes.c_int
            g.argtypes = [i, i, i, d, p, p, p, p, p, p, p, p, p, p, p, i, i]
        return lib

    # ---------------------------------------------------------------------------------------------------
    def _inputs(self, vals: dict, phys: Mapping, n: int) -> tuple[list[str], list, list, bool]:
        """The kernel's inputs for ``n`` steps: (kinds of the boundary values, their compact arrays, the
        moving tracers' centre velocities (n, B, nz), whether the physics differs between columns)."""
        B = self.B
        fvals = self._f_values(vals, phys, n)  # forcing-dependent values of every step, (n, B, nz) views
        kinds, arrays = [], []
        for b in self.bounds:
            if self.cls[b] == "P":
                kind, x = vals[("compact", b)] if ("compact", b) in vals else self._bound_kind(vals[b])
                kinds.append(kind + "P")
            else:
                x = fvals[b]
                kind = self._kind(*x.stride()[1:])
                x = {"s": lambda x=x: x[:, 0, 0], "r": lambda x=x: x[:, 0], "c": lambda x=x: x[:, :, 0],
                     "f": lambda x=x: x}[kind]()  # fmt: skip
                kinds.append(kind + "F")
            arrays.append(x.contiguous())
        wcs = [fvals[w] for w in self.w_nodes]  # (n, B, nz) views
        h, nuh, I0 = phys["h"], phys["nuh"], phys["I_0"].reshape(n, -1)
        per_col = max(h.shape[1], nuh.shape[1], I0.shape[1]) > 1 or any(
            B > 1 and x.stride(1) != 0 and not torch.equal(x, x[:, :1].expand_as(x)) for x in wcs
        )
        return kinds, arrays, wcs, per_col

    def _lib(
        self,
        kinds: list[str],
        means: tuple,
        per_col: bool,
        adjoint: tuple | None = None,
        tangent: tuple | None = None,
    ) -> ctypes.CDLL:
        """The compiled kernel for these kinds of inputs, selection of means, shared or per-column physics
        (and with its adjoint for the boundary values numbered in ``adjoint``, or its tangent for those in
        ``tangent``)."""
        key = (tuple(kinds), means, per_col, adjoint, tangent)
        lib = self._libs.get(key)
        if lib is None:
            self.kinds, self.means, self.per_column = kinds, means, per_col
            self.adjoint = adjoint
            self.tangent_bounds, self.tangent_phys = tangent if tangent is not None else (None, False)
            try:
                lib = self._libs[key] = self._build()
            finally:
                self.adjoint, self.tangent_bounds = None, None
        self.kinds = kinds
        return lib

    def _ranges(self) -> list[tuple[int, int]]:
        """The column ranges of the kernel's calls (one per thread, whole blocks)."""
        B, w = self.B, _W[self.dtype]
        nthreads = max(1, min(torch.get_num_threads(), B // w))
        step = -(-B // nthreads)
        step = -(-step // w) * w
        return [(lo, min(lo + step, B)) for lo in range(0, B, step)]

    def run(self, state: dict, phys: Mapping, prm: Mapping, means: tuple, n: int) -> tuple[dict, dict] | str:
        dtype = self.dtype
        phys = {k: (v.to(dtype) if k in ("h", "nuh", "I_0") else v) for k, v in phys.items()}
        kinds, arrays, wcs, per_col = self._inputs(self._p_values(prm), phys, n)
        h, nuh, I0 = phys["h"], phys["nuh"], phys["I_0"].reshape(n, -1)
        # one block of columns: the kernel computes the physics rows per lane in microseconds, where the
        # shared rows cost ~1 ms of torch calls per call (a day of one column's run is ~2 ms in all)
        columns = self.B
        per_col = per_col or columns <= _W[dtype]
        lib = self._lib(kinds, means, per_col)
        if per_col:  # the kernel computes each column's rows from its h, nuh, I_0 and velocities
            cols = [h, nuh, I0[..., None]] + [x if x.stride(1) != 0 else x[:, :1] for x in wcs]
            cols = [x.contiguous() for x in cols]  # (n, 1 or B, ·)
            cstride = [x.shape[1] * x.shape[2] for x in cols[:3]] + [x.shape[2] if x.shape[1] > 1 else 0
                                                                     for x in cols[:3]]  # fmt: skip
            cstride += [x.shape[1] * x.shape[2] for x in cols[3:]] + [x.shape[2] if x.shape[1] > 1 else 0
                                                                      for x in cols[3:]]  # fmt: skip
            rowbuf = pre = nsub = torch.zeros(1, dtype=dtype)
            self.last_substeps = None
        else:
            rowbuf, pre, nsub = self._rows(h[:, 0], nuh[:, 0], I0, [x[:, 0] for x in wcs])
            cols, cstride = [], [0]
        Y = [state[q].contiguous() for q in self.order]  # read in place: the kernel takes one pointer each
        out, sums = self._forward(lib, n, Y, arrays, rowbuf, pre, nsub, means, cols, cstride, phys)
        new = dict(state)
        new.update(zip(self.order, out.unbind(0), strict=True))
        return new, {q: sums[i] for i, q in enumerate(means)}

    def _forward(
        self, lib: ctypes.CDLL, n: int, Y: list, arrays: list, rowbuf: torch.Tensor, pre: torch.Tensor,
        nsub: torch.Tensor, means: tuple, cols: list, cstride: list, phys: Mapping,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """One call of the forward kernel: (new state (NV, B, nz), float64 sums of the means (·, B, nz))."""
        B, nz, dtype, dt = self.B, self.nz, self.dtype, self.model.dt
        cptrs = (ctypes.c_void_p * max(len(cols), 1))(*[x.data_ptr() for x in cols])
        cstr = (ctypes.c_long * len(cstride))(*cstride)
        out = torch.empty(len(Y), B, nz, dtype=dtype)
        sums = torch.empty(max(len(means), 1), B, nz, dtype=torch.float64)  # the kernel writes every entry
        ptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[x.data_ptr() for x in arrays])
        yptrs = (ctypes.c_void_p * len(Y))(*[y.data_ptr() for y in Y])
        fn = lib.pelagos_fused_column
        flags: list[int] = []

        def call(lo: int, hi: int) -> None:
            flags.append(fn(B, nz, n, ctypes.c_double(dt), yptrs, out.data_ptr(), ptrs, rowbuf.data_ptr(),
               pre.data_ptr(), nsub.data_ptr(), len(means),
               sums.data_ptr(), lo, hi, cptrs, cstr))  # fmt: skip

        _cbuild.run_calls([lambda r=r: call(*r) for r in self._ranges()])
        if any(f & 2 for f in flags):  # physics per column: a column's sub-steps reached GOTM's cap
            from .advection import warn_substeps_clipped

            warn_substeps_clipped(stacklevel=8)
        if any(f & 1 for f in flags):  # as the plain step's solve, never a silent NaN
            bad = [
                q for q, x in zip(self.order, out.unbind(0), strict=True) if not bool(torch.isfinite(x).all())
            ]
            day = float(phys["doy"][0])
            raise SolverError(
                f"pelagos column (fused kernel): a non-finite state ({', '.join(bad)}) in the {n} steps from "
                f"day of year {day:.2f}: NaN or Inf in the state, the forcing or a parameter, or a step that "
                "blew up. Run the same steps with numerics.compile: false (ColumnModel(compile=False)) for "
                "the message that names the input."
            )
        return out, sums

    # -- the gradient ------------------------------------------------------------------------------------
    def run_grad(self, state: dict, phys: Mapping, prm: Mapping, n: int) -> dict | str:
        """``n`` steps recording a gradient: one autograd node (:class:`_FusedSteps`) whose backward is the
        generated adjoint kernel, fed by the boundary values and physics rows computed in torch from the
        parameters (their own graph carries the gradient on to the parameters)."""
        dtype = self.dtype
        phys = {k: (v.to(dtype) if k in ("h", "nuh", "I_0") else v) for k, v in phys.items()}
        h = phys["h"]
        if h.requires_grad or torch.autograd.forward_ad.unpack_dual(h).tangent is not None:
            return "a derivative with respect to the layer thicknesses h (every physics row moves with them)"
        # nuh_scale, I0_scale free: the kernels differentiate the diffusion matrix and the surface light too
        phys_grad = phys["nuh"].requires_grad or phys["I_0"].requires_grad
        vals: dict = {p: prm[k] for p, k in self.prm_inputs.items()}
        self._eval(self.p_nodes, vals)
        kinds, arrays, wcs, per_col = self._inputs(vals, phys, n)
        if per_col:
            return (
                "a gradient with physics per column (the fused adjoint takes physics shared by the columns)"
            )
        h, nuh, I0 = phys["h"], phys["nuh"], phys["I_0"].reshape(n, -1)
        # the adjoint accumulates only what has a gradient to pass on (often two of NPZD's sixteen values)
        need = tuple(i for i, a in enumerate(arrays) if a.requires_grad)
        lib = self._lib(kinds, (), False, adjoint=(need, phys_grad))
        rowbuf, pre, nsub = self._rows(h[:, 0], nuh[:, 0], I0, [x[:, 0] for x in wcs])
        Y = [state[q] for q in self.order]
        outs = _FusedSteps.apply(self, lib, n, phys, nsub, need, len(Y), *Y, rowbuf, pre, *arrays)
        new = dict(state)
        new.update(zip(self.order, outs, strict=True))
        return new

    def _adjoint(
        self, lib: ctypes.CDLL, n: int, Y: list, rowbuf: torch.Tensor, arrays: list, pre: torch.Tensor,
        nsub: torch.Tensor, gout: torch.Tensor, need: tuple, kinds: list[str],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:  # fmt: skip
        """The adjoint kernel: given the adjoint of the state after the ``n`` steps (NV, B, nz), the adjoints
        of the state before them (NV, B, nz), of the physics rows (n, NR, nz), of the surface light
        ``I_0 (1 - A)`` (n,) and of the boundary arrays numbered in ``need`` (``None`` for the others)."""
        B, nz, dtype, dt = self.B, self.nz, self.dtype, self.model.dt
        self.adjoint_calls += 1
        ranges = self._ranges()
        nslots = len(ranges)
        gstate = torch.empty(len(Y), B, nz, dtype=dtype)
        gbufs = []
        for i, kind in enumerate(kinds):
            shape, when = kind[0], kind[1]
            if i not in need:
                gbufs.append(None)
                continue
            gbufs.append(torch.zeros(n if when == "F" else 1, B if shape in "cf" else nslots,
                                     nz if shape in "rf" else 1, dtype=torch.float64))  # fmt: skip
        grow = torch.zeros(nslots, *rowbuf.shape, dtype=torch.float64)
        gpre = torch.zeros(nslots, n, dtype=torch.float64)
        ptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[x.data_ptr() for x in arrays])
        gptrs = (ctypes.c_void_p * max(len(gbufs), 1))(*[0 if x is None else x.data_ptr() for x in gbufs])
        yptrs = (ctypes.c_void_p * len(Y))(*[y.data_ptr() for y in Y])
        fn = lib.pelagos_fused_column_adj
        flags: list[int] = []

        def call(slot: int, lo: int, hi: int) -> None:
            flags.append(fn(B, nz, n, ctypes.c_double(dt), yptrs, gout.data_ptr(), ptrs, rowbuf.data_ptr(),
               pre.data_ptr(), nsub.data_ptr(), gstate.data_ptr(), gptrs, grow.data_ptr(), gpre.data_ptr(),
               lo, hi, slot, nslots))  # fmt: skip

        _cbuild.run_calls([lambda i=i, r=r: call(i, *r) for i, r in enumerate(ranges)])
        if any(flags):
            raise MemoryError("pelagos column (fused adjoint): its work arrays could not be allocated")
        garrays = []
        for kind, g, a in zip(kinds, gbufs, arrays, strict=True):
            if g is not None and kind[0] in "sr":  # shared by the columns: the calls' partial sums
                g = g.sum(1)
            garrays.append(None if g is None else g.reshape(a.shape).to(dtype))
        return gstate, grow.sum(0).to(dtype), gpre.sum(0).to(dtype), garrays

    def _tangent(
        self, n: int, Y: list, dY: list, rowbuf: torch.Tensor, drow: torch.Tensor | None, arrays: list,
        darrays: list, pre: torch.Tensor, dpre: torch.Tensor | None, nsub: torch.Tensor, phys: Mapping,
        kinds: list[str],
    ) -> torch.Tensor:  # fmt: skip
        """The tangent kernel: the tangent of the state after the ``n`` steps (NV, B, nz), given the tangents
        of the state before them, of the physics rows, of the surface light ``I_0 (1 - A)`` and of the
        boundary arrays (``None``: zero)."""
        B, nz, dtype, dt = self.B, self.nz, self.dtype, self.model.dt
        self.tangent_calls += 1
        which = tuple(i for i, t in enumerate(darrays) if t is not None)
        # the matrix and surface light's tangents (nuh_scale, I0_scale), compiled in only when they have one
        phys_tan = dpre is not None or (drow is not None and bool(drow[:, 1:6].any()))
        lib = self._lib(kinds, (), False, tangent=(which, phys_tan))
        dpre = torch.zeros_like(pre) if dpre is None else dpre.detach().to(dtype).contiguous()
        dts = [None if t is None else t.detach().to(dtype).contiguous() for t in dY]
        drow = torch.zeros_like(rowbuf) if drow is None else drow.detach().to(dtype).contiguous()
        dar = [None if t is None else t.detach().to(dtype).contiguous() for t in darrays]
        out = torch.empty(len(Y), B, nz, dtype=dtype)
        dout = torch.empty(len(Y), B, nz, dtype=dtype)
        keep = (dts, drow, dar, dpre)
        ptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[x.data_ptr() for x in arrays])
        dptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[0 if x is None else x.data_ptr() for x in dar])
        yptrs = (ctypes.c_void_p * len(Y))(*[y.data_ptr() for y in Y])
        dyptrs = (ctypes.c_void_p * len(Y))(*[0 if t is None else t.data_ptr() for t in dts])
        fn = lib.pelagos_fused_column_tan
        flags: list[int] = []

        def call(lo: int, hi: int) -> None:
            flags.append(fn(B, nz, n, ctypes.c_double(dt), yptrs, dyptrs, out.data_ptr(), dout.data_ptr(),
               ptrs, dptrs, rowbuf.data_ptr(), drow.data_ptr(), pre.data_ptr(), dpre.data_ptr(),
               nsub.data_ptr(), lo, hi))  # fmt: skip

        _cbuild.run_calls([lambda r=r: call(*r) for r in self._ranges()])
        del keep
        if any(f & 4 for f in flags):
            raise MemoryError("pelagos column (fused tangent): its work arrays could not be allocated")
        if any(f & 1 for f in flags):
            raise SolverError(
                f"pelagos column (fused tangent kernel): a non-finite state or tangent in the {n} steps from "
                f"day of year {float(phys['doy'][0]):.2f}"
            )
        return dout


class _FusedSteps(torch.autograd.Function):
    """The fused kernel's steps as one autograd node: forward = the kernel; backward = its generated adjoint
    (which recomputes the steps from the saved start state: O(state) memory between forward and backward);
    forward mode = its generated tangent-linear kernel. Differentiable inputs: the state before the steps,
    the physics rows, the surface light ``I_0 (1 - A)`` of each step and the boundary arrays."""

    @staticmethod
    def forward(ctx: Any, plan: _Plan, lib: ctypes.CDLL, n: int, phys: Mapping, nsub: torch.Tensor,
                need: tuple, nv: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
        Y = [t.detach().contiguous() for t in tensors[:nv]]
        rowbuf, pre = tensors[nv].detach().contiguous(), tensors[nv + 1].detach().contiguous()
        arrays = [t.detach().contiguous() for t in tensors[nv + 2 :]]
        out, _ = plan._forward(lib, n, Y, arrays, rowbuf, pre, nsub, (), [], [0], phys)
        ctx.save_for_backward(*Y, rowbuf, pre, *arrays)
        ctx.plan, ctx.lib, ctx.n, ctx.nsub, ctx.nv, ctx.phys = plan, lib, n, nsub, nv, phys
        ctx.need = need  # the boundary values with a gradient, as the adjoint was built for
        ctx.kinds = list(plan.kinds)  # the kinds of the boundary values of this call (the plan's change)
        ctx.fw = (Y, rowbuf, pre, arrays)  # forward mode reads the inputs without the saved-tensor checks
        return tuple(out.unbind(0))

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> tuple[torch.Tensor, ...]:
        nv = ctx.nv
        Y, rowbuf, pre, arrays = ctx.fw
        ts = tangents[7:]
        dout = ctx.plan._tangent(ctx.n, Y, list(ts[:nv]), rowbuf, ts[nv], arrays, list(ts[nv + 2 :]),
                                 pre, ts[nv + 1], ctx.nsub, ctx.phys, ctx.kinds)  # fmt: skip
        return tuple(dout.unbind(0))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *gouts: torch.Tensor) -> tuple:
        saved = ctx.saved_tensors
        nv, plan = ctx.nv, ctx.plan
        Y, rowbuf, pre, arrays = list(saved[:nv]), saved[nv], saved[nv + 1], list(saved[nv + 2 :])
        g = torch.stack([torch.zeros_like(Y[0]) if x is None else x.to(Y[0].dtype) for x in gouts])
        gstate, grow, gpre, garrays = plan._adjoint(ctx.lib, ctx.n, Y, rowbuf, arrays, pre, ctx.nsub,
                                                    g.contiguous(), ctx.need, ctx.kinds)  # fmt: skip
        return (None,) * 7 + (*gstate.unbind(0), grow, gpre, *garrays)


_W = {torch.float64: 8, torch.float32: 16}


def _pad_rows(rows: list[torch.Tensor], nz: int) -> list[torch.Tensor]:
    """Rows of nz - 1 (faces) padded to nz, so that every row of the packed buffer has nz entries."""
    out = []
    for r in rows:
        if r.shape[-1] == nz - 1:
            r = torch.nn.functional.pad(r, (0, 1))
        out.append(r)
    return out


def _is_bool(n: Any) -> bool:
    v = n.meta.get("val")
    return v is not None and getattr(v, "dtype", None) is torch.bool


def _const_like(value: float):
    def f(n: Any) -> float:
        return value

    return f


_CONSTS = {
    aten.zeros_like.default: _const_like(0.0),
    aten.ones_like.default: _const_like(1.0),
    aten.full_like.default: lambda n: n.args[1],
}
