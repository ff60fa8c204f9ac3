#!/usr/bin/env bash
# Installs headless Chromium and its WebDriver (Debian's `chromium` and `chromium-driver`
# packages) for the dashboard's browser test (tests/tests/dashboard.rs). Idempotent: returns at
# once when both are on PATH. Needs root (apt-get) otherwise. Nothing is downloaded but Debian
# packages: the test drives this Chromium, never a browser build of its own.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "install-browser: $(chromium --version 2>/dev/null | head -1), $(chromedriver --version | head -1)"
  exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
  echo "install-browser: run as root (or: sudo apt-get install chromium chromium-driver)" >&2
  exit 1
fi

echo "install-browser: installing Debian packages chromium and chromium-driver"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation fonts-dejavu-core >/dev/null
chromium --version 2>/dev/null | head -1
chromedriver --version | head -1
