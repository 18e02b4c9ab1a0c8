#!/usr/bin/env bash
# Runs every test of xhubd: formatting, lints, unit and integration tests.
# Installs what the tests need when it is missing (Debian packages; as root, or with
# sudo): nginx-light for the end-to-end tests through the shipped site file, curl as
# their TLS client, systemd for systemd-analyze and systemd-socket-activate, dpkg-dev
# for the package's dependencies. SQLite is bundled; cargo-deb comes from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The Debian package, which tests/package.rs inspects.
bash scripts/package.sh
cargo test --all-targets --locked
