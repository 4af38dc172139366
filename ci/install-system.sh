#!/usr/bin/env bash
# System packages cpldask needs, from Debian: CPL, esorex, the MUSE and HAWK-I recipes; gdb for
# python-cpl's crash backtraces; SLURM + munge for the HPC tests; Chromium for the
# dashboard check. Idempotent: skips apt when everything is there already.
set -euo pipefail
# cpl-plugin-hawki: the second instrument (cpldask/instruments/hawki). cpl-plugin-uves and
# cpl-plugin-giraf: a normal Debian astronomy machine has several pipelines beside MUSE,
# whose libraries print at load time (tests/test_python_cpl.py). util-linux: unshare, for
# workers in mount namespaces of their own (tests/test_nofs.py; essential in Debian)
packages=(libcpl-dev esorex cpl-plugin-muse cpl-plugin-hawki cpl-plugin-uves cpl-plugin-giraf
          gdb gcc pkg-config slurm-wlm munge chromium graphviz util-linux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system packages: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
