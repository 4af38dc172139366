"""A reduction report: one self-contained HTML page of a cpldask output directory.

>>> from cpldask.report import write_report
>>> write_report("reduced/")                       # doctest: +SKIP
PosixPath('reduced/report.html')

The page is made from the output directory alone: the ``*.provenance.json`` record
that every call leaves beside its products (:mod:`cpldask.worker.install`, see
:mod:`cpldask.provenance` for its keys) and the FITS products themselves. It works
on a finished or a partly finished ``cpldask reduce`` directory, copied from another
machine too (products are looked for beside their record, not at the recorded path).

What it shows, each picture a PNG inside the page (no network needed to view it):

* every call (a *step*): recipe, IFU, worker and host, start, end and wall time,
  inputs (linked to the step that made them), products with their ``ESO PRO CATG``
  and every ``ESO QC`` keyword, parameters and the whole provenance record;
* a timeline: one bar per call, coloured by worker, arrows from each input's maker;
* zscale images (IRAF's ZScale, :class:`astropy.visualization.ZScaleInterval`) of the
  master calibrations and the other products named by ``images`` (``MASTER_*``,
  ``TWILIGHT_CUBE``, ``ILLUM``, ``IMAGE_FOV*``);
* the QC keywords of each step compared across IFUs and exposures, outliers marked
  (:func:`outliers`);
* the white-light image and two spectra of each DATACUBE_FINAL: summed over a
  circle around the brightest source, and the sky over the same area
  (:mod:`cpldask.look` finds them);
* the log tail of failed calls. A failed call leaves nothing in the output
  directory (its private call directory is removed, nothing is installed), so these
  come from the caller: :meth:`cpldask.workflow.Reduction.report` passes the
  exceptions of its failed steps. From the directory alone the page can tell the
  calls still running or interrupted (their call directory under ``.cpldask-tmp``).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import fcntl
import fnmatch
import html
import io
import json
import math
import os
import pathlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import __version__, _fitsheader
from .look import pyplot as _pyplot

__all__ = ["write_report", "collect", "outliers", "IMAGES", "Step", "Product"]

#: PRO CATG patterns (fnmatch) of the products shown as zscale images
IMAGES = ("MASTER_*", "TWILIGHT_CUBE", "ILLUM", "IMAGE_FOV*")
#: a value further than this many robust sigmas from the median is an outlier
SIGMAS = 3.0
#: images are block-averaged to at most this many pixels a side: the page shows them
#: 300 pixels wide (a MUSE master calibration, 4096 x 4112, in 13 x 13 blocks is
#: 315 x 316 pixels, ~100 kB of 8-bit PNG for a noise-like bias)
THUMBNAIL = 320
#: fewer values than this are not searched for outliers (with 3 or 4, the median
#: absolute deviation is too often near 0)
MIN_VALUES = 5
#: lines of a failed call's log shown
LOG_TAIL = 60
#: the call directories of running calls, under an output directory (cpldask.worker.install.TMP)
TMP = ".cpldask-tmp"

#: an IFU folder of cpldask.reduce's layout: <output_dir>/<step>/ifu07
_UNIT_DIR = re.compile(r"ifu(\d+)$")
_NUMBER = re.compile(r"\d+")


# ---------------------------------------------------------------------------------
# What the output directory holds
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Product:
    """One product file as the report shows it."""

    tag: str
    path: pathlib.Path  # beside the provenance record (the recorded path may be elsewhere)
    catg: str | None
    qc: dict[str, Any]  # every ESO QC keyword of every HDU (the first occurrence wins)
    hdus: tuple  # (name, shape, dtype) of the HDUs that hold data
    size: int | None  # None: the file is missing


@dataclasses.dataclass
class Step:
    """One recipe call: its provenance record, or (failed, running) what is known."""

    label: str  # 'muse_bias[1]' (cpldask.reduce's labels), 'muse_scipost'
    name: str  # the step's folder: 'muse_bias'
    unit: int | None  # the IFU of an ifuNN folder
    status: str  # finished, cached, failed, running, interrupted, not run
    prov: dict = dataclasses.field(default_factory=dict)
    record: pathlib.Path | None = None
    products: list[Product] = dataclasses.field(default_factory=list)
    log: str = ""  # failed: the log tail
    deps: list["Step"] = dataclasses.field(default_factory=list)

    @property
    def recipe(self) -> str:
        return self.prov.get("recipe", self.name)

    @property
    def run(self) -> dict:
        return self.prov.get("run") or {}

    @property
    def anchor(self) -> str:
        return "step-" + re.sub(r"[^A-Za-z0-9_-]+", "-", self.label).strip("-")


def collect(output_dir: str | os.PathLike) -> list[Step]:
    """The steps whose records are under ``output_dir``, in the order they started,
    with their products' headers read and ``deps`` set (from the inputs' content
    keys, or their paths where a record has no key); then the calls that are
    running or were interrupted (their call directories).

    Examples
    --------
    >>> [s.label for s in collect('reduced/')][:3]      # doctest: +SKIP
    ['muse_bias[1]', 'muse_bias[2]', 'muse_dark[2]']
    """
    base = pathlib.Path(output_dir)
    steps = []
    for record in sorted(base.rglob("*.provenance.json")):
        if TMP in record.relative_to(base).parts:
            continue  # a call directory's own copy (no output_dir) is not a product
        try:
            prov = json.loads(record.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{record}: not a readable provenance record ({err}); "
                             f"remove it or write the call again") from err
        name, unit = _place(base, record.parent, prov.get("recipe", "?"))
        products = [_read_product(tag, record.parent / os.path.basename(path))
                    for tag, path in prov.get("products", [])]
        status = "cached" if prov.get("cache_hit") else "finished"
        steps.append(Step(_label(name, unit), name, unit, status, prov, record, products))
    _name_reruns(steps)
    steps.sort(key=lambda s: (s.run.get("start") or 0.0, s.label))
    _link(steps)
    labels = {s.label for s in steps}
    for s in _unfinished(base):
        if s.label in labels:  # a second call of a finished step, into its folder
            s.label = f"{s.label} {s.status}"
        steps.append(s)
    return steps


def _place(base: pathlib.Path, folder: pathlib.Path, recipe: str) -> tuple[str, int | None]:
    """(step name, IFU) of a record's folder: ``muse_bias/ifu01`` -> muse_bias, 1; a
    record in ``output_dir`` itself is named by its recipe."""
    parts = folder.relative_to(base).parts
    unit = None
    if parts and (m := _UNIT_DIR.match(parts[-1])):
        unit, parts = int(m.group(1)), parts[:-1]
    return ("/".join(parts) or recipe), unit


def _label(name: str, unit: int | None) -> str:
    return name if unit is None else f"{name}[{unit}]"


def _parse_label(label: str) -> tuple[str, int | None]:
    """'muse_flat[2]' -> ('muse_flat', 2); 'muse_scipost' -> ('muse_scipost', None)."""
    m = re.fullmatch(r"(.*)\[(\d+)\]", label)
    return (m.group(1), int(m.group(2))) if m else (label, None)


def _name_reruns(steps: list[Step]) -> None:
    """A folder with records of several calls (a call recomputed after a lost
    worker installs numbered copies beside the first): 'muse_bias[1] run 2' ..."""
    by_label: dict[str, list[Step]] = {}
    for s in steps:
        by_label.setdefault(s.label, []).append(s)
    for same in by_label.values():
        if len(same) > 1:
            same.sort(key=lambda s: s.run.get("start") or 0.0)
            for n, s in enumerate(same[1:], start=2):
                s.label = f"{s.label} run {n}"


def _link(steps: list[Step]) -> None:
    by_key = {s.prov["key"]: s for s in steps if s.prov.get("key")}
    by_path = {str(p): s for s in steps for _, p in s.prov.get("products", [])}
    for s in steps:
        for inp in s.prov.get("inputs", []):
            maker = by_key.get(inp.get("from")) if inp.get("from") else None
            for path in _paths(inp):
                maker = maker or by_path.get(path)
            if maker is not None and maker is not s and maker not in s.deps:
                s.deps.append(maker)


def _paths(inp: Mapping) -> list[str]:
    path = inp.get("path")
    return list(path) if isinstance(path, list) else ([path] if path else [])


def _read_product(tag: str, path: pathlib.Path) -> Product:
    if not path.exists():
        return Product(tag, path, None, {}, (), None)
    try:
        cards = _fitsheader.headers(str(path))
    except _fitsheader.Unsupported:
        cards = _fitsheader.astropy_headers(str(path))
    except OSError:
        cards = []
    qc: dict[str, Any] = {}
    for hdu in cards:
        for key, value in hdu.items():
            if key.startswith("ESO QC "):
                qc.setdefault(key, value)
    shapes = tuple(filter(None, (_fitsheader.hdu_shape(c, i) for i, c in enumerate(cards))))
    catg = cards[0].get("ESO PRO CATG") if cards else None
    return Product(tag, path, catg, qc, shapes, path.stat().st_size)


def _unfinished(base: pathlib.Path) -> list[Step]:
    """Calls whose call directory is still under ``.cpldask-tmp``: running (a live
    process holds its lock) or interrupted (a killed worker; pruned later)."""
    out = []
    for job in sorted(base.rglob(f"{TMP}/*/.cpldask-job.json")):
        call_dir = job.parent
        try:
            spec = json.loads(job.read_text())
            with open(call_dir / ".cpldask-lock", "rb") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    status = "interrupted"
                except BlockingIOError:
                    status = "running"
            started = job.stat().st_mtime
        except (OSError, ValueError):
            continue  # it finished (and went away) while we looked
        name, unit = _place(base, call_dir.parent.parent, spec.get("recipe", "?"))
        inputs = [{"tag": tag, "path": paths} for tag, paths in spec.get("raw", [])]
        inputs += [{"tag": tag, "path": paths} for tag, paths in spec.get("calib", {}).items()]
        prov = {"recipe": spec.get("recipe", name), "inputs": inputs,
                "params": dict(spec.get("params", [])),
                "run": {"start": started, "host": None}}
        out.append(Step(_label(name, unit), name, unit, status, prov, None))
    return out


# ---------------------------------------------------------------------------------
# QC values across IFUs and exposures
# ---------------------------------------------------------------------------------
def outliers(values: Sequence[float], sigmas: float = SIGMAS) -> np.ndarray:
    """Which values are more than ``sigmas`` robust standard deviations from their
    median. The robust sigma is 1.4826 x the median absolute deviation (MAD), which
    is the standard deviation for normally distributed values. When more than half
    the values are equal (the MAD is 0, as for counts of lines or saturated pixels),
    it is 1.2533 x the mean absolute deviation from the median instead (also the
    standard deviation of a normal distribution), so that one value out of many
    stands out and a count that is 92 or 93 does not. Fewer than
    :data:`MIN_VALUES` values have no outliers.

    Examples
    --------
    >>> outliers([1.0, 1.1, 0.9, 1.0, 9.0]).tolist()
    [False, False, False, False, True]
    """
    v = np.asarray(values, dtype=float)
    if v.size < MIN_VALUES:
        return np.zeros(v.shape, bool)
    dev = np.abs(v - np.median(v))
    sigma = 1.4826 * np.median(dev)
    if sigma == 0:
        sigma = 1.2533 * np.mean(dev)
    return dev > sigmas * sigma if sigma > 0 else np.zeros(v.shape, bool)


@dataclasses.dataclass
class _Value:
    step: Step
    series: str  # 'IFU 1', 'IFU 1 exp 2', or the label
    keyword: str
    pattern: str  # the keyword with its numbers as '#': 'ESO QC BIAS MASTER# RON'
    index: tuple[int, ...]  # its numbers: (1,)
    value: float
    outlier: bool = False


def _qc_values(steps: Sequence[Step]) -> dict[str, list[_Value]]:
    """Numeric QC values by step name; each step's products of one PRO CATG count
    as its exposures (several PIXTABLE_OBJECT of one muse_scibasic call)."""
    out: dict[str, list[_Value]] = {}
    for s in steps:
        seen: dict[tuple[int, str], bool] = {}
        count: dict[str | None, int] = {}
        for p in s.products:
            n = count[p.catg] = count.get(p.catg, 0) + 1
            several = sum(q.catg == p.catg for q in s.products) > 1
            unit = f"IFU {s.unit}" if s.unit is not None else s.label
            series = f"{unit} exp {n}" if several else unit
            for key, value in p.qc.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not math.isfinite(value) or (n, key) in seen:
                    continue  # products of a call share keywords: one value each
                seen[(n, key)] = True
                pattern = _NUMBER.sub("#", key)
                index = tuple(int(x) for x in _NUMBER.findall(key))
                out.setdefault(s.name, []).append(
                    _Value(s, series, key, pattern, index, float(value)))
    for values in out.values():
        _mark(values)
    return out


def _mark(values: list[_Value]) -> None:
    """Mark outliers: each keyword against the same keyword of the other IFUs and
    exposures, if there are at least :data:`MIN_VALUES` of them; otherwise against
    the other numbers of its pattern in the same product (slices, quadrants, inputs)."""
    by_key: dict[str, list[_Value]] = {}
    for v in values:
        by_key.setdefault(v.keyword, []).append(v)
    alone: dict[tuple[str, str], list[_Value]] = {}
    for group in by_key.values():
        if len(group) >= MIN_VALUES:
            for v, bad in zip(group, outliers([v.value for v in group])):
                v.outlier = bool(bad)
        else:
            for v in group:
                alone.setdefault((v.series, v.pattern), []).append(v)
    for group in alone.values():
        for v, bad in zip(group, outliers([v.value for v in group])):
            v.outlier = bool(bad)


# ---------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------
def _png(fig) -> str:
    """A figure as a ``data:`` URI (the page needs no other file)."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _timeline(steps: Sequence[Step]) -> str | None:
    """One bar per call from start to end, coloured by worker; arrows from the end of
    each input's maker to the start of the call that used it."""
    timed = [s for s in steps if s.run.get("start") is not None]
    if not timed:
        return None
    plt = _pyplot()
    t0 = min(s.run["start"] for s in timed)
    workers = sorted({_worker(s) for s in timed})
    colors = plt.get_cmap("tab10")
    row = {id(s): i for i, s in enumerate(timed)}
    edges = _direct_edges(timed)
    fig, ax = plt.subplots(figsize=(11, 0.26 * len(timed) + 1.3), dpi=90)
    now = time.time()
    for s in timed:
        y, start = row[id(s)], s.run["start"] - t0
        end = (s.run.get("end") or now) - t0
        color = colors(workers.index(_worker(s)) % 10)
        ax.barh(y, max(end - start, 0.0), left=start, height=0.6, color=color,
                hatch="//" if s.status != "finished" else None,
                edgecolor="0.2" if s.status != "finished" else color)
        if s.status == "cached":
            ax.plot(start, y, "D", color=color, ms=5)
        for d in edges[id(s)]:
            if id(d) in row and d.run.get("end"):
                ax.annotate("", xy=(start, y), xytext=(d.run["end"] - t0, row[id(d)]),
                            arrowprops={"arrowstyle": "-|>", "lw": 0.5, "color": "0.55",
                                        "mutation_scale": 6, "shrinkA": 0, "shrinkB": 0})
    ax.set_yticks(range(len(timed)), [s.label for s in timed], fontsize=7)
    ax.set_ylim(len(timed) - 0.4, -0.6)
    ax.set_xlabel("seconds after the first call started")
    ax.grid(axis="x", lw=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors(i % 10)) for i in range(len(workers))]
    ax.legend(handles, workers, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0),
              ncol=min(len(workers), 4), frameon=False, title="worker", title_fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _worker(step: Step) -> str:
    """Who ran a call: its worker's address, else its host, else its state."""
    return str(step.run.get("worker") or step.run.get("host") or f"({step.status})")


def _direct_edges(steps: Sequence[Step]) -> dict[int, list[Step]]:
    """Each step's inputs without those implied by others (bias -> twilight when
    bias -> flat -> twilight): 24 IFUs' arrows stay readable."""
    ancestors: dict[int, set[int]] = {}

    def of(s: Step) -> set[int]:
        if id(s) not in ancestors:
            ancestors[id(s)] = set()  # a cycle (impossible in a record) ends here
            ancestors[id(s)] = set().union(*[{id(d)} | of(d) for d in s.deps])
        return ancestors[id(s)]

    return {id(s): [d for d in s.deps if not any(id(d) in of(o) for o in s.deps if o is not d)]
            for s in steps}


def _image_hdus(product: Product) -> list[str]:
    """The HDUs to show of a product: DATA if there is one, else every image HDU."""
    images = [name for name, shape, dtype in product.hdus
              if len(shape) in (2, 3) and not dtype.startswith("table")]
    return ["DATA"] if "DATA" in images else images


def _read_image(path: pathlib.Path, hdu: str) -> np.ndarray:
    """An image HDU as a 2-D float array: a cube collapsed by the median over its
    first axis (wavelength), then block-averaged to at most THUMBNAIL pixels a side."""
    import warnings

    from astropy.io import fits

    with fits.open(path, memmap=True) as hdul:
        data = np.asarray(hdul[hdu].data, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        if data.ndim == 3:
            data = np.nanmedian(data, axis=0)
        block = max(1, math.ceil(max(data.shape) / THUMBNAIL))
        if block > 1:
            ny, nx = (n // block * block for n in data.shape)
            data = np.nanmean(data[:ny, :nx].reshape(ny // block, block, nx // block,
                                                     block), axis=(1, 3))
    return data


def _zscale(data: np.ndarray) -> tuple[float, float]:
    from astropy.visualization import ZScaleInterval

    finite = data[np.isfinite(data)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = ZScaleInterval().get_limits(finite)
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _thumbnail(data: np.ndarray, lo: float, hi: float) -> str:
    """The image in 255 grey levels from ``lo`` to ``hi``, one PNG pixel per array
    pixel, bottom row first (as FITS viewers show it), NaN in red: an 8-bit palette
    image, a quarter of the RGBA one matplotlib's ``imsave`` writes."""
    from PIL import Image

    scaled = np.clip((data - lo) / (hi - lo), 0.0, 1.0) * 254.0
    levels = np.where(np.isfinite(data), np.nan_to_num(scaled), 255).astype(np.uint8)
    image = Image.fromarray(levels[::-1], mode="L").convert("P")
    palette = [v for g in range(255) for v in (g, g, g)] + [0xc0, 0x39, 0x2b]
    image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _qc_figure(values: list[_Value]) -> tuple[str | None, list[str]]:
    """Small plots of one step's QC keyword patterns that vary: x is the number in
    the keyword (slice, quadrant, input), one colour per IFU/exposure; keywords
    without a number only with at least :data:`MIN_VALUES` IFUs/exposures (x: those;
    fewer are shown in a table). Outliers circled red.
    Returns (the figure as a data URI, the patterns whose values are all equal)."""
    by_pattern: dict[str, list[_Value]] = {}
    for v in values:
        by_pattern.setdefault(v.pattern, []).append(v)
    constant = sorted(p for p, vs in by_pattern.items() if len({v.value for v in vs}) == 1)
    series = sorted({v.series for v in values}, key=_natural)
    shown = [p for p, vs in by_pattern.items() if p not in constant
             and (vs[0].index or len(series) >= MIN_VALUES)]
    if not shown:
        return None, constant
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cmap = plt.get_cmap("tab10" if len(series) <= 10 else "viridis")
    color = {s: cmap(i % 10 if len(series) <= 10 else i / max(len(series) - 1, 1))
             for i, s in enumerate(series)}
    ncol = 4
    nrow = math.ceil(len(shown) / ncol)
    height = 2.1 * nrow + 0.5
    fig, axes = plt.subplots(nrow, ncol, figsize=(12, height), dpi=80, squeeze=False)
    for ax, pattern in zip(axes.flat, shown):
        group = by_pattern[pattern]
        numbered = bool(group[0].index)
        if numbered:
            where, labels = _positions(group)
        for i, s in enumerate(series):
            mine = [v for v in group if v.series == s]
            if not mine:
                continue
            x = [where[v.index] for v in mine] if numbered else [i] * len(mine)
            ax.plot(x, [v.value for v in mine], "o-" if numbered else "o", ms=2.5,
                    lw=0.6, color=color[s])
            bad = [(xx, v.value) for xx, v in zip(x, mine) if v.outlier]
            if bad:
                ax.plot(*zip(*bad), "o", ms=8, mfc="none", mec="red", mew=1.3)
        if numbered and labels is not None:
            ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=60)
        elif numbered:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.set_xticks(range(len(series)), series, fontsize=6, rotation=60)
        ax.set_title(pattern.removeprefix("ESO QC "), fontsize=7)
        ax.tick_params(labelsize=6)
        ax.yaxis.get_offset_text().set_fontsize(6)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", ms=4, color=color[s]) for s in series]
    handles.append(plt.Line2D([], [], marker="o", ls="", ms=7, mfc="none", mec="red"))
    fig.legend(handles, [*series, f"outlier (> {SIGMAS:g} robust sigma)"], fontsize=7,
               loc="upper center", ncol=min(len(series) + 1, 8), frameon=False)
    # fixed margins: tight_layout took half of the report's time (6 of 12 s, 8 steps)
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 0.55 / height,
                        bottom=0.45 / height, hspace=0.55, wspace=0.32)
    return _png(fig), constant


def _qc_table(values: list[_Value], constant: list[str]) -> str:
    """The keywords without a number that vary: one row each, a column per
    IFU/exposure, outliers in red."""
    series = sorted({v.series for v in values}, key=_natural)
    cells: dict[str, dict[str, _Value]] = {}
    for v in values:
        if not v.index and v.pattern not in constant:
            cells.setdefault(v.keyword, {})[v.series] = v
    if not cells:
        return ""
    rows = []
    for key, mine in cells.items():
        row = [_e(key.removeprefix("ESO QC "))]
        for s in series:
            v = mine.get(s)
            row.append("-" if v is None else (f'<span class="out">{_num(v.value)}</span>'
                                              if v.outlier else _num(v.value)))
        rows.append(row)
    return _table(["keyword", *series], rows, raw=True)


def _positions(group: list[_Value]) -> tuple[dict[tuple, float], list[str] | None]:
    """Where each index of a numbered pattern goes on the x axis: its number, or with
    several numbers the one that varies (SLICE12 LAMP1..3 -> 1..3); if more than one
    varies, the place in their order, with labels such as '1.2' (None: numeric axis)."""
    indices = sorted({v.index for v in group})
    varying = [k for k in range(len(indices[0])) if len({i[k] for i in indices}) > 1]
    if len(varying) <= 1:
        k = varying[0] if varying else 0
        return {i: float(i[k]) for i in indices}, None
    return ({i: float(n) for n, i in enumerate(indices)},
            [".".join(map(str, i)) for i in indices])


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _spectra(cube: pathlib.Path, fov: Product | None) -> dict | None:
    """The white-light image of a DATACUBE_FINAL (its IMAGE_FOV, or the cube's mean
    over wavelength) with the regions marked, and the spectra summed over them: a
    circle of :data:`cpldask.look.RADIUS` pixels around the brightest source, and the
    sky (the median spectrum of the source-free pixels) over as many pixels
    (:mod:`cpldask.look` finds them, for ``cpldask demo`` too)."""
    from . import look

    white, _ = look.white_light(cube, fov.path if fov is not None else None)
    finite = np.isfinite(white)
    if not finite.any():
        return None
    sources = look.find_sources(white)
    x0, y0 = look.brightest(white, sources)
    radius = look.RADIUS
    star = look.aperture(white.shape, x0, y0, radius) & finite
    sky = look.sky_pixels(white, sources, radius=radius, centre=(x0, y0))
    spec = look.spectra(cube, star, sky)
    plt = _pyplot()
    ny, nx = white.shape
    lo, hi = _zscale(white)
    fig, ax = plt.subplots(figsize=(11, min(6.0, max(1.8, 11 * ny / nx + 0.9))), dpi=90)
    ax.imshow(np.ma.masked_invalid(white), origin="lower", cmap="gray", vmin=lo, vmax=hi,
              interpolation="nearest", aspect="equal",
              extent=(0.5, nx + 0.5, 0.5, ny + 0.5))
    ax.add_patch(plt.Circle((x0, y0), radius, fill=False, ec="cyan", lw=1.0))
    if sky.any():  # the sky pixels tinted orange
        tint = np.zeros((*sky.shape, 4))
        tint[sky] = (1.0, 0.55, 0.0, 0.35)
        ax.imshow(tint, origin="lower", interpolation="nearest", aspect="equal",
                  extent=(0.5, nx + 0.5, 0.5, ny + 0.5))
    ax.set_title(f"white light, zscale [{lo:.4g}, {hi:.4g}]; cyan: brightest source "
                 f"(x={x0:.1f}, y={y0:.1f}, r={radius:g} px) of {len(sources)}, "
                 f"orange: sky", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    image = _png(fig)
    fig = look.plot_spectra(spec, label="brightest source")
    fig.tight_layout()
    return {"image": image, "spectrum": _png(fig), "star": (round(x0), round(y0)),
            "npix": spec["npix"], "nsky": spec["nsky"]}


# ---------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------
CSS = """
body {font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2733;
      background: #f6f7f9}
header {background: #1d3557; color: #fff; padding: 14px 28px}
header h1 {margin: 0; font-size: 22px}
header p {margin: 4px 0 0; opacity: .85}
main {padding: 8px 28px 40px; max-width: 1500px}
nav {margin: 10px 0} nav a {margin-right: 14px} a {color: #1d5fa8}
h2 {border-bottom: 2px solid #1d3557; padding-bottom: 3px; margin-top: 34px}
h3 {margin: 0 0 6px} h4 {margin: 12px 0 4px}
table {border-collapse: collapse; font-size: 12.5px; background: #fff}
th, td {border: 1px solid #d5dae1; padding: 2px 7px; text-align: left;
        vertical-align: top}
th {background: #e9edf2}
.step {background: #fff; border: 1px solid #d5dae1; border-left: 5px solid #2a9d8f;
       border-radius: 4px; padding: 10px 14px; margin: 12px 0}
.badge {font-size: 11px; padding: 1px 7px; border-radius: 8px; color: #fff;
        background: #2a9d8f; margin-left: 6px; vertical-align: middle}
.step.failed {border-left-color: #c0392b} .badge.failed {background: #c0392b}
.step.cached {border-left-color: #8e9aaf} .badge.cached {background: #8e9aaf}
.step.running, .step.interrupted, .step.not-run {border-left-color: #e9a23b}
.badge.running, .badge.interrupted, .badge.not-run {background: #e9a23b}
.out {color: #c0392b; font-weight: 600} .muted {color: #68717d}
pre {background: #1e1e1e; color: #e8e8e8; padding: 8px; overflow: auto;
     font-size: 11.5px; max-height: 420px}
details {margin: 4px 0} summary {cursor: pointer; color: #1d5fa8}
.grid {display: flex; flex-wrap: wrap; gap: 12px}
figure {margin: 0; background: #fff; border: 1px solid #d5dae1; padding: 6px}
figure img {display: block; width: 300px; image-rendering: pixelated}
figure.wide img {width: 100%; max-width: 1000px; image-rendering: auto}
figcaption {font-size: 11.5px; max-width: 300px} figure.wide figcaption {max-width: none}
img.plot {max-width: 100%; background: #fff; border: 1px solid #d5dae1}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if isinstance(value, float):  # 10 digits: a time stamp keeps its tenths
        return f"{value:.10g}"
    return str(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _clock(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _bytes(n: float | None) -> str:
    if n is None:
        return "missing"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (they hold markup already)."""
    cell = (lambda c: c) if raw else _e
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>")
    return "".join(out) + "</table>"


def _rel(path: pathlib.Path, page: pathlib.Path) -> str:
    """A link from the page to a file beside it (relative: works on a copy too)."""
    try:
        return os.path.relpath(path, page.parent)
    except ValueError:
        return str(path)


def _failure_text(failure: Any) -> str:
    """A failed call's message and the tail of its log: from the exception a Result
    gives (cpldask's errors carry the recipe's log as python-cpl's LogList), or text."""
    if isinstance(failure, str):
        lines = failure.splitlines()
        return "\n".join(lines[-LOG_TAIL:])
    head = f"{type(failure).__name__}: {failure}".strip()
    records = list(getattr(failure, "log", None) or [])
    lines = []
    for rec in records[-LOG_TAIL:]:
        if isinstance(rec, str):
            lines.append(rec)
            continue
        when = datetime.datetime.fromtimestamp(getattr(rec, "created", 0.0)).strftime("%H:%M:%S")
        lines.append(f"{when} [{getattr(rec, 'levelname', '?'):>7}] "
                     f"{getattr(rec, 'funcName', '') or getattr(rec, 'name', '')}: "
                     f"{rec.getMessage() if hasattr(rec, 'getMessage') else rec}")
    more = f"... ({len(records) - LOG_TAIL} earlier lines)\n" if len(records) > LOG_TAIL else ""
    return head + ("\n\n" + more + "\n".join(lines) if lines else "\n\n(no log)")


def write_report(output_dir: str | os.PathLike, path: str | os.PathLike | None = None, *,
                 failed: Mapping[str, Any] | None = None,
                 planned: Iterable[str] | None = None,
                 images: Sequence[str] = IMAGES,
                 title: str | None = None) -> pathlib.Path:
    """Write the HTML report of a cpldask output directory.

    Parameters
    ----------
    output_dir : path
        A directory ``cpldask reduce`` (or any call with ``output_dir``) wrote, finished
        or not: its ``*.provenance.json`` records and products are read.
    path : path, optional
        The page to write; default ``output_dir/report.html``.
    failed : mapping, optional
        Failed calls by step label (``'muse_flat[2]'``): the exception of each
        (``result.exception()``; its ``log`` is shown) or the log as text. A failed
        call leaves nothing in the output directory, so only a caller knows them.
    planned : iterable of str, optional
        The labels of every step of the plan: those with no record and no failure
        are shown as not run.
    images : sequence of str
        PRO CATG patterns (fnmatch) of the products shown as zscale images.
    title : str, optional
        The page's heading (default: the directory's name).

    Returns
    -------
    pathlib.Path
        The page written.

    Raises
    ------
    FileNotFoundError
        ``output_dir`` does not exist.
    ValueError
        It holds no provenance record, call directory or failure to report.

    Examples
    --------
    >>> page = write_report("reduced/")                # doctest: +SKIP
    >>> page.name, page.stat().st_size > 0             # doctest: +SKIP
    ('report.html', True)
    """
    base = pathlib.Path(output_dir).expanduser().absolute()
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is not a directory: give the output_dir of a "
                                f"reduction (cpldask reduce --output-dir)")
    page = pathlib.Path(path).expanduser().absolute() if path else base / "report.html"
    t_start = time.monotonic()
    steps = collect(base)
    known = {s.label for s in steps}
    for label, failure in (failed or {}).items():
        earlier = [s for s in steps if s.label == label]
        if earlier:  # the files here are from an earlier run: say so, keep them shown
            earlier[0].log, earlier[0].status = _failure_text(failure), "failed"
        else:
            steps.append(Step(label, *_parse_label(label), "failed",
                              log=_failure_text(failure)))
            known.add(label)
    for label in planned or ():
        if label not in known:
            steps.append(Step(label, *_parse_label(label), "not run"))
    if not steps:
        raise ValueError(f"{base} holds no provenance record (*.provenance.json): no "
                         f"call has finished there yet; is it the output_dir of a "
                         f"reduction?")
    html_text = _page(base, page, steps, images=images, title=title or base.name,
                      started=t_start)
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = page.with_name(f".{page.name}.{os.getpid()}")
    tmp.write_text(html_text, encoding="utf-8")
    os.replace(tmp, page)  # a reader never sees half a page
    return page


def _page(base: pathlib.Path, page: pathlib.Path, steps: list[Step], *,
          images: Sequence[str], title: str, started: float) -> str:
    qc = _qc_values([s for s in steps if s.products])
    bad = {(id(v.step), v.keyword) for values in qc.values() for v in values if v.outlier}
    body = [_summary(base, steps, bad), _timeline_section(steps), _failures(steps),
            _white_light(steps), _calibrations(steps, images), _qc_section(qc),
            _steps_section(steps, page, bad)]
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("summary", "Summary"), ("timeline", "Timeline"), ("failures", "Failures"),
        ("white-light", "White light &amp; spectra"), ("calibrations", "Calibrations"),
        ("qc", "QC"), ("steps", "Steps")))
    took = time.monotonic() - started
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}: cpldask reduction report</title><style>{CSS}</style>"
            f"</head><body><header><h1>Reduction report: {_e(title)}</h1>"
            f"<p>{_e(base)} &middot; written {_e(_clock(time.time()))} by cpldask "
            f"{_e(__version__)} in {took:.1f} s</p></header><main><nav>{nav}</nav>"
            + "".join(body) + "</main></body></html>\n")


def _summary(base: pathlib.Path, steps: list[Step], bad: set) -> str:
    timed = [s for s in steps if s.run.get("start") is not None and s.run.get("end")]
    counts: dict[str, int] = {}
    for s in steps:
        counts[s.status] = counts.get(s.status, 0) + 1
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    text = f"{len(steps)} calls: {', '.join(parts)}."
    if timed:
        span = max(s.run["end"] for s in timed) - min(s.run["start"] for s in timed)
        busy = sum(s.run["end"] - s.run["start"] for s in timed)
        hosts = sorted({str(s.run.get("host")) for s in timed})
        workers = sorted({str(s.run.get("worker")) for s in timed})
        text += (f" From the first start to the last end {span:.1f} s; the recipes ran "
                 f"{busy:.1f} s in all ({busy / span if span else 0:.2f} at a time on "
                 f"average) on {len(workers)} worker(s) of host(s) {', '.join(hosts)}.")
    versions = sorted({(s.recipe, s.prov.get("recipe_version"), s.prov.get("cpl_version"))
                       for s in steps if s.prov.get("recipe_version")})
    t0 = min((s.run["start"] for s in timed), default=0.0)
    rows = []
    for s in steps:
        start = s.run.get("start")
        end = s.run.get("end")
        status = s.status.replace(" ", "-")
        outs = sum(1 for k in bad if k[0] == id(s))
        rows.append([f'<a href="#{s.anchor}">{_e(s.label)}</a>', _e(s.recipe),
                     f'<span class="badge {status}">{_e(s.status)}</span>',
                     _e(s.run.get("worker") or "-"),
                     _seconds(start - t0 if start is not None else None),
                     _seconds(end - start if start is not None and end else None),
                     _e(", ".join(p.path.name for p in s.products) or "-"),
                     f'<span class="out">{outs}</span>' if outs else "0"])
    recipes = "; ".join(f"{r} {v} (CPL {c})" for r, v, c in versions)
    return (f'<h2 id="summary">Summary</h2><p>{_e(text)}</p>'
            + (f'<p class="muted">Recipes: {_e(recipes)}.</p>' if versions else "")
            + _table(["step", "recipe", "status", "worker", "start", "wall", "products",
                      "QC outliers"], rows, raw=True))


def _timeline_section(steps: list[Step]) -> str:
    uri = _timeline(steps)
    if uri is None:
        return '<h2 id="timeline">Timeline</h2><p>No call has a start time.</p>'
    return ('<h2 id="timeline">Timeline</h2><p>One bar per recipe call, from its start to '
            'its end (the recipe process\'s own times), coloured by the worker that ran '
            'it; an arrow goes from the end of the call that made an input to the start '
            'of the call that used it. Hatched: not finished here (cache hits, running).'
            f'</p><img class="plot" alt="timeline of the recipe calls" src="{uri}">')


def _failures(steps: list[Step]) -> str:
    failed = [s for s in steps if s.status == "failed"]
    out = ['<h2 id="failures">Failures</h2>']
    if not failed:
        out.append("<p>No failed call was reported. (A failed call leaves nothing in the "
                   "output directory: its failures are shown when the report is written "
                   "by <code>Reduction.report()</code>, which knows them.)</p>")
    for s in failed:
        out.append(f'<h3><a href="#{s.anchor}">{_e(s.label)}</a></h3>'
                   f"<pre>{_e(s.log)}</pre>")
    stuck = [s for s in steps if s.status in ("running", "interrupted", "not run")]
    if stuck:
        out.append("<p>Not finished: " + ", ".join(
            f'<a href="#{s.anchor}">{_e(s.label)}</a> ({_e(s.status)})' for s in stuck)
            + ".</p>")
    return "".join(out)


def _white_light(steps: list[Step]) -> str:
    out = ['<h2 id="white-light">White light &amp; spectra</h2>']
    found = False
    for s in steps:
        cubes = [p for p in s.products if p.catg == "DATACUBE_FINAL" and p.size]
        fovs = [p for p in s.products if (p.catg or "").startswith("IMAGE_FOV") and p.size]
        for i, cube in enumerate(cubes):
            found = True
            result = _spectra(cube.path, fovs[i] if i < len(fovs) else None)
            if result is None:
                out.append(f"<p>{_e(cube.path.name)}: no finite pixel.</p>")
                continue
            x, y = result["star"]
            out.append(f'<h3>{_e(s.label)}: {_e(cube.path.name)}</h3>'
                       f'<figure class="wide"><img alt="white-light image of {_e(cube.path.name)}"'
                       f' src="{result["image"]}"><figcaption>White-light image '
                       f'({_e(fovs[i].path.name) if i < len(fovs) else "mean of the cube"}).'
                       f'</figcaption></figure><figure class="wide"><img alt="spectra of '
                       f'{_e(cube.path.name)}" src="{result["spectrum"]}"><figcaption>'
                       f'Sum over {result["npix"]} pixels around x={x}, y={y}, and the sky '
                       f'(median of {result["nsky"]} faint pixels away from it) over as '
                       f'many pixels.</figcaption></figure>')
    if not found:
        out.append("<p>No DATACUBE_FINAL in this directory.</p>")
    return "".join(out)


def _calibrations(steps: list[Step], images: Sequence[str]) -> str:
    figures = []
    for s in steps:
        for p in s.products:
            if not p.size or not any(fnmatch.fnmatchcase(p.catg or "", pat) for pat in images):
                continue
            for hdu in _image_hdus(p):
                try:
                    data = _read_image(p.path, hdu)
                except (OSError, KeyError, ValueError, TypeError) as err:
                    figures.append(f"<figure><figcaption>{_e(p.path.name)}[{_e(hdu)}]: "
                                   f"not readable ({_e(err)})</figcaption></figure>")
                    continue
                lo, hi = _zscale(data)
                shape = next((sh for n, sh, _ in p.hdus if n == hdu), ())
                note = " (median over wavelength)" if len(shape) == 3 else ""
                binned = "" if data.shape == tuple(shape[-2:]) else \
                    f", shown {data.shape[1]}x{data.shape[0]}"
                figures.append(
                    f'<figure><img alt="{_e(p.catg)} {_e(p.path.name)}" '
                    f'src="{_thumbnail(data, lo, hi)}"><figcaption>'
                    f'<a href="#{s.anchor}">{_e(s.label)}</a> {_e(p.catg)}<br>'
                    f'{_e(p.path.name)}[{_e(hdu)}]{note}: '
                    f'{"x".join(map(str, reversed(shape)))} px{binned}; zscale '
                    f'{lo:.4g} .. {hi:.4g}</figcaption></figure>')
    head = ('<h2 id="calibrations">Calibrations</h2><p>zscale (IRAF\'s ZScale, astropy\'s '
            '<code>ZScaleInterval</code>) grey levels of the products whose PRO CATG is '
            f'{_e(", ".join(images))}; images larger than {THUMBNAIL} pixels are '
            'block-averaged, NaN pixels are red.</p>')
    if not figures:
        return head + "<p>None in this directory.</p>"
    return head + '<div class="grid">' + "".join(figures) + "</div>"


def _qc_section(qc: dict[str, list[_Value]]) -> str:
    out = ['<h2 id="qc">QC across IFUs and exposures</h2><p>The <code>ESO QC</code> '
           'keywords of each step, numbers in a keyword (slice, quadrant, input) as '
           'the x axis; keywords without a number in a table (and plotted against the '
           f'IFUs/exposures when there are at least {MIN_VALUES}). Outliers (red '
           f'circles) are more than {SIGMAS:g} robust sigma from the median of the same '
           f'keyword in the other IFUs and exposures when there are at least '
           f'{MIN_VALUES} of them, otherwise of the same keyword pattern over the '
           'slices, quadrants or inputs of one product. The robust sigma is 1.4826 x '
           'the median absolute deviation, or 1.2533 x the mean absolute deviation '
           'when more than half the values are equal (both are the standard deviation '
           'of normally distributed values).</p>']
    if not qc:
        out.append("<p>No numeric QC keyword in this directory.</p>")
    for name, values in qc.items():
        uri, constant = _qc_figure(values)
        flagged = [v for v in values if v.outlier]
        out.append(f"<h3>{_e(name)}</h3>")
        if uri:
            out.append(f'<img class="plot" alt="QC of {_e(name)}" src="{uri}">')
        out.append(_qc_table(values, constant))
        if constant:
            out.append(f'<p class="muted">The same value everywhere: '
                       f'{_e(", ".join(p.removeprefix("ESO QC ") for p in constant))}.</p>')
        if flagged:
            rows = [[f'<a href="#{v.step.anchor}">{_e(v.step.label)}</a>', _e(v.series),
                     _e(v.keyword), f'<span class="out">{_num(v.value)}</span>']
                    for v in flagged]
            out.append(f"<details><summary>{len(flagged)} outlier(s)</summary>"
                       + _table(["step", "IFU/exposure", "keyword", "value"], rows, raw=True)
                       + "</details>")
    return "".join(out)


def _steps_section(steps: list[Step], page: pathlib.Path, bad: set) -> str:
    return '<h2 id="steps">Steps</h2>' + "".join(_step(s, page, bad) for s in steps)


def _step(s: Step, page: pathlib.Path, bad: set) -> str:
    """One step's section: facts, log tail, inputs, products, QC, parameters and
    the provenance record."""
    status = s.status.replace(" ", "-")
    parts = [f'<section class="step {status}" id="{s.anchor}" data-step="{_e(s.label)}">'
             f'<h3>{_e(s.label)}<span class="badge {status}">{_e(s.status)}</span></h3>',
             "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                                 for k, v in _facts(s)) + "</table>"]
    if s.status == "failed":
        note = " The products below are from an earlier run." if s.products else ""
        parts.append(f"<h4>Log tail</h4><p>This call failed.{_e(note)}</p>"
                     f"<pre>{_e(s.log)}</pre>")
    if s.prov.get("inputs"):
        parts.append("<h4>Inputs</h4>" + _table(["tag", "file", "from", "hash / DATAMD5"],
                                                _input_rows(s), raw=True))
    if s.products:
        parts.append("<h4>Products</h4>" + _products(s, page, bad))
    if s.prov.get("params"):
        rows = [[k, _num(v)] for k, v in s.prov["params"].items()]
        parts.append(f"<details><summary>Parameters ({len(rows)})</summary>"
                     + _table(["parameter", "value"], rows) + "</details>")
    if s.record is not None:
        parts.append(f'<details><summary>Provenance record '
                     f'(<a href="{_e(_rel(s.record, page))}">{_e(s.record.name)}</a>)'
                     f'</summary><pre>{_e(json.dumps(s.prov, indent=1))}</pre></details>')
    return "".join(parts) + "</section>"


def _facts(s: Step) -> list[tuple[str, str]]:
    prov, run = s.prov, s.run
    recipe = s.recipe
    if prov.get("recipe_version"):
        recipe += f" {prov['recipe_version']} (CPL {prov.get('cpl_version') or '?'})"
    facts = [("recipe", recipe)]
    if s.unit is not None:
        facts.append(("IFU", str(s.unit)))
    if run:
        facts += [("worker", f"{run.get('worker') or '-'} on {run.get('host') or '?'}"),
                  ("start", _clock(run.get("start"))), ("end", _clock(run.get("end")))]
        if run.get("end") and run.get("start") is not None:
            facts.append(("wall / user / sys", f"{run['end'] - run['start']:.1f} s / "
                          f"{run.get('user_time', 0):.1f} s / {run.get('sys_time', 0):.1f} s"))
        if run.get("max_rss"):
            facts.append(("max RSS", _bytes(run["max_rss"])))
    if prov.get("key"):
        cached = ", served from the product cache" if prov.get("cache_hit") else ""
        facts.append(("content key", f"{prov['key']} ({prov.get('hash', '')}){cached}"))
    if s.deps:
        facts.append(("after", ", ".join(d.label for d in s.deps)))
    return facts


def _input_rows(s: Step) -> list[list[str]]:
    """One row per input file: tag, path, the step that made it (a link), and its
    hash (xxh3-128 of a file; DATAMD5 of another call's product)."""
    makers: dict[str, Step] = {}
    for d in s.deps:
        makers.update({path: d for _, path in d.prov.get("products", [])})
        if d.prov.get("key"):
            makers[d.prov["key"]] = d
    rows = []
    for inp in s.prov["inputs"]:
        paths = _paths(inp)
        maker = makers.get(inp.get("from") or "") or next(
            (makers[p] for p in paths if p in makers), None)
        if maker is not None:
            origin = f'<a href="#{maker.anchor}">{_e(maker.label)}</a>'
        else:
            origin = "product of another call" if inp.get("from") else "file"
        hashes = inp.get("hash") or inp.get("datamd5") or []
        hashes = hashes if isinstance(hashes, list) else [hashes]
        for i, p in enumerate(paths):
            digest = hashes[i] if i < len(hashes) and hashes[i] else "-"
            rows.append([_e(inp.get("tag")), _e(p), origin, _e(digest)])
    return rows


def _products(s: Step, page: pathlib.Path, bad: set) -> str:
    """The products table (linked to the files), then each product's QC keywords."""
    rows = []
    for p in s.products:
        outs = sum(1 for k in p.qc if (id(s), k) in bad)
        hdus = "; ".join(f"{n} {'x'.join(map(str, reversed(sh)))} {dt}"
                         for n, sh, dt in p.hdus)
        qc = f"{len(p.qc)}" + (f' (<span class="out">{outs} outliers</span>)' if outs else "")
        rows.append([_e(p.tag), f'<a href="{_e(_rel(p.path, page))}">{_e(p.path.name)}</a>',
                     _e(p.catg or "-"), _e(hdus or "-"), _bytes(p.size), qc])
    out = [_table(["tag", "file", "PRO CATG", "HDUs", "size", "QC keywords"], rows, raw=True)]
    for p in s.products:
        if p.qc:
            rows = [[_e(k), f'<span class="out">{_e(_num(v))}</span>'
                     if (id(s), k) in bad else _e(_num(v))] for k, v in p.qc.items()]
            out.append(f"<details><summary>QC keywords of {_e(p.path.name)} ({len(p.qc)})"
                       f"</summary>" + _table(["keyword", "value"], rows, raw=True)
                       + "</details>")
    return "".join(out)
