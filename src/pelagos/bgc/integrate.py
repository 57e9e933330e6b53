"""Source-term integrators for a dict state: one step of dc/dt = S(c) over ``dt`` seconds.

Used by the box driver and the column driver alike. Methods (GOTM/FABM ``ode_method`` numbers from
``src/util/ode_solvers.F90``; Burchard, Deleersnijder & Meister 2003, Applied Numerical Mathematics 47):

========  ============  ======================================================================================
number    name          scheme
========  ============  ======================================================================================
1         ``euler``     forward Euler
2         ``rk2``       Runge-Kutta 2 (Heun: average of the slopes at the start and at the Euler predictor)
3         ``rk4``       classical Runge-Kutta 4
7         ``mp``        first-order modified Patankar (MP1): unconditionally positive and conservative
8         ``mprk2``     second-order modified Patankar-Runge-Kutta (MPRK2)
========  ============  ======================================================================================

GOTM's 4 (Patankar), 5 (Patankar-RK2), 10/11 (extended MP) are not implemented; 6 and 9 do not work in GOTM
either.

The Patankar schemes need the sources as production/destruction *transfers*
``{(source, destination): rate}`` (rate >= 0 per second; ``None`` = outside the system): a transfer i -> j
is a destruction d_ij of i and a production p_ji of j. MP1 solves, per cell,

    c_i' = c_i + dt [ Σ_{j} p_ij c_j'/c_j − Σ_{j} d_ij c_i'/c_i ] + dt · (production from outside)_i,

with losses to outside treated like destructions. The matrix is an M-matrix with unit column sums for internal
transfers, so c' >= 0 for any dt and Σ c' = Σ c when nothing leaves the system. A flux out of an empty pool
(c_j = 0) is dropped (its weight rate/c_j is set to 0) — consistent models have no such flux.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..core.errors import ConfigError

State = dict[str, torch.Tensor]
Transfers = dict[tuple[str | None, str | None], torch.Tensor]
Rhs = Callable[[State], Mapping[str, torch.Tensor]]
PPDD = Callable[[State], Transfers]

ODE_METHODS = {1: "euler", 2: "rk2", 3: "rk4", 7: "mp", 8: "mprk2"}
METHODS = tuple(ODE_METHODS.values())
_ALIASES = {"forward_euler": "euler", "heun": "rk2", "modified_patankar": "mp", "mp1": "mp", "mprk": "mprk2"}


def method_name(method: str | int) -> str:
    """Normalise a method given by name or GOTM ``ode_method`` number."""
    if isinstance(method, int) and not isinstance(method, bool):
        if method not in ODE_METHODS:
            raise ConfigError(
                f"ode_method {method} is not implemented; valid: "
                + ", ".join(f"{k} ({v})" for k, v in ODE_METHODS.items())
            )
        return ODE_METHODS[method]
    name = _ALIASES.get(str(method).lower(), str(method).lower())
    if name not in METHODS:
        raise ConfigError(
            f"unknown source integrator {method!r}; valid: {', '.join(METHODS)} (or GOTM numbers 1,2,3,7,8)"
        )
    return name


def _axpy(state: State, dt: float, rates: Mapping[str, torch.Tensor]) -> State:
    return {k: (v + dt * rates[k]) if k in rates else v for k, v in state.items()}


def integrate_sources(
    rhs: Rhs | None,
    state: State,
    dt: float,
    method: str | int = "euler",
    ppdd: PPDD | None = None,
) -> State:
    """One step of the sources. ``rhs(state) -> {name: rate per s}`` (missing names: zero rate);
    ``ppdd(state) -> transfers`` for ``mp``/``mprk2``. Pure: returns a new dict."""
    m = method_name(method)
    if m in ("mp", "mprk2"):
        if ppdd is None:
            raise ConfigError(f"method {m!r} needs production/destruction transfers: pass ppdd=")
        return _mp_step(ppdd, state, dt, second_order=(m == "mprk2"))
    if rhs is None:
        raise ConfigError(f"method {m!r} needs rhs=")
    k1 = rhs(state)
    if m == "euler":
        return _axpy(state, dt, k1)
    if m == "rk2":
        k2 = rhs(_axpy(state, dt, k1))
        keys = set(k1) | set(k2)
        return _axpy(state, 0.5 * dt, {k: _get(k1, k, state) + _get(k2, k, state) for k in keys})
    # rk4
    k2 = rhs(_axpy(state, 0.5 * dt, k1))
    k3 = rhs(_axpy(state, 0.5 * dt, k2))
    k4 = rhs(_axpy(state, dt, k3))
    keys = set(k1) | set(k2) | set(k3) | set(k4)
    tot = {
        k: _get(k1, k, state) + 2.0 * _get(k2, k, state) + 2.0 * _get(k3, k, state) + _get(k4, k, state)
        for k in keys
    }
    return _axpy(state, dt / 6.0, tot)


def _get(r: Mapping[str, torch.Tensor], k: str, state: State) -> torch.Tensor | float:
    return r.get(k, 0.0)


# -- transfers helpers -----------------------------------------------------------------------------------
def net_rates(transfers: Transfers) -> dict[str, torch.Tensor]:
    """Net source of each variable implied by transfers (what ``do`` would return)."""
    out: dict[str, torch.Tensor] = {}
    for (src, dst), r in transfers.items():
        if src == dst:
            continue
        if src is not None:
            out[src] = out[src] - r if src in out else -r
        if dst is not None:
            out[dst] = out[dst] + r if dst in out else r
    return out


def transfers_from_rates(rates: Mapping[str, torch.Tensor]) -> Transfers:
    """Net rates as exchanges with the outside: positive part produced from outside, negative part lost.

    For sources without a production/destruction split (e.g. surface fluxes divided by the top cell's h):
    still positivity-preserving under MP, conserving only what the rates themselves conserve.
    """
    t: Transfers = {}
    for k, r in rates.items():
        t[(None, k)] = torch.clamp(r, min=0.0)
        t[(k, None)] = torch.clamp(-r, min=0.0)
    return t


def merge_transfers(*parts: Transfers) -> Transfers:
    out: Transfers = {}
    for part in parts:
        for key, r in part.items():
            out[key] = out[key] + r if key in out else r
    return out


# -- modified Patankar -----------------------------------------------------------------------------------
def _stack_state(state: State, names: list[str]) -> torch.Tensor:
    ts = [state[n] for n in names]
    nd = max(t.ndim for t in ts)
    ts = [
        t.reshape(tuple(t.shape) + (1,) * (nd - t.ndim)) for t in ts
    ]  # bottom/surface (...,) as (..., 1): box only
    shape = _broadcast_shape([tuple(t.shape) for t in ts])
    for n, t in zip(names, ts):
        if t.ndim == nd and t.shape != shape and t.numel() != 1 and state[n].ndim < nd and shape[-1] != 1:
            raise ConfigError(
                f"mp: variable {n!r} of shape {tuple(state[n].shape)} cannot join cells {shape}"
            )
    return torch.stack([t.expand(shape) for t in ts], dim=-1)  # (..., V)


def _broadcast_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    # Same rule as torch.broadcast_shapes (equal ranks here), without its per-call overhead.
    out = list(shapes[0])
    for sh in shapes[1:]:
        for i, n in enumerate(sh):
            if n != out[i]:
                if out[i] == 1:
                    out[i] = n
                elif n != 1:
                    raise ConfigError(f"mp: state shapes {shapes} do not broadcast")
    return tuple(out)


def _safe_ratio(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    pos = c > 0
    return torch.where(pos, r / torch.where(pos, c, torch.ones_like(c)), torch.zeros_like(r))


def _mp_solve(
    c0: torch.Tensor, cden: torch.Tensor, names: list[str], transfers: Transfers, dt: float
) -> torch.Tensor:
    """Solve (I + dt Σ_t w_t (e_src − e_dst) e_srcᵀ) c' = c0 + dt·(outside production).

    ``w_t = r_t / cden_src``: cden is c0 for MP1 and the first stage for MPRK2. The transfer structure goes
    into constant incidence matrices so that the per-cell work is one einsum and one batched solve.
    """
    V = len(names)
    idx = {n: i for i, n in enumerate(names)}
    shape = c0.shape[:-1]
    opts = {"dtype": c0.dtype, "device": c0.device}

    def cells(r: torch.Tensor) -> torch.Tensor:
        r = torch.as_tensor(r, **opts)
        r = r.reshape(tuple(r.shape) + (1,) * (len(shape) - r.ndim))  # bottom (...,) in a box: (..., 1)
        return torch.broadcast_to(r, shape)

    out_keys = [(a, b) for (a, b) in transfers if a is not None and a != b]
    in_keys = [(a, b) for (a, b) in transfers if a is None and b is not None]
    b = c0
    if in_keys:
        Q = torch.zeros(V, len(in_keys), **opts)
        for t, (_, dst) in enumerate(in_keys):
            Q[idx[dst], t] = 1.0
        Rin = torch.stack([cells(transfers[k]) for k in in_keys], -1)
        b = b + dt * (Rin @ Q.T)
    if not out_keys:
        return b
    T = len(out_keys)
    M = torch.zeros(V, T, **opts)  # column t: +1 at the source, -1 at the destination
    S = torch.zeros(T, V, **opts)  # row t: selects the source
    src = torch.tensor([idx[a] for a, _ in out_keys], device=c0.device)
    for t, (a, d) in enumerate(out_keys):
        M[idx[a], t] = 1.0
        S[t, idx[a]] = 1.0
        if d is not None:
            M[idx[d], t] = -1.0
    R = torch.stack([cells(transfers[k]) for k in out_keys], -1)
    W = _safe_ratio(R, cden.index_select(-1, src))
    A = torch.eye(V, **opts) + dt * ((M * W.unsqueeze(-2)) @ S)  # Σ_t M[:, t] W_t S[t, :]
    return torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)


def _mp_step(ppdd: PPDD, state: State, dt: float, *, second_order: bool) -> State:
    t0 = ppdd(state)
    names = [n for n in state if any(n in key for key in t0)]
    if not names:
        return dict(state)
    c0 = _stack_state(state, names)
    c1 = _mp_solve(c0, c0, names, t0, dt)
    if second_order:
        s1 = _unstack(state, names, c1)
        t1 = ppdd(s1)
        avg = {k: 0.5 * (t0.get(k, 0.0) + t1.get(k, 0.0)) for k in set(t0) | set(t1)}
        names1 = [n for n in state if any(n in key for key in avg)]
        if names1 != names:
            raise ConfigError("mprk2: the set of variables with transfers changed between stages")
        c1 = _mp_solve(c0, c1, names, avg, dt)
    return _unstack(state, names, c1)


def _unstack(state: State, names: list[str], c: torch.Tensor) -> State:
    out = dict(state)
    for i, n in enumerate(names):
        v = c[..., i]
        t = state[n]
        while v.ndim > t.ndim and v.shape[-1] == 1 and t.ndim < v.ndim:
            v = v.squeeze(-1)
        out[n] = v
    return out
