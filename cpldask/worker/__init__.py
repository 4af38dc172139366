"""The worker side of cpldask: what runs on a Dask worker for each recipe call.

* :mod:`~cpldask.worker.task` — :func:`~cpldask.worker.task.run_recipe`, the function
  every cpldask task executes: resolve and hash the inputs, look up the product cache,
  run the recipe, install the products, return a :class:`~cpldask.RunRecord`;
* :mod:`~cpldask.worker.forkserver` — the fork servers that start recipe processes;
* :mod:`~cpldask.worker.install` — call directories and products into ``output_dir``;
* :mod:`~cpldask.worker.runner` — the recipe process itself (python-cpl's engine),
  a script that imports nothing from cpldask.

This package imports nothing from the client side (recipe, result, the cluster, the
workflows, the CLI): besides its own modules only :mod:`cpldask._spec`,
:mod:`cpldask.errors`, :mod:`cpldask._hashing`, :mod:`cpldask._cache`,
:mod:`cpldask._fitsheader`, :mod:`cpldask._logs` and :mod:`cpldask._compat`, which the
client uses too. ``tests/test_layout.py`` checks it.
"""
