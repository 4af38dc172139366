"""The workflow layer: a data set reduced as one graph of recipe calls.

* :mod:`~cpldask.workflow.classify` — files tagged by their headers, science
  exposures grouped, calibrations associated with each exposure (with the report of
  what was left out and why), by an instrument's rules;
* :mod:`~cpldask.workflow.plan` — :class:`Plan` (the calls an instrument's workflow
  function makes), :class:`Reduction` (submitted as background recipe calls),
  :func:`reduce`;
* :mod:`~cpldask.workflow.draw` — the graph as a picture.

No instrument is named here: each is a plug-in under :mod:`cpldask.instruments`.

>>> from cpldask.workflow import reduce
>>> red = reduce("raw/", dry_run=True)      # doctest: +SKIP
>>> print(red.describe())                   # doctest: +SKIP
"""

from .classify import (Association, Choice, Classification, Frame, Rejected, Rules,
                       Unclassified, associate, associate_groups, classify,
                       detect_instrument, group_science, list_files, load_rules)
from .plan import (Plan, Reduction, ReductionError, Step, build_graph, parse_units,
                   reduce)

__all__ = ["reduce", "build_graph", "classify", "associate", "associate_groups",
           "group_science", "detect_instrument", "list_files", "load_rules", "parse_units",
           "Plan", "Reduction", "ReductionError", "Step", "Classification", "Association",
           "Choice", "Rejected", "Frame", "Unclassified", "Rules"]
