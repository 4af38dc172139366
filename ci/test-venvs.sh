#!/usr/bin/env bash
# Tests in virtualenvs of their own, next to the project's .venv (ci/test.sh runs this
# before the whole suite):
#
#   .venv-fast    cpldask's dependencies and test extras at their newest, WITHOUT
#                 python-cpl (cpldask itself installed with --no-deps). Runs the fast
#                 tier, -m "not requires_cpl and not requires_python_cpl": proves it
#                 needs neither the CPL library nor python-cpl.
#   .venv-oldest  every ">=" floor of pyproject.toml pinned exactly (dask, distributed,
#                 dask-jobqueue, astropy, numpy, matplotlib, ...), python-cpl included.
#                 Runs the fast tier and the test-recipe tier (requires_cpl, but not
#                 muse/hawki/slurm/slow, nor the dashboard's browser test): proves the
#                 floors, private APIs of dask and distributed included, in minutes.
#
#   bash ci/test-venvs.sh [fast] [oldest] [-- PYTEST ARGS]   (default: both)
#
# The requirement lists are read from pyproject.toml, so they never drift from it.
# Re-running only reinstalls a virtualenv when pyproject.toml changed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

envs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#envs[@]} -gt 0 ] || envs=(fast oldest)

# requirements KIND: one requirement a line, from pyproject.toml's dependencies and
# its "test" extra; KIND=fast drops python-cpl, KIND=oldest pins each ">=" floor
requirements() {
  "$PY" - "$1" <<'EOF'
import re, sys, tomllib
kind = sys.argv[1]
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for req in project["dependencies"] + project["optional-dependencies"]["test"]:
    if kind == "fast" and re.match(r"python-cpl\b", req):
        continue
    if kind == "oldest":
        req = req.replace(">=", "==")  # "dask[distributed]>=2024.12" -> "==2024.12"
    print(req)
EOF
}

setup() {  # setup KIND: create or refresh .venv-KIND
  local venv=".venv-$1" stamp=".venv-$1/.cpldask-installed" reqs
  if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
    return 0
  fi
  rm -rf "$venv"
  "$PY" -m venv "$venv" || return 1
  reqs=$(requirements "$1") || return 1
  echo "[$1] installing into $venv:" $reqs
  # one resolver run for all, so that the pins of "oldest" are checked together
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q $reqs || return 1
  "$venv/bin/pip" install -q --no-deps -e . || return 1
  touch "$stamp"
}

run() {  # run KIND PYTEST-ARGS...
  local kind=$1 marks
  shift
  case $kind in
    fast) marks="not requires_cpl and not requires_python_cpl" ;;
    # (not the dashboard's browser test: the suite runs it at the newest versions; here
    # every cluster still starts bokeh's dashboard server)
    oldest) marks="not muse and not hawki and not slurm and not slow"
            set -- --ignore=tests/test_dashboard.py "$@" ;;
    *) echo "ci/test-venvs.sh: unknown environment '$kind' (fast, oldest)" >&2; return 2 ;;
  esac
  setup "$kind" || { echo "[$kind] could not set up .venv-$kind" >&2; return 1; }
  ".venv-$kind/bin/python" -c "
import importlib.metadata as m, importlib.util as u
print('[$kind]', ', '.join(f'{p} {m.version(p)}' for p in
      ('dask', 'distributed', 'dask-jobqueue', 'astropy', 'numpy')),
      '| python-cpl:', m.version('python-cpl') if u.find_spec('cpl') else 'not installed')"
  local extra=()
  [ "${CI:-}" = "true" ] && extra+=(--cpldask-no-skip)
  PATH="$PWD/.venv-$kind/bin:$PATH" ".venv-$kind/bin/python" -m pytest -m "$marks" \
    "${extra[@]}" "$@"
}

status=0
for kind in "${envs[@]}"; do
  run "$kind" "$@" || status=1
done
exit $status
