"""CAMELS-US and per-basin CSV loaders (pelagos.hydro.camels) and the hbv kind's forcing section."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pelagos.core.errors import ConfigError, ForcingError
from pelagos.core.paths import DATA_DIR
from pelagos.hydro.camels import (
    SAMPLE,
    SAMPLE_BASINS,
    load_attributes,
    load_basin,
    load_basins,
    read_basin_csv,
    stack_basins,
)
from pelagos.hydro.pet import hargreaves

ROOT = DATA_DIR / "camels_us_sample"


def test_load_basin_reads_forcing_discharge_and_header():
    b = load_basin(SAMPLE, "01022500")
    assert b.n_days == 1461 and str(b.dates[0]) == "2000-01-01" and str(b.dates[-1]) == "2003-12-31"
    assert b.lat == 44.82 and b.elev == 133.0 and b.area_km2 == pytest.approx(587.675987)
    # first row: prcp 0.00, tmax -2.36, tmin -14.36; discharge 255 ft3/s on 2000-01-01
    assert b.prcp[2] == 5.5 and b.tmax[0] == -2.36 and b.tmin[0] == -14.36
    assert b.tmean[0] == pytest.approx(0.5 * (-2.36 - 14.36))
    q = 255.0 * 0.3048**3 * 86400.0 / 587675987.0 * 1000.0  # mm/d
    assert b.q_obs[0] == pytest.approx(q, rel=1e-12)
    assert np.isnan(b.q_obs[-1])  # streamflow ends 2002-12-31: NaN after
    assert np.isfinite(b.q_obs[:1096]).all()
    doy = torch.as_tensor((b.dates - b.dates.astype("datetime64[Y]")).astype(int) + 1)
    pet = hargreaves(torch.as_tensor(b.tmin), torch.as_tensor(b.tmax), b.lat, doy).numpy()
    assert np.array_equal(b.pet, pet) and (b.pet >= 0).all() and 1.0 < b.pet.mean() < 4.0
    # a window; leading zeros may be left out
    w = load_basin(ROOT, 1547700, "2001-02-01", "2001-02-28")
    assert w.gauge_id == "01547700" and w.n_days == 28 and str(w.dates[0]) == "2001-02-01"


def test_load_basins_and_stack():
    basins = load_basins(SAMPLE, SAMPLE_BASINS, "2000-01-01", "2002-12-31")
    s = stack_basins(basins)
    assert s["P"].shape == (1096, 4) and s["P"].dtype == torch.float64
    assert torch.isfinite(s["Q"]).all()
    with pytest.raises(ForcingError, match="cover different days"):
        stack_basins([load_basin(SAMPLE, "01022500"), basins[1]])


def test_flat_and_per_huc_layouts_give_the_same_basin(tmp_path):
    root = tmp_path / "camels"
    for sub in ("basin_mean_forcing/daymet/01", "basin_mean_forcing/daymet/02", "usgs_streamflow/01"):
        (root / sub).mkdir(parents=True)
    shutil.copy(ROOT / "basin_mean_forcing/daymet/01022500_lump_cida_forcing_leap.txt",
                root / "basin_mean_forcing/daymet/01")  # fmt: skip
    shutil.copy(ROOT / "basin_mean_forcing/daymet/02064000_lump_cida_forcing_leap.txt",
                root / "basin_mean_forcing/daymet/02")  # fmt: skip
    shutil.copy(ROOT / "usgs_streamflow/01022500_streamflow_qc.txt", root / "usgs_streamflow/01")
    shutil.copytree(ROOT / "camels_attributes_v2.0", root / "camels_attributes_v2.0")
    a, b = load_basin(root, "01022500"), load_basin(SAMPLE, "01022500")
    assert np.array_equal(a.prcp, b.prcp) and np.array_equal(a.q_obs, b.q_obs, equal_nan=True)
    c = load_basin(root, "02064000")  # no streamflow file here: all NaN
    assert np.isnan(c.q_obs).all()


def _copy_sample(tmp_path) -> Path:
    root = tmp_path / "camels"
    shutil.copytree(ROOT, root)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


def _edit_forcing(root: Path, gauge: str, edit) -> None:
    p = root / "basin_mean_forcing/daymet" / f"{gauge}_lump_cida_forcing_leap.txt"
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(edit(lines)))


def test_unknown_basin_gets_did_you_mean():
    with pytest.raises(ForcingError, match=r"unknown basin id '01022501'.*did you mean '01022500'"):
        load_basin(SAMPLE, "01022501")
    with pytest.raises(ForcingError, match="is a CAMELS basin but"):
        load_basin(SAMPLE, "01013500")  # in the attributes, no forcing in the sample
    with pytest.raises(ConfigError, match="8 digits"):
        load_basin(SAMPLE, "abc")
    with pytest.raises(ForcingError, match="no forcing source 'nldas'"):
        load_basin(SAMPLE, "01022500", source="nldas")
    with pytest.raises(ForcingError, match="not a CAMELS-US folder"):
        load_basin(DATA_DIR, "01022500")


def test_missing_days_negative_precipitation_and_nan_are_errors(tmp_path):
    root = _copy_sample(tmp_path)
    _edit_forcing(root, "01547700", lambda ls: ls[:104] + ls[105:])  # drop 2000-04-10
    with pytest.raises(ForcingError, match=r"missing days between 2000-04-09 and 2000-04-11 \(1 day"):
        load_basin(root, "01547700")

    def negative(ls):
        f = ls[10].split("\t")
        f[2] = "-3.00"
        return [*ls[:10], "\t".join(f), *ls[11:]]

    _edit_forcing(root, "02064000", negative)
    with pytest.raises(ForcingError, match="negative prcp = -3 on 2000-01-07"):
        load_basin(root, "02064000")

    def nan(ls):
        f = ls[20].split("\t")
        f[5] = "nan"
        return [*ls[:20], "\t".join(f), *ls[21:]]

    _edit_forcing(root, "03015500", nan)
    with pytest.raises(ForcingError, match="tmax is missing/NaN on 2000-01-17"):
        load_basin(root, "03015500")
    with pytest.raises(ForcingError, match="outside the data"):
        load_basin(SAMPLE, "01547700", "1999-01-01", "2000-12-31")
    with pytest.raises(ConfigError, match="before start"):
        load_basin(SAMPLE, "01547700", "2001-01-01", "2000-12-31")


def test_missing_discharge_flags_become_nan(tmp_path):
    root = _copy_sample(tmp_path)
    p = root / "usgs_streamflow/01547700_streamflow_qc.txt"
    lines = p.read_text().splitlines(keepends=True)
    lines[5] = "01547700 2000 01 06  -999.00 M\n"
    p.write_text("".join(lines[:100] + lines[101:]))  # and 2000-04-10 absent
    b = load_basin(root, "01547700")
    assert np.isnan(b.q_obs[5]) and np.isnan(b.q_obs[100]) and np.isfinite(b.q_obs[4])
    assert int(np.isnan(b.q_obs[:1096]).sum()) == 2


def test_attributes_of_all_671_basins():
    ids, names, values = load_attributes(SAMPLE)
    a = load_attributes(ROOT / "camels_attributes_v2.0")
    assert len(ids) == 671 and values.shape == (671, len(names)) and a.gauge_ids == ids
    assert "p_mean" in names and "area_gages2" in names and "geol_1st_class" not in names
    assert len(set(a.huc02)) == 18 and a.huc02[0] == "01"
    sub = load_attributes(SAMPLE, ["area_gages2", "p_mean"], ["1022500", "03015500"])
    assert sub.gauge_ids == ["01022500", "03015500"] and sub.values[0, 0] == 573.6
    assert sub.huc02 == ["01", "05"]
    assert np.isnan(load_attributes(SAMPLE, ["root_depth_50"], ["01013500"]).values[0, 0])  # 'NA'
    with pytest.raises(ConfigError, match="did you mean 'p_mean'"):
        load_attributes(SAMPLE, ["pmean"])
    with pytest.raises(ConfigError, match="not numeric"):
        load_attributes(SAMPLE, ["dom_land_cover"])
    with pytest.raises(ForcingError, match=r"unknown basin id '01022501'.*did you mean"):
        load_attributes(SAMPLE, gauge_ids=["01022501"])


def _write_csv(path: Path, rows: list[str], header: str = "date,prcp,tmean,pet") -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_read_basin_csv_and_its_errors(tmp_path):
    rows = [f"2001-01-{d:02d},{d % 3},{d - 5}.5,1.2" for d in range(1, 11)]
    b = read_basin_csv(_write_csv(tmp_path / "mine.csv", rows))
    assert b.gauge_id == "mine" and b.n_days == 10 and b.prcp[2] == 0.0 and b.tmean[0] == -4.5
    assert np.isnan(b.q_obs).all() and np.isnan(b.tmin).all()
    w = read_basin_csv(tmp_path / "mine.csv", "2001-01-03", "2001-01-05")
    assert w.n_days == 3 and w.prcp.tolist() == [0.0, 1.0, 2.0]
    qrows = [r + ("," if i == 1 else ",0.7") for i, r in enumerate(rows)]
    q = read_basin_csv(_write_csv(tmp_path / "q.csv", qrows, "date,prcp,tmean,pet,qobs"))
    assert np.isnan(q.q_obs[1]) and q.q_obs[0] == 0.7
    with pytest.raises(ForcingError, match=r"missing days between 2001-01-04 and 2001-01-06"):
        read_basin_csv(_write_csv(tmp_path / "gap.csv", rows[:4] + rows[5:]))
    with pytest.raises(ForcingError, match="negative prcp"):
        read_basin_csv(_write_csv(tmp_path / "neg.csv", [*rows[:3], "2001-01-04,-1,3,1", *rows[4:]]))
    with pytest.raises(ForcingError, match="pet is missing/NaN on 2001-01-04"):
        read_basin_csv(_write_csv(tmp_path / "nan.csv", [*rows[:3], "2001-01-04,1,3,", *rows[4:]]))
    with pytest.raises(ForcingError, match="'x' is not a number"):
        read_basin_csv(_write_csv(tmp_path / "bad.csv", [*rows[:3], "2001-01-04,x,3,1", *rows[4:]]))
    with pytest.raises(ForcingError, match=r"lacks column\(s\) \['pet'\]"):
        read_basin_csv(
            _write_csv(tmp_path / "hdr.csv", [r.rsplit(",", 1)[0] for r in rows], "date,prcp,tmean")
        )
    with pytest.raises(ForcingError, match="not increasing"):
        read_basin_csv(_write_csv(tmp_path / "order.csv", [rows[1], rows[0]]))
    with pytest.raises(ForcingError, match="does not exist"):
        read_basin_csv(tmp_path / "none.csv")


def test_hbv_kind_runs_from_csv_files(tmp_path):
    from pelagos.io.build import build_model, setup
    from pelagos.io.config import load_config

    rows = [f"2001-03-{d:02d},{(d * 7) % 5},{d - 8}.0,2.0" for d in range(1, 32)]
    _write_csv(tmp_path / "a.csv", rows)
    _write_csv(tmp_path / "b.csv", [r.replace(",2.0", ",1.0") for r in rows])
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model: {kind: hbv, nmul: 2}\n"
        "forcing: {csv: [a.csv, b.csv], start: '2001-03-02', end: '2001-03-31'}\n"
        "time: {start: '2001-03-02', stop: '2001-03-31'}\n"
    )
    c = load_config(cfg)
    m = build_model(c)
    assert m.forcing.gauge_ids == ["a", "b"] and m.epoch.isoformat() == "2001-03-02T00:00:00"
    assert m.output_coordinates()["basin"].values.tolist() == [0.0, 1.0]
    s = setup(c)
    assert s.n_steps == 29
    cfg.write_text(
        "model: {kind: hbv}\nforcing: {csv: [a.csv], start: '2001-03-01'}\ntime: {stop: '2001-05-01'}\n"
    )
    with pytest.raises(ForcingError, match="outside the forcing"):
        setup(load_config(cfg))
    cfg.write_text(
        "model: {kind: hbv}\nforcing: {gauge_ids: ['01022500'], end: '2000-01-31'}\ntime: {dt: 3600}\n"
    )
    with pytest.raises(ConfigError, match="daily steps"):
        build_model(load_config(cfg))
