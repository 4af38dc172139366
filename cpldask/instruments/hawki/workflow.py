"""The HAWK-I imaging cascade, as recipe calls on a :class:`cpldask.workflow.Plan`.

The Reflex chain of cpl-plugin-hawki 2.4.11 (reflex/hawki.xml, and the tags of each
recipe's ``esorex --man-page``):

* ``hawki_dark_combine`` (DARK) -> MASTER_DARK;
* ``hawki_twilight_flat_combine`` (FLAT_TWILIGHT, MASTER_DARK) -> MASTER_TWILIGHT_FLAT
  and MASTER_CONF;
* ``hawki_detector_noise`` (2 DARK and 2 FLAT_TWILIGHT of NDIT = 1, reflex/hawki.oca)
  -> MASTER_READGAIN, beside the flat;
* ``hawki_science_process`` (OBJECT with the masters, the photometric table and the
  star catalogues) -> BASIC_CALIBRATED_SCI, BASIC_VAR_MAP, JITTERED_IMAGE_SCI;
* ``hawki_science_postprocess`` -> TILED_IMAGE (the rules' ``workflow.final``).

One call per recipe reduces all four detectors (HAWK-I's unit axis is not split:
``units.split: false`` in rules.yaml).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the plan is passed in: no import of the workflow layer
    from ...workflow import Association, Plan

__all__ = ["workflow"]

#: hawki_science_process's static inputs (its man page); the local catalogue serves
#: for astrometry and photometry alike (one file, one tag when classified)
_CATALOGUES = {"MASTER_LOCAL_CATALOGUE_ASTROM": "MASTER_LOCAL_CATALOGUE_ASTROM",
               "MASTER_LOCAL_CATALOGUE_PHOTOM": "MASTER_LOCAL_CATALOGUE_ASTROM"}
_STATIC = ("PHOTCAL_TAB", "SCHLEGEL_MAP_NORTH", "SCHLEGEL_MAP_SOUTH")


def workflow(plan: Plan, assoc: Association, *, flux: bool | None = None) -> None:
    """The HAWK-I cascade for the science exposures of ``assoc``.

    ``flux`` has no meaning here (the zero point comes from the photometric
    catalogue in hawki_science_process); True is refused.
    """
    if flux:
        raise ValueError("flux=True: HAWK-I's workflow has no flux branch (the zero "
                         "point is fitted by hawki_science_process)")
    darks, flats = assoc.paths("DARK"), assoc.paths("FLAT_TWILIGHT")
    static = {tag: assoc.paths(tag) for tag in _STATIC}
    static.update({tag: assoc.paths(src) for tag, src in _CATALOGUES.items()})
    dark = plan.call("hawki_dark_combine", {"DARK": darks})
    flat = plan.call("hawki_twilight_flat_combine", {"FLAT_TWILIGHT": flats},
                     calib={"MASTER_DARK": dark})
    # two darks and two flats of NDIT = 1 (the recipe's man page; reflex/hawki.oca
    # asks exactly 2 of each): the first two of those the masters are made of
    noise = plan.call("hawki_detector_noise",
                      {"DARK": darks[:2], "FLAT_TWILIGHT": flats[:2]})
    if not assoc.science:
        return
    science = plan.call("hawki_science_process",
                        {"OBJECT": [f.path for f in assoc.science]},
                        calib={"MASTER_DARK": dark, "MASTER_TWILIGHT_FLAT": flat,
                               "MASTER_CONF": flat, "MASTER_READGAIN": noise, **static})
    plan.call("hawki_science_postprocess",
              {"BASIC_CALIBRATED_SCI": science, "BASIC_VAR_MAP": science},
              calib={"MASTER_CONF": flat, **static})
