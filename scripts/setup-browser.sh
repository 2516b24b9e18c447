#!/bin/sh
# Installs Debian's chromium, which tests/browser/page.test.ts drives headless (through
# puppeteer-core) to run the browser example. Idempotent: does nothing when chromium is there.
set -eu

if [ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  echo "setup-browser: chromium is already installed; nothing to do"
  exit 0
fi

if [ ! -r /etc/os-release ] || ! grep -q '^ID=debian' /etc/os-release; then
  echo "setup-browser: this script installs Debian's chromium package and supports Debian only." >&2
  echo "  Elsewhere, install Chromium or Chrome and set CHROMIUM_PATH to its executable for the tests." >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-browser: needs root to install packages; run: sudo sh scripts/setup-browser.sh" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium
echo "setup-browser: done; $(chromium --version 2>/dev/null || echo chromium)"
