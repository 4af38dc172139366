#!/usr/bin/env bash
# Run the test suite. Under CI=true nothing may skip: a skip means a component the
# project's own scripts should have installed is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
extra=()
if [ "${CI:-}" = "true" ]; then
  extra+=(--cpldask-no-skip)
fi
.venv/bin/python -m pytest "${extra[@]}" "$@"
