"""The ``cpldask`` command: esorex's way of running recipes, on Dask.

::

    cpldask list                                   recipes on the search path
    cpldask info muse_bias [--json]                parameters, tags, products
    cpldask run muse_bias b1.fits b2.fits b3.fits  one call, products in .
    cpldask run muse_bias --sof night*/bias.sof    one call per SOF, in parallel
    cpldask demo                                   synthetic biases, reduced
    cpldask run ... --cluster slurm --slots 8      the calls in SLURM jobs
    cpldask cluster start --cluster slurm          a cluster later commands join
    cpldask report reduced/                        an HTML page of an output folder

:func:`handle_args` does the work and returns the exit code, so tests drive the
command without a subprocess; :func:`main` is the console script. Exit codes: 0
success, 1 a recipe call failed, 2 bad input (one line on stderr, nothing
submitted), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from rich.console import Console

from .. import __version__, instruments
from . import _cache, _catalog, _daemon, _reduce, _report, _run
from ._batch import CLUSTERS, EXIT_INTERRUPTED, QUIET_LOGGING, require_jobqueue
from ._inputs import UsageError

__all__ = ["main", "handle_args", "build_parser"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised rather than printed with the usage: the
    command reports every bad input the same way, on one line."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split(maxsplit=1)[1:]  # 'cpldask run' -> ['run']
        where = f"{command[0]}: " if command else ""
        help_cmd = f"cpldask {command[0]} --help" if command else "cpldask --help"
        raise UsageError(f"{where}{message} (see '{help_cmd}')")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``cpldask`` command and its subcommands."""
    parser = _Parser(prog="cpldask", description="Run ESO CPL pipeline recipes on "
                     "Dask, the esorex way: many calls in parallel.")
    parser.add_argument("--version", action="version", version=f"cpldask {__version__}")
    parser.add_argument("--recipe-path", metavar="DIRS",
                        help="directories (':'-separated) searched for recipe "
                             "libraries; default: the cpldask.recipe-path config key")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # options of every command that submits calls
    cluster = _Parser(add_help=False)
    cluster.add_argument("--slots", type=_positive, metavar="N",
                         help="run at most N recipes at once (default: one per core "
                              "on the embedded cluster, cpldask.jobqueue.slots with "
                              "--cluster SYSTEM)")
    where = cluster.add_mutually_exclusive_group()
    where.add_argument("--cluster", choices=CLUSTERS, metavar="SYSTEM",
                       help="start a cluster for this command: local (the embedded "
                            "one, the default) or batch jobs of slurm, pbs, sge or "
                            "lsf (dask-jobqueue, cpldask.jobqueue.* settings; the "
                            "jobs are cancelled at the end)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="use the Dask scheduler at ADDRESS (e.g. "
                            "tcp://head:8786) instead of an embedded local cluster")
    where.add_argument("--scheduler-file", metavar="FILE",
                       help="use the scheduler FILE names (a Dask scheduler file, "
                            "e.g. from 'cpldask cluster start')")

    p = commands.add_parser("list", help="list the recipes on the search path",
                            description="List the recipes on the search path.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_catalog.list_recipes)

    p = commands.add_parser("info", help="describe a recipe",
                            description="Describe a recipe: parameters, raw and "
                                        "calibration tags, products.")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_catalog.info)

    p = commands.add_parser(
        "run", parents=[cluster], help="run a recipe on files or SOFs",
        description="Run a recipe once on FITS files, or once per esorex SOF file "
                    "(in parallel, the products of a.sof in OUTPUT_DIR/a/).")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("files", nargs="*", default=[], metavar="FILE",
                   help="raw frames (tagged --tag), or SOF files (*.sof)")
    p.add_argument("--sof", nargs="+", action="extend", default=[], metavar="SOF",
                   help="esorex set-of-frames files ('PATH TAG' per line; a relative "
                        "PATH is relative to the SOF's folder)")
    p.add_argument("--tag", help="tag of the FILEs (default: the recipe's first raw tag)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="set a recipe parameter (repeatable; overrides --rc)")
    p.add_argument("--rc", action="append", default=[], metavar="FILE",
                   help="esorex parameter file (NAME=VALUE lines; repeatable)")
    p.add_argument("--calib", action="append", default=[], metavar="TAG=FILE",
                   help="calibration frame (repeatable; replaces a SOF's frames of TAG)")
    p.add_argument("--output-dir", default=".", metavar="DIR",
                   help="where products go (default: the current folder)")
    p.set_defaults(handler=_run.run)

    p = commands.add_parser(
        "reduce", parents=[cluster], help="reduce a folder of raw frames",
        description="Classify the raw frames, group the science exposures (MUSE: by "
                    "target, template and mode), associate to each exposure the "
                    "calibrations that fit it (archive master calibrations in the "
                    "folder too) and run the instrument's whole cascade for every "
                    "group as one graph, each master calibration made once (e.g. "
                    "MUSE: per IFU muse_bias ... muse_scibasic, then muse_scipost per "
                    "group). The instrument is the one the frames' headers name; "
                    f"shipped: {', '.join(instruments.names())}.")
    p.add_argument("raw", metavar="RAW_DIR", help="folder of raw frames (walked)")
    p.add_argument("--instrument", metavar="NAME",
                   help=f"instrument rules to use ({', '.join(instruments.names())}) or "
                        "a rules YAML file "
                        "(default: from the headers)")
    units = p.add_mutually_exclusive_group()
    units.add_argument("--units", metavar="LIST", help="units to reduce (MUSE: IFUs), "
                       "e.g. 1-24 or 1,3,5 (default: every unit in the frames)")
    units.add_argument("--ifus", metavar="LIST",
                       help="MUSE's IFUs to reduce (--units, checked against 1..24)")
    p.add_argument("--output-dir", default="reduced", metavar="DIR",
                   help="where products go, one folder per step and unit (default: "
                        "./reduced)")
    p.add_argument("--param", action="append", default=[], metavar="STEP.NAME=VALUE",
                   help="set a recipe parameter of every call of a step, e.g. "
                        "muse_scipost.skymethod=simple (repeatable; over the "
                        "instrument rules' parameters)")
    p.add_argument("--flux", action=argparse.BooleanOptionalAction, default=None,
                   help="force the flux-calibration branch on (stops with the reason "
                        "if the data cannot have it) or off (default: on when the data "
                        "hold what it needs)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the classified frames, the association report (chosen "
                        "and rejected calibrations, with reasons) and the steps, draw "
                        "the graph (OUTPUT_DIR/graph.png unless --graph); run nothing")
    p.add_argument("--graph", metavar="FILE", help="also draw the graph (.png, .svg, .dot)")
    p.add_argument("--report", metavar="FILE",
                   help="then write the HTML report, with the logs of failed calls "
                        "(which 'cpldask report' cannot find in the output folder)")
    p.set_defaults(handler=_reduce.reduce)

    p = commands.add_parser(
        "demo", parents=[cluster], help="reduce a synthetic MUSE exposure end to end",
        description="Write a synthetic MUSE exposure and reduce it end to end (the whole "
                    "cascade, a cube and a PNG of its white-light image); with --bias, "
                    "reduce sets of bias frames to master biases in parallel instead.")
    p.add_argument("--workdir", default="cpldask-demo", metavar="DIR",
                   help="where frames and products go (default: ./cpldask-demo)")
    p.add_argument("--ifus", metavar="LIST", help="IFUs of the exposure (default: 1-2)")
    p.add_argument("--bias", action="store_true",
                   help="the quick demo: only master biases of --sets bias sets")
    p.add_argument("--sets", type=_positive, default=3, metavar="N",
                   help="--bias: number of bias sets (default: 3)")
    p.add_argument("--frames", type=_positive, default=3, metavar="N",
                   help="--bias: frames per set (default: 3)")
    p.add_argument("--seed", type=int, default=0,
                   help="noise seed (--bias: set i uses SEED+i) (default: 0)")
    p.set_defaults(handler=_reduce.demo)

    p = commands.add_parser(
        "report", help="write the HTML report of an output folder",
        description="Write one self-contained HTML page of a reduction's output folder "
                    "(finished or not): every call with its timing, worker, inputs, "
                    "products, QC keywords and provenance, a timeline, zscale images "
                    "of the master calibrations, QC across IFUs with outliers marked, "
                    "white-light images and spectra.")
    p.add_argument("output_dir", metavar="OUT_DIR", help="the folder the reduction wrote")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="the page to write (default: OUT_DIR/report.html)")
    p.set_defaults(handler=_report.report)

    p = commands.add_parser(
        "cluster", help="start, show or stop a cluster that later commands share",
        description="A scheduler and its workers (the embedded local cluster's, or "
                    "batch jobs through dask-jobqueue) in a background process that "
                    "outlives the command; 'cpldask run/reduce --scheduler-file FILE', "
                    "the cpldask.scheduler-file config key and notebooks join it "
                    "through the scheduler file it writes (default "
                    f"{_daemon.DEFAULT_FILE}, or the cpldask.scheduler-file key).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    file_help = ("the scheduler file (default: the cpldask.scheduler-file config key, "
                 f"else {_daemon.DEFAULT_FILE})")
    a = actions.add_parser(
        "start", help="start a cluster in the background",
        description="Start a scheduler and its workers in a background process, write "
                    "the scheduler file, and return once the scheduler answers. The "
                    "process logs to a file beside the scheduler file (.log).")
    a.add_argument("--cluster", choices=CLUSTERS, default="local", metavar="SYSTEM",
                   help="local (the embedded cluster's workers, the default), or batch "
                        "jobs of slurm, pbs, sge or lsf that adapt to the work "
                        "(dask-jobqueue, cpldask.jobqueue.* settings)")
    a.add_argument("--slots", type=_positive, metavar="N",
                   help="recipes at once (default: cpldask.local.slots, else one per "
                        "core; cpldask.jobqueue.slots with a batch system)")
    a.add_argument("--scheduler-file", metavar="FILE", help=file_help)
    a.add_argument("--host", metavar="HOST",
                   help="address the scheduler listens on (default: 127.0.0.1, or the "
                        "cpldask.jobqueue.interface's with a batch system)")
    a.add_argument("--interface", metavar="IFACE",
                   help="batch systems: the network interface of scheduler and workers "
                        "(e.g. ib0; default: cpldask.jobqueue.interface, else lo)")
    a.add_argument("--timeout", type=_positive, default=120, metavar="SECONDS",
                   help="give up when the scheduler does not answer within this time "
                        "(default: 120)")
    a.set_defaults(handler=_daemon.start)
    a = actions.add_parser("status", help="show the running cluster",
                           description="Show the cluster a scheduler file names: "
                                       "scheduler, workers, recipe slots, batch jobs. "
                                       "Exit status 1 when none runs.")
    a.add_argument("--scheduler-file", metavar="FILE", help=file_help)
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(handler=_daemon.status)
    a = actions.add_parser("stop", help="stop the running cluster",
                           description="Stop the cluster a scheduler file names: its "
                                       "batch jobs are cancelled, its workers and "
                                       "scheduler closed, the file removed.")
    a.add_argument("--scheduler-file", metavar="FILE", help=file_help)
    a.add_argument("--timeout", type=_positive, default=120, metavar="SECONDS",
                   help="how long to wait for it to close (default: 120)")
    a.set_defaults(handler=_daemon.stop)

    p = commands.add_parser(
        "cache", help="list, size, verify or prune the product cache",
        description="The product cache keeps the products of every call under the "
                    "hash of its recipe, parameters and input contents (docs/cache.md). "
                    "verify checks every entry's files against its record and removes "
                    "the bad ones (exit status 1 if there were any).")
    p.add_argument("action", choices=["ls", "du", "verify", "prune"])
    p.add_argument("--cache-dir", metavar="DIR",
                   help="default: the cpldask.cache.dir config key")
    p.add_argument("--older-than", metavar="AGE",
                   help="prune: remove entries unused for AGE (e.g. '30 days')")
    p.add_argument("--max-size", metavar="SIZE",
                   help="prune: then remove the least recently used entries until "
                        "the cache is at most SIZE (e.g. '200 GB')")
    p.set_defaults(handler=_cache.cache)
    return parser


def _consoles() -> tuple[Console, Console]:
    """Consoles on the current stdout and stderr (looked up now, so that a test's
    capture works). Without a terminal, lines are 120 wide rather than rich's 80,
    unless COLUMNS says otherwise: batch logs are read on wide screens."""
    width = None if "COLUMNS" in os.environ else 120
    return (Console(file=sys.stdout, width=None if sys.stdout.isatty() else width),
            Console(file=sys.stderr, width=None if sys.stderr.isatty() else width))


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``, taking files after options too.

    argparse gives a positional list (``run``'s FILEs) only the words before the
    first option, so ``run muse_bias --param nifu=1 b1.fits`` would leave ``b1.fits``
    over; esorex users write options anywhere. (``parse_intermixed_args`` would do
    it but refuses subcommands.)
    """
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        args.files += [word for word in extra if not word.startswith("-")]
        extra = [word for word in extra if word.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # before any input is read or anything starts
    require_jobqueue(getattr(args, "cluster", None))
    return args


def handle_args(argv: Sequence[str]) -> int:
    """Run the ``cpldask`` command line ``argv`` (without the program name).

    Returns
    -------
    int
        The exit code: 0 success, 1 a recipe call failed, 2 bad input, 130
        interrupted.
    """
    out, err = _consoles()
    try:
        # (each handler makes its recipes with path=args.recipe_path: --recipe-path
        # is this command line's, never written into Recipe.path for the process)
        args = _parse(build_parser(), list(argv))
        return args.handler(args, out, err)
    except UsageError as exc:
        # one line, no traceback: bad input is the user's to fix, not a bug
        print(f"cpldask: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print("cpldask: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def main() -> NoReturn:
    """The ``cpldask`` console script."""
    _quiet()
    try:
        code = handle_args(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`cpldask list | head`): nothing more to say; point
        # stdout at /dev/null so that the interpreter's final flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


def _quiet() -> None:
    """Keep Dask's own chatter off the terminal of a command-line user.

    A failed call is reported once, by the summary, with the recipe's log; the
    workers of the embedded cluster would also log it with a Python traceback
    ("Compute Failed"). Workers are separate processes that read their logging
    configuration from the environment when they start, hence the variable. This
    is for the console script only: :func:`handle_args` leaves a host program's
    logging and warnings alone.
    """
    # the whole logging section of the workers' (and their Nannies') config: the
    # Nannies' INFO lines ("Nanny at ... closed.") too would reach the terminal
    os.environ.setdefault("DASK_LOGGING", QUIET_LOGGING)
    # the dashboard moves to a free port when 8787 is taken; the link printed
    # with the progress display is the right one
    warnings.filterwarnings("ignore", message="Port .* is already in use")
