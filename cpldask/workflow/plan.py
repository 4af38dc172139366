"""Reduce a data set end to end: classify, associate, and run an instrument's recipe
cascade as one Dask graph.

>>> import cpldask
>>> red = cpldask.reduce("raw/", ifus=range(1, 25), output_dir="reduced/")  # doctest: +SKIP
>>> red.final["DATACUBE_FINAL"]                                             # doctest: +SKIP
'reduced/muse_scipost/DATACUBE_FINAL.fits'

Three steps, each usable on its own:

1. :func:`~cpldask.workflow.classify` reads the headers of the raw files and gives each
   a tag (BIAS, ARC, OBJECT, LINE_CATALOG ...) by the instrument's rules
   (``cpldask/instruments/<name>/rules.yaml``, the instrument picked from the headers);
   files no rule fits are listed with the reason.
2. :func:`~cpldask.workflow.associate` chooses the calibrations for the science
   exposures: same setup, holding the unit (MUSE: IFU), nearest in time.
3. :func:`build_graph` lays out the recipe calls with the instrument's workflow
   function on a :class:`Plan`; :meth:`Reduction.submit` turns each step into a
   background :class:`cpldask.Recipe` call whose inputs are the
   :class:`cpldask.Result` objects of the steps before it, so the whole graph is on
   the cluster at once and independent units run side by side.

:func:`reduce` does all three; ``dry_run=True`` stops before submitting. Nothing here
knows an instrument: that is in :mod:`cpldask.instruments`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .classify import (Association, Classification, Frame, Rules, associate, classify,
                       detect_instrument, format_ranges, list_files, load_rules)
from .draw import draw_graph

__all__ = ["reduce", "build_graph", "parse_units", "Plan", "Reduction", "Step",
           "ReductionError"]

log = logging.getLogger("cpldask.workflow")


@dataclasses.dataclass(eq=False)
class Step:
    """One recipe call of the reduction.

    ``raw`` and ``calib`` map a frame tag to its inputs: file paths, or earlier
    :class:`Step` objects (meaning: that step's products of this tag). After
    :meth:`Reduction.submit`, ``result`` is the call's :class:`cpldask.Result`.
    """

    name: str  # unique per unit: 'muse_bias', 'muse_scibasic_std', 'muse_scipost_flux'
    recipe: str
    unit: int | None  # None: a call over all units (MUSE: IFUs)
    raw: dict[str, list]
    calib: dict[str, list]
    param: dict[str, Any]
    output_dir: str
    result: Any = None  # cpldask.Result once submitted
    optional_calib: tuple[str, ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name if self.unit is None else f"{self.name}[{self.unit}]"

    @property
    def deps(self) -> list["Step"]:
        out = []
        for group in (self.raw, self.calib):
            for items in group.values():
                out += [i for i in items if isinstance(i, Step) and i not in out]
        return out

    @property
    def status(self) -> str:
        return "planned" if self.result is None else self.result.status

    def __repr__(self) -> str:
        return f"<Step {self.label} {self.status}>"


class Plan:
    """Collects the steps of a workflow in call order (a topological order).

    A workflow function calls :meth:`call` as it would call a recipe; a returned
    :class:`Step` is passed on as an input of later calls, which makes the edge.
    """

    def __init__(self, output_dir: str | os.PathLike, settings: Mapping | None = None, *,
                 unit_name: str = "unit"):
        self.output_dir = str(pathlib.Path(output_dir).expanduser().absolute())
        self.settings = dict(settings or {})
        self.unit_name = unit_name
        self.steps: list[Step] = []

    def call(self, recipe: str, raw: Mapping[str, Any], *, unit: int | None = None,
             calib: Mapping[str, Any] | None = None, param: Mapping | None = None,
             name: str | None = None, env: Mapping[str, str] | None = None) -> Step:
        """Add a call of ``recipe``; ``raw``/``calib`` values are a path, a Step or a
        list of these (empty entries are left out). Parameters from the rules'
        ``workflow.parameters[name]`` come first, ``param`` overrides them; ``env`` is
        the environment of the recipe process (e.g. ``OMP_NUM_THREADS``)."""
        name = name or recipe
        if any(s.name == name and s.unit == unit for s in self.steps):
            raise ValueError(f"step {name} for {self.unit_name} {unit} is already in the plan")
        params = {**(self.settings.get("parameters", {}).get(name) or {}), **(param or {})}
        where = pathlib.Path(self.output_dir, name)
        if unit is not None:  # MUSE: <step>/ifu01
            where = where / f"{self.unit_name.lower()}{unit:02d}"
        step = Step(name, recipe, unit, _frames(raw), _frames(calib or {}), params,
                    str(where), optional_calib=tuple(
                        self.settings.get("optional_calibrations", {}).get(recipe, ())),
                    env=dict(env or {}))
        self.steps.append(step)
        return step


def _frames(group: Mapping[str, Any]) -> dict[str, list]:
    out = {}
    for tag, value in group.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        items = [i.path if isinstance(i, Frame) else i for i in items if i is not None]
        if items:
            out[tag] = items
    return out


class ReductionError(RuntimeError):
    """Steps of a reduction failed. ``reduction`` holds every step and result;
    ``failed`` the steps whose own recipe failed (not those that only lacked an
    input from a failed step)."""

    def __init__(self, reduction: "Reduction", failed: list[Step]):
        self.reduction, self.failed = reduction, failed
        lines = []
        for step in failed:
            err = step.result.exception()
            lines.append(f"{step.label}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        downstream = sum(1 for s in reduction.steps if s.status == "error") - len(failed)
        more = f" ({downstream} later steps did not run)" if downstream else ""
        super().__init__(f"{len(failed)} step(s) failed{more}:\n  " + "\n  ".join(lines))


class Reduction:
    """A reduction: the classified frames, the association and the recipe steps.

    Before :meth:`submit` it is a plan (``--dry-run`` shows :meth:`describe` and
    :meth:`write_graph`); afterwards every step has its :class:`cpldask.Result`.

    Attributes
    ----------
    steps : list of Step
        The recipe calls in submission order.
    classification, association : Classification, Association
    output_dir : str
    """

    def __init__(self, classification: Classification, association: Association,
                 plan: Plan):
        self.classification = classification
        self.association = association
        self.steps = plan.steps
        self.output_dir = plan.output_dir
        self.settings = plan.settings
        self.submitted_at: float | None = None
        self.finished_at: float | None = None
        self._recipes: dict[str, Any] = {}

    # -- looking at the plan ------------------------------------------------------
    @property
    def units(self) -> tuple:
        """The units reduced (MUSE: IFU numbers; ``(None,)`` without a unit axis)."""
        return self.association.units

    @property
    def instrument(self) -> str:
        return self.classification.rules.instrument

    def step(self, name: str, unit: int | None = None) -> Step:
        for s in self.steps:
            if s.name == name and s.unit == unit:
                return s
        raise KeyError(f"no step {name}" + ("" if unit is None else f" for unit {unit}"))

    def __getitem__(self, label: str) -> Step:
        """``red['muse_bias[2]']``, ``red['muse_scipost']``."""
        for s in self.steps:
            if s.label == label:
                return s
        raise KeyError(label)

    def describe(self) -> str:
        """Classified frames, association and the steps with their inputs (dry run)."""
        parts = [self.classification.summary(), "", self.association.summary(), "",
                 f"{len(self.steps)} recipe calls -> {self.output_dir}"]
        for step in self.steps:
            deps = ", ".join(d.label for d in step.deps) or "-"
            parts.append(f"  {step.label:<24} after: {deps}")
            for group, items in (("raw", step.raw), ("calib", step.calib)):
                for tag, values in items.items():
                    shown = [v.label if isinstance(v, Step) else os.path.basename(v)
                             for v in values]
                    parts.append(f"      {group:<5} {tag:<15} {_short_list(shown)}")
            if step.param:
                parts.append("      param " + " ".join(f"{k}={v}" for k, v in step.param.items()))
        return "\n".join(parts)

    def dot(self) -> str:
        """The graph in Graphviz's DOT language."""
        lines = ["digraph reduction {", "  rankdir=LR;", "  node [shape=box, fontsize=10];"]
        for s in self.steps:
            lines.append(f'  "{s.label}";')
            for d in s.deps:
                lines.append(f'  "{d.label}" -> "{s.label}";')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def write_graph(self, path: str | os.PathLike) -> pathlib.Path:
        """Write the graph as an image (``.png``, ``.svg``, ``.pdf``; drawn with
        matplotlib, one row per unit) or as DOT text (``.dot``)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".dot":
            path.write_text(self.dot())
            return path
        draw_graph(self.steps, self.units, path,
                   unit_name=self.classification.rules.unit_name)
        return path

    # -- running -------------------------------------------------------------------
    def submit(self, progress: Callable[[Step, Any], None] | None = None, *,
               cache: bool | None = None,
               recipe_path: Iterable[str] | str | None = None) -> "Reduction":
        """Submit every step as a background recipe call; returns at once.

        Each step becomes ``cpldask.Recipe(recipe)(raw, calib=..., param=...,
        output_dir=..., threaded=True)`` with the :class:`~cpldask.Result` of earlier
        steps as inputs: Dask runs a call as soon as its inputs exist, on any worker.
        ``progress(step, result)`` is called (from another thread) as each step ends.
        ``cache`` is passed to every call (None: the ``cpldask.cache.enabled`` key;
        False: run every recipe even if the product cache has its products).
        ``recipe_path``: the recipes' search path (``cpldask.Recipe(path=...)``).
        """
        import dask

        from ..recipe import Recipe

        if self.submitted_at is not None:
            raise RuntimeError("this reduction was already submitted")
        self.submitted_at = time.time()
        for i, step in enumerate(self.steps):
            recipe = self._recipes.get(step.recipe)
            if recipe is None:
                recipe = Recipe(step.recipe, threaded=True, path=recipe_path)
                self._recipes[step.recipe] = recipe
                # calibrations the rules' workflow.optional_calibrations lets go
                recipe.optional_calib |= set(step.optional_calib)
            raw = {tag: [self._input(v) for v in values] for tag, values in step.raw.items()}
            calib = {tag: [self._input(v) for v in values]
                     for tag, values in step.calib.items()}
            # among calls that are ready, Dask runs the higher priority first: the
            # order of the plan (calls made within a minute otherwise tie)
            with dask.annotate(priority=len(self.steps) - i):
                step.result = recipe(raw, tag=next(iter(raw)), calib=calib,
                                     param=step.param, output_dir=step.output_dir,
                                     cache=cache, env=step.env or None)
            step.result.add_done_callback(self._on_done(step, progress))
        return self

    def _input(self, value):
        if isinstance(value, Step):
            if value.result is None:
                raise RuntimeError(f"{value.label} is used before it was submitted")
            return value.result
        return value

    def _on_done(self, step: Step, progress):
        def done(result):
            if result.status == "error":
                log.debug("%s failed: %s", step.label, result.exception())
            if progress is not None:
                try:
                    progress(step, result)
                except Exception:  # a display error must not hide the reduction's
                    log.exception("progress callback failed for %s", step.label)
        return done

    def wait(self, timeout: float | None = None, *, raise_on_error: bool = True) -> "Reduction":
        """Wait for every step; raise :class:`ReductionError` if any failed."""
        import distributed

        if self.submitted_at is None:
            raise RuntimeError("submit() the reduction first")
        distributed.wait([s.result.future for s in self.steps], timeout=timeout)
        self.finished_at = time.time()
        failed = self.failed()
        if failed and raise_on_error:
            raise ReductionError(self, failed)
        return self

    def cancel(self) -> None:
        """Cancel every step that has not finished (running recipes are killed)."""
        for s in self.steps:
            if s.result is not None and not s.result.done():
                s.result.cancel()

    def failed(self) -> list[Step]:
        """Steps whose own recipe failed (their inputs were all there)."""
        return [s for s in self.steps if s.status == "error"
                and all(d.status == "finished" for d in s.deps)]

    @property
    def done(self) -> bool:
        return self.submitted_at is not None and all(s.result.done() for s in self.steps)

    # -- the outcome ------------------------------------------------------------------
    @property
    def final(self) -> dict[str, str]:
        """The main products, as the instrument's rules name them (``workflow.final``):
        MUSE's DATACUBE_FINAL and IMAGE_FOV of the last muse_scipost (the
        flux-calibrated ones when the flux branch ran), HAWK-I's TILED_IMAGE..."""
        final = self.settings.get("final") or {}
        for name in final.get("steps", ()):
            try:
                step = self.step(name)
            except KeyError:
                continue
            paths = step.result.paths
            return {tag: paths[tag][0] for tag in final.get("tags", ()) if tag in paths}
        return {}

    def products(self, label: str) -> dict[str, list[str]]:
        """Product paths by tag of one step (``'muse_flat[1]'``)."""
        return self[label].result.paths

    def records(self) -> dict[str, Any]:
        """The :class:`~cpldask.RunRecord` of each finished step, by label."""
        return {s.label: s.result.record for s in self.steps if s.status == "finished"}

    def progress(self) -> dict[str, dict[str, int]]:
        """Per recipe step name: how many calls are finished, failed, and in all."""
        out: dict[str, dict[str, int]] = {}
        for s in self.steps:
            row = out.setdefault(s.name, {"finished": 0, "error": 0, "total": 0})
            row["total"] += 1
            if s.status in ("finished", "error"):
                row[s.status] += 1
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One row per step for a final table: label, recipe, unit, status, start and
        end (seconds after submission, the recipe process's own times), wall time,
        host, worker and product file names."""
        t0 = self.submitted_at or 0.0
        out = []
        for s in self.steps:
            row = {"step": s.label, "recipe": s.recipe, "unit": s.unit, "status": s.status,
                   "start": None, "end": None, "wall": None, "host": None,
                   "worker": None, "products": []}
            if s.status == "finished":
                rec = s.result.record
                row.update(start=rec.start - t0, end=rec.end - t0, wall=rec.end - rec.start,
                           host=rec.host, worker=rec.worker,
                           products=[os.path.basename(p.path) for p in rec.products])
            out.append(row)
        return out

    def table(self) -> str:
        """The final table as text."""
        lines = [f"{'step':<24} {'status':<9} {'start':>7} {'wall':>7}  {'worker':<22} products"]
        for r in self.rows():
            fmt = (lambda v: f"{v:7.1f}") if r["wall"] is not None else (lambda v: f"{'-':>7}")
            lines.append(f"{r['step']:<24} {r['status']:<9} {fmt(r['start'])} "
                         f"{fmt(r['wall'])}  {str(r['worker'] or '-'):<22} "
                         f"{_short_list(r['products'], 4)}")
        if self.submitted_at and self.finished_at:
            lines.append(f"wall time {self.finished_at - self.submitted_at:.1f} s for "
                         f"{len(self.steps)} recipe calls")
        return "\n".join(lines)

    def report(self, path: str | os.PathLike | None = None) -> pathlib.Path:
        """Write the HTML report (:func:`cpldask.report.write_report`) of output_dir,
        with the logs of the failed steps, which leave nothing there."""
        from ..report import write_report

        failed = {s.label: s.result.exception() for s in self.failed()}
        return write_report(self.output_dir, path, failed=failed,
                            planned=[s.label for s in self.steps])

    def __repr__(self) -> str:
        state = "planned" if self.submitted_at is None else (
            "done" if self.done else "running")
        units = [u for u in self.units if u is not None]
        where = f", {self.classification.rules.unit_name}s {format_ranges(units)}" if units else ""
        return (f"<Reduction {self.instrument}, {len(self.steps)} steps{where}, {state}, "
                f"output_dir={self.output_dir!r}>")


def build_graph(classification: Classification, units: Iterable[int] | None = None,
                output_dir: str | os.PathLike = "reduced", *,
                association: Association | None = None, flux: bool | None = None,
                params: Mapping[str, Mapping] | None = None) -> Reduction:
    """Lay out the recipe calls of a reduction (nothing runs yet).

    The instrument's workflow function (its rules' ``workflow.function``, e.g.
    :func:`cpldask.instruments.muse.workflow.workflow`) makes the calls on a
    :class:`Plan`.

    Parameters
    ----------
    classification : Classification
        From :func:`classify`.
    units : iterable of int, optional
        Units to reduce (MUSE: IFUs); default every unit present in all raw frames.
    output_dir : path
        Products go to ``output_dir/<step>/<unit>/`` (per-unit calls: MUSE's
        ``ifu01``...) or ``output_dir/<step>/`` (calls over all units).
    association : Association, optional
        Default: :func:`associate` of the classification for these units.
    flux : bool, optional
        The workflow's flux-calibration branch: forced on or off (default: the
        workflow decides; MUSE: with a STD frame and ``workflow.flux_min_ifus`` IFUs).
    params : mapping, optional
        Recipe parameters by step name, over the rules' ``workflow.parameters``, e.g.
        ``{'muse_scipost': {'skymethod': 'model'}}``.

    Examples
    --------
    >>> from cpldask.workflow import classify, build_graph
    >>> red = build_graph(classify("raw/"), units=[1, 2])     # doctest: +SKIP
    >>> [s.label for s in red.steps][:3]                      # doctest: +SKIP
    ['muse_bias[1]', 'muse_bias[2]', 'muse_dark[1]']
    """
    rules = classification.rules
    if association is None:
        association = associate(classification, units)
    elif units is not None and tuple(sorted(units)) != association.units:
        raise ValueError(f"units {tuple(units)} differ from the association's "
                         f"{association.units}")
    settings = dict(rules.workflow)
    merged = {k: dict(v or {}) for k, v in (settings.get("parameters") or {}).items()}
    for name, values in (params or {}).items():
        merged.setdefault(name, {}).update(values)
    settings["parameters"] = merged
    plan = Plan(output_dir, settings, unit_name=rules.unit_name)
    workflow = _workflow_function(rules)
    workflow(plan, association, flux=flux)
    return Reduction(classification, association, plan)


def _workflow_function(rules: Rules) -> Callable:
    target = rules.workflow.get("function")
    if not target:
        raise ValueError(f"rules {rules.source or rules.instrument}: no workflow.function "
                         f"(module:function laying out the recipe calls)")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def reduce(raw: str | os.PathLike | Iterable, *, units: Iterable[int] | str | None = None,
           ifus: Iterable[int] | str | None = None,
           output_dir: str | os.PathLike = "reduced", dry_run: bool = False,
           flux: bool | None = None, rules: str | os.PathLike | Mapping | Rules | None = None,
           params: Mapping | None = None,
           progress: Callable[[Step, Any], None] | None = None,
           graph: str | os.PathLike | None = None, wait: bool = True,
           cache: bool | None = None,
           recipe_path: Iterable[str] | str | None = None) -> Reduction:
    """Classify the raw files, associate calibrations and run the instrument's whole
    cascade as one Dask graph.

    Parameters
    ----------
    raw : path or paths
        A directory (walked recursively) or a list of files.
    units : iterable of int or str, optional
        Units to reduce, e.g. ``range(1, 25)`` or ``"1-24"`` for MUSE's IFUs; default:
        every unit the raw frames hold.
    ifus : iterable of int or str, optional
        MUSE's name for ``units`` (give one of the two).
    output_dir : path
        Where products go (``<output_dir>/<step>/<unit>/``); skipped when the raw
        directory is walked.
    dry_run : bool
        Classify, associate and lay out the graph, but run nothing.
    flux : bool, optional
        Force the flux branch on or off (default: automatic, see :func:`build_graph`).
    rules : str, path or mapping, optional
        An instrument's name (``'muse'``, ``'hawki'``), a rules YAML file or mapping;
        default: the shipped instrument the files' headers belong to.
    params : mapping, optional
        Recipe parameters by step name.
    progress : callable, optional
        ``progress(step, result)``, called as each step ends (from another thread).
    graph : path, optional
        Also write the graph as an image (or ``.dot``).
    wait : bool
        Wait for the end (and raise :class:`ReductionError` on failure); with False
        the submitted reduction is returned at once (call :meth:`Reduction.wait`).
    cache : bool, optional
        Use the product cache for every call (default: ``cpldask.cache.enabled``);
        False runs every recipe.
    recipe_path : list or str, optional
        The recipes' search path (default: ``cpldask.Recipe.path``).

    Returns
    -------
    Reduction
        ``.final`` has the main products the instrument names (MUSE: DATACUBE_FINAL
        and IMAGE_FOV paths), ``.table()`` the per step account, ``.steps[i].result``
        each :class:`cpldask.Result`.

    Examples
    --------
    >>> import cpldask
    >>> red = cpldask.reduce("raw/", ifus="1-24", output_dir="reduced/")  # doctest: +SKIP
    >>> red.final["DATACUBE_FINAL"]                                       # doctest: +SKIP
    '/data/reduced/muse_scipost/DATACUBE_FINAL.fits'
    """
    if units is not None and ifus is not None:
        raise TypeError("give units= or ifus= (its other name), not both")
    units = ifus if units is None else units
    files = list_files(raw, exclude=[output_dir])
    if rules is None:
        rules = detect_instrument(files)
    rules = load_rules(rules)
    if isinstance(units, str):
        units = parse_units(units, rules)
    classification = classify(files, rules)
    reduction = build_graph(classification, units, output_dir, flux=flux, params=params)
    if graph is not None:
        reduction.write_graph(graph)
    if dry_run:
        return reduction
    for note in reduction.association.notes:
        log.info("association: %s", note)
    reduction.submit(progress, cache=cache, recipe_path=recipe_path)
    if wait:
        try:
            reduction.wait()
        except KeyboardInterrupt:
            reduction.cancel()
            raise
    return reduction


def parse_units(text: str | Iterable[int],
                rules: Rules | str | os.PathLike | Mapping | None = None) -> tuple[int, ...]:
    """``'1-24'``, ``'1,2,5-8'`` or an iterable of ints -> sorted unit numbers, checked
    against the range of the instrument of ``rules`` if given (MUSE: IFUs 1..24).

    Examples
    --------
    >>> parse_units("1,2,5-7")
    (1, 2, 5, 6, 7)
    >>> parse_units("25", "muse")
    Traceback (most recent call last):
    ValueError: MUSE IFU numbers must be within 1..24, got '25'
    """
    rules = load_rules(rules) if rules is not None else None
    unit = rules.unit_name if rules is not None else "unit"
    if not isinstance(text, str):
        values = [int(v) for v in text]
    else:
        values = []
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            try:
                values += range(int(lo), int(hi or lo) + 1)
            except ValueError:
                raise ValueError(f"bad {unit} list {text!r}: use e.g. '1-24' or "
                                 f"'1,2,5-8'") from None
    if not values:
        raise ValueError(f"no {unit} in {text!r}")
    if rules is not None and rules.unit_range is not None:
        lo, hi = rules.unit_range
        if any(not lo <= v <= hi for v in values):
            raise ValueError(f"{rules.instrument} {unit} numbers must be within "
                             f"{lo}..{hi}, got {text!r}")
    return tuple(sorted(set(values)))


def _short_list(items: list[str], n: int = 3) -> str:
    items = list(items)
    if len(items) <= n:
        return " ".join(items)
    return " ".join(items[:n]) + f" (+{len(items) - n} more)"
