"""Classification rules on hand-written headers: the fast tier, no CPL.

Rules are data (cpldask/rules/<instrument>.yaml, or a mapping): these tests write
their own small rule sets and primary headers, so they pin the rule language itself —
first matching rule wins, tags taken from header values, lists of accepted values,
lamps, dates — whatever instrument uses it. MUSE's own rules on MUSE-like files are
tested in test_reduce.py.
"""

from __future__ import annotations

import pathlib

import pytest
import yaml
from astropy.io import fits
from astropy.time import Time

from cpldask import workflow as R

RULES = {
    "instrument": "TOY",
    "identify": {"INSTRUME": ["TOY", "TOY2"]},  # either name: the same instrument
    # catg/type/tech/pro_catg are the short names cpldask.workflow.classify reads to tell a product
    # ("a pipeline product") from a frame no rule takes
    "keywords": {"catg": "ESO DPR CATG", "type": "ESO DPR TYPE",
                 "pro_catg": "ESO PRO CATG"},
    "lamps": {"count": "ESO INS LAMPNUM", "state": "ESO INS LAMP{i} ST",
              "name": "ESO INS LAMP{i} NAME"},
    "classification": [
        {"tag": "{pro_catg}", "when": {"pro_catg": ["LINE_TABLE", "MASK"]}},
        {"tag": "FLAT", "when": {"catg": "CALIB", "type": ["FLAT", "FLAT,LAMP"]}},
        {"tag": "ANY_CALIB", "when": {"catg": "CALIB"}},
    ],
}


def header_file(path: pathlib.Path, cards: dict) -> str:
    """A primary-header-only FITS file with ``cards`` (ESO keywords as HIERARCH)."""
    h = fits.Header()
    for name, value in cards.items():
        h[f"HIERARCH {name}" if name.startswith("ESO ") else name] = value
    fits.PrimaryHDU(header=h).writeto(path)
    return str(path)


def tags(classification) -> dict[str, str]:
    return {pathlib.Path(f.path).name: f.tag for f in classification.frames}


def test_the_first_rule_that_holds_gives_the_tag(tmp_path):
    calib = {"INSTRUME": "TOY", "ESO DPR CATG": "CALIB"}
    files = [
        # rule 1 holds, and rule 3 would too: the first wins; the tag is the header's
        header_file(tmp_path / "table.fits", {**calib, "ESO PRO CATG": "LINE_TABLE"}),
        header_file(tmp_path / "flat.fits", {**calib, "INSTRUME": "TOY2",
                                             "ESO DPR TYPE": "FLAT,LAMP"}),
        # blanks around a value do not count
        header_file(tmp_path / "bias.fits", {**calib, "ESO DPR CATG": "  CALIB  ",
                                             "ESO DPR TYPE": "BIAS"}),
        header_file(tmp_path / "science.fits", {"INSTRUME": "TOY",
                                                "ESO DPR CATG": "SCIENCE"}),
        header_file(tmp_path / "product.fits", {"INSTRUME": "TOY",
                                                "ESO PRO CATG": "MASTER_FLAT"}),
    ]
    c = R.classify(files, rules=RULES)
    assert tags(c) == {"table.fits": "LINE_TABLE", "flat.fits": "FLAT",
                       "bias.fits": "ANY_CALIB"}
    reasons = {pathlib.Path(u.path).name: u.reason for u in c.unclassified}
    assert "no classification rule matches (catg='SCIENCE')" in reasons["science.fits"]
    assert "pipeline product (PRO CATG 'MASTER_FLAT')" in reasons["product.fits"]


def test_lamps_that_were_on_and_the_date_of_a_frame(tmp_path):
    lamps = {"ESO INS LAMPNUM": 3,
             "ESO INS LAMP1 ST": True, "ESO INS LAMP1 NAME": "CU-LAMP1",
             "ESO INS LAMP2 ST": False, "ESO INS LAMP2 NAME": "CU-LAMP2",
             "ESO INS LAMP3 ST": True, "ESO INS LAMP3 NAME": "CU-LAMP3 "}
    flat = {"INSTRUME": "TOY", "ESO DPR CATG": "CALIB", "ESO DPR TYPE": "FLAT"}
    path = header_file(tmp_path / "flat.fits",
                       {**flat, **lamps, "DATE-OBS": "2024-01-01T12:00:00.000"})
    (frame,) = R.classify([path], rules=RULES).frames
    assert frame.meta["lamps"] == ["CU-LAMP1", "CU-LAMP3"]
    # without MJD-OBS the date comes from DATE-OBS (UTC), as astropy converts it
    assert frame.mjd == pytest.approx(Time("2024-01-01T12:00:00", scale="utc").mjd)
    assert frame.mjd == pytest.approx(60310.5)
    both = header_file(tmp_path / "both.fits", {**flat, "MJD-OBS": 60000.25,
                                                "DATE-OBS": "2024-01-01T12:00:00.000"})
    assert R.classify([both], rules=RULES).frames[0].mjd == 60000.25  # MJD-OBS wins


def test_files_of_other_instruments_are_listed_with_the_reason(tmp_path):
    other = header_file(tmp_path / "other.fits", {"INSTRUME": "UVES", "ESO DPR CATG": "CALIB"})
    none = header_file(tmp_path / "none.fits", {"ESO DPR CATG": "CALIB"})
    c = R.classify([other, none], rules=RULES)
    assert not c.frames
    reasons = sorted(u.reason for u in c.unclassified)
    assert reasons[0].startswith("INSTRUME is 'UVES': not a TOY file")
    assert reasons[1] == "no INSTRUME keyword: not recognisable as a TOY file"


def test_a_rules_file_without_a_needed_section_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"instrument": "TOY"}))
    with pytest.raises(ValueError, match=r"rules .*broken.yaml: missing section\(s\) "
                                         r"classification"):
        R.load_rules(path)
    good = tmp_path / "toy.yaml"
    good.write_text(yaml.safe_dump(RULES))
    assert R.load_rules(good).source == str(good)
    assert R.load_rules(good).classification == RULES["classification"]
