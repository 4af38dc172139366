"""``cpldask cache ls|du|verify|prune``: look after the product cache (``cpldask.cache.dir``)."""

from __future__ import annotations

import argparse
import datetime

import dask.utils
from rich.console import Console
from rich.table import Table

from .. import _cache, _config

__all__ = ["cache"]


def cache(args: argparse.Namespace, out: Console, err: Console) -> int:
    """List, size, verify or prune the cache entries."""
    root = str(args.cache_dir or _config.cache_dir())
    if args.action == "verify":
        checked, bad = _cache.verify(root)
        for key, fault in bad:
            out.print(f"{key[:12]}  {fault}: removed", markup=False)
        summary = f"{len(bad)} bad, removed" if bad else "all good"
        out.print(f"checked {checked} entries: {summary} ({root})", markup=False)
        return 1 if bad else 0
    if args.action == "prune":
        older = _config.seconds(args.older_than) if args.older_than else None
        limit = _config.nbytes(args.max_size) if args.max_size else None
        if older is None and limit is None:
            err.print("cpldask: error: prune needs --older-than and/or --max-size",
                      markup=False)
            return 2
        removed = _cache.prune(root, older_than=older, max_size=limit)
        out.print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} "
                  f"from {root}", markup=False)
        return 0
    entries = _cache.entries(root)
    total = sum(e["size"] for e in entries)
    if args.action == "du":
        out.print(f"{dask.utils.format_bytes(total)} in {len(entries)} entries ({root})",
                  markup=False)
        return 0
    table = Table(title=f"cache {root}", title_justify="left", show_edge=False,
                  header_style="bold")
    for col in ("key", "recipe", "products", "size", "last used"):
        table.add_column(col, no_wrap=col != "products")
    for e in sorted(entries, key=lambda e: e["used"], reverse=True):
        used = datetime.datetime.fromtimestamp(e["used"]).strftime("%Y-%m-%d %H:%M")
        table.add_row(e["key"][:12], e["recipe"], ", ".join(e["products"]),
                      dask.utils.format_bytes(e["size"]), used)
    out.print(table)
    out.print(f"{len(entries)} entries, {dask.utils.format_bytes(total)}", markup=False)
    return 0
