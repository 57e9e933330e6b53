"""Plots: units on every y axis (depth integrals in m-2), x axes in days since a stated date, nothing clipped,
and section panels that say whether they show snapshots or interval means (and why a panel is empty)."""

from __future__ import annotations

import datetime as dt

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

from pelagos.io.plots import (
    integrated_units,
    plot_integrals,
    plot_observation_fit,
    plot_parameter_history,
    plot_sections,
    time_axis,
)

matplotlib.use("Agg")


def _all_text_inside(fig) -> list[str]:
    """What sticks out of the figure: the drawn extent of every axes (ticks, tick labels, axis labels, title)
    and of every figure-level text must lie inside the canvas (matplotlib's tight bbox counts only what is
    drawn)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    W, H = fig.bbox.width, fig.bbox.height
    bad = []
    for ax in fig.axes:
        bb = ax.get_tightbbox(r)
        if bb is not None and (bb.x0 < -1 or bb.y0 < -1 or bb.x1 > W + 1 or bb.y1 > H + 1):
            bad.append(f"{ax.get_title() or ax.get_ylabel()!r}: {bb.bounds} outside {W}x{H}")
    return bad


def _column_dataset(hour: int = 0, ppr_mean: bool = False) -> xr.Dataset:
    t = np.datetime64("1998-04-01T00:00") + np.arange(6) * np.timedelta64(1, "D") + np.timedelta64(hour, "h")
    nz = 5
    h = np.full((6, 1, nz), 2.0)
    z = -np.arange(nz)[::-1] * 2.0 - 1.0
    phy = np.linspace(0.1, 1.0, 6)[:, None, None] * np.ones((6, 1, nz))
    ppr = np.zeros((6, 1, nz)) if not ppr_mean else np.full((6, 1, nz), 0.5)
    ds = xr.Dataset(
        {
            "npzd_phy": (("time", "column", "z"), phy, {"units": "mmol m-3", "long_name": "phytoplankton"}),
            "npzd_PPR": (("time", "column", "z"), ppr, {"units": "mmol m-3 d-1", "long_name": "production"}),
            "h": (("time", "column", "z"), h, {"units": "m"}),
        },
        coords={"time": t, "z": ("z", z, {"units": "m"})},
    )
    ds["npzd_phy"].attrs["pelagos_role"] = "state"
    ds["npzd_PPR"].attrs["pelagos_role"] = "diagnostic"
    if ppr_mean:
        ds["npzd_PPR"].attrs["cell_methods"] = "time: mean"
    return ds


@pytest.mark.parametrize(
    ("units", "integral"),
    [
        ("mmol m-3", "mmol m-2"),
        ("mmol m-3 d-1", "mmol m-2 d-1"),
        ("mg m-3", "mg m-2"),
        ("mmol/m^3", "mmol/m^2"),
        ("m s-1", "m2 s-1"),
        ("degC", "degC m"),
        ("", "m"),
    ],
)
def test_integrated_units(units, integral):
    assert integrated_units(units) == integral


def test_time_axis_days_since_a_date():
    t = np.datetime64("1998-04-01T00:00") + np.arange(3) * np.timedelta64(12, "h")
    days, label = time_axis(t)
    np.testing.assert_allclose(days, [0.0, 0.5, 1.0])
    assert label == "days since 1998-04-01 00:00"
    days, label = time_axis(np.array([86400.0, 2 * 86400.0]), epoch=dt.datetime(1998, 1, 1))
    np.testing.assert_allclose(days, [0.0, 1.0])
    assert label == "days since 1998-01-02 00:00"
    days, label = time_axis(np.array([0.0, 43200.0]))
    np.testing.assert_allclose(days, [0.0, 0.5])
    assert "model time" in label


def test_integrals_have_per_m2_units_dated_axis_and_nothing_clipped():
    fig = plot_integrals(_column_dataset())
    ax = fig.axes[0]
    assert ax.get_ylabel() == "mmol m-2"  # not "mmol m-3 · m"
    assert ax.get_xlabel() == "days since 1998-04-01 00:00"
    assert _all_text_inside(fig) == []
    plt.close(fig)


def test_sections_say_snapshot_and_explain_an_all_zero_night_panel():
    fig = plot_sections(_column_dataset(hour=0), ["npzd_phy", "npzd_PPR"])
    ax_phy, ax_ppr = fig.axes[0], fig.axes[1]  # the panels; their colorbars come after them
    assert "snapshot" in ax_phy.get_title() and "snapshot" in ax_ppr.get_title()
    notes = [t.get_text() for t in ax_ppr.texts]
    assert len(notes) == 1 and "zero at every output time (all at 00:00)" in notes[0]
    assert "interval means" in notes[0]
    assert len(ax_phy.texts) == 0  # a panel with values carries no note
    assert ax_ppr.get_ylabel() == "z (m)" and fig.axes[3].get_ylabel() == "mmol m-3 d-1"  # colorbar units
    assert ax_ppr.get_xlabel() == "days since 1998-04-01 00:00"
    assert _all_text_inside(fig) == []
    plt.close(fig)


def test_sections_of_interval_means_are_labelled_as_means():
    fig = plot_sections(_column_dataset(ppr_mean=True), ["npzd_PPR"])
    assert "mean over each output interval" in fig.axes[0].get_title()
    assert len(fig.axes[0].texts) == 0
    plt.close(fig)


def test_estimation_plots_label_units():
    fig = plot_parameter_history(
        {"k": [0.5, 0.4, 0.3], "s": [0.5, 0.3, 0.2]},
        units={"k": "d-1", "s": "d-1"},
        prior={"k": {"mean": 0.5}},
        truth={"k": 0.3},
    )
    assert [a.get_ylabel() for a in fig.axes] == ["d-1", "d-1"]
    assert _all_text_inside(fig) == []
    plt.close(fig)
    t = np.array([86400.0, 2 * 86400.0, 3 * 86400.0])
    y = np.array([[1.0, 2.0], [np.nan, 2.5], [1.5, 3.0]])
    fig = plot_observation_fit(
        t,
        y,
        y * 0.9,
        y * 1.01,
        titles=["npzd_phy @ 5 m", "npzd_nut @ 20 m"],
        units=["mmol m-3", "mmol m-3"],
        epoch=dt.datetime(1998, 1, 1),
    )
    assert [a.get_ylabel() for a in fig.axes] == ["mmol m-3", "mmol m-3"]
    assert fig.axes[0].get_xlabel() == "days since 1998-01-02 00:00"
    assert _all_text_inside(fig) == []
    plt.close(fig)


def test_qg_run_plot_has_units_and_nothing_clipped():
    import torch

    from pelagos.core.rollout import rollout
    from pelagos.qg import QGModel
    from pelagos.qg.dataset import to_dataset
    from pelagos.qg.diagnostics import diagnostics
    from pelagos.qg.plots import plot_run

    m = QGModel(nx=16, L=5e5, dt=3600.0)
    st = m.initial_state(batch=1)
    with torch.no_grad():
        st = rollout(m, st, 24, save_every=10**9, include_initial=False).final
    ds = to_dataset(m, st, time=24 * 3600.0).expand_dims("time").assign_coords(time=("time", [24 * 3600.0]))
    ds["KEspec_mean"] = (
        to_dataset(m, st, diagnostics=True)["KEspec"].dims,
        diagnostics(m, st)["KEspec"].numpy(),
    )
    fig = plot_run(m, ds)
    q_ax, spec_ax = fig.axes[0], fig.axes[m.nz]
    assert q_ax.get_xlabel() == "x (km)" and q_ax.get_ylabel() == "y (km)"
    assert "snapshot at day 1" in q_ax.get_title()
    assert spec_ax.get_ylabel() == "KE spectral density (m3 s-2)" and "rad m-1" in spec_ax.get_xlabel()
    cbar_labels = [a.get_ylabel() for a in fig.axes[m.nz + 1 :]]
    assert all(lbl.startswith("q (") for lbl in cbar_labels) and len(cbar_labels) == m.nz
    assert _all_text_inside(fig) == []
    plt.close(fig)


def test_calibration_result_carries_units_and_plots_them(float64_default):
    import torch

    from _inverse_models import DecayModel
    from pelagos.core.observations import ObservationSet
    from pelagos.inverse.calibrate import calibrate

    model = DecayModel()
    x0 = torch.tensor([1.0, 0.2])
    times = torch.arange(1, 7) * model.dt
    with torch.no_grad():
        xs, x = [], x0
        for _ in range(6):
            x = model.step(x, 0.0)
            xs.append(x)
    obs = ObservationSet(times, torch.stack(xs), torch.full((6, 2), 0.01))
    model.select_free(["k", "s"])
    res = calibrate(model, obs, x0, max_iter=30, uncertainty=None, write_back=False)
    assert res.units == {"k": "1/d", "s": "1/d"} and res.to_dict()["units"] == res.units
    axes = res.plot_parameters()
    assert [a.get_ylabel() for a in axes] == ["1/d", "1/d"]
    assert res.plot_cost().get_ylabel() == "cost J (dimensionless)"
    plt.close("all")
