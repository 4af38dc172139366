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
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time

__all__ = [
    "NX", "NY", "RAW_NX", "RAW_NY", "N_SLICES", "KINDS",
    "trimmed_to_raw", "write_raw", "write_bias",
]

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


@dataclasses.dataclass(frozen=True)
class Kind:
    """Description of one raw frame type.

    Attributes
    ----------
    tag : str
        Tag under which the pipeline expects the frame (``DO CATG``).
    catg, type, tech : str
        ``ESO DPR CATG/TYPE/TECH`` values the recipes check.
    exptime : float
        Default exposure time [s].
    on_sky : bool
        Whether telescope keywords (pointing, airmass, ...) are written.
    illumination : callable or None
        Model of the light falling on the detector, see `Illumination`.
    """

    tag: str
    catg: str
    type: str
    tech: str
    exptime: float = 0.0
    on_sky: bool = False
    illumination: Illumination | None = None


#: Registry of frame kinds known to `write_raw`; filled below the models.
KINDS: dict[str, Kind] = {}


def _register(kind: Kind) -> Kind:
    KINDS[kind.tag] = kind
    return kind


_register(Kind("BIAS", "CALIB", "BIAS", "IMAGE"))


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


def _primary_header(kind: Kind, *, mjd: float, exptime: float, index: int,
                    extra: Mapping[str, Any] | None) -> fits.Header:
    """Build the primary header common to all kinds, plus ``extra``."""
    hdr = fits.Header()
    date = _isot(mjd)
    items: dict[str, Any] = {
        "ORIGIN": "ESO-PARANAL",
        "TELESCOP": "ESO-VLT-U4",
        "INSTRUME": "MUSE",
        "OBJECT": kind.tag,
        "DATE-OBS": date,
        "MJD-OBS": mjd,
        "EXPTIME": float(exptime),
        # UTC of the start in seconds of day, as written by ESO.
        "UTC": round((mjd % 1.0) * 86400.0, 3),
        "ARCFILE": f"MUSE.{date}.fits",
        "ESO DPR CATG": kind.catg,
        "ESO DPR TYPE": kind.type,
        "ESO DPR TECH": kind.tech,
        "ESO INS MODE": "WFM-NOAO-N",
        "ESO DET READ CURID": 1,
        "ESO DET READ CURNAME": "SCI1.0",
        "ESO DET BINX": 1,
        "ESO DET BINY": 1,
        "ESO OBS NAME": f"synthetic-{kind.tag.lower()}",
        "ESO OBS ID": 1000 + index,
        "ESO TPL EXPNO": index + 1,
    }
    _hierarch(hdr, items)
    if extra:
        _hierarch(hdr, extra)
    return hdr


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
        One of `KINDS` (e.g. ``'BIAS'``, ``'FLAT'``, ``'OBJECT'``).
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
        Passed to the kind's illumination model (e.g. ``{'lamp': 'Ne'}``).
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
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {sorted(KINDS)}")
    k = KINDS[kind]
    ifus = tuple(int(i) for i in ifus)
    if not ifus or any(not 1 <= i <= 24 for i in ifus):
        raise ValueError(f"IFU numbers must be in 1..24, got {ifus}")
    texp = k.exptime if exptime is None else float(exptime)
    opts = dict(options or {})
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    primary = fits.PrimaryHDU(header=_primary_header(k, mjd=mjd, exptime=texp,
                                                     index=index, extra=header))
    hdus: list[fits.hdu.base.ExtensionHDU] = []
    for ifu in ifus:
        rng = _rng(seed, kind, ifu, index)
        light = k.illumination(ifu, rng, {**opts, "exptime": texp, "seed": seed,
                                          "index": index}) if k.illumination else None
        data = _detector_image(light, rng, dark_rate=dark_rate, exptime=texp,
                               hot=_hot_pixels(ifu, seed) if texp > 0 else None)
        ext_hdr = _extension_header(ifu)
        name = f"CHAN{ifu:02d}"
        if compress:
            hdu = fits.CompImageHDU(data, header=ext_hdr, name=name,
                                    compression_type="RICE_1")
        else:
            hdu = fits.ImageHDU(data, header=ext_hdr, name=name)
        hdus.append(hdu)
    with warnings.catch_warnings():
        # astropy warns about HIERARCH cards longer than 80 chars being
        # shortened; none here are, but keep worker logs quiet regardless.
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        fits.HDUList([primary, *hdus]).writeto(path, overwrite=True)
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
    return [write_raw(directory / f"{stem}_{i + 1:02d}.fits", kind, ifus=ifus,
                      seed=seed, compress=compress, mjd=mjd + i * step, index=i,
                      **kwargs)
            for i in range(n)]


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
