#!/usr/bin/env bash
# Set up StreamVAD on a fresh machine: a virtualenv with the CPU torch wheel and the package, plus the
# Debian tools the integration tests use (ffmpeg publishes the test RTSP stream, rtsp-server-perl serves it).
#   tools/setup.sh [VENV]        virtualenv + system packages
#   tools/setup.sh --system-only system packages only
set -euo pipefail

SYSTEM_PACKAGES=(ffmpeg rtsp-server-perl)

install_system() {
  local missing=()
  command -v ffmpeg >/dev/null || missing+=(ffmpeg)
  dpkg -s rtsp-server-perl >/dev/null 2>&1 || missing+=(rtsp-server-perl)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup: missing ${missing[*]} and cannot apt-get them (not root or no apt); RTSP tests will be skipped" >&2
    return 0
  fi
  echo "setup: installing ${SYSTEM_PACKAGES[*]} from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${SYSTEM_PACKAGES[@]}" >/dev/null
}

if [ "${1:-}" = "--system-only" ]; then
  install_system
  exit 0
fi

VENV=${1:-.venv}
install_system
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU wheel first, pinned: an unpinned torch would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
