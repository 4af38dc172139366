"""What a user looks at after a reduction: per target the sources of the white-light
image, the spectra of the brightest one and of the sky, and the QC keywords of each
step (issue 20.4).

>>> from cpldask.look import look
>>> seen = look("reduced/muse_scipost/DATACUBE_FINAL.fits", out_dir="reduced/look/demo")  # doctest: +SKIP
>>> seen.sources[0]                                                # doctest: +SKIP
Source(rank=1, x=30.02, y=12.49, flux=2.1e+05, peak=5.3e+03, snr=812.0)
>>> seen.paths                                                     # doctest: +SKIP
{'white_light': ..., 'spectrum': ..., 'sources': ..., 'qc': ...}

The pieces are used by :mod:`cpldask.report` too (its white-light section):
:func:`white_light` (the IMAGE_FOV, or the cube's mean over wavelength),
:func:`find_sources`, :func:`sky_pixels` and :func:`spectra`. Positions are 1-based
FITS pixels (x along NAXIS1), as ds9 and the pipeline's WCS count them.

How sources are found: the image is smoothed with a 3 x 3 box (a hot pixel is not a
source), its sky level and noise are the median and the robust sigma (1.4826 x the
median absolute deviation) of the smoothed image, and a source is a pixel that is the
maximum of its neighbourhood (``separation`` pixels each way), more than
``nsigma`` robust sigmas above the sky, not sharper than a star (its 3 x 3 mean
at least :data:`SHARPNESS` of its brightest pixel: a hot pixel is none) and inside
the field (its 3 x 3 pixels finite: not on the image's edge). Its position is the flux-weighted centroid of
the sky-subtracted image within ``radius`` pixels of that maximum, its flux the
sum over that circle. Sources are ranked by flux, brightest first.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pathlib
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Source", "Look", "look", "look_reduction", "white_light", "find_sources",
           "sky_pixels", "spectra", "wavelengths", "qc_rows", "format_sources",
           "format_qc", "plot_white_light", "SKY_PIXELS"]

#: detection threshold [robust sigmas of the smoothed image above its median]
NSIGMA = 5.0
#: aperture radius [pixels] for the centroid, the flux and the spectrum (MUSE's
#: seeing-limited PSF is ~4 pixels FWHM: 3 pixels hold most of a star's light)
RADIUS = 3.0
#: a source's pixel is the maximum within this many pixels each way: closer maxima
#: are one source (the synthetic star fields keep > 4 FWHM = 16 pixels apart)
SEPARATION = 4
#: a source's 3 x 3 mean is at least this fraction of its brightest pixel there
#: (above the sky): 0.44 for a Gaussian of FWHM 2 pixels, 1/9 for a lone hot pixel
SHARPNESS = 0.3
#: the sky is the pixels further than this many apertures from every source
SKY_RADII = 3.0
#: the sky spectrum is the median of at most this many pixels (evenly spread): for a
#: 24-IFU cube, 3681 planes of 2000 pixels are 59 MB, all its sky pixels 1.3 GB
SKY_PIXELS = 2000
#: QC keywords shown per step in the compact table (format_qc); the file has all
COMPACT_QC = 3


@dataclasses.dataclass(frozen=True)
class Source:
    """A source of a white-light image: rank (1: the brightest), 1-based centroid,
    sky-subtracted flux in the aperture, peak of the smoothed image above the sky,
    and that peak in robust sigmas."""

    rank: int
    x: float
    y: float
    flux: float
    peak: float
    snr: float


@dataclasses.dataclass
class Look:
    """What :func:`look` found and wrote for one target."""

    target: str
    sources: list[Source]
    qc: list[dict[str, Any]]  # qc_rows
    paths: dict[str, pathlib.Path]  # white_light, spectrum, sources, qc
    sky: dict[str, float]  # level and noise of the white-light image
    seconds: float = 0.0


# ---------------------------------------------------------------------------------
# The image and its sources
# ---------------------------------------------------------------------------------
def mean_over_wavelength(data) -> np.ndarray:
    """A cube's mean over its first axis (NaN ignored), 100 planes at a time: a
    24-IFU cube is 1.3 GB, which nanmean would copy whole."""
    total = np.zeros(data.shape[1:])
    count = np.zeros(data.shape[1:])
    for i in range(0, data.shape[0], 100):
        chunk = np.asarray(data[i:i + 100], dtype=float)
        good = np.isfinite(chunk)
        total += np.where(good, chunk, 0.0).sum(axis=0)
        count += good.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def box3(image: np.ndarray) -> np.ndarray:
    """The mean over 3 x 3 pixels (NaN ignored): a single hot pixel is not the
    brightest spot."""
    padded = np.pad(image, 1, constant_values=np.nan)
    stack = [padded[dy:dy + image.shape[0], dx:dx + image.shape[1]]
             for dy in range(3) for dx in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods
        return np.nanmean(stack, axis=0)


def _data_hdu(hdul):
    return hdul["DATA"] if "DATA" in hdul else next(h for h in hdul if h.data is not None)


def white_light(path: str | os.PathLike, image: str | os.PathLike | None = None
                ) -> tuple[np.ndarray, Any]:
    """The white-light image of ``path`` and its header: a 2-D product as it is, a
    cube's ``image`` (its IMAGE_FOV) where that has the cube's shape, else the cube's
    mean over wavelength.

    Examples
    --------
    >>> white, header = white_light("DATACUBE_FINAL.fits", "IMAGE_FOV_0001.fits")  # doctest: +SKIP
    """
    from astropy.io import fits

    with fits.open(path, memmap=True) as hdul:
        hdu = _data_hdu(hdul)
        header, data = hdu.header, hdu.data
        if data.ndim == 2:
            return np.asarray(data, dtype=float), header
        if image is not None:
            try:
                with fits.open(image) as img:
                    hdu2 = _data_hdu(img)
                    if hdu2.data.shape == data.shape[1:]:
                        return np.asarray(hdu2.data, dtype=float), hdu2.header
            except (KeyError, OSError, StopIteration):
                pass  # no usable IMAGE_FOV: the cube's own mean
        return mean_over_wavelength(data), header


def _robust(values: np.ndarray) -> tuple[float, float]:
    """Median and robust sigma (1.4826 x MAD) of the finite values."""
    v = values[np.isfinite(values)]
    if not v.size:
        return 0.0, 0.0
    med = float(np.median(v))
    return med, float(1.4826 * np.median(np.abs(v - med)))


def find_sources(image: np.ndarray, *, nsigma: float = NSIGMA, radius: float = RADIUS,
                 separation: int = SEPARATION, limit: int | None = None) -> list[Source]:
    """The sources of a white-light image, brightest first (see the module's text
    for how they are found).

    Examples
    --------
    >>> yy, xx = np.mgrid[0:40, 0:60]
    >>> img = np.random.default_rng(1).normal(0, 1, (40, 60))
    >>> img += 500 * np.exp(-((xx - 20) ** 2 + (yy - 15) ** 2) / 8)
    >>> [(s.rank, round(s.x), round(s.y)) for s in find_sources(img)]
    [(1, 21, 16)]
    """
    image = np.asarray(image, dtype=float)
    smooth = box3(image)
    sky, noise = _robust(smooth)
    if not np.isfinite(smooth).any() or noise <= 0:
        # a noiseless image (a model): its robust sigma is 0; any maximum above the
        # median would do, so use the scatter of the whole image instead
        noise = float(np.nanstd(smooth)) if np.isfinite(smooth).any() else 0.0
        if noise <= 0:
            return []
    filled = np.where(np.isfinite(smooth), smooth, -np.inf)
    s = int(separation)
    padded = np.pad(filled, s, constant_values=-np.inf)
    ny, nx = image.shape
    local = np.full(image.shape, -np.inf)
    for dy in range(2 * s + 1):
        for dx in range(2 * s + 1):
            np.maximum(local, padded[dy:dy + ny, dx:dx + nx], out=local)
    # a source is not sharper than the PSF: the 3 x 3 mean of a Gaussian of FWHM 2
    # pixels is 0.44 of its peak, of one hot pixel (a cosmic ray left) 1/9
    sharp = box3_max(image) - sky
    # and it is inside the field: its 3 x 3 pixels finite (the resampled cube's first
    # and last columns are brighter stripes, by 2 counts in muse_scipost's cubes)
    inside = np.pad(np.isfinite(image), 1, constant_values=False)
    inside = np.all([inside[dy:dy + image.shape[0], dx:dx + image.shape[1]]
                     for dy in range(3) for dx in range(3)], axis=0)
    peaks = np.argwhere((filled >= local) & (filled > sky + nsigma * noise) & inside
                        & (filled - sky > SHARPNESS * sharp))
    yy, xx = np.indices(image.shape)
    level, _ = _robust(image)
    found, taken = [], set()
    for py, px in peaks:
        if (py, px) in taken:
            continue
        # a plateau (equal maxima side by side) is one source
        taken.update((int(a), int(b)) for a, b in peaks
                     if abs(a - py) <= s and abs(b - px) <= s)
        # the circle re-centred on the centroid twice: a circle around the peak
        # pixel pulls the centroid of a source between pixels towards that pixel
        cx, cy = float(px), float(py)
        for _ in range(3):
            near = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2) & np.isfinite(image)
            w = np.clip(np.where(near, image - level, 0.0), 0.0, None)
            if w.sum() <= 0:
                break
            cx, cy = float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())
        flux = float(np.where(near, image - level, 0.0).sum())
        peak = float(smooth[py, px] - sky)
        found.append((flux, cx + 1.0, cy + 1.0, peak, peak / noise))
    found.sort(key=lambda f: -f[0])
    if limit is not None:
        found = found[:limit]
    return [Source(i + 1, round(x, 3), round(y, 3), flux, peak, round(snr, 1))
            for i, (flux, x, y, peak, snr) in enumerate(found)]


def box3_max(image: np.ndarray) -> np.ndarray:
    """The maximum over 3 x 3 pixels (NaN ignored)."""
    padded = np.pad(np.where(np.isfinite(image), image, -np.inf), 1,
                    constant_values=-np.inf)
    stack = [padded[dy:dy + image.shape[0], dx:dx + image.shape[1]]
             for dy in range(3) for dx in range(3)]
    return np.max(stack, axis=0)


def brightest(image: np.ndarray, sources: Sequence[Source]) -> tuple[float, float]:
    """1-based (x, y) of the brightest source, or of the brightest spot of the
    smoothed image when nothing stands above the threshold."""
    if sources:
        return sources[0].x, sources[0].y
    y0, x0 = np.unravel_index(np.nanargmax(box3(image)), image.shape)
    return float(x0) + 1.0, float(y0) + 1.0


def aperture(shape: tuple[int, int], x: float, y: float, radius: float = RADIUS) -> np.ndarray:
    """The pixels within ``radius`` of the 1-based position (x, y)."""
    yy, xx = np.indices(shape)
    return (yy + 1.0 - y) ** 2 + (xx + 1.0 - x) ** 2 <= radius ** 2


def sky_pixels(image: np.ndarray, sources: Sequence[Source], *, radius: float = RADIUS,
               centre: tuple[float, float] | None = None) -> np.ndarray:
    """The source-free pixels: finite, further than :data:`SKY_RADII` apertures from
    every source (and from ``centre``, the spectrum's aperture), and not above the
    sky by more than 3 robust sigmas (the faint wings of undetected sources)."""
    finite = np.isfinite(image)
    sky = finite.copy()
    for x, y in [(s.x, s.y) for s in sources] + ([centre] if centre else []):
        sky &= ~aperture(image.shape, x, y, SKY_RADII * radius)
    level, noise = _robust(image[sky]) if sky.any() else (0.0, 0.0)
    if noise > 0:
        sky &= image < level + 3.0 * noise
    return sky


def wavelengths(header: Mapping[str, Any], n: int) -> np.ndarray:
    """The wavelength of each plane of a cube, from its WCS (CRVAL3, CRPIX3 and CD3_3
    or CDELT3; FITS planes count from 1)."""
    step = header.get("CD3_3", header.get("CDELT3", 1.0))
    return header.get("CRVAL3", 0.0) + (np.arange(n) + 1 - header.get("CRPIX3", 1.0)) * step


def spectra(cube: str | os.PathLike, star: np.ndarray, sky: np.ndarray) -> dict[str, Any]:
    """The spectrum summed over the pixels ``star`` and the sky spectrum (the median
    of at most :data:`SKY_PIXELS` of the pixels ``sky``, evenly spread) scaled to as
    many pixels, with the wavelengths and units of the cube.

    Returns a dict: ``wave``, ``object``, ``sky`` (None without sky pixels),
    ``npix``, ``nsky``, ``unit`` (of the wavelength), ``bunit``.
    """
    from astropy.io import fits

    with fits.open(cube, memmap=True) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels and planes
        hdu = _data_hdu(hdul)
        header, data = hdu.header, hdu.data
        obj = np.nansum(np.asarray(data[:, star], dtype=float), axis=1)
        sky_spec, nsky = None, 0
        if sky.any():
            ys, xs = np.nonzero(sky)
            pick = np.linspace(0, len(ys) - 1, min(len(ys), SKY_PIXELS)).astype(int)
            nsky = len(pick)
            sky_spec = np.nanmedian(np.asarray(data[:, ys[pick], xs[pick]], dtype=float),
                                    axis=1) * star.sum()
        n = data.shape[0]
    return {"wave": wavelengths(header, n), "object": obj, "sky": sky_spec,
            "npix": int(star.sum()), "nsky": nsky,
            "unit": str(header.get("CUNIT3", "")).strip(),
            "bunit": str(header.get("BUNIT", "")).strip()}


# ---------------------------------------------------------------------------------
# QC keywords of each step
# ---------------------------------------------------------------------------------
def qc_rows(steps: Iterable[tuple[str, str, int | None, Iterable[tuple[str, Mapping]]]]
            ) -> list[dict[str, Any]]:
    """One row per step: ``step`` (label), ``recipe``, ``unit`` and ``qc``, every
    ``ESO QC`` keyword of its products (the first product's value of a keyword
    shared by several). ``steps`` yields (label, recipe, unit, [(tag, header)]).

    Examples
    --------
    >>> qc_rows([("muse_bias[1]", "muse_bias", 1,
    ...           [("MASTER_BIAS", {"ESO QC BIAS MASTER1 RON": 2.4, "ESO PRO CATG": "X"})])])
    [{'step': 'muse_bias[1]', 'recipe': 'muse_bias', 'unit': 1, 'qc': {'ESO QC BIAS MASTER1 RON': 2.4}}]
    """
    rows = []
    for label, recipe, unit, products in steps:
        qc: dict[str, Any] = {}
        for _tag, header in products:
            for key, value in header.items():
                if key.startswith("ESO QC "):
                    qc.setdefault(key, value)
        rows.append({"step": label, "recipe": recipe, "unit": unit, "qc": qc})
    return rows


def _steps_of(red: Any, group: str | None) -> list:
    """The finished steps that made ``group``'s products: its own and the
    calibrations that serve it (all of them where there is one group)."""
    out = []
    for s in red.steps:
        if s.status != "finished":
            continue
        if group is None or len(red.finals) <= 1 or s.group == group \
                or (s.group is None and (not s.groups or group in s.groups)):
            out.append(s)
    return out


def _key_qc(qc: Mapping[str, Any], n: int = COMPACT_QC) -> list[tuple[str, Any]]:
    """The ``n`` QC keywords a compact table shows: numeric ones, those without an
    index (a per-slice or per-input keyword has numbers: ``... SLICE12 ...``) first."""
    numeric = [(k, v) for k, v in qc.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    numeric.sort(key=lambda kv: (len(re.findall(r"\d+", kv[0])), " INPUT" in kv[0]))
    return numeric[:n]


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.5g}" if math.isfinite(v) else str(v)
    return str(v)


def format_qc(rows: Sequence[Mapping[str, Any]], *, compact: int | None = COMPACT_QC) -> str:
    """The QC table as text: per step its label, IFU, how many QC keywords and the
    first ``compact`` of them (``None``: all, one per line)."""
    lines = [f"{'step':<26} {'IFU':>3} {'#QC':>4}  QC keywords"]
    for r in rows:
        unit = "-" if r["unit"] is None else str(r["unit"])
        head = f"{r['step']:<26} {unit:>3} {len(r['qc']):>4}  "
        if compact is None:
            lines.append(head.rstrip())
            lines += [f"    {k[4:]} = {_value(v)}" for k, v in r["qc"].items()]
        else:
            shown = _key_qc(r["qc"], compact)
            lines.append(head + ("; ".join(f"{k[7:]}={_value(v)}" for k, v in shown)
                                 or "(no QC keywords)"))
    return "\n".join(lines)


def format_sources(sources: Sequence[Source], *, limit: int = 10) -> str:
    """The sources as a text table (the first ``limit``)."""
    lines = [f"{'rank':>4} {'x':>8} {'y':>8} {'flux':>11} {'S/N':>7}"]
    lines += [f"{s.rank:>4} {s.x:>8.2f} {s.y:>8.2f} {s.flux:>11.4g} {s.snr:>7.1f}"
              for s in sources[:limit]]
    if len(sources) > limit:
        lines.append(f"... {len(sources) - limit} more")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot on the Agg backend where none was chosen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, png: str | os.PathLike | None):
    """Save ``fig`` to ``png`` (its folder made) and close it; without ``png``,
    return the figure (a notebook shows it)."""
    if png is None:
        return fig
    fig.tight_layout()
    png = pathlib.Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    pyplot().close(fig)
    return png


def plot_white_light(image: np.ndarray, png: str | os.PathLike | None = None, *,
                     sources: Sequence[Source] = (), radius: float = RADIUS,
                     marks: Sequence[tuple[float, float, str]] = (),
                     title: str = "white-light image", bunit: str = "", ax=None):
    """Draw a white-light image, asinh stretch from 5 robust sigmas below the sky to
    the maximum (the sky's structure and bright sources both show), each source
    circled and labelled by its rank, ``marks`` (x, y, text) circled in cyan. With
    ``png``, save it and return its path; else return the figure (or draw on ``ax``)."""
    plt = pyplot()
    from astropy.visualization import AsinhStretch, ImageNormalize, ManualInterval
    from matplotlib.patches import Circle
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    finite = image[np.isfinite(image)]
    med, noise = _robust(image)
    lo, hi = (med - 5.0 * noise, float(finite.max())) if finite.size else (0.0, 1.0)
    norm = ImageNormalize(interval=ManualInterval(lo, hi if hi > lo else lo + 1.0),
                          stretch=AsinhStretch(0.0005))
    ny, nx = image.shape
    if ax is None:
        width = 10.0
        height = min(10.0, max(2.0, 0.85 * width * ny / nx + 1.3))
        fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    fig = ax.figure
    cmap = plt.get_cmap("magma").with_extremes(bad="0.6")
    im = ax.imshow(image, origin="lower", cmap=cmap, norm=norm, aspect="equal",
                   interpolation="nearest", extent=(0.5, nx + 0.5, 0.5, ny + 0.5))
    for s in sources:
        ax.add_patch(Circle((s.x, s.y), radius, fill=False, ec="lime", lw=0.9))
        ax.annotate(str(s.rank), (s.x, s.y + radius), xytext=(0, 1),
                    textcoords="offset points", color="lime", fontsize=7,
                    ha="center", va="bottom")
    for x, y, text in marks:
        ax.add_patch(Circle((x, y), 7.0, fill=False, ec="cyan", lw=1.0))
        ax.annotate(text, (x + 7.0, y), xytext=(4, 0), textcoords="offset points",
                    color="cyan", fontsize=8, va="center")
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")
    ax.set_title(title, fontsize=10)
    cax = make_axes_locatable(ax).append_axes("right", size="1.2%", pad=0.08)
    bar = fig.colorbar(im, cax=cax, label=bunit)
    if finite.size:  # asinh crowds automatic ticks at the top: sky level and peak
        bar.set_ticks([med, hi])
        bar.ax.set_yticklabels([f"{med:.4g}", f"{hi:.4g}"], fontsize=7)
    return _save(fig, png)


def plot_spectra(spec: Mapping[str, Any], png: str | os.PathLike | None = None, *,
                 label: str = "brightest source"):
    """Draw the spectra of :func:`spectra`: above, the source, the sky scaled to its
    aperture and their difference; below, the sky alone on its own scale (its lines,
    or what is left of them after the sky subtraction), its strongest line marked.
    With ``png``, save it and return its path; else return the figure."""
    plt = pyplot()
    sky = spec["sky"]
    fig, axes = plt.subplots(2 if sky is not None else 1, 1, sharex=True, squeeze=False,
                             figsize=(10, 5.0 if sky is not None else 3.4), dpi=100,
                             height_ratios=(3, 2) if sky is not None else None)
    wave, top = spec["wave"], axes[0, 0]
    top.plot(wave, spec["object"], lw=0.6, color="tab:blue",
             label=f"{label} ({spec['npix']} px)")
    ylabel = f"sum [{spec['bunit']}]" if spec["bunit"] else "sum"
    if sky is not None:
        what = f"sky (median of {spec['nsky']} px) x {spec['npix']} px"
        top.plot(wave, sky, lw=0.6, color="tab:orange", label=what)
        top.plot(wave, spec["object"] - sky, lw=0.6, color="k", label="difference")
        bottom = axes[1, 0]
        bottom.plot(wave, sky, lw=0.6, color="tab:orange", label=what)
        if np.isfinite(sky).any():
            i = int(np.nanargmax(sky))
            bottom.annotate(f"{wave[i]:.1f}", (wave[i], sky[i]), xytext=(4, -2),
                            textcoords="offset points", fontsize=7, va="top")
        bottom.set_ylabel(ylabel)
    top.set_ylabel(ylabel)
    axes[-1, 0].set_xlabel(f"wavelength [{spec['unit']}]" if spec["unit"] else "wavelength")
    for ax in axes[:, 0]:
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(lw=0.3)
        ax.tick_params(labelsize=7)
    return _save(fig, png)


# ---------------------------------------------------------------------------------
# One target, a whole reduction
# ---------------------------------------------------------------------------------
def look(product: str | os.PathLike, out_dir: str | os.PathLike, *,
         image: str | os.PathLike | None = None, target: str | None = None,
         qc: Sequence[Mapping[str, Any]] = (), nsigma: float = NSIGMA,
         radius: float = RADIUS, marks: Sequence[tuple[float, float, str]] = ()) -> Look:
    """Look at one target's final product (a cube, or a 2-D image) and write to
    ``out_dir``: ``white_light.png`` (every source circled and numbered by rank),
    ``spectrum.png`` (a cube only: the brightest source summed over ``radius``
    pixels and the sky), ``sources.csv`` and ``qc.txt`` (the rows of :func:`qc_rows`
    given as ``qc``, every keyword).

    Examples
    --------
    >>> seen = look("DATACUBE_FINAL.fits", "look/NGC1234", image="IMAGE_FOV.fits")  # doctest: +SKIP
    >>> print(format_sources(seen.sources))                          # doctest: +SKIP
    """
    t0 = time.perf_counter()
    product = pathlib.Path(product)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = target or product.stem
    white, header = white_light(product, image)
    sources = find_sources(white, nsigma=nsigma, radius=radius)
    level, noise = _robust(box3(white))
    paths = {"white_light": plot_white_light(
        white, out / "white_light.png", sources=sources, radius=radius, marks=marks,
        title=f"{target}: white light, {_count(len(sources), 'source')} above "
              f"{nsigma:g} sigma",
        bunit=str(header.get("BUNIT", "")).strip())}
    with open(out / "sources.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "x", "y", "flux", "peak", "snr"])
        w.writerows([s.rank, s.x, s.y, f"{s.flux:.6g}", f"{s.peak:.6g}", s.snr]
                    for s in sources)
    paths["sources"] = out / "sources.csv"
    if _ndim(product) == 3 and np.isfinite(white).any():
        x, y = brightest(white, sources)
        star = aperture(white.shape, x, y, radius) & np.isfinite(white)
        sky = sky_pixels(white, sources, radius=radius, centre=(x, y))
        spec = spectra(product, star, sky)
        paths["spectrum"] = plot_spectra(spec, out / "spectrum.png",
                                         label=f"brightest source (x={x:.1f}, y={y:.1f})")
    (out / "qc.txt").write_text(format_qc(qc, compact=None) + "\n")
    paths["qc"] = out / "qc.txt"
    return Look(target, sources, list(qc), paths, {"level": level, "noise": noise},
                time.perf_counter() - t0)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _ndim(path) -> int:
    from astropy.io import fits

    with fits.open(path) as hdul:
        return int(_data_hdu(hdul).header.get("NAXIS", 0))


def _folder(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", label).strip("_") or "target"


def look_reduction(red: Any, out_dir: str | os.PathLike | None = None) -> dict[str, Look]:
    """:func:`look` at each target (group) of a finished
    :class:`cpldask.workflow.Reduction`, into ``out_dir/<target>/`` (default
    ``<output_dir>/look``), with the QC keywords of the steps that made it (from the
    run records: no FITS file opened for them).

    Examples
    --------
    >>> looks = look_reduction(cpldask.reduce("raw/", output_dir="reduced"))  # doctest: +SKIP
    >>> looks["NGC1234"].paths["white_light"]                          # doctest: +SKIP
    PosixPath('reduced/look/NGC1234/white_light.png')
    """
    base = pathlib.Path(out_dir) if out_dir is not None else pathlib.Path(red.output_dir) / "look"
    out = {}
    for group, final in red.finals.items():
        cube = next((p for t, p in final.items() if not t.startswith("IMAGE")), None)
        image = next((p for t, p in final.items() if t.startswith("IMAGE")), None)
        if cube is None and image is None:
            continue
        rows = qc_rows((s.label, s.recipe, s.unit,
                        [(p.tag, p.header) for p in s.result.record.products])
                       for s in _steps_of(red, group))
        out[group] = look(cube or image, base / _folder(group), image=image, target=group,
                          qc=rows)
    return out
