#!/usr/bin/env bash
# Chromium and its driver for the web page's test (tests/serve/test_serve_page.py), from
# Debian's packages; nothing when Chromium is already installed. Without them that test is
# skipped, not failed.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_browser.sh: no apt-get here; the browser test will be skipped" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
