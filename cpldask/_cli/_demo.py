"""``cpldask demo``: synthetic MUSE bias sets reduced to master biases in parallel.

The demo needs nothing but the MUSE pipeline: it writes a few sets of synthetic raw
bias frames (:func:`cpldask.instruments.muse.synthetic.write_bias`, one IFU, a different noise seed
per set), makes one threaded ``muse_bias`` call per set, and follows them with the
same display as ``cpldask run`` (:func:`cpldask._cli._batch.monitor`). A whole MUSE
reduction (``cpldask reduce``) plugs in the same way: prepare inputs, submit
calls as :class:`~cpldask._cli._batch.Job` objects, hand them to ``monitor``.

Layout of the work folder::

    cpldask-demo/
        set1/raw/BIAS_01.fits ...   synthetic input (kept and reused on a re-run)
        set1/MASTER_BIAS.fits       product
        set2/...
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil

import numpy as np
from astropy.io import fits
from rich.console import Console

from ..instruments.muse import synthetic
from ..recipe import Recipe
from ._batch import Job, cluster, monitor
from ._inputs import UsageError, bad_input

__all__ = ["demo", "write_sets", "submit"]

#: the IFU of the synthetic frames (one IFU keeps a muse_bias run to ~10 s)
IFU = 1


def demo(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``cpldask demo [--workdir D] [--sets N] [--frames N] [--seed S]``."""
    if args.sets < 1 or args.frames < 3:
        raise UsageError("the demo needs --sets >= 1 and --frames >= 3 (muse_bias "
                         "combines at least 3 frames)")
    with bad_input():  # a missing MUSE pipeline is the likely error here
        recipe = Recipe("muse_bias", threaded=True, path=args.recipe_path)
    recipe.param.nifu = IFU  # the frames hold this IFU only
    workdir = pathlib.Path(args.workdir).absolute()
    sets = write_sets(workdir, sets=args.sets, frames=args.frames, seed=args.seed, err=err)
    with cluster(args, err):
        jobs = submit(recipe, sets)
        return monitor(jobs, title=recipe.name, out=out, err=err, label_header="set",
                       columns=[("median DATA [adu]", _median_level)])


def write_sets(workdir: pathlib.Path, *, sets: int, frames: int, seed: int,
               err: Console) -> dict[str, list[pathlib.Path]]:
    """Raw bias frames of each set, written unless a previous run left them.

    Returns
    -------
    dict
        Frame paths by set name (``'set1'`` ...).
    """
    out = {}
    for i in range(1, sets + 1):
        name = f"set{i}"
        raw = workdir / name / "raw"
        files = sorted(raw.glob("BIAS_*.fits"))
        if len(files) != frames:
            with err.status(f"writing {frames} synthetic bias frames for {name} ..."):
                files = _write_set(raw, frames, seed + i)
            err.print(f"wrote {name}: {frames} bias frames in {raw}", markup=False,
                      soft_wrap=True)
        out[name] = files
    return out


def _write_set(raw: pathlib.Path, frames: int, seed: int) -> list[pathlib.Path]:
    """Write a set beside its final folder, then rename it into place: an
    interrupted demo never leaves a half-written set to be reused."""
    with bad_input():
        raw.parent.mkdir(parents=True, exist_ok=True)
        tmp = raw.with_name(f".raw-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        synthetic.write_bias(tmp, n=frames, ifus=(IFU,), seed=seed)
        shutil.rmtree(raw, ignore_errors=True)
        os.replace(tmp, raw)
    return sorted(raw.glob("BIAS_*.fits"))


def submit(recipe: Recipe, sets: dict[str, list[pathlib.Path]]) -> list[Job]:
    """One threaded call per set, products in the set's folder."""
    jobs = []
    for name, files in sets.items():
        with bad_input():
            res = recipe([str(f) for f in files], output_dir=files[0].parent.parent)
        jobs.append(Job(name, res))
    return jobs


def _median_level(job: Job) -> str:
    """Median of the master bias's DATA extension (near 0 after overscan removal)."""
    with fits.open(job.result.paths["MASTER_BIAS"][0], memmap=True) as hdul:
        return f"{np.nanmedian(hdul['DATA'].data):.3f}"
