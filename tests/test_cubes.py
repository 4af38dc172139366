"""Issue 20: science-grade cubes, with the real MUSE recipes.

One reduction of ``synthetic.write_dithered`` (IFU 1: bias, flat, arcs, twilight
flats, three dithered 600 s exposures of a star field over the night sky) through
``cpldask.reduce``: the sky subtracted by muse_scipost's sky model, the exposures
aligned by muse_exp_align and combined by muse_exp_combine. The checks compare the
products with what the frames were made of (synthetic.STAR_FIELD, POINTING_ERRORS,
the [OI] 5577 line of the night sky). The bounds are the MUSE pipeline's
specifications, as Weilbacher et al. 2020 (A&A 641, A28, Sect. 1: "The data
processing pipeline for the MUSE instrument") list them [W20]: images reconstructed
to better than 1/4 pixel, sky subtraction to better than 5 % of the sky outside the
emission lines (goal 2 %); and issue 20's 0.2 pixel for the offsets.

Measured on 2026-12-01 (2 busy cores; ``pytest tests/test_cubes.py -s``): [OI] 5577
left at 0.50 % of its flux (4.1 % without the twilight flats: the sky's +-3 %
illumination gradient), the continuum beside it at 0.8 %, offsets within 0.027"
(0.13 pixel), stars of the combined image within 0.07 pixel; the module 391 s (the
reduction 366 s of it).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from cpldask import look
from cpldask import workflow as R
from cpldask.instruments.muse import synthetic

pytestmark = [pytest.mark.requires_cpl, pytest.mark.muse, pytest.mark.slow,
              # the data and 13 calls: 6.5 min at a load of 4.5 on 2 cores
              pytest.mark.timeout(2400)]

#: the strongest line of the synthetic night sky (synthetic._SKY_LINES)
LINE = 5577.338


def _centre(red: R.Reduction) -> tuple[float, float]:
    """The field position (x, y) [field pixels] muse_scipost puts the header's RA/DEC
    at, for exposure 1: the middle of its pixel table's extent before the DAR
    correction (muse_wcs.c, muse_wcs_position_celestial), which its PIXTABLE_REDUCED
    keeps (PREDAR LIMITS). For IFU 1 about (0, 138); the extent in x depends on the
    wavelengths kept (the slices are tilted)."""
    path = red["muse_scipost@exp1"].result.paths["PIXTABLE_REDUCED"][0]
    h = fits.getheader(path)
    key = "ESO DRS MUSE PIXTABLE PREDAR LIMITS "
    return ((h[key + "XLO"] + h[key + "XHI"]) / 2.0, (h[key + "YLO"] + h[key + "YHI"]) / 2.0)

#: the wavelengths muse_scipost keeps
LAMBDA = (5000.0, 7000.0)


@pytest.fixture(scope="module")
def dithered(tmp_path_factory, recipe_path) -> R.Reduction:
    """The reduction of the dithered star field: bias, flat, wavecal, lsf, twilight,
    per exposure scibasic and scipost, exp_align, exp_combine (13 calls)."""
    d = tmp_path_factory.mktemp("dithered")
    synthetic.write_dithered(d / "raw", ifus=(1,), processes=2)
    # the cubes from 5000 to 7000 A only: the [OI] 5577, NaD and [OI] 6300/6364 sky
    # lines and the stars, in a third of the time of the whole range
    red = R.reduce(d / "raw", ifus="1", output_dir=d / "reduced", params={
        "muse_scipost": {"lambdamin": LAMBDA[0], "lambdamax": LAMBDA[1]}})
    assert not red.failed(), red.failed()
    return red


def _wcs(path: str) -> WCS:
    return WCS(fits.getheader(path, 1)).celestial


def _line_flux(cube: str, region: tuple[slice, slice]) -> tuple[float, float, float]:
    """The flux of `LINE` in the mean spectrum of ``region`` (y, x slices) of a
    cube, above the level of the spectrum beside it (8 to 16 A away on both sides),
    the sum of the absolute values over the line's window (the same level taken
    off: a residual of positive and negative parts counts in full), and that level
    (the continuum, per 1.25 A)."""
    with fits.open(cube) as hdul:
        h = hdul["DATA"].header
        spec = np.nanmean(hdul["DATA"].data[:, region[0], region[1]], axis=(1, 2))
    lam = h["CRVAL3"] + h["CD3_3"] * (np.arange(spec.size) + 1 - h["CRPIX3"])
    window = np.abs(lam - LINE) <= 5.0  # +-2 FWHM of the synthetic lines (2.9 A)
    side = (np.abs(lam - LINE) >= 8.0) & (np.abs(lam - LINE) <= 16.0)
    level = np.median(spec[side])
    return (float(np.sum(spec[window] - level)), float(np.sum(np.abs(spec[window] - level))),
            float(level))


def _empty_region(image: str, centre: tuple[float, float]) -> tuple[slice, slice]:
    """(y, x) slices of the starless part of an exposure's field (synthetic.EMPTY_SKY_X)
    in its cube, from its WCS: the field x of exposure 1 (no pointing error) is its
    pixel x from the centre, the region shrunk by the dither (4 pixels)."""
    h = fits.getheader(image, 1)
    x0, x1 = (h["CRPIX1"] + x - centre[0] for x in synthetic.EMPTY_SKY_X)
    return slice(2, h["NAXIS2"] - 2), slice(int(np.ceil(x0)) + 4, int(x1) - 4)


def test_sky_lines_are_subtracted(dithered, tmp_path):
    """Issue 20.1: the [OI] 5577 line in the empty sky of exposure 1's cube, after
    muse_scipost's sky model (skymethod=model with SKY_LINES and muse_lsf's
    LSF_PROFILE, chosen by the rules) against the same pixel table reduced with
    skymethod=none.

    The bound, 2 % of the line's flux: [W20] asks 5 % (goal 2 %) of the sky outside
    the lines and gives no number for the lines themselves; here every slice has the
    LSF muse_lsf measures on the arcs (the synthetic lines have one shape), so the
    model can fit a line as well as the continuum, and the goal is the bound. What
    is left (0.5 %) is the illumination correction's: without the twilight flats the
    +-3 % gradient of the sky over the field leaves 4 %, which fails."""
    import cpldask

    scipost = cpldask.Recipe("muse_scipost")
    # declared as required, not needed without flux calibration (rules.yaml)
    scipost.optional_calib = {"STD_RESPONSE", "EXTINCT_TABLE"}
    post = dithered["muse_scipost@exp1"]
    assert post.param["skymethod"] == "model"
    assert {"SKY_LINES", "LSF_PROFILE"} <= set(post.calib)
    subtracted = post.result.paths["DATACUBE_FINAL"][0]
    pixtable = dithered["muse_scibasic@exp1[1]"].result.paths["PIXTABLE_OBJECT"]
    raw = scipost(
        {"PIXTABLE_OBJECT": pixtable}, param={"skymethod": "none", "save": "cube",
                                              "astrometry": True, "lambdamin": LAMBDA[0],
                                              "lambdamax": LAMBDA[1]},
        output_dir=str(tmp_path / "none"))
    region = _empty_region(post.result.paths["IMAGE_FOV"][0], _centre(dithered))
    before, _, continuum = _line_flux(raw.paths["DATACUBE_FINAL"][0], region)
    after, after_abs, left = _line_flux(subtracted, region)
    print(f"[OI] 5577 in the empty sky: {before:.1f} before, {after:+.2f} after "
          f"({after / before:+.2%}), |residual| {after_abs:.2f} ({after_abs / before:.2%}); "
          f"continuum {continuum:.2f} before, {left:+.3f} after ({left / continuum:+.2%})")
    assert before > 0 and continuum > 0
    # what is left of the line, positive and negative parts alike: below 2 %
    assert after_abs / before < 0.02
    # the continuum beside it: below the pipeline's specification of 5 % [W20]
    assert abs(left / continuum) < 0.05


def _offsets(red: R.Reduction) -> np.ndarray:
    """muse_exp_align's OFFSET_LIST as (east, north) arcsec per exposure, in time order."""
    path = red["muse_exp_align"].result.paths["OFFSET_LIST"][0]
    tab = fits.getdata(path, 1)
    order = np.argsort(tab["MJD_OBS"])
    dec = np.radians(fits.getheader(red["muse_scipost@exp1"].result.paths["IMAGE_FOV"][0],
                                    1)["CRVAL2"])
    return np.column_stack([tab["RA_OFFSET"][order] * 3600.0 * np.cos(dec),
                            tab["DEC_OFFSET"][order] * 3600.0])


def test_exp_align_recovers_the_pointing_errors(dithered):
    """Issue 20.2: the exposures' headers say where the telescope was sent; the stars
    were put where it really pointed (synthetic.POINTING_ERRORS, 0.3" to 0.5"):
    muse_exp_align measures the difference, within 0.2 pixel (0.04")."""
    got = _offsets(dithered)
    errors = np.array(synthetic.POINTING_ERRORS) - synthetic.POINTING_ERRORS[0]
    print("offsets [arcsec]:", got.round(3).tolist(), "pointing errors:", errors.tolist())
    # muse_exp_combine subtracts the offset from the header's RA/DEC (muse/
    # muse_xcombine.c, muse_xcombine_tables: "ra -= offsets[0]"): the offset is the
    # header's pointing minus the true one, minus the pointing error
    assert np.abs(got + errors).max() < 0.2 * 0.2


def _centroid(img: np.ndarray, x: float, y: float, r: int = 6) -> tuple[float, float]:
    """Centroid (0-based) of the star near (x, y), weighted by a Gaussian of the
    star's own width about the centroid found so far (SExtractor's "windowed"
    positions): for a symmetric star it converges on its centre, which a plain box
    centroid misses by up to 0.25 pixel when the box is off-centre."""
    sigma = synthetic.STAR_FWHM / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    background = np.nanmedian(img)  # the field is mostly (subtracted) sky
    for _ in range(30):
        x0, y0 = int(round(x)), int(round(y))
        ys = slice(max(y0 - r, 0), min(y0 + r + 1, img.shape[0]))
        xs = slice(max(x0 - r, 0), min(x0 + r + 1, img.shape[1]))
        yy, xx = np.mgrid[ys, xs]
        w = np.nan_to_num(img[ys, xs] - background) * np.exp(
            -((xx - x) ** 2 + (yy - y) ** 2) / (2.0 * sigma ** 2))
        x, y = float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())
    return x, y


def test_combined_image_has_the_stars_where_they_were_put(dithered):
    """Issue 20.2: one DATACUBE_FINAL and IMAGE_FOV of the three exposures (the
    final of the group); each star of the field sits at its place on the sky (that
    of exposure 1, whose pointing is exact) within 1/4 pixel [W20]. Without the
    offsets the exposures' pointing errors (2.5 and -1.5 pixels in x) would move
    the stars of the combination by a third of a pixel and widen them."""
    final = dithered.final
    assert set(final) == {"DATACUBE_FINAL", "IMAGE_FOV"}
    assert pathlib.Path(final["IMAGE_FOV"]).parent.name == "muse_exp_combine"
    ref = _wcs(dithered["muse_scipost@exp1"].result.paths["IMAGE_FOV"][0])
    h1 = fits.getheader(dithered["muse_scipost@exp1"].result.paths["IMAGE_FOV"][0], 1)
    combined = _wcs(final["IMAGE_FOV"])
    img = fits.getdata(final["IMAGE_FOV"], 1)
    centre, worst = _centre(dithered), 0.0
    put = []
    for x, y, flux in synthetic.star_field((1,)):
        sky = ref.pixel_to_world(h1["CRPIX1"] - 1 + x - centre[0],
                                 h1["CRPIX2"] - 1 + y - centre[1])
        px, py = combined.world_to_pixel(sky)
        cx, cy = _centroid(img, float(px), float(py))
        worst = max(worst, np.hypot(cx - px, cy - py))
        put.append((float(px) + 1.0, float(py) + 1.0, flux))  # 1-based, as look's
    print(f"stars in the combined image: worst {worst:.3f} pixel from where they were put")
    assert worst < 0.25
    # issue 20.4: the look at the target finds these 8 stars and nothing else, each
    # where it was put (its centroids agree with _centroid's to 0.07 pixel on the
    # combined images of earlier runs), ranked as their fluxes
    sources = look.find_sources(img)
    assert len(sources) == len(put) == 8, look.format_sources(sources)
    put.sort(key=lambda p: -p[2])
    far = max(np.hypot(s.x - p[0], s.y - p[1]) for s, p in zip(sources, put))
    print(f"the look's sources: worst {far:.3f} pixel from where the stars were put")
    assert far < 0.4, (look.format_sources(sources), put)
