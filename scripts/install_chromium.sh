#!/usr/bin/env bash
# Debian's `chromium` for the run report's browser test (tests/browser): installed with
# apt-get when /usr/bin/chromium (or $CHROMIUM) is missing. Idempotent (a no-op when it is
# there), quiet (apt's output is shown only when the install fails), and safe to run from
# several processes at once (one installs, the others wait for it). Needs root or
# password-less sudo. Exit status 0 once Chromium is there, 1 when it cannot be installed.
set -euo pipefail
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: no apt-get on this machine; install Chromium yourself and set" \
         "CHROMIUM=/path/to/chromium" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_chromium: installing the chromium package needs root (or sudo without" \
             "a password); run: sudo apt-get install -y chromium" >&2
        exit 1
    fi
fi

exec 9>"${TMPDIR:-/tmp}/shoal-install-chromium.lock"
flock 9
[ -x "$CHROMIUM" ] && exit 0  # another process installed it while we waited

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
install() { "${SUDO[@]}" apt-get install -y -q chromium >>"$log" 2>&1; }
if ! install; then  # a stale package list: refresh it once and try again
    if ! { "${SUDO[@]}" apt-get update -q >>"$log" 2>&1 && install; }; then
        echo "install_chromium: apt-get install chromium failed:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
fi
if [ ! -x "$CHROMIUM" ]; then
    echo "install_chromium: the chromium package installed, but $CHROMIUM is not there;" \
         "set CHROMIUM=/path/to/chromium" >&2
    exit 1
fi
