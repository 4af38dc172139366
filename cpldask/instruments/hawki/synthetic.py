"""Synthetic raw HAWK-I data that the real HAWK-I 2.4.11 recipes (Debian's
``cpl-plugin-hawki``) accept: darks, twilight flats, a jittered star field, and the
static calibrations the science recipes need (photometric table, a local star
catalogue, dust maps).

Where a header value comes from, each line says:

* **UM** — HAWK-I User Manual (VLT-MAN-ESO-14800-3486, issue 96): 4 HAWAII-2RG
  detectors of 2048 x 2048 pixels, 0.106"/pixel, a cross-shaped gap of about 15";
  appendix C gives the pixel coordinates (CRPIX) of the telescope pointing in each
  quadrant: Q1 (2163, 2164), Q2 (-37.5, 2161.5), Q3 (-42, -28), Q4 (2158, -25.5).
* **OCA** — the pipeline's classification rules (``calib/gasgano/config/hawki.oca``
  and ``reflex/hawki.oca`` in the pipeline source): DPR CATG/TYPE/TECH per raw tag,
  and the header keys frames are grouped by (DET DIT, DET NDIT, DET NCORRS NAME,
  INS FILT1/2 NAME, TPL START).
* **SRC** — what the recipes read (``hawki/hawki_pfits.c``, ``hawki/hawki_load.c``,
  ``hawki/hawki_utils.c``, ``casu/src/*.c``): EXTNAME ``CHIPn.INT1``, ESO DET CHIP
  LIVE, GAIN, MJD-OBS, DATE-OBS, ESO TPL START, ESO OBS PROG ID, ...
* **DIC** — the ESO dictionaries Debian installs in
  ``/usr/share/cpl-plugins/hawki-2.4.11/dic`` (ESO-VLT-DIC.HAWKI_ICS: INS FILTi NAME).

Size. Frames have the full size of the detectors, 4 x 2048 x 2048 pixels: the
smallest the chain accepts, because hawki_twilight_flat_combine measures each flat's
level in the fixed window [768:1791, 768:1791] (recipes/hawki_twilight_flat_combine.c
lines 724 and 1494; a smaller frame fails with "Access beyond boundaries" in
cpl_image_get_median_window), and every later frame must match the master flat. To
keep the files small they are written as integer ADU (the read-out's unit) in
tile-compressed extensions (RICE, lossless, as ESO's archive serves raw data in
``.fits.fz`` files); CFITSIO, under CPL, reads them transparently: 11-24 MB per
frame instead of 64 MB.

Example
-------
>>> from cpldask.instruments.hawki import synthetic
>>> data = synthetic.write_dataset("raw/")                   # doctest: +SKIP
>>> sorted(data)                                             # doctest: +SKIP
['DARK', 'FLAT_TWILIGHT', 'MASTER_LOCAL_CATALOGUE_ASTROM', ...]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import pathlib

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

__all__ = ["CHIP_SIZE", "EXTENSIONS", "Star", "Pointing", "chip_wcs", "star_field",
           "write_darks", "write_twilight_flats", "write_science", "write_catalogue",
           "write_photcal_table", "write_dust_maps", "write_dataset"]

#: Pixels per detector side (UM: 2048 x 2048 HAWAII-2RG); see "Size" above for why
#: the frames cannot be smaller.
CHIP_SIZE = 2048

#: Raw extensions in file order: (EXTNAME, chip number). The extension order is not
#: the chip order: UM's quadrants Q1..Q4 run anticlockwise from the lower left, and
#: the transforms of SRC hawki_wcsfit_multi put extension 3 above extension 1 (Q4,
#: CHIP4) and extension 4 at the upper right (Q3, CHIP3).
EXTENSIONS = (("CHIP1.INT1", 1), ("CHIP2.INT1", 2), ("CHIP4.INT1", 4), ("CHIP3.INT1", 3))

#: Pixel coordinates of extension k mapped onto extension 1 (SRC hawki_utils.c,
#: hawki_wcsfit_multi ``forward``): x1 = a x + b y + c, y1 = d y + e x + f, as
#: (a, b, c, d, e, f). The offsets agree with UM's CRPIX table to ~2 pixels.
FORWARD = (
    (1.00000000, 0.00000000, 0.00000000, 1.00000000, 0.00000000, 0.00000000),
    (0.99989338, -0.00082458, 2202.75199936, 0.99989338, 0.00082458, 2.52486889),
    (0.99954089, 0.00033954, 7.35707930, 0.99954089, -0.00033954, 2189.67113908),
    (0.99984901, 0.00057963, 2207.25004571, 0.99984901, -0.00057963, 2191.08171555),
)

#: UM appendix C: the telescope pointing falls on pixel (2163, 2164) of Q1 (CHIP1).
POINTING_PIXEL = (2163.0, 2164.0)
#: UM: 0.106 arcsec per pixel.
PIXEL_SCALE = 0.106 / 3600.0  # degrees
#: Detector properties: assumed values of the order of a HAWAII-2RG's (not taken
#: from a document found here). The recipes measure them (hawki_detector_noise) and
#: nothing else assumes them; tests/test_hawki.py checks the measurement.
GAIN = 1.8  # e-/ADU
READ_NOISE = 10.0  # e-
DARK_CURRENT = 0.05  # e-/s
DARK_LEVEL = 50.0  # ADU: residual bias pedestal the dark removes
DIT = 10.0  # s; one DIT for every frame, so one master dark serves all (OCA groups by DIT)
FILTER = "Ks"  # DIC INS FILTi NAME; UM: broad-band Y, J, H, Ks
SKY_LEVEL = 1500.0  # ADU per DIT in Ks (assumed; recipes fit QC SKYBRIGHT 13.8 mag/arcsec2)
ZERO_POINT = 24.0  # mag giving 1 ADU/s (assumed; the recipes fit it, the test checks)
SEEING_FWHM = 0.7  # arcsec
#: DIMM seeing, arcsec at 500 nm (assumed): what Sarazin's relation (FWHM ~
#: lambda^-0.2 airmass^0.6, cited in SRC hawki_fwhm.c) gives for SEEING_FWHM in Ks at
#: airmass 1.2 with hawki_fwhm.c's outer-scale factor ~0.8. hawki_fwhm.c itself
#: divides by the wavelength in microns instead and makes it 0.36" (measured: the
#: tile's PSF_FWHM), so no test reads the result.
DIMM_SEEING = 1.0
CATALOGUE_NAME = "SYNTHETIC"  # EXTNAME of the star catalogue = PHOTCAL_TAB extension

_TELESCOPE = {  # primary keywords every raw frame carries (ESO archive headers)
    "TELESCOP": ("ESO-VLT-U4", "HAWK-I is on UT4"),
    "INSTRUME": ("HAWKI", "OCA: INSTRUME like '%HAWKI%'"),
    "ORIGIN": ("ESO-PARANAL", "European Southern Observatory"),
    "ESO OBS PROG ID": ("60.A-9800(A)", "SRC hawki_pfits_get_projid"),
    "ESO OBS ID": (200000001, "SRC hawki_science_process reads it"),
    # OCA groups frames by it; UM: double-correlated read-out
    "ESO DET NCORRS NAME": ("Double", "read-out mode"),
    "ESO DET NDSAMPLES": (1, "SRC hawki_pfits_get_ndsamples"),
    "ESO DET CHIP NX": (2048, "UM: 2048 x 2048 pixel detectors"),
    "ESO DET CHIP NY": (2048, "UM"),
    "ESO INS PIXSCALE": (0.106, "UM: arcsec per pixel"),
}


@dataclasses.dataclass(frozen=True)
class Star:
    """A star of the synthetic field: sky position (degrees, ICRS) and Ks magnitude."""

    ra: float
    dec: float
    mag: float


@dataclasses.dataclass(frozen=True)
class Pointing:
    """One exposure's telescope pointing: RA/Dec of the reference pixel (degrees)
    and the cumulative jitter offset from the first exposure (arcsec)."""

    ra: float
    dec: float
    dra: float = 0.0  # arcsec on the sky, East positive
    ddec: float = 0.0  # arcsec, North positive

    def moved(self, dra: float, ddec: float) -> "Pointing":
        cosd = math.cos(math.radians(self.dec))
        return Pointing(self.ra + dra / 3600.0 / cosd, self.dec + ddec / 3600.0,
                        self.dra + dra, self.ddec + ddec)


#: The field centre: a high galactic latitude field well south (any would do; the
#: dust maps written here are zero everywhere).
FIELD = Pointing(ra=150.1, dec=-30.2)


def chip_wcs(ext: int, pointing: Pointing = FIELD, *, distorted: bool = False) -> WCS:
    """The sky WCS of raw extension ``ext`` (1..4) for a pointing.

    North up, East left (UM: position angle 0), CRVAL the pointing, CRPIX the
    pointing's pixel in this extension. Extension 1 uses UM's CRPIX; the others
    derive theirs and their CD matrix from SRC's ``FORWARD`` transforms.

    ``distorted=False`` gives the TAN WCS raw headers carry; ``distorted=True`` the
    camera's real mapping, with which the stars are placed: the pipeline models
    HAWK-I's field distortion as a ZPN projection with PV2_1 = 1, PV2_3 = 400
    (SRC hawki_utils.h, applied to every raw frame by hawki_updatewcs), about 3
    pixels at the corners of the field. Placing stars with plain TAN leaves a
    0.05" (0.5 pixel) residual in the recipe's plate solution.

    Examples
    --------
    >>> w = chip_wcs(2)
    >>> [round(float(v), 1) for v in w.wcs.crpix]   # UM: (-37.5, 2161.5)
    [-38.0, 2161.7]
    """
    a, b, c, d, e, f = FORWARD[ext - 1]
    m = np.array([[a, b], [e, d]])  # (x1, y1) = m @ (x, y) + t
    t = np.array([c, f])
    crpix = np.linalg.solve(m, np.array(POINTING_PIXEL) - t)
    cd1 = np.array([[-PIXEL_SCALE, 0.0], [0.0, PIXEL_SCALE]])
    w = WCS(naxis=2)
    if distorted:
        w.wcs.ctype = ["RA---ZPN", "DEC--ZPN"]
        w.wcs.set_pv([(2, 1, 1.0), (2, 3, 400.0)])
    else:
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [pointing.ra, pointing.dec]
    w.wcs.crpix = crpix
    w.wcs.cd = cd1 @ m
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


def star_field(*, per_chip: int = 30, seed: int = 1, margin: float = 40.0,
               mags: tuple[float, float] = (14.0, 18.0)) -> list[Star]:
    """Stars at random sky positions over the four detectors at the first pointing.

    ``margin`` pixels are kept free along each detector's edges so that every star
    stays on the detector through the jitter pattern (offsets up to ~3.5").

    Examples
    --------
    >>> len(star_field(per_chip=5))
    20
    """
    rng = np.random.default_rng(seed)
    stars = []
    for ext in range(1, 5):
        w = chip_wcs(ext, distorted=True)
        xy = rng.uniform(margin, CHIP_SIZE - margin, size=(per_chip, 2))
        # keep stars apart (> 12 px) so no two blend
        keep: list[np.ndarray] = []
        for p in xy:
            if all(np.hypot(*(p - q)) > 12 for q in keep):
                keep.append(p)
        xy = np.array(keep)
        sky = w.wcs_pix2world(xy + 1.0, 1)  # 0-based numpy -> FITS 1-based
        for (ra, dec), mag in zip(sky, rng.uniform(*mags, size=len(xy))):
            stars.append(Star(float(ra), float(dec), float(mag)))
    return stars


# ---------------------------------------------------------------------------------
# Raw frames
# ---------------------------------------------------------------------------------
def _primary(*, catg: str, typ: str, tech: str, mjd: float, tpl_start: str, nexp: int,
             expno: int, tpl_id: str, pointing: Pointing, airmass: float = 1.2,
             obj: str) -> fits.Header:
    h = fits.Header()
    h["DATE-OBS"] = (Time(mjd, format="mjd").isot, "SRC hawki_pfits_get_dateobs")
    h["MJD-OBS"] = (mjd, "SRC hawki_pfits_get_mjd")
    h["EXPTIME"] = (DIT * 1, "DIT x NDIT (SRC hawki_pfits_get_exptime)")
    h["OBJECT"] = obj
    h["RA"] = (pointing.ra, "telescope pointing (deg)")
    h["DEC"] = (pointing.dec, "telescope pointing (deg)")
    h["EQUINOX"] = 2000.0
    h["ARCFILE"] = (f"HAWKI.{Time(mjd, format='mjd').isot[:23]}.fits",
                    "ESO archive name")  # INSTRUME.DATE-OBS.fits
    for key, (value, comment) in _TELESCOPE.items():
        h[f"HIERARCH {key}"] = (value, comment)
    h["HIERARCH ESO DPR CATG"] = (catg, "OCA")
    h["HIERARCH ESO DPR TYPE"] = (typ, "OCA")
    h["HIERARCH ESO DPR TECH"] = (tech, "OCA")
    h["HIERARCH ESO DET DIT"] = (DIT, "s; SRC hawki_pfits_get_dit")
    h["HIERARCH ESO DET NDIT"] = (1, "hawki_detector_noise needs NDIT=1 (its man page)")
    # darks: the filter wheel's blank position (assumed; no recipe reads it for darks)
    h["HIERARCH ESO INS FILT1 NAME"] = (FILTER if typ != "DARK" else "Dark",
                                        "DIC; SRC hawki_pfits_get_filter")
    h["HIERARCH ESO INS FILT2 NAME"] = ("OPEN", "DIC")
    # template names follow the template guide's HAWKI_img_<kind>_<name> pattern
    # (the exact names are assumed; no recipe reads TPL ID)
    h["HIERARCH ESO TPL ID"] = (tpl_id, "template")
    # SRC hawki_pfits_get_tplstart; OCA groups frames by it
    h["HIERARCH ESO TPL START"] = (tpl_start, "template start")
    h["HIERARCH ESO TPL NEXP"] = (nexp, "reflex/hawki.oca: DARK and FLAT need TPL NEXP > 2")
    h["HIERARCH ESO TPL EXPNO"] = (expno, "")
    h["HIERARCH ESO OBS START"] = (tpl_start, "OCA groups flats by it")
    # the target, the same in every frame of a sequence (hawki_sci_jitter compares
    # these values for equality)
    h["HIERARCH ESO TEL TARG ALPHA"] = (_hhmmss(FIELD.ra), "HHMMSS.sss")
    h["HIERARCH ESO TEL TARG DELTA"] = (_ddmmss(FIELD.dec), "DDMMSS.sss")
    h["HIERARCH ESO TEL AIRM START"] = (airmass, "casu_photcal_extinct reads the airmass")
    h["HIERARCH ESO TEL AIRM END"] = (airmass, "")
    # DIMM seeing (arcsec at 500 nm; assumed, consistent with SEEING_FWHM in Ks by
    # the lambda^-0.2 law). SRC hawki_fwhm.c (hawki_get_dimm_fwhm) reads both:
    # hawki_science_postprocess falls back on them when its tile's classifier finds
    # fewer than 3 good stars for PSF_FWHM, and fails without them ("Cannot compute
    # the FWHM from the DIMM"); measured with 2 exposures.
    h["HIERARCH ESO TEL AMBI FWHM START"] = (DIMM_SEEING, "arcsec, DIMM")
    h["HIERARCH ESO TEL AMBI FWHM END"] = (DIMM_SEEING, "arcsec, DIMM")
    # Jitter offsets: cumulative offsets from the first exposure in arcsec (A, D)
    # and detector pixels (X, Y) (SRC hawki_pfits_legacy.c reads all four).
    # x grows to the West (East left), so a telescope offset of +A arcsec to the East
    # moves the sky on the detector by +A/0.106 pixels in x: X, Y are the sky's shift
    # on the detector. hawki_sci_jitter, which stacks by these keywords, agrees
    # (tests/test_hawki.py: coherent stack; with the signs flipped the test fails).
    h["HIERARCH ESO SEQ CUMOFFSETA"] = (pointing.dra, "arcsec")
    h["HIERARCH ESO SEQ CUMOFFSETD"] = (pointing.ddec, "arcsec")
    h["HIERARCH ESO SEQ CUMOFFSETX"] = (pointing.dra / 0.106, "pixels")
    h["HIERARCH ESO SEQ CUMOFFSETY"] = (-pointing.ddec / 0.106, "pixels")
    return h


def _hhmmss(ra: float) -> float:
    hours = (ra % 360.0) / 15.0
    hh = int(hours)
    mm = int((hours - hh) * 60)
    ss = ((hours - hh) * 60 - mm) * 60
    return round(hh * 10000 + mm * 100 + ss, 3)


def _ddmmss(dec: float) -> float:
    sign = -1 if dec < 0 else 1
    dec = abs(dec)
    dd = int(dec)
    mm = int((dec - dd) * 60)
    ss = ((dec - dd) * 60 - mm) * 60
    return round(sign * (dd * 10000 + mm * 100 + ss), 3)


def _extension(data: np.ndarray, ext: int, pointing: Pointing | None) -> fits.ImageHDU:
    name, chip = EXTENSIONS[ext - 1]
    h = fits.Header()
    h["EXTNAME"] = (name, "SRC hawki_load.c: sscanf 'CHIP%d.INT1'")
    h["HIERARCH ESO DET CHIP NO"] = (chip, "detector number")
    h["HIERARCH ESO DET CHIP NAME"] = (f"HAWAII-2RG-{chip}", "UM: HAWAII-2RG detectors")
    h["HIERARCH ESO DET CHIP LIVE"] = (True, "SRC hawki_pfits_get_detlive")
    h["GAIN"] = (GAIN, "e-/ADU; SRC hawki_pfits_get_gain")
    if pointing is not None:
        # the WCS as raw HAWK-I headers carry it: TAN, CRVAL, CRPIX and a CD matrix
        w = chip_wcs(ext, pointing).wcs
        h["CTYPE1"], h["CTYPE2"] = w.ctype
        h["CRVAL1"], h["CRVAL2"] = (float(v) for v in w.crval)
        h["CRPIX1"], h["CRPIX2"] = (float(v) for v in w.crpix)
        for (i, j), v in np.ndenumerate(w.cd):
            h[f"CD{i + 1}_{j + 1}"] = float(v)
        h["RADESYS"] = "ICRS"
        h["EQUINOX"] = 2000.0
    # integer ADU, lossless RICE tiles (see "Size" in the module docstring)
    adu = np.clip(np.rint(data), 0, 65535).astype(np.uint16)
    return fits.CompImageHDU(adu, header=h, compression_type="RICE_1")


def _pixel_response(seed: int) -> np.ndarray:
    """Per-detector flat-field pattern: smooth gradient times pixel-to-pixel noise,
    mean 1; the same in flats and science frames (a fixed seed per data set)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:CHIP_SIZE, 0:CHIP_SIZE] / CHIP_SIZE
    out = []
    for ext in range(4):
        smooth = 1.0 + 0.05 * (x - 0.5) * (1 - 2 * (ext % 2)) + 0.03 * (y - 0.5)
        out.append(smooth * rng.normal(1.0, 0.02, size=x.shape))
    return np.array(out)


def _noisy(electrons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ADU from an expected number of photo/dark electrons: Poisson noise, read
    noise, and the (noiseless) pedestal the dark subtracts."""
    e = rng.poisson(np.clip(electrons, 0, None)).astype(np.float64)
    e += rng.normal(0.0, READ_NOISE, size=e.shape)
    return e / GAIN + DARK_LEVEL


def _write(path: pathlib.Path, primary: fits.Header, chips, pointing) -> pathlib.Path:
    hdus = [fits.PrimaryHDU(header=primary)]
    hdus += [_extension(img, k + 1, pointing) for k, img in enumerate(chips)]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def write_darks(directory: str | os.PathLike, *, n: int = 3, seed: int = 1,
                mjd: float = 60001.45) -> list[pathlib.Path]:
    """``n`` raw darks of DIT s (OCA: DPR CATG=CALIB, TYPE=DARK, TECH=IMAGE).

    Example
    -------
    >>> write_darks("raw/", n=3)                 # doctest: +SKIP
    """
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hot = rng.random((4, CHIP_SIZE, CHIP_SIZE)) < 1e-4  # a few hot pixels
    start = Time(mjd, format="mjd").isot[:19]
    out = []
    for i in range(n):
        t = mjd + i * 30 / 86400
        electrons = DARK_CURRENT * DIT + hot * 5000.0
        chips = [_noisy(np.full((CHIP_SIZE, CHIP_SIZE), 0.0) + electrons[k], rng)
                 for k in range(4)]
        h = _primary(catg="CALIB", typ="DARK", tech="IMAGE", mjd=t, tpl_start=start,
                     nexp=n, expno=i + 1, tpl_id="HAWKI_img_cal_Darks",
                     pointing=FIELD, obj="DARK")
        out.append(_write(d / f"HAWKI_DARK_{i + 1:02d}.fits", h, chips, None))
    return out


def write_twilight_flats(directory: str | os.PathLike, *, seed: int = 2,
                         flat_seed: int = 7, mjd: float = 60000.98,
                         levels=(18000.0, 17600.0, 12000.0)) -> list[pathlib.Path]:
    """Raw twilight flats (OCA: CALIB / FLAT / IMAGE), one per level in ``levels``.

    Three by default: the fewest OCA classifies as FLAT_TWILIGHT (TPL NEXP > 2).

    hawki_detector_noise takes the first two flats as a pair: its gain (from the
    variance of their difference) assumes equal levels, so they nearly are.

    The levels stay inside hawki_twilight_flat_combine's accepted range (lthr 4000,
    hthr 30000 ADU, its man page); the sky moves a little between exposures as in
    ESO's twilight template (stars are too faint in twilight to matter: none here).
    """
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    response = _pixel_response(flat_seed)
    start = Time(mjd, format="mjd").isot[:19]
    out = []
    n = len(levels)
    for i, level in enumerate(levels):
        t = mjd + i * 60 / 86400
        chips = [_noisy(level * GAIN * response[k] + DARK_CURRENT * DIT, rng) for k in range(4)]
        h = _primary(catg="CALIB", typ="FLAT", tech="IMAGE", mjd=t, tpl_start=start,
                     nexp=n, expno=i + 1, tpl_id="HAWKI_img_cal_SkyFlats",
                     pointing=FIELD.moved(10.0 * i, 10.0 * i), obj="FLAT")
        out.append(_write(d / f"HAWKI_FLAT_{i + 1:02d}.fits", h, chips, FIELD.moved(10.0 * i, 10.0 * i)))
    return out


#: Jitter pattern (arcsec, East/North), within the ~3.5" the star margin allows;
#: a sequence of n exposures takes the first n offsets.
JITTER = ((0.0, 0.0), (2.0, 1.5), (-1.8, 2.2), (1.2, -2.4), (-2.5, -1.0))


def write_science(directory: str | os.PathLike, stars: list[Star], *,
                  offsets=JITTER, seed: int = 3, flat_seed: int = 7,
                  mjd: float = 60001.1) -> list[pathlib.Path]:
    """A jittered sequence of the star field (OCA: SCIENCE / OBJECT / IMAGE).

    Each exposure's WCS (CRVAL) is the telescope pointing after its jitter offset, as
    in raw HAWK-I headers, so the sky position of every star is the same in all.
    """
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    response = _pixel_response(flat_seed)
    start = Time(mjd, format="mjd").isot[:19]
    sigma = SEEING_FWHM / 0.106 / 2.3548
    yy, xx = np.mgrid[0:CHIP_SIZE, 0:CHIP_SIZE]
    out = []
    for i, (dra, ddec) in enumerate(offsets):
        pointing = FIELD.moved(dra, ddec)
        t = mjd + i * 40 / 86400
        chips = []
        for k in range(4):
            w = chip_wcs(k + 1, pointing, distorted=True)
            image = np.full((CHIP_SIZE, CHIP_SIZE), SKY_LEVEL)
            ra = np.array([s.ra for s in stars])
            dec = np.array([s.dec for s in stars])
            x, y = w.wcs_world2pix(ra, dec, 0)
            on = (x > -20) & (x < CHIP_SIZE + 20) & (y > -20) & (y < CHIP_SIZE + 20)
            for xs, ys, s in zip(x[on], y[on], np.array(stars, dtype=object)[on]):
                flux = 10 ** (-0.4 * (s.mag - ZERO_POINT)) * DIT  # ADU
                x0, x1 = max(int(xs) - 15, 0), min(int(xs) + 16, CHIP_SIZE)
                y0, y1 = max(int(ys) - 15, 0), min(int(ys) + 16, CHIP_SIZE)
                if x0 >= x1 or y0 >= y1:
                    continue
                sub = np.exp(-((xx[y0:y1, x0:x1] - xs) ** 2 + (yy[y0:y1, x0:x1] - ys) ** 2)
                             / (2 * sigma ** 2))
                image[y0:y1, x0:x1] += flux * sub / (2 * np.pi * sigma ** 2)
            electrons = image * GAIN * response[k] + DARK_CURRENT * DIT
            chips.append(_noisy(electrons, rng))
        h = _primary(catg="SCIENCE", typ="OBJECT", tech="IMAGE", mjd=t, tpl_start=start,
                     nexp=len(offsets), expno=i + 1, tpl_id="HAWKI_img_obs_AutoJitter",
                     pointing=pointing, obj="SYNTHETIC-FIELD")
        out.append(_write(d / f"HAWKI_OBJECT_{i + 1:02d}.fits", h, chips, pointing))
    return out


# ---------------------------------------------------------------------------------
# Static calibrations
# ---------------------------------------------------------------------------------
def write_catalogue(path: str | os.PathLike, stars: list[Star]) -> pathlib.Path:
    """The stars as a local standard catalogue (MASTER_LOCAL_CATALOGUE_ASTROM and
    _PHOTOM).

    SRC casu_getstds.c (casu_local_extract) reads extension 1, selects on columns
    ``RA`` and ``Dec`` (double, degrees); casu_catpars takes the catalogue's name
    from the primary keyword CATNAME; hawki_science_process matches the extension's
    EXTNAME against the PHOTCAL_TAB extensions; casu_photcal_extinct reads the
    magnitude columns the photometric table names as float.
    """
    cols = [fits.Column("RA", "D", unit="deg", array=[s.ra for s in stars]),
            fits.Column("Dec", "D", unit="deg", array=[s.dec for s in stars]),
            fits.Column("Ksmag", "E", array=[s.mag for s in stars]),
            fits.Column("Ksmag_err", "E", array=[0.02] * len(stars))]
    primary = fits.PrimaryHDU()
    primary.header["CATNAME"] = (CATALOGUE_NAME, "SRC casu_catpars")
    primary.header["INSTRUME"] = "HAWKI"
    table = fits.BinTableHDU.from_columns(cols, name=CATALOGUE_NAME)
    path = pathlib.Path(path)
    fits.HDUList([primary, table]).writeto(path, overwrite=True)
    return path


def write_photcal_table(path: str | os.PathLike) -> pathlib.Path:
    """PHOTCAL_TAB: one extension per catalogue (EXTNAME = catalogue name, header
    PHOTOSYS), one row per filter with the columns casu_photcal_extinct.c
    (casu_phot_open) requires: filter_name, atm_extcoef, mag_offset, coleq_columns,
    coleq_errcols, coleq_coefs, gal_extcoef, default_zp, default_zp_err."""
    cols = [fits.Column("filter_name", "16A", array=[FILTER]),
            fits.Column("atm_extcoef", "E", array=[0.07]),  # Ks extinction, mag/airmass
            fits.Column("mag_offset", "E", array=[0.0]),
            fits.Column("coleq_columns", "32A", array=["Ksmag"]),
            fits.Column("coleq_errcols", "32A", array=["Ksmag_err"]),
            fits.Column("coleq_coefs", "32A", array=["1.0"]),
            fits.Column("gal_extcoef", "E", array=[0.35]),
            fits.Column("default_zp", "E", array=[ZERO_POINT]),
            fits.Column("default_zp_err", "E", array=[0.1])]
    table = fits.BinTableHDU.from_columns(cols, name=CATALOGUE_NAME)
    table.header["PHOTOSYS"] = ("VEGA", "SRC hawki_science_process reads it")
    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"] = "HAWKI"
    primary.header["HIERARCH ESO PRO CATG"] = ("PHOTCAL_TAB", "reflex/hawki.oca")
    path = pathlib.Path(path)
    fits.HDUList([primary, table]).writeto(path, overwrite=True)
    return path


def write_dust_maps(directory: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """SCHLEGEL_MAP_NORTH/SOUTH: E(B-V) images in the primary HDU. SRC
    casu_photcal_extinct.c (getextinct) clamps the looked-up pixel to the image, so a
    2 x 2 map of zeros means no Galactic extinction anywhere."""
    d = pathlib.Path(directory)
    out = []
    for hemi in ("NORTH", "SOUTH"):
        h = fits.PrimaryHDU(np.zeros((2, 2), np.float32))
        h.header["INSTRUME"] = "HAWKI"
        h.header["HIERARCH ESO PRO CATG"] = (f"SCHLEGEL_MAP_{hemi}", "reflex/hawki.oca")
        path = d / f"SCHLEGEL_MAP_{hemi}.fits"
        h.writeto(path, overwrite=True)
        out.append(path)
    return out[0], out[1]


def write_dataset(directory: str | os.PathLike, *, seed: int = 1, per_chip: int = 30,
                  n_object: int = 3, processes: int = 1) -> dict[str, list[pathlib.Path]]:
    """Everything the dark -> flat -> read-gain -> science chain reads, by tag.

    The fewest frames that the pipeline's rules and recipes take: 3 darks and 3
    flats (OCA: TPL NEXP > 2), and ``n_object`` jittered exposures (the first
    offsets of :data:`JITTER`). Three by default, the fewest hawki_sci_jitter
    stacks correctly: below its ``sky_par`` minimum of 10 frames its sky is the
    per-pixel median of the exposures (recipes/hawki_sci_jitter.c:1120), and the
    median of two exposures is their mean, half of every star. The current chain
    runs on two of them (tests/test_hawki.py says why).

    ``processes`` > 1 writes darks, flats and exposures in that many processes
    (spawned, so a parent with threads is safe): the same files, each kind has its
    own random seed.

    Returns
    -------
    dict
        ``{"DARK": [...], "FLAT_TWILIGHT": [...], "OBJECT": [...],
        "MASTER_LOCAL_CATALOGUE_ASTROM": [...], "MASTER_LOCAL_CATALOGUE_PHOTOM":
        [...], "PHOTCAL_TAB": [...], "SCHLEGEL_MAP_NORTH": [...],
        "SCHLEGEL_MAP_SOUTH": [...]}`` plus ``"stars"``: the injected :class:`Star` list.

    Examples
    --------
    >>> data = write_dataset("raw/")                     # doctest: +SKIP
    >>> len(data["OBJECT"])                              # doctest: +SKIP
    3
    """
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    stars = star_field(per_chip=per_chip, seed=seed)
    cat = write_catalogue(d / "HAWKI_STAR_CATALOGUE.fits", stars)
    north, south = write_dust_maps(d)
    jobs = {"DARK": (write_darks, (d,), {"seed": seed + 10}),
            "FLAT_TWILIGHT": (write_twilight_flats, (d,), {"seed": seed + 20}),
            "OBJECT": (write_science, (d, stars),
                       {"offsets": JITTER[:n_object], "seed": seed + 30})}
    if processes > 1:
        with concurrent.futures.ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            running = {tag: pool.submit(f, *args, **kw) for tag, (f, args, kw) in jobs.items()}
            raw = {tag: future.result() for tag, future in running.items()}
    else:
        raw = {tag: f(*args, **kw) for tag, (f, args, kw) in jobs.items()}
    return {
        **raw,
        "MASTER_LOCAL_CATALOGUE_ASTROM": [cat],
        "MASTER_LOCAL_CATALOGUE_PHOTOM": [cat],
        "PHOTCAL_TAB": [write_photcal_table(d / "HAWKI_PHOTCAL_TAB.fits")],
        "SCHLEGEL_MAP_NORTH": [north],
        "SCHLEGEL_MAP_SOUTH": [south],
        "stars": stars,
    }
