"""Cost of the water column's gradient against its forward run (issue 10: "forward + backward ≤ 3× forward").

Case: one column of GOTM's nns_annual physics (110 layers of 1 m, the shared GOTM output; the shipped
22 × 5 m file with ``--layers 22`` or when the shared file is absent), FABM's ``gotm/npzd``, float64, hourly
steps, GOTM's numerics (Euler sources, P2_PDM sinking, cnpar = 1, Jerlov I light) — the path ``pelagos
calibrate`` takes: the configuration is built by :func:`pelagos.io.build.setup` and stepped through
:class:`~pelagos.column.stacked.StackedColumn` by :func:`pelagos.inverse.forward.predict` (the one rollout).

The loss is a calibration cost: ½ Σ of squared whitened log-misfits of daily surface phytoplankton and of
nutrient at 5/25/50/100 m every 12 days against a run with other parameters (a twin, as
``examples/npzd_calibration_year.yaml``), differentiated with respect to the two free parameters
``npzd.rmax`` and ``npzd.gmax`` (unconstrained, log space) — what one L-BFGS evaluation of
``pelagos calibrate`` costs. Modes, each the minimum CPU time (``time.process_time``, one thread) over
``--repeat`` repeats:

- ``forward``: the cost without gradients;
- ``fwd+bwd``: cost and gradient (reverse mode), with the whole graph kept (``checkpoint=None``, what
  ``pelagos calibrate`` does) and with ``checkpoint="sqrt"`` (⌈√T⌉-step segments between observation times,
  each recomputed once in the backward pass): ``sqrt`` is rollout's segment Function
  (:mod:`pelagos.core.segment`: forward without a graph, one recomputation with the graph in the backward);
  ``sqrt torch.utils.checkpoint`` is the same segments through ``torch.utils.checkpoint(use_reentrant=False)``
  (rollout's path before, and still the path of a bare step function), for comparison in the same run;
- ``jacobian``: the (M, 2) Jacobian of the whitened residuals by forward mode (both directions in one batched
  run; the Gauss–Newton uncertainty of ``pelagos calibrate``).

Ratios are against ``forward`` measured in the same run; the four modes above are timed in rounds (each
mode once per round, ``--repeat`` rounds), so a change of the machine's load hits them alike. The memory
the backward pass keeps (``saved MB``) is the sum of the bytes of the tensors autograd saves during the
forward (``saved_tensors_hooks``).

Usage: python benchmarks/column_adjoint.py [--days 365] [--layers 110] [--repeat 2] [--compile]
[--no-jacobian]
Writes benchmarks/results/column_adjoint.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GOTM_FILE = ROOT.parent / "shared" / "data" / "gotm_nns_annual" / "physics_hourly.nc"
OUT = ROOT / "benchmarks" / "results" / "column_adjoint.json"


def problem(days: int, layers: int, checkpoint, compile_: bool = False):
    """(VariationalProblem, z0, forcing file) of the benchmark case."""
    from pelagos.core import obsio
    from pelagos.io import inverse_run as ir
    from pelagos.io.build import setup
    from pelagos.io.config import load_config

    forcing = str(GOTM_FILE) if (layers == 110 and GOTM_FILE.exists()) else "builtin:nns_annual_22x5m.nc"
    stop = str(datetime.datetime(1998, 1, 1) + datetime.timedelta(days=days))
    cfg = load_config(
        {
            "model": {"kind": "column", "fabm_yaml": "builtin:fabm/fabm-gotm-npzd.yaml", "dtype": "float64"},
            "forcing": {"file": forcing},
            "time": {"start": "1998-01-01 00:00:00", "stop": stop, "dt": 3600},
            "numerics": {
                "ode_method": "euler",
                "sinking_method": "P2_PDM",
                "cnpar": 1.0,
                "light": "I",
                "compile": compile_,
            },
            "parameters": {"npzd.rmax": 0.7, "npzd.gmax": 0.3},
        }
    )
    s = setup(cfg)
    model, x0 = ir.inverse_view(s, "calibrate")
    every_nut = min(12, max(1, days // 2)) * 86400.0
    samplings = [
        obsio.Sampling("npzd_phy", {"depth": ["surface"]}, obsio.regular_times(model, s.t0, s.t1, 86400.0)),
        obsio.Sampling("npzd_nut", {"depth": [5.0, 25.0, 50.0, 100.0]},
                       obsio.regular_times(model, s.t0, s.t1, every_nut)),
    ]  # fmt: skip
    raw = {
        n: model.parameter_spec(n).transform.inverse(torch.tensor(v, dtype=torch.float64))
        for n, v in {"npzd.rmax": 1.0, "npzd.gmax": 0.2}.items()
    }
    with model.using(raw):
        obs = obsio.synthetic_observations(
            model, x0, None, samplings, start=s.t0, noise="lognormal", sigma=0.2,
            generator=torch.Generator().manual_seed(11),
        )  # fmt: skip
    obs = ir._squeezed(obs)
    model.select_free(["npzd.rmax", "npzd.gmax"])
    from pelagos.inverse.problem import VariationalProblem

    P = VariationalProblem(model, obs, x0, t0=s.t0, checkpoint=checkpoint, include_prior=False)
    return P, P.z0.clone(), forcing, int(x0.shape[-1])


def torch_checkpoint_segments():
    """Context: rollout's checkpointed segments through ``torch.utils.checkpoint(use_reentrant=False)`` with
    the parameter overrides re-installed at recomputation (rollout's path before core/segment.py)."""
    import contextlib
    import importlib

    from pelagos.core.segment import run_segment_torch_checkpoint as run_segment

    ro = importlib.import_module("pelagos.core.rollout")  # the module (pelagos.core.rollout is the function)

    @contextlib.contextmanager
    def ctx():
        orig = ro.run_segment
        ro.run_segment = run_segment
        try:
            yield
        finally:
            ro.run_segment = orig

    return ctx()


def cpu(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--layers", type=int, default=110, choices=[22, 110])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="numerics.compile: the compiled column step")
    ap.add_argument("--no-jacobian", action="store_true", help="skip the forward-mode Jacobian")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from pelagos.core._torch_quirks import load_jvp_decompositions

    load_jvp_decompositions()
    P, z, forcing, nz = problem(args.days, args.layers, None, args.compile)
    Pc, _, _, _ = problem(args.days, args.layers, "sqrt", args.compile)
    n_steps = int(P.obs.step_indices(P.dt, P.t0).max())

    def forward() -> None:
        with torch.no_grad():
            P.cost(z)

    def fwd_bwd(prob) -> float:
        zz = z.clone().requires_grad_(True)
        J = prob.cost(zz)
        (g,) = torch.autograd.grad(J, zz)
        return g

    def saved_bytes(prob) -> int:
        total = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            total[0] += t.numel() * t.element_size()
            return t

        zz = z.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            prob.cost(zz)
        return total[0]

    def rollout_saved_bytes(n: int) -> int:
        """Bytes autograd keeps for one rollout of ``n`` steps with ``checkpoint="sqrt"`` (surface value
        observed every step): the memory of the checkpointed gradient without predict's cut at observation
        times (predict keeps the state at every observation time, O(number of observations))."""
        from pelagos.core.rollout import rollout

        total = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            total[0] += t.numel() * t.element_size()
            return t

        zz = z.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), Pc.params_context(zz):
            rollout(
                Pc.model, Pc.initial_state(zz), n, t0=Pc.t0, checkpoint="sqrt", observe=lambda x: x[..., 0]
            )
        return total[0]

    def fwd_bwd_torch_checkpoint():
        with torch_checkpoint_segments():
            return fwd_bwd(Pc)

    def saved_bytes_torch_checkpoint():
        with torch_checkpoint_segments():
            return saved_bytes(Pc)

    if args.compile:  # the first runs compile (forward, backward): not timed
        forward()
        fwd_bwd(P)
        fwd_bwd(Pc)
        fwd_bwd_torch_checkpoint()
    P._jac_checked = True  # the check (one batched no-grad run) is timed with pelagos calibrate, not here
    # rounds of all modes in turn (minimum per mode): a change of the machine's load hits every mode alike
    modes = {
        "forward": forward,
        "fwd+bwd keep": lambda: fwd_bwd(P),
        "fwd+bwd sqrt": lambda: fwd_bwd(Pc),
        "fwd+bwd sqrt torch.utils.checkpoint": fwd_bwd_torch_checkpoint,
    }
    best = dict.fromkeys(modes, float("inf"))
    for _ in range(args.repeat):
        for name, fn in modes.items():
            best[name] = min(best[name], cpu(fn, 1))
    t_fwd, t_fb, t_fbc, t_fbt = best.values()
    cpu_s = {
        "forward": t_fwd,
        "fwd+bwd keep": t_fb,
        "fwd+bwd sqrt": t_fbc,
        "fwd+bwd sqrt torch.utils.checkpoint": t_fbt,
    }
    if not args.no_jacobian:
        cpu_s["jacobian fwd-mode"] = cpu(lambda: P.jacobian(z), args.repeat)
    g, gc, gt = fwd_bwd(P), fwd_bwd(Pc), fwd_bwd_torch_checkpoint()

    def rel(a, b) -> float:
        return float(((a - b).abs() / b.abs().clamp(min=1e-300)).max())

    res = {
        "case": f"one column, {nz} layers, NPZD, float64, hourly, {args.days} days ({n_steps} steps)",
        "step": "compiled (numerics.compile)" if args.compile else "plain",
        "forcing": forcing,
        "n_obs": int(P.obs.n_obs),
        "cpu_s": cpu_s,
        "ratio_to_forward": {k: v / t_fwd for k, v in cpu_s.items() if k != "forward"},
        "ms_per_step_forward": 1e3 * t_fwd / n_steps,
        "saved_MB": {
            "keep": saved_bytes(P) / 2**20,
            "sqrt": saved_bytes(Pc) / 2**20,
            "sqrt torch.utils.checkpoint": saved_bytes_torch_checkpoint() / 2**20,
        },
        "rollout_sqrt_saved_MB": {
            f"{n} steps": rollout_saved_bytes(n) / 2**20 for n in (n_steps // 4, n_steps)
        },  # O(√T): 2× for 4× the steps
        "gradient_keep_vs_sqrt_max_rel": rel(gc, g),
        "gradient_sqrt_vs_torch_checkpoint_max_rel": rel(gc, gt),
        **(
            {}
            if args.no_jacobian
            else {"gradient_vs_JTr_max_rel": rel(P.jacobian(z).T @ P.residuals(z.detach()), g)}
        ),
        "timing": "CPU time (time.process_time), one thread, minimum of repeats; loaded shared machine",
        "load_avg": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
