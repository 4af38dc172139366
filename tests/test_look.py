"""Issue 20.4: the look at a target (cpldask.look) on a cube made here with numpy and
astropy, whose sources, sky and WCS are known. No CPL: a fast test. The looks at real
cubes of real recipes are in tests/test_reduce.py (the demo's) and tests/test_cubes.py
(the dithered star field's)."""

from __future__ import annotations

import csv

import numpy as np
from astropy.io import fits

from cpldask import look, report

#: (x, y) 1-based pixel, total flux [per plane]: three point sources, between pixels
SOURCES = ((20.3, 14.6, 900.0), (47.8, 30.2, 2500.0), (70.5, 9.4, 1500.0))
FWHM = 4.0  # pixels, MUSE's 0.8" seeing in 0.2" pixels
SKY_LINE = 5577.338  # [OI], the night sky's strongest line in MUSE's range
NOISE = 1.0


def _cube(path, *, nz=200, shape=(40, 90), seed=3):
    """A cube of ``nz`` planes from 5500 A, 1.25 A per plane (MUSE's sampling): a
    sky continuum with one sky line everywhere, the three sources with a flat
    spectrum, Gaussian noise. Written as muse_scipost writes it: an empty primary
    HDU, the cube in extension DATA with the wavelength WCS on axis 3."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[1:ny + 1, 1:nx + 1]
    sigma = FWHM / 2.3548
    image = np.zeros(shape)
    for x, y, flux in SOURCES:
        image += flux / (2 * np.pi * sigma ** 2) * np.exp(
            -((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    wave = 5500.0 + np.arange(nz) * 1.25
    sky = 5.0 + 200.0 * np.exp(-0.5 * ((wave - SKY_LINE) / 1.1) ** 2)
    cube = image[None] + sky[:, None, None] + rng.normal(0, NOISE, (nz, ny, nx))
    header = fits.Header({"CTYPE3": "AWAV", "CUNIT3": "Angstrom", "CRPIX3": 1.0,
                          "CRVAL3": 5500.0, "CD3_3": 1.25, "BUNIT": "count"})
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube.astype(np.float32), header,
                                                   name="DATA")]).writeto(path)
    return wave, sky


def test_three_sources_found_where_they_are_ranked_by_flux_and_nothing_else(tmp_path):
    wave, sky = _cube(tmp_path / "DATACUBE_FINAL.fits")
    qc = look.qc_rows([("muse_bias[1]", "muse_bias", 1,
                        [("MASTER_BIAS", {"ESO QC BIAS MASTER1 RON": 2.41,
                                          "ESO PRO CATG": "MASTER_BIAS"})]),
                       ("muse_scipost", "muse_scipost", None, [("DATACUBE_FINAL", {})])])
    seen = look.look(tmp_path / "DATACUBE_FINAL.fits", tmp_path / "look", target="T", qc=qc)
    truth = sorted(SOURCES, key=lambda s: -s[2])
    assert [s.rank for s in seen.sources] == [1, 2, 3]  # nothing else above 5 sigma
    for s, (x, y, flux) in zip(seen.sources, truth):
        assert abs(s.x - x) < 0.2 and abs(s.y - y) < 0.2, (s, (x, y))
        # a circle of 3 pixels holds 1 - 2^-(2 r / FWHM)^2 = 79 % of a Gaussian's light
        assert abs(s.flux / (0.79 * flux) - 1) < 0.05, (s, flux)
    # the files, and what they say
    assert set(seen.paths) == {"white_light", "spectrum", "sources", "qc"}
    for name in ("white_light", "spectrum"):
        assert seen.paths[name].read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(seen.paths["sources"])))
    assert [float(r["x"]) for r in rows] == [s.x for s in seen.sources]
    text = seen.paths["qc"].read_text()
    assert "muse_bias[1]" in text and "QC BIAS MASTER1 RON = 2.41" in text
    assert "muse_scipost" in text
    compact = look.format_qc(seen.qc)
    assert "BIAS MASTER1 RON=2.41" in compact and "(no QC keywords)" in compact
    assert look.format_sources(seen.sources).splitlines()[1].split()[:3] == \
        ["1", f"{seen.sources[0].x:.2f}", f"{seen.sources[0].y:.2f}"]


def test_spectra_of_the_brightest_source_and_of_the_sky(tmp_path):
    wave, sky = _cube(tmp_path / "cube.fits")
    white, header = look.white_light(tmp_path / "cube.fits")
    sources = look.find_sources(white)
    x, y = look.brightest(white, sources)
    star = look.aperture(white.shape, x, y) & np.isfinite(white)
    free = look.sky_pixels(white, sources, centre=(x, y))
    # no sky pixel within 3 apertures of a source
    yy, xx = np.mgrid[1:white.shape[0] + 1, 1:white.shape[1] + 1]
    for s in SOURCES:
        assert not free[(xx - s[0]) ** 2 + (yy - s[1]) ** 2 <= (3 * look.RADIUS - 0.5) ** 2].any()
    spec = look.spectra(tmp_path / "cube.fits", star, free)
    np.testing.assert_allclose(spec["wave"], wave)  # from the cube's WCS
    assert spec["unit"] == "Angstrom" and spec["npix"] == star.sum() > 25
    # the sky: the line where it is, at its height, per aperture
    assert abs(spec["wave"][np.argmax(spec["sky"])] - SKY_LINE) < 1.25
    np.testing.assert_allclose(spec["sky"] / spec["npix"], sky, atol=0.15)
    # the source minus the sky: its flat spectrum, the sky line gone
    diff = spec["object"] - spec["sky"]
    assert abs(np.median(diff) / (0.79 * 2500.0) - 1) < 0.05
    assert np.abs(diff - np.median(diff)).max() < 40.0  # noise of ~29 pixels x 1: ~5.4


def test_an_empty_sky_has_no_source_and_a_hot_pixel_is_none(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(10.0, 1.0, (30, 50))
    image[12, 20] = 40.0  # a hot pixel: 30 sigma (10 of the 3 x 3 mean), but sharp
    image[:3] = np.nan  # the field's edge
    image[:, -1] += 5.0  # a brighter last column, as muse_scipost's cubes have
    assert look.find_sources(image) == []


def test_the_report_shows_the_same_brightest_source(tmp_path):
    _cube(tmp_path / "DATACUBE_FINAL.fits")
    result = report._spectra(tmp_path / "DATACUBE_FINAL.fits", None)
    assert result["star"] == (48, 30)  # SOURCES[1] at 47.8, 30.2
    assert result["npix"] > 25 and result["image"].startswith("data:image/png;base64,")
