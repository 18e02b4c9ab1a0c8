#!/usr/bin/env bash
# Runs every test of xhubd: formatting, lints, unit and integration tests.
# Everything the tests use comes from Cargo (SQLite is bundled); tests that need a
# system tool install it here when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
