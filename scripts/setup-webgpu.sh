#!/bin/sh
# Installs a Vulkan driver that Dawn (the `webgpu` npm package) can use on a machine without a GPU:
# Mesa's lavapipe from Debian bookworm-backports (bookworm's own Mesa 22 is too old for Dawn).
# Idempotent: does nothing when a Vulkan ICD is already installed.
set -eu

has_icd() {
  ls /usr/lib/*/libvulkan.so.1 /usr/lib/libvulkan.so.1 2>/dev/null | grep -q . || return 1
  ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json 2>/dev/null | grep -q . || return 1
  # Debian bookworm's own Mesa 22 has an ICD that Dawn rejects; it does not count.
  if command -v dpkg-query >/dev/null 2>&1; then
    v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
    case "$v" in 2[0-3].*) return 1 ;; esac
  fi
  return 0
}

if has_icd; then
  echo "setup-webgpu: a Vulkan driver is already installed; nothing to do"
  exit 0
fi

if [ ! -r /etc/os-release ] || ! grep -q '^ID=debian' /etc/os-release || ! grep -q 'VERSION_CODENAME=bookworm' /etc/os-release; then
  echo "setup-webgpu: this script installs Mesa's lavapipe from Debian bookworm-backports and supports Debian 12 only." >&2
  echo "  Elsewhere, install a Vulkan driver (Mesa >= 24: mesa-vulkan-drivers and libvulkan1, or your GPU vendor's driver)." >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-webgpu: needs root to install packages; run: sudo sh scripts/setup-webgpu.sh" >&2
  exit 1
fi

SOURCES=/etc/apt/sources.list.d/backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > "$SOURCES" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y -t bookworm-backports mesa-vulkan-drivers libvulkan1

if has_icd; then
  echo "setup-webgpu: done; Vulkan ICDs: $(ls /usr/share/vulkan/icd.d)"
else
  echo "setup-webgpu: installation finished but no Vulkan ICD was found" >&2
  exit 1
fi
# Dawn wants a runtime directory; set XDG_RUNTIME_DIR (e.g. /tmp) in your shell if it is unset.
