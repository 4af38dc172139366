"""The workflow layer: a data set reduced as one graph of recipe calls.

* :mod:`~cpldask.workflow.classify` — files tagged by their headers, calibrations
  associated with the exposures, by an instrument's rules;
* :mod:`~cpldask.workflow.plan` — :class:`Plan` (the calls an instrument's workflow
  function makes), :class:`Reduction` (submitted as background recipe calls),
  :func:`reduce`;
* :mod:`~cpldask.workflow.draw` — the graph as a picture.

No instrument is named here: each is a plug-in under :mod:`cpldask.instruments`.

>>> from cpldask.workflow import reduce
>>> red = reduce("raw/", dry_run=True)      # doctest: +SKIP
>>> print(red.describe())                   # doctest: +SKIP
"""

from .classify import (Association, Classification, Frame, Rules, Unclassified,
                       associate, classify, detect_instrument, list_files, load_rules)
from .plan import (Plan, Reduction, ReductionError, Step, build_graph, parse_units,
                   reduce)

__all__ = ["reduce", "build_graph", "classify", "associate", "detect_instrument",
           "list_files", "load_rules", "parse_units", "Plan", "Reduction",
           "ReductionError", "Step", "Classification", "Association", "Frame",
           "Unclassified", "Rules"]
