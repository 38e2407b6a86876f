#!/usr/bin/env bash
# Set up StreamVAD on a fresh machine: a virtualenv with the CPU torch wheel and the package, plus the
# Debian packages the integration tests use: GStreamer's RTSP server (run by Debian's python3 through
# PyGObject) serves the loopback test camera over RTSP/TCP, mosquitto is the MQTT broker the MQTT tests start,
# and Chromium with its driver is the browser the console test drives (Selenium, at their Debian paths).
#   tools/setup.sh [VENV]    the virtualenv (all the demo and the product need)
#   tools/setup.sh --system  the Debian packages for the integration tests (root, apt)
set -euo pipefail

SYSTEM_PACKAGES=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good mosquitto
                 chromium chromium-driver)

install_system() {
  local missing=() pkg
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup: missing ${missing[*]} and cannot apt-get them (not root or no apt); RTSP, MQTT and browser tests will be skipped" >&2
    return 0
  fi
  echo "setup: installing ${missing[*]} from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

if [ "${1:-}" = "--system" ]; then
  install_system
  exit 0
fi

VENV=${1:-.venv}
# A fresh virtualenv is about 2.5 GB (torch, transformers, OpenCV); pip's own "No space left on device" names neither.
NEED_GB=4
FREE_KB=$(df -Pk "$(dirname "$VENV")" | awk 'NR == 2 {print $4}')
if [ ! -x "$VENV/bin/python" ] && [ "$FREE_KB" -lt $((NEED_GB * 1024 * 1024)) ]; then
  echo "setup: $((FREE_KB / 1024)) MB free under $(dirname "$VENV"); a fresh virtualenv $VENV needs about $NEED_GB GB" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU wheel first, pinned: an unpinned torch would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
