#!/usr/bin/env bash
# Local stand-ins for the third-party images the Dockerfile and docker-compose.yml name, for a
# machine that reaches no image registry (CI here). Each is made from Debian's packages and
# behaves as the official image does where this project relies on it:
#
#   debian:bookworm-slim       debootstrap --variant=minbase bookworm, apt lists removed
#   rust:1-bookworm            debian:bookworm-slim + gcc, libc6-dev, ca-certificates and THIS
#                              machine's Rust toolchain under /usr/local/rustup, rustup's
#                              proxies in /usr/local/cargo/bin (RUSTUP_HOME, CARGO_HOME, PATH
#                              as in the official image)
#   rabbitmq:3.13-management   Debian's rabbitmq-server (3.10) with the management plugin, guest
#                              allowed from other hosts, data in /var/lib/rabbitmq, running as
#                              rabbitmq, `rabbitmq-diagnostics -q ping` works (the healthcheck)
#   redis:7                    Debian's redis-server (7.0) in /data, protected mode off (as the
#                              official image is built), runs as redis, `redis-cli ping` works
#
# An image is built only when missing or when this script or its inputs changed (the label
# arr.base-images carries their digest), so a second run on one machine costs seconds.
# Needs a running engine (scripts/docker/engine.sh) and root (debootstrap, chroot).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MIRROR="${ARR_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm

log() { printf 'base-images: %s\n' "$*" >&2; }

# What the images are made from: this script, the files beside it, the Rust toolchain's version.
rust_home="${RUSTUP_HOME:-$HOME/.rustup}"
toolchain=$(rustup show active-toolchain 2>/dev/null | awk '{print $1}')
[ -n "$toolchain" ] || { log "no active rustup toolchain"; exit 1; }
stamp=$( { cat "$0" "$here"/rabbitmq/* "$here"/redis/* /usr/local/share/ca-certificates/*.crt 2>/dev/null; rustc --version; echo "$toolchain"; } | sha256sum | cut -c1-16)

current() { # current IMAGE: true when IMAGE exists with this stamp
  [ "$(docker image inspect -f '{{index .Config.Labels "arr.base-images"}}' "$1" 2>/dev/null)" = "$stamp" ]
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rootfs() { # rootfs DIR: a minimal Debian root file system, apt lists and caches removed
  debootstrap --variant=minbase "$SUITE" "$1" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; return 1; }
  # As the official slim image: apt points at the same mirror, nothing cached.
  printf 'deb %s %s main\ndeb %s %s-updates main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" >"$1/etc/apt/sources.list"
  rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb
}

# One debootstrap serves both images: the slim one is imported from it first, then the same
# tree gets the builder's packages and toolchain.
if ! current debian:bookworm-slim || ! current rust:1-bookworm; then
  log "debootstrap $SUITE from $MIRROR"
  rootfs "$work/root"
fi

if ! current debian:bookworm-slim; then
  log "debian:bookworm-slim"
  tar -C "$work/root" -c . | docker import \
    --change "LABEL arr.base-images=$stamp" --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - debian:bookworm-slim >/dev/null
fi

if ! current rust:1-bookworm; then
  log "rust:1-bookworm (gcc + the machine's toolchain $toolchain)"
  r="$work/root"
  # The certificate authorities this machine trusts beyond Debian's (a network that inspects
  # TLS has its own): cargo in the builder reaches crates.io exactly as cargo on the host does.
  mkdir -p "$r/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$r/usr/local/share/ca-certificates/" 2>/dev/null || true
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  chroot "$r" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates pkg-config >/dev/null 2>&1 && rm -rf /var/lib/apt/lists/*'
  : >"$r/etc/resolv.conf"
  mkdir -p "$r/usr/local/rustup/toolchains" "$r/usr/local/cargo/bin"
  # The toolchain without its HTML docs (800 MB nobody reads in a build).
  tar -C "$rust_home/toolchains" --exclude="$toolchain/share/doc" -c "$toolchain" \
    | tar -C "$r/usr/local/rustup/toolchains" -x
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' "$toolchain" \
    >"$r/usr/local/rustup/settings.toml"
  rustup_bin=$(command -v rustup)
  for proxy in rustup cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do
    install -m 0755 "$rustup_bin" "$r/usr/local/cargo/bin/$proxy"
  done
  chmod -R a+w "$r/usr/local/rustup" "$r/usr/local/cargo"
  tar -C "$r" -c . | docker import \
    --change "LABEL arr.base-images=$stamp" --change 'CMD ["bash"]' \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV RUST_VERSION=$(rustc --version | awk '{print $2}')" \
    - rust:1-bookworm >/dev/null
fi
rm -rf "$work/root"

# The services' images build on the slim one; their Dockerfiles sit beside this script. Their
# apt-get needs the host's network (the engine runs without NAT).
for spec in "rabbitmq:3.13-management rabbitmq" "redis:7 redis"; do
  set -- $spec
  if ! current "$1"; then
    log "$1 (Debian's packages, scripts/docker/$2/)"
    docker build -q --network host --label "arr.base-images=$stamp" -t "$1" "$here/$2" >/dev/null
  fi
done

log "ready: debian:bookworm-slim rust:1-bookworm rabbitmq:3.13-management redis:7"
