"""Where the year's forward-mode tangents of the ECOSMO twin blow up (docs/ecosmo_identifiability.md,
"Tracing the tangent explosion").

One forward-mode run of the year at the truth along one parameter direction (the derivative with respect to
ln θ of one parameter), on the plain step, in chunks of ``--chunk-days``; after each chunk the largest
|tangent| of every state variable (over the layers) and the layer where it sits, and the state value there,
are recorded. ``--sharpness`` / ``--loss-scale`` replace the smooth loss switches' settings of the twin (a
test of the suspect); ``--hard-loss`` makes the loss switches FABM's hard ones.

Run: PYTHONPATH=src python scripts/ecosmo_tangent_trace.py [--param ECO.GrZlP] [--sharpness 10]
[--out benchmarks/results/ecosmo_tangent_trace.json]
"""

import argparse
import json
import os
import time

import torch
import torch.autograd.forward_ad as fwAD

from pelagos.core._torch_quirks import load_jvp_decompositions
from pelagos.inverse.forward import propagate
from pelagos.io.build import setup
from pelagos.io.config import load_config
from pelagos.io.inverse_run import set_priors

ap = argparse.ArgumentParser()
ap.add_argument("--param", default="ECO.GrZlP")
ap.add_argument("--stop", default="1999-01-01 00:00:00")
ap.add_argument("--chunk-days", type=float, default=7.0)
ap.add_argument("--sharpness", type=float, default=None, help="replace the switches' sharpness (twin: 100)")
ap.add_argument("--kinds", default=None, help="smooth only these switch kinds (comma-separated)")
ap.add_argument(
    "--scale", action="append", default=[], help="KIND=VALUE: a switch's scale (width = scale/sharpness)"
)
ap.add_argument("--sinking", default=None, help="replace the sinking limiter (twin: P2_PDM), e.g. UPSTREAM")
ap.add_argument(
    "--fine", default=None, help="FROM,TO,HOURS: chunks of HOURS between days FROM and TO (a closer look)"
)
ap.add_argument("--out", default=None)
args = ap.parse_args()
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)

cfg = load_config(
    "examples/ecosmo_identifiability.yaml",
    overrides=[f"time.stop={args.stop}", "numerics.compile=false"],
    require=("observations", "method"),
)
s = setup(cfg)
model = s.model
model.select_free(cfg.method.free)
set_priors(model, cfg.method)
names = model.free_parameter_names()
truth = cfg.observations.synthetic.truth
z = torch.stack(
    [model.parameter_spec(n).transform.inverse(torch.tensor(float(truth[n]))) for n in names]
)  # the truth's control (ln θ for the log-transformed rates)
k = names.index(args.param)
eco = dict(model.named_modules())["bgc.ECO"]
if args.sharpness is not None or args.kinds is not None or args.scale:
    from pelagos.bgc.ecosmo_switches import Switches

    old = eco.sw
    kinds = args.kinds.split(",") if args.kinds is not None else sorted(old.smooth_kinds)
    scales = {**old.scales, **{k: float(v) for k, v in (a.split("=") for a in args.scale)}}
    eco.sw = Switches(bool(kinds), args.sharpness or old.sharpness, scales, only=kinds or None)
if args.sinking is not None:
    model.sinking_method = args.sinking
out: dict = {
    "param": args.param,
    "sinking": model.sinking_method,
    "sharpness": eco.sw.sharpness,
    "smooth_kinds": sorted(eco.sw.smooth_kinds),
    "widths": {k: eco.sw.width(k) for k in sorted(eco.sw.smooth_kinds)},
    "chunk_days": args.chunk_days,
    "day": [],
    "max_abs_tangent": {},
    "layer": {},
    "value_there": {},
}
dt = float(model.dt)
from pelagos.io.build import model_time  # noqa: E402

t_end = model_time(model, args.stop, "--stop")
chunk = round(args.chunk_days * 86400 / dt)
load_jvp_decompositions()
c0, w0 = time.process_time(), time.perf_counter()
with fwAD.dual_level():
    zd = fwAD.make_dual(z.clone(), torch.nn.functional.one_hot(torch.tensor(k), z.numel()).to(z.dtype))
    x = s.state
    t = s.t0
    with model.using(zd):
        while t < t_end - 0.5 * dt:
            n = chunk
            if args.fine:
                a, b, hours = (float(q) for q in args.fine.split(","))
                day = (t - s.t0) / 86400.0
                if a - 1e-9 <= day < b:
                    n = round(hours * 3600 / dt)
                elif day < a:
                    n = min(chunk, round((a - day) * 86400 / dt))
            n = min(n, round((t_end - t) / dt))
            x = propagate(model, x, n, t0=t, dt=dt)
            t += n * dt
            out["day"].append((t - s.t0) / 86400.0)
            for var, v in x.items():
                if not torch.is_tensor(v):
                    continue
                p, tan = fwAD.unpack_dual(v)
                if tan is None:
                    tan = torch.zeros_like(p)
                a = tan.abs().reshape(-1)
                j = int(a.argmax())
                out["max_abs_tangent"].setdefault(var, []).append(float(a[j]))
                out["layer"].setdefault(var, []).append(j)
                out["value_there"].setdefault(var, []).append(float(p.reshape(-1)[j]))
            worst = max(out["max_abs_tangent"], key=lambda q: out["max_abs_tangent"][q][-1])
            big = out["max_abs_tangent"][worst][-1]
            print(
                f"day {out['day'][-1]:6.1f}: max |tangent| {big:.2e} in {worst} "
                f"(layer {out['layer'][worst][-1]}, value {out['value_there'][worst][-1]:.3g}); "
                f"{time.process_time() - c0:.0f} s CPU",
                flush=True,
            )
out["cpu_s"], out["wall_s"] = time.process_time() - c0, time.perf_counter() - w0
out["load_average"] = os.getloadavg()
if args.out:
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
