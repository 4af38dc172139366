"""``cpldask report OUT_DIR``: the HTML report of an output folder
(:func:`cpldask.report.write_report`), written from the folder alone."""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from ..report import write_report
from ._inputs import UsageError

__all__ = ["report"]


def report(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``cpldask report OUT_DIR [-o FILE]``."""
    t0 = time.monotonic()
    try:
        page = write_report(args.output_dir, args.output)
    except (FileNotFoundError, ValueError) as exc:  # no such folder, nothing in it
        raise UsageError(f"report: {exc}") from exc
    out.print(f"{page} ({page.stat().st_size / 1024:.0f} kB, written in "
              f"{time.monotonic() - t0:.1f} s)", markup=False, highlight=False,
              soft_wrap=True)
    return 0
