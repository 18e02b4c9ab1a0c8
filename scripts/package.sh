#!/usr/bin/env bash
# Builds the Debian package: target/debian/xhubd_<version>_<arch>.deb.
# Installs cargo-deb from crates.io when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# A debug build of cargo-deb compiles faster, and its speed does not matter here.
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --debug

cargo build --release --locked --bin xhubd

# Man pages and completions, generated from the command-line definitions.
rm -rf target/assets
mkdir -p target/assets/man target/assets/completions
target/release/xhubd man --out-dir target/assets/man
target/release/xhubd completions bash > target/assets/completions/xhubd.bash
target/release/xhubd completions zsh > target/assets/completions/_xhubd
target/release/xhubd completions fish > target/assets/completions/xhubd.fish

rm -f target/debian/xhubd_*.deb
cargo deb --no-build --locked
ls target/debian/xhubd_*.deb
