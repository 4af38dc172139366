"""The MUSE reduction cascade, as recipe calls on a :class:`cpldask.workflow.Plan`.

Per IFU muse_bias -> muse_dark -> muse_flat -> muse_wavecal -> muse_lsf, muse_illum
and muse_twilight over all IFUs, per IFU muse_scibasic, then muse_scipost over all
pixel tables, and with enough IFUs and a STD frame the flux branch (muse_standard ->
muse_scipost with STD_RESPONSE): the Reflex/EDPS chain of the MUSE pipeline user
manual (its "data reduction cascade" chapter), with the tags of each recipe's
``esorex --man-page``. Named by ``workflow.function`` in this package's rules.yaml.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the plan is passed in: no import of the workflow layer
    from ...workflow import Association, Plan

__all__ = ["workflow"]


def workflow(plan: Plan, assoc: Association, *, flux: bool | None = None) -> None:
    """The MUSE reduction cascade for the IFUs of ``assoc``, as recipe calls on ``plan``.

    The calls are made stage by stage (all IFUs' biases, then all darks, ...), which is
    also the order Dask prefers among calls that are ready, so the science path to the
    cube goes first and muse_lsf (needed by the flux branch only) fills idle slots.
    """
    ifus = assoc.units  # MUSE's units are its IFUs
    cfg = plan.settings
    static = {t: assoc.paths(t) for t in ("LINE_CATALOG", "GEOMETRY_TABLE", "SKY_LINES",
                                          "EXTINCT_TABLE", "STD_FLUX_TABLE")}
    bias, dark, flat, wavecal, lsf, sci, std = ({} for _ in range(7))

    for k in ifus:
        bias[k] = plan.call("muse_bias", {"BIAS": assoc.paths("BIAS", k)}, unit=k,
                            param={"nifu": k})
    if "DARK" in assoc:
        for k in ifus:
            dark[k] = plan.call("muse_dark", {"DARK": assoc.paths("DARK", k)}, unit=k,
                                calib={"MASTER_BIAS": bias[k]}, param={"nifu": k})
    for k in ifus:
        flat[k] = plan.call("muse_flat", {"FLAT": assoc.paths("FLAT", k)}, unit=k,
                            calib={"MASTER_BIAS": bias[k], "MASTER_DARK": dark.get(k)},
                            param={"nifu": k})
    for k in ifus:
        wavecal[k] = plan.call("muse_wavecal", {"ARC": assoc.paths("ARC", k)}, unit=k,
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
                               unit=k, calib=basic(k), param={"nifu": k})
        plan.call("muse_scipost", {f"PIXTABLE_{tag}": [sci[k] for k in ifus]})

    # muse_lsf is off the path to the cube (only the flux branch needs it). Each call
    # gets the WAVECAL_TABLE of every IFU (it takes its own, as muse_twilight does), so
    # it becomes ready together with muse_twilight, which has the higher priority and
    # starts first. Given only its own table, an lsf call became ready as soon as its
    # wavecal was done, and Dask's greedy placement started both lsf calls of a 2-core
    # machine ahead of twilight, which then ran alone with a core idle.
    for k in ifus:
        lsf[k] = plan.call("muse_lsf", {"ARC": assoc.paths("ARC", k)}, unit=k,
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
                               unit=k, calib=basic(k), param={"nifu": k},
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
