"""The worker's own FITS header reader (cpldask/_fitsheader.py) against astropy, which
reads the same files: the fast tier, no CPL.

Workers describe every product from its headers alone (RunRecord: PRO CATG, DATAMD5,
QC values, the shape of each HDU). The reader follows the FITS standard 4.0 (2880-byte
blocks of 80-character cards; HIERARCH as ESO writes it; data size per section 4.4.1)
and hands anything else to astropy.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from cpldask import _fitsheader


def _product(path):
    """A product as CPL recipes write them: ESO keywords, QC values, several HDUs of
    sizes that are not multiples of a FITS block."""
    primary = fits.PrimaryHDU()
    h = primary.header
    h["HIERARCH ESO PRO CATG"] = "MASTER_BIAS"
    h["HIERARCH ESO PRO REC1 ID"] = "muse_bias"
    h["DATAMD5"] = "0123456789abcdef0123456789abcdef"
    h["HIERARCH ESO QC BIAS MASTER1 MEDIAN"] = (1001.5, "[adu] median")
    h["HIERARCH ESO QC BIAS MASTER1 NBADPIX"] = 17
    h["HIERARCH ESO QC CHECK OK"] = True
    h["HIERARCH ESO QC CHECK FAILED"] = False
    h["HIERARCH ESO QC RON"] = -2.5e-3
    h["OBJECT"] = "it's a bias"  # a quote inside: written as ''
    h["ORIGIN"] = "ESO-PARANAL    "  # trailing blanks are not significant
    h["COMMENT"] = "left out by both readers"
    image = fits.ImageHDU(np.zeros((3, 5, 7), np.float32), name="DATA")
    table = fits.BinTableHDU.from_columns(
        [fits.Column("x", "E", array=np.arange(11)), fits.Column("name", "8A")],
        name="TABLE")
    dq = fits.ImageHDU(np.zeros((13, 3), np.int32), name="DQ")
    fits.HDUList([primary, image, table, dq]).writeto(path)
    return path


def test_headers_read_as_astropy_reads_them(tmp_path):
    path = _product(tmp_path / "MASTER_BIAS.fits")
    ours = _fitsheader.headers(str(path))
    with fits.open(path) as hdul:
        theirs = [{k: v for k, v in hdu.header.items() if k not in ("COMMENT", "HISTORY", "")}
                  for hdu in hdul]
    assert ours == theirs
    assert ours[0]["OBJECT"] == "it's a bias" and ours[0]["ESO QC CHECK OK"] is True
    assert [h.get("EXTNAME") for h in ours] == [None, "DATA", "TABLE", "DQ"]


def test_summary_keeps_the_catalogue_values_and_hdu_shapes(tmp_path):
    path = _product(tmp_path / "MASTER_BIAS.fits")
    kept, hdus = _fitsheader.summary(str(path))
    assert kept == {"ESO PRO CATG": "MASTER_BIAS", "ESO PRO REC1 ID": "muse_bias",
                    "DATAMD5": "0123456789abcdef0123456789abcdef",
                    "ESO QC BIAS MASTER1 MEDIAN": 1001.5,
                    "ESO QC BIAS MASTER1 NBADPIX": 17, "ESO QC CHECK OK": True,
                    "ESO QC CHECK FAILED": False, "ESO QC RON": -2.5e-3}
    with fits.open(path) as hdul:  # shapes in numpy's order, as astropy gives them
        assert hdul["DATA"].data.shape == (3, 5, 7) and hdul["DQ"].data.shape == (13, 3)
    assert hdus == (("DATA", (3, 5, 7), "float32"), ("TABLE", (11,), "table, 2 columns"),
                    ("DQ", (13, 3), "int32"))


def test_a_tile_compressed_image_shows_its_image_shape(tmp_path):
    path = tmp_path / "compressed.fits"
    fits.HDUList([fits.PrimaryHDU(),
                  fits.CompImageHDU(np.ones((20, 30), np.int16), name="DATA")]).writeto(path)
    _, hdus = _fitsheader.summary(str(path))
    assert hdus == (("DATA", (20, 30), "int16"),)


def test_what_the_reader_does_not_handle_goes_to_astropy(tmp_path):
    # a string longer than one card: astropy writes CONTINUE cards (FITS 4.0, 4.2.1.2)
    path = tmp_path / "long.fits"
    h = fits.Header()
    h["HIERARCH ESO PRO CATG"] = "PIXTABLE_OBJECT"
    h["HIERARCH ESO QC NSTARS"] = 3
    h["OBJECT"] = "a target name that does not fit on one card " * 3
    fits.PrimaryHDU(np.zeros((2, 2), np.float32), header=h).writeto(path)
    with pytest.raises(_fitsheader.Unsupported, match="CONTINUE"):
        _fitsheader.headers(str(path))
    kept, hdus = _fitsheader.summary(str(path))  # through astropy
    assert kept == {"ESO PRO CATG": "PIXTABLE_OBJECT", "ESO QC NSTARS": 3,
                    "NAXIS1": 2, "NAXIS2": 2}
    assert hdus == (("PRIMARY", (2, 2), "float32"),)

    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(_fitsheader.Unsupported, match="truncated"):
        _fitsheader.headers(str(truncated))
    assert _fitsheader.summary(str(tmp_path / "missing.fits")) == ({}, ())
