"""One QG step as a single autograd node with a hand-written backward (the adjoint of the step).

Recorded operation by operation, a step leaves ~25 nodes in the autograd graph; at 64² their backward
kernels are so small that launch overhead, broadcast reductions and zero-filled gradients of views cost more
than the FFTs. Every piece of the step is linear in the state except the flux ``(u + U)·q``, so its adjoint
is a short, fixed sequence of the same operators conjugated (the transforms' adjoints are in
:mod:`pelagos.qg.fftops`):

forward                                       backward (ḡ = incoming gradient, PyTorch's complex convention)
ψ̂ = a q̂  (per wavenumber, a real)            q̂̄ += aᵀ ψ̄,            ā = Σ_B Re(ψ̄ conj(q̂))
(u, v) = irfft2(op_v ψ̂)                       ψ̄ += Σ_c conj(op_v)_c ·2· rfft2(ū_c)   (interior columns ×2)
F = ((u, v) + U)·q                             ū = F̄·q,  q̄ = Σ_c F̄_c (u_c + U_c),  Ū = Σ F̄·q
D = Σ_c op_d,c rfft2(F_c)                      F̄ = irfft2(conj(op_d)·w D̄)           (interior columns ×½)
d = D + lin ψ̂                                 D̄ = d̄,  ψ̄ += conj(lin) d̄,  l̄in = Σ_B conj(ψ̂) d̄
q̂⁺ = filtr·(q̂ + w₀d + w₁p + w₂pp)             (the AB3 sum and filter: transposes of real scalings)
q⁺ = irfft2(q̂⁺)                               q̂̄⁺ += rfft2(q̄⁺)·(2 on interior columns)/M

Used only where it is exact and simple: no closure, unbatched parameters, one bootstrap level for the whole
batch, plain tensors (outside torch.func transforms and forward-mode dual numbers, which take the recorded
path). Tests compare its gradients with the recorded path and with finite differences.

Second derivatives (``create_graph=True``: Hessians, Hessian-vector products, the Laplace covariance) are
exact too: a backward with grad mode on re-runs the step from the saved inputs with recorded operations and
returns its vector-Jacobian product as a differentiable function of the inputs and incoming gradients. (This
node used to be ``@once_differentiable``; that guard raises only when the engine walks through it, and
``torch.autograd.grad(g, inputs)`` prunes it: the second-order terms through the step were silently dropped,
e.g. ∂²J/∂u² of a log-transformed parameter came back as ∂J/∂u.)
"""

from __future__ import annotations

import torch

from . import _step_c
from .fftops import divergence, velocities


def _reduce_to(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``x`` over the leading/broadcast dims so that it has ``shape`` (gradient of a broadcast input)."""
    lead = x.ndim - len(shape)
    if lead:
        x = x.reshape(x.shape[lead:]) if all(n == 1 for n in x.shape[:lead]) else x.sum(tuple(range(lead)))
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return x.sum(dims, keepdim=True) if dims else x


def _grad_U(g_uv: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Gradient of the background flow (U, 0) from ū = F̄·q (B, 2, nz, ny, nx): the v part gets none."""
    g_U = _reduce_to(g_uv, shape).clone()
    g_U[1] = 0.0  # the forward adds only the u component of (U, 0)
    return g_U


class QGStep(torch.autograd.Function):
    """``(q⁺, q̂⁺, d) = step(q̂, q, p, pp; a, lin, U, filtr)`` for fixed AB weights (w₀, w₁, w₂)."""

    @staticmethod
    def forward(ctx, qh, q, p, pp, a, lin, Ubg_uv, filtr, k):
        """``k``: the model's constant operators and sizes (a dict: vel_M, mdiv, their adjoints, w, shape)."""
        ny, nx = k["shape"]
        nz = qh.shape[-3]
        need = ctx.needs_input_grad
        ctx.k = k
        ctx.compiled = k["c"] is not None and not need[7]  # the filter's gradient needs the pre-filter state
        if ctx.compiled:
            return _forward_compiled(ctx, qh, q, p, pp, a, lin, Ubg_uv, filtr, k)
        # ψ̂ = a q̂ on real views (a is real): no complex promotion of a
        qr, a_r = torch.view_as_real(qh), k["a_r"]  # a with an explicit (re, im) axis
        phr = a_r[:, 0] * qr[:, 0:1]
        for j in range(1, nz):
            phr = phr.addcmul_(a_r[:, j], qr[:, j : j + 1])
        ph = torch.view_as_complex(phr)
        uvU = torch.fft.irfft2(ph.unsqueeze(1) * k["vel_M"], s=(ny, nx), norm="forward")
        uvU[:, 0].add_(Ubg_uv[0])  # Ubg_uv = (U, 0): v has no background flow
        flux = uvU * q.unsqueeze(1)
        fh, mdiv = torch.fft.rfft2(flux), k["mdiv"]
        d = torch.mul(lin, ph).addcmul_(mdiv[0], fh[:, 0]).addcmul_(mdiv[1], fh[:, 1])
        w0, w1, w2 = k["w"]
        new = torch.add(qh, d, alpha=w0)
        if w1:
            new.add_(p, alpha=w1)
        if w2:
            new.add_(pp, alpha=w2)
        qh_new = torch.view_as_complex(torch.view_as_real(new) * k["filtr_r"])
        q_new = torch.fft.irfft2(qh_new, s=(ny, nx))
        # keep only what the requested gradients need (a 1000-step gradient holds 1000 of these):
        # ψ̂ for l̄in, the pre-filter state (and p, pp) for f̄iltr; q, u + U and q̂ always (q̂ for ā and
        # for re-running the step in a second backward, _backward_differentiable)
        ctx.save_for_backward(
            qh,
            q,
            a,
            lin,
            filtr,
            ph if need[5] else None,
            uvU,
            new if need[7] else None,
            Ubg_uv,
            p if need[7] else None,
            pp if need[7] else None,
        )
        return q_new, qh_new, d

    @staticmethod
    def backward(ctx, gq, gqh, gd):
        if torch.is_grad_enabled():  # create_graph=True: the adjoint itself will be differentiated
            return _backward_differentiable(ctx, gq, gqh, gd)
        if ctx.compiled:
            return _backward_compiled(ctx, gq, gqh, gd)
        qh, q, a, lin, filtr, ph, uvU, new, _, _, _ = ctx.saved_tensors
        k = ctx.k
        ny, nx = k["shape"]
        need = ctx.needs_input_grad
        # q⁺ = irfft2(q̂⁺) (1/M): its adjoint is rfft2 / M with the interior columns counted twice
        g_new = torch.addcmul(gqh, torch.fft.rfft2(gq), k["c2r_adj"])  # w.r.t. q̂⁺ (after the filter)
        g_filtr = None
        if need[7]:
            g_filtr = _reduce_to(torch.real(g_new * new.conj()), filtr.shape)
        g_new = torch.view_as_complex(torch.view_as_real(g_new).mul_(k["filtr_r"]))
        w0, w1, w2 = k["w"]
        g_p = g_new * w1 if need[2] else None
        g_pp = g_new * w2 if need[3] else None
        g_d = torch.add(gd, g_new, alpha=w0)
        g_lin = _reduce_to(ph.conj() * g_d, lin.shape) if need[5] else None
        g_ph = k["lin_conj"] * g_d
        # D = Σ_c op_d,c rfft2(F_c): F̄ = irfft2(conj(op_d)·w D̄) unnormalised
        g_flux = torch.fft.irfft2(g_d.unsqueeze(1) * k["mdiv_adj"], s=(ny, nx), norm="forward")
        g_q = torch.addcmul(g_flux[:, 0] * uvU[:, 0], g_flux[:, 1], uvU[:, 1]) if need[1] else None
        g_uv = g_flux.mul_(q.unsqueeze(1))
        g_U = _grad_U(g_uv, k["U_shape"]) if need[6] else None
        guh, vadj = torch.fft.rfft2(g_uv), k["vel_M_adj"]
        g_ph.addcmul_(vadj[0], guh[:, 0]).addcmul_(vadj[1], guh[:, 1])
        g_a = None
        if need[4]:
            # ā_ij = Σ_B Re(ψ̄_i conj(q̂_j))
            g_a = _reduce_to(torch.real(g_ph.unsqueeze(2) * qh.conj().unsqueeze(1)), a.shape)
        # q̂̄ = filtr·ḡ (direct term) + aᵀ ψ̄
        gr, a_r = torch.view_as_real(g_ph), k["a_r"]
        g_qh = torch.addcmul(torch.view_as_real(g_new), a_r[0], gr[:, 0:1])
        for i in range(1, a.shape[0]):
            g_qh.addcmul_(a_r[i], gr[:, i : i + 1])
        return torch.view_as_complex(g_qh), g_q, g_p, g_pp, g_a, g_lin, g_U, g_filtr, None


def _head(buf: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The first elements of a contiguous scratch buffer as a contiguous tensor of ``shape``."""
    return buf.view(-1)[: shape.numel()].view(shape)


def _forward_compiled(ctx, qh, q, p, pp, a, lin, Ubg_uv, filtr, k):
    """The forward with the fused C kernels of the no-grad step (same arithmetic, to rounding). Scratch
    arrays come from the model's workspace; only what the backward keeps and the outputs are new."""
    cc, plan, ws = k["c"], k["plan"], k["ws"]
    need = ctx.needs_input_grad
    ph = torch.empty_like(qh) if need[5] else ws["ph"]
    uvh, fh = ws["uvh"], ws["fh"]
    _step_c.invert(qh, cc["a"], cc["kM"], cc["lM"], ph, uvh)
    uvU = torch.empty_like(ws["uv"])
    plan.irfft2(uvh, uvU, "forward", fh)
    _step_c.flux(uvU, q, cc["U"], out=ws["uv"])  # uvU ← (u + U, v), kept for the backward
    plan.rfft2(ws["uv"], fh, uvh)
    d, qh_new = torch.empty_like(qh), torch.empty_like(qh)
    _step_c.update(qh, ph, fh, p, pp, cc["lin"], cc["kk"], cc["ll"], cc["filtr"], k["w_t"], d, qh_new)
    q_new = plan.irfft2(qh_new, torch.empty_like(q), "backward", _head(uvh, qh.shape))
    # the layout of QGStep.forward's torch path (no f̄iltr here: it needs the pre-filter state)
    ctx.save_for_backward(qh, q, a, lin, filtr, ph if need[5] else None, uvU, None, Ubg_uv, None, None)
    return q_new, qh_new, d


def _backward_workspace(ws: dict) -> dict:
    bw = ws.get("bw")
    if bw is None:
        spec, spec2, grid2 = ws["ph"], ws["uvh"], ws["uv"]
        bw = {n: torch.empty_like(spec) for n in ("G", "gn", "gdo", "gph")}
        bw.update({n: torch.empty_like(spec2) for n in ("X", "Guv", "tmp")}, gf=torch.empty_like(grid2))
        ws["bw"] = bw
    return bw


def _backward_compiled(ctx, gq, gqh, gd):
    qh, q, a, lin, _, ph, uvU, _, _, _, _ = ctx.saved_tensors
    k = ctx.k
    cc, plan, bw = k["c"], k["plan"], _backward_workspace(k["ws"])
    need = ctx.needs_input_grad
    # the kernels read raw memory: a lazily conjugated gradient (is_conj(), e.g. of a loss with qh.conj())
    # must be materialised, .contiguous() keeps the conj bit and the kernels would read conj(ḡ)
    gq, gqh, gd = gq.contiguous(), gqh.resolve_conj().contiguous(), gd.resolve_conj().contiguous()
    X, gn, gdo, gph = bw["X"], bw["gn"], bw["gdo"], bw["gph"]
    G = plan.rfft2(gq, bw["G"], _head(bw["tmp"], gqh.shape))
    gp = torch.empty_like(gqh) if need[2] else None
    gpp = torch.empty_like(gqh) if need[3] else None
    g_lin = lin.new_empty(lin.shape) if need[5] else None  # Σ_B conj(ψ̂)·d̄, summed inside the kernel
    _step_c.adj_update(
        gqh, G, gd, cc["c2r_adj"], cc["filtr"], k["w_t"], cc["lin_conj"], cc["kk"], cc["ll"], cc["wk"],
        gn, gp, gpp, gdo, gph, X, ph, g_lin,
    )  # fmt: skip
    gf = plan.irfft2(X, bw["gf"], "forward", bw["tmp"])
    g_q = torch.empty_like(q) if need[1] else None
    _step_c.adj_flux(gf, q, uvU, g_q)  # gf ← F̄·q = ū
    g_U = _grad_U(gf, k["U_shape"]) if need[6] else None
    Guv = plan.rfft2(gf, bw["Guv"], X)
    g_qh = torch.empty_like(gqh)
    _step_c.adj_invert(gph, Guv, cc["kM"], cc["lM"], cc["wk"], cc["a"], gn, g_qh)
    g_a = _reduce_to(torch.real(gph.unsqueeze(2) * qh.conj().unsqueeze(1)), a.shape) if need[4] else None
    return g_qh, g_q, gp, gpp, g_a, g_lin, g_U, None, None


def _backward_differentiable(ctx, gq, gqh, gd):
    """The vector-Jacobian product under ``create_graph=True``: the step re-run from the saved inputs with
    recorded operations (same arithmetic as the forward, to rounding) and differentiated with a graph, so the
    result is a differentiable function of the inputs (which keep their own graphs: the state and the
    coefficients, hence the parameters) and of the incoming gradients — second derivatives are exact."""
    qh, q, a, lin, filtr, _, _, _, Ubg_uv, p, pp = ctx.saved_tensors
    k, need = ctx.k, ctx.needs_input_grad
    ny, nx = k["shape"]
    # p and pp enter linearly with constant weights: their values matter only for f̄iltr (then saved);
    # otherwise zero placeholders give their gradients (w₁, w₂ times the filtered incoming gradient)
    if p is None:
        p = torch.zeros_like(qh, requires_grad=need[2])
    if pp is None:
        pp = torch.zeros_like(qh, requires_grad=need[3])
    with torch.enable_grad():
        # one alias node per input: the gradient with respect to an alias counts only the paths through it,
        # whereas one input may be an ancestor of another (q = irfft2(q̂) from the previous step, q̂ = rfft2(q)
        # from state_from_q), and a gradient with respect to the input itself would count the other's too
        inputs = tuple(x.view_as(x) for x in (qh, q, p, pp, a, lin, Ubg_uv, filtr))
        qh, q, p, pp, a, lin, Ubg_uv, filtr = inputs
        ph = (a * qh.unsqueeze(-4)).sum(-3)  # ψ̂_i = Σ_j a_ij q̂_j
        # the recorded path's transforms (qg/fftops.py: cheaper backward, differentiable again)
        uv = velocities(ph, k["vel_M"], k["vel_M_adj"], (ny, nx))
        uvU = torch.stack((uv[:, 0] + Ubg_uv[0], uv[:, 1]), 1)  # (u + U, v): v has no background flow
        d = lin * ph + divergence(uvU * q.unsqueeze(1), k["mdiv"], k["mdiv_adj"])
        w0, w1, w2 = k["w"]
        qh_new = (qh + w0 * d + w1 * p + w2 * pp) * filtr
        q_new = torch.fft.irfft2(qh_new, s=(ny, nx))
        wanted = [i for i in range(8) if need[i]]
        grads = torch.autograd.grad(
            (q_new, qh_new, d),
            [inputs[i] for i in wanted],
            (gq, gqh, gd),
            create_graph=True,
            allow_unused=True,
        )
    out: list[torch.Tensor | None] = [None] * 9
    for i, g in zip(wanted, grads):
        out[i] = g if g is not None else torch.zeros_like(inputs[i])
    return tuple(out)


def step_constants(
    model,
    c: dict[str, torch.Tensor],
    weights: tuple[float, float, float],
    w_t: torch.Tensor,
    cc: dict | None,
    ws: dict | None,
) -> dict:
    """The constant operators and sizes :class:`QGStep` needs (references into the coefficients ``c``);
    ``w_t``: the AB3 weights as a tensor; ``cc``, ``ws``: the compiled kernels' operands and the model's
    scratch workspace (None: the torch path)."""
    return {
        "shape": (model.ny, model.nx),
        "w": weights,
        "w_t": w_t,
        "c": cc,
        "ws": ws,
        "plan": None if ws is None else ws["fft"],
        "vel_M": c["vel_M"],
        "mdiv": c["mdiv"],
        "vel_M_adj": c["vel_M_adj"],
        "mdiv_adj": c["mdiv_adj"],
        "c2r_adj": c["c2r_adj"],
        "a_r": c["a_r"].detach(),
        "filtr_r": c["filtr_r"].detach(),
        "lin_conj": c["lin_conj"],
        "U_shape": c["Ubg_uv"].shape,
    }
