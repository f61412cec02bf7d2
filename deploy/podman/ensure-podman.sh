#!/usr/bin/env bash
# Makes sure what make image and make deploy-run need is on PATH: podman,
# podman-compose, runc (the runtime containers.conf names), and the binaries
# the Redis and Prometheus images are made of (redis-server, redis-cli,
# prometheus). Installs Debian's packages when running as root on a
# Debian-like system; otherwise says how, and fails.
set -euo pipefail
missing=()
for cmd in podman podman-compose runc redis-server redis-cli prometheus; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
[ ${#missing[@]} = 0 ] && exit 0
pkgs="podman podman-compose runc redis-server prometheus"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing $pkgs (Debian packages) for the containers (missing: ${missing[*]})..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq $pkgs >/dev/null
  # the packages may start system services (:6379, :9090); only the binaries are needed
  if command -v systemctl >/dev/null 2>&1; then
    systemctl stop prometheus redis-server >/dev/null 2>&1 || true
  fi
  ok=1
  for cmd in "${missing[@]}"; do command -v "$cmd" >/dev/null 2>&1 || ok=0; done
  [ $ok = 1 ] && exit 0
fi
echo "missing: ${missing[*]}: install them (Debian 12: sudo apt-get install -y $pkgs), then run the make target again" >&2
exit 1
