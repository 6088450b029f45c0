#!/usr/bin/env bash
# Install the Label Studio server into its own venv (its pins clash with the workbench's venv).
#
#   scripts/install_ls.sh            # -> .venv-ls in the repository root
#   scripts/install_ls.sh /opt/ls    # -> another folder
#
# Skips the work when the stamp .installed-<version> exists; the stamp is written only after pip
# succeeded, so an interrupted install is redone. A lock serializes concurrent callers (parallel
# test sessions). Needs network access to PyPI the first time (~1 GB, about a minute).
set -euo pipefail

LS_VERSION="1.23.2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-ls}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.installed-$LS_VERSION"

if [ -f "$STAMP" ]; then
    exit 0
fi
mkdir -p "$VENV"
exec 9>"$VENV/.install.lock"
flock 9
if [ -f "$STAMP" ]; then  # another caller finished while we waited for the lock
    exit 0
fi
echo "installing label-studio==$LS_VERSION into $VENV (once; about a minute)" >&2
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade "pip>=24"
"$VENV/bin/python" -m pip install -q -c "$ROOT/scripts/constraints-ls.txt" "label-studio==$LS_VERSION"
rm -f "$VENV"/.installed-*
touch "$STAMP"
echo "label-studio $LS_VERSION installed: $VENV/bin/label-studio" >&2
