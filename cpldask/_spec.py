"""What travels between client and worker: the call (``CallSpec``) and its outcome
(``RunRecord``).

Both are small, picklable and hold no pixel data: products travel as file paths plus a
few header values. Imported on both sides; depends on nothing from the client.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

#: Dask event topic on which workers send recipe log messages to the client
LOG_TOPIC = "cpldask-log"
#: Dask event topic on which workers tell the scheduler's page of recipe runs
#: (cpldask/_dashboard.py) which products a call made, and when it waits for a slot
RUNS_TOPIC = "cpldask-runs"


@dataclasses.dataclass(frozen=True)
class FileInput:
    """An input frame given as a file path (absolute, checked on the client)."""

    path: str


@dataclasses.dataclass(frozen=True)
class MemoryInput:
    """An input frame given in memory (an ``HDUList``): its FITS bytes are the
    dependency ``dep`` of the task; the worker writes them to a file named by
    ``digest`` (the MD5 of the bytes)."""

    dep: int
    digest: str


@dataclasses.dataclass(frozen=True)
class ProductRef:
    """An input frame taken from the outcome of another call in the graph.

    ``dep`` indexes the dependencies passed next to the spec; ``tag`` selects the
    products of that tag (None: the upstream call's products whatever their tag).
    """

    dep: int
    tag: str | None


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """Everything a worker needs to run one recipe call; also the basis of its task key."""

    recipe: str
    version: int
    recipe_path: tuple[str, ...]
    recipe_file: str  # the library the client loaded: the worker skips the path search
    params: tuple[tuple[str, Any], ...]  # (fullname, value) of non-default parameters
    frames: tuple[tuple[str, FileInput | MemoryInput | ProductRef], ...]  # (tag, input)
    raw_tags: tuple[str, ...]  # which of the frames' tags are raw input (the rest: calib)
    env: tuple[tuple[str, str], ...]
    output_dir: str | None
    work_dir: str
    expect: tuple[str, ...]  # product tags the recipe declares for the raw tag
    input_len: int  # python-cpl's rule for lists of products: -1 or len(raw list)
    timeout: float | None = None
    memory_limit: int | None = None
    backtrace: bool = True
    omp_threads: int | None = None
    work_max_age: float | None = None
    cache_dir: str | None = None  # the product cache to use; None: no cache
    provenance: dict = dataclasses.field(default_factory=dict, compare=False)
    # the client's description of the call (cpldask._call._task_key): the worker adds
    # the inputs' and the library's bytes to make the content key of it
    cache_key: str = ""
    # runtime-only, not part of the task's identity: how the slot limit is enforced,
    # and when the client made the call (products installed in output_dir after that
    # moment belong to a concurrent call and are never overwritten by this one)
    slots: tuple[str, int] | None = dataclasses.field(default=None, compare=False)
    submitted: float = dataclasses.field(default=0.0, compare=False)
    # the lowest level of recipe log message the client's logging would show
    log_level: int = dataclasses.field(default=logging.WARNING, compare=False)
    # messages of at least this level travel while the recipe runs, for the client's
    # live view (Result.log_so_far, Jupyter, the CLI); None: only what logging shows
    live_level: int | None = dataclasses.field(default=None, compare=False)
    # the logger the client sends the recipe's messages to (python-cpl's logname)
    logname: str = dataclasses.field(default="", compare=False)
    # python-cpl's loglevel: messages below it are left out of the call's log
    loglevel: int = dataclasses.field(default=0, compare=False)
    # set on the second run of a call that died for memory (cpldask.worker.task):
    # where and why it died; the provenance of its products keeps it
    memory_retry: dict | None = dataclasses.field(default=None, compare=False)
    # the expected wall time (s) of the call from earlier runs (cpldask._estimate),
    # where workers' jobs end: a worker whose job ends sooner does not start it
    expected: float | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class Product:
    """One product file of a finished call."""

    tag: str
    path: str
    size: int
    header: dict  # a few primary-header values: PRO CATG, QC keywords, DATAMD5
    hdus: tuple = ()  # (extension name, shape, dtype) of each HDU with data, from headers
    # (device, inode, size, mtime_ns) of the file where the worker left it: another
    # process that finds this very identity at ``path`` sees the same file (a shared
    # filesystem) and needs no copy (cpldask.worker.fetch, cpldask._transfer)
    identity: tuple = ()


@dataclasses.dataclass
class RunRecord:
    """The outcome of a successful call: product paths, statistics and the log.

    On a worker, an attribute named after a product tag gives that product's path (a
    list where a tag has several frames, python-cpl's rule), so that
    ``recipe.delayed(...).MASTER_BIAS`` is a usable input of another call.
    """

    recipe: str
    key: str
    products: list[Product]
    input_len: int
    log: list  # (logger name, level, function, message, created)
    stat: dict  # return_code, user_time, sys_time, wall_time, max_rss
    host: str
    worker: str | None
    start: float
    end: float
    call_dir: str
    output_dir: str | None
    params: tuple = ()
    provenance: dict = dataclasses.field(default_factory=dict)
    cache_hit: bool = False

    @property
    def tags(self) -> list[str]:
        return list(dict.fromkeys(p.tag for p in self.products))

    def paths(self, tag: str | None = None) -> list[str]:
        """Paths of the products with ``tag`` (all products if None)."""
        return [p.path for p in self.products if tag is None or p.tag == tag]

    def shaped(self, tag: str, value_of=lambda p: p.path):
        """python-cpl's shape for ``tag``: one value, or a list where the tag has
        several frames or the raw input was a list of one."""
        values = [value_of(p) for p in self.products if p.tag == tag]
        if not values:
            raise KeyError(tag)
        return values if (len(values) > 1 or self.input_len == 1) else values[0]

    def __getattr__(self, name: str):
        # only product tags (upper case by ESO convention) are looked up here; anything
        # else, notably dataclass internals during unpickling, is a plain miss
        products = self.__dict__.get("products")
        if products is None or name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.shaped(name)
        except KeyError:
            raise AttributeError(f"{self.recipe} has no product {name!r}; "
                                 f"products: {self.tags}") from None

    def __getitem__(self, tag: str):
        return self.shaped(tag)
