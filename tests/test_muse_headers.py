"""Issue 19, part 1: the MUSE rules give raw frames the tags ESO's documents give them.

Every frame here is written by hand from ESO's documentation of MUSE raw data (the
table of values and their sources is in docs/reduce.md, "Raw MUSE frames"), not with
cpldask.instruments.muse.synthetic; the generator's frames must then get the same tags. Only headers
are written and read: no CPL, no recipe (the fast tier: no ``requires_cpl`` marker).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from astropy.io import fits

from cpldask import workflow as R
from cpldask.instruments.muse import synthetic


#: Raw frame -> (DPR CATG, DPR TYPE, TPL ID, tag the recipes take it under).
#: CATG/TYPE and templates: recipes/muse_raw_frames.xml (cpl-plugin-muse 2.8.7) and
#: ESO's MUSE calibration page (pipe_calib.html); ARC_LSF and the lamp-on LINGAIN
#: type only from ESO's data organiser rules (calib/gasgano/config/muse.oca), which
#: give DPR TYPE as "holds FLAT, DETCHAR and LINEARITY" - hence two orders below.
#: None: no document names the template, so the frame has no TPL ID.
DOCUMENTED = {
    "bias": ("CALIB", "BIAS", "MUSE_cal_bias", "BIAS"),
    "dark": ("CALIB", "DARK", "MUSE_cal_dark", "DARK"),
    "flat": ("CALIB", "FLAT,LAMP", "MUSE_wfm_cal_specflat", "FLAT"),
    "flat-nfm": ("CALIB", "FLAT,LAMP", "MUSE_nfm_cal_specflat", "FLAT"),
    "flat-attached": ("CALIB", "FLAT,LAMP", "MUSE_wfm_cal_specflatatt", "FLAT"),
    "illum": ("CALIB", "FLAT,LAMP,ILLUM", "MUSE_wfm_cal_illum", "ILLUMFLAT"),
    "illum-nfm": ("CALIB", "FLAT,LAMP,ILLUM", "MUSE_nfm_cal_illum", "ILLUMFLAT"),
    "twilight": ("CALIB", "FLAT,SKY", "MUSE_wfm_cal_twilight", "SKYFLAT"),
    "arc": ("CALIB", "WAVE", "MUSE_wfm_cal_wave", "ARC"),
    "arc-attached": ("CALIB", "WAVE", "MUSE_wfm_cal_waveatt", "ARC"),
    "arc-lsf": ("CALIB", "WAVE,LSF", None, "ARC_LSF"),
    "pinhole-mask": ("CALIB", "WAVE,MASK", "MUSE_wfm_cal_geometry", "MASK"),
    "lingain-off": ("CALIB", "BIAS,DETCHECK", None, "LINGAIN_LAMP_OFF"),
    "lingain-on": ("CALIB", "FLAT,LINEARITY,DETCHAR", None, "LINGAIN_LAMP_ON"),
    "lingain-on-2": ("CALIB", "FLAT,LAMP,DETCHAR,LINEARITY", None, "LINGAIN_LAMP_ON"),
    "std": ("CALIB", "STD", "MUSE_wfm_cal_std", "STD"),
    "std-telluric": ("CALIB", "STD,TELLU", "MUSE_nfm_cal_std", "STD"),
    "astrometry": ("CALIB", "ASTROMETRY", "MUSE_wfm_cal_astrom", "ASTROMETRY"),
    "object": ("SCIENCE", "OBJECT", "MUSE_wfm-noao_obs_offset", "OBJECT"),
    "object-stare": ("SCIENCE", "OBJECT", "MUSE_nfm_obs_stare", "OBJECT"),
    "sky": ("SCIENCE", "SKY", "MUSE_wfm-noao_obs_offset", "SKY"),
    "sky-calib": ("CALIB", "SKY", "MUSE_nfm_obs_offset", "SKY"),
    "efficiency": ("TECHNICAL", "FLAT,LAMP,THRUPUT", "MUSE_wfm_tec_efficiency", "AMPL"),
}

#: ESO INS MODE values (muse_pfits_get_mode in muse/muse_pfits.c; reflex/muse_wkf.oca)
MODES = ("WFM-NOAO-N", "WFM-NOAO-E", "WFM-AO-N", "WFM-AO-E", "NFM-AO-N")

#: Arc lamps by number: "Ne: INS.SHUT3.ST=T, Xe: INS.SHUT4.ST=T, HgCd: INS.SHUT5.ST=T"
#: (pipe_calib.html); the pipeline cuts "CU-LAMP-" from lamp names (muse_utils.c).
ARC_LAMPS = {3: "CU-LAMP-Ne", 4: "CU-LAMP-Xe", 5: "CU-LAMP-HgCd"}


def raw_frame(path, catg, dpr_type, *, template=None, tech="IFU", mode="WFM-NOAO-N",
              mjd=60000.0, lamps=(), shutters=None, names=None, ifus=(1,)):
    """A raw MUSE frame's headers, written by hand: the primary keywords that
    recipes/muse_raw_frames.xml lists for every raw frame, the DPR and lamp
    keywords, and a 1x1 image extension CHANnn per IFU."""
    date = f"2023-01-01T{int(mjd % 1 * 24):02d}:00:00.000"
    cards = {
        "INSTRUME": "MUSE", "DATE-OBS": date, "MJD-OBS": mjd, "LST": 3600.0,
        "EXPTIME": 10.0, "OBSERVER": "UNKNOWN", "PI-COI": "UNKNOWN", "OBJECT": "x",
        "ESO OBS PROG ID": "60.A-9100(A)", "ESO OBS TARG NAME": "x", "ESO OBS NAME": "x",
        "ESO OBS ID": 200000000, "ESO OBS START": date,
        "ESO DPR CATG": catg, "ESO DPR TYPE": dpr_type, "ESO DPR TECH": tech,
        "ESO INS MODE": mode, "ESO INS DROT POSANG": 0.0, "ESO INS TEMP11 VAL": 12.0,
        "ESO DET READ CURID": 1, "ESO DET READ CURNAME": "SCI1.0",
        "ESO DET BINX": 1, "ESO DET BINY": 1,
        "ESO TPL START": date, "ESO TPL NEXP": 1, "ESO TPL EXPNO": 1,
        "ESO INS LAMPNUM": 6,
    }
    if template:
        cards["ESO TPL ID"] = template
    shutters = lamps if shutters is None else shutters
    for i in range(1, 7):
        cards[f"ESO INS LAMP{i} NAME"] = (names or ARC_LAMPS).get(i, f"CU-LAMP{i}")
        cards[f"ESO INS LAMP{i} ST"] = i in lamps
        cards[f"ESO INS SHUT{i} ST"] = i in shutters
    header = fits.Header()
    for key, value in cards.items():
        header[f"HIERARCH {key}" if key.startswith("ESO ") else key] = value
    hdus = [fits.PrimaryHDU(header=header)]
    hdus += [fits.ImageHDU(np.zeros((1, 1), np.uint16), name=f"CHAN{k:02d}") for k in ifus]
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path)
    return str(path)


def static_table(path, pro_catg):
    """A static calibration as ESO ships them: known by its PRO CATG (muse.oca)."""
    header = fits.Header()
    header["INSTRUME"] = "MUSE"
    header["HIERARCH ESO PRO CATG"] = pro_catg
    table = fits.BinTableHDU.from_columns([fits.Column("lambda", "D", array=[5000.0])])
    fits.HDUList([fits.PrimaryHDU(header=header), table]).writeto(path)
    return str(path)


def only(classification):
    (frame,) = classification.frames
    return frame


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_documented_raw_type_gets_its_tag(tmp_path, name):
    catg, dpr_type, template, tag = DOCUMENTED[name]
    path = raw_frame(tmp_path / f"{name}.fits", catg, dpr_type, template=template,
                     ifus=(1, 24))
    c = R.classify(path)
    assert not c.unclassified, c.unclassified
    frame = only(c)
    assert frame.tag == tag
    assert frame.meta["tech"] == "IFU" and frame.units == (1, 24)


def test_arcs_are_told_apart_by_their_lamp_and_shutter(tmp_path):
    files = {lamp: raw_frame(tmp_path / f"arc{lamp}.fits", "CALIB", "WAVE", lamps=(lamp,),
                             template="MUSE_wfm_cal_wave")
             for lamp in (3, 4, 5)}
    lamps = {f.path: f.meta["lamps"] for f in R.classify(tmp_path).frames}
    assert [lamps[files[n]] for n in (3, 4, 5)] == [["Ne"], ["Xe"], ["HgCd"]]
    # the pipeline counts a lamp whose shutter is closed as off (muse_utils.c)
    shut = raw_frame(tmp_path / "shut" / "arc.fits", "CALIB", "WAVE", lamps=(3,), shutters=())
    assert only(R.classify(shut)).meta["lamps"] == []
    # lamp names of the kind "CU-LAMP3" (which the pipeline maps for AIT data) work too
    ait = raw_frame(tmp_path / "ait" / "arc.fits", "CALIB", "WAVE", lamps=(5,),
                    names={i: f"CU-LAMP{i}" for i in range(1, 7)})
    assert only(R.classify(ait)).meta["lamps"] == ["HgCd"]


@pytest.mark.parametrize("mode", MODES)
def test_every_instrument_mode(tmp_path, mode):
    frame = only(R.classify(raw_frame(tmp_path / "o.fits", "SCIENCE", "OBJECT", mode=mode)))
    assert frame.tag == "OBJECT"
    assert frame.meta["mode"] == mode and frame.meta["field"] == mode[:3]


def test_frames_not_documented_as_muse_raw_data_are_left_out_with_the_reason(tmp_path):
    # DPR TECH IMAGE: what cpldask's generator once wrote, never a real MUSE frame
    image = raw_frame(tmp_path / "bias_image.fits", "CALIB", "BIAS", tech="IMAGE")
    acquisition = raw_frame(tmp_path / "acq.fits", "ACQUISITION", "OBJECT")
    reasons = {pathlib.Path(u.path).name: u.reason for u in R.classify(tmp_path).unclassified}
    assert "tech='IMAGE'" in reasons["bias_image.fits"]
    assert "catg='ACQUISITION'" in reasons["acq.fits"]
    assert len(reasons) == 2, (image, acquisition)


def test_illum_flat_of_the_nominal_mode_goes_with_an_extended_mode_exposure(tmp_path):
    # "These attached flats are single exposures always taken in Nominal mode (not
    # extended)" (muse_raw_frames.xml): an ILLUM of another mode is the right one
    mode = "WFM-NOAO-E"
    for i in range(3):
        raw_frame(tmp_path / f"bias{i}.fits", "CALIB", "BIAS", mjd=60000.0 + i / 1440)
    raw_frame(tmp_path / "flat.fits", "CALIB", "FLAT,LAMP", mode=mode, mjd=60000.1)
    raw_frame(tmp_path / "arc.fits", "CALIB", "WAVE", mode=mode, mjd=60000.12, lamps=(3,))
    illum = raw_frame(tmp_path / "illum.fits", "CALIB", "FLAT,LAMP,ILLUM", mjd=60000.49,
                      template="MUSE_wfm_cal_illum")
    raw_frame(tmp_path / "illum_nfm.fits", "CALIB", "FLAT,LAMP,ILLUM", mode="NFM-AO-N",
              mjd=60000.495, template="MUSE_nfm_cal_illum")
    raw_frame(tmp_path / "object.fits", "SCIENCE", "OBJECT", mode=mode, mjd=60000.5)
    static_table(tmp_path / "line_catalog.fits", "LINE_CATALOG")
    static_table(tmp_path / "geometry_table.fits", "GEOMETRY_TABLE")
    a = R.associate(R.classify(tmp_path), (1,))
    # the nearer NFM illumination flat is of the wrong field
    assert a.paths("ILLUMFLAT") == [illum]


@pytest.mark.parametrize("kind", sorted(synthetic.KINDS))
def test_generator_frames_get_the_documented_values_and_tags(tmp_path, kind):
    header = synthetic.primary_header(kind, options={"lamp": "Ne"})
    fits.HDUList([fits.PrimaryHDU(header=header),
                  fits.ImageHDU(np.zeros((1, 1), np.uint16), name="CHAN01")]
                 ).writeto(tmp_path / "f.fits")
    frame = only(R.classify(tmp_path / "f.fits"))
    assert frame.tag == kind
    documented = {(catg, typ) for catg, typ, _, tag in DOCUMENTED.values() if tag == kind}
    assert (header["ESO DPR CATG"], header["ESO DPR TYPE"]) in documented
    assert header["ESO DPR TECH"] == "IFU" and header["ESO INS MODE"] in MODES
    templates = {tpl for _, _, tpl, tag in DOCUMENTED.values() if tag == kind and tpl}
    if templates:  # a template no document names is not checked
        assert header["ESO TPL ID"] in templates
    if kind == "ARC":
        assert frame.meta["lamps"] == ["Ne"]


def test_written_generator_frame_carries_the_header_it_describes(tmp_path):
    path = synthetic.write_raw(tmp_path / "BIAS.fits", "BIAS", ifus=(2,), compress=False,
                               mjd=60001.25)
    frame = only(R.classify(path))
    assert frame.tag == "BIAS" and frame.units == (2,) and frame.mjd == 60001.25
    written = fits.getheader(path)
    described = synthetic.primary_header("BIAS", mjd=60001.25)
    assert {k: written[k] for k in described} == dict(described)
