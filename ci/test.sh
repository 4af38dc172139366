#!/usr/bin/env bash
# Run the test suite. Under CI=true nothing may skip: a skip means a component the
# project's own scripts should have installed is missing.
#
#   bash ci/test.sh              everything: the tiers in their own virtualenvs
#                                (ci/test-venvs.sh: no python-cpl; oldest versions),
#                                then the whole suite in .venv
#   bash ci/test.sh ARGS...      pytest ARGS in .venv only (e.g. -m "not requires_cpl")
set -uo pipefail
cd "$(dirname "$0")/.."
# the project's virtualenv first: subprocesses (the cpldask command, notebook
# kernels) must find the same Python as the tests
export PATH="$PWD/.venv/bin:$PATH"
extra=()
if [ "${CI:-}" = "true" ]; then
  # the slowest tests in the log: the whole run should stay under ~40 min
  extra+=(--cpldask-no-skip --durations=25)
fi
venvs=0
if [ $# -eq 0 ]; then
  bash ci/test-venvs.sh || venvs=1
fi
.venv/bin/python -m pytest "${extra[@]}" "$@"
suite=$?
if [ $suite -eq 0 ] && [ $venvs -ne 0 ]; then
  echo "ci/test.sh: the suite passed, but ci/test-venvs.sh failed (see above)" >&2
  exit 1
fi
exit $suite
