"""The MUSE demo: a synthetic exposure reduced end to end, and its white-light picture
(``cpldask demo``, ``make demo``).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterable

from ...look import look_reduction
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
    reduction's ``png`` attribute), and the look at each target
    (:func:`cpldask.look.look_reduction`: sources, spectra, QC of each step) to
    ``workdir/reduced/look/<target>/`` (its ``looks`` attribute).

    With ``wait=False`` the submitted reduction returns at once (for a live display
    of ``red.steps``); after ``red.wait()``, write the picture with
    ``white_light_png(red.final['IMAGE_FOV'], red.png_target, ifus=red.units)`` and
    ``look_reduction(red)``.
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
    red.looks = {}
    if wait:
        red.png = white_light_png(red.final["IMAGE_FOV"], red.png_target, ifus=ifus)
        red.looks = look_reduction(red)
    return red


def white_light_png(image_fov: str | os.PathLike, png: str | os.PathLike, *,
                    ifus: Iterable[int] | None = None, title: str | None = None) -> pathlib.Path:
    """Save the IMAGE_FOV white-light image as a PNG (:func:`cpldask.look.plot_white_light`:
    asinh stretch from 5 sigma below the sky to the maximum, so that the sky's
    structure and bright sources both show). With ``ifus`` of a synthetic exposure,
    circle the star where :func:`cpldask.instruments.muse.synthetic.star_pixel`
    expects it."""
    from ... import look

    image, header = look.white_light(image_fov)
    marks = []
    if ifus is not None:
        try:
            x, y = synthetic.star_pixel(header, tuple(ifus))
        except (KeyError, ValueError):
            pass
        else:
            marks.append((x, y, "synthetic star"))
    return look.plot_white_light(
        image, png, marks=marks, bunit=str(header.get("BUNIT", "")).strip(),
        title=title or "MUSE white-light image (IMAGE_FOV)"
        + (f", IFUs {format_ranges(ifus)}" if ifus is not None else ""))
