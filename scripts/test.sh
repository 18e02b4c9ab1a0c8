#!/usr/bin/env bash
# Runs every test of xhubd: formatting, lints, unit and integration tests.
# Installs what the tests need when it is missing (Debian packages; as root, or with
# sudo): nginx-light for the end-to-end tests through the shipped site file, curl as
# their TLS client. SQLite is bundled; everything else comes from Cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
