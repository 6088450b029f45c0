#!/usr/bin/env bash
# Chromium for the headless browser test (tests/ergo_data/labelstudio/test_ls_browser.py), from the system's
# package manager: `make test` runs this. Idempotent and quiet: nothing to do once /usr/bin/chromium exists.
# Where it cannot install (no apt-get, not root and no password-less sudo, no package) it says so and exits 0:
# the browser test then skips, and .ci/run fails on that skip (it is not on .ci/allowed-skips).
set -euo pipefail
bin="${CHROMIUM:-/usr/bin/chromium}"  # where the browser test looks for it
[ -x "$bin" ] && exit 0
note() { echo "install_chromium: $*; the browser test will skip (and .ci/run fail)" >&2; exit 0; }
command -v apt-get >/dev/null || note "no apt-get here: install Chromium as /usr/bin/chromium yourself"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo -n true 2>/dev/null || note "not root and no password-less sudo: run 'sudo apt-get install chromium'"
  sudo=(sudo -n)
fi
has_candidate() { apt-cache policy chromium 2>/dev/null | grep -E 'Candidate: [0-9]' >/dev/null; }  # no -q: SIGPIPE
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
has_candidate || "${sudo[@]}" apt-get update -qq >"$log" 2>&1 || note "apt-get update failed: $(tail -3 "$log")"
has_candidate || note "no chromium package in the configured apt sources"
echo "install_chromium: installing Debian's chromium (once; a minute or two) ..." >&2
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq chromium >"$log" 2>&1 \
  || note "apt-get install chromium failed: $(tail -3 "$log")"
[ -x "$bin" ] || note "chromium installed but $bin is missing"
