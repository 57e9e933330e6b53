"""Worker for test_inverse_distributed: each rank calibrates on its share of 4 decay-model stations."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _inverse_models import DecayModel
from pelagos.core.obsio import synthetic_observations
from pelagos.inverse.distributed import distributed_calibrate


def stations():
    """4 stations (state (4, 2)), observed every step for 10 steps with noise (same data on every rank)."""
    torch.set_default_dtype(torch.float64)
    truth = DecayModel()
    x0 = torch.tensor([[1.0, 0.2], [0.1, 0.9], [0.5, 0.5], [0.8, 0.0]])
    times = torch.arange(1, 11) * truth.dt
    obs = synthetic_observations(truth, x0, times, sigma=0.02, generator=torch.Generator().manual_seed(0))
    return x0, obs


def fresh_model():
    m = DecayModel()
    m.set_parameter_value("k", 0.5)
    m.set_parameter_value("s", 0.5)
    m.select_free(["k", "s"])
    m.set_prior("k", mean=0.5, std=1.0)
    m.set_prior("s", mean=0.5, std=1.0)
    return m


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    x0, obs = stations()
    mine = list(range(rank, 4, size))  # stations of this rank
    obs_r = type(obs)(obs.times, obs.values[:, mine], obs.sigma[:, mine])
    res = distributed_calibrate(fresh_model(), obs_r, x0[mine])
    if rank == 0:
        with open(out, "w") as fh:
            json.dump(
                {"estimates": res.estimates, "std": res.std, "cost": res.cost, "n_iter": res.n_iter}, fh
            )
    # Both ranks reach this point before the group is torn down: a rank that destroys it while the other is
    # still in a collective makes gloo abort ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
