#!/usr/bin/env bash
# Builds the three images deploy/ runs, offline, with podman:
#   localhost/sluice:dev         the static sluice binary (CGO_ENABLED=0), the
#                                Dockerfile's layout: /usr/local/bin/sluice as
#                                the entrypoint, user 65532, CA certificates
#   localhost/sluice-redis:7     Debian's redis-server and redis-cli with the
#                                shared libraries they load, user 999, /data
#   localhost/sluice-prometheus:2  Debian's prometheus, user 65534, /prometheus
# Each is FROM scratch: a binary, what ldd says it loads, /etc/passwd and
# /etc/group. Needs go, podman, and (for the other two) Debian's redis-server
# and prometheus packages, installed by ensure-podman.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
GO=${GO:-go}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# rootfs DIR NAME:UID:GID HOME [BINARY...]: DIR/root holds /etc/passwd and
# /etc/group naming the user, /tmp, and the binaries with the libraries ldd
# lists (the dynamic loader included); DIR/home becomes the user's HOME
# (COPY --chown in the Containerfile: COPY makes everything else root's).
rootfs() {
  local dir=$1 user=$2 home=$3 name uid gid f lib
  shift 3
  IFS=: read -r name uid gid <<<"$user"
  mkdir -p "$dir/root/etc" "$dir/root/tmp" "$dir/home"
  chmod 1777 "$dir/root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s:%s:%s:/sbin/nologin\n' "$name" "$uid" "$gid" "$name" "$home" >"$dir/root/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$name" "$gid" >"$dir/root/etc/group"
  for f in "$@"; do
    install -D -m 0755 "$f" "$dir/root$f"
    for lib in $(ldd "$f" | grep -o '/[^ ]*'); do
      install -D -m 0755 "$(readlink -f "$lib")" "$dir/root$lib"
    done
  done
}

build() { # NAME TAG CONTEXT
  podman build --quiet --no-cache --file "$here/Containerfile.$1" --tag "$2" "$3" >/dev/null
  echo "built $2: $(podman image inspect --format '{{.Size}}' "$2") bytes" >&2
}

# sluice: the binary built as in the Dockerfile's build stage, distroless's
# nonroot user and CA certificates
rootfs "$work/sluice" nonroot:65532:65532 /home/nonroot
(cd "$root" && CGO_ENABLED=0 GOOS=linux "$GO" build -trimpath -ldflags="-s -w" -o "$work/sluice/root/usr/local/bin/sluice" ./cmd/sluice)
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$work/sluice/root/etc/ssl/certs/ca-certificates.crt"
build sluice localhost/sluice:dev "$work/sluice"

rootfs "$work/redis" redis:999:999 /data /usr/bin/redis-server /usr/bin/redis-cli
build redis localhost/sluice-redis:7 "$work/redis"

rootfs "$work/prometheus" nobody:65534:65534 /prometheus /usr/bin/prometheus
build prometheus localhost/sluice-prometheus:2 "$work/prometheus"
