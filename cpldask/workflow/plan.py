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

from .classify import (Association, Classification, Frame, Rules, _isot,
                       associate_groups, classify, detect_instrument, format_ranges,
                       list_files, load_rules)
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

    A step that reduces science exposures belongs to their ``group`` (the label of
    :func:`~cpldask.workflow.classify.group_science`; ``exposures`` are their numbers
    in it); a calibration step has no group and serves every group in ``groups``.
    Where several steps share a name and unit, ``suffix`` tells them apart: the group
    and exposure of a science step, the date of the first raw frame of a calibration
    step (``muse_bias@2024-01-01T18:00:00[1]``).
    """

    name: str  # 'muse_bias', 'muse_scibasic_std', 'muse_scipost_flux'
    recipe: str
    unit: int | None  # None: a call over all units (MUSE: IFUs)
    raw: dict[str, list]
    calib: dict[str, list]
    param: dict[str, Any]
    output_dir: str
    result: Any = None  # cpldask.Result once submitted
    optional_calib: tuple[str, ...] = ()
    # what the call needs (memory, cores) from the rules' workflow.resources
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    group: str | None = None
    exposures: tuple[int, ...] = ()
    groups: list[str] = dataclasses.field(default_factory=list)
    suffix: str = ""

    @property
    def stem(self) -> str:
        """The name with its suffix, without the unit: ``muse_scipost@NGC1234``."""
        return f"{self.name}@{self.suffix}" if self.suffix else self.name

    @property
    def label(self) -> str:
        return self.stem if self.unit is None else f"{self.stem}[{self.unit}]"

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
    :class:`Step` is passed on as an input of later calls, which makes the edge. A
    call identical to one already in the plan (recipe, inputs, parameters, unit,
    environment) returns that step: the master calibrations that several groups or
    exposures use are made once. :meth:`begin_group` says which group of exposures
    the calls that follow are for; :meth:`finish` names the steps and their folders.
    """

    def __init__(self, output_dir: str | os.PathLike, settings: Mapping | None = None, *,
                 unit_name: str = "unit", dates: Mapping[str, float | None] | None = None):
        self.output_dir = str(pathlib.Path(output_dir).expanduser().absolute())
        self.settings = dict(settings or {})
        self.unit_name = unit_name
        self.steps: list[Step] = []
        self.groups: list[str] = []
        #: start (MJD) of each input file, for the names of calibration steps
        self.dates = dict(dates or {})
        self._identical: dict[tuple, Step] = {}
        self._exposure: dict[str, int] = {}  # science file -> its number in the group
        self._group: str | None = None

    def begin_group(self, label: str, science: Iterable[Frame | str]) -> None:
        """The calls that follow reduce the group ``label`` of exposures ``science``
        (in time order; numbered from 1)."""
        self._group = label
        self.groups.append(label)
        self._exposure = {(f.path if isinstance(f, Frame) else str(f)): i + 1
                          for i, f in enumerate(science)}

    def call(self, recipe: str, raw: Mapping[str, Any], *, unit: int | None = None,
             calib: Mapping[str, Any] | None = None, param: Mapping | None = None,
             name: str | None = None, env: Mapping[str, str] | None = None) -> Step:
        """Add a call of ``recipe``; ``raw``/``calib`` values are a path, a Step or a
        list of these (empty entries are left out). Parameters from the rules'
        ``workflow.parameters[name]`` come first, ``param`` overrides them; ``env`` is
        the environment of the recipe process (e.g. ``OMP_NUM_THREADS``). A call
        identical to an earlier one returns the earlier step."""
        name = name or recipe
        params = {**(self.settings.get("parameters", {}).get(name) or {}), **(param or {})}
        raw, calib, env = _frames(raw), _frames(calib or {}), dict(env or {})
        identity = (recipe, name, unit, _identity(raw), _identity(calib),
                    repr(sorted(params.items())), tuple(sorted(env.items())))
        step = self._identical.get(identity)
        if step is not None:
            if self._group is not None and self._group not in step.groups:
                step.groups.append(self._group)
            return step
        exposures = {self._exposure[i] for items in (*raw.values(), *calib.values())
                     for i in items if isinstance(i, str) and i in self._exposure}
        for items in (*raw.values(), *calib.values()):
            exposures |= {e for i in items if isinstance(i, Step) and i.group == self._group
                          and i.group is not None for e in i.exposures}
        step = Step(name, recipe, unit, raw, calib, params, "",
                    optional_calib=tuple(
                        self.settings.get("optional_calibrations", {}).get(recipe, ())),
                    resources=dict((self.settings.get("resources") or {}).get(name)
                                   or (self.settings.get("resources") or {}).get(recipe)
                                   or {}),
                    env=env, group=self._group if exposures else None,
                    exposures=tuple(sorted(exposures)),
                    groups=[self._group] if self._group is not None else [])
        self._identical[identity] = step
        self.steps.append(step)
        self._place(step)
        return step

    def finish(self) -> None:
        """Give each step its suffix and output folder: steps alone with their name and
        unit keep the plain name (``muse_bias[1]``, folder ``<output_dir>/muse_bias/
        ifu01``); others are told apart by group (when the plan has several), then
        exposure (science steps), or by the start of their first raw frame
        (calibration steps), then by a number."""
        buckets: dict[tuple, list[Step]] = {}
        for step in self.steps:
            buckets.setdefault((step.name, step.unit), []).append(step)
        for steps in buckets.values():
            parts = {id(s): [] for s in steps}
            if len(steps) > 1:
                for s in steps:
                    if s.group is None:
                        parts[id(s)].append(self._when(s))
                    elif len(self.groups) > 1:
                        parts[id(s)].append(s.group)
                for extra in ("exposure", "number"):
                    seen: dict[tuple, int] = {}
                    for s in steps:
                        seen[tuple(parts[id(s)])] = seen.get(tuple(parts[id(s)]), 0) + 1
                    tied = [s for s in steps if seen[tuple(parts[id(s)])] > 1]
                    counter: dict[tuple, int] = {}
                    for s in tied:
                        key = tuple(parts[id(s)])
                        counter[key] = counter.get(key, 0) + 1
                        if extra == "exposure" and s.group is not None and s.exposures:
                            parts[id(s)].append("exp" + "+".join(map(str, s.exposures)))
                        elif extra == "number":
                            parts[id(s)].append(str(counter[key]))
            for s in steps:
                s.suffix = "/".join(parts[id(s)])
                self._place(s)

    def _place(self, step: Step) -> None:
        where = pathlib.Path(self.output_dir, step.name, *step.suffix.split("/")) \
            if step.suffix else pathlib.Path(self.output_dir, step.name)
        if step.unit is not None:  # MUSE: <step>/ifu01
            where = where / f"{self.unit_name.lower()}{step.unit:02d}"
        step.output_dir = str(where)

    def _when(self, step: Step) -> str:
        """The start of the first raw frame of a step (of its upstream steps' when its
        raw inputs are products), ``2024-01-01T18:00:00``; '' when none is dated."""
        dates = [self.dates.get(i) for items in step.raw.values() for i in items
                 if isinstance(i, str)]
        dates = [d for d in dates if d is not None]
        if dates:
            return _isot(min(dates))
        ups = sorted(w for w in (self._when(d) for d in step.deps if d in
                                 [i for items in step.raw.values() for i in items]) if w)
        return ups[0] if ups else ""


def _identity(group: Mapping[str, list]) -> tuple:
    """Inputs of a call as a key: steps by identity (they are made once), paths."""
    return tuple((tag, tuple(items)) for tag, items in group.items())


def _frames(group: Mapping[str, Any]) -> dict[str, list]:
    """Tag -> flat list of paths and steps (a list inside the list, e.g. the archive
    files of one unit among the steps of others, is spread into it)."""
    out = {}
    for tag, value in group.items():
        items = []
        for i in (value if isinstance(value, (list, tuple)) else [value]):
            for j in (i if isinstance(i, (list, tuple)) else [i]):
                if j is not None:
                    items.append(j.path if isinstance(j, Frame) else j)
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
    classification : Classification
    associations : list of Association
        One per group of science exposures (``association``: the first), each with
        the associations of its exposures.
    output_dir : str
    """

    def __init__(self, classification: Classification,
                 association: Association | list[Association], plan: Plan):
        self.classification = classification
        self.associations = list(association) if isinstance(association, list) \
            else [association]
        self.association = self.associations[0]
        self.steps = plan.steps
        self.output_dir = plan.output_dir
        self.settings = plan.settings
        self.submitted_at: float | None = None
        self.finished_at: float | None = None
        self._recipes: dict[tuple, Any] = {}

    # -- looking at the plan ------------------------------------------------------
    @property
    def units(self) -> tuple:
        """The units reduced (MUSE: IFU numbers; ``(None,)`` without a unit axis)."""
        return self.association.units

    @property
    def instrument(self) -> str:
        return self.classification.rules.instrument

    def step(self, name: str, unit: int | None = None, *, group: str | None = None) -> Step:
        """The step ``name`` of ``unit`` (of ``group``, for a science step when there
        are several groups)."""
        for s in self.steps:
            if s.name == name and s.unit == unit and (group is None or s.group == group):
                return s
        raise KeyError(f"no step {name}" + ("" if unit is None else f" for unit {unit}")
                       + ("" if group is None else f" of group {group}"))

    def __getitem__(self, label: str) -> Step:
        """``red['muse_bias[2]']``, ``red['muse_scipost']``."""
        for s in self.steps:
            if s.label == label:
                return s
        raise KeyError(label)

    def describe(self) -> str:
        """Classified frames, association and the steps with their inputs (dry run)."""
        reused = self.reused()
        head = f"{len(self.steps)} recipe calls -> {self.output_dir}"
        if reused:
            head += (f" ({len(reused)} reused: their products from an earlier run are "
                     f"there, intact; {len(self.steps) - len(reused)} to run)")
        parts = [self.classification.summary(), "", self.association_report(), "", head]
        for step in self.steps:
            deps = ", ".join(d.label for d in step.deps) or "-"
            shared = (f"  (for {', '.join(step.groups)})"
                      if step.group is None and len(step.groups) > 1 else "")
            state = ("reused " if step.label in reused else "to run ") if reused else ""
            parts.append(f"  {state}{step.label:<24} after: {deps}{shared}")
            for group, items in (("raw", step.raw), ("calib", step.calib)):
                for tag, values in items.items():
                    shown = [v.label if isinstance(v, Step) else os.path.basename(v)
                             for v in values]
                    parts.append(f"      {group:<5} {tag:<15} {_short_list(shown)}")
            if step.param:
                parts.append("      param " + " ".join(f"{k}={v}" for k, v in step.param.items()))
        return "\n".join(parts)

    def association_report(self) -> str:
        """The association report of every group and exposure: chosen calibrations
        with their time difference, and each rejected candidate with its reason
        (:meth:`Association.report <cpldask.workflow.Association.report>`)."""
        return "\n\n".join(a.report() for a in self.associations)

    def reused(self) -> dict[str, dict]:
        """The steps an earlier run of this reduction finished: label -> the provenance
        record beside their products, which are intact in the step's folder (see
        :func:`cpldask.provenance.installed`), made by the same recipe, parameters
        and inputs (files with the same bytes, upstream steps themselves reused).

        A forecast from what the client sees, for ``--dry-run``: when the reduction
        runs, each call's worker compares the whole content key (the recipe library,
        every parameter's default) and serves the products instead of running the
        recipe (with the product cache on, the default). An interrupted reduction run
        again so goes on where it stopped.

        Examples
        --------
        >>> sorted(red.reused())[:2]                  # doctest: +SKIP
        ['muse_bias[1]', 'muse_bias[2]']
        """
        from .. import provenance

        keys: dict[int, str] = {}
        out: dict[str, dict] = {}
        for step in self.steps:  # in call order: upstream steps first
            if not os.path.isdir(step.output_dir):
                continue
            records = provenance.installed(step.output_dir)
            inputs = []
            for group in (step.raw, step.calib):
                for tag, items in group.items():
                    inputs += [(tag, {"key": keys.get(id(i), "")} if isinstance(i, Step) else i)
                               for i in items]
            if any(isinstance(i, Mapping) and not i["key"] for _, i in inputs):
                continue  # an upstream step runs: this one runs after it
            for record in records:
                if provenance.same_call(record, step.recipe, param=step.param,
                                        inputs=inputs, env=step.env):
                    keys[id(step)] = str(record.get("key"))
                    out[step.label] = record
                    break
        return out

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
        recipes = self.check_params(recipe_path=recipe_path)  # before anything runs
        self.submitted_at = time.time()
        for i, (step, recipe) in enumerate(zip(self.steps, recipes)):
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

    def check_params(self, *, recipe_path: Iterable[str] | str | None = None) -> list:
        """Check every step's recipe parameters against its recipe, as the call would,
        so that a misspelt name or a bad value stops the reduction before any step is
        submitted; returns the :class:`~cpldask.Recipe` of each step.

        Raises
        ------
        ValueError
            Naming the step: an unknown parameter (with the valid ones) or a value out
            of the parameter's type, range or choices.

        Examples
        --------
        >>> red = build_graph(classify("raw/"),
        ...                   params={"muse_scipost": {"skymethd": "simple"}})  # doctest: +SKIP
        >>> red.check_params()                                    # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: muse_scipost: muse_scipost has no parameter 'skymethd'. Did you mean skymethod? ...
        """
        from ..recipe import Recipe

        recipes = []
        for step in self.steps:
            # one Recipe per recipe and needs (steps of one recipe may need more)
            which = (step.recipe, repr(sorted(step.resources.items())))
            recipe = self._recipes.get(which)
            if recipe is None:
                recipe = Recipe(step.recipe, threaded=True, path=recipe_path)
                recipe.needs = dict(step.resources)
                self._recipes[which] = recipe
                # calibrations the rules' workflow.optional_calibrations lets go
                recipe.optional_calib |= set(step.optional_calib)
            try:
                recipe.param._for_call(step.param)
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{step.label}: {err}") from err
            recipes.append(recipe)
        return recipes

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
        return next(iter(self.finals.values()), {})

    @property
    def finals(self) -> dict[str, dict[str, str]]:
        """:attr:`final` of each group of exposures, by group label."""
        final = self.settings.get("final") or {}
        out = {}
        for a in self.associations:
            for name in final.get("steps", ()):
                steps = [s for s in self.steps if s.name == name and s.unit is None
                         and (s.group == a.label or len(self.associations) == 1)]
                if steps:
                    paths = steps[0].result.paths
                    out[a.label] = {tag: paths[tag][0] for tag in final.get("tags", ())
                                    if tag in paths}
                    break
        return out

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
        One group's association (default: :func:`associate_groups` of the
        classification: the workflow is laid out once per group of exposures on one
        plan, where identical calls, e.g. a master bias several groups use, are one
        step).
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
        associations = associate_groups(classification, units)
    else:
        if units is not None and tuple(sorted(units)) != association.units:
            raise ValueError(f"units {tuple(units)} differ from the association's "
                             f"{association.units}")
        associations = [association]
    settings = dict(rules.workflow)
    merged = {k: dict(v or {}) for k, v in (settings.get("parameters") or {}).items()}
    for name, values in (params or {}).items():
        merged.setdefault(name, {}).update(values)
    settings["parameters"] = merged
    plan = Plan(output_dir, settings, unit_name=rules.unit_name,
                dates={f.path: f.mjd for f in classification.frames})
    workflow = _workflow_function(rules)
    for assoc in associations:
        plan.begin_group(assoc.label, assoc.science)
        workflow(plan, assoc, flux=flux)
    plan.finish()
    # parameters for a step this reduction does not make would be silently dropped
    # (a misspelt step, or a branch the data leave out, e.g. the flux branch)
    names = sorted({step.name for step in plan.steps})
    unknown = sorted(set(params or {}) - set(names))
    if unknown:
        raise ValueError(f"parameters for {', '.join(map(repr, unknown))}: no such step "
                         f"in this reduction; its steps: {', '.join(names)}")
    return Reduction(classification, associations, plan)


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
    for assoc in reduction.associations:
        for exp in assoc.exposures:
            for note in exp.notes:
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
