#!/usr/bin/env bash
# The Python environment: a virtualenv in .venv with cpldask (editable) and its test
# extras. Re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.cpldask-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,bench]'
  touch "$stamp"
fi
.venv/bin/python -c "import cpldask, cpl; print('cpldask', cpldask.__version__, 'python-cpl', cpl.__version__)"
