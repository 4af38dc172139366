"""The MUSE demo: a synthetic exposure reduced end to end, and its white-light picture
(``cpldask demo``, ``make demo``).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterable

from ...workflow import Reduction, parse_units, reduce
from ...workflow.classify import format_ranges
from . import synthetic

__all__ = ["demo", "white_light_png"]

log = logging.getLogger("cpldask.demo")


def demo(workdir: str | os.PathLike = "cpldask-demo", ifus: Iterable[int] = (1, 2), *,
         seed: int = 0, progress: Callable | None = None, flux: bool | None = None,
         wait: bool = True, cache: bool | None = None,
         recipe_path: Iterable[str] | str | None = None) -> Reduction:
    """Generate a synthetic MUSE exposure for ``ifus`` and reduce it end to end.

    The raw data go to ``workdir/raw`` (made once, reused while ``ifus`` and ``seed``
    are the same), the products to ``workdir/reduced``, and a PNG of the white-light
    image with the synthetic star marked to ``workdir/white_light.png`` (the
    reduction's ``png`` attribute).

    With ``wait=False`` the submitted reduction returns at once (for a live display
    of ``red.steps``); after ``red.wait()``, write the picture with
    ``white_light_png(red.final['IMAGE_FOV'], red.png_target, ifus=red.units)``.
    """
    workdir = pathlib.Path(workdir).expanduser().absolute()
    ifus = parse_units(ifus, "muse")
    raw = workdir / "raw"
    stamp = raw / ".cpldask-demo.json"
    # the generator's version too: data of an older generator (other headers) are remade
    want = {"ifus": list(ifus), "seed": seed, "synthetic": synthetic.VERSION}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        log.info("writing a synthetic exposure of IFUs %s to %s", format_ranges(ifus), raw)
        if stamp.exists():
            stamp.unlink()
        synthetic.make_exposure(raw, ifus=ifus, seed=seed, lingain=False)
        stamp.write_text(json.dumps(want))
    red = reduce(raw, rules="muse", units=ifus, output_dir=workdir / "reduced",
                 progress=progress, flux=flux, wait=wait, cache=cache,
                 recipe_path=recipe_path)
    red.png_target = workdir / "white_light.png"
    red.png = None
    if wait:
        red.png = white_light_png(red.final["IMAGE_FOV"], red.png_target, ifus=ifus)
    return red


def white_light_png(image_fov: str | os.PathLike, png: str | os.PathLike, *,
                    ifus: Iterable[int] | None = None, title: str | None = None) -> pathlib.Path:
    """Save the IMAGE_FOV white-light image as a PNG: asinh stretch from 5 sigma below
    the sky to the maximum (the star's core), so that the sky's structure and bright
    sources both show. With ``ifus`` of a synthetic exposure, circle the
    star where :func:`cpldask.instruments.muse.synthetic.star_pixel` expects it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from astropy.io import fits
    from astropy.visualization import AsinhStretch, ImageNormalize, ManualInterval
    from matplotlib.patches import Circle
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    with fits.open(image_fov) as hdul:
        hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
        data, header = np.asarray(hdu.data, dtype=float), hdu.header
    finite = data[np.isfinite(data)]
    if finite.size:
        median = np.median(finite)
        noise = 1.4826 * np.median(np.abs(finite - median))  # robust sky scatter
        lo, hi = median - 5.0 * noise, finite.max()
    else:
        lo, hi = 0.0, 1.0
    norm = ImageNormalize(interval=ManualInterval(lo, hi if hi > lo else lo + 1.0),
                          stretch=AsinhStretch(0.0005))
    ny, nx = data.shape
    width = 10.0
    height = min(10.0, max(2.0, 0.85 * width * ny / nx + 1.3))
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    cmap = plt.get_cmap("magma").with_extremes(bad="0.6")
    im = ax.imshow(data, origin="lower", cmap=cmap, norm=norm, aspect="equal",
                   interpolation="nearest", extent=(0.5, nx + 0.5, 0.5, ny + 0.5))
    if ifus is not None:
        try:
            x, y = synthetic.star_pixel(header, tuple(ifus))
        except (KeyError, ValueError):
            pass
        else:
            ax.add_patch(Circle((x, y), 7.0, fill=False, ec="cyan", lw=1.0))
            ax.annotate("synthetic star", (x + 7.0, y), xytext=(4, 0),
                        textcoords="offset points", color="cyan", fontsize=8, va="center")
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")
    ax.set_title(title or "MUSE white-light image (IMAGE_FOV)"
                 + (f", IFUs {format_ranges(ifus)}" if ifus is not None else ""), fontsize=10)
    cax = make_axes_locatable(ax).append_axes("right", size="1.2%", pad=0.08)
    bar = fig.colorbar(im, cax=cax, label=str(header.get("BUNIT", "")).strip())
    if finite.size:  # asinh crowds automatic ticks at the top: sky level and peak
        bar.set_ticks([float(np.median(finite)), float(hi)])
        bar.ax.set_yticklabels([f"{np.median(finite):.4g}", f"{hi:.4g}"], fontsize=7)
    fig.tight_layout()
    png = pathlib.Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png
