#!/bin/sh
# What the benchmarks need beyond the library: the locked npm packages (when node_modules is
# missing) and PyTorch for the peer of bench/train-step.ts (Debian's python3-torch, PyTorch 1.13,
# when no python3 imports torch). Never run by `npm test`. Without PyTorch the benchmark still
# runs and skips its torch column, so a failed install only warns.
set -eu
cd "$(dirname "$0")/.."

if [ ! -d node_modules ]; then
  npm ci
fi

# The interpreters bench/train-step.ts tries, in its order.
has_torch() {
  for p in "${TESSERA_PYTHON:-}" python3 /usr/bin/python3; do
    if [ -n "$p" ] && "$p" -c 'import torch' >/dev/null 2>&1; then
      return 0
    fi
  done
  return 1
}

if has_torch; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "bench/setup: no python3 imports torch and this is not a Debian-like system; install PyTorch (pip install torch) or set TESSERA_PYTHON" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "bench/setup: no python3 imports torch; install it with: sudo apt-get install -y python3-torch" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update && apt-get install -y python3-torch; }; then
  echo "bench/setup: installing python3-torch failed; the benchmark will skip its torch column" >&2
  exit 0
fi
has_torch || echo "bench/setup: python3-torch is installed but no python3 on the PATH imports torch (Debian's is /usr/bin/python3)" >&2
