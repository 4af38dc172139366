#!/usr/bin/env bash
# Run the test suite. Under CI=true nothing may skip: a skip means a component the
# project's own scripts should have installed is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
# the project's virtualenv first: subprocesses (the cpldask command, notebook
# kernels) must find the same Python as the tests
export PATH="$PWD/.venv/bin:$PATH"
extra=()
if [ "${CI:-}" = "true" ]; then
  extra+=(--cpldask-no-skip)
fi
.venv/bin/python -m pytest "${extra[@]}" "$@"
