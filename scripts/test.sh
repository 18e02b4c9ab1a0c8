#!/usr/bin/env bash
# Runs every test of xhubd: formatting, lints, unit and integration tests, a smoke run
# of the load benchmark (wrk and openssl are installed by bench/run.sh), then a short
# run of each fuzz target (FUZZ_SECONDS, default 30; scripts/fuzz.sh alone runs them
# longer).
# Installs what the tests need when it is missing (Debian packages; as root, or with
# sudo): nginx-light for the end-to-end tests through the shipped site file, curl as
# their TLS client, systemd for systemd-analyze and systemd-socket-activate, dpkg-dev
# for the package's dependencies, chromium and chromium-driver for the status page's
# browser test, postgresql for the shared spool's tests (a throw-away cluster of their
# own; the package's cluster is left alone), prometheus for promtool, which checks and
# unit-tests the shipped alert rules (tests/prometheus_rules.rs; the package's own
# Prometheus server is not used), faketime for an instance whose clock is off. SQLite
# is bundled; cargo-deb comes from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# The PostgreSQL spool's tests start a throw-away cluster with initdb and pg_ctl.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v promtool >/dev/null || missing+=(prometheus)
# A PostgreSQL test runs an instance whose clock is off (libfaketime).
compgen -G '/usr/lib/*/faketime/libfaketimeMT.so.1' >/dev/null || missing+=(faketime)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --all-targets --locked -- -D warnings
# The Debian package, which tests/package.rs inspects (an unoptimised binary inside,
# to spare a release build; scripts/package.sh alone builds the release one).
PROFILE=dev bash scripts/package.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line with the totals of every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
[ "$status" -eq 0 ] || exit "$status"

# The benchmark works and prints its tables: 2 s loads with the binaries just tested
# (the fan-out load of three destinations included),
# plain HTTP and HTTPS with a client certificate through the shipped site file, a
# catch-up of 20,000 events, one then two instances on a throw-away PostgreSQL, the bare
# relay, and the two peers (Debian's webhook, and Express from the npm registry: the
# peers' signature checks are asserted, their figures are not; nor are any others,
# which are for bench/RESULTS.md). Its SQLite spools start with 10,000 identities
# remembered and 1,000 dead events (sqlite3 is installed by bench/run.sh), and every
# xhubd prunes what is older than 2 s while it is loaded.
DEDUP_PREFILL=10000 DEAD_PREFILL=1000 DEDUP_WINDOW=2s CATCH_UP_EVENTS=20000 PROFILE=dev \
  bash bench/run.sh --smoke --tls --catch-up --fanout --postgres --peers

FUZZ_SECONDS=${FUZZ_SECONDS:-30} bash scripts/fuzz.sh
