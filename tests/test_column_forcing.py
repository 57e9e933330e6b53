"""Physics forcing of the water column: GOTM reader, compact file, interpolation, bad-forcing errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pelagos.column.forcing import ColumnForcing, compact_forcing_path
from pelagos.core.errors import ForcingError
from pelagos.core.running_mean import running_mean_init, running_mean_update

# The first 49 hourly records of ../shared/data/gotm_nns_annual/physics_hourly.nc, every variable unchanged
# (GOTM's own layout and encoding), so the reader is tested on real GOTM output without ../shared.
GOTM_FIRST_48H = Path(__file__).resolve().parent / "fixtures" / "gotm" / "nns_annual_first49h.nc"


def _small(T=5, nz=4, B=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    shp = (T,) if B is None else (B, T)
    time = torch.arange(T, dtype=torch.float64) * 3600.0
    return dict(
        time=time,
        h=torch.full((*shp, nz), 2.0, dtype=dtype),
        temp=10 + torch.rand(*shp, nz, generator=g, dtype=dtype),
        salt=35 + torch.rand(*shp, nz, generator=g, dtype=dtype),
        nuh=torch.rand(*shp, nz + 1, generator=g, dtype=dtype) * 1e-3,
        I_0=100 * torch.rand(*shp, generator=g, dtype=dtype),
    )


def test_gotm_file_layout_and_exact_records():
    import xarray as xr

    f = ColumnForcing.from_gotm(GOTM_FIRST_48H, start=0.0, stop=48 * 3600.0)
    assert f.nz == 110 and f.n_columns == 1
    assert f.fields["nuh"].shape[-1] == 111
    with xr.open_dataset(GOTM_FIRST_48H, decode_times=False) as ds:
        z = ds["z"].isel(time=0).values.ravel()
        assert z[0] < z[-1]  # index 0 = bottom (most negative)
        for k in (0, 7, 30):
            e = f.sample(k * 3600.0)
            np.testing.assert_array_equal(e["temp"][0].numpy(), ds["temp"].isel(time=k).values.ravel())
            np.testing.assert_array_equal(e["nuh"][0].numpy(), ds["nuh"].isel(time=k).values.ravel())
            assert float(e["I_0"][0]) == float(ds["I_0"].isel(time=k).values.ravel()[0])
    # nuh is zero at the bottom and surface interfaces as GOTM writes it (record 0 holds the initial 1e-6)
    assert (
        float(f.fields["nuh"][:, 1:, 0].abs().max()) == 0.0 == float(f.fields["nuh"][:, 1:, -1].abs().max())
    )
    assert f.epoch.year == 1998 and math.isclose(f.day_of_year(86400 * 31 + 43200), 31.5)


def test_compact_file_shipped_and_consistent():
    p = compact_forcing_path()
    assert p.stat().st_size < 4e6
    f = ColumnForcing.from_gotm(p)
    assert f.nz == 22 and f.time.size == 8761
    h = f.fields["h"]
    torch.testing.assert_close(h.sum(-1), torch.full_like(h.sum(-1), 110.0))
    # conservative averaging: heat content of each 5 m layer equals that of its 1 m layers
    g = ColumnForcing.from_gotm(GOTM_FIRST_48H, stop=10 * 3600.0)
    for k in (0, 5):
        fine = g.sample(k * 3600.0)
        coarse = f.sample(k * 3600.0)
        hc = (fine["h"] * fine["temp"]).reshape(1, 22, 5).sum(-1)
        torch.testing.assert_close(coarse["h"] * coarse["temp"], hc, rtol=2e-6, atol=1e-5)
        torch.testing.assert_close(coarse["nuh"], fine["nuh"][:, ::5], rtol=1e-6, atol=0)


def test_interpolation_linear_between_records_exact_at_records():
    d = _small()
    f = ColumnForcing(**d)
    e = f.sample(3600.0)
    assert torch.equal(e["temp"][0], d["temp"][1])
    e = f.sample(3600.0 + 900.0)
    torch.testing.assert_close(e["nuh"][0], 0.75 * d["nuh"][1] + 0.25 * d["nuh"][2])
    torch.testing.assert_close(e["I_0"][0], 0.75 * d["I_0"][1] + 0.25 * d["I_0"][2])
    # gradients reach the tensors given by the user (analytic forcing)
    d["nuh"].requires_grad_(True)
    f = ColumnForcing(**d)
    f.sample(1800.0)["nuh"].sum().backward()
    assert torch.allclose(d["nuh"].grad[0], torch.full_like(d["nuh"].grad[0], 0.5))


def test_batched_forcing_and_stack_roundtrip_dataset():
    d = _small(B=3)
    f = ColumnForcing(**d)
    assert f.n_columns == 3 and f.sample(0.0)["h"].shape == (3, 4)
    parts = [ColumnForcing(**{k: (v[i] if k != "time" else v) for k, v in d.items()}) for i in range(3)]
    s = ColumnForcing.stack(parts)
    torch.testing.assert_close(s.sample(5000.0)["temp"], f.sample(5000.0)["temp"])
    back = ColumnForcing.from_dataset(f.to_dataset())
    torch.testing.assert_close(back.sample(5000.0)["nuh"], f.sample(5000.0)["nuh"])
    c = ColumnForcing.constant(
        torch.ones(3), torch.full((3,), 5.0), torch.full((3,), 35.0), torch.zeros(4), 50.0
    )
    assert c.sample(1e6)["temp"].shape == (1, 3)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.update(nuh=d["nuh"][..., :-1]), ["nuh", "interfaces"]),
        (lambda d: d["nuh"].__setitem__((2, 1), -1e-4), ["nuh", ">= 0", "clamp"]),
        (lambda d: d["temp"].__setitem__((3, 2), float("nan")), ["temp", "NaN"]),
        (lambda d: d["h"].__setitem__((0, 0), 0.0), ["h", "> 0"]),
        (lambda d: d.update(temp=d["temp"][:-1]), ["temp", "shape"]),
        (lambda d: d.update(time=d["time"].flip(0)), ["time", "increasing"]),
        (lambda d: d["I_0"].__setitem__(1, -5.0), ["I_0", ">= 0"]),
    ],
)
def test_bad_forcing_errors_name_variable_and_fix(change, words):
    d = _small()
    change(d)
    with pytest.raises(ForcingError) as e:
        ColumnForcing(**d)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_bad_file_errors(tmp_path):
    f = ColumnForcing(**_small())
    ds = f.to_dataset()
    ds.drop_vars("nuh").to_netcdf(tmp_path / "a.nc")
    with pytest.raises(ForcingError, match="missing variable 'nuh'"):
        ColumnForcing.from_gotm(tmp_path / "a.nc")
    bad = ds.copy()
    bad["nuh"].attrs["units"] = "cm2/s"
    bad.to_netcdf(tmp_path / "b.nc")
    with pytest.raises(ForcingError, match=r"'nuh'.*units 'cm2/s'.*m2 s-1"):
        ColumnForcing.from_gotm(tmp_path / "b.nc")
    with pytest.raises(ForcingError, match="does not exist"):
        ColumnForcing.from_gotm(tmp_path / "nothere.nc")
    # time range not covering the run
    with pytest.raises(ForcingError, match=r"covers t = \[0, 14400\] s.*Shorten the run"):
        f.check_covers(0.0, 20000.0)
    with pytest.raises(ForcingError, match="covers"):
        f.sample(-10.0)


def test_running_mean_fabm_algorithm():
    # Constant input -> constant mean; a daily sinusoid sampled hourly -> its daily mean after one day;
    # a step from 0 to 1 -> the mean ramps linearly and reaches 1 after one period.
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    buf = running_mean_init(x0 + 4.0)
    for k in range(1, 30):
        buf = running_mean_update(buf, x0 + 4.0, k * 3600.0, (k - 1) * 3600.0)
    torch.testing.assert_close(buf["mean"], x0 + 4.0)

    def sig(t):
        return 2.0 + torch.sin(torch.tensor(2 * math.pi * t / 86400.0, dtype=torch.float64))

    buf = running_mean_init(sig(0.0).expand(3))
    for k in range(1, 49):
        buf = running_mean_update(buf, sig(k * 3600.0).expand(3), k * 3600.0, (k - 1) * 3600.0)
    torch.testing.assert_close(buf["mean"], torch.full((3,), 2.0, dtype=torch.float64), rtol=0, atol=1e-12)

    buf = running_mean_init(torch.zeros(1, dtype=torch.float64))
    means = []
    for k in range(1, 30):  # 30-min steps: exercises interpolation weights and the frac_outside correction
        buf = running_mean_update(buf, torch.ones(1, dtype=torch.float64), k * 1800.0, (k - 1) * 1800.0)
        means.append(float(buf["mean"]))
    # FABM's mean after a unit step: samples already taken count 1/n each, plus the moving-window correction
    assert abs(means[1] - 1 / 24) < 1e-12  # t = 1 h: one sample of 1
    assert abs(means[0] - 0.5 / 24) < 1e-12  # t = 30 min: correction (t - t_sample)/period · (1 - 0)
    assert abs(means[-1] - 1.0) > 0.3 and means == sorted(means)
