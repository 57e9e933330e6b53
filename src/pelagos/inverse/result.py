"""``CalibrationResult``: what an estimation returns, serialisable and plottable."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.errors import ConfigError


@dataclass
class CalibrationResult:
    """Estimates with uncertainties, the prior, and the optimisation record.

    ``estimates``/``std`` are physical values (units of each parameter); ``raw``/``raw_std`` the unconstrained
    ones (log/logit space) where the Laplace approximation is Gaussian. ``interval95`` maps ``raw ± 1.96
    raw_std``
    back through the transform (asymmetric for log/logit parameters).
    """

    names: list[str]
    estimates: dict[str, float]
    raw: dict[str, float]
    std: dict[str, float] = field(default_factory=dict)
    raw_std: dict[str, float] = field(default_factory=dict)
    interval95: dict[str, tuple[float, float]] = field(default_factory=dict)
    correlation: list[list[float]] | None = None
    prior: dict[str, dict] = field(default_factory=dict)
    initial: dict[str, float] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)
    parameter_history: dict[str, list[float]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)  # each parameter's units (axis labels, tables)
    cost: float = float("nan")
    cost_terms: dict[str, float] = field(default_factory=dict)
    n_evals: int = 0
    n_iter: int = 0
    wall_time: float = 0.0
    converged: bool = False
    message: str = ""
    method: str = ""
    initial_state: object = None  # analysed initial state when it was part of the control
    z: torch.Tensor | None = None  # the optimal control vector
    # H(x(t_i)) at the first guess ("initial") and at the estimate ("final"), (n_t, *batch, m), no graph
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            k: getattr(self, k)
            for k in (
                "method",
                "names",
                "estimates",
                "std",
                "raw",
                "raw_std",
                "interval95",
                "correlation",
                "prior",
                "initial",
                "cost",
                "cost_terms",
                "history",
                "parameter_history",
                "units",
                "n_evals",
                "n_iter",
                "wall_time",
                "converged",
                "message",
            )
        }
        d["interval95"] = {k: list(v) for k, v in self.interval95.items()}
        return d

    def save(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON (``.json``) or YAML (``.yaml``/``.yml``)."""
        path = Path(path)
        d = self.to_dict()
        if path.suffix == ".json":
            path.write_text(json.dumps(d, indent=2))
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(d, sort_keys=False))
        else:
            raise ConfigError(f"unknown result file type {path.suffix!r} for {path}; use .json or .yaml")
        return path

    def summary(self) -> str:
        lines = [
            f"{self.method}: cost {self.cost:.6g} after {self.n_iter} iterations, {self.n_evals} model runs,"
            f" {self.wall_time:.2f} s ({self.message})"
        ]
        for n in self.names:
            s = f" ± {self.std[n]:.4g}" if n in self.std else ""
            first = self.initial.get(n, float("nan"))
            lines.append(f"  {n:30s} {self.estimates[n]:.6g}{s}   (first guess {first:.6g})")
        return "\n".join(lines)

    # -- plots -------------------------------------------------------------------------------------------
    def plot_cost(self, ax=None):
        """Cost J against iteration (log scale)."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(5, 3.5))[1]
        ax.semilogy(range(len(self.history)), self.history, marker=".")
        ax.set_xlabel("iteration")
        ax.set_ylabel("cost J (dimensionless)")
        ax.set_title(self.method)
        return ax

    def plot_parameters(self, truth: dict[str, float] | None = None, axes=None):
        """Trajectory of each parameter over the iterations, with the prior mean (and truth in a twin)."""
        import matplotlib.pyplot as plt

        n = len(self.names)
        if axes is None:
            _, axes = plt.subplots(1, max(n, 1), figsize=(3.2 * max(n, 1), 3), squeeze=False)
            axes = axes[0]
        for ax, name in zip(axes, self.names):
            ax.plot(self.parameter_history.get(name, []), label="estimate")
            if name in self.prior and self.prior[name].get("mean") is not None:
                ax.axhline(self.prior[name]["mean"], color="gray", ls="--", label="prior")
            if truth and name in truth:
                ax.axhline(truth[name], color="k", ls=":", label="truth")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("iteration")
            ax.set_ylabel(self.units.get(name) or "1")
        if n:
            axes[0].legend(fontsize=8)
        return axes
