#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build, run and test Sentinel:
# apt packages (postgresql: the fleet tests start their own server from it), the nightly toolchain's rust-src, bpf-linker 0.10.4, and the GeoIP country
# database at /var/lib/sentinel/country.mmdb. With --bench it also installs bpftrace, the
# baseline `cargo xtask bench-cost` measures beside the agent, and nginx and wrk, its busy
# server and the load on it (not needed to build or test).
# With --lint it also installs lintian, to check the Debian package (`lintian
# target/debian/sentinel_*.deb`; about 110 packages, so not part of the default set).
# Idempotent, and quick when everything is already there. Run as root (or with sudo).
set -euo pipefail

BPF_LINKER_VERSION=0.10.4
NIGHTLY=${SENTINEL_BPF_TOOLCHAIN:-nightly}
# openssh: SSH trust is tested against a real sshd. nginx, php-fpm (and Node.js below): the
# real-world detection suite. chromium: the confirmation-page test drives a real headless
# browser. debootstrap and systemd-container (systemd-nspawn): the unit is tested in a
# container booted with systemd. postgresql: the fleet tests start their own server. dpkg-dev:
# `cargo xtask package` reads the binary's library dependencies with dpkg-shlibdeps.
# golang-go, python3-venv, python3-dev, ansible-core, logrotate, cron: the admin's day that must
# raise nothing (tests/vps_day.rs). podman and runc: tests/containers.rs runs real containers
# (runc: crun refuses hybrid cgroups). dnsmasq-base (the binary only, no service): the dns tests
# start their own resolvers; openssl makes the certificate of their DNS-over-TLS/HTTPS resolver.
# docker.io: tests/containers.rs starts a dockerd of its own (the machine's docker and
# containerd services are kept from starting: see below). uidmap (newuidmap): the rootless
# Podman tests; slirp4netns: their container's own network (a block must hold for it).
APT_PACKAGES=(nftables iproute2 bpftool gcc libc6-dev pkg-config ca-certificates systemd dpkg-dev
  openssh-server openssh-client nginx php-fpm chromium debootstrap systemd-container postgresql
  golang-go python3-venv python3-dev ansible-core logrotate cron podman runc dnsmasq-base
  openssl docker.io uidmap slirp4netns)
for arg in "$@"; do
  case "$arg" in
    --bench) APT_PACKAGES+=(bpftrace nginx wrk) ;;
    --lint) APT_PACKAGES+=(lintian) ;;
    *) printf 'setup: unknown option %s (known: --bench, --lint)\n' "$arg" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "run as root (apt packages must be installed)"
  SUDO=(sudo)
fi
export PATH="$HOME/.cargo/bin:$PATH"

# 1. System packages.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Node.js and npm for tests/realworld.rs: Debian's packages unless a node and an npm are already
# installed some other way (e.g. NodeSource's nodejs, which bundles npm and conflicts with
# Debian's npm package).
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing apt packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  # No service starts during the install (Debian's docker.io would start the machine's own
  # dockerd, which adds iptables rules and a 172.17.0.0/16 bridge): a policy-rc.d saying no,
  # unless the machine has one already.
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  installed=0
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null \
    || installed=$?
  [ -z "$own_policy" ] || "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
  [ "$installed" -eq 0 ] || die "apt-get install failed ($installed)"
  # The tests start nginx and php-fpm on their own configs: the services Debian starts on
  # install (when this script just installed them) are not wanted.
  for p in "${missing[@]}"; do
    case "$p" in
      nginx|php-fpm)
        for unit in $(systemctl list-unit-files --no-legend 'nginx.service' 'php*-fpm.service' 2>/dev/null | awk '{print $1}'); do
          "${SUDO[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
        done ;;
      docker.io)
        "${SUDO[@]}" systemctl disable --now docker.service docker.socket containerd.service \
          >/dev/null 2>&1 || true ;;
    esac
  done
else
  say "apt packages present"
fi

# Node.js and npm for the npm and node_abuse detectors' end-to-end tests (tests/detectors.rs).
# Debian's packages, unless a node and npm are already installed (e.g. from NodeSource, whose
# nodejs package bundles npm and conflicts with Debian's npm).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  say "installing nodejs and npm"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq nodejs npm >/dev/null
else
  say "node $(node --version) and npm $(npm --version) present"
fi

# 2. Rust: stable builds the agent; a nightly with rust-src builds the kernel programs.
command -v rustup >/dev/null || die "rustup not found: install Rust with rustup first (https://rustup.rs)"
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
  say "installing the $NIGHTLY toolchain"
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src
fi
if ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
  say "adding rust-src to $NIGHTLY"
  rustup component add rust-src --toolchain "$NIGHTLY"
fi
llvm=$(rustup run "$NIGHTLY" rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
case "$llvm" in
  20|21|22) say "$NIGHTLY toolchain ready (LLVM $llvm)" ;;
  *) die "bpf-linker $BPF_LINKER_VERSION needs a nightly on LLVM 20-22, $NIGHTLY has LLVM '$llvm'.
       Install one (e.g. rustup toolchain install nightly-2026-05-18 --profile minimal --component rust-src)
       and export SENTINEL_BPF_TOOLCHAIN=nightly-2026-05-18" ;;
esac

# 3. bpf-linker, built against the nightly's own LLVM (about 2 minutes the first time).
if bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  say "bpf-linker $BPF_LINKER_VERSION present"
else
  say "installing bpf-linker $BPF_LINKER_VERSION (about 2 minutes)"
  cargo "+$NIGHTLY" install "bpf-linker@$BPF_LINKER_VERSION" --locked
fi

# 4. The free country database `geo.database` points at by default.
"$(dirname "$0")/geoip.sh" /var/lib/sentinel/country.mmdb

say "setup complete"
