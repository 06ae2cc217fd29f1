#!/usr/bin/env bash
# Installs what the test suite needs beyond the venv: Debian's chromium for the browser tests.
# Runs as root in CI; elsewhere it says what to install and the browser tests are skipped.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
else
    echo "chromium is not installed: browser tests will be skipped (apt-get install chromium)" >&2
fi
