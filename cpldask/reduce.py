"""Reduce a MUSE exposure end to end: classify, associate, and run the recipe cascade
as one Dask graph.

>>> import cpldask
>>> red = cpldask.reduce("raw/", ifus=range(1, 25), output_dir="reduced/")  # doctest: +SKIP
>>> red.final["DATACUBE_FINAL"]                                             # doctest: +SKIP
'reduced/muse_scipost/DATACUBE_FINAL.fits'

Three steps, each usable on its own:

1. :func:`classify` reads the headers of the raw files and gives each a tag (BIAS,
   ARC, OBJECT, LINE_CATALOG ...) by the rules in ``cpldask/rules/muse.yaml``; files no
   rule fits are listed with the reason.
2. :func:`associate` chooses the calibrations for the science exposure: same mode,
   binning and read-out, holding the IFU, nearest in time.
3. :func:`build_graph` lays out the recipe calls (:func:`muse_workflow`): per IFU
   muse_bias -> muse_dark -> muse_flat -> muse_wavecal -> muse_lsf, muse_illum and
   muse_twilight over all IFUs, per IFU muse_scibasic, then muse_scipost over all
   pixel tables, and with enough IFUs and a STD frame the flux branch
   (muse_standard -> muse_scipost with STD_RESPONSE). :meth:`Reduction.submit` turns
   each step into a background :class:`cpldask.Recipe` call whose inputs are the
   :class:`cpldask.Result` objects of the steps before it, so the whole graph is on
   the cluster at once and independent IFUs run side by side.

:func:`reduce` does all three; ``dry_run=True`` stops before submitting. The module
itself is callable: ``cpldask.reduce(...)`` is :func:`reduce`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import pathlib
import sys
import time
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._classify import (Association, Classification, Frame, Rules, Unclassified,
                        associate, classify, list_files, load_rules, _ranges)

__all__ = ["reduce", "classify", "associate", "build_graph", "muse_workflow", "demo",
           "white_light_png", "parse_ifus", "run_sequential", "Reduction", "Step",
           "ReductionError", "Classification", "Association", "Frame", "Unclassified",
           "Rules", "load_rules"]

log = logging.getLogger("cpldask.reduce")


# ---------------------------------------------------------------------------------
# The plan: steps (recipe calls) and their edges
# ---------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class Step:
    """One recipe call of the reduction.

    ``raw`` and ``calib`` map a frame tag to its inputs: file paths, or earlier
    :class:`Step` objects (meaning: that step's products of this tag). After
    :meth:`Reduction.submit`, ``result`` is the call's :class:`cpldask.Result`.
    """

    name: str  # unique per IFU: 'muse_bias', 'muse_scibasic_std', 'muse_scipost_flux'
    recipe: str
    ifu: int | None  # None: a call over all IFUs
    raw: dict[str, list]
    calib: dict[str, list]
    param: dict[str, Any]
    output_dir: str
    result: Any = None  # cpldask.Result once submitted
    optional_calib: tuple[str, ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name if self.ifu is None else f"{self.name}[{self.ifu}]"

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

    def __init__(self, output_dir: str | os.PathLike, settings: Mapping | None = None):
        self.output_dir = str(pathlib.Path(output_dir).expanduser().absolute())
        self.settings = dict(settings or {})
        self.steps: list[Step] = []

    def call(self, recipe: str, raw: Mapping[str, Any], *, ifu: int | None = None,
             calib: Mapping[str, Any] | None = None, param: Mapping | None = None,
             name: str | None = None, env: Mapping[str, str] | None = None) -> Step:
        """Add a call of ``recipe``; ``raw``/``calib`` values are a path, a Step or a
        list of these (empty entries are left out). Parameters from the rules'
        ``workflow.parameters[name]`` come first, ``param`` overrides them; ``env`` is
        the environment of the recipe process (e.g. ``OMP_NUM_THREADS``)."""
        name = name or recipe
        if any(s.name == name and s.ifu == ifu for s in self.steps):
            raise ValueError(f"step {name} for IFU {ifu} is already in the plan")
        params = {**(self.settings.get("parameters", {}).get(name) or {}), **(param or {})}
        where = pathlib.Path(self.output_dir, name)
        if ifu is not None:
            where = where / f"ifu{ifu:02d}"
        step = Step(name, recipe, ifu, _frames(raw), _frames(calib or {}), params,
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


# ---------------------------------------------------------------------------------
# The MUSE cascade
# ---------------------------------------------------------------------------------
def muse_workflow(plan: Plan, assoc: Association, *, flux: bool | None = None) -> None:
    """The MUSE reduction cascade for the IFUs of ``assoc``, as recipe calls on ``plan``.

    The calls are made stage by stage (all IFUs' biases, then all darks, ...), which is
    also the order Dask prefers among calls that are ready, so the science path to the
    cube goes first and muse_lsf (needed by the flux branch only) fills idle slots.
    """
    ifus = assoc.ifus
    cfg = plan.settings
    static = {t: assoc.paths(t) for t in ("LINE_CATALOG", "GEOMETRY_TABLE", "SKY_LINES",
                                          "EXTINCT_TABLE", "STD_FLUX_TABLE")}
    bias, dark, flat, wavecal, lsf, sci, std = ({} for _ in range(7))

    for k in ifus:
        bias[k] = plan.call("muse_bias", {"BIAS": assoc.paths("BIAS", k)}, ifu=k,
                            param={"nifu": k})
    if "DARK" in assoc:
        for k in ifus:
            dark[k] = plan.call("muse_dark", {"DARK": assoc.paths("DARK", k)}, ifu=k,
                                calib={"MASTER_BIAS": bias[k]}, param={"nifu": k})
    for k in ifus:
        flat[k] = plan.call("muse_flat", {"FLAT": assoc.paths("FLAT", k)}, ifu=k,
                            calib={"MASTER_BIAS": bias[k], "MASTER_DARK": dark.get(k)},
                            param={"nifu": k})
    for k in ifus:
        wavecal[k] = plan.call("muse_wavecal", {"ARC": assoc.paths("ARC", k)}, ifu=k,
                               calib={"MASTER_BIAS": bias[k], "TRACE_TABLE": flat[k],
                                      "LINE_CATALOG": static["LINE_CATALOG"]},
                               param={"nifu": k})

    # the illumination flat and the twilight cube are made once, over all IFUs
    illum = None
    if "ILLUMFLAT" in assoc:
        illum = plan.call("muse_illum", {"ILLUMFLAT": assoc.paths("ILLUMFLAT")})
    twilight = None
    needs = cfg.get("twilight_needs_ifu")
    if "SKYFLAT" in assoc and (needs is None or needs in ifus):
        twilight = plan.call(
            "muse_twilight", {"SKYFLAT": assoc.paths("SKYFLAT"), "ILLUM": illum},
            calib={"MASTER_BIAS": [bias[k] for k in ifus],
                   "MASTER_DARK": [dark[k] for k in ifus if k in dark],
                   "MASTER_FLAT": [flat[k] for k in ifus],
                   "TRACE_TABLE": [flat[k] for k in ifus],
                   "WAVECAL_TABLE": [wavecal[k] for k in ifus],
                   "GEOMETRY_TABLE": static["GEOMETRY_TABLE"]})
    elif "SKYFLAT" in assoc:
        assoc.notes.append(f"muse_twilight left out: it needs IFU {needs} among the "
                           f"reduced IFUs (pipeline 2.8.7); no TWILIGHT_CUBE correction")

    def basic(k: int) -> dict:
        return {"MASTER_BIAS": bias[k], "MASTER_DARK": dark.get(k),
                "MASTER_FLAT": flat[k], "TRACE_TABLE": flat[k],
                "WAVECAL_TABLE": wavecal[k], "GEOMETRY_TABLE": static["GEOMETRY_TABLE"],
                "TWILIGHT_CUBE": twilight}

    if assoc.science:
        tag = assoc.science[0].tag
        for k in ifus:
            sci[k] = plan.call("muse_scibasic",
                               {tag: [f.path for f in assoc.science], "ILLUM": illum},
                               ifu=k, calib=basic(k), param={"nifu": k})
        plan.call("muse_scipost", {f"PIXTABLE_{tag}": [sci[k] for k in ifus]})

    # muse_lsf is off the path to the cube (only the flux branch needs it). Each call
    # gets the WAVECAL_TABLE of every IFU (it takes its own, as muse_twilight does), so
    # it becomes ready together with muse_twilight, which has the higher priority and
    # starts first. Given only its own table, an lsf call became ready as soon as its
    # wavecal was done, and Dask's greedy placement started both lsf calls of a 2-core
    # machine ahead of twilight, which then ran alone with a core idle.
    for k in ifus:
        lsf[k] = plan.call("muse_lsf", {"ARC": assoc.paths("ARC", k)}, ifu=k,
                           calib={"MASTER_BIAS": bias[k], "TRACE_TABLE": flat[k],
                                  "WAVECAL_TABLE": [wavecal[k]] + [wavecal[j] for j in ifus
                                                                   if j != k],
                                  "LINE_CATALOG": static["LINE_CATALOG"]},
                           param={"nifu": k})

    if flux is None:
        flux = len(ifus) >= int(cfg.get("flux_min_ifus", 3))
        flux = flux and all(t in assoc for t in ("STD", "STD_FLUX_TABLE", "EXTINCT_TABLE"))
    elif flux:
        missing = [t for t in ("STD", "STD_FLUX_TABLE", "EXTINCT_TABLE") if t not in assoc]
        if missing or not assoc.science:
            raise ValueError(f"flux=True needs {', '.join(missing) or 'a science frame'}")
    if flux and assoc.science:
        for k in ifus:
            std[k] = plan.call("muse_scibasic", {"STD": assoc.paths("STD", k), "ILLUM": illum},
                               ifu=k, calib=basic(k), param={"nifu": k},
                               name="muse_scibasic_std")
        standard = plan.call("muse_standard", {"PIXTABLE_STD": [std[k] for k in ifus]},
                             calib={"EXTINCT_TABLE": static["EXTINCT_TABLE"],
                                    "STD_FLUX_TABLE": static["STD_FLUX_TABLE"]})
        plan.call("muse_scipost", {f"PIXTABLE_{tag}": [sci[k] for k in ifus]},
                  calib={"EXTINCT_TABLE": static["EXTINCT_TABLE"],
                         "STD_RESPONSE": standard, "STD_TELLURIC": standard,
                         "SKY_LINES": static["SKY_LINES"],
                         "LSF_PROFILE": [lsf[k] for k in ifus]},
                  name="muse_scipost_flux")


# ---------------------------------------------------------------------------------
# The reduction: plan, submission, outcome
# ---------------------------------------------------------------------------------
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
    def ifus(self) -> tuple[int, ...]:
        return self.association.ifus

    def step(self, name: str, ifu: int | None = None) -> Step:
        for s in self.steps:
            if s.name == name and s.ifu == ifu:
                return s
        raise KeyError(f"no step {name} for IFU {ifu}")

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
        matplotlib, one row per IFU) or as DOT text (``.dot``)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".dot":
            path.write_text(self.dot())
            return path
        _draw_graph(self.steps, self.ifus, path)
        return path

    # -- running -------------------------------------------------------------------
    def submit(self, progress: Callable[[Step, Any], None] | None = None, *,
               cache: bool | None = None) -> "Reduction":
        """Submit every step as a background recipe call; returns at once.

        Each step becomes ``cpldask.Recipe(recipe)(raw, calib=..., param=...,
        output_dir=..., threaded=True)`` with the :class:`~cpldask.Result` of earlier
        steps as inputs: Dask runs a call as soon as its inputs exist, on any worker.
        ``progress(step, result)`` is called (from another thread) as each step ends.
        ``cache`` is passed to every call (None: the ``cpldask.cache.enabled`` key;
        False: run every recipe even if the product cache has its products).
        """
        import dask

        from .recipe import Recipe

        if self.submitted_at is not None:
            raise RuntimeError("this reduction was already submitted")
        self.submitted_at = time.time()
        for i, step in enumerate(self.steps):
            recipe = self._recipes.get(step.recipe)
            if recipe is None:
                recipe = self._recipes[step.recipe] = Recipe(step.recipe, threaded=True)
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
        """Main products of the last muse_scipost: DATACUBE_FINAL and IMAGE_FOV paths
        (the flux-calibrated ones when the flux branch ran)."""
        for name in ("muse_scipost_flux", "muse_scipost"):
            try:
                step = self.step(name)
            except KeyError:
                continue
            paths = step.result.paths
            return {tag: paths[tag][0] for tag in ("DATACUBE_FINAL", "IMAGE_FOV") if tag in paths}
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
        """One row per step for a final table: label, recipe, ifu, status, start and
        end (seconds after submission, the recipe process's own times), wall time,
        host, worker and product file names."""
        t0 = self.submitted_at or 0.0
        out = []
        for s in self.steps:
            row = {"step": s.label, "recipe": s.recipe, "ifu": s.ifu, "status": s.status,
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
        from .report import write_report

        failed = {s.label: s.result.exception() for s in self.failed()}
        return write_report(self.output_dir, path, failed=failed,
                            planned=[s.label for s in self.steps])

    def __repr__(self) -> str:
        state = "planned" if self.submitted_at is None else (
            "done" if self.done else "running")
        return (f"<Reduction {len(self.steps)} steps, IFUs {_ranges(self.ifus)}, {state}, "
                f"output_dir={self.output_dir!r}>")


# ---------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------
def build_graph(classification: Classification, ifus: Iterable[int] | None = None,
                output_dir: str | os.PathLike = "reduced", *,
                association: Association | None = None, flux: bool | None = None,
                params: Mapping[str, Mapping] | None = None) -> Reduction:
    """Lay out the recipe calls of a reduction (nothing runs yet).

    Parameters
    ----------
    classification : Classification
        From :func:`classify`.
    ifus : iterable of int, optional
        IFUs to reduce; default every IFU present in all raw frames.
    output_dir : path
        Products go to ``output_dir/<step>/ifu<k>/`` (per-IFU calls) or
        ``output_dir/<step>/`` (calls over all IFUs).
    association : Association, optional
        Default: :func:`associate` of the classification for these IFUs.
    flux : bool, optional
        Run the flux branch; default: with a STD frame and at least
        ``workflow.flux_min_ifus`` IFUs (rules).
    params : mapping, optional
        Recipe parameters by step name, over the rules' ``workflow.parameters``, e.g.
        ``{'muse_scipost': {'skymethod': 'model'}}``.
    """
    rules = classification.rules
    if association is None:
        association = associate(classification, ifus)
    elif ifus is not None and tuple(sorted(ifus)) != association.ifus:
        raise ValueError(f"ifus {tuple(ifus)} differ from the association's {association.ifus}")
    settings = dict(rules.workflow)
    merged = {k: dict(v or {}) for k, v in (settings.get("parameters") or {}).items()}
    for name, values in (params or {}).items():
        merged.setdefault(name, {}).update(values)
    settings["parameters"] = merged
    plan = Plan(output_dir, settings)
    workflow = _workflow_function(rules)
    workflow(plan, association, flux=flux)
    return Reduction(classification, association, plan)


def _workflow_function(rules: Rules) -> Callable:
    target = rules.workflow.get("function", "cpldask.reduce:muse_workflow")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def reduce(raw: str | os.PathLike | Iterable, *, ifus: Iterable[int] | str | None = None,
           output_dir: str | os.PathLike = "reduced", dry_run: bool = False,
           flux: bool | None = None, rules="muse", params: Mapping | None = None,
           progress: Callable[[Step, Any], None] | None = None,
           graph: str | os.PathLike | None = None, wait: bool = True,
           cache: bool | None = None) -> Reduction:
    """Classify the raw files, associate calibrations and run the whole cascade.

    Parameters
    ----------
    raw : path or paths
        A directory (walked recursively) or a list of files.
    ifus : iterable of int or str, optional
        IFUs to reduce, e.g. ``range(1, 25)`` or ``"1-24"``; default: every IFU the
        raw frames hold.
    output_dir : path
        Where products go (``<output_dir>/<step>/ifu<k>/``); skipped when the raw
        directory is walked.
    dry_run : bool
        Classify, associate and lay out the graph, but run nothing.
    flux : bool, optional
        Force the flux branch on or off (default: automatic, see :func:`build_graph`).
    rules : str, path or mapping
        Instrument rules (default MUSE's).
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

    Returns
    -------
    Reduction
        ``.final`` has the DATACUBE_FINAL and IMAGE_FOV paths, ``.table()`` the per
        step account, ``.steps[i].result`` each :class:`cpldask.Result`.
    """
    if isinstance(ifus, str):
        ifus = parse_ifus(ifus)
    files = list_files(raw, exclude=[output_dir])
    classification = classify(files, rules)
    reduction = build_graph(classification, ifus, output_dir, flux=flux, params=params)
    if graph is not None:
        reduction.write_graph(graph)
    if dry_run:
        return reduction
    for note in reduction.association.notes:
        log.info("association: %s", note)
    reduction.submit(progress, cache=cache)
    if wait:
        try:
            reduction.wait()
        except KeyboardInterrupt:
            reduction.cancel()
            raise
    return reduction


def parse_ifus(text: str | Iterable[int]) -> tuple[int, ...]:
    """``'1-24'``, ``'1,2,5-8'`` or an iterable of ints -> sorted IFU numbers (1..24)."""
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
                raise ValueError(f"bad IFU list {text!r}: use e.g. '1-24' or '1,2,5-8'") from None
    bad = [v for v in values if not 1 <= v <= 24]
    if bad or not values:
        raise ValueError(f"IFU numbers must be within 1..24, got {text!r}")
    return tuple(sorted(set(values)))


# ---------------------------------------------------------------------------------
# The demo and its picture
# ---------------------------------------------------------------------------------
def demo(workdir: str | os.PathLike = "cpldask-demo", ifus: Iterable[int] = (1, 2), *,
         seed: int = 0, progress: Callable | None = None, flux: bool | None = None,
         wait: bool = True, cache: bool | None = None) -> Reduction:
    """Generate a synthetic MUSE exposure for ``ifus`` and reduce it end to end.

    The raw data go to ``workdir/raw`` (made once, reused while ``ifus`` and ``seed``
    are the same), the products to ``workdir/reduced``, and a PNG of the white-light
    image with the synthetic star marked to ``workdir/white_light.png`` (the
    reduction's ``png`` attribute).

    With ``wait=False`` the submitted reduction returns at once (for a live display
    of ``red.steps``); after ``red.wait()``, write the picture with
    ``white_light_png(red.final['IMAGE_FOV'], red.png_target, ifus=red.ifus)``.
    """
    from . import synthetic

    workdir = pathlib.Path(workdir).expanduser().absolute()
    ifus = parse_ifus(ifus)
    raw = workdir / "raw"
    stamp = raw / ".cpldask-demo.json"
    # the generator's version too: data of an older generator (other headers) are remade
    want = {"ifus": list(ifus), "seed": seed, "synthetic": synthetic.VERSION}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        log.info("writing a synthetic exposure of IFUs %s to %s", _ranges(ifus), raw)
        if stamp.exists():
            stamp.unlink()
        synthetic.make_exposure(raw, ifus=ifus, seed=seed, lingain=False)
        stamp.write_text(json.dumps(want))
    red = reduce(raw, ifus=ifus, output_dir=workdir / "reduced", progress=progress,
                 flux=flux, wait=wait, cache=cache)
    red.png_target = workdir / "white_light.png"
    red.png = None
    if wait:
        red.png = white_light_png(red.final["IMAGE_FOV"], red.png_target, ifus=ifus)
    return red


def white_light_png(image_fov: str | os.PathLike, png: str | os.PathLike, *,
                    ifus: Iterable[int] | None = None, title: str | None = None) -> pathlib.Path:
    """Save the IMAGE_FOV white-light image as a PNG: asinh stretch from 5 sigma below
    the sky to the maximum (the star's core), so that the sky's structure and bright
    sources both show. With ``ifus`` of a synthetic exposure, circle the
    star where :func:`cpldask.synthetic.star_pixel` expects it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from astropy.io import fits
    from astropy.visualization import AsinhStretch, ImageNormalize, ManualInterval
    from matplotlib.patches import Circle
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    with fits.open(image_fov) as hdul:
        hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
        data, header = np.asarray(hdu.data, dtype=float), hdu.header
    finite = data[np.isfinite(data)]
    if finite.size:
        median = np.median(finite)
        noise = 1.4826 * np.median(np.abs(finite - median))  # robust sky scatter
        lo, hi = median - 5.0 * noise, finite.max()
    else:
        lo, hi = 0.0, 1.0
    norm = ImageNormalize(interval=ManualInterval(lo, hi if hi > lo else lo + 1.0),
                          stretch=AsinhStretch(0.0005))
    ny, nx = data.shape
    width = 10.0
    height = min(10.0, max(2.0, 0.85 * width * ny / nx + 1.3))
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    cmap = plt.get_cmap("magma").with_extremes(bad="0.6")
    im = ax.imshow(data, origin="lower", cmap=cmap, norm=norm, aspect="equal",
                   interpolation="nearest", extent=(0.5, nx + 0.5, 0.5, ny + 0.5))
    if ifus is not None:
        from . import synthetic

        try:
            x, y = synthetic.star_pixel(header, tuple(ifus))
        except (KeyError, ValueError):
            pass
        else:
            ax.add_patch(Circle((x, y), 7.0, fill=False, ec="cyan", lw=1.0))
            ax.annotate("synthetic star", (x + 7.0, y), xytext=(4, 0),
                        textcoords="offset points", color="cyan", fontsize=8, va="center")
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")
    ax.set_title(title or "MUSE white-light image (IMAGE_FOV)"
                 + (f", IFUs {_ranges(ifus)}" if ifus is not None else ""), fontsize=10)
    cax = make_axes_locatable(ax).append_axes("right", size="1.2%", pad=0.08)
    bar = fig.colorbar(im, cax=cax, label=str(header.get("BUNIT", "")).strip())
    if finite.size:  # asinh crowds automatic ticks at the top: sky level and peak
        bar.set_ticks([float(np.median(finite)), float(hi)])
        bar.ax.set_yticklabels([f"{np.median(finite):.4g}", f"{hi:.4g}"], fontsize=7)
    fig.tight_layout()
    png = pathlib.Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png


def _draw_graph(steps: list[Step], ifus: tuple[int, ...], path: pathlib.Path) -> None:
    """The graph drawn with matplotlib: columns are stages (longest path from a
    start), one lane per IFU, calls over all IFUs in a lane of their own below. Edges
    implied by others (bias -> twilight when bias -> ... -> wavecal -> twilight) are
    left out so that 24 IFUs stay readable."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    level: dict[int, int] = {}
    ancestors: dict[int, set[int]] = {}
    for s in steps:  # steps are in topological order
        level[id(s)] = 1 + max((level[id(d)] for d in s.deps), default=-1)
        ancestors[id(s)] = set().union(*[{id(d)} | ancestors[id(d)] for d in s.deps])
    edges = [(d, s) for s in steps for d in s.deps
             if not any(id(d) in ancestors[id(o)] for o in s.deps if o is not d)]
    lanes = [*ifus, None]
    slot: dict[int, int] = {}
    depth = {lane: 1 for lane in lanes}
    taken: dict[tuple, int] = {}
    for s in steps:
        key = (s.ifu, level[id(s)])
        slot[id(s)] = taken.get(key, 0)
        taken[key] = slot[id(s)] + 1
        depth[s.ifu] = max(depth[s.ifu], taken[key])
    top, y0 = {}, 0.0
    for lane in lanes:
        top[lane] = y0 + (0.4 if lane is None else 0.0)
        y0 = top[lane] + 0.6 * depth[lane] + 0.4
    pos = {id(s): (level[id(s)] * 1.0, top[s.ifu] + 0.6 * slot[id(s)]) for s in steps}
    ncol = max(level.values(), default=0) + 1
    fig, ax = plt.subplots(figsize=(1.6 * ncol + 0.8, 0.42 * y0 + 1.0), dpi=100)
    ax.set_xlim(-0.6, ncol - 0.4)
    ax.set_ylim(y0, -0.6)
    ax.axis("off")
    boxes = {}
    for s in steps:
        x, y = pos[id(s)]
        name = s.name.removeprefix("muse_")
        text = name if s.ifu is None else f"{name} {s.ifu}"
        boxes[id(s)] = ax.text(x, y, text, ha="center", va="center", fontsize=7, zorder=3,
                               bbox={"boxstyle": "round,pad=0.3", "lw": 0.5, "ec": "0.3",
                                     "fc": "#f5d7a1" if s.ifu is None else "#cfe3f7"})
    fig.canvas.draw()  # sizes the boxes, which clip the arrows below
    for d, s in edges:
        ax.annotate("", xy=pos[id(s)], xytext=pos[id(d)], zorder=2,
                    arrowprops={"arrowstyle": "-|>", "lw": 0.6, "color": "0.45",
                                "mutation_scale": 7, "shrinkA": 1, "shrinkB": 1,
                                "patchA": boxes[id(d)].get_bbox_patch(),
                                "patchB": boxes[id(s)].get_bbox_patch()})
    ax.set_title(f"{len(steps)} recipe calls, IFUs {_ranges(ifus)} "
                 f"(blue: one call per IFU, orange: one call over all IFUs)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _short_list(items: list[str], n: int = 3) -> str:
    items = list(items)
    if len(items) <= n:
        return " ".join(items)
    return " ".join(items[:n]) + f" (+{len(items) - n} more)"


# ---------------------------------------------------------------------------------
# The same calls one after another with python-cpl (the benchmark's reference)
# ---------------------------------------------------------------------------------
def run_sequential(reduction: Reduction, output_dir: str | os.PathLike) -> dict[str, float]:
    """Run the steps of ``reduction`` one after another in this process with
    python-cpl (as a script without cpldask would), products under ``output_dir``.

    Returns the wall time of each step by label, and ``'total'``.
    """
    import cpl

    from .recipe import Recipe

    cpl.Recipe.path = Recipe.search_path()
    base = pathlib.Path(output_dir).expanduser().absolute()
    products: dict[int, dict[str, list[str]]] = {}
    times: dict[str, float] = {}
    t_all = time.monotonic()
    for step in reduction.steps:
        def resolve(values, tag):
            out = []
            for v in values:
                if isinstance(v, Step):
                    out += products[id(v)].get(tag, [])
                else:
                    out.append(v)
            return out

        recipe = cpl.Recipe(step.recipe)
        raw = {tag: resolve(v, tag) for tag, v in step.raw.items()}
        calib = {tag: resolve(v, tag) for tag, v in step.calib.items()}
        where = base / pathlib.Path(step.output_dir).relative_to(reduction.output_dir)
        where.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        res = recipe(raw, tag=next(iter(raw)), param=dict(step.param), calib=calib,
                     output_dir=str(where))
        times[step.label] = time.monotonic() - t0
        got: dict[str, list[str]] = {}
        for tag, value in res:
            got[tag] = list(value) if isinstance(value, list) else [value]
        products[id(step)] = got
        log.info("%s %.1f s", step.label, times[step.label])
    times["total"] = time.monotonic() - t_all
    return times


def _main(argv: list[str] | None = None) -> int:
    """``python -m cpldask.reduce bench WORKDIR [--ifus 1,2]``: reduce a synthetic
    exposure with cpldask (product cache off), and run the same calls with python-cpl
    one after another; print both wall times and their ratio (JSON, also written to
    ``WORKDIR/bench.json``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cpldask.reduce")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="cpldask graph vs python-cpl one after another")
    bench.add_argument("workdir")
    bench.add_argument("--ifus", default="1,2")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--order", default="cpldask,python-cpl",
                       help="variants to run, in this order (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("cpl").setLevel(logging.WARNING)

    from . import _cluster, synthetic

    ifus = parse_ifus(args.ifus)
    work = pathlib.Path(args.workdir).absolute()
    raw = work / "raw"
    stamp = raw / ".cpldask-demo.json"
    want = {"ifus": list(ifus), "seed": args.seed, "synthetic": synthetic.VERSION}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        synthetic.make_exposure(raw, ifus=ifus, seed=args.seed, lingain=False)
        stamp.write_text(json.dumps(want))
    out: dict[str, Any] = {"ifus": list(ifus), "cores": len(os.sched_getaffinity(0))}
    for variant in args.order.split(","):
        out[f"loadavg_before_{variant}"] = round(os.getloadavg()[0], 2)
        if variant == "cpldask":
            t0 = time.monotonic()
            _cluster.get_client()  # start the embedded cluster outside the timed part
            out["cluster_startup"] = round(time.monotonic() - t0, 1)
            t0 = time.monotonic()
            red = reduce(raw, ifus=ifus, output_dir=work / "cpldask", cache=False,
                         progress=lambda s, r: log.info("done %s (%s)", s.label, r.status))
            out["cpldask_wall"] = round(time.monotonic() - t0, 1)
            out["steps"] = len(red.steps)
            print(red.table())
            out["cpldask_steps"] = {r["step"]: [round(r["start"], 1), round(r["wall"], 1)]
                                    for r in red.rows()}
        elif variant == "python-cpl":
            plan = reduce(raw, ifus=ifus, output_dir=work / "cpldask", dry_run=True)
            seq = run_sequential(plan, work / "python-cpl")
            out["sequential_wall"] = round(seq.pop("total"), 1)
            out["sequential_steps"] = {k: round(v, 1) for k, v in seq.items()}
        else:
            raise SystemExit(f"unknown variant {variant!r}: cpldask, python-cpl")
    if "cpldask_wall" in out and "sequential_wall" in out:
        out["ratio"] = round(out["sequential_wall"] / out["cpldask_wall"], 2)
    print(json.dumps(out, indent=1))
    (work / "bench.json").write_text(json.dumps(out, indent=1))
    return 0


class _CallableModule(types.ModuleType):
    """``cpldask.reduce(...)`` calls :func:`reduce`, while ``cpldask.reduce.demo`` and
    ``from cpldask.reduce import classify`` keep working."""

    def __call__(self, *args, **kwargs):
        return reduce(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    # run the copy imported as cpldask.reduce, so that the workflow function named by
    # the rules and this entry point share one set of classes
    from cpldask.reduce import _main as _entry

    sys.exit(_entry())
