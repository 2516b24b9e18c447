#!/bin/sh
# Everything a fresh machine needs before the demo or the tests: the Vulkan driver Dawn runs on
# (Mesa's lavapipe where there is no GPU) and the locked npm packages. Idempotent and quick when
# everything is there. With --allow-no-webgpu a missing driver is a warning (the demo then runs on
# the CPU backend); without it, a failure (the tests must exercise WebGPU).
set -eu
cd "$(dirname "$0")/.."
if ! sh scripts/setup-webgpu.sh; then
  if [ "${1:-}" = "--allow-no-webgpu" ]; then
    echo "setup: no WebGPU driver could be installed; continuing with the CPU backend" >&2
  else
    exit 1
  fi
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci
fi
