#!/bin/sh
# Everything a fresh machine needs before the demo or the tests: the Vulkan driver Dawn runs on
# (Mesa's lavapipe where there is no GPU), for the tests Debian's chromium (the browser example's
# test drives it), and the locked npm packages. Idempotent and quick when everything is there.
# With --allow-no-webgpu (the demo) a missing driver is a warning (the demo then runs on the CPU
# backend) and no browser is installed; without it, both are needed (the tests exercise them).
set -eu
cd "$(dirname "$0")/.."
if ! sh scripts/setup-webgpu.sh; then
  if [ "${1:-}" = "--allow-no-webgpu" ]; then
    echo "setup: no WebGPU driver could be installed; continuing with the CPU backend" >&2
  else
    exit 1
  fi
fi
if [ "${1:-}" != "--allow-no-webgpu" ]; then
  sh scripts/setup-browser.sh
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci
fi
