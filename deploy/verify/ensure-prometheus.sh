#!/usr/bin/env bash
# Makes sure prometheus and promtool are on PATH for deploy/verify, which
# starts its own Prometheus on a free loopback port. Installs Debian's
# package when running as root on a Debian-like system; otherwise says how.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing prometheus (Debian package) for deploy/verify..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq prometheus >/dev/null
  # the package starts a system service on :9090; the tests need only the binaries
  if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus >/dev/null 2>&1 || true; fi
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && exit 0
fi
echo "prometheus is missing: install it (Debian/Ubuntu: sudo apt-get install -y prometheus), then run make deploy-verify again" >&2
exit 1
