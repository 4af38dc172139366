"""``cpldask run``: esorex's ``esorex RECIPE SOF``, for one call or hundreds.

Two ways to name the inputs:

* files: ``cpldask run muse_bias b1.fits b2.fits b3.fits [--tag BIAS]`` — one call,
  products in ``--output-dir`` (default: the current folder, as esorex);
* set-of-frames files: ``cpldask run muse_bias --sof a.sof b.sof ...`` (or SOFs
  given as files: a name ending in ``.sof``) — one call per SOF, all in parallel,
  the products of ``a.sof`` in ``OUTPUT_DIR/a/``.

Everything the command line names is checked before the first call is submitted,
so that a typo in the 200th SOF does not leave 199 calls running.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from rich.console import Console

from ..recipe import Recipe
from ._batch import Job, cluster, monitor
from ._inputs import UsageError, apply_params, bad_input, calib_options, read_sof, split_frames

__all__ = ["run"]


@dataclasses.dataclass(frozen=True)
class Call:
    """One recipe call the command line asks for, checked but not yet submitted."""

    label: str
    raw: dict[str, list[str]] | list[str]  # by tag (SOF), or files of the --tag
    calib: dict[str, list[str]]
    output_dir: pathlib.Path
    tag: str | None = None


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Run the recipe on the files or SOFs of ``args``; see the module docstring."""
    with bad_input():
        recipe = Recipe(args.recipe, threaded=True, path=args.recipe_path)
    apply_params(recipe, args.rc, args.param)
    calls = plan(recipe, files=args.files, sofs=args.sof, tag=args.tag,
                 calib=calib_options(args.calib), output_dir=pathlib.Path(args.output_dir))
    with cluster(args, err):
        jobs = submit(recipe, calls)
        return monitor(jobs, title=recipe.name, out=out, err=err,
                       label_header="SOF" if _sof_names(args.files) or args.sof else "call")


def _sof_names(files: list[str]) -> list[str]:
    return [f for f in files if f.lower().endswith(".sof")]


def plan(recipe: Recipe, *, files: list[str], sofs: list[str], tag: str | None,
         calib: dict[str, list[str]], output_dir: pathlib.Path) -> list[Call]:
    """The calls to make, every input checked.

    Raises
    ------
    UsageError
        No inputs, FITS files mixed with SOFs, ``--tag`` with SOFs, an unreadable
        SOF, an unknown tag, two SOFs that would share an output folder.
    """
    # esorex takes a SOF where cpldask takes files: accept both spellings
    sofs = [*sofs, *_sof_names(files)]
    files = [f for f in files if f not in sofs]
    if files and sofs:
        raise UsageError("give either FITS files or SOF files, not both (a SOF can "
                         "list every frame)")
    if not files and not sofs:
        raise UsageError(f"no input: give {recipe.name} FITS files or --sof FILE.sof")
    if recipe.tags is not None:  # the recipe declares its calibration tags
        for ctag in calib:
            with bad_input():
                recipe.calib[ctag]  # noqa: B018  (raises, naming the valid tags)
    if files:
        return [Call(recipe.name, files, calib, output_dir, tag)]
    if tag is not None:
        raise UsageError("--tag applies to FITS files; a SOF names each frame's tag")
    calls, folders = [], {}
    for path in sofs:
        sof = read_sof(path)
        raw, sof_calib = split_frames(recipe, sof.frames)
        if not raw:
            raise UsageError(f"{path}: no raw frames; {recipe.name} takes raw frames "
                             f"tagged {', '.join(recipe.tags or [])}")
        folder = output_dir / sof.name
        if folder in folders:
            raise UsageError(f"{folders[folder]} and {path} would both write to "
                             f"{folder}/; rename one of them")
        folders[folder] = path
        # --calib on the command line replaces the SOF's frames of that tag
        calls.append(Call(path, raw, {**sof_calib, **calib}, folder))
    return calls


def submit(recipe: Recipe, calls: list[Call]) -> list[Job]:
    """Make the calls (threaded); on bad input, cancel those already made."""
    jobs: list[Job] = []
    try:
        for call in calls:
            try:
                with bad_input():
                    res = recipe(call.raw, tag=call.tag, calib=call.calib or None,
                                 output_dir=call.output_dir)
            except UsageError as exc:
                label = f"{call.label}: " if call.label != recipe.name else ""
                raise UsageError(f"{label}{exc}") from exc
            jobs.append(Job(call.label, res))
    except BaseException:
        for job in jobs:
            job.result.cancel()
        raise
    return jobs
