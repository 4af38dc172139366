"""``cpldask reduce RAW_DIR`` and ``cpldask demo``: a whole reduction (of the
instrument the headers name; the demo's is MUSE), followed with the same display as
``cpldask run`` (:func:`cpldask._cli._batch.monitor`).

The reduction itself — classification, association, the graph — is
:mod:`cpldask.workflow`; this module only turns its steps into display jobs.
"""

from __future__ import annotations

import argparse
import pathlib

from rich.console import Console

from .. import look, workflow
from ..instruments.muse import demo as muse_demo
from . import _demo
from ._batch import Job, cluster, monitor
from ._inputs import UsageError, split_assignment

__all__ = ["reduce", "demo"]


def _ifus(text: str | None):
    if text is None:
        return None
    try:
        return workflow.parse_units(text, "muse")
    except ValueError as err:
        raise UsageError(f"--ifus {text!r}: {err}") from err


def step_params(assignments: list[str]) -> dict[str, dict[str, str]]:
    """``--param`` of ``cpldask reduce``: ``['muse_scipost.skymethod=simple']`` →
    ``{'muse_scipost': {'skymethod': 'simple'}}``. The values stay text: the recipe's
    parameter turns them into its type (python-cpl's rule) and checks them, for every
    step, before anything is submitted (:meth:`~cpldask.workflow.Reduction.check_params`).

    Examples
    --------
    >>> step_params(["muse_scipost.skymethod=simple", "muse_bias.combine=median"])
    {'muse_scipost': {'skymethod': 'simple'}, 'muse_bias': {'combine': 'median'}}
    """
    params: dict[str, dict[str, str]] = {}
    for item in assignments:
        name, text = split_assignment(item, "--param")
        step, dot, par = name.partition(".")  # (a parameter's own name may hold dots)
        if not dot or not step or not par:
            raise UsageError(f"--param of cpldask reduce expects STEP.NAME=VALUE "
                             f"(e.g. muse_scipost.skymethod=simple), not {item!r}")
        params.setdefault(step, {})[par] = text
    return params


def _follow(red, title: str, out: Console, err: Console) -> int:
    jobs = [Job(step.label, step.result) for step in red.steps]
    return monitor(jobs, title=title, out=out, err=err, label_header="step")


def reduce(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``cpldask reduce RAW [--instrument I] [--units 1-24] [--output-dir D]
    [--param STEP.NAME=VALUE] [--flux|--no-flux] [--dry-run] [--graph F] [--report F]``."""
    units = args.units if args.ifus is None else _ifus(args.ifus)
    options = {"units": units, "rules": args.instrument, "recipe_path": args.recipe_path,
               "output_dir": args.output_dir, "graph": args.graph, "flux": args.flux,
               "params": step_params(args.param)}
    try:
        if args.dry_run:
            # a dry run always draws the graph: beside the products it would make
            if options["graph"] is None:
                options["graph"] = pathlib.Path(args.output_dir) / "graph.png"
            red = workflow.reduce(args.raw, dry_run=True, **options)
            if options["params"]:  # what the real run would refuse, the dry run does
                red.check_params(recipe_path=args.recipe_path)
            out.print(red.describe(), markup=False, highlight=False, soft_wrap=True)
            out.print(f"graph: {options['graph']}", markup=False, highlight=False,
                      soft_wrap=True)
            return 0
        with cluster(args, err):
            red = workflow.reduce(args.raw, wait=False, **options)
            code = _follow(red, red.instrument, out, err)  # "5 HAWKI calls"
            if args.report:  # while the cluster holds the failed calls' exceptions
                out.print(f"report: {red.report(args.report)}", markup=False,
                          highlight=False, soft_wrap=True)
    except (ValueError, LookupError, OSError) as exc:  # nothing to reduce, no match
        raise UsageError(str(exc)) from exc
    if code == 0:
        finals = red.finals
        for label, final in finals.items():
            for tag, path in final.items():
                shown = f"{label}: {tag}" if len(finals) > 1 else tag
                out.print(f"{shown}: {path}", markup=False, highlight=False, soft_wrap=True)
        # after the last recipe: reading the finals and the run records, ~2 s a target
        try:
            looks = look.look_reduction(red)
        except (OSError, ValueError) as exc:  # the products are made: say so, go on
            err.print(f"cpldask: no look at the targets: {exc}", markup=False,
                      highlight=False, soft_wrap=True)
        else:
            _print_looks(looks, out, full=False)
    return code


def _print_looks(looks: dict, out: Console, *, full: bool = True) -> None:
    """Per target: where its look went; with ``full``, its sources and the compact
    QC table of its steps too (``cpldask demo``)."""
    def say(text: str) -> None:
        out.print(text, markup=False, highlight=False, soft_wrap=True)

    for target, seen in looks.items():
        n = len(seen.sources)
        say(f"look at {target}: {n} source{'' if n == 1 else 's'}, "
            f"{seen.paths['white_light'].parent}/ ({seen.seconds:.1f} s)")
        if full:
            say(look.format_sources(seen.sources))
            for name, path in seen.paths.items():
                say(f"  {name}: {path}")
            say(look.format_qc(seen.qc))


def demo(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``cpldask demo [--ifus 1-2] [--workdir D]``: a synthetic exposure, reduced end
    to end, and a PNG of the white-light image (``--bias``: the quick master-bias demo
    of :mod:`cpldask._cli._demo`)."""
    if args.bias:
        return _demo.demo(args, out, err)
    ifus = _ifus(args.ifus) or (1, 2)
    with cluster(args, err):
        red = muse_demo.demo(args.workdir, ifus=ifus, seed=args.seed, wait=False,
                             recipe_path=args.recipe_path)
        code = _follow(red, f"MUSE (IFUs {args.ifus or '1-2'})", out, err)
    if code == 0:
        red.png = muse_demo.white_light_png(red.final["IMAGE_FOV"], red.png_target,
                                            ifus=red.units)
        for tag, path in red.final.items():
            out.print(f"{tag}: {path}", markup=False, highlight=False, soft_wrap=True)
        out.print(f"white-light image: {red.png}", markup=False, highlight=False,
                  soft_wrap=True)
        _print_looks(look.look_reduction(red), out)
    return code
