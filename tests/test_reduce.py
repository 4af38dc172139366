"""Issue 5: classify raw MUSE files, associate calibrations, reduce as one Dask graph.

Classification, association and the graph are tested on small header-only files (a
second or two in all); one real 2-IFU reduction (the demo, through every recipe of
the cascade) is shared by the slow tests.
"""

from __future__ import annotations

import os
import threading
import time
import pathlib

import numpy as np
import pytest
from astropy.io import fits

import cpldask
from cpldask import workflow as R
from cpldask.instruments.muse import demo as muse_demo
from cpldask.instruments.muse import synthetic
from helpers import max_overlap, recipe_pids

DAY = 1.0
HOUR = 1.0 / 24.0
MINUTE = HOUR / 60.0

#: (DPR CATG, DPR TYPE, DPR TECH) of each raw tag, as MUSE writes them (sources in
#: docs/reduce.md, "Raw MUSE frames"; every type is tested in test_muse_headers.py)
DPR = {
    "BIAS": ("CALIB", "BIAS", "IFU"), "DARK": ("CALIB", "DARK", "IFU"),
    "FLAT": ("CALIB", "FLAT,LAMP", "IFU"), "ARC": ("CALIB", "WAVE", "IFU"),
    "SKYFLAT": ("CALIB", "FLAT,SKY", "IFU"), "ILLUMFLAT": ("CALIB", "FLAT,LAMP,ILLUM", "IFU"),
    "STD": ("CALIB", "STD", "IFU"), "OBJECT": ("SCIENCE", "OBJECT", "IFU"),
    "LINGAIN_LAMP_ON": ("CALIB", "FLAT,LAMP,DETCHAR,LINEARITY", "IFU"),
}


def fake(path, kind, *, mjd, ifus=(1, 2), mode="WFM-NOAO-N", binx=1, instrument="MUSE",
         lamps=(), extra=None):
    """A header-only stand-in for a raw frame: the primary header of a real one and a
    1x1 image extension CHANnn per IFU."""
    catg, typ, tech = DPR[kind]
    h = fits.Header()
    h["INSTRUME"] = instrument
    h["MJD-OBS"] = mjd
    h["EXPTIME"] = 10.0
    for key, value in {"ESO DPR CATG": catg, "ESO DPR TYPE": typ, "ESO DPR TECH": tech,
                       "ESO INS MODE": mode, "ESO DET BINX": binx, "ESO DET BINY": binx,
                       "ESO DET READ CURNAME": "SCI1.0", "ESO INS LAMPNUM": 6,
                       **{f"ESO INS LAMP{i} ST": f"CU-LAMP{i}" in lamps for i in range(1, 7)},
                       **{f"ESO INS SHUT{i} ST": f"CU-LAMP{i}" in lamps for i in range(1, 7)},
                       **{f"ESO INS LAMP{i} NAME": f"CU-LAMP{i}" for i in range(1, 7)},
                       **(extra or {})}.items():
        h[f"HIERARCH {key}"] = value
    hdus = [fits.PrimaryHDU(header=h)]
    hdus += [fits.ImageHDU(np.zeros((1, 1), np.uint16), name=f"CHAN{k:02d}") for k in ifus]
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return str(path)


def fake_set(directory, kind, n, *, mjd, step=2 * MINUTE, **kw):
    return [fake(pathlib.Path(directory) / f"{kind}_{mjd:.3f}_{i + 1}.fits", kind,
                 mjd=mjd + i * step, **kw) for i in range(n)]


def night(d, *, ifus=(1, 2), t0=60000.0, std=True, skyflat=True):
    """A complete header-only night: calibrations in the evening, science at t0+0.5."""
    d = pathlib.Path(d)
    files = {
        "BIAS": fake_set(d / "raw", "BIAS", 3, mjd=t0, ifus=ifus),
        "DARK": fake_set(d / "raw", "DARK", 3, mjd=t0 + 0.01, ifus=ifus),
        "FLAT": fake_set(d / "raw", "FLAT", 3, mjd=t0 + 0.09, ifus=ifus, lamps=("CU-LAMP1",)),
        "ARC": [fake(d / "raw" / f"ARC_{lamp}.fits", "ARC", mjd=t0 + 0.12 + i * MINUTE,
                     ifus=ifus, lamps=(f"CU-LAMP{lamp}",)) for i, lamp in enumerate((3, 4, 5))],
        "ILLUMFLAT": [fake(d / "raw" / "ILLUMFLAT.fits", "ILLUMFLAT", mjd=t0 + 0.45, ifus=ifus)],
        "OBJECT": [fake(d / "raw" / "OBJECT.fits", "OBJECT", mjd=t0 + 0.5, ifus=ifus)],
        "LINE_CATALOG": [str(synthetic.write_line_catalog(d / "static" / "LINE_CATALOG.fits"))],
        "GEOMETRY_TABLE": [str(synthetic.write_geometry_table(d / "static" / "GEOMETRY_TABLE.fits"))],
        "SKY_LINES": [str(synthetic.write_sky_lines(d / "static" / "SKY_LINES.fits"))],
        "EXTINCT_TABLE": [str(synthetic.write_extinct_table(d / "static" / "EXTINCT_TABLE.fits"))],
        "STD_FLUX_TABLE": [str(synthetic.write_std_flux_table(d / "static" / "STD_FLUX_TABLE.fits",
                                                              ra=10.0, dec=-24.6))],
    }
    if skyflat:
        files["SKYFLAT"] = fake_set(d / "raw", "SKYFLAT", 3, mjd=t0 + 0.40, ifus=ifus)
    if std:
        files["STD"] = [fake(d / "raw" / "STD.fits", "STD", mjd=t0 + 0.47, ifus=ifus)]
    return files


def names(frames):
    return [os.path.basename(f.path) for f in frames]


# ---------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------
def test_classification_of_a_mix_with_junk_and_another_instrument(tmp_path):
    files = night(tmp_path, std=True)
    files["LINGAIN_LAMP_ON"] = [fake(tmp_path / "raw" / "LINGAIN_ON.fits", "LINGAIN_LAMP_ON",
                                     mjd=60000.1)]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "README.txt").write_text("observing log\n")
    (junk / "empty.fits").write_bytes(b"")
    (junk / "truncated.fits").write_bytes(open(files["BIAS"][0], "rb").read()[:1000])
    uves = fake(junk / "UVES_BIAS.fits", "BIAS", mjd=60000.0, instrument="UVES")
    fits.PrimaryHDU().writeto(junk / "no_instrument.fits")
    odd = fake(junk / "MUSE_ODD.fits", "BIAS", mjd=60000.0, extra={"ESO DPR TYPE": "LAMP,WEIRD"})
    # a product the rules do not take as an input (master calibrations they do take:
    # test_dataset.py)
    product = junk / "PIXTABLE_OBJECT_0001-01.fits"
    fits.PrimaryHDU(header=fits.Header([("INSTRUME", "MUSE"),
                                        ("HIERARCH ESO PRO CATG", "PIXTABLE_OBJECT")])).writeto(product)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.fits").write_text("skipped: hidden")

    c = R.classify(tmp_path)

    expected = {tag: sorted(os.path.basename(p) for p in paths) for tag, paths in files.items()}
    assert {tag: sorted(names(fr)) for tag, fr in c.tags.items()} == expected
    reasons = {os.path.basename(u.path): u.reason for u in c.unclassified}
    assert set(reasons) == {"README.txt", "empty.fits", "truncated.fits", "UVES_BIAS.fits",
                            "no_instrument.fits", "MUSE_ODD.fits",
                            "PIXTABLE_OBJECT_0001-01.fits"}
    assert "not a FITS file" in reasons["README.txt"]
    assert "empty file" in reasons["empty.fits"]
    assert "'UVES'" in reasons["UVES_BIAS.fits"] and "not a MUSE file" in reasons["UVES_BIAS.fits"]
    assert "no INSTRUME" in reasons["no_instrument.fits"]
    assert "LAMP,WEIRD" in reasons["MUSE_ODD.fits"]
    assert "pipeline product" in reasons["PIXTABLE_OBJECT_0001-01.fits"]
    # header metadata travels with each frame
    arc = {f.name: f for f in c["ARC"]}["ARC_3.fits"]
    assert arc.meta["lamps"] == ["Ne"] and arc.meta["mode"] == "WFM-NOAO-N"
    assert arc.units == (1, 2) and arc.mjd == pytest.approx(60000.12)
    assert c["LINE_CATALOG"][0].mjd is None and c["LINE_CATALOG"][0].units == ()
    assert c.units() == (1, 2)
    text = c.summary()
    assert "UVES_BIAS.fits" in text and "7 files not classified" in text


def test_static_tables_from_synthetic_are_classified_by_structure(tmp_path):
    # GEOMETRY_TABLE carries PRO CATG; the others are recognised by their columns
    files = night(tmp_path)
    c = R.classify(tmp_path / "static")
    assert sorted(c.tags) == ["EXTINCT_TABLE", "GEOMETRY_TABLE", "LINE_CATALOG",
                              "SKY_LINES", "STD_FLUX_TABLE"]
    assert not c.unclassified
    assert c["STD_FLUX_TABLE"][0].path == files["STD_FLUX_TABLE"][0]


def test_rules_are_data_another_instrument_needs_no_code(tmp_path):
    rules = {
        "instrument": "UVES",
        "identify": {"INSTRUME": "UVES"},
        "keywords": {"type": "ESO DPR TYPE", "binx": "ESO DET BINX"},
        "classification": [{"tag": "BIAS_RED", "when": {"type": "BIAS"}}],
        "association": {"science": [], "calibrations": {"BIAS_RED": {"match": ["binx"]}}},
    }
    uves = fake(tmp_path / "u.fits", "BIAS", mjd=60000.0, instrument="UVES")
    muse = fake(tmp_path / "m.fits", "BIAS", mjd=60000.0)
    c = R.classify([uves, muse], rules=rules)
    assert [f.tag for f in c.frames] == ["BIAS_RED"]
    assert "not a UVES file" in c.unclassified[0].reason
    # the same from a YAML file
    import yaml

    path = tmp_path / "uves.yaml"
    path.write_text(yaml.safe_dump(rules))
    assert [f.tag for f in R.classify([uves], rules=path).frames] == ["BIAS_RED"]
    with pytest.raises(ValueError, match="no instrument named 'fors'"):
        R.load_rules("fors")


# ---------------------------------------------------------------------------------
# Association
# ---------------------------------------------------------------------------------
def test_association_takes_the_nearest_set_in_time(tmp_path):
    night(tmp_path)  # science at 60000.5, biases at 60000.0
    early = fake_set(tmp_path / "more", "BIAS", 3, mjd=59998.0)  # two days before
    late = fake_set(tmp_path / "more", "BIAS", 3, mjd=60000.3)  # 5 h before: nearest
    binned = fake_set(tmp_path / "more", "BIAS", 3, mjd=60000.45, binx=2)  # nearer, 2x2
    short = fake_set(tmp_path / "more", "BIAS", 2, mjd=60000.49)  # nearest, too few
    after = fake_set(tmp_path / "more", "BIAS", 3, mjd=60001.2)  # next morning, farther

    a = R.associate(R.classify(tmp_path), (1, 2))

    for k in (1, 2):
        assert [f.path for f in a.frames("BIAS", k)] == late
    assert not {f.path for f in a.unused} & set(late)
    assert set(early + binned + short + after) <= {f.path for f in a.unused}
    assert "BIAS" in a.summary() and "(-4.8 h)" in a.summary()


def test_association_picks_per_ifu_and_frames_holding_every_ifu(tmp_path):
    night(tmp_path)
    # the nearest flats hold IFU 1 only: IFU 2 takes the evening set
    ifu1_only = fake_set(tmp_path / "more", "FLAT", 3, mjd=60000.4, ifus=(1,))
    # a nearer twilight set without IFU 2 cannot serve the call over both IFUs
    fake_set(tmp_path / "more", "SKYFLAT", 3, mjd=60000.48, ifus=(1,))
    a = R.associate(R.classify(tmp_path), (1, 2))
    assert [f.path for f in a.frames("FLAT", 1)] == ifu1_only
    assert names(a.frames("FLAT", 2)) == ["FLAT_60000.090_1.fits", "FLAT_60000.090_2.fits",
                                          "FLAT_60000.090_3.fits"]
    assert names(a.frames("SKYFLAT", 1)) == names(a.frames("SKYFLAT", 2))
    assert a.frames("SKYFLAT", 1)[0].mjd == pytest.approx(60000.40)


def test_association_single_frames_and_mode(tmp_path):
    night(tmp_path)
    fake(tmp_path / "more" / "STD_NFM.fits", "STD", mjd=60000.49, mode="NFM-AO-N")
    fake(tmp_path / "more" / "STD_2.fits", "STD", mjd=60000.2)
    a = R.associate(R.classify(tmp_path), (1, 2))
    assert names(a.frames("STD")) == ["STD.fits"]  # nearest with the science's mode
    assert names(a.frames("ILLUMFLAT")) == ["ILLUMFLAT.fits"]


def test_association_errors_and_optional_tags(tmp_path):
    files = night(tmp_path, std=False, skyflat=False)
    a = R.associate(R.classify(tmp_path), (1, 2))
    assert "STD" not in a and "SKYFLAT" not in a  # optional: left out quietly
    os.remove(files["ARC"][0]), os.remove(files["ARC"][1]), os.remove(files["ARC"][2])
    with pytest.raises(ValueError, match="no usable ARC for IFU.s. 1-2: no ARC frame"):
        R.associate(R.classify(tmp_path), (1, 2))
    with pytest.raises(ValueError, match="lacks IFU.s. 3"):
        R.associate(R.classify(tmp_path), (1, 2, 3))
    fake(tmp_path / "raw" / "OBJECT_NFM.fits", "OBJECT", mjd=60000.6, mode="NFM-AO-N")
    with pytest.raises(ValueError, match="science frames differ in mode"):
        R.associate(R.classify(tmp_path), (1, 2))


# ---------------------------------------------------------------------------------
# The graph (nothing runs)
# ---------------------------------------------------------------------------------
PER_IFU = ["muse_bias", "muse_dark", "muse_flat", "muse_wavecal", "muse_lsf", "muse_scibasic"]


def test_graph_of_two_ifus(tmp_path):
    night(tmp_path)
    red = R.reduce(tmp_path, ifus="1-2", output_dir=tmp_path / "out", dry_run=True)
    labels = [s.label for s in red.steps]
    assert len(labels) == len(set(labels)) == 15
    for name in PER_IFU:
        steps = [s for s in red.steps if s.name == name]
        assert sorted(s.unit for s in steps) == [1, 2]  # once per IFU
        assert all(s.param["nifu"] == s.unit for s in steps)
        assert all(s.output_dir == str(tmp_path / "out" / name / f"ifu{s.unit:02d}")
                   for s in steps)
    for k in (1, 2):  # each IFU's chain uses its own products
        assert red[f"muse_dark[{k}]"].calib["MASTER_BIAS"] == [red[f"muse_bias[{k}]"]]
        assert red[f"muse_wavecal[{k}]"].calib["TRACE_TABLE"] == [red[f"muse_flat[{k}]"]]
        sci = red[f"muse_scibasic[{k}]"]
        assert sci.calib["TWILIGHT_CUBE"] == [red["muse_twilight"]]
        assert sci.raw["ILLUM"] == [red["muse_illum"]]
    for k, other in ((1, 2), (2, 1)):  # lsf waits for every wavecal, as twilight does
        assert red[f"muse_lsf[{k}]"].calib["WAVECAL_TABLE"] == [red[f"muse_wavecal[{k}]"],
                                                                red[f"muse_wavecal[{other}]"]]
    twilight = red["muse_twilight"]
    assert twilight.unit is None and "nifu" not in twilight.param
    assert twilight.calib["WAVECAL_TABLE"] == [red["muse_wavecal[1]"], red["muse_wavecal[2]"]]
    scipost = red["muse_scipost"]
    assert scipost.raw == {"PIXTABLE_OBJECT": [red["muse_scibasic[1]"], red["muse_scibasic[2]"]]}
    # the sky modelled with the lines of SKY_LINES and each IFU's LSF (issue 20.1)
    assert scipost.param == {"save": "cube", "skymethod": "model", "astrometry": False}
    assert scipost.calib["LSF_PROFILE"] == [red["muse_lsf[1]"], red["muse_lsf[2]"]]
    assert [os.path.basename(p) for p in scipost.calib["SKY_LINES"]] == ["SKY_LINES.fits"]
    assert scipost.output_dir == str(tmp_path / "out" / "muse_scipost")
    assert "muse_standard" not in labels  # 2 IFUs: no flux branch by default
    # every step comes after its inputs (the order of submission)
    seen = set()
    for s in red.steps:
        assert all(id(d) in seen for d in s.deps)
        seen.add(id(s))
    assert red.steps[0].status == "planned" and red.submitted_at is None


def test_flux_branch_with_three_ifus_and_switches(tmp_path):
    night(tmp_path, ifus=(1, 2, 3))
    red = R.reduce(tmp_path, output_dir=tmp_path / "out", dry_run=True)
    assert red.units == (1, 2, 3)
    assert [s.label for s in red.steps][-5:] == [
        "muse_scibasic_std[1]", "muse_scibasic_std[2]", "muse_scibasic_std[3]",
        "muse_standard", "muse_scipost_flux"]
    flux = red["muse_scipost_flux"]
    assert flux.calib["STD_RESPONSE"] == [red["muse_standard"]]
    assert flux.calib["LSF_PROFILE"] == [red[f"muse_lsf[{k}]"] for k in (1, 2, 3)]
    assert flux.param["skymethod"] == "model"
    assert "muse_standard" not in [s.name for s in R.reduce(
        tmp_path, output_dir=tmp_path / "out", dry_run=True, flux=False).steps]
    two = R.reduce(tmp_path, ifus=(1, 2), output_dir=tmp_path / "out", dry_run=True, flux=True)
    assert two.steps[-1].name == "muse_scipost_flux"
    tuned = R.reduce(tmp_path, ifus=(1,), output_dir=tmp_path / "out", dry_run=True,
                     params={"muse_scipost": {"skymethod": "model"}})
    assert tuned["muse_scipost"].param["skymethod"] == "model"


def test_sky_subtraction_is_chosen_by_the_rules(tmp_path):
    """Issue 20.1: skymethod=model where SKY_LINES and muse_lsf's LSF_PROFILE are at
    hand; without SKY_LINES, simple (it needs no input); a skymethod in the
    parameters stays. The choice and its reason are in the association report."""
    night(tmp_path, ifus=(1,), std=False)
    model = R.reduce(tmp_path, output_dir=tmp_path / "out", dry_run=True)
    assert model["muse_scipost"].param["skymethod"] == "model"
    assert ("note: sky: skymethod=model: the sky lines fitted with the LSF of each slice"
            in model.association_report())
    os.remove(tmp_path / "static" / "SKY_LINES.fits")
    simple = R.reduce(tmp_path, output_dir=tmp_path / "out", dry_run=True)
    post = simple["muse_scipost"]
    assert post.param["skymethod"] == "simple"
    assert "SKY_LINES" not in post.calib and "LSF_PROFILE" not in post.calib
    assert ("skymethod=simple: the sky spectrum of the darkest part of the field, "
            "subtracted as it is (no SKY_LINES)") in simple.association_report()
    none = R.reduce(tmp_path, output_dir=tmp_path / "out", dry_run=True,
                    params={"muse_scipost": {"skymethod": "none"}})
    assert none["muse_scipost"].param["skymethod"] == "none"
    assert "sky: skymethod=none, as the parameters say" in none.association_report()


def test_twilight_left_out_without_ifu_1_or_skyflat(tmp_path):
    night(tmp_path, ifus=(1, 2, 3))
    red = R.reduce(tmp_path, ifus=(2, 3), output_dir=tmp_path / "out", dry_run=True)
    assert "muse_twilight" not in [s.name for s in red.steps]
    assert "TWILIGHT_CUBE" not in red["muse_scibasic[2]"].calib
    assert any("muse_twilight left out" in n for n in red.association.notes)


def test_dry_run_text_and_graph_image(tmp_path):
    night(tmp_path)
    (tmp_path / "notes.txt").write_text("not data")
    png = tmp_path / "graph.png"
    red = R.reduce(tmp_path, ifus=(1, 2), output_dir=tmp_path / "out", dry_run=True, graph=png)
    text = red.describe()
    assert "notes.txt: not a FITS file" in text
    assert "muse_twilight" in text and "after: muse_bias[1], muse_dark[1]" in text
    assert "calib TRACE_TABLE     muse_flat[1]" in text
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    dot = red.write_graph(tmp_path / "graph.dot").read_text()
    assert '"muse_bias[1]" -> "muse_dark[1]";' in dot


def test_parse_units_by_the_instruments_range_and_reduce_is_a_function():
    assert R.parse_units("1-24") == tuple(range(1, 25))
    assert R.parse_units("3,1,5-6") == (1, 3, 5, 6)
    assert R.parse_units(range(1, 3)) == (1, 2)
    for bad in ("0-3", "25", "a", ""):
        with pytest.raises(ValueError):
            R.parse_units(bad, "muse")
    assert R.parse_units("1-4", "hawki") == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="HAWKI detector numbers must be within 1..4"):
        R.parse_units("5", "hawki")
    import types

    assert isinstance(cpldask.reduce, types.FunctionType) and cpldask.reduce is R.reduce


# ---------------------------------------------------------------------------------
# One real reduction of 2 IFUs through every recipe (shared by the slow tests)
# ---------------------------------------------------------------------------------
# (the fixture demo_run is in conftest.py: tests/test_report.py reports on it too)
@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
def test_reduction_products_cube_and_star(demo_run):
    red, _, work = demo_run
    cube_path, fov_path = red.final["DATACUBE_FINAL"], red.final["IMAGE_FOV"]
    assert cube_path == str(work / "reduced" / "muse_scipost" / "DATACUBE_FINAL.fits")
    with fits.open(cube_path) as hdul:
        cube = hdul["DATA"].data
        assert cube.shape == (3681, 24, 301)  # 2 IFUs x 12 slices, 4 stacks x 75 px
        # the slices fill the field: the cube is finite wherever they are
        assert np.isfinite(cube).mean() > 0.999
        white = np.nanmean(cube, axis=0)
        # the sky is subtracted (skymethod=model, issue 20.1): what is left of it is
        # small against the star
        assert np.isfinite(white).all()
        assert abs(np.nanmedian(white)) < 0.01 * np.nanmax(white)
    with fits.open(fov_path) as hdul:
        image, header = hdul["DATA"].data, hdul["DATA"].header
    assert image.shape == (24, 301)
    # the star of the OBJECT frames is where synthetic put it
    ex, ey = synthetic.star_pixel(header, (1, 2))
    yy, xx = np.mgrid[1:image.shape[0] + 1, 1:image.shape[1] + 1]
    w = np.nan_to_num(image - np.nanmedian(image))
    w[(w < 0) | (abs(xx - ex) > 8) | (abs(yy - ey) > 8)] = 0
    cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    assert abs(cx - ex) < 0.5 and abs(cy - ey) < 0.5, ((cx, cy), (ex, ey))
    peak = np.unravel_index(np.nanargmax(image), image.shape)
    assert abs(peak[1] + 1 - ex) <= 1 and abs(peak[0] + 1 - ey) <= 1
    # products of every step in its own folder
    assert (work / "reduced" / "muse_bias" / "ifu01" / "MASTER_BIAS-01.fits").exists()
    assert (work / "reduced" / "muse_wavecal" / "ifu02" / "WAVECAL_TABLE-02.fits").exists()
    assert (work / "reduced" / "muse_twilight" / "TWILIGHT_CUBE.fits").exists()
    # the demo's picture
    assert red.png == work / "white_light.png" and red.png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
def test_reduction_ran_each_recipe_once_per_ifu_in_parallel(demo_run):
    red, finished, work = demo_run
    assert all(s.status == "finished" for s in red.steps) and not red.failed()
    assert sorted(finished) == sorted(s.label for s in red.steps)  # progress saw all
    records = red.records()
    assert len(records) == len(red.steps) == 15
    # exactly once per IFU: one call each, one product set per folder, no re-run
    for name in PER_IFU:
        assert sorted(s.unit for s in red.steps if s.name == name) == [1, 2]
    for name in ("muse_bias", "muse_dark", "muse_flat", "muse_wavecal", "muse_lsf"):
        for k in (1, 2):
            label = f"{name}[{k}]"
            folder = work / "reduced" / name / f"ifu{k:02d}"
            on_disk = sorted(p.name for p in folder.glob("*.fits"))
            mine = sorted(os.path.basename(p) for paths in red.products(label).values()
                          for p in paths)
            assert on_disk == mine  # no second run left numbered copies
            assert [v for n, v in records[label].params if n.endswith(".nifu")] == [k]
    assert len({rec.call_dir for rec in records.values()}) == len(records)
    # the IFU branches overlapped: recipe processes of IFU 1 and IFU 2 ran at once
    spans = {label: (rec.start, rec.end) for label, rec in records.items()}
    branch = {k: [spans[f"{n}[{k}]"] for n in PER_IFU] for k in (1, 2)}
    overlap = sum(max(0.0, min(e1, e2) - max(s1, s2))
                  for s1, e1 in branch[1] for s2, e2 in branch[2])
    assert overlap > 10.0, spans
    assert max_overlap(list(spans.values())) == 2  # the 2 slots of a 2-core machine
    assert spans["muse_bias[1]"][0] < spans["muse_bias[2]"][1]
    assert spans["muse_bias[2]"][0] < spans["muse_bias[1]"][1]
    # so the reduction took clearly less than its recipes' summed run time
    busy = sum(e - s for s, e in spans.values())
    assert red.finished_at - red.submitted_at < 0.8 * busy
    # and nothing ran before its inputs existed
    for step in red.steps:
        for dep in step.deps:
            assert spans[dep.label][1] <= spans[step.label][0] + 0.5
    table = red.table()
    assert "muse_scipost" in table and "wall time" in table


@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
def test_white_light_png_marks_the_star(demo_run, tmp_path):
    red, _, _ = demo_run
    png = muse_demo.white_light_png(red.final["IMAGE_FOV"], tmp_path / "w.png", ifus=(1, 2),
                            title="test")
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[1] == 1100 and img.shape[0] > 200


@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
def test_look_at_the_demo_finds_the_star_the_sky_line_and_every_steps_qc(demo_run):
    """Issue 20.4: what the demo shows a user, per target (cpldask.look): the star
    found where synthetic put it, the sky's strongest line ([OI] 5577, synthetic's
    _SKY_LINES) where it is in the sky spectrum (after skymethod=model, what is left
    of it: still the strongest), and the QC keywords of every step of the run."""
    from cpldask import look

    red, _, work = demo_run
    assert list(red.looks) == list(red.finals) and len(red.looks) == 1
    target, seen = next(iter(red.looks.items()))
    folder = work / "reduced" / "look" / target
    assert seen.paths == {"white_light": folder / "white_light.png",
                          "spectrum": folder / "spectrum.png",
                          "sources": folder / "sources.csv", "qc": folder / "qc.txt"}
    assert all(p.stat().st_size > 0 for p in seen.paths.values())
    # the one star, where it was put (~0.03 pixel in the demo's cube), and nothing else
    header = fits.getheader(red.final["IMAGE_FOV"], "DATA")
    ex, ey = synthetic.star_pixel(header, (1, 2))
    assert len(seen.sources) == 1, look.format_sources(seen.sources)
    star = seen.sources[0]
    assert abs(star.x - ex) < 0.5 and abs(star.y - ey) < 0.5, (star, (ex, ey))
    # the spectra, as look() drew them
    white, _ = look.white_light(red.final["DATACUBE_FINAL"], red.final["IMAGE_FOV"])
    sky = look.sky_pixels(white, seen.sources, centre=(star.x, star.y))
    spec = look.spectra(red.final["DATACUBE_FINAL"],
                        look.aperture(white.shape, star.x, star.y), sky)
    assert sky.sum() > 0.8 * white.size  # a single star leaves most of the field
    assert abs(spec["wave"][np.nanargmax(spec["sky"])] - 5577.338) < 2 * header.get(
        "CD3_3", 1.25), spec["wave"][np.nanargmax(spec["sky"])]
    # the star's spectrum is the star: well above the sky's residual everywhere
    assert np.nanmedian(spec["object"] - spec["sky"]) > 20 * np.nanmax(np.abs(spec["sky"]))
    # every step of the run in the QC table, with its products' QC keywords
    assert [r["step"] for r in seen.qc] == [s.label for s in red.steps]
    for row, s in zip(seen.qc, red.steps):
        keys = {k for p in s.result.record.products for k in p.header if k.startswith("ESO QC")}
        assert set(row["qc"]) == keys, s.label
    assert seen.qc[0]["qc"] and "ESO QC BIAS MASTER1 RON" in \
        next(r["qc"] for r in seen.qc if r["step"] == "muse_bias[1]")
    text = seen.paths["qc"].read_text()
    assert all(s.label in text for s in red.steps) and "QC BIAS MASTER1 RON = " in text


@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
def test_rerun_is_served_from_the_cache(demo_run):
    """Issue 10: re-running the cascade with unchanged inputs starts no recipe and
    takes < 5 % of the first run; the recipe processes are counted by watching
    /proc for processes named after any of the recipes."""
    red, _, work = demo_run
    names = {s.recipe for s in red.steps}
    seen: set = set()
    stop = threading.Event()

    def ours(pid: int) -> bool:
        # a recipe of this reduction works in a call directory under ``work``; other
        # MUSE recipes on the machine (another user's, another test run) do not count
        try:
            return os.readlink(f"/proc/{pid}/cwd").startswith(str(work))
        except OSError:
            return False

    def watch():
        while not stop.is_set():
            for name in names:
                seen.update(pid for pid in recipe_pids(name) if ours(pid))
            stop.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.monotonic()
    try:
        again = R.reduce(work / "raw", ifus=(1, 2), output_dir=work / "reduced-again",
                         cache=True)
    finally:
        stop.set()
        watcher.join()
    took = time.monotonic() - t0
    assert seen == set()  # not one recipe process
    assert all(rec.cache_hit for rec in again.records().values())
    first = red.finished_at - red.submitted_at  # the first reduction, data excluded
    assert took < 0.05 * first, (took, first)
    with fits.open(again.final["IMAGE_FOV"]) as a, fits.open(red.final["IMAGE_FOV"]) as b:
        np.testing.assert_array_equal(a["DATA"].data, b["DATA"].data)


@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
def test_workers_killed_at_random_moments_change_nothing(demo_run, tmp_path):
    """Issue 17's chaos test: the 2-IFU cascade once more, into an empty cache, while
    worker processes of a cluster of its own are killed (SIGKILL; the nanny starts a
    new one) at moments
    drawn from a seeded generator: after the n-th step has finished, a random delay
    later, for three values of n. Dask re-runs what was lost; the cube and every
    master calibration must equal the clean run's in DATA, STAT and DQ, and the cache
    hold complete entries only."""
    import random
    import signal

    import dask
    import distributed

    from cpldask import _cache

    red, _, work = demo_run
    rng = random.Random(17)
    steps = len(red.steps)
    # kill after these numbers of finished steps (the last leaves work to do), each a
    # random 0-5 s later: within a recipe, between two, or while one is stored
    plan = sorted(rng.sample(range(1, steps - 1), 3))
    delays = [rng.uniform(0.0, 5.0) for _ in plan]
    killed: list[tuple[int, int]] = []
    finished = threading.Condition()
    count = [0]
    stop = threading.Event()

    def progress(step, result):
        with finished:
            count[0] += 1
            finished.notify_all()

    def chaos() -> None:
        for after, delay in zip(plan, delays):  # a bounded loop: three kills at most
            with finished:
                if not finished.wait_for(lambda: count[0] >= after or stop.is_set(), 1800):
                    return
            if stop.wait(delay):
                return
            victim = rng.choice(sorted(client.run(os.getpid).values()))
            os.kill(victim, signal.SIGKILL)
            killed.append((count[0], victim))

    cache = tmp_path / "chaos-cache"
    # a cluster of its own: killing the session cluster's workers lost the results
    # the fixture holds for later tests, and test_report then waited ~8 min for them
    # to be recomputed
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client, \
            dask.config.set({"cpldask.cache.dir": str(cache)}):
        killer = threading.Thread(target=chaos, daemon=True)
        killer.start()
        try:
            again = R.reduce(work / "raw", ifus=(1, 2), output_dir=tmp_path / "reduced",
                             cache=True, progress=progress)
        finally:
            stop.set()
            with finished:
                finished.notify_all()
            killer.join()
        made = {step.label: again.products(step.label) for step in again.steps}
    assert len(killed) == 3, (killed, plan)
    # muse_scipost's cube has DATA and STAT, bad pixels as NaN (its DQ, compared with
    # DATA); the master calibrations and the twilight cube carry DQ of their own
    compared = []
    for step in again.steps:
        mine, clean = made[step.label], red.products(step.label)
        for tag in mine:
            if not (tag.startswith("MASTER_") or tag in ("TWILIGHT_CUBE", "DATACUBE_FINAL")):
                continue
            for a_path, b_path in zip(mine[tag], clean[tag]):
                with fits.open(a_path) as a, fits.open(b_path) as b:
                    for ext in ("DATA", "STAT", "DQ"):
                        if ext in b:
                            np.testing.assert_array_equal(a[ext].data, b[ext].data,
                                                          err_msg=f"{step.label} {tag} {ext}")
                            compared.append((tag, ext))
    assert {("DATACUBE_FINAL", "DATA"), ("DATACUBE_FINAL", "STAT"),
            ("MASTER_BIAS", "DQ"), ("MASTER_FLAT", "DQ")} <= set(compared), compared
    checked, bad = _cache.verify(str(cache), remove=False)
    assert bad == [] and checked == steps, (checked, bad)
    # an entry appears whole or not at all: what else is there is a writer's
    # temporary directory (a worker killed while it stored), never served
    assert all(p.name.startswith(".") for p in cache.iterdir()
               if p.name not in {e["key"] for e in _cache.entries(str(cache))})
