"""Small helpers shared by tests (no fixtures here)."""

from __future__ import annotations

import os
import time

from astropy.io import fits


def intervals(results) -> list[tuple[float, float]]:
    """(start, end) of each test-recipe run, read from its product headers (written
    by the recipe process itself)."""
    out = []
    for res in results:
        path = res.paths["PRODUCT"][0]
        h = fits.getheader(path)
        out.append((h["ESO QC ECHO TSTART"], h["ESO QC ECHO TEND"]))
    return out


def max_overlap(spans) -> int:
    """Largest number of intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


def recipe_pids(name: str) -> set[int]:
    """PIDs of live processes named ``name`` (python-cpl names the recipe child so).

    Zombies do not count: a killed recipe whose parent died too waits for PID 1 to
    reap it, which in a container may never happen; it runs no code.
    """
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            state = stat[stat.rindex(")") + 2]
            if comm == name[:15] and state not in "ZX":
                pids.add(int(entry))
    return pids


def wait_until(condition, timeout: float, what: str):
    """Wait for a condition of another process (a recipe starting, a process
    ending) that no future or event of ours can signal; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


#: A cpldask session of its own, for tests that run one as a script (``python
#: script.py LIB_DIR CACHE_DIR INPUT WORK_DIR``): the test recipe from LIB_DIR, the
#: product cache in CACHE_DIR, one worker with one slot. Append the body, indented
#: under ``if __name__ == "__main__":``.
SESSION = """
import sys, time, warnings, cpldask, dask
from astropy.io import fits
cpldask.Recipe.path = [sys.argv[1]]
with dask.config.set({"cpldask.cache.dir": sys.argv[2], "cpldask.cache.enabled": True,
                      "cpldask.local.n-workers": 1, "cpldask.local.slots": 1,
                      "cpldask.local.dashboard-address": ":0",
                      "cpldask.work-dir": sys.argv[4]}):
    if __name__ == "__main__":
"""
