#!/usr/bin/env bash
# Builds the Debian package: target/debian/xhubd_<version>_<arch>.deb.
# Installs cargo-deb from crates.io when it is missing.
# PROFILE=dev packages an unoptimised binary (the test suite does this to save a
# release build; the package's layout is the same).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-release}"
bindir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")

# A debug build of cargo-deb compiles faster, and its speed does not matter here.
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --debug

cargo build --profile "$profile" --locked --bin xhubd

# Man pages and completions, generated from the command-line definitions.
rm -rf target/assets
mkdir -p target/assets/man target/assets/completions
"$bindir/xhubd" man --out-dir target/assets/man
"$bindir/xhubd" completions bash > target/assets/completions/xhubd.bash
"$bindir/xhubd" completions zsh > target/assets/completions/_xhubd
"$bindir/xhubd" completions fish > target/assets/completions/xhubd.fish

rm -f target/debian/xhubd_*.deb
cargo deb --no-build --locked --profile "$profile"
ls target/debian/xhubd_*.deb
