"""The variational problem shared by calibration, 4D-Var and the Laplace approximation.

Control vector ``z = [u, v, w]``:

- ``u`` (p,): unconstrained values of the model's *free* parameters (log/logit space, see core.params);
- ``v``: whitened initial-state increment, ``x0 = x_b + S_B v`` with ``S_B S_Bᵀ = B`` (only if the state is
  controlled);
- ``w``: whitened model-error forcing of weak-constraint 4D-Var, ``η_j = S_Q w_j`` added to the state after
  every ``model_error_every`` steps.

Cost ``J(z) = ½‖r(z)‖²`` with the whitened residual vector
``r = [ (H(x(t_i)) − y_i)/σ_i ; v ; w ; (u − μ_prior)/s_prior ]`` — i.e. the observation misfit, the
background
term, the model-error term and the Gaussian priors of the parameters (in unconstrained space).
"""

from __future__ import annotations

import contextlib

import torch
import torch.utils._pytree as pytree

from ..core._torch_quirks import load_jvp_decompositions
from ..core.covariance import Covariance, as_covariance
from ..core.errors import ConfigError, check_choice
from ..core.observations import ObservationSet
from .forward import predict, step_function
from .state_tree import flatten, leaves, numel, tree_map, unflatten


def _is_dual(t: torch.Tensor) -> bool:
    import torch.autograd.forward_ad as fwAD

    return fwAD.unpack_dual(t).tangent is not None


class VariationalProblem:
    """Whitened least-squares problem of a Model against an ObservationSet (see module docstring)."""

    def __init__(
        self,
        model: object,
        obs: ObservationSet,
        state: object,
        *,
        t0: float = 0.0,
        dt: float | None = None,
        control_params: bool = True,
        control_state: bool = False,
        B: Covariance | torch.Tensor | float | dict | None = None,
        Q: Covariance | torch.Tensor | float | None = None,
        model_error_every: int = 1,
        checkpoint: int | str | None = None,
        jacobian: str = "forward",
        bundle_step: float = 1e-5,
        include_prior: bool = True,
    ) -> None:
        check_choice("jacobian", jacobian, ["forward", "bundle"])
        self.jacobian_mode, self.bundle_step = jacobian, float(bundle_step)
        self.model, self.obs, self.xb, self.t0 = model, obs, state, float(t0)
        self.step, self.dt = step_function(model, dt)
        self.checkpoint = checkpoint
        self.dtype = leaves(state)[0].dtype
        self.param_names: list[str] = []
        u0 = torch.zeros(0, dtype=self.dtype)
        if control_params and hasattr(model, "free_parameter_names"):
            self.param_names = model.free_parameter_names()
            u0 = model.free_vector().to(self.dtype)
        self.p = len(self.param_names)
        self._prior = []
        for i, n in enumerate(self.param_names):
            pr = model.parameter_spec(n).prior
            if pr is not None and include_prior:
                self._prior.append((i, pr.mean, pr.std))
        # background covariance of the initial state
        self.control_state = control_state
        self.B = None
        if control_state:
            if B is None:
                raise ConfigError(
                    "control_state=True needs a background-error covariance B (a Covariance, a "
                    "matrix, stds, or a "
                    "dict of these per state variable)"
                )
            if isinstance(state, dict):
                Bd = B if isinstance(B, dict) else dict.fromkeys(state, B)
                missing = set(state) - set(Bd)
                if missing:
                    raise ConfigError(f"B has no entry for state variables {sorted(missing)}")
                self.B = {k: as_covariance(Bd[k], state[k].shape[-1]) for k in state}
            else:
                self.B = as_covariance(B, state.shape[-1])
        self.nv = numel(state) if control_state else 0
        # model error (weak constraint)
        self.Q = None
        self.every = int(model_error_every)
        self.nw = 0
        if Q is not None:
            if not torch.is_tensor(state):
                raise ConfigError("weak-constraint 4D-Var needs a tensor state (got a dict)")
            if self.every < 1:
                raise ConfigError(f"model_error_every must be >= 1; got {model_error_every}")
            self.Q = as_covariance(Q, state.shape[-1])
            n_steps = int(obs.step_indices(self.dt, self.t0).max()) if obs.n_times else 0
            self.n_blocks = n_steps // self.every
            self.nw = self.n_blocks * state.numel()
        self.z0 = torch.cat([u0, torch.zeros(self.nv + self.nw, dtype=self.dtype)])
        self._batched_jac = True
        self._jac_checked = False
        # how the latest Jacobian was formed: {"path": "batched" | "jacfwd" | "bundle", "reason": why the
        # batched forward mode was not used (its exception, or the guard's mismatch), "guard": its comparison}
        self.jacobian_info: dict = {}
        # H(x(t_i)) (detached) of the first and the latest single control predicted: the driver's misfits,
        # plots and cost terms before/after reuse them instead of running the model again
        # (z, predictions, whether that run recorded a graph)
        self._first: tuple[torch.Tensor, torch.Tensor, bool] | None = None
        self._last: tuple[torch.Tensor, torch.Tensor, bool] | None = None

    # -- control vector ------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.z0.numel())

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(u, v, w)`` parts of z (``z`` may carry one leading batch dim of controls)."""
        return z[..., : self.p], z[..., self.p : self.p + self.nv], z[..., self.p + self.nv :]

    def initial_state(self, z: torch.Tensor) -> object:
        """``x0 = x_b + S_B v``."""
        _, v, _ = self.split(z)
        if not self.control_state:
            if z.ndim == 2:  # a batch of controls: one copy of the state per control (nested dicts too)
                n = z.shape[0]
                if isinstance(self.xb, dict) and all(
                    t.ndim and t.shape[0] == 1 for t in pytree.tree_leaves(self.xb)
                ):
                    # a dict state carries a leading batch (member, column) dim: a batch of one member becomes
                    # n members along that dim, as an ensemble runs (the compiled column step takes (B, nz)
                    # tracers, not a new leading dim in front of them)
                    return pytree.tree_map_only(torch.Tensor, lambda t: t.expand(n, *t.shape[1:]), self.xb)
                return pytree.tree_map_only(torch.Tensor, lambda t: t.expand(n, *t.shape), self.xb)
            return self.xb
        if z.ndim == 2:  # batch of controls (fast Jacobian): tensor states only
            return self.xb + self.B.sqrt_apply(v.reshape(z.shape[0], *self.xb.shape))
        vs = unflatten(v, self.xb)
        if isinstance(self.xb, dict):
            return {k: self.xb[k] + self.B[k].sqrt_apply(vs[k]) for k in self.xb}
        return self.xb + self.B.sqrt_apply(vs)

    def params_context(self, z: torch.Tensor) -> contextlib.AbstractContextManager:
        u, _, _ = self.split(z)
        return self.model.using(u) if self.p else contextlib.nullcontext()

    # -- forward ---------------------------------------------------------------------------------------------
    def predict(self, z: torch.Tensor, *, return_final: bool = False):
        """``H(x(t_i))`` (n_t, *batch, m) for control ``z`` (and the state at the last observation time)."""
        x0 = self.initial_state(z)
        if torch.is_grad_enabled() and z.requires_grad and not self.control_state:
            # the first step's state then requires grad as every later one does: a compiled step (specialised
            # on which inputs require grad) runs one program for all steps instead of compiling a second one
            # for the first (the extra gradient, that of x0, is not used)
            x0 = pytree.tree_map_only(
                torch.Tensor, lambda t: t.detach().requires_grad_(t.is_floating_point()), x0
            )
        with self.params_context(z):
            if self.Q is None:
                out = predict(
                    self.model,
                    x0,
                    self.obs,
                    t0=self.t0,
                    dt=self.dt,
                    checkpoint=self.checkpoint,
                    return_final=return_final,
                )
            else:
                out = self._predict_weak(x0, self.split(z)[2], return_final, z.shape[:-1])
        self._remember(z, out[0] if return_final else out)
        return out

    def _remember(self, z: torch.Tensor, pred: torch.Tensor) -> None:
        if z.ndim != 1 or _is_dual(z) or _is_dual(pred):
            return
        entry = (z.detach().clone(), pred.detach(), bool(pred.requires_grad))
        if self._first is None:
            self._first = entry
        self._last = entry

    def predictions(self, z: torch.Tensor) -> torch.Tensor:
        """``H(x(t_i))`` for the single control ``z`` without a graph: the remembered values when ``z`` is the
        first or the latest control this problem predicted (bitwise the same run), else a new run."""
        pred = self._remembered(z)
        if pred is not None:
            return pred
        with torch.no_grad():
            return self.predict(z.detach())

    def _predict_weak(self, x: torch.Tensor, w: torch.Tensor, return_final: bool, zb: tuple = ()):
        idx = self.obs.step_indices(self.dt, self.t0).tolist()
        eta = None
        if self.n_blocks:
            eta = self.Q.sqrt_apply(w.reshape(*zb, self.n_blocks, *self.xb.shape)).movedim(len(zb), 0)
        preds, j = [], 0
        n_max = idx[-1] if idx else 0
        for k in range(n_max + 1):
            while j < len(idx) and idx[j] == k:
                preds.append(self.obs.operator(x))
                j += 1
            if k == n_max:
                break
            x = self.step(x, self.t0 + k * self.dt)
            if (k + 1) % self.every == 0 and (k + 1) // self.every <= self.n_blocks:
                x = x + eta[(k + 1) // self.every - 1]
        pred = torch.stack(preds)
        return (pred, x) if return_final else pred

    def residuals(self, z: torch.Tensor) -> torch.Tensor:
        """Whitened residual vector r(z); the cost is ½‖r‖²."""
        return self._residuals_of(z, self.predict(z))

    def _residuals_of(self, z: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """r(z) from the predictions ``pred = H(x(t_i))`` of the control ``z``."""
        u, v, w = self.split(z)
        ro = self.obs.residual(pred)
        ro = ro.movedim(1, 0).reshape(z.shape[0], -1) if z.ndim == 2 else ro.reshape(-1)
        r = [ro, v, w]
        if self._prior:
            i, m, s = zip(*self._prior)
            r.append((u[..., list(i)] - torch.tensor(m, dtype=u.dtype)) / torch.tensor(s, dtype=u.dtype))
        return torch.cat(r, dim=-1)

    def _remembered(self, z: torch.Tensor) -> torch.Tensor | None:
        """The remembered single-run predictions of ``z`` (:meth:`predictions`), or ``None``."""
        for entry in (self._last, self._first):
            if entry is not None and entry[0].shape == z.shape and torch.equal(entry[0], z.detach()):
                return entry[1]
        return None

    def _remembered_with_graph(self, z: torch.Tensor) -> bool:
        """Whether the remembered run of ``z`` recorded a graph (an optimiser's gradient run)."""
        for entry in (self._last, self._first):
            if entry is not None and entry[0].shape == z.shape and torch.equal(entry[0], z.detach()):
                return entry[2]
        return False

    def _check_jacobian(self, z: torch.Tensor, J: torch.Tensor) -> bool:
        """Once per problem: compare J d with a finite difference along a random direction of single
        (unbatched) runs: guards against a model that broadcasts the extra batch dim silently in a wrong way.
        When the optimiser's own run at ``z`` is remembered, a one-sided difference from it (one run, step
        1e-7), else a central one (two runs, step 1e-6). A cost with kinks or steep switches can defeat any
        difference (a year of ECOSMO: central differences of steps 1e-7, 1e-6, 1e-5 disagree with J d by
        7e-4, 0.18, 0.016): when it disagrees, J d is compared with the exact directional derivative of ONE
        unbatched forward-mode run along d (one more run; what a model that mixes the batch gets wrong)
        before the batched pass is given up. The comparisons are recorded in ``jacobian_info["guard"]``."""
        if self._jac_checked:
            return True
        d = torch.randn(z.numel(), generator=torch.Generator().manual_seed(0), dtype=z.dtype)
        scale = max(1.0, float(z.abs().max()))
        base = self._remembered(z)
        if base is not None:
            h = 1e-7 * scale
            # the run as the optimiser's (with or without a graph, as that run was): a compiled step then runs
            # the program it already has instead of compiling another one (same values)
            graph = self._remembered_with_graph(z)
            zh = (z.detach() + h * d).requires_grad_(graph)
            with torch.set_grad_enabled(graph):
                r1 = self.residuals(zh).detach()
            fd = (r1 - self._residuals_of(z.detach(), base)) / h
            kind = "one-sided"
        else:
            h = 1e-6 * scale
            with torch.no_grad():
                fd = (self.residuals(z.detach() + h * d) - self.residuals(z.detach() - h * d)) / (2 * h)
            kind = "central"
        Jd = J @ d
        ok = bool(torch.allclose(Jd, fd, rtol=1e-4, atol=1e-6 * (1.0 + float(fd.abs().max()))))
        guard = self.jacobian_info["guard"] = {
            "difference": kind,
            "step": h,
            "max_abs_error_rel": float((Jd - fd).abs().max() / fd.abs().max().clamp(min=1e-300)),
            "passed": ok,
        }
        if not ok:
            import torch.autograd.forward_ad as fwAD

            with fwAD.dual_level():
                jvp = fwAD.unpack_dual(self.residuals(fwAD.make_dual(z.detach(), d))).tangent
            if jvp is not None:
                ok = bool(torch.allclose(Jd, jvp, rtol=1e-6, atol=1e-9 * (1.0 + float(jvp.abs().max()))))
                guard["exact_max_abs_error_rel"] = float(
                    (Jd - jvp).abs().max() / jvp.abs().max().clamp(min=1e-300)
                )
                guard["passed"] = ok
        self._jac_checked = ok
        return ok

    def jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """∂r/∂z (M, nz) by forward mode.

        Fast path: all nz tangents in one forward-AD pass, the controls stacked along a new leading batch dim
        that the model treats like ensemble members (a batched state, parameters of shape (nz,)); a dict state
        with a batch of one member (every leaf's leading dim 1, e.g. one water column) is batched along that
        dim instead. Models or states that do not accept the extra dim, or whose batched result the guard
        (:meth:`_check_jacobian`) rejects, fall back to ``torch.func.jacfwd`` (one vmapped pass);
        ``jacobian_info`` says which path ran and why.
        """
        n = z.numel()
        load_jvp_decompositions()  # forward mode below: without torch's own torch.jit.script warnings
        if self.jacobian_mode == "bundle":
            # Central differences of all nz directions in one batched run: error O(h²) ≈ 1e-10 (float64).
            h = self.bundle_step
            zb = torch.cat(
                [z.detach() + h * torch.eye(n, dtype=z.dtype), z.detach() - h * torch.eye(n, dtype=z.dtype)]
            )
            with torch.no_grad():
                r = self.residuals(zb)
            self.jacobian_info.update(path="bundle")
            return ((r[:n] - r[n:]) / (2 * h)).T.contiguous()
        if self._batched_jac and (torch.is_tensor(self.xb) or not self.control_state):
            import torch.autograd.forward_ad as fwAD

            try:
                with fwAD.dual_level():
                    zb = fwAD.make_dual(z.detach().expand(n, n).clone(), torch.eye(n, dtype=z.dtype))
                    J = fwAD.unpack_dual(self.residuals(zb)).tangent
                if J is None or J.shape[0] != n:
                    reason = "no tangent in the residuals" if J is None else "wrong batch shape"
                elif self._check_jacobian(z, J.T):
                    self.jacobian_info.update(path="batched", reason=None)
                    return J.T.contiguous()
                else:
                    g = self.jacobian_info["guard"]
                    reason = f"guard failed (error {g['max_abs_error_rel']:.2e} of max |fd|"
                    if "exact_max_abs_error_rel" in g:
                        reason += f"; {g['exact_max_abs_error_rel']:.2e} of an unbatched forward-mode run"
                    reason += ")"
            except (RuntimeError, ValueError, IndexError, TypeError) as err:
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            self._batched_jac = False
            self.jacobian_info["reason"] = reason
        self.jacobian_info["path"] = "jacfwd"
        return torch.func.jacfwd(self.residuals)(z.detach())

    def cost(self, z: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.residuals(z).pow(2).sum()

    def cost_terms(self, z: torch.Tensor) -> dict[str, float]:
        """Observation, background, model-error and prior parts of J(z)."""
        with torch.no_grad():
            _, v, w = self.split(z)
            out = {
                "obs": float(self.obs.nll(self.predictions(z))),
                "background": float(0.5 * v.pow(2).sum()),
                "model_error": float(0.5 * w.pow(2).sum()),
            }
            out["prior"] = float(self._prior_cost(z))
        return out

    def _prior_cost(self, z: torch.Tensor) -> torch.Tensor:
        """½ Σ ((u − μ)/s)² of the parameter priors."""
        if not self._prior:
            return torch.zeros((), dtype=z.dtype)
        u = self.split(z)[0]
        i, m, s = zip(*self._prior)
        r = (u[..., list(i)] - torch.tensor(m, dtype=u.dtype)) / torch.tensor(s, dtype=u.dtype)
        return 0.5 * r.pow(2).sum()

    def final_state(self, z: torch.Tensor) -> object:
        with torch.no_grad():
            return self.predict(z, return_final=True)[1]

    def analysis_state_vector(self, z: torch.Tensor) -> torch.Tensor:
        return flatten(tree_map(lambda t: t.detach(), self.initial_state(z)))
