"""The MUSE reduction cascade, as recipe calls on a :class:`cpldask.workflow.Plan`.

Per IFU muse_bias -> muse_dark -> muse_flat -> muse_wavecal -> muse_lsf, muse_illum
and muse_twilight over all IFUs, per exposure and IFU muse_scibasic, then
muse_scipost with the sky subtraction the rules choose (``sky``): of a single
exposure one cube; of several, one muse_scipost per exposure, muse_exp_align over
their images and muse_exp_combine into one cube of the group. With enough IFUs
and a STD frame the flux branch (muse_standard -> muse_scipost with STD_RESPONSE):
the Reflex/EDPS chain of the MUSE pipeline user manual (its "data reduction cascade"
chapter), with the tags of each recipe's ``esorex --man-page``. With a LINGAIN series,
muse_lingain per IFU beside it. Named by ``workflow.function`` in this package's
rules.yaml.

Each exposure gets the calibration chain of its own association, and so do the
standard star and the twilight flats (the calibrations associated to their own
frames, the rules' ``own_calibrations``); the plan makes an identical call once, so
exposures (and groups) that share calibrations share the steps. An archive master
calibration the association chose (MASTER_BIAS, MASTER_FLAT with TRACE_TABLE,
WAVECAL_TABLE, MASTER_DARK, TWILIGHT_CUBE) is passed to the later steps in place of
the step that would make it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the plan is passed in: no import of the workflow layer
    from ...workflow import Association, Plan

__all__ = ["workflow"]

_STATIC = ("LINE_CATALOG", "GEOMETRY_TABLE", "SKY_LINES", "EXTINCT_TABLE", "STD_FLUX_TABLE",
           "ASTROMETRY_WCS")


@dataclasses.dataclass
class _Chain:
    """The calibrations of one exposure, by IFU: each a step or archive file paths."""

    bias: dict[int, Any]
    dark: dict[int, Any]
    flat: dict[int, Any]
    trace: dict[int, Any]
    wavecal: dict[int, Any]
    illum: Any
    twilight: Any

    def basic(self, k: int, static: dict) -> dict:
        """The calibrations of muse_scibasic for IFU ``k``."""
        return {"MASTER_BIAS": self.bias[k], "MASTER_DARK": self.dark.get(k),
                "MASTER_FLAT": self.flat[k], "TRACE_TABLE": self.trace[k],
                "WAVECAL_TABLE": self.wavecal[k], "GEOMETRY_TABLE": static["GEOMETRY_TABLE"],
                "TWILIGHT_CUBE": self.twilight}


def workflow(plan: Plan, assoc: Association, *, flux: bool | None = None) -> None:
    """The MUSE reduction cascade for one group of exposures (``assoc``), as recipe
    calls on ``plan``.

    The calls are made stage by stage (all IFUs' biases, then all darks, ...), which is
    also the order Dask prefers among calls that are ready, so the science path to the
    cube goes first.
    """
    ifus = assoc.units  # MUSE's units are its IFUs
    cfg = plan.settings
    static = {t: assoc.paths(t) for t in _STATIC}
    chains = [_calibrations(plan, exp, ifus, static) for exp in assoc.exposures]
    # the steps for the group as a whole (muse_lsf, muse_lingain) take the first
    # exposure's calibrations; the flux branch those of its STD frame
    first, group = assoc.exposures[0], chains[0]
    lingain(plan, first, ifus)

    # the pixel tables of each science frame (one per exposure, but for a
    # single-frame group), by IFU
    tag = assoc.science[0].tag if assoc.science else None
    frames: list[dict[int, Any]] = []
    for exp, chain in zip(assoc.exposures, chains):
        for frame in exp.science:
            frames.append({k: plan.call("muse_scibasic", {tag: [frame.path],
                                                          "ILLUM": chain.illum},
                                        unit=k, calib=chain.basic(k, static),
                                        param={"nifu": k})
                           for k in ifus})

    # muse_lsf, for the sky model and the flux branch. Each call gets the
    # WAVECAL_TABLE of every IFU (it takes its own, as muse_twilight does), so it
    # becomes ready together with muse_twilight, which has the higher priority and
    # starts first. Given only its own table, an lsf call became ready as soon as its
    # wavecal was done, and Dask's greedy placement started both lsf calls of a 2-core
    # machine ahead of twilight, which then ran alone with a core idle.
    lsf = {}
    if "ARC" in first:
        for k in ifus:
            lsf[k] = plan.call("muse_lsf", {"ARC": first.paths("ARC", k)}, unit=k,
                               calib={"MASTER_BIAS": group.bias[k], "TRACE_TABLE": group.trace[k],
                                      "WAVECAL_TABLE": [group.wavecal[k]]
                                      + [group.wavecal[j] for j in ifus if j != k],
                                      "LINE_CATALOG": static["LINE_CATALOG"]},
                               param={"nifu": k})
    sky = _sky(plan, assoc, static, lsf, ifus)

    # the standard star: the one nearest to the first exposure, of its mode, reduced
    # with the calibrations associated to the STD frame itself (its own chain; the
    # steps it shares with the science's are one call in the plan)
    standard_of = first.own.get("STD")
    if flux is None:
        why_not = _no_flux(first, standard_of, ifus, lsf, int(cfg.get("flux_min_ifus", 3)))
        flux = not why_not
        if why_not and "STD" in first:
            _note(first, "flux calibration left out: " + why_not)
    elif flux:
        why_not = _no_flux(first, standard_of, ifus, lsf, 0)
        if why_not or not assoc.science:
            raise ValueError(f"flux=True, but {why_not or 'there is no science frame'}")
    if tag is None:
        return
    # the astrometric solution, where the association has one, for every cube (one
    # exposure's cube without it keeps the field's linear WCS: astrometry=false)
    astrometry = {"ASTROMETRY_WCS": static["ASTROMETRY_WCS"]} if static["ASTROMETRY_WCS"] \
        else {}
    offsets = _cube(plan, tag, frames, ifus, sky, astrometry, "")
    if flux:
        chain = _calibrations(plan, standard_of, ifus, static)
        std = {k: plan.call("muse_scibasic", {"STD": first.paths("STD", k),
                                              "ILLUM": chain.illum},
                            unit=k, calib=chain.basic(k, static), param={"nifu": k},
                            name="muse_scibasic_std")
               for k in ifus}
        standard = plan.call("muse_standard", {"PIXTABLE_STD": [std[k] for k in ifus]},
                             calib={"EXTINCT_TABLE": static["EXTINCT_TABLE"],
                                    "STD_FLUX_TABLE": static["STD_FLUX_TABLE"]})
        _cube(plan, tag, frames, ifus, sky,
              {"EXTINCT_TABLE": static["EXTINCT_TABLE"], "STD_RESPONSE": standard,
               "STD_TELLURIC": standard, **astrometry}, "_flux", offsets=offsets)


def _no_flux(first: Association, standard_of: Association | None, ifus: tuple,
             lsf: dict, min_ifus: int) -> str:
    """Why the flux branch cannot run for the exposure ``first`` ('' when it can):
    a STD frame, the STD's own calibrations, STD_FLUX_TABLE and EXTINCT_TABLE
    (muse_standard requires both [its man page]), muse_lsf, and ``min_ifus`` IFUs."""
    if "STD" not in first:
        return "no STD frame of this exposure's setup"
    missing = [t for t in ("STD_FLUX_TABLE", "EXTINCT_TABLE") if t not in first]
    if missing:
        return f"no {' or '.join(missing)} in the data (muse_standard needs both)"
    if standard_of is None:
        why = next((n for n in first.notes if n.startswith("STD: its calibrations")), "")
        return f"the STD frame has no calibrations of its own ({why or 'none associated'})"
    if not lsf:
        return "no ARC frames for muse_lsf"
    if len(ifus) < min_ifus:
        return f"{len(ifus)} IFU(s), fewer than the rules' flux_min_ifus ({min_ifus})"
    return ""


def _note(a: Association, note: str) -> None:
    if note not in a.notes:
        a.notes.append(note)


def _sky(plan: Plan, assoc: Association, static: dict, lsf: dict, ifus: tuple) -> dict:
    """The sky subtraction of muse_scipost: the first rule of the rules' ``sky`` list
    whose inputs the reduction has (a static table, or LSF_PROFILE from muse_lsf), as
    ``{"param": {...}, "calib": {...}}``; the choice and its reason become a note of
    the first exposure's association (the report shows it). A ``skymethod`` set in the parameters (the rules' or
    ``reduce(params=...)``) is kept as it is."""
    have = {t: v for t, v in static.items() if v}
    if lsf:
        have["LSF_PROFILE"] = [lsf[k] for k in ifus]
    chosen = None
    for rule in plan.settings.get("sky") or ():
        if all(t in have for t in rule.get("needs", ())):
            chosen = rule
            break
    if chosen is None:
        return {"param": {}, "calib": {}}
    given = (plan.settings.get("parameters", {}).get("muse_scipost") or {}).get("skymethod")
    if given is not None:
        needs = {t for r in plan.settings["sky"] for t in r.get("needs", ()) if t in have}
        chosen = {"skymethod": given, "needs": sorted(needs)}
        note = f"sky: skymethod={given}, as the parameters say"
    else:
        missing = [t for r in plan.settings["sky"] if r is not chosen
                   for t in r.get("needs", ()) if t not in have]
        note = (f"sky: skymethod={chosen['skymethod']}: {chosen.get('because', '')}"
                + (f" (no {', '.join(sorted(set(missing)))})" if missing else ""))
    _note(assoc.exposures[0], note)
    return {"param": {"skymethod": chosen["skymethod"]},
            "calib": {t: have[t] for t in chosen.get("needs", ())}}


def _cube(plan: Plan, tag: str, frames: list[dict], ifus: tuple, sky: dict,
          calib: dict, suffix: str, *, offsets: Any = None) -> Any:
    """The cube of a group: one muse_scipost of its one exposure; of several, one
    muse_scipost per exposure (each cube's IMAGE_FOV and its fully reduced pixel
    table, PIXTABLE_REDUCED), muse_exp_align over their images (``offsets`` when
    given: the alignment of the uncalibrated cubes, which flux calibration does
    not change) and muse_exp_combine of the pixel tables with its OFFSET_LIST: the
    combination of the MUSE pipeline manual's "exposure combination" [its
    man pages]. Returns the muse_exp_align step (None for one exposure)."""
    calib = {**calib, **sky["calib"]}
    if len(frames) == 1:
        # an ASTROMETRY_WCS is applied with astrometry=true only ("if false, skip any
        # astrometric calibration, even if one was passed" [MAN muse_scipost])
        param = {**sky["param"], **({"astrometry": True} if calib.get("ASTROMETRY_WCS")
                                    else {})}
        plan.call("muse_scipost", {f"PIXTABLE_{tag}": [frames[0][k] for k in ifus]},
                  calib=calib, param=param, name="muse_scipost" + suffix)
        return None
    # exposures are aligned on the sky: muse_exp_align needs each image's celestial
    # WCS, which astrometry=false leaves out. Without an ASTROMETRY_WCS (optional
    # [MAN]) muse_scipost takes its default astrometry of the mode (muse_postproc.c).
    param = {**sky["param"], "astrometry": True,
             "save": plan.settings.get("save_per_exposure", "cube,individual")}
    cubes = [plan.call("muse_scipost", {f"PIXTABLE_{tag}": [f[k] for k in ifus]},
                       calib=calib, param=param, name="muse_scipost" + suffix)
             for f in frames]
    if offsets is None:
        offsets = plan.call("muse_exp_align", {"IMAGE_FOV": cubes})
    plan.call("muse_exp_combine", {"PIXTABLE_REDUCED": cubes},
              calib={"OFFSET_LIST": offsets}, name="muse_exp_combine" + suffix)
    return offsets


def _calibrations(plan: Plan, a: Association, ifus: tuple, static: dict) -> _Chain:
    """The calibration steps of one association (an exposure or a whole group): an
    archive master where the association chose one, else the step that makes it."""
    bias, dark = _bias(plan, a, ifus), {}
    if "MASTER_DARK" in a or "DARK" in a:
        for k in ifus:
            dark[k] = a.paths("MASTER_DARK", k) or plan.call(
                "muse_dark", {"DARK": a.paths("DARK", k)}, unit=k,
                calib={"MASTER_BIAS": bias[k]}, param={"nifu": k})
    flat, trace = _flat(plan, a, ifus, bias, dark)
    wavecal = {}
    for k in ifus:
        wavecal[k] = a.paths("WAVECAL_TABLE", k) or plan.call(
            "muse_wavecal", {"ARC": a.paths("ARC", k)}, unit=k,
            calib={"MASTER_BIAS": bias[k], "TRACE_TABLE": trace[k],
                   "LINE_CATALOG": static["LINE_CATALOG"]},
            param={"nifu": k})

    # the illumination flat and the twilight cube are made once, over all IFUs
    illum = None
    if "ILLUMFLAT" in a:
        illum = plan.call("muse_illum", {"ILLUMFLAT": a.paths("ILLUMFLAT")})
    twilight = a.paths("TWILIGHT_CUBE") or None
    needs = plan.settings.get("twilight_needs_ifu")
    if twilight is None and "SKYFLAT" in a and (needs is None or needs in ifus):
        # calibrated with those associated to the twilight flats themselves (the
        # rules' own_calibrations; else the exposure's): the same flats give the
        # same step whichever exposure or standard star they are chosen for
        sub = a.own.get("SKYFLAT")
        t = _calibrations(plan, sub, ifus, static) if sub is not None else \
            _Chain(bias, dark, flat, trace, wavecal, illum, None)
        twilight = plan.call(
            "muse_twilight", {"SKYFLAT": a.paths("SKYFLAT"), "ILLUM": t.illum},
            calib={"MASTER_BIAS": [t.bias[k] for k in ifus],
                   "MASTER_DARK": [t.dark[k] for k in ifus if k in t.dark],
                   "MASTER_FLAT": [t.flat[k] for k in ifus],
                   "TRACE_TABLE": [t.trace[k] for k in ifus],
                   "WAVECAL_TABLE": [t.wavecal[k] for k in ifus],
                   "GEOMETRY_TABLE": static["GEOMETRY_TABLE"]})
    elif twilight is None and "SKYFLAT" in a:
        note = (f"muse_twilight left out: it needs IFU {needs} among the reduced IFUs "
                f"(pipeline 2.8.7); no TWILIGHT_CUBE correction")
        _note(a, note)
    return _Chain(bias, dark, flat, trace, wavecal, illum, twilight)


def _bias(plan: Plan, a: Association, ifus: tuple) -> dict[int, Any]:
    return {k: a.paths("MASTER_BIAS", k) or plan.call(
        "muse_bias", {"BIAS": a.paths("BIAS", k)}, unit=k, param={"nifu": k})
        for k in ifus}


def _flat(plan: Plan, a: Association, ifus: tuple, bias: dict, dark: dict):
    """(MASTER_FLAT, TRACE_TABLE) by IFU: the archive pair, or one muse_flat step."""
    flat, trace = {}, {}
    for k in ifus:
        if a.paths("MASTER_FLAT", k) and a.paths("TRACE_TABLE", k):
            flat[k], trace[k] = a.paths("MASTER_FLAT", k), a.paths("TRACE_TABLE", k)
        else:
            flat[k] = trace[k] = plan.call(
                "muse_flat", {"FLAT": a.paths("FLAT", k)}, unit=k,
                calib={"MASTER_BIAS": bias[k], "MASTER_DARK": dark.get(k)}, param={"nifu": k})
    return flat, trace


def lingain(plan: Plan, a: Association, ifus: tuple) -> None:
    """muse_lingain per IFU when the association holds a LINGAIN series: lamp-off and
    lamp-on frames with the master bias and trace table nearest to the series (the
    association's ``own`` calibrations of LINGAIN_LAMP_ON) [its man page]. Its
    NONLINEARITY_GAIN is a product of the reduction, not an input of the cascade (the
    recipes take one made earlier, ESO's rules say, calib/gasgano/config/muse.oca)."""
    sub = a.own.get("LINGAIN_LAMP_ON")
    if "LINGAIN_LAMP_ON" not in a or "LINGAIN_LAMP_OFF" not in a or sub is None:
        return
    if not all(sub.paths("MASTER_BIAS", k) or sub.paths("BIAS", k) for k in ifus) or \
            not all((sub.paths("MASTER_FLAT", k) and sub.paths("TRACE_TABLE", k))
                    or sub.paths("FLAT", k) for k in ifus):
        return
    bias = _bias(plan, sub, ifus)
    _, trace = _flat(plan, sub, ifus, bias, {})
    for k in ifus:
        plan.call("muse_lingain", {"LINGAIN_LAMP_ON": a.paths("LINGAIN_LAMP_ON", k),
                                   "LINGAIN_LAMP_OFF": a.paths("LINGAIN_LAMP_OFF", k)},
                  unit=k, calib={"MASTER_BIAS": bias[k], "TRACE_TABLE": trace[k]},
                  param={"nifu": k})
