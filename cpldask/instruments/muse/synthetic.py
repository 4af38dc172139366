"""Synthetic raw MUSE frames and static calibration tables.

The frames written here are accepted by the real MUSE pipeline recipes (tested
with the Debian package ``cpl-plugin-muse`` 2.8.7).  They are full size — the
recipes refuse smaller detectors — but tile compression (RICE) keeps a noisy
frame at about a quarter of its 36 MB.

Everything is seeded: the same arguments give the same bytes.  No wall-clock
time enters a file (``DATE-OBS`` and ``MJD-OBS`` derive from the ``mjd``
argument), so generated data can be cached and compared.

This module imports only numpy, astropy and the standard library because it
runs on Dask workers too.

Example
-------
>>> from cpldask import synthetic
>>> files = synthetic.write_bias("/tmp/bias", n=3, ifus=(1,))   # doctest: +SKIP
>>> [f.name for f in files]                                      # doctest: +SKIP
['BIAS_01.fits', 'BIAS_02.fits', 'BIAS_03.fits']
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time

__all__ = [
    # geometry and models
    "NX", "NY", "RAW_NX", "RAW_NY", "N_SLICES", "KINDS", "Kind", "CcdMaps",
    "DPR_TECH", "INS_MODES", "VERSION",
    "trimmed_to_raw", "wavelength", "row_of", "slice_edges", "sky_slice_position",
    "ccd_maps", "clear_caches", "arc_lines", "lamp_keywords",
    # the star
    "STAR_FIELD_X", "STAR_FWHM", "STAR_FLUX_OBJECT", "STAR_FLUX_STD",
    "star_position", "star_pixel", "std_flux", "pointing",
    # writers
    "primary_header", "write_raw", "write_bias", "write_arcs", "write_lingain", "write_object",
    "write_line_catalog", "write_geometry_table", "write_sky_lines",
    "write_extinct_table", "write_std_flux_table", "make_exposure", "write_dithered",
    # dithered exposures of a star field
    "STAR_FIELD", "EMPTY_SKY_X", "POINTING_ERRORS", "field_shift", "star_field",
    # a data set of two nights
    "DatasetFrame", "dataset_frames", "write_dataset", "install_master", "master_name",
    "DATASET_TARGETS", "DATASET_MASTERS", "DITHERS", "WFM_AO_TEMPLATE",
]

#: Version of the files this module writes: raised whenever their headers or
#: pixels change, so that data made once and kept (the demo, the benchmarks)
#: are made anew. 2: DPR TECH IFU, documented template IDs, TPL START/NEXP.
#: 3: star fields (`star_field`), the data set's dithers with pointing errors.
VERSION = 3

# --------------------------------------------------------------------------
# Detector geometry (one IFU = one CCD = one FITS image extension "CHANnn").
# --------------------------------------------------------------------------
#: Trimmed (illuminated) detector size in x and y.
NX, NY = 4096, 4112
#: Size of one output (quadrant) in the trimmed image.
OUT_NX, OUT_NY = NX // 2, NY // 2
#: Width of prescan and overscan; the pipeline hard-codes 32 (kMusePreOverscanSize).
SCAN = 32
#: Raw size: each output adds one prescan (outer edge) and one overscan (centre).
RAW_NX, RAW_NY = NX + 4 * SCAN, NY + 4 * SCAN
#: Slices per CCD (kMuseSlicesPerCCD).
N_SLICES = 48

#: Per-output electronics, outputs numbered as in the ESO headers:
#: 1 lower left, 2 lower right, 3 upper right, 4 upper left.  Slightly different
#: values per output so that a recipe mixing up quadrants would show it.
GAIN = (1.10, 1.12, 1.08, 1.11)          # e-/ADU
RON = (2.5, 2.4, 2.6, 2.5)               # e-
BIAS_LEVEL = (1000.0, 1004.0, 997.0, 1006.0)  # ADU
#: Read-out port of each output in trimmed pixel coordinates (1-based), which
#: is how the pipeline identifies quadrants (OUTn X/Y must be 1 or NX/NY).
OUT_PORT = ((1, 1), (NX, 1), (NX, NY), (1, NY))

#: Fixed chip date: a real keyword the pipeline copies, kept constant for
#: reproducibility.
_CHIP_DATE = "2014-01-01"


def _quadrant_slices() -> list[tuple[slice, slice, slice, slice]]:
    """Map each output to (trimmed y, trimmed x, raw y, raw x) slices.

    Trimmed x <= 2048 sits at raw x + 32 and x > 2048 at raw x + 96 (one
    prescan, or one prescan plus two overscans); the same rule holds in y.
    """
    lo_t, hi_t = slice(0, OUT_NX), slice(OUT_NX, NX)
    lo_r, hi_r = slice(SCAN, SCAN + OUT_NX), slice(OUT_NX + 3 * SCAN, NX + 3 * SCAN)
    lo_ty, hi_ty = slice(0, OUT_NY), slice(OUT_NY, NY)
    lo_ry, hi_ry = slice(SCAN, SCAN + OUT_NY), slice(OUT_NY + 3 * SCAN, NY + 3 * SCAN)
    return [
        (lo_ty, lo_t, lo_ry, lo_r),  # output 1, lower left
        (lo_ty, hi_t, lo_ry, hi_r),  # output 2, lower right
        (hi_ty, hi_t, hi_ry, hi_r),  # output 3, upper right
        (hi_ty, lo_t, hi_ry, lo_r),  # output 4, upper left
    ]


def _quadrant_raw_boxes() -> list[tuple[slice, slice]]:
    """Raw (y, x) region of each output including its pre- and overscans."""
    hx, hy = RAW_NX // 2, RAW_NY // 2
    return [
        (slice(0, hy), slice(0, hx)),
        (slice(0, hy), slice(hx, RAW_NX)),
        (slice(hy, RAW_NY), slice(hx, RAW_NX)),
        (slice(hy, RAW_NY), slice(0, hx)),
    ]


def trimmed_to_raw(x: float, y: float) -> tuple[float, float]:
    """Convert 1-based trimmed pixel coordinates to 1-based raw coordinates.

    Parameters
    ----------
    x, y : float
        Position in the trimmed 4096 x 4112 image (FITS convention, 1-based).

    Returns
    -------
    tuple of float
        The same position in the raw 4224 x 4240 frame.

    Examples
    --------
    >>> trimmed_to_raw(1, 1)
    (33, 33)
    >>> trimmed_to_raw(2049, 2057)
    (2145, 2153)
    """
    rx = x + SCAN if x <= OUT_NX else x + 3 * SCAN
    ry = y + SCAN if y <= OUT_NY else y + 3 * SCAN
    return rx, ry


# --------------------------------------------------------------------------
# Frame kinds: the DPR keywords and the illumination model of each raw type.
# --------------------------------------------------------------------------
#: Signature of an illumination model: (ifu, rng, options) -> trimmed image in
#: electrons (float32, shape (NY, NX)) or None for an unexposed detector.
Illumination = Callable[[int, np.random.Generator, Mapping[str, Any]], "np.ndarray | None"]


#: ``ESO DPR TECH`` of every MUSE raw frame: ESO's MUSE calibration page
#: (www.eso.org/observing/dfo/quality/MUSE/pipeline/pipe_calib.html, "Raw CALIB
#: data types") lists IFU for each type, and the pipeline's own data organiser
#: rules (calib/gasgano/config/muse.oca, reflex/muse_wkf.oca) classify only
#: frames with DPR.TECH == "IFU".
DPR_TECH = "IFU"

#: The values of ``ESO INS MODE``: wide field without and with AO, nominal (N)
#: or extended (E) wavelength range, and the narrow field (always AO, nominal).
#: The pipeline tells them apart in muse_pfits_get_mode() (muse/muse_pfits.c);
#: ESO's Reflex rules (reflex/muse_wkf.oca) name WFM-AO-N, WFM-AO-E, NFM-AO-N and
#: the on-line rules (calib/gasgano/config/muse.oca) WFM-NOAO-E.
INS_MODES = ("WFM-NOAO-N", "WFM-NOAO-E", "WFM-AO-N", "WFM-AO-E", "NFM-AO-N")


@dataclasses.dataclass(frozen=True)
class Kind:
    """Description of one raw frame type.

    Attributes
    ----------
    tag : str
        Tag under which the pipeline expects the frame (``DO CATG``).
    catg, type : str
        ``ESO DPR CATG/TYPE`` as real frames of this type carry them (the
        pipeline's ``recipes/muse_raw_frames.xml``; see docs/reduce.md).
    template : str
        ``ESO TPL ID`` of the template that takes such frames
        (``recipes/muse_raw_frames.xml``).
    tech : str
        ``ESO DPR TECH``: `DPR_TECH` for every MUSE raw type.
    exptime : float
        Default exposure time [s].
    illumination : callable or None
        Model of the light falling on the detector, see `Illumination`.
    header : callable or None
        ``options -> dict`` of extra primary keywords: lamp states, and for
        on-sky kinds the pointing and ambient conditions.
    """

    tag: str
    catg: str
    type: str
    template: str
    tech: str = DPR_TECH
    exptime: float = 0.0
    illumination: Illumination | None = None
    header: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None


#: Registry of frame kinds known to `write_raw`; filled below the models.
KINDS: dict[str, Kind] = {}


def _register(kind: Kind) -> Kind:
    KINDS[kind.tag] = kind
    return kind


# --------------------------------------------------------------------------
# Optical model: slices on the CCD, wavelength along y, position on the sky.
# --------------------------------------------------------------------------
#: Wavelength of trimmed row y = 1 [Angstrom] and the dispersion [A/pixel].
#: 1.25 A/pix is the pipeline's assumed sampling (kMuseSpectralSamplingA); the
#: arc-line pattern matching only searches within a few per cent of it.
LAMBDA0, DISPERSION = 4500.0, 1.25
#: Slice layout on the CCD: first left edge, pitch and width [pixels].  The
#: tracing expects slice widths of 72.2-82.2 pixels (kMuseSliceLo/HiLikelyWidth).
SLICE_X0, SLICE_PITCH, SLICE_WIDTH = 100.0, 82.0, 78.0
#: Edge softness (logistic scale) [pixels]: real slice edges are not sharp.
SLICE_EDGE = 0.7
#: Nominal slice length on the sky in geometry-table pixels (0.2 arcsec), which
#: the pipeline uses to convert CCD x to sky x (kMuseSliceNominalWidth).
SKY_SLICE_WIDTH = 75.0
#: CCD slice number (1..48) -> sky slice number, copied from the pipeline's
#: kMuseGeoSliceSky (muse_instrument.h): it is how real data are wired.
SLICE_SKY = (
    9, 8, 1, 10, 7, 2, 11, 6, 3, 12, 5, 4,
    21, 20, 13, 22, 19, 14, 23, 18, 15, 24, 17, 16,
    33, 32, 25, 34, 31, 26, 35, 30, 27, 36, 29, 28,
    45, 44, 37, 46, 43, 38, 47, 42, 39, 48, 41, 40,
)


def wavelength(y: np.ndarray | float) -> np.ndarray | float:
    """Wavelength [A] at 1-based trimmed row ``y`` (same in every slice)."""
    return LAMBDA0 + DISPERSION * (np.asarray(y) - 1.0)


def row_of(lam: np.ndarray | float) -> np.ndarray | float:
    """1-based trimmed row where wavelength ``lam`` [A] falls."""
    return 1.0 + (np.asarray(lam) - LAMBDA0) / DISPERSION


def slice_edges(ifu: int, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Left and right edges (1-based trimmed x, half-light points) of all slices.

    Slices are slightly tilted (1.5 pixels over the CCD height) and shifted by
    a pixel or two per IFU, so the trace polynomials have something to fit and
    IFUs are not identical.

    Returns
    -------
    tuple of numpy.ndarray
        Arrays of shape ``(48,) + np.shape(y)``.
    """
    y = np.asarray(y, dtype=np.float64)
    shift = (ifu % 5) * 0.6 + 1.5 * (y / NY - 0.5)
    left = SLICE_X0 + SLICE_PITCH * np.arange(N_SLICES).reshape((-1,) + (1,) * y.ndim) + shift
    return left, left + SLICE_WIDTH


def sky_slice_position(ifu: int, sky_slice: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """Field position (x, y) [0.2" pixels] of a slice centre, as in GEOMETRY_TABLE.

    The field is 300 x 288 pixels: four slicer stacks of 75 pixels side by side
    in x, and per IFU 12 slices of one pixel height in y, IFU 1 at the top.
    """
    s = np.asarray(sky_slice) - 1
    x = (s // 12 - 1.5) * SKY_SLICE_WIDTH
    y = 143.5 - 12.0 * (ifu - 1) - (s % 12)
    return x.astype(np.float64), np.asarray(y, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class CcdMaps:
    """Per-pixel maps of one IFU's trimmed CCD, computed once and reused.

    Attributes
    ----------
    profile : numpy.ndarray
        Fraction of each pixel inside a slice (0..1, soft edges), float32.
    field_x, field_y : numpy.ndarray
        Field position [0.2" pixels] the pipeline will assign to the pixel
        (NaN outside slices), float32.  Computed exactly like
        ``muse_pixtable_create``: x = slice_x + (xcentre - i) / width * 75.
    """

    profile: np.ndarray
    field_x: np.ndarray
    field_y: np.ndarray


_MAPS_CACHE: dict[int, CcdMaps] = {}


def ccd_maps(ifu: int) -> CcdMaps:
    """Slice profile and field coordinates of every pixel of one IFU.

    Cached per IFU (about 200 MB each) because every illuminated frame type
    needs them; the cache holds at most two IFUs to bound memory on workers.
    """
    if ifu in _MAPS_CACHE:
        return _MAPS_CACHE[ifu]
    y = np.arange(1, NY + 1, dtype=np.float64)
    left, right = slice_edges(ifu, y)                 # (48, NY)
    xs = np.arange(1, NX + 1, dtype=np.float32)
    profile = np.zeros((NY, NX), np.float32)
    fx = np.full((NY, NX), np.nan, np.float32)
    fy = np.full((NY, NX), np.nan, np.float32)
    for k in range(N_SLICES):
        lo = int(np.floor(left[k].min())) - 8
        hi = int(np.ceil(right[k].max())) + 8
        x = xs[lo - 1:hi][None, :]
        l = left[k][:, None].astype(np.float32)
        r = right[k][:, None].astype(np.float32)
        # Product of two logistic edges: half light at the nominal edge.
        prof = 1.0 / ((1.0 + np.exp((l - x) / SLICE_EDGE)) * (1.0 + np.exp((x - r) / SLICE_EDGE)))
        profile[:, lo - 1:hi] += prof.astype(np.float32)
        sx, sy = sky_slice_position(ifu, SLICE_SKY[k])
        inside = prof > 0.5
        # Sky x runs opposite to CCD x within a slice (pipeline convention).
        dx = ((l + r) / 2 - x) / (r - l) * SKY_SLICE_WIDTH + np.float32(sx)
        fx[:, lo - 1:hi] = np.where(inside, dx, fx[:, lo - 1:hi])
        fy[:, lo - 1:hi] = np.where(inside, np.float32(sy), fy[:, lo - 1:hi])
    for a in (profile, fx, fy):
        a.setflags(write=False)
    maps = CcdMaps(profile, fx, fy)
    if len(_MAPS_CACHE) >= 2:
        _MAPS_CACHE.pop(next(iter(_MAPS_CACHE)))
    _MAPS_CACHE[ifu] = maps
    return maps


def clear_caches() -> None:
    """Free the cached per-IFU maps (about 200 MB per IFU) of `ccd_maps`."""
    _MAPS_CACHE.clear()


def _prnu(ifu: int, seed: int) -> np.ndarray:
    """Fixed pixel-to-pixel sensitivity (1 % rms) of one CCD, so flat-fielding
    has something real to correct and all exposures share it."""
    rng = np.random.default_rng([seed, 0x50524E55, ifu])
    p = rng.standard_normal((NY, NX), dtype=np.float32)
    p *= np.float32(0.01)
    p += np.float32(1.0)
    return p


def _spectrum_rows(shape: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Evaluate a continuum shape at each row's wavelength, as a column vector."""
    lam = wavelength(np.arange(1, NY + 1, dtype=np.float64))
    return shape(lam).astype(np.float32)[:, None]


def _line_rows(lambdas: Sequence[float], fluxes: Sequence[float],
               sigma: float = 1.0) -> np.ndarray:
    """1-D emission-line spectrum along y (e- per pixel), column vector.

    Each line is a Gaussian of ``sigma`` pixels (FWHM 2.35 px, i.e. about
    2.9 A, close to MUSE's LSF) integrated over the pixel by 5-fold
    supersampling; ``fluxes`` are the integrated line fluxes.
    """
    spec = np.zeros(NY, np.float64)
    sub = (np.arange(5) - 2) / 5.0
    for lam, flux in zip(lambdas, fluxes):
        yc = row_of(lam)
        if not (-10 < yc < NY + 10):
            continue
        lo, hi = max(int(yc) - 8, 1), min(int(yc) + 9, NY)
        y = np.arange(lo, hi + 1, dtype=np.float64)
        g = np.exp(-0.5 * ((y[:, None] + sub[None, :] - yc) / sigma) ** 2).mean(axis=1)
        spec[lo - 1:hi] += flux * g / (sigma * np.sqrt(2 * np.pi))
    return spec.astype(np.float32)[:, None]


def _lamp_continuum(lam: np.ndarray) -> np.ndarray:
    """Smooth halogen-lamp-like shape, peaking in the red, never below 40 %."""
    return 0.4 + 0.6 * np.exp(-0.5 * ((lam - 7500.0) / 2000.0) ** 2)


def _solar_continuum(lam: np.ndarray) -> np.ndarray:
    """Twilight (scattered sunlight) shape: bright in the blue, falling to red."""
    return (lam / 5000.0) ** -2.0


def _illum_lamp_flat(ifu: int, rng: np.random.Generator, opt: Mapping[str, Any]) -> np.ndarray:
    """Continuum lamp through every slice (FLAT, ILLUMFLAT, LINGAIN_LAMP_ON)."""
    level = float(opt.get("level", 20000.0))
    maps = ccd_maps(ifu)
    img = maps.profile * _spectrum_rows(_lamp_continuum)
    img *= np.float32(level)
    img *= _prnu(ifu, int(opt.get("seed", 0)))
    return img


# --------------------------------------------------------------------------
# Arc lamps.
# --------------------------------------------------------------------------
#: Laboratory air wavelengths [A] of arc lines in the MUSE range, per lamp.
#: Ion names follow the pipeline's LINE_CATALOG ("HgI"/"CdI" -> lamp HgCd).
_ARC_LINES: dict[str, tuple[tuple[float, str], ...]] = {
    "HgCd": (
        (4678.149, "CdI"), (4799.912, "CdI"), (4916.068, "HgI"),
        (5085.822, "CdI"), (5460.735, "HgI"), (5769.598, "HgI"),
        (5790.663, "HgI"), (6438.470, "CdI"), (6907.461, "HgI"),
        (7081.880, "HgI"), (7346.373, "CdI"), (7728.820, "HgI"),
        (8014.786, "HgI"), (8521.120, "HgI"), (9122.967, "HgI"),
    ),
    "Ne": tuple((lam, "NeI") for lam in (
        4837.314, 5037.751, 5330.778, 5400.562, 5852.488, 5881.895, 5944.834,
        5975.534, 6029.997, 6074.338, 6096.163, 6143.063, 6163.594, 6217.281,
        6266.495, 6304.789, 6334.428, 6382.992, 6402.248, 6506.528, 6532.882,
        6598.953, 6678.276, 6717.043, 6929.467, 7032.413, 7173.938, 7245.167,
        7438.898, 7488.871, 7535.774, 8082.458, 8136.406, 8300.326, 8377.607,
        8418.427, 8495.360, 8591.259, 8634.647, 8654.383, 8780.622, 8853.867,
        9148.672, 9201.759, 9300.853)),
    "Xe": tuple((lam, "XeI") for lam in (
        4624.276, 4671.226, 4734.152, 4807.019, 4843.294, 4923.152, 5028.280,
        6318.062, 6469.705, 6498.717, 6595.561, 6668.920, 6728.008, 6827.315,
        6882.155, 6925.530, 7119.598, 7386.003, 7584.680, 7642.025, 7802.651,
        7887.393, 7967.342, 8061.339, 8206.336, 8231.634, 8266.520, 8280.116,
        8346.822, 8409.189, 8576.012, 8648.540, 8739.370, 8819.410, 8862.316,
        8908.730, 8930.830, 8952.250, 9045.446, 9162.652)),
}
#: Calibration-unit lamp numbering of real MUSE headers: 3 Ne, 4 Xe, 5 HgCd
#: (ESO's MUSE calibration page pipe_calib.html: "Ne: INS.SHUT3.ST=T, Xe:
#: INS.SHUT4.ST=T, HgCd: INS.SHUT5.ST=T"; the pipeline maps CU-LAMP3/4/5 to
#: these names in muse_utils_header_get_lamp_names). Lamp 1 as the continuum
#: lamp is this generator's choice: no document found names it.
_LAMP_NUMBER = {"Ne": 3, "Xe": 4, "HgCd": 5, "continuum": 1}


def _line_flux(lam: float) -> float:
    """Deterministic 'random' integrated line flux [e-] between 5e3 and 8e4.

    Derived from the wavelength alone (integer hashing, identical on every
    platform) so the frames and LINE_CATALOG agree without sharing state.
    """
    u = ((int(round(lam * 1000.0)) * 2654435761) % 2**32) / 2**32
    return float(5000.0 * 16.0 ** u)


#: Lines fainter than this [e-] get quality 1 in LINE_CATALOG: used for
#: pattern matching only, as in the real catalog.  It also keeps muse_lsf,
#: whose run time grows with the number of quality >= 3 lines, shorter.
FAINT_LINE_FLUX = 12000.0


def arc_lines(lamp: str) -> list[tuple[float, str, float]]:
    """Lines (lambda, ion, flux) of one lamp as put into the ARC frames.

    Lines closer than 8 A to a brighter line of the same lamp are dropped:
    on the detector they blend (FWHM ~3 A), and a blend identified as one of
    its components would bias the wavelength solution.
    """
    lines = [(lam, ion, _line_flux(lam)) for lam, ion in _ARC_LINES[lamp]]
    keep = []
    for lam, ion, flux in lines:
        if any(abs(lam - l2) < 8.0 and f2 > flux for l2, _, f2 in lines if l2 != lam):
            continue
        keep.append((lam, ion, flux))
    return keep


def lamp_keywords(on: Iterable[str]) -> dict[str, Any]:
    """``ESO INS LAMPi/SHUTi`` keywords with the named lamps on.

    Without these keywords ``muse_wavecal`` cannot tell which lines to expect
    and hangs in its pattern matching.  The pipeline counts a lamp as on only
    when both its ``LAMPi ST`` and its ``SHUTi ST`` are true
    (muse_utils_header_get_lamp_names), so both are written.
    """
    on_numbers = {_LAMP_NUMBER[name] for name in on}
    kw: dict[str, Any] = {"ESO INS LAMPNUM": 6}
    for i in range(1, 7):
        kw[f"ESO INS LAMP{i} NAME"] = f"CU-LAMP{i}"
        kw[f"ESO INS LAMP{i} ST"] = i in on_numbers
        kw[f"ESO INS SHUT{i} NAME"] = f"CU-SHUT{i}"
        kw[f"ESO INS SHUT{i} ST"] = i in on_numbers
    return kw


def _illum_arc(ifu: int, rng: np.random.Generator, opt: Mapping[str, Any]) -> np.ndarray:
    """Emission lines of one lamp through every slice (ARC)."""
    lines = arc_lines(opt["lamp"])
    spec = _line_rows([l[0] for l in lines], [l[2] for l in lines])
    img = ccd_maps(ifu).profile * spec
    img *= _prnu(ifu, int(opt.get("seed", 0)))
    return img


# --------------------------------------------------------------------------
# On-sky light: twilight, night sky, and a star at a known field position.
# --------------------------------------------------------------------------
#: Paranal, as in real MUSE headers (ESO TEL GEOLAT/GEOLON/GEOELEV).
SITE_LAT, SITE_LON, SITE_ELEV = -24.627, -70.4045, 2648.0
#: Gaussian PSF FWHM of the synthetic star [0.2" field pixels] (0.8").
STAR_FWHM = 4.0
#: Field x of the star [0.2" pixels]: inside a slicer stack (stack centres are
#: at -112.5, -37.5, 37.5, 112.5), away from the stack borders.
STAR_FIELD_X = 30.0

#: Night-sky emission lines (air wavelengths [A]) and their integrated flux
#: [e- per CCD pixel column in the default 600 s OBJECT]; ``group`` follows
#: SKY_LINES: one group per species/band. The wavelengths are measured ones: the
#: [OI] 5577/6300/6364, NaI D and OH Meinel-band lines as Osterbrock et al.
#: 1996 (PASP 108, 277,
#: "Night-sky high-resolution spectral atlas of OH and O2 emission lines") list
#: them, in air. ESO's own SKY_LINES table (sky_lines.fits of the pipeline's static
#: calibrations, Debian's cpl-plugin-muse-calib, which downloads them from ESO) is
#: not on this machine to compare with. The fluxes are this generator's choice
#: (the strongest line, the one tests measure, is [OI] 5577).
_SKY_LINES: tuple[tuple[str, int, float, float], ...] = (
    ("OI", 0, 5577.338, 6000.0),
    ("NaI", 1, 5889.950, 800.0), ("NaI", 1, 5895.924, 600.0),
    ("OI", 2, 6300.304, 2500.0), ("OI", 2, 6363.776, 800.0),
    ("OH", 3, 6863.955, 1200.0), ("OH", 3, 6923.220, 900.0),
    ("OH", 4, 7316.282, 1500.0), ("OH", 4, 7340.885, 1300.0),
    ("OH", 5, 7750.640, 1800.0), ("OH", 5, 7794.112, 1700.0),
    ("OH", 5, 7821.503, 1200.0), ("OH", 5, 7913.708, 1600.0),
    ("OH", 5, 7993.332, 2000.0),
    ("OH", 6, 8344.602, 3000.0), ("OH", 6, 8399.170, 2500.0),
    ("OH", 6, 8430.174, 2400.0),
    ("OH", 7, 8761.314, 2000.0), ("OH", 7, 8767.912, 1800.0),
    ("OH", 7, 8885.850, 3500.0), ("OH", 7, 8919.533, 1500.0),
    ("OH", 7, 8958.103, 2800.0),
)


def star_position(ifus: Iterable[int]) -> tuple[float, float]:
    """Field position (x, y) [0.2" pixels] of the synthetic star.

    The star is put at `STAR_FIELD_X` and, in y, at the middle of the field
    covered by ``ifus`` (IFU k covers y = 144 - 12 k ... 156 - 12 k), so that
    it lies on the reconstructed field whatever IFUs are simulated.  With
    ``ifus=(1, 2)`` this is the border of IFUs 1 and 2, so the star is split
    between two CCDs and its position in IMAGE_FOV tests that the IFUs are
    put together correctly.

    Examples
    --------
    >>> star_position((1, 2))
    (30.0, 132.0)
    """
    ifus = tuple(ifus)
    top = 144.0 - 12.0 * (min(ifus) - 1)
    bottom = 144.0 - 12.0 * max(ifus)
    return STAR_FIELD_X, (top + bottom) / 2.0


def _star_spectrum(lam: np.ndarray) -> np.ndarray:
    """Shape of the star's spectrum (relative, e- per pixel): a warm star."""
    return (lam / 6000.0) ** -1.0


def _field_gradient(maps: CcdMaps) -> np.ndarray:
    """Smooth +-3 % illumination gradient over the field, for sky light.

    The lamp flats do not have it, so the twilight correction has something
    to measure.
    """
    # np.where instead of np.nan_to_num: the latter also scans for infinities
    # and is several times slower on 17 million pixels.
    fx = np.where(np.isnan(maps.field_x), np.float32(0), maps.field_x)
    fx *= np.float32(0.03 / 150.0)
    fx += np.float32(1.0)
    return fx


def _illum_sky(ifu: int, rng: np.random.Generator, opt: Mapping[str, Any]) -> np.ndarray:
    """Night sky (continuum + lines) and optionally a star (OBJECT, STD)."""
    maps = ccd_maps(ifu)
    scale = float(opt.get("exptime", 600.0)) / 600.0
    lines = _line_rows([l[2] for l in _SKY_LINES], [l[3] * scale for l in _SKY_LINES])
    sky = _spectrum_rows(lambda lam: 40.0 * scale * (lam / 6000.0) ** 0) + lines
    img = maps.profile * sky
    img *= _field_gradient(maps)
    # one star (star_flux at star_xy), or a field of them (stars: (x, y, flux) each)
    stars = list(opt.get("stars") or ())
    if float(opt.get("star_flux", 0.0)) > 0:
        stars.append((*opt["star_xy"], float(opt["star_flux"])))
    if stars:
        psf = np.zeros_like(maps.profile)
        for sx, sy, flux in stars:
            psf += _psf(maps, sx, sy, flux * scale)
        img += psf * _spectrum_rows(_star_spectrum)
    img *= _prnu(ifu, int(opt.get("seed", 0)))
    return img


def _psf(maps: CcdMaps, x: float, y: float, flux: float) -> np.ndarray:
    """A Gaussian star of `STAR_FWHM` at field position (x, y) with ``flux`` (e- per
    CCD row, summed over the PSF), per CCD pixel: the PSF's surface brightness at the
    field position the pipeline will assign, times the pixel's field area (75/78 x 1).
    Only the slices within 5 sigma of the star are computed (a slice's field y is
    one value)."""
    sigma = STAR_FWHM / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    out = np.zeros_like(maps.profile)
    near = np.abs(maps.field_y[NY // 2] - np.float32(y)) < 5 * sigma + 1  # columns
    cols = np.flatnonzero(near)
    if cols.size == 0:
        return out
    # the slices tilt by 1.5 pixels over the CCD (slice_edges): a margin
    lo, hi = max(cols.min() - 3, 0), min(cols.max() + 4, NX)
    fx, fy = maps.field_x[:, lo:hi], maps.field_y[:, lo:hi]
    r2 = (fx - np.float32(x)) ** 2 + (fy - np.float32(y)) ** 2
    r2[np.isnan(r2)] = np.float32(1e9)        # outside slices: no light
    psf = np.exp(r2 * np.float32(-0.5 / sigma ** 2))
    psf *= np.float32(flux * SKY_SLICE_WIDTH / SLICE_WIDTH / (2 * np.pi * sigma ** 2))
    psf *= maps.profile[:, lo:hi]
    out[:, lo:hi] = psf
    return out


def _illum_twilight(ifu: int, rng: np.random.Generator, opt: Mapping[str, Any]) -> np.ndarray:
    """Twilight sky: bright solar-like continuum with a field gradient (SKYFLAT)."""
    maps = ccd_maps(ifu)
    level = float(opt.get("level", 15000.0))
    img = maps.profile * _spectrum_rows(_solar_continuum)
    img *= np.float32(level)
    img *= _field_gradient(maps)
    img *= _prnu(ifu, int(opt.get("seed", 0)))
    return img


def _sidereal_deg(mjd: float) -> float:
    """Local sidereal time at Paranal [deg] (IAU 1982 GMST, ample here).

    Computed directly so that no IERS table has to be downloaded.
    """
    gmst = 280.46061837 + 360.98564736629 * (mjd - 51544.5)
    return (gmst + SITE_LON) % 360.0


def _telescope_keywords(opt: Mapping[str, Any]) -> dict[str, Any]:
    """Pointing and ambient keywords of an on-sky exposure.

    The telescope points at the zenith in the middle of the exposure (RA = LST,
    DEC = latitude): airmass 1 makes the differential atmospheric refraction
    vanish, so the star appears at the same place at all wavelengths and its
    expected position in IMAGE_FOV does not depend on the DAR model.
    """
    mjd, texp = float(opt["mjd"]), float(opt["exptime"])
    lst = _sidereal_deg(mjd + texp / 2.0 / 86400.0)
    lst_start = _sidereal_deg(mjd)
    return {
        "RA": round(lst, 6), "DEC": SITE_LAT, "EQUINOX": 2000.0, "RADESYS": "FK5",
        "LST": round(lst_start / 15.0 * 3600.0, 3),
        "ESO TEL AIRM START": 1.0, "ESO TEL AIRM END": 1.0,
        "ESO TEL ALT": 90.0, "ESO TEL AZ": 0.0,
        "ESO TEL PARANG START": 0.0, "ESO TEL PARANG END": 0.0,
        "ESO TEL GEOLAT": SITE_LAT, "ESO TEL GEOLON": SITE_LON,
        "ESO TEL GEOELEV": SITE_ELEV,
        "ESO TEL FOCU SCALE": 1.705,
        "ESO TEL AMBI PRES START": 744.0, "ESO TEL AMBI PRES END": 744.0,
        "ESO TEL AMBI TEMP": 12.0, "ESO TEL AMBI RHUM": 15.0,
        "ESO TEL AMBI FWHM START": 0.8, "ESO TEL AMBI FWHM END": 0.8,
        "ESO TEL IA FWHM": 0.8, "ESO TEL IA FWHMLIN": 0.8,
        "ESO INS DROT MODE": "SKY", "ESO INS DROT POSANG": 0.0,
        "ESO INS DROT START": 0.0, "ESO INS DROT END": 0.0,
        "ESO OBS TARG NAME": str(opt.get("target", "SYNTHETIC")),
    }


def _on_sky(lamps: Sequence[str] = ()) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Header builder for on-sky kinds: lamps and telescope."""
    def build(opt: Mapping[str, Any]) -> dict[str, Any]:
        return {**lamp_keywords(lamps), **_telescope_keywords(opt)}
    return build


def _calib(lamps: Sequence[str] = ()) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Header builder for calibration-unit kinds: lamps."""
    def build(opt: Mapping[str, Any]) -> dict[str, Any]:
        return lamp_keywords(lamps)
    return build


# DPR CATG/TYPE and template of each raw type as the pipeline documents real
# frames (recipes/muse_raw_frames.xml of cpl-plugin-muse 2.8.7) and ESO's MUSE
# calibration page lists them (pipe_calib.html); DPR TECH is IFU throughout.
# The table with every source is in docs/reduce.md ("Raw MUSE frames").
_register(Kind("BIAS", "CALIB", "BIAS", "MUSE_cal_bias", header=_calib()))
_register(Kind("DARK", "CALIB", "DARK", "MUSE_cal_dark", exptime=1800.0, header=_calib()))
_register(Kind("FLAT", "CALIB", "FLAT,LAMP", "MUSE_wfm_cal_specflat", exptime=10.0,
               illumination=_illum_lamp_flat, header=_calib(["continuum"])))
# Linearity/gain series. Lamp-off frames: muse_lingain tells them by DPR TYPE
# "BIAS,DETCHECK" (strncmp in recipes/muse_lingain.c; without it the recipe
# segfaults). Lamp-on frames: ESO's rules only say the type holds FLAT, DETCHAR
# and LINEARITY (calib/gasgano/config/muse.oca); this order and the template
# name are not documented. They come in equal-EXPTIME pairs.
_register(Kind("LINGAIN_LAMP_OFF", "CALIB", "BIAS,DETCHECK", "MUSE_wfm_cal_detlin",
               header=_calib()))
_register(Kind("LINGAIN_LAMP_ON", "CALIB", "FLAT,LAMP,DETCHAR,LINEARITY",
               "MUSE_wfm_cal_detlin", exptime=1.0, illumination=_illum_lamp_flat,
               header=_calib(["continuum"])))
# One lamp per arc exposure (Ne, Xe, HgCd), told apart by the lamp and shutter
# keywords (pipe_calib.html: "Ne: INS.SHUT3.ST=T ..."), see `lamp_keywords`.
_register(Kind("ARC", "CALIB", "WAVE", "MUSE_wfm_cal_wave", exptime=20.0,
               illumination=_illum_arc, header=lambda opt: _calib([opt["lamp"]])(opt)))
# The illumination flat: a single lamp flat taken at night at the start of an
# OB when the last one is more than an hour old or the temperature changed by
# more than 0.5 degrees, always in nominal mode (muse_raw_frames.xml, frame
# ILLUM). Basic processing checks this template ID (muse_basicproc.c).
_register(Kind("ILLUMFLAT", "CALIB", "FLAT,LAMP,ILLUM", "MUSE_wfm_cal_illum", exptime=5.0,
               illumination=_illum_lamp_flat, header=_on_sky(["continuum"])))
_register(Kind("SKYFLAT", "CALIB", "FLAT,SKY", "MUSE_wfm_cal_twilight", exptime=30.0,
               illumination=_illum_twilight, header=_on_sky()))
_register(Kind("OBJECT", "SCIENCE", "OBJECT", "MUSE_wfm-noao_obs_offset", exptime=600.0,
               illumination=_illum_sky, header=_on_sky()))
_register(Kind("STD", "CALIB", "STD", "MUSE_wfm_cal_std", exptime=60.0,
               illumination=_illum_sky, header=_on_sky()))


# --------------------------------------------------------------------------
# Generic raw-frame writer shared by every kind.
# --------------------------------------------------------------------------
def _hierarch(header: fits.Header, items: Mapping[str, Any]) -> None:
    """Set ESO keywords with an explicit HIERARCH prefix.

    Spelling out HIERARCH avoids astropy's "keyword too long" warning for
    every ESO keyword.
    """
    for key, value in items.items():
        if key.startswith("ESO "):
            header["HIERARCH " + key] = value
        else:
            header[key] = value


def _isot(mjd: float) -> str:
    """ISO date string of an MJD, rounded to milliseconds like ESO headers."""
    return Time(mjd, format="mjd", scale="utc").isot


def primary_header(kind: str, *, mjd: float = 60000.0, exptime: float | None = None,
                   index: int = 0, header: Mapping[str, Any] | None = None,
                   options: Mapping[str, Any] | None = None) -> fits.Header:
    """The primary header `write_raw` gives a frame of ``kind``, without its pixels.

    Parameters are those of `write_raw`.  Tests classify these headers without
    writing 36 MB per frame.

    Examples
    --------
    >>> h = primary_header("ARC", options={"lamp": "Ne"})
    >>> h["ESO DPR TYPE"], h["ESO DPR TECH"], h["ESO INS SHUT3 ST"]
    ('WAVE', 'IFU', True)
    """
    k = _kind(kind)
    texp = k.exptime if exptime is None else float(exptime)
    opts = {**(options or {}), "exptime": texp, "index": index, "mjd": mjd}
    hdr = fits.Header()
    date = _isot(mjd)
    items: dict[str, Any] = {
        "ORIGIN": "ESO-PARANAL",
        "TELESCOP": "ESO-VLT-U4",
        "INSTRUME": "MUSE",
        "OBJECT": k.tag,
        "DATE-OBS": date,
        "MJD-OBS": mjd,
        "EXPTIME": texp,
        # UTC of the start in seconds of day, as written by ESO.
        "UTC": round((mjd % 1.0) * 86400.0, 3),
        "ARCFILE": f"MUSE.{date}.fits",
        "ESO DPR CATG": k.catg,
        "ESO DPR TYPE": k.type,
        "ESO DPR TECH": k.tech,
        "ESO INS MODE": INS_MODES[0],
        "ESO DET READ CURID": 1,
        "ESO DET READ CURNAME": "SCI1.0",
        "ESO DET BINX": 1,
        "ESO DET BINY": 1,
        "ESO OBS NAME": f"synthetic-{k.tag.lower()}",
        "ESO OBS ID": 1000 + index,
        "ESO TPL ID": k.template,
        # Exposures of one template share TPL START ("defines which exposures are
        # to be grouped together", muse_raw_frames.xml); a set written by
        # `_write_set` overrides these three.
        "ESO TPL START": date,
        "ESO TPL NEXP": 1,
        "ESO TPL EXPNO": index + 1,
    }
    _hierarch(hdr, items)
    if k.header:
        _hierarch(hdr, k.header(opts))
    if header:
        _hierarch(hdr, header)
    return hdr


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind]


def _extension_header(ifu: int) -> fits.Header:
    """Header of the image extension of one IFU (detector description)."""
    hdr = fits.Header()
    items: dict[str, Any] = {
        "ESO DET CHIP NAME": f"SYNTH{ifu:02d}",
        "ESO DET CHIP ID": f"ESO-CCD-SYN{ifu:02d}",
        "ESO DET CHIP DATE": _CHIP_DATE,
        "ESO DET CHIP NX": NX,
        "ESO DET CHIP NY": NY,
        "ESO DET BINX": 1,
        "ESO DET BINY": 1,
        "ESO DET OUTPUTS": 4,
    }
    for n in range(4):
        px, py = OUT_PORT[n]
        o = f"ESO DET OUT{n + 1} "
        items.update({
            o + "X": px, o + "Y": py,
            o + "NX": OUT_NX, o + "NY": OUT_NY,
            o + "PRSCX": SCAN, o + "PRSCY": SCAN,
            o + "OVSCX": SCAN, o + "OVSCY": SCAN,
            o + "GAIN": GAIN[n], o + "RON": RON[n],
        })
    _hierarch(hdr, items)
    return hdr


def _rng(seed: int, kind: str, ifu: int, index: int) -> np.random.Generator:
    """Independent, reproducible stream per (seed, kind, IFU, frame index).

    Hashing the kind name with a stable function (not ``hash()``, which is
    salted per process) keeps results identical across interpreters.
    """
    code = int.from_bytes(kind.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([seed, code, ifu, index])


def _detector_image(electrons: np.ndarray | None, rng: np.random.Generator,
                    *, dark_rate: float, exptime: float,
                    hot: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Turn an illumination (e-) into a raw uint16 frame with pre/overscans.

    Photon noise uses the Gaussian approximation sqrt(N) * N(0, 1): it is an
    order of magnitude faster than ``rng.poisson`` on 17 million pixels and
    indistinguishable at the levels used here.
    """
    raw = rng.standard_normal((RAW_NY, RAW_NX), dtype=np.float32)  # unit read noise
    # Trimmed signal in electrons: light + dark current (+ hot pixels).
    signal = np.zeros((NY, NX), np.float32) if electrons is None else electrons.astype(np.float32, copy=True)
    if exptime > 0 and dark_rate > 0:
        signal += np.float32(dark_rate * exptime / 3600.0)
    if hot is not None:
        hy, hx, hrate = hot
        signal[hy, hx] += (hrate * exptime / 3600.0).astype(np.float32)
    np.maximum(signal, 0, out=signal)
    shot = rng.standard_normal((NY, NX), dtype=np.float32)
    shot *= np.sqrt(signal)
    signal += shot
    del shot
    for n, ((ty, tx, ry, rx), (by, bx)) in enumerate(zip(_quadrant_slices(), _quadrant_raw_boxes())):
        # Whole output box first (covers pre- and overscan): bias + read noise.
        box = raw[by, bx]
        box *= np.float32(RON[n] / GAIN[n])
        box += np.float32(BIAS_LEVEL[n])
        # Then the exposed pixels: add the signal converted to ADU.
        raw[ry, rx] += signal[ty, tx] / np.float32(GAIN[n])
    np.rint(raw, out=raw)
    np.clip(raw, 0, 65535, out=raw)
    return raw.astype(np.uint16)


def _hot_pixels(ifu: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed set of hot pixels per IFU (the same in every frame)."""
    rng = np.random.default_rng([seed, 0x484F54, ifu])
    n = 200
    return (rng.integers(0, NY, n), rng.integers(0, NX, n),
            rng.uniform(200.0, 5000.0, n).astype(np.float32))  # e-/h


def write_raw(path: str | pathlib.Path, kind: str, *, ifus: Iterable[int] = (1,),
              seed: int = 0, compress: bool = True, mjd: float = 60000.0,
              exptime: float | None = None, index: int = 0,
              header: Mapping[str, Any] | None = None,
              options: Mapping[str, Any] | None = None,
              dark_rate: float = 1.0) -> pathlib.Path:
    """Write one raw MUSE exposure with one ``CHANnn`` extension per IFU.

    Parameters
    ----------
    path : str or pathlib.Path
        Output file; parent directories are created.
    kind : str
        One of `KINDS`: ``'BIAS'``, ``'DARK'``, ``'FLAT'``, ``'ARC'``,
        ``'LINGAIN_LAMP_OFF'``, ``'LINGAIN_LAMP_ON'``, ``'ILLUMFLAT'``,
        ``'SKYFLAT'``, ``'OBJECT'``, ``'STD'``.  The kind fixes the DPR
        keywords, the template ID, lamp/telescope keywords and the light model.
    ifus : iterable of int
        IFU numbers (1..24) to include; each becomes extension ``CHANnn``.
        Recipes run with ``nifu=k`` read only ``CHANkk``.
    seed : int
        Seed of the noise; the file is a pure function of all arguments.
    compress : bool
        Write RICE tile-compressed extensions (read transparently by CFITSIO).
    mjd : float
        Start of the exposure; gives ``MJD-OBS`` and ``DATE-OBS``.
    exptime : float, optional
        Exposure time [s]; default from the kind.
    index : int
        Number of the frame within its set; changes the noise realisation.
    header : mapping, optional
        Extra primary-header keywords (``'ESO ...'`` keys become HIERARCH).
    options : mapping, optional
        Passed to the kind's illumination and header models:

        - ``ARC``: ``lamp`` (``'HgCd'``, ``'Ne'`` or ``'Xe'``, required);
        - ``FLAT``, ``ILLUMFLAT``, ``LINGAIN_LAMP_ON``, ``SKYFLAT``: ``level``
          (e- at the continuum peak);
        - ``OBJECT``, ``STD``: ``star_flux`` (e- per CCD row at 6000 A per
          600 s; 0 for none), ``star_xy`` (field position, 0.2" pixels),
          ``stars`` (more stars: (x, y, star_flux) each, see `star_field`),
          ``target`` (``ESO OBS TARG NAME``).
    dark_rate : float
        Dark current [e-/pixel/hour].

    Returns
    -------
    pathlib.Path
        The file written.

    Examples
    --------
    >>> write_raw("/tmp/b.fits", "BIAS", ifus=(1, 2), seed=3)  # doctest: +SKIP
    PosixPath('/tmp/b.fits')
    """
    k = _kind(kind)
    ifus = tuple(int(i) for i in ifus)
    if not ifus or any(not 1 <= i <= 24 for i in ifus):
        raise ValueError(f"IFU numbers must be in 1..24, got {ifus}")
    texp = k.exptime if exptime is None else float(exptime)
    # Everything a model may depend on, so that models stay pure functions.
    opts = {**(options or {}), "exptime": texp, "seed": seed, "index": index,
            "mjd": mjd}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    primary = fits.PrimaryHDU(header=primary_header(kind, mjd=mjd, exptime=texp, index=index,
                                                    header=header, options=options))
    with warnings.catch_warnings():
        # Spelled-out HIERARCH cards need no warning about long keywords.
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        fits.HDUList([primary]).writeto(path, overwrite=True)
        # Append one IFU at a time so memory stays at one CCD even for 24 IFUs.
        for ifu in ifus:
            rng = _rng(seed, kind, ifu, index)
            light = k.illumination(ifu, rng, opts) if k.illumination else None
            data = _detector_image(light, rng, dark_rate=dark_rate, exptime=texp,
                                   hot=_hot_pixels(ifu, seed) if texp > 0 else None)
            del light
            name = f"CHAN{ifu:02d}"
            if compress:
                hdu = fits.CompImageHDU(data, header=_extension_header(ifu), name=name,
                                        compression_type="RICE_1")
            else:
                hdu = fits.ImageHDU(data, header=_extension_header(ifu), name=name)
            with fits.open(path, mode="append") as hdul:
                hdul.append(hdu)
    return path


def _write_set(directory: str | pathlib.Path, kind: str, n: int, *,
               ifus: Iterable[int], seed: int, compress: bool, mjd: float,
               stem: str | None = None, step_days: float | None = None,
               **kwargs: Any) -> list[pathlib.Path]:
    """Write ``n`` frames of one kind, spaced in time, named STEM_01.fits ...

    Frames of a set differ in their noise (``index``) and start time.
    """
    directory = pathlib.Path(directory)
    texp = kwargs.get("exptime")
    texp = KINDS[kind].exptime if texp is None else texp
    # Space frames by their exposure time plus a minute of overhead so the
    # MJDs are realistic and strictly increasing.
    step = step_days if step_days is not None else (texp + 60.0) / 86400.0
    stem = stem or kind
    header = {**_template(mjd, n), **(kwargs.pop("header", None) or {})}
    return [write_raw(directory / f"{stem}_{i + 1:02d}.fits", kind, ifus=ifus,
                      seed=seed, compress=compress, mjd=mjd + i * step, index=i,
                      header=header, **kwargs)
            for i in range(n)]


def _template(mjd: float, n: int) -> dict[str, Any]:
    """TPL START/NEXP of ``n`` exposures taken by one template starting at ``mjd``."""
    return {"ESO TPL START": _isot(mjd), "ESO TPL NEXP": n}


def write_bias(directory: str | pathlib.Path, n: int = 3, *,
               ifus: Iterable[int] = (1,), seed: int = 0, compress: bool = True,
               mjd: float = 60000.0) -> list[pathlib.Path]:
    """Write ``n`` raw BIAS frames (``DPR TYPE = BIAS``) for ``muse_bias``.

    Each frame holds one uint16 extension ``CHANnn`` per IFU with four outputs
    at slightly different bias levels (about 1000 ADU), read noise of about
    2.5 e- at a gain of about 1.1 e-/ADU, and 32-pixel pre- and overscans.

    Parameters
    ----------
    directory : str or pathlib.Path
        Where to write ``BIAS_01.fits`` ... (created if needed).
    n : int
        Number of frames (``muse_bias`` needs at least 3).
    ifus : iterable of int
        IFUs to include.
    seed : int
        Noise seed.
    compress : bool
        RICE tile compression (about 9 MB instead of 36 MB per IFU).
    mjd : float
        MJD of the first frame.

    Returns
    -------
    list of pathlib.Path
        The files, in time order.

    Examples
    --------
    >>> files = write_bias("/tmp/synth-bias", 3, ifus=(1,))  # doctest: +SKIP
    >>> import cpl                                            # doctest: +SKIP
    >>> r = cpl.Recipe("muse_bias"); r.param.nifu = 1         # doctest: +SKIP
    >>> r(files).MASTER_BIAS                                  # doctest: +SKIP
    """
    return _write_set(directory, "BIAS", n, ifus=ifus, seed=seed,
                      compress=compress, mjd=mjd)


# --------------------------------------------------------------------------
# Static calibration tables.
# --------------------------------------------------------------------------
def _write_table(path: str | pathlib.Path, columns: Sequence[fits.Column], *,
                 primary: Mapping[str, Any] | None = None,
                 table: Mapping[str, Any] | None = None,
                 extname: str | None = None) -> pathlib.Path:
    """Write a FITS binary table (primary header + one table extension)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    phdr = fits.Header()
    _hierarch(phdr, {"ORIGIN": "cpldask.synthetic", "INSTRUME": "MUSE", **(primary or {})})
    tab = fits.BinTableHDU.from_columns(list(columns), name=extname)
    _hierarch(tab.header, dict(table or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        fits.HDUList([fits.PrimaryHDU(header=phdr), tab]).writeto(path, overwrite=True)
    return path


def write_line_catalog(path: str | pathlib.Path) -> pathlib.Path:
    """Write the LINE_CATALOG matching the synthetic ARC frames.

    Columns ``lambda`` [A], ``flux`` (the integrated flux in e- put into the
    frames), ``ion`` and ``quality``; ``VERSION = 3`` in both headers, as
    ``muse_wave_lines_check`` requires.  Quality 5 (FWHM reference) marks
    lines with no neighbour of any lamp within 15 A, others get 3 (fully used)
    and lines fainter than `FAINT_LINE_FLUX` get 1 (pattern matching only;
    ``muse_wavecal`` fits and ``muse_lsf`` skip them).

    Examples
    --------
    >>> write_line_catalog("/tmp/LINE_CATALOG.fits")  # doctest: +SKIP
    """
    rows = sorted(line for lamp in _ARC_LINES for line in arc_lines(lamp))
    lam = np.array([r[0] for r in rows])
    flux = np.array([r[2] for r in rows])
    quality = np.array([1 if f < FAINT_LINE_FLUX else (5 if np.sum(np.abs(lam - l) < 15.0) == 1 else 3)
                        for l, f in zip(lam, flux)], dtype=np.int32)
    cols = [
        fits.Column("lambda", "E", unit="Angstrom", array=lam.astype(np.float32)),
        fits.Column("flux", "E", array=flux.astype(np.float32)),
        fits.Column("ion", "8A", array=np.array([r[1] for r in rows])),
        fits.Column("quality", "J", array=quality),
    ]
    return _write_table(path, cols, primary={"VERSION": 3}, table={"VERSION": 3})


def write_geometry_table(path: str | pathlib.Path) -> pathlib.Path:
    """Write the GEOMETRY_TABLE matching the synthetic slice layout.

    One row per IFU x slice (24 x 48), sorted by ``SubField`` and
    ``SliceSky`` like the pipeline's own (``muse_geo_finalize``).  Positions
    come from `sky_slice_position`; angles are 0 and widths the nominal 75
    pixels, so the pipeline maps a CCD pixel exactly to the field position
    stored in `ccd_maps`.  (``muse_geometry`` would need >= 50 pinhole-mask
    exposures, which is why the table is made directly.)

    Examples
    --------
    >>> write_geometry_table("/tmp/GEOMETRY_TABLE.fits")  # doctest: +SKIP
    """
    sky_to_ccd = {sky: ccd + 1 for ccd, sky in enumerate(SLICE_SKY)}
    ifu = np.repeat(np.arange(1, 25), N_SLICES).astype(np.int32)
    sky = np.tile(np.arange(1, N_SLICES + 1), 24).astype(np.int32)
    ccd = np.array([sky_to_ccd[s] for s in sky], dtype=np.int32)
    x, y = sky_slice_position(ifu, sky)
    # The optical stack number of a CCD slice (muse_geo.c: 1-12 -> 4, ...).
    stack = (4 - (ccd - 1) // 12).astype(np.int32)
    zeros = np.zeros(ifu.size)
    cols = [
        fits.Column("SubField", "J", array=ifu),
        fits.Column("SliceCCD", "J", array=ccd),
        fits.Column("SliceSky", "J", array=sky),
        fits.Column("x", "D", unit="pix", array=x),
        fits.Column("y", "D", unit="pix", array=np.broadcast_to(y, x.shape)),
        fits.Column("angle", "D", unit="deg", array=zeros),
        fits.Column("width", "D", unit="pix", array=zeros + SKY_SLICE_WIDTH),
        fits.Column("xerr", "D", unit="pix", array=zeros + 0.01),
        fits.Column("yerr", "D", unit="pix", array=zeros + 0.01),
        fits.Column("angleerr", "D", unit="deg", array=zeros + 0.001),
        fits.Column("widtherr", "D", unit="pix", array=zeros + 0.01),
        fits.Column("stack", "J", array=stack),
    ]
    return _write_table(path, cols, primary={"ESO PRO CATG": "GEOMETRY_TABLE"})


def write_sky_lines(path: str | pathlib.Path) -> pathlib.Path:
    """Write SKY_LINES (extension ``LINES``) with the lines put into OBJECT/STD.

    Fluxes are given in the pipeline's unit 1e-20 erg/(s cm^2 arcsec^2),
    scaled from the e- of the frames by a rough MUSE-like conversion; the sky
    model only uses them as starting values.
    """
    names = [l[0] for l in _SKY_LINES]
    cols = [
        fits.Column("name", "8A", array=np.array(names)),
        fits.Column("group", "J", array=np.array([l[1] for l in _SKY_LINES], np.int32)),
        fits.Column("lambda", "D", unit="Angstrom", array=np.array([l[2] for l in _SKY_LINES])),
        fits.Column("flux", "D", unit="10**(-20)*erg/(s cm^2 arcsec^2)",
                    array=np.array([l[3] * 50.0 for l in _SKY_LINES])),
        fits.Column("dq", "J", array=np.zeros(len(_SKY_LINES), np.int32)),
    ]
    return _write_table(path, cols, extname="LINES")


def write_extinct_table(path: str | pathlib.Path) -> pathlib.Path:
    """Write EXTINCT_TABLE: a smooth Paranal-like extinction curve.

    Rayleigh (lambda^-4) plus aerosol (lambda^-1.3) terms give about
    0.25 mag/airmass at 4500 A and 0.03 at 9500 A.
    """
    lam = np.arange(4000.0, 10001.0, 25.0)
    ext = 0.16 * (lam / 4500.0) ** -4 + 0.06 * (lam / 4500.0) ** -1.3
    cols = [
        fits.Column("lambda", "D", unit="Angstrom", array=lam),
        fits.Column("extinction", "D", unit="mag/airmass", array=ext),
    ]
    return _write_table(path, cols)


#: Photon-to-electron factor used to give the STD star a physical flux: e- per
#: (erg/s/cm^2/A) per second per A for the VLT (48.5 m^2) at ~25 % throughput,
#: at 6000 A.  Only its order of magnitude matters.
_STD_ELECTRONS_PER_FLAM = 4.85e5 * 0.25 / 3.31e-12
#: Reference flux of the STD star at 6000 A [erg/s/cm^2/A].
STD_FLAM_6000 = 1.0e-13


def std_flux(lam: np.ndarray) -> np.ndarray:
    """Flux of the synthetic standard star [erg/s/cm^2/A] at ``lam`` [A].

    Its shape, converted to photons (x lambda), is that of the star put into
    the STD frames, so a response derived from them is smooth.
    """
    lam = np.asarray(lam, dtype=np.float64)
    return STD_FLAM_6000 * _star_spectrum(lam) * (6000.0 / lam)


def write_std_flux_table(path: str | pathlib.Path, *, ra: float, dec: float,
                         name: str = "SYNTH_STD") -> pathlib.Path:
    """Write STD_FLUX_TABLE with one extension for the synthetic standard.

    ``muse_standard`` picks the extension whose ``RA``/``DEC`` header is
    nearest to the exposure's pointing (it must be within 60"), so pass the
    pointing of the STD frames (see `pointing`).
    """
    lam = np.arange(4000.0, 10001.0, 10.0)
    flux = std_flux(lam)
    cols = [
        fits.Column("lambda", "D", unit="Angstrom", array=lam),
        fits.Column("flux", "D", unit="erg/s/cm**2/Angstrom", array=flux),
        fits.Column("fluxerr", "D", unit="erg/s/cm**2/Angstrom", array=flux * 0.01),
    ]
    return _write_table(path, cols, extname=name, table={"RA": ra, "DEC": dec})


def pointing(mjd: float, exptime: float) -> tuple[float, float]:
    """(RA, DEC) [deg] written into an on-sky frame starting at ``mjd``."""
    kw = _telescope_keywords({"mjd": mjd, "exptime": exptime})
    return kw["RA"], kw["DEC"]


# --------------------------------------------------------------------------
# Public writers of frame sets and the whole cascade.
# --------------------------------------------------------------------------
#: Star flux in OBJECT frames: e- per CCD row (per 1.25 A), summed over the
#: PSF, at 6000 A in 600 s (peak ~1000 e- per spaxel over a 40 e- sky).
STAR_FLUX_OBJECT = 20000.0
#: Same for the STD star, from its physical flux (`std_flux`) and a rough
#: VLT/MUSE photon-to-electron conversion, per 600 s.
STAR_FLUX_STD = STD_FLAM_6000 * _STD_ELECTRONS_PER_FLAM * DISPERSION * 600.0
#: Lamp rate of the linearity series [e-/s at the continuum peak].
LINGAIN_RATE = 1000.0
#: Exposure times of the lamp-on pairs: levels from 1e3 to 5e4 e-.
LINGAIN_EXPTIMES = (1.0, 5.0, 20.0, 50.0)


def write_arcs(directory: str | pathlib.Path, *, lamps: Sequence[str] = ("HgCd", "Ne", "Xe"),
               ifus: Iterable[int] = (1,), seed: int = 0, compress: bool = True,
               mjd: float = 60000.0) -> list[pathlib.Path]:
    """Write one ARC frame per lamp (``ARC_HgCd.fits`` ...), as MUSE takes them.

    Examples
    --------
    >>> write_arcs("/tmp/arc", ifus=(1,))  # doctest: +SKIP
    """
    ifus = tuple(ifus)
    # one template takes the lamps one after another (pipe_calib.html: arcs come
    # "as multiple of 3 for Ne, Xe, and HgCd arc lamps each")
    tpl = _template(mjd, len(lamps))
    return [write_raw(pathlib.Path(directory) / f"ARC_{lamp}.fits", "ARC", ifus=ifus,
                      seed=seed, compress=compress, mjd=mjd + i * 120.0 / 86400.0,
                      index=i, header=tpl, options={"lamp": lamp})
            for i, lamp in enumerate(lamps)]


def write_lingain(directory: str | pathlib.Path, *, ifus: Iterable[int] = (1,),
                  seed: int = 0, compress: bool = True,
                  mjd: float = 60000.0) -> dict[str, list[pathlib.Path]]:
    """Write the linearity/gain series for ``muse_lingain``.

    Two lamp-off frames and four pairs of lamp-on frames; both frames of a
    pair have the same EXPTIME (the recipe differences them to get the photon
    noise), pairs have rising exposure levels (`LINGAIN_EXPTIMES`).

    Returns
    -------
    dict
        ``{'LINGAIN_LAMP_OFF': [...2 files], 'LINGAIN_LAMP_ON': [...8 files]}``
    """
    ifus = tuple(ifus)
    d = pathlib.Path(directory)
    step = 120.0 / 86400.0
    tpl = _template(mjd, 2 + 2 * len(LINGAIN_EXPTIMES))  # one template, all frames
    off = [write_raw(d / f"LINGAIN_LAMP_OFF_{i + 1:02d}.fits", "LINGAIN_LAMP_OFF",
                     ifus=ifus, seed=seed, compress=compress, mjd=mjd + i * step, index=i,
                     header=tpl)
           for i in range(2)]
    on = []
    for p, texp in enumerate(LINGAIN_EXPTIMES):
        for j in range(2):
            i = 2 * p + j
            on.append(write_raw(d / f"LINGAIN_LAMP_ON_{i + 1:02d}.fits", "LINGAIN_LAMP_ON",
                                ifus=ifus, seed=seed, compress=compress,
                                mjd=mjd + (2 + i) * step, index=i, exptime=texp,
                                header={**tpl, "ESO TPL EXPNO": 3 + i},
                                options={"level": LINGAIN_RATE * texp}))
    return {"LINGAIN_LAMP_OFF": off, "LINGAIN_LAMP_ON": on}


def write_object(path: str | pathlib.Path, *, ifus: Iterable[int] = (1,), seed: int = 0,
                 compress: bool = True, mjd: float = 60000.5, exptime: float = 600.0,
                 star_xy: tuple[float, float] | None = None,
                 star_flux: float = STAR_FLUX_OBJECT, kind: str = "OBJECT") -> pathlib.Path:
    """Write an OBJECT (or STD) exposure: night sky plus one star.

    Parameters
    ----------
    star_xy : tuple of float, optional
        Field position [0.2" pixels]; default `star_position` of ``ifus``.
    star_flux : float
        e- per CCD row at 6000 A in 600 s, summed over the PSF (scaled with
        ``exptime``).  0 gives a sky-only frame.
    kind : str
        ``'OBJECT'`` or ``'STD'``.

    Examples
    --------
    >>> write_object("/tmp/OBJECT.fits", ifus=(1, 2))  # doctest: +SKIP
    """
    ifus = tuple(ifus)
    xy = star_position(ifus) if star_xy is None else tuple(star_xy)
    return write_raw(path, kind, ifus=ifus, seed=seed, compress=compress, mjd=mjd,
                     exptime=exptime, options={"star_flux": star_flux, "star_xy": xy,
                                               "target": f"SYNTH_{kind}"})


def star_pixel(header: Mapping[str, Any], ifus: Iterable[int]) -> tuple[float, float]:
    """Expected 1-based (x, y) pixel of the star in an IMAGE_FOV/DATACUBE_FINAL.

    Valid for ``muse_scipost`` with ``astrometry=False``: the output then has a
    linear ``PIXEL`` WCS in field (GEOMETRY_TABLE) pixels, so the star's
    field position `star_position` converts with CRPIX/CRVAL/CD.

    Parameters
    ----------
    header : mapping
        Header of the image extension (``IMAGE_FOV[1].header``).
    ifus : iterable of int
        The IFUs the frames were made for.

    Examples
    --------
    >>> from astropy.io import fits                               # doctest: +SKIP
    >>> h = fits.getheader("IMAGE_FOV.fits", 1)                     # doctest: +SKIP
    >>> star_pixel(h, (1, 2))                                       # doctest: +SKIP
    (181.0, 12.5)
    """
    x, y = star_position(ifus)
    if str(header.get("CTYPE1", "PIXEL")).strip() != "PIXEL":
        raise ValueError("IMAGE_FOV has a celestial WCS; run muse_scipost with astrometry=False")
    px = header["CRPIX1"] + (x - header["CRVAL1"]) / header.get("CD1_1", 1.0)
    py = header["CRPIX2"] + (y - header["CRVAL2"]) / header.get("CD2_2", 1.0)
    return float(px), float(py)


#: Start of each part of a synthetic night, in days after ``mjd``: evening
#: calibrations, twilight, the illumination flat and the night's exposures.
_SCHEDULE = {"BIAS": 0.00, "DARK": 0.01, "FLAT": 0.09, "LINGAIN": 0.10, "ARC": 0.12,
             "SKYFLAT": 0.40, "ILLUMFLAT": 0.45, "STD": 0.47, "OBJECT": 0.50}


def make_exposure(directory: str | pathlib.Path, *, ifus: Iterable[int] = (1, 2),
                  seed: int = 0, compress: bool = True, mjd: float = 60000.0,
                  n_bias: int = 3, n_dark: int = 3, n_flat: int = 3,
                  n_skyflat: int = 3, lingain: bool = True,
                  ) -> dict[str, list[pathlib.Path]]:
    """Write a complete synthetic MUSE data set for the calibration cascade.

    Raw frames (each with one extension per IFU): BIAS, DARK, FLAT,
    LINGAIN_LAMP_OFF/ON, ARC (HgCd, Ne, Xe), ILLUMFLAT, SKYFLAT, OBJECT (with
    a star at `star_position` of ``ifus``) and STD (the standard star at the
    same place); static tables LINE_CATALOG, GEOMETRY_TABLE, SKY_LINES,
    EXTINCT_TABLE and STD_FLUX_TABLE.  The recipes then run per IFU
    (``nifu=k``): muse_bias -> muse_dark -> muse_flat -> muse_wavecal ->
    muse_lsf -> muse_illum/muse_twilight -> muse_scibasic, and muse_scipost
    over all pixel tables.

    Parameters
    ----------
    directory : str or pathlib.Path
        Output directory (subdirectories per tag are created).
    ifus : iterable of int
        IFUs to simulate.  With one IFU muse_standard fails (the cube is too
        narrow for the flux integration); use two or more for the flux branch.
    seed : int
        Noise seed: same arguments, same bytes.
    compress : bool
        RICE tile compression of raw frames (about 4x smaller).
    mjd : float
        Start of the night; all frames get MJD-OBS/DATE-OBS from it.
    n_bias, n_dark, n_flat, n_skyflat : int
        Frames per set (the recipes want >= 3 for bias/dark).
    lingain : bool
        Also write the 10-frame LINGAIN series.

    Returns
    -------
    dict
        Tag -> list of files, e.g. ``out['BIAS']``, ``out['LINE_CATALOG']``.

    Examples
    --------
    >>> files = make_exposure("/tmp/synth", ifus=(1, 2))   # doctest: +SKIP
    >>> sorted(files)                                        # doctest: +SKIP
    ['ARC', 'BIAS', 'DARK', 'EXTINCT_TABLE', 'FLAT', 'GEOMETRY_TABLE', ...]
    """
    ifus = tuple(ifus)
    d = pathlib.Path(directory)
    common = dict(ifus=ifus, seed=seed, compress=compress)
    t = {k: mjd + v for k, v in _SCHEDULE.items()}
    out: dict[str, list[pathlib.Path]] = {}
    out["BIAS"] = _write_set(d / "bias", "BIAS", n_bias, mjd=t["BIAS"], **common)
    out["DARK"] = _write_set(d / "dark", "DARK", n_dark, mjd=t["DARK"], **common)
    out["FLAT"] = _write_set(d / "flat", "FLAT", n_flat, mjd=t["FLAT"], **common)
    if lingain:
        out.update(write_lingain(d / "lingain", mjd=t["LINGAIN"], **common))
    out["ARC"] = write_arcs(d / "arc", mjd=t["ARC"], **common)
    out["SKYFLAT"] = _write_set(d / "skyflat", "SKYFLAT", n_skyflat, mjd=t["SKYFLAT"], **common)
    out["ILLUMFLAT"] = [write_raw(d / "illumflat" / "ILLUMFLAT_01.fits", "ILLUMFLAT",
                                  mjd=t["ILLUMFLAT"], **common)]
    std_exptime = KINDS["STD"].exptime
    out["STD"] = [write_object(d / "std" / "STD_01.fits", mjd=t["STD"], exptime=std_exptime,
                               star_flux=STAR_FLUX_STD, kind="STD", **common)]
    out["OBJECT"] = [write_object(d / "object" / "OBJECT_01.fits", mjd=t["OBJECT"], **common)]
    static = d / "static"
    out["LINE_CATALOG"] = [write_line_catalog(static / "LINE_CATALOG.fits")]
    out["GEOMETRY_TABLE"] = [write_geometry_table(static / "GEOMETRY_TABLE.fits")]
    out["SKY_LINES"] = [write_sky_lines(static / "SKY_LINES.fits")]
    out["EXTINCT_TABLE"] = [write_extinct_table(static / "EXTINCT_TABLE.fits")]
    ra, dec = pointing(t["STD"], std_exptime)
    out["STD_FLUX_TABLE"] = [write_std_flux_table(static / "STD_FLUX_TABLE.fits", ra=ra, dec=dec)]
    return out


def write_dithered(directory: str | pathlib.Path, *, ifus: Iterable[int] = (1,),
                   seed: int = 0, compress: bool = True, mjd: float = 60000.0,
                   processes: int = 1) -> dict[str, list[pathlib.Path]]:
    """Write the smallest data set of one target observed in dithered exposures:
    3 BIAS, 3 FLAT, one ARC of each lamp, 3 twilight flats (SKYFLAT: muse_twilight
    corrects the sky's illumination gradient, `_field_gradient`, which the lamp flats
    do not have; left in, the gradient would stay in the sky-subtracted cube), and
    the three 600 s OBJECT exposures of `DITHERS` (header pointings) of the star
    field `STAR_FIELD`, each at its true pointing (`POINTING_ERRORS`), over the night
    sky's continuum and lines; with the static tables. No dark, illumination flat or
    standard: the cascade takes them when present, and leaves them out here to stay
    short.

    Returns
    -------
    dict
        Tag -> files, as `make_exposure`.

    Examples
    --------
    >>> files = write_dithered("/tmp/dithered", ifus=(1,))   # doctest: +SKIP
    >>> [p.name for p in files["OBJECT"]]                      # doctest: +SKIP
    ['OBJECT_01.fits', 'OBJECT_02.fits', 'OBJECT_03.fits']
    """
    ifus = tuple(ifus)
    d = pathlib.Path(directory)
    t = {k: mjd + v for k, v in _SCHEDULE.items()}
    jobs: list[tuple] = []
    for tag, n in (("BIAS", 3), ("FLAT", 3), ("SKYFLAT", 3)):
        header = _template(t[tag], n)
        jobs += [(d / tag.lower() / f"{tag}_{i + 1:02d}.fits", tag, t[tag] + i * 120 / 86400,
                  None, i, header, {}) for i in range(n)]
    header = _template(t["ARC"], 3)
    jobs += [(d / "arc" / f"ARC_{lamp}.fits", "ARC", t["ARC"] + i * 120 / 86400, None, i,
              header, {"lamp": lamp}) for i, lamp in enumerate(("HgCd", "Ne", "Xe"))]
    base_ra, base_dec = pointing(t["OBJECT"], 600.0)
    for i in range(len(DITHERS)):
        where, stars = _dithered(base_ra, base_dec, i, ifus)
        jobs.append((d / "object" / f"OBJECT_{i + 1:02d}.fits", "OBJECT",
                     t["OBJECT"] + i * 700 / 86400, 600.0, i,
                     {**_template(t["OBJECT"], len(DITHERS)), "ESO TPL EXPNO": i + 1,
                      "OBJECT": "SYNTH_FIELD", **where},
                     {"stars": stars, "target": "SYNTH_FIELD"}))
    todo = [(path, kind, dict(ifus=ifus, seed=seed, compress=compress, mjd=m, exptime=e,
                              index=i, header=h, options=o))
            for path, kind, m, e, i, h, o in jobs]
    if processes > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            paths = pool.map(_write_raw_job, todo, chunksize=1)
    else:
        paths = [_write_raw_job(job) for job in todo]
    out: dict[str, list[pathlib.Path]] = {}
    for (_, kind, _), path in zip(todo, paths):
        out.setdefault(kind, []).append(path)
    static = d / "static"
    out["LINE_CATALOG"] = [write_line_catalog(static / "LINE_CATALOG.fits")]
    out["GEOMETRY_TABLE"] = [write_geometry_table(static / "GEOMETRY_TABLE.fits")]
    out["SKY_LINES"] = [write_sky_lines(static / "SKY_LINES.fits")]
    out["EXTINCT_TABLE"] = [write_extinct_table(static / "EXTINCT_TABLE.fits")]
    return out


def _write_raw_job(job: tuple) -> pathlib.Path:
    path, kind, kwargs = job
    return write_raw(path, kind, **kwargs)


# --------------------------------------------------------------------------
# A data set of two nights, as an archive request delivers it.
# --------------------------------------------------------------------------
#: ``ESO TPL ID`` of the WFM-AO science template. The pipeline's own frame list
#: (recipes/muse_raw_frames.xml) names the WFM-NOAO and NFM templates only; this is
#: the name of ESO's observing template for laser-assisted WFM observations.
WFM_AO_TEMPLATE = "MUSE_wfm-ao_obs_genericoffsetLGS"

#: Dither offsets (east, north) on the sky [arcsec] of the three exposures of a
#: target, as the headers give them (RA, DEC): small against the 60" field, and
#: small in y (north), where one IFU covers 2.4" only, so that the stars of
#: `star_field` stay on the field of one IFU.
DITHERS = ((0.0, 0.0), (0.8, 0.2), (-0.6, -0.2))
#: The telescope's pointing error of each exposure (east, north) [arcsec]: where it
#: really pointed minus what the header says. The first exposure is the reference
#: (muse_exp_align gives offsets relative to it); the others are off by 0.5" or so,
#: as the VLT's blind pointing is (a few tenths of an arcsec after an offset).
#: muse_exp_align is to measure these from the stars.
POINTING_ERRORS = ((0.0, 0.0), (0.5, -0.1), (-0.3, 0.15))

#: A field of stars, for muse_exp_align (it wants at least 5 sources, its
#: ``--srcmin``): (x offset [0.2" pixels] from the field centre, y offset from the
#: middle of the IFUs' field, flux in units of `STAR_FLUX_OBJECT`). Away from the
#: slicer-stack borders (x = -75, 0, 75) and from each other by > 4 FWHM; close to
#: the middle in y, where a dither of a few tenths of an arcsec keeps them on one
#: IFU's 12 pixels. x = 75 ... 150 holds no star: an empty region of sky.
STAR_FIELD = ((-135.0, 0.5, 1.0), (-110.0, -0.5, 0.6), (-88.0, 0.0, 0.8),
              (-55.0, 0.5, 0.5), (-30.0, -0.5, 1.2), (-10.0, 0.0, 0.4),
              (15.0, 0.5, 0.7), (50.0, -0.5, 0.9))
#: Field x [0.2" pixels] of the starless region of `STAR_FIELD` (with a margin of
#: 3 FWHM to the nearest star).
EMPTY_SKY_X = (70.0, 145.0)


def field_shift(east: float, north: float) -> tuple[float, float]:
    """How far [0.2" field pixels] the sky moves on the field when the telescope
    points ``east``, ``north`` [arcsec] away.

    With the position angle 0 of these frames the pipeline's default astrometry has
    east to the left (``CD1_1 < 0``) and north up, the header's RA/DEC at the
    middle of the field (muse_wcs.c, muse_wcs_create_default and
    muse_wcs_position_celestial): a star at a fixed place on the sky moves right
    (+x) when the telescope moves east, and down when it moves north.

    Examples
    --------
    >>> field_shift(0.2, 0.4)
    (1.0, -2.0)
    """
    return east / 0.2, -north / 0.2


def star_field(ifus: Iterable[int], shift: tuple[float, float] = (0.0, 0.0),
               ) -> list[tuple[float, float, float]]:
    """The stars of `STAR_FIELD` as ``options["stars"]`` of `write_raw`: (x, y, flux)
    at field positions [0.2" pixels] about the middle of ``ifus``, moved by
    ``shift`` (`field_shift` of a pointing).

    Examples
    --------
    >>> star_field((1,))[0]
    (-135.0, 138.5, 20000.0)
    """
    _, y0 = star_position(ifus)
    return [(x + shift[0], y0 + y + shift[1], f * STAR_FLUX_OBJECT) for x, y, f in STAR_FIELD]


def _dithered(base_ra: float, base_dec: float, i: int, ifus: tuple) -> tuple[dict, list]:
    """RA/DEC header keywords of exposure ``i`` of `DITHERS` (the nominal pointing)
    and its stars (at the true pointing: with `POINTING_ERRORS`)."""
    (de, dn), (ee, en) = DITHERS[i], POINTING_ERRORS[i]
    # an offset east of e arcsec is e / cos(DEC) in RA
    header = {"RA": round(base_ra + de / 3600.0 / np.cos(np.radians(base_dec)), 7),
              "DEC": round(base_dec + dn / 3600.0, 7)}
    return header, star_field(ifus, field_shift(de + ee, dn + en))

#: Targets: (OBS TARG NAME, INS MODE, night, OBS ID).
DATASET_TARGETS = (("SYNTH_A", "WFM-NOAO-N", 0, 2001), ("SYNTH_B", "WFM-AO-N", 1, 2002))

#: Archive master calibrations of night 0 (made from its WFM-NOAO-N raw sets):
#: PRO CATG -> the raw set they are the products of.
DATASET_MASTERS = {"MASTER_BIAS": "n0_BIAS", "MASTER_FLAT": "n0_FLAT_WFM-NOAO-N",
                   "TRACE_TABLE": "n0_FLAT_WFM-NOAO-N",
                   "WAVECAL_TABLE": "n0_ARC_WFM-NOAO-N"}


@dataclasses.dataclass(frozen=True)
class DatasetFrame:
    """One raw frame of `dataset_frames`: where it goes and what `write_raw` makes of
    it. ``set`` names the set (template run) it belongs to."""

    name: str
    kind: str
    mjd: float
    set: str
    index: int = 0
    exptime: float | None = None
    header: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def dataset_frames(*, mjd: float = 60310.0, ifus: Iterable[int] = (1, 2),
                   lingain: bool = True, nights: Iterable[int] = (0, 1)) -> list[DatasetFrame]:
    """The raw frames of `write_dataset`, in time order.

    Two nights (n0, n1) that start at ``mjd`` and ``mjd + 1`` (UTC; 60310 is
    2024-01-01). Each has the afternoon calibrations (18:00 UTC: 3 BIAS, 3 FLAT and
    an ARC of each lamp in WFM-NOAO-N and again in WFM-AO-N, as the calibration plan
    takes them per mode), twilight flats (23:45) and a standard star (00:00) in the
    mode of the night's science, an ILLUM flat at the start of the science OB (always
    in nominal mode [RAW]), and three dithered 600 s exposures of one target: SYNTH_A
    in WFM-NOAO-N on night 0, SYNTH_B in WFM-AO-N on night 1. Besides: a LINGAIN
    series on night 0, and sets a reduction must not take: 2x2-binned biases on night
    0, biases five days before night 0 (outside the 3-day validity), and an
    incomplete set of 2 biases on the morning after night 1. ``nights`` keeps the
    frames of those nights only (the sets tied to a night go with it).
    """
    ifus = tuple(ifus)
    nights = tuple(nights)
    minute = 1.0 / 1440.0
    out: list[DatasetFrame] = []

    def frames(set_name: str, kind: str, n: int, start: float, *, step: float = 2 * minute,
               header: Mapping[str, Any] | None = None, exptime: float | None = None,
               options: Mapping[str, Any] | None = None, names: Sequence[str] = ()) -> None:
        tpl = {**_template(start, n), **(header or {})}
        for i in range(n):
            name = f"{set_name}_{names[i] if names else f'{i + 1:02d}'}.fits"
            opts = {**(options or {}), **({"lamp": names[i]} if kind == "ARC" else {})}
            out.append(DatasetFrame(name, kind, start + i * step, set_name, i, exptime,
                                    {**tpl, "ESO TPL EXPNO": i + 1}, opts))

    for night in nights:
        day = mjd + night
        n = f"n{night}"
        science = next(t for t in DATASET_TARGETS if t[2] == night)
        mode = {"ESO INS MODE": science[1]}
        frames(f"{n}_BIAS", "BIAS", 3, day + 0.75)
        for j, m in enumerate(("WFM-NOAO-N", "WFM-AO-N")):
            frames(f"{n}_FLAT_{m}", "FLAT", 3, day + 0.76 + 0.01 * j,
                   header={"ESO INS MODE": m})
            frames(f"{n}_ARC_{m}", "ARC", 3, day + 0.78 + 0.01 * j,
                   header={"ESO INS MODE": m}, names=("HgCd", "Ne", "Xe"))
        frames(f"{n}_SKYFLAT", "SKYFLAT", 3, day + 0.99, header={
            **mode, "ESO TPL ID": "MUSE_wfm_cal_twilight"})
        # both standards at the pointing of the STD_FLUX_TABLE's star (night 0's)
        ra, dec = pointing(mjd + 1.0, KINDS["STD"].exptime)
        frames(f"{n}_STD", "STD", 1, day + 1.0, header={**mode, "RA": ra, "DEC": dec},
               options={"star_flux": STAR_FLUX_STD, "target": "SYNTH_STD",
                        "star_xy": star_position(ifus)})
        frames(f"{n}_ILLUMFLAT", "ILLUMFLAT", 1, day + 1.04,
               header={"ESO INS MODE": "WFM-NOAO-N"})
        target, _, _, obs_id = science
        base_ra, base_dec = pointing(day + 1.05, 600.0)
        tpl = "MUSE_wfm-noao_obs_offset" if science[1] == "WFM-NOAO-N" else WFM_AO_TEMPLATE
        for i in range(len(DITHERS)):
            start = day + 1.05 + i * 700.0 / 86400.0
            where, stars = _dithered(base_ra, base_dec, i, ifus)
            out.append(DatasetFrame(
                f"{target}_OBJECT_{i + 1:02d}.fits", "OBJECT", start, f"{n}_{target}", i,
                600.0, {**_template(day + 1.05, 3), "ESO TPL EXPNO": i + 1, **mode,
                        "ESO TPL ID": tpl, "OBJECT": target, "ESO OBS ID": obs_id,
                        "ESO OBS NAME": f"{target}_ob", **where},
                # a star field: muse_exp_align aligns the exposures on its stars
                {"stars": stars, "target": target}))
    if 0 in nights:
        frames("n0_BIAS_2x2", "BIAS", 3, mjd + 0.74,
               header={"ESO DET BINX": 2, "ESO DET BINY": 2})
        frames("old_BIAS", "BIAS", 3, mjd - 5.0 + 0.75)
    if 1 in nights:
        frames("n1_BIAS_short", "BIAS", 2, mjd + 1.0 + 1.30)
    if lingain and 0 in nights:
        tpl = "MUSE_wfm_cal_detlin"
        frames("n0_LINGAIN_OFF", "LINGAIN_LAMP_OFF", 2, mjd + 0.80, header={"ESO TPL ID": tpl})
        for p, texp in enumerate(LINGAIN_EXPTIMES):
            frames(f"n0_LINGAIN_ON_{p + 1}", "LINGAIN_LAMP_ON", 2, mjd + 0.81 + 0.002 * p,
                   exptime=texp, header={"ESO TPL ID": tpl},
                   options={"level": LINGAIN_RATE * texp})
    return sorted(out, key=lambda f: (f.mjd, f.name))


def _header_only(path: pathlib.Path, header: fits.Header, ifus: tuple) -> pathlib.Path:
    """A stand-in of a frame for tests that read headers only: its primary header and
    a 1x1 image per IFU (``CHANnn``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hdus = [fits.PrimaryHDU(header=header)]
    hdus += [fits.ImageHDU(np.zeros((1, 1), np.uint16), header=_extension_header(k),
                           name=f"CHAN{k:02d}") for k in ifus]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def _write_dataset_frame(args) -> pathlib.Path:
    directory, f, ifus, seed, compress, headers_only = args
    path = pathlib.Path(directory) / "raw" / f.name
    if headers_only:
        return _header_only(path, primary_header(f.kind, mjd=f.mjd, exptime=f.exptime,
                                                 index=f.index, header=f.header,
                                                 options=f.options), ifus)
    return write_raw(path, f.kind, ifus=ifus, seed=seed, compress=compress, mjd=f.mjd,
                     exptime=f.exptime, index=f.index, header=f.header, options=f.options)


def master_name(pro_catg: str, ifu: int) -> str:
    """File name of an archive master of night 0 in `write_dataset`'s ``archive/``."""
    return f"n0_{pro_catg}-{ifu:02d}.fits"


def write_dataset(directory: str | pathlib.Path, *, ifus: Iterable[int] = (1, 2),
                  seed: int = 0, compress: bool = True, mjd: float = 60310.0,
                  headers_only: bool = False, lingain: bool = True,
                  processes: int = 1, nights: Iterable[int] = (0, 1)
                  ) -> dict[str, pathlib.Path]:
    """Write a MUSE data set of two nights, two targets with three dithered exposures
    each, calibrations of WFM-NOAO and WFM-AO mixed (`dataset_frames`), the static
    tables, and what else a folder of downloads holds: a frame of another instrument
    (a HAWK-I dark), a corrupt (truncated) MUSE flat, and, with ``headers_only``, the
    archive master calibrations of night 0 (`DATASET_MASTERS`, one file per IFU as
    muse_bias ``nifu=k`` writes them; real ones are products of the recipes: see
    `install_master`).

    Parameters
    ----------
    headers_only : bool
        Each frame as its primary header and a 1x1 image per IFU: the same
        classification and association, no pixels (tests that need no recipe).
    processes : int
        Write full frames in this many processes.
    nights : iterable of int
        Only the frames of these nights (0, 1); the other files are always written.

    Returns
    -------
    dict
        File name -> path, for every file written.

    Examples
    --------
    >>> files = write_dataset("/tmp/ds", ifus=(1,), headers_only=True)   # doctest: +SKIP
    >>> files["SYNTH_A_OBJECT_01.fits"]                                   # doctest: +SKIP
    PosixPath('/tmp/ds/raw/SYNTH_A_OBJECT_01.fits')
    """
    ifus = tuple(ifus)
    d = pathlib.Path(directory)
    todo = [(d, f, ifus, seed, compress, headers_only)
            for f in dataset_frames(mjd=mjd, ifus=ifus, lingain=lingain, nights=nights)]
    if processes > 1 and not headers_only:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            paths = pool.map(_write_dataset_frame, todo, chunksize=1)
    else:
        paths = [_write_dataset_frame(args) for args in todo]
    out = {p.name: p for p in paths}
    static = d / "raw" / "static"
    ra, dec = pointing(mjd + 1.0, KINDS["STD"].exptime)
    for path in (write_line_catalog(static / "LINE_CATALOG.fits"),
                 write_geometry_table(static / "GEOMETRY_TABLE.fits"),
                 write_sky_lines(static / "SKY_LINES.fits"),
                 write_extinct_table(static / "EXTINCT_TABLE.fits"),
                 write_std_flux_table(static / "STD_FLUX_TABLE.fits", ra=ra, dec=dec)):
        out[path.name] = path
    # a dark of another instrument, as an archive request for a programme may hold
    other = d / "raw" / "HAWKI_DARK_01.fits"
    header = fits.Header()
    _hierarch(header, {"INSTRUME": "HAWKI", "TELESCOP": "ESO-VLT-U4", "MJD-OBS": mjd + 0.7,
                       "DATE-OBS": _isot(mjd + 0.7), "ESO DPR CATG": "CALIB",
                       "ESO DPR TYPE": "DARK", "ESO DPR TECH": "IMAGE"})
    out[other.name] = _header_only(other, header, ())
    # a flat cut off halfway (an interrupted download)
    broken = d / "raw" / "n0_FLAT_broken.fits"
    first = next(f for f in dataset_frames(mjd=mjd, ifus=ifus, lingain=False)
                 if f.kind == "FLAT")
    _write_dataset_frame((d, dataclasses.replace(first, name=broken.name), ifus, seed + 1,
                          compress, headers_only))
    size = broken.stat().st_size
    with open(broken, "r+b") as fh:
        fh.truncate(size - max(2880, size // 2))
    out[broken.name] = broken
    if headers_only:
        frames = {f.name: f for f in dataset_frames(mjd=mjd, ifus=ifus, lingain=False)}
        for catg, set_name in DATASET_MASTERS.items():
            raw = frames[f"{set_name}_{'HgCd' if 'ARC' in set_name else '01'}.fits"]
            for k in ifus:
                path = install_master(d / "archive" / master_name(catg, k), None,
                                      pro_catg=catg, raw=raw, ifu=k)
                out[path.name] = path
    return out


def install_master(dest: str | pathlib.Path, product: str | pathlib.Path | None, *,
                   pro_catg: str, raw: DatasetFrame | None, ifu: int) -> pathlib.Path:
    """An archive master calibration at ``dest``: a copy of ``product`` (a real product
    of the recipe, e.g. MASTER_BIAS-01.fits of muse_bias ``nifu=1``), or, without one,
    a header-only stand-in with the primary header a product of the set ``raw`` is
    the first frame of would have: that frame's keywords without DPR CATG/TYPE/TECH,
    PRO CATG, and EXTNAME CHANnn of its IFU (as the recipes write per-IFU products).
    """
    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if product is not None:
        have = fits.getheader(product).get("ESO PRO CATG")
        if have != pro_catg:
            raise ValueError(f"{product} is a {have}, not a {pro_catg}")
        shutil.copyfile(product, dest)
        return dest
    if raw is None:
        raise ValueError("a stand-in master needs the first raw frame of its set (raw=)")
    header = primary_header(raw.kind, mjd=raw.mjd, exptime=raw.exptime, index=raw.index,
                            header=raw.header, options=raw.options)
    for key in ("ESO DPR CATG", "ESO DPR TYPE", "ESO DPR TECH"):
        del header[key]
    _hierarch(header, {"EXTNAME": f"CHAN{ifu:02d}", "ESO PRO CATG": pro_catg})
    hdus = [fits.PrimaryHDU(header=header), fits.ImageHDU(np.zeros((1, 1), np.float32),
                                                          name="DATA")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        fits.HDUList(hdus).writeto(dest, overwrite=True)
    return dest
