"""HAWK-I, the second instrument: Debian's real HAWK-I 2.4.11 recipes reduce the
project's synthetic frames (cpldask/instruments/hawki/synthetic.py) through
cpldask's Recipe interface, and the stacked images show the injected stars where the
products' WCS puts them.

The chain is the one ESO's Reflex workflow runs (reflex/hawki.oca in the pipeline
source): hawki_dark_combine -> hawki_twilight_flat_combine -> hawki_detector_noise ->
hawki_science_process -> hawki_science_postprocess. It runs once per session, every
call started at once (4 min 25–44 s on a quiet 2-core machine, docs/hawki.md); the
tests read its products.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

import cpldask
import cpldask as cpl
import cpldask.workflow
from cpldask import workflow
from cpldask.instruments.hawki import synthetic

#: the real chain takes minutes; the rules test needs no CPL but writes the 149 MB
#: synthetic set (leave it out with -m "not slow")
pytestmark = pytest.mark.slow

RULES = pathlib.Path(synthetic.__file__).with_name("rules.yaml")


def _recipe(name: str) -> cpl.Recipe:
    try:
        return cpl.Recipe(name)
    except OSError as err:  # not installed: a skip, which CI counts as a failure
        pytest.skip(f"{name}: {err} (apt-get install cpl-plugin-hawki)")


def _run(name: str, frames: dict, out: pathlib.Path, **param) -> cpl.Result:
    """Start the call in the background (threaded): it runs once its inputs exist
    (a Result given as input is waited for on the cluster, not here)."""
    recipe = _recipe(name)
    return recipe(frames, param=param, output_dir=str(out / name), threaded=True)


def _as_list(value) -> list[str]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


#: Exposures of the jitter sequence the current chain reduces: the first two of the
#: three written. hawki_science_process takes any number (recipes/
#: hawki_science_process.c:5081 treats n < 2); two are the fewest from which it can
#: make its own sky (skyalgo auto: pawsky_mask over the exposures). The tile's cost
#: grows with every exposure: hawki_science_postprocess's "fast" stacking holds
#: (images + 2) x tile pixels x 25 bytes (casu/src/casu_imstack.c, stack_nn), 5.1 GB
#: for 2 exposures x 4 detectors, 11.2 GB for 5, so the test uses "slow" (1.0 GB),
#: whose time grows with the number of images (146 CPU s for 8; docs/hawki.md).
CHAIN_EXPOSURES = 2


@pytest.fixture(scope="session")
def hawki_data(tmp_path_factory) -> dict:
    """The synthetic raw data set (3 darks, 3 flats, 3 exposures; 149 MB). Darks,
    flats and exposures are written in 3 processes: on 2 cores in about half the
    time of one (docs/hawki.md)."""
    return synthetic.write_dataset(tmp_path_factory.mktemp("hawki_raw"), processes=3)


@pytest.fixture(scope="session")
def hawki_reduction(hawki_data, tmp_path_factory, recipe_path) -> cpldask.workflow.Reduction:
    """``cpldask.reduce`` of the synthetic data, once per session: the instrument picked
    from the headers, HAWK-I's workflow (instruments/hawki/workflow.py) laid out and
    submitted — the dark, the flat, the detector noise, the science and the tile.
    Given the files of the first CHAIN_EXPOSURES exposures only (the third is for
    the jitter test). Not waited for: the obsolete chain below runs beside it."""
    d = hawki_data
    files = [*d["DARK"], *d["FLAT_TWILIGHT"], *d["OBJECT"][:CHAIN_EXPOSURES],
             *{p for tag in STATIC for p in d[tag]}]
    # stk_fast=slow: "auto" picks "fast" for up to 10 images (recipes/
    # hawki_science_postprocess.c:1191), here 8, and "fast" peaks at 5.1 GB
    return cpldask.reduce(files, output_dir=tmp_path_factory.mktemp("hawki_reduced"),
                          params={"hawki_science_postprocess": {"stk_fast": "slow"}},
                          wait=False)


#: the static calibrations among the synthetic data
STATIC = ("PHOTCAL_TAB", "MASTER_LOCAL_CATALOGUE_ASTROM", "MASTER_LOCAL_CATALOGUE_PHOTOM",
          "SCHLEGEL_MAP_NORTH", "SCHLEGEL_MAP_SOUTH")


@pytest.fixture(scope="session")
def hawki_products(hawki_reduction, hawki_data, tmp_path_factory) -> dict[str, cpl.Result]:
    """The Results of the reduction's steps, and of the obsolete chain's stacking recipe
    started beside it.

    Every call is started at once: the cluster runs each when its inputs exist, two
    at a time (one per core). The chain dark -> flat -> science -> tile is the
    critical path; hawki_detector_noise and the obsolete chain (hawki_cal_dark,
    hawki_sci_jitter) run beside it on the other core.
    """
    out = tmp_path_factory.mktemp("hawki_products")
    d = hawki_data
    red = hawki_reduction
    products = {key: red.step(name).result for key, name in (
        ("dark", "hawki_dark_combine"), ("flat", "hawki_twilight_flat_combine"),
        ("noise", "hawki_detector_noise"), ("science", "hawki_science_process"),
        ("tile", "hawki_science_postprocess"))}
    # The obsolete chain's stacking recipe on all three exposures: hawki_sci_jitter
    # (tags JITTER_OBS, DARK_IM, BPM, FLAT_IM) with hawki_cal_dark's dark and the
    # current chain's master flat (hawki_cal_flat would take 3 min). Unlike the
    # current chain it stacks by the header offsets ESO SEQ CUMOFFSETX/Y, not by
    # WCS. Its BPM and FLAT_IM products have other tags upstream, so they are
    # waited for here (cal_dark 3 s, the flat ~25 s: before the science call ends).
    cal_dark = _run("hawki_cal_dark", {"DARK": d["DARK"]}, out)
    jitter = _run("hawki_sci_jitter",
                  {"JITTER_OBS": d["OBJECT"], "DARK_IM": cal_dark, "BPM": cal_dark.BPM_HOT,
                   "FLAT_IM": products["flat"].MASTER_TWILIGHT_FLAT}, out)
    return {**products, "cal_dark": cal_dark, "jitter": jitter}


@pytest.mark.requires_cpl
@pytest.mark.hawki
def test_reduce_picks_hawki_and_runs_its_workflow(hawki_reduction, hawki_products):
    """``cpldask.reduce`` on HAWK-I files: no instrument named, HAWK-I's rules and
    workflow are used, every step finishes and ``final`` names the tile."""
    red = hawki_reduction.wait()
    assert red.instrument == "HAWKI"
    assert [s.name for s in red.steps] == [
        "hawki_dark_combine", "hawki_twilight_flat_combine", "hawki_detector_noise",
        "hawki_science_process", "hawki_science_postprocess"]
    assert all(s.unit is None for s in red.steps)  # one call covers the 4 detectors
    assert red.final["TILED_IMAGE"] == hawki_products["tile"].paths["TILED_IMAGE"][0]
    assert red.final["TILED_IMAGE"].startswith(str(red.output_dir))


def _centroid(img: np.ndarray, x: float, y: float, r: int = 6) -> tuple[float, float, float]:
    """Gaussian-weighted centroid (0-based pixels) near (x, y), and the peak above
    the local background."""
    for _ in range(3):
        x0, y0 = int(round(x)), int(round(y))
        box = img[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1]
        sky = np.nanmedian(img[y0 - 2 * r:y0 + 2 * r + 1, x0 - 2 * r:x0 + 2 * r + 1])
        sub = np.clip(np.nan_to_num(box - sky), 0, None)
        yy, xx = np.mgrid[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1]
        wgt = sub * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.5 ** 2))
        if wgt.sum() <= 0:
            return np.nan, np.nan, 0.0
        x, y = (wgt * xx).sum() / wgt.sum(), (wgt * yy).sum() / wgt.sum()
    return x, y, float(np.nanmax(box) - sky)


def _offsets(hdu, stars: Table, edge: int = 20) -> np.ndarray:
    """For each injected star inside the image: (mag, dx, dy, peak) between where the
    image's WCS puts it and where its light is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        w = WCS(hdu.header)
    img = hdu.data
    x, y = w.all_world2pix(stars["RA"], stars["Dec"], 0)
    ny, nx = img.shape
    inside = (x > edge) & (x < nx - edge) & (y > edge) & (y < ny - edge)
    rows = []
    for xi, yi, mag in zip(x[inside], y[inside], stars["Ksmag"][inside]):
        cx, cy, peak = _centroid(img, xi, yi)
        rows.append((mag, cx - xi, cy - yi, peak))
    return np.array(rows).reshape(-1, 4)


def _check_positions(offsets: np.ndarray, where: str) -> None:
    assert np.isfinite(offsets[:, 1:3]).all(), f"{where}: a star has no light where the WCS puts it"
    dist = np.hypot(offsets[:, 1], offsets[:, 2])
    assert (offsets[:, 3] > 20).all(), f"{where}: faintest peak {offsets[:, 3].min():.1f} ADU"
    assert np.median(dist) < 0.35, f"{where}: median offset {np.median(dist):.2f} px"
    assert dist.max() < 1.0, f"{where}: worst star {dist.max():.2f} px from its WCS position"


@pytest.mark.requires_cpl
@pytest.mark.hawki
def test_stacked_pawprint_has_the_stars_where_its_wcs_says(hawki_products, hawki_data):
    """JITTERED_IMAGE_SCI: each detector's stack, its WCS fitted by the recipe
    against the star catalogue; every injected star lies within 1 px of its WCS
    position."""
    stars = Table.read(hawki_data["MASTER_LOCAL_CATALOGUE_ASTROM"][0])
    (stack,) = _as_list(hawki_products["science"].JITTERED_IMAGE_SCI)
    with fits.open(stack) as hdul:
        assert [h.name for h in hdul[1:]] == [name for name, _ in synthetic.EXTENSIONS]
        n = 0
        for hdu in hdul[1:]:
            offsets = _offsets(hdu, stars)
            assert len(offsets) >= 20, f"{hdu.name}: only {len(offsets)} stars inside"
            _check_positions(offsets, f"{stack}[{hdu.name}]")
            n += len(offsets)
        assert n == len(stars)


@pytest.mark.requires_cpl
@pytest.mark.hawki
def test_tile_has_the_stars_where_its_wcs_says(hawki_products, hawki_data):
    """TILED_IMAGE: the four detectors of the jitter sequence in one image."""
    stars = Table.read(hawki_data["MASTER_LOCAL_CATALOGUE_ASTROM"][0])
    (tile,) = _as_list(hawki_products["tile"].TILED_IMAGE)
    with fits.open(tile) as hdul:
        hdu = hdul[1] if len(hdul) > 1 else hdul[0]
        offsets = _offsets(hdu, stars)
        assert len(offsets) == len(stars)
        _check_positions(offsets, tile)


@pytest.mark.requires_cpl
@pytest.mark.hawki
def test_wcs_and_zero_point_fitted_on_the_injected_stars(hawki_products):
    """The recipe matched its detections to the catalogue (QC WCS_RMS, arcsec) and
    found the zero point the generator used (ZERO_POINT, mag for 1 ADU/s)."""
    (stack,) = _as_list(hawki_products["science"].JITTERED_IMAGE_SCI)
    for hdu in fits.open(stack)[1:]:
        h = hdu.header
        assert h["ESO QC WCS_RMS"] < 0.045, hdu.name  # arcsec: < 0.45 px (measured 0.031)
        assert h["ESO QC MAGZPT"] == pytest.approx(synthetic.ZERO_POINT, abs=0.25), hdu.name
        assert h["ESO DRS MAGNZPTIM"] >= 20, hdu.name


@pytest.mark.requires_cpl
@pytest.mark.hawki
def test_read_noise_and_gain_measured_as_injected(hawki_products):
    """hawki_detector_noise measures the detector model of the generator."""
    (table,) = _as_list(hawki_products["noise"].MASTER_READGAIN)
    t = Table.read(table, unit_parse_strict="silent")  # units 'ADUs', 'e-/ADU'
    assert sorted(t["EXTNAME"]) == sorted(name for name, _ in synthetic.EXTENSIONS)
    assert np.allclose(t["GAIN"], synthetic.GAIN, rtol=0.1)
    assert np.allclose(t["READNOISE"], synthetic.READ_NOISE / synthetic.GAIN, rtol=0.1)


def test_rules_classify_and_associate_the_synthetic_data(hawki_data):
    """rules.yaml (from the pipeline's OCA rules) tags every synthetic file."""
    rules = workflow.load_rules(RULES)
    c = workflow.classify(pathlib.Path(hawki_data["DARK"][0]).parent, rules)
    assert not c.unclassified, c.summary()
    for tag in ("DARK", "FLAT_TWILIGHT", "OBJECT"):
        assert [f.path for f in c[tag]] == [str(p) for p in hawki_data[tag]]
        assert all(f.units == (1, 2, 3, 4) for f in c[tag])
    for tag in ("PHOTCAL_TAB", "SCHLEGEL_MAP_NORTH", "SCHLEGEL_MAP_SOUTH",
                "MASTER_LOCAL_CATALOGUE_ASTROM"):
        assert [f.path for f in c[tag]] == [str(p) for p in hawki_data[tag]]
    a = workflow.associate(c)
    assert [f.path for f in a.frames("DARK")] == [str(p) for p in hawki_data["DARK"]]
    assert [f.path for f in a.frames("FLAT_TWILIGHT")] == [str(p) for p in hawki_data["FLAT_TWILIGHT"]]


def _aperture(img: np.ndarray, x: np.ndarray, y: np.ndarray, r: int = 3) -> float:
    """Median over stars of the background-subtracted flux in a (2r+1)^2 box."""
    fluxes = []
    for xi, yi in zip(np.rint(x).astype(int), np.rint(y).astype(int)):
        box = img[yi - r:yi + r + 1, xi - r:xi + r + 1]
        sky = np.median(img[yi - 5 * r:yi + 5 * r + 1, xi - 5 * r:xi + 5 * r + 1])
        fluxes.append(box.sum() - box.size * sky)
    return float(np.median(fluxes))


@pytest.mark.requires_cpl
@pytest.mark.hawki
def test_header_jitter_offsets_stack_coherently(hawki_products, hawki_data):
    """ESO SEQ CUMOFFSETX/Y as the generator writes them (the sky's shift on the
    detector, pixels) are what hawki_sci_jitter expects: each star's light adds up
    at one place, nothing lands where offsets of the opposite sign would put it."""
    stars = Table.read(hawki_data["MASTER_LOCAL_CATALOGUE_ASTROM"][0])
    bright = stars[stars["Ksmag"] < 16]
    offsets = [(fits.getval(f, "ESO SEQ CUMOFFSETX"), fits.getval(f, "ESO SEQ CUMOFFSETY"))
               for f in hawki_data["OBJECT"]]
    (combined,) = _as_list(hawki_products["jitter"].COMBINED)
    with fits.open(combined) as hdul:
        for ext, hdu in enumerate(hdul[1:], start=1):
            img = np.nan_to_num(hdu.data)
            x, y = synthetic.chip_wcs(ext, distorted=True).wcs_world2pix(
                bright["RA"], bright["Dec"], 0)
            # The stack covers the union of the shifted exposures (comb_meth union):
            # the first exposure's pixels lie where the recipe moved its CRPIX, less
            # the 4 rejected border pixels; the 9 x 9 search takes up those and the
            # rounding, without assuming which way the union grew
            first = fits.getheader(hawki_data["OBJECT"][0], ext)
            x0 = round(hdu.header["CRPIX1"] - first["CRPIX1"])
            y0 = round(hdu.header["CRPIX2"] - first["CRPIX2"])
            keep = (x + x0 > 80) & (x + x0 < img.shape[1] - 80) \
                & (y + y0 > 80) & (y + y0 < img.shape[0] - 80)
            x, y = x[keep] + x0, y[keep] + y0
            shift = max(((dx, dy) for dx in range(-4, 5) for dy in range(-4, 5)),
                        key=lambda s: _aperture(img, x + s[0], y + s[1]))
            x, y = x + shift[0], y + shift[1]
            star = _aperture(img, x, y)
            assert star > 5000, f"{hdu.name}: stars carry {star:.0f} ADU"
            for ox, oy in offsets[1:]:
                ghost = _aperture(img, x + 2 * ox, y + 2 * oy)
                assert abs(ghost) < 0.02 * star, f"{hdu.name}: {ghost:.0f} ADU at a ghost"
