"""Issue 19: a data set, not an exposure.

The synthetic data set of two nights (``synthetic.write_dataset``, header-only here:
the fast tier) is grouped, associated and laid out as one graph. The expected
association is written by hand from the headers (``synthetic.dataset_frames``'s
docstring says what each night holds), with the reason a MUSE user would give for
each file left out; the real run of the same data set, interrupted and resumed, is
at the end (slow).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import pathlib

import pytest

from cpldask import workflow as R
from cpldask.instruments.muse import synthetic

IFUS = (1, 2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("dataset")
    synthetic.write_dataset(d, ifus=IFUS, headers_only=True)
    return d


@pytest.fixture(scope="module")
def plan(dataset):
    return R.reduce(dataset, output_dir=dataset / "reduced", dry_run=True)


# What a MUSE user takes for each target, from the headers, and why the other files of
# each tag are left out (a pattern of names -> words of the reason). The three
# exposures of a target are 23 minutes apart and take the same files.
#
# SYNTH_A: 3 x 600 s from 2024-01-02T01:12 (night 0), WFM-NOAO-N. Night 0's archive
#   masters (made at 18:00-18:43 of its afternoon calibrations) fit: no bias, flat or
#   wavelength calibration is made; the ARC frames stay, for muse_lsf.
# SYNTH_B: the same a day later (night 1), WFM-AO-N. The archive masters are of the
#   other mode, or farther than night 1's own biases: everything is made from night 1.
# Both: the 2x2 biases have the wrong binning, the biases of five days earlier are
#   outside the 3-day validity, the two biases of the morning after night 1 are too few
#   (muse_bias wants 3), flats, arcs, twilight flats and standards of the other mode do
#   not fit, and the LINGAIN series (night 0, the only one) goes with both.
NEARER = "a nearer set was taken"
OTHER_MODE = {"SYNTH_A": "mode is 'WFM-AO-N', not 'WFM-NOAO-N'",
              "SYNTH_B": "mode is 'WFM-NOAO-N', not 'WFM-AO-N'"}
BIAS_DECOYS = {"old_BIAS_*": "outside the +-3 d validity", "n0_BIAS_2x2_*": "binx is 2",
               "n1_BIAS_short_*": "in a set of 2, fewer than the 3 needed"}
LINGAIN = {"LINGAIN_LAMP_OFF": (["n0_LINGAIN_OFF_01.fits", "n0_LINGAIN_OFF_02.fits"], {}),
           "LINGAIN_LAMP_ON": ([f"n0_LINGAIN_ON_{p}_0{i}.fits" for p in range(1, 5)
                                for i in (1, 2)], {})}


def per_ifu(catg: str) -> dict:
    return {k: [synthetic.master_name(catg, k)] for k in IFUS}


EXPECTED = {
    "SYNTH_A": {
        "BIAS": ([], {"n0_BIAS_0*": "the archive MASTER_BIAS", **BIAS_DECOYS,
                      "n1_BIAS_0*": NEARER}),
        "MASTER_BIAS": (per_ifu("MASTER_BIAS"), {}),
        "FLAT": ([], {"n0_FLAT_WFM-NOAO-N_*": "the archive MASTER_FLAT and TRACE_TABLE",
                      "n?_FLAT_WFM-AO-N_*": OTHER_MODE["SYNTH_A"],
                      "n1_FLAT_WFM-NOAO-N_*": NEARER}),
        "MASTER_FLAT": (per_ifu("MASTER_FLAT"), {}),
        "TRACE_TABLE": (per_ifu("TRACE_TABLE"), {}),
        "ARC": ([f"n0_ARC_WFM-NOAO-N_{lamp}.fits" for lamp in ("HgCd", "Ne", "Xe")],
                {"n?_ARC_WFM-AO-N_*": OTHER_MODE["SYNTH_A"], "n1_ARC_WFM-NOAO-N_*": NEARER}),
        "WAVECAL_TABLE": (per_ifu("WAVECAL_TABLE"), {}),
        "SKYFLAT": ([f"n0_SKYFLAT_0{i}.fits" for i in (1, 2, 3)],
                    {"n1_SKYFLAT_*": OTHER_MODE["SYNTH_A"]}),
        # ILLUM flats are taken in nominal mode (either night's would do), within 1 d
        "ILLUMFLAT": (["n0_ILLUMFLAT_01.fits"], {"n1_ILLUMFLAT_01.fits": NEARER}),
        "STD": (["n0_STD_01.fits"], {"n1_STD_01.fits": OTHER_MODE["SYNTH_A"]}),
        **LINGAIN,
    },
    "SYNTH_B": {
        "BIAS": (["n1_BIAS_01.fits", "n1_BIAS_02.fits", "n1_BIAS_03.fits"],
                 {**BIAS_DECOYS, "n0_BIAS_0*": NEARER}),
        # night 0's master is valid (31 h < 3 d) but night 1's biases are nearer
        "MASTER_BIAS": ([], {"n0_MASTER_BIAS-*": "the BIAS frames are nearer"}),
        "FLAT": ([f"n1_FLAT_WFM-AO-N_0{i}.fits" for i in (1, 2, 3)],
                 {"n?_FLAT_WFM-NOAO-N_*": OTHER_MODE["SYNTH_B"],
                  "n0_FLAT_WFM-AO-N_*": NEARER}),
        "MASTER_FLAT": ([], {"n0_MASTER_FLAT-*": OTHER_MODE["SYNTH_B"]}),
        "TRACE_TABLE": ([], {"n0_TRACE_TABLE-*": OTHER_MODE["SYNTH_B"]}),
        "ARC": ([f"n1_ARC_WFM-AO-N_{lamp}.fits" for lamp in ("HgCd", "Ne", "Xe")],
                {"n?_ARC_WFM-NOAO-N_*": OTHER_MODE["SYNTH_B"], "n0_ARC_WFM-AO-N_*": NEARER}),
        "WAVECAL_TABLE": ([], {"n0_WAVECAL_TABLE-*": OTHER_MODE["SYNTH_B"]}),
        "SKYFLAT": ([f"n1_SKYFLAT_0{i}.fits" for i in (1, 2, 3)],
                    {"n0_SKYFLAT_*": OTHER_MODE["SYNTH_B"]}),
        # night 0's ILLUM flat is 24.2 h before: outside ESO's 1-day window
        "ILLUMFLAT": (["n1_ILLUMFLAT_01.fits"], {"n0_ILLUMFLAT_01.fits": "outside the +-1 d"}),
        "STD": (["n1_STD_01.fits"], {"n0_STD_01.fits": OTHER_MODE["SYNTH_B"]}),
        **LINGAIN,
    },
}
STATIC = ("LINE_CATALOG", "GEOMETRY_TABLE", "SKY_LINES", "EXTINCT_TABLE", "STD_FLUX_TABLE")


def test_groups_and_files_left_out(plan):
    c = plan.classification
    assert [(a.label, [f.name for f in a.science]) for a in plan.associations] == [
        (t, [f"{t}_OBJECT_0{i}.fits" for i in (1, 2, 3)]) for t in ("SYNTH_A", "SYNTH_B")]
    reasons = {os.path.basename(u.path): u.reason for u in c.unclassified}
    assert set(reasons) == {"HAWKI_DARK_01.fits", "n0_FLAT_broken.fits"}
    assert "INSTRUME is 'HAWKI': not a MUSE file" in reasons["HAWKI_DARK_01.fits"]
    assert reasons["n0_FLAT_broken.fits"].startswith("truncated: CHAN01")
    # the IFUs are those of the raw frames; an archive master holds one each
    assert plan.units == IFUS and c["MASTER_BIAS"][0].units == (1,)


def test_association_report_matches_the_hand_made_choices(plan):
    c = plan.classification
    for a in plan.associations:
        expected = EXPECTED[a.label]
        assert len(a.exposures) == 3
        rows = [r for r in a.rows() if r["for"] is None]
        for row in rows:
            tag = row["tag"]
            if tag in STATIC:
                assert row["chosen"] == [f"{tag}.fits"] and not row["rejected"]
                continue
            if tag not in expected:  # DARK, MASTER_DARK, TWILIGHT_CUBE: none in the data
                assert not c[tag] and not row["chosen"] and not row["rejected"], row
                continue
            chosen, why = expected[tag]
            want = chosen[row["unit"]] if isinstance(chosen, dict) else chosen
            assert row["chosen"] == want, (a.label, row["exposure"], tag, row["unit"])
            # every other file of the tag is accounted for, with its reason
            others = {f.name for f in c[tag]} - set(want)
            assert set(row["rejected"]) >= others, (tag, others - set(row["rejected"]))
            units = {f.name: f.units for f in c[tag]}
            for name in others:
                if row["unit"] not in units[name] and \
                        row["rejected"][name] == f"lacks IFU {row['unit']}":
                    continue  # an archive file of the other IFU
                (pattern,) = [p for p in why if fnmatch.fnmatch(name, p)] or [None]
                assert pattern is not None, (a.label, tag, name, row["rejected"][name])
                assert why[pattern] in row["rejected"][name], (tag, name, row["rejected"][name])
    # replaced raw sets say by what; the arcs stay for muse_lsf
    a = plan.associations[0].exposures[0]
    assert a.choices["BIAS"][1].replaced_by == ("MASTER_BIAS",)
    assert a.choices["ARC"][1].replaced_by == ("WAVECAL_TABLE",) and a.paths("ARC", 1)
    # the time differences: 18:00 biases for a 01:12 exposure, 7.2 h before
    assert a.choices["MASTER_BIAS"][1].dt_hours == pytest.approx(-7.2, abs=0.01)
    # a raw set counts at its mean time: night 1's biases at 18:00, 18:02, 18:04 for
    # the third exposure, 01:35:20: 7 h 33 min 20 s
    b = plan.associations[1].exposures[2]
    assert b.choices["BIAS"][2].dt_hours == pytest.approx(-(7 + 33 / 60 + 20 / 3600), abs=1e-3)
    assert b.choices["BIAS"][2].level == 0


def test_lingain_is_calibrated_with_what_is_nearest_to_the_series(plan):
    """The LINGAIN series of night 0 goes with both targets; its master bias and trace
    table are chosen for the series itself (night 0's archive masters, 1.5 h before),
    so muse_lingain is one call per IFU, not one per target."""
    for a in plan.associations:
        own = a.exposures[0].own["LINGAIN_LAMP_ON"]
        masters = plan.classification["MASTER_BIAS"]
        assert [own.paths("MASTER_BIAS", k) for k in IFUS] == [
            [f.path for f in masters if f.units == (k,)] for k in IFUS]
        # 18:00 against the series' mean, 19:31:43 (10 frames from 19:12 to 19:37)
        assert own.choices["MASTER_BIAS"][1].dt_hours == pytest.approx(-1.529, abs=1e-3)
    lingain = [s for s in plan.steps if s.recipe == "muse_lingain"]
    assert sorted(s.unit for s in lingain) == [1, 2]
    assert all(s.groups == ["SYNTH_A", "SYNTH_B"] for s in lingain)


def test_each_master_is_made_once_for_every_exposure_that_uses_it(plan):
    steps = plan.steps
    count: dict[str, list] = {}
    for s in steps:
        count.setdefault(s.recipe, []).append(s.unit)
    # night 0: bias, flat and wavecal come from the archive; night 1's are made, once
    # per IFU for its three exposures; one illum and one twilight per night
    assert {r: sorted(u, key=str) for r, u in count.items()} == {
        "muse_bias": [1, 2], "muse_flat": [1, 2], "muse_wavecal": [1, 2],
        "muse_illum": [None, None], "muse_twilight": [None, None], "muse_lingain": [1, 2],
        "muse_scibasic": [1] * 6 + [2] * 6, "muse_scipost": [None] * 6,
        "muse_exp_align": [None, None], "muse_exp_combine": [None, None],
        "muse_lsf": [1, 1, 2, 2]}
    # no two steps are the same call, and each has a label and folder of its own
    assert len({s.label for s in steps}) == len({s.output_dir for s in steps}) == len(steps)
    idents = {(s.recipe, s.unit, repr(s.raw), repr(s.calib), repr(s.param)) for s in steps}
    assert len(idents) == len(steps)
    bias1 = plan["muse_bias[1]"]
    users = [s for s in steps if bias1 in s.deps]
    assert {s.label for s in users if s.recipe == "muse_scibasic"} == {
        f"muse_scibasic@SYNTH_B/exp{i}[1]" for i in (1, 2, 3)}
    # night 0's exposures are reduced with the archive files themselves
    sci = plan["muse_scibasic@SYNTH_A/exp2[1]"]
    assert [os.path.basename(p) for p in sci.calib["MASTER_BIAS"]] == ["n0_MASTER_BIAS-01.fits"]
    assert sci.raw["OBJECT"] == [str(plan.classification["OBJECT"][1].path)]
    assert sci.group == "SYNTH_A" and sci.exposures == (2,)
    # one cube per target, of its three exposures: muse_scipost of each exposure (of
    # its 2 IFUs), muse_exp_align over their images, muse_exp_combine of their pixel
    # tables with the offsets (issue 20.2)
    posts = [plan[f"muse_scipost@SYNTH_B/exp{i}"] for i in (1, 2, 3)]
    for i, post in enumerate(posts, 1):
        assert post.raw["PIXTABLE_OBJECT"] == [plan[f"muse_scibasic@SYNTH_B/exp{i}[{k}]"]
                                               for k in IFUS]
        assert post.param["astrometry"] is True and "individual" in post.param["save"]
    align = plan["muse_exp_align@SYNTH_B"]
    assert align.raw == {"IMAGE_FOV": posts}
    combine = plan["muse_exp_combine@SYNTH_B"]
    assert combine.raw == {"PIXTABLE_REDUCED": posts}
    assert combine.calib == {"OFFSET_LIST": [align]} and combine.group == "SYNTH_B"
    assert combine.output_dir == str(pathlib.Path(plan.output_dir, "muse_exp_combine",
                                                  "SYNTH_B"))
    # the sky is modelled: SKY_LINES and the LSF of each IFU (issue 20.1)
    assert posts[0].param["skymethod"] == "model"
    lsf = {s.unit: s for s in steps if s.recipe == "muse_lsf" and "SYNTH_B" in s.groups}
    assert posts[0].calib["LSF_PROFILE"] == [lsf[k] for k in IFUS]
    assert [os.path.basename(p) for p in posts[0].calib["SKY_LINES"]] == ["SKY_LINES.fits"]
    # calibrations of two nights are told apart by the start of their raw frames
    assert {s.label for s in steps if s.recipe == "muse_illum"} == {
        "muse_illum@2024-01-02T00:57:36", "muse_illum@2024-01-03T00:57:36"}
    # no raw frame a master stands in for is reduced
    raw_used = {os.path.basename(p) for s in steps for ps in s.raw.values() for p in ps
                if isinstance(p, str)}
    assert not {n for n in raw_used if fnmatch.fnmatch(n, "n0_BIAS_0*")
                or fnmatch.fnmatch(n, "n0_FLAT_*")}


def test_flux_branch_of_several_exposures_reuses_the_alignment(dataset):
    """Issue 20.2 with the flux branch: each exposure's flux-calibrated muse_scipost,
    combined with the OFFSET_LIST of the uncalibrated ones (flux calibration does
    not move a star); the group's final cube is that combination."""
    red = R.reduce(dataset, output_dir=dataset / "flux", dry_run=True, flux=True)
    for target in ("SYNTH_A", "SYNTH_B"):
        flux = [red[f"muse_scipost_flux@{target}/exp{i}"] for i in (1, 2, 3)]
        standard = flux[0].calib["STD_RESPONSE"]
        assert standard[0].recipe == "muse_standard"
        assert all(f.calib["STD_RESPONSE"] == standard for f in flux)
        combine = red[f"muse_exp_combine_flux@{target}"]
        assert combine.raw == {"PIXTABLE_REDUCED": flux}
        assert combine.calib == {"OFFSET_LIST": [red[f"muse_exp_align@{target}"]]}
    assert [s.name for s in red.steps if "align" in s.name] == ["muse_exp_align"] * 2


@pytest.fixture(scope="module")
def std_next_night(tmp_path_factory) -> pathlib.Path:
    """The data set with one standard star only, taken on night 1 in WFM-NOAO-N (the
    mode of SYNTH_A, observed on night 0); 3 IFUs, so that the flux branch runs by
    the rules' default."""
    from astropy.io import fits

    d = tmp_path_factory.mktemp("std-next-night")
    synthetic.write_dataset(d, ifus=(1, 2, 3), headers_only=True)
    (d / "raw" / "n0_STD_01.fits").unlink()
    # cut off halfway, the corrupt flat still holds CHAN01 of 3 IFUs: out of the way
    (d / "raw" / "n0_FLAT_broken.fits").unlink()
    fits.setval(d / "raw" / "n1_STD_01.fits", "HIERARCH ESO INS MODE", value="WFM-NOAO-N")
    return d


def test_a_standard_of_another_night_gets_that_nights_calibrations(std_next_night):
    """Issue 20.3: the STD is reduced with the calibrations nearest to the STD frame
    itself, not the science's. Written from the headers: n1_STD_01 is at 2024-01-03
    00:00, WFM-NOAO-N; SYNTH_A's exposures at 2024-01-02 01:12 (night 0) take night
    0's archive masters. The STD takes night 1's afternoon biases (18:00-18:04, 5.97 h
    before it; night 0's master is 30 h before), night 1's WFM-NOAO-N flats and arcs
    (nearer than night 0's masters of that mode), night 0's twilight flats (night 1's
    are of WFM-AO-N, SYNTH_B's mode; night 0's, 24.2 h before, are inside the 30-day
    window) and night 1's ILLUM flat (1 h after it). Night 1's biases and ILLUM flat
    are those of SYNTH_B too: one muse_bias per IFU and one muse_illum for both; night
    0's twilight flats are calibrated as for SYNTH_A: one muse_twilight for both."""
    red = R.reduce(std_next_night, output_dir=std_next_night / "reduced", dry_run=True)
    a, b = red.associations
    assert a.label == "SYNTH_A" and b.label == "SYNTH_B"
    for exp in a.exposures:
        assert [f.name for f in exp.frames("STD")] == ["n1_STD_01.fits"]
    # the next night (no window for the STD [OCA]): 00:00 against 01:12, a day later
    assert a.exposures[0].choices["STD"][1].dt_hours == pytest.approx(22.8, abs=1e-6)
    own = a.exposures[0].own["STD"]
    names = {tag: sorted(f.name for f in own.frames(tag, 1)) for tag in own.chosen}
    assert names == {
        "BIAS": ["n1_BIAS_01.fits", "n1_BIAS_02.fits", "n1_BIAS_03.fits"],
        "FLAT": [f"n1_FLAT_WFM-NOAO-N_0{i}.fits" for i in (1, 2, 3)],
        "ARC": [f"n1_ARC_WFM-NOAO-N_{lamp}.fits" for lamp in ("HgCd", "Ne", "Xe")],
        "SKYFLAT": [f"n0_SKYFLAT_0{i}.fits" for i in (1, 2, 3)],
        "ILLUMFLAT": ["n1_ILLUMFLAT_01.fits"]}
    assert own.choices["BIAS"][1].dt_hours == pytest.approx(-(6 - 2 / 60), abs=1e-3)
    rejected = {r.frame.name: r.reason for r in own.choices["MASTER_BIAS"][1].rejected}
    assert "the BIAS frames are nearer" in rejected["n0_MASTER_BIAS-01.fits"]
    rejected = {r.frame.name: r.reason for r in own.choices["SKYFLAT"][1].rejected}
    assert rejected["n1_SKYFLAT_01.fits"] == "mode is 'WFM-AO-N', not 'WFM-NOAO-N'"
    # the science keeps night 0's archive masters
    sci = red["muse_scibasic@SYNTH_A/exp1[1]"]
    assert [os.path.basename(p) for p in sci.calib["MASTER_BIAS"]] == ["n0_MASTER_BIAS-01.fits"]
    # the STD's muse_scibasic: night 1's steps; those SYNTH_B has too are the same steps
    for k in (1, 2, 3):
        std = red.step("muse_scibasic_std", k)
        assert std.raw["STD"] == [str(std_next_night / "raw" / "n1_STD_01.fits")]
        bias = std.calib["MASTER_BIAS"][0]
        assert bias.recipe == "muse_bias" and sorted(bias.groups) == ["SYNTH_A", "SYNTH_B"]
        assert red[f"muse_scibasic@SYNTH_B/exp1[{k}]"].calib["MASTER_BIAS"] == [bias]
        flat = std.calib["MASTER_FLAT"][0]
        assert [os.path.basename(p) for p in flat.raw["FLAT"]] == [
            f"n1_FLAT_WFM-NOAO-N_0{i}.fits" for i in (1, 2, 3)]
        assert flat.calib["MASTER_BIAS"] == [bias]
    (illum,) = std.raw["ILLUM"]
    assert sorted(illum.groups) == ["SYNTH_A", "SYNTH_B"]
    # night 0's twilight flats are calibrated with what is nearest to them (night 0's
    # archive masters, 5.8 h before): SYNTH_A's muse_twilight, not one of their own
    (twilight,) = std.calib["TWILIGHT_CUBE"]
    assert [os.path.basename(p) for p in twilight.raw["SKYFLAT"]] == [
        f"n0_SKYFLAT_0{i}.fits" for i in (1, 2, 3)]
    assert red["muse_scibasic@SYNTH_A/exp1[1]"].calib["TWILIGHT_CUBE"] == [twilight]
    assert [os.path.basename(p) for p in twilight.calib["MASTER_BIAS"]] == [
        f"n0_MASTER_BIAS-0{k}.fits" for k in (1, 2, 3)]
    # every identical call is one step: 3 muse_bias per night that reduces biases
    # (night 1; night 0's master stands in), flats of night 1 in both modes
    count = {}
    for s in red.steps:
        count[s.recipe] = count.get(s.recipe, 0) + 1
    assert count["muse_bias"] == 3 and count["muse_flat"] == 6 and count["muse_wavecal"] == 6
    assert count["muse_illum"] == count["muse_twilight"] == 2
    assert count["muse_standard"] == 1
    idents = {(s.recipe, s.unit, repr(s.raw), repr(s.calib), repr(s.param)) for s in red.steps}
    assert len(idents) == len(red.steps)
    # SYNTH_B has no standard of its mode: the report says so, and no flux branch
    assert "muse_scipost_flux@SYNTH_A/exp1" in {s.label for s in red.steps}
    assert not any(s.name.endswith("_flux") and s.group == "SYNTH_B" for s in red.steps)
    text = red.association_report()
    assert "STD: none usable for IFU(s) 1-3: 1 STD frame(s), none usable: mode is " \
           "'WFM-NOAO-N', not 'WFM-AO-N'" in text
    assert "  STD: n1_STD_01.fits (+22.8 h)\n" in text
    assert "  calibrations of the STD frames:\n    BIAS: n1_BIAS_01.fits" in text
    assert "    calibrations of the SKYFLAT frames:\n      BIAS: not reduced, the " \
           "archive MASTER_BIAS stands in" in text
    assert {r["for"] for r in a.rows()} == {None, "STD", "STD/SKYFLAT", "SKYFLAT",
                                            "LINGAIN_LAMP_ON"}


def test_the_report_says_why_the_flux_branch_did_not_run(tmp_path):
    """Issue 20.3: a STD without STD_FLUX_TABLE (muse_standard requires it [its man
    page]): the flux branch is left out, and the report says why."""
    synthetic.write_dataset(tmp_path, ifus=(1, 2, 3), headers_only=True, lingain=False)
    for name in ("static/STD_FLUX_TABLE.fits", "n0_FLAT_broken.fits"):
        (tmp_path / "raw" / name).unlink()
    red = R.reduce(tmp_path, output_dir=tmp_path / "reduced", dry_run=True)
    assert not any(s.recipe == "muse_standard" for s in red.steps)
    assert red.association_report().count(
        "note: flux calibration left out: no STD_FLUX_TABLE in the data (muse_standard "
        "needs both)") == 2  # one per target
    with pytest.raises(ValueError, match="flux=True, but no STD_FLUX_TABLE in the data"):
        R.reduce(tmp_path, output_dir=tmp_path / "reduced", dry_run=True, flux=True)


def _astrometry_wcs(path: pathlib.Path) -> pathlib.Path:
    """muse_astrometry's product as the archive delivers it: its WCS in the primary
    header, PRO CATG ASTROMETRY_WCS [MAN muse_astrometry]."""
    from astropy.io import fits

    header = fits.Header()
    for key, value in {"INSTRUME": "MUSE", "HIERARCH ESO PRO CATG": "ASTROMETRY_WCS",
                       "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 0.0,
                       "CRPIX2": 0.0, "CD1_1": -0.2 / 3600, "CD2_2": 0.2 / 3600,
                       "CD1_2": 0.0, "CD2_1": 0.0}.items():
        header[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(header=header).writeto(path)
    return path


def test_an_astrometric_solution_goes_to_the_exposures_cubes(tmp_path):
    """Issue 20.3: an ASTROMETRY_WCS among the files goes to each exposure's
    muse_scipost, whose cubes muse_exp_align and muse_exp_combine put together."""
    synthetic.write_dataset(tmp_path, ifus=IFUS, headers_only=True, lingain=False)
    wcs = _astrometry_wcs(tmp_path / "raw" / "static" / "ASTROMETRY_WCS.fits")
    red = R.reduce(tmp_path, output_dir=tmp_path / "reduced", dry_run=True)
    for target in ("SYNTH_A", "SYNTH_B"):
        for i in (1, 2, 3):
            assert red[f"muse_scipost@{target}/exp{i}"].calib["ASTROMETRY_WCS"] == [str(wcs)]


def test_one_exposure_is_calibrated_with_an_astrometric_solution_when_present(tmp_path):
    """Issue 20.3: a single exposure's cube takes the ASTROMETRY_WCS too, with
    astrometry=true ("if false, skip any astrometric calibration, even if one was
    passed" [MAN muse_scipost]); without one it keeps the linear WCS of the field
    (astrometry=false, which the tests of star positions read)."""
    from test_reduce import night

    night(tmp_path / "raw", ifus=(1, 2, 3))
    red = R.reduce(tmp_path / "raw", output_dir=tmp_path / "out", dry_run=True)
    assert red["muse_scipost"].param["astrometry"] is False
    assert "ASTROMETRY_WCS" not in red["muse_scipost"].calib
    wcs = _astrometry_wcs(tmp_path / "raw" / "ASTROMETRY_WCS.fits")
    red = R.reduce(tmp_path / "raw", output_dir=tmp_path / "out", dry_run=True)
    for name in ("muse_scipost", "muse_scipost_flux"):
        assert red[name].param["astrometry"] is True, name
        assert red[name].calib["ASTROMETRY_WCS"] == [str(wcs)], name


def test_a_single_exposure_keeps_the_plain_names(tmp_path):
    """One group, one exposure: the names and folders of before (issue 5)."""
    from test_reduce import night

    night(tmp_path)
    red = R.reduce(tmp_path, ifus="1-2", output_dir=tmp_path / "out", dry_run=True)
    assert [s.label for s in red.steps][:4] == ["muse_bias[1]", "muse_bias[2]",
                                                "muse_dark[1]", "muse_dark[2]"]
    assert red["muse_scipost"].output_dir == str(tmp_path / "out" / "muse_scipost")
    # its frames name no target (OBS TARG NAME): the group is numbered
    assert red.association.label == "1" and len(red.associations) == 1


def test_plan_returns_the_step_of_an_identical_call(tmp_path):
    plan = R.Plan(tmp_path, dates={"/a/b1.fits": 60000.5, "/a/b2.fits": 60001.5})
    plan.begin_group("G1", ["/a/sci1.fits"])
    one = plan.call("x_bias", {"BIAS": ["/a/b1.fits"]}, unit=1, param={"n": 1})
    sci1 = plan.call("x_sci", {"OBJ": ["/a/sci1.fits"]}, unit=1, calib={"B": one})
    plan.begin_group("G2", ["/a/sci2.fits"])
    assert plan.call("x_bias", {"BIAS": ["/a/b1.fits"]}, unit=1, param={"n": 1}) is one
    other = plan.call("x_bias", {"BIAS": ["/a/b2.fits"]}, unit=1, param={"n": 1})
    sci2 = plan.call("x_sci", {"OBJ": ["/a/sci2.fits"]}, unit=1, calib={"B": other})
    plan.finish()
    assert one.groups == ["G1", "G2"] and one.group is None
    assert [s.label for s in plan.steps] == [
        "x_bias@2023-02-25T12:00:00[1]", "x_sci@G1[1]", "x_bias@2023-02-26T12:00:00[1]",
        "x_sci@G2[1]"]
    assert sci1.group == "G1" and sci2.exposures == (1,)
    assert one.output_dir == str(tmp_path / "x_bias" / "2023-02-25T12:00:00" / "unit01")


@pytest.mark.requires_python_cpl  # the CLI imports cpldask.recipe
def test_dry_run_prints_the_report_and_draws_the_graph(dataset, capsys):
    from cpldask._cli import handle_args

    out = dataset / "cli-out"
    assert handle_args(["reduce", str(dataset), "--dry-run", "--output-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "group SYNTH_A: 3 exposures" in text and "group SYNTH_B: 3 exposures" in text
    assert "not n0_BIAS_2x2_01.fits, n0_BIAS_2x2_02.fits, n0_BIAS_2x2_03.fits: binx is 2" in text
    assert "the same calibrations as SYNTH_A_OBJECT_01.fits" in text
    assert "muse_exp_combine@SYNTH_B" in text and "muse_scipost@SYNTH_B/exp3" in text
    assert "sky: skymethod=model: the sky lines fitted with the LSF of each slice" in text
    graph = out / "graph.png"
    assert f"graph: {graph}" in text and graph.read_bytes()[:4] == b"\x89PNG"


def test_parameters_for_a_step_the_reduction_does_not_make_are_refused(dataset):
    """A misspelt step (or one of a branch the data leave out) would silently get
    nothing: build_graph names the reduction's steps instead."""
    red = R.reduce(dataset, output_dir=dataset / "p", dry_run=True,
                   params={"muse_scipost": {"skymethod": "simple"}})
    assert {s.param["skymethod"] for s in red.steps if s.name == "muse_scipost"} == \
        {"simple"}
    assert all(s.param["save"] == "cube,individual" for s in red.steps
               if s.name == "muse_scipost")  # the rules' other parameters stay
    with pytest.raises(ValueError, match=r"parameters for 'muse_scipots': no such step in "
                       r"this reduction; its steps: muse_bias, muse_exp_align, .*muse_scipost,"):
        R.reduce(dataset, output_dir=dataset / "p", dry_run=True,
                 params={"muse_scipots": {"skymethod": "simple"}})


@pytest.mark.requires_python_cpl
def test_step_params_of_the_command_line():
    from cpldask._cli._inputs import UsageError
    from cpldask._cli._reduce import step_params

    assert step_params(["muse_scipost.skymethod=simple", "muse_scipost.crsigma=10",
                        "muse_bias.combine=median"]) == {
        "muse_scipost": {"skymethod": "simple", "crsigma": "10"},
        "muse_bias": {"combine": "median"}}
    for bad in ("skymethod=simple", ".skymethod=simple", "muse_scipost.=x",
                "muse_scipost.skymethod"):
        with pytest.raises(UsageError, match="expects"):
            step_params([bad])


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_a_bad_parameter_stops_the_reduction_before_anything_is_submitted(dataset,
                                                                            capsys):
    """``cpldask reduce --param``: a misspelt parameter or a bad value is an error
    naming the step and the valid names, in a dry run as in a real one (which submits
    nothing then), and ``--no-flux`` leaves the flux branch out."""
    from cpldask._cli import handle_args

    out = dataset / "cli-params"
    base = ["reduce", str(dataset), "--dry-run", "--output-dir", str(out)]
    assert handle_args([*base, "--param", "muse_scipost.skymethd=simple"]) == 2
    err = capsys.readouterr().err
    assert "muse_scipost@SYNTH_A/exp1: muse_scipost has no parameter 'skymethd'. Did you " \
           "mean skymethod?" in " ".join(err.split())
    assert handle_args([*base, "--param", "muse_scipost.crsigma=many"]) == 2
    assert "'many' is not a valid value for parameter 'crsigma'" in \
        " ".join(capsys.readouterr().err.split())
    red = R.reduce(dataset, output_dir=out, dry_run=True,
                   params={"muse_scipost": {"crsigma": "many"}})
    with pytest.raises(ValueError, match="crsigma"):
        red.submit()
    assert red.submitted_at is None and all(s.result is None for s in red.steps)
    assert handle_args([*base, "--param", "muse_scipost.skymethod=simple", "--no-flux"]) == 0
    text = capsys.readouterr().out
    assert "muse_standard" not in text and "muse_scipost@SYNTH_A/exp1" in text


# ---------------------------------------------------------------------------------
# The same data set with pixels, reduced for real, interrupted and run again
# ---------------------------------------------------------------------------------
#: what night 0's archive masters are made of: (recipe, raw set, calibrations)
ARCHIVE_CALLS = (("muse_bias", "n0_BIAS_0", {}),
                 ("muse_flat", "n0_FLAT_WFM-NOAO-N_", {"MASTER_BIAS": "muse_bias"}),
                 ("muse_wavecal", "n0_ARC_WFM-NOAO-N_", {"MASTER_BIAS": "muse_bias",
                                                         "TRACE_TABLE": "muse_flat"}))


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory, recipe_path) -> pathlib.Path:
    """Night 0 of the data set with pixels for IFU 1 (muse_twilight needs it), without
    the LINGAIN series (muse_lingain takes 2.2 GB for one IFU); night 0's archive
    masters are the products of the real recipes on its raw sets, made here first.
    One night, not two: the real reduction then has 11 calls instead of 25; the
    second night's association and the masters shared by both targets are checked on
    the header-only data set above."""
    import cpldask

    d = tmp_path_factory.mktemp("real-dataset")
    files = synthetic.write_dataset(d, ifus=(1,), lingain=False, processes=2, nights=(0,))
    made = tmp_path_factory.mktemp("archive-made")
    results = {}
    for recipe, prefix, calib in ARCHIVE_CALLS:
        raw = sorted(str(p) for name, p in files.items() if name.startswith(prefix))
        calib = {tag: results[step] for tag, step in calib.items()}
        if recipe == "muse_wavecal":
            calib["LINE_CATALOG"] = str(files["LINE_CATALOG.fits"])
        results[recipe] = cpldask.Recipe(recipe)(raw, param={"nifu": 1}, calib=calib,
                                                 output_dir=str(made / recipe), cache=False)
    for catg in synthetic.DATASET_MASTERS:
        recipe = {"MASTER_BIAS": "muse_bias", "WAVECAL_TABLE": "muse_wavecal"}.get(catg,
                                                                                "muse_flat")
        synthetic.install_master(d / "archive" / synthetic.master_name(catg, 1),
                                 results[recipe].paths[catg][0], pro_catg=catg, raw=None,
                                 ifu=1)
    return d


def _reduce_command(data: pathlib.Path, out: pathlib.Path, cache: pathlib.Path, work: pathlib.Path):
    """``cpldask reduce DATA`` in a process of its own (its own embedded cluster, as a
    user runs it), with the product cache on in ``cache``."""
    import subprocess
    import sys

    import cpldask

    root = str(pathlib.Path(cpldask.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           "DASK_CPLDASK__CACHE__ENABLED": "True", "DASK_CPLDASK__CACHE__DIR": str(cache),
           "DASK_CPLDASK__WORK_DIR": str(work), "DASK_CPLDASK__RECIPE_PATH": os.pathsep.join(cpldask.Recipe.path),
           "DASK_CPLDASK__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0", "COLUMNS": "200"}
    # the console script's main() of this checkout
    script = "import sys; from cpldask._cli import main; sys.argv[0] = 'cpldask'; main()"
    return subprocess.Popen([sys.executable, "-c", script, "reduce", str(data),
                             "--output-dir", str(out)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _state(step) -> list | None:
    """The record and products (path, inode, mtime) of a step's finished call, or None."""
    from cpldask import provenance

    found = provenance.installed(step.output_dir)
    if not found:
        return None
    assert len(found) == 1, (step.label, found)  # a step is made once: one record
    rec = found[0]
    return [rec["run"]["start"]] + [(p, os.stat(p).st_ino, os.stat(p).st_mtime_ns)
                                    for _, p in rec["products"]]


@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
# the data (~1 min), night 0's masters (~1 min) and 11 recipe calls (7 before the
# exposures were combined, issue 20): more than 8 min at a load of 7 on 2 cores
@pytest.mark.timeout(3600)
def test_an_interrupted_reduction_goes_on_where_it_stopped(real_dataset, tmp_path):
    """Issue 19.4 and 19.5: ``cpldask reduce`` is interrupted (SIGINT, as Ctrl-C) once
    a few steps have finished, and run again with a product cache that has none of it
    (pruned, or on another node's disk): the steps finished before are served from
    their output folders (their products and records checked), not run again; the
    others run; every master calibration is made exactly once over both runs."""
    import signal
    import subprocess
    import time

    out = tmp_path / "reduced"
    plan = R.reduce(real_dataset, output_dir=out, dry_run=True)
    # night 0's archive masters stand in for muse_bias, muse_flat and muse_wavecal
    assert sorted(s.recipe for s in plan.steps) == sorted(
        ["muse_lsf", "muse_illum", "muse_twilight", "muse_exp_align", "muse_exp_combine"]
        + ["muse_scibasic", "muse_scipost"] * 3)
    assert plan.reused() == {}
    # the first run, interrupted once 3 steps have their products
    proc = _reduce_command(real_dataset, out, tmp_path / "cache-1", tmp_path / "work")
    deadline = time.monotonic() + 1800
    while sum(_state(s) is not None for s in plan.steps) < 3:
        assert time.monotonic() < deadline, "3 steps not finished in 30 min"
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        assert proc.returncode is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130 and "interrupted" in err, err
    before = {s.label: _state(s) for s in plan.steps}
    finished = {label for label, state in before.items() if state is not None}
    assert 3 <= len(finished) < len(plan.steps), finished
    # the dry run says what is left: the forecast matches the records
    assert set(R.reduce(real_dataset, output_dir=out, dry_run=True).reused()) == finished
    # the same command again, with an empty cache
    proc = _reduce_command(real_dataset, out, tmp_path / "cache-2", tmp_path / "work")
    stdout, err = proc.communicate(timeout=3600)
    assert proc.returncode == 0, (stdout[-3000:], err[-3000:])
    after = {s.label: _state(s) for s in plan.steps}
    for label, state in after.items():
        assert state is not None, label
        if label in finished:  # not run again: the same record, the same files
            assert state == before[label], label
        else:  # run in the second run, once
            assert state[0] > max(b[0] for b in before.values() if b), label
    # no step left a second copy of its products (MASTER_BIAS-01-1.fits ...)
    for step in plan.steps:
        on_disk = {p.name for p in pathlib.Path(step.output_dir).glob("*.fits")}
        assert on_disk == {os.path.basename(p) for p, _, _ in after[step.label][1:]}, step.label
    assert f"DATACUBE_FINAL: {out / 'muse_exp_combine'}" in stdout, stdout[-2000:]
    # issue 20.4: when it finished it looked at each target (sources, spectra, QC)
    targets = [a.label for a in plan.associations]
    assert stdout.count("look at ") == len(targets), stdout[-2000:]
    for folder in (out / "look").iterdir():
        assert {p.name for p in folder.iterdir()} >= {"white_light.png", "spectrum.png",
                                                     "sources.csv", "qc.txt"}, folder
    assert len(list((out / "look").iterdir())) == len(targets)
