#!/usr/bin/env bash
# The test command: everything the test suite needs, then the suite. Works on a fresh Debian
# machine as root: starts local RabbitMQ and Redis if they are installed but stopped
# (scripts/services.sh), installs Debian's headless Chromium and chromedriver for the
# dashboard's browser test if they are missing (scripts/install-browser.sh), then runs
# `cargo test --workspace --locked` with any extra arguments passed on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/services.sh
bash scripts/install-browser.sh
exec cargo test --workspace --locked "$@"
