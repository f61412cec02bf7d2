#!/usr/bin/env bash
# Makes sure the Python the Python client's tests run with ($PYTHON, default
# Debian's /usr/bin/python3, not a pyenv shim that may come first on PATH)
# has redis-py >= 4.3 and pytest, and can make a venv and build the package
# offline (venv, pip, setuptools, wheel): the Debian packages python3-redis,
# python3-pytest, python3-venv, python3-pip, python3-setuptools and
# python3-wheel. Installs them when running as root on a Debian-like
# system; otherwise says how, and fails.
set -euo pipefail
PYTHON=${PYTHON:-/usr/bin/python3}
check() {
  "$PYTHON" - <<'PY' 2>/dev/null
import importlib.util
for m in ("ensurepip", "pip", "setuptools", "venv", "wheel", "pytest"):  # venv + offline build, tests
    assert importlib.util.find_spec(m) is not None, m
import redis
major, minor = (int(x) for x in redis.__version__.split(".")[:2])
assert (major, minor) >= (4, 3), redis.__version__
PY
}
if [ -x "$PYTHON" ] && check; then
  exit 0
fi
pkgs="python3 python3-redis python3-pytest python3-venv python3-pip python3-setuptools python3-wheel"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing $pkgs (Debian packages) for the Python client's tests..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq $pkgs >/dev/null
  if [ -x "$PYTHON" ] && check; then
    exit 0
  fi
fi
echo "$PYTHON cannot run the Python client's tests: it needs redis-py >= 4.3, pytest, venv, pip, setuptools and wheel (Debian/Ubuntu: sudo apt-get install -y $pkgs), then run make test again" >&2
exit 1
