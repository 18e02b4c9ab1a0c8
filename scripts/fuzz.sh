#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (the signature header, the verification query
# string, the client-certificate DN, the dedup identity), each for FUZZ_SECONDS
# seconds (default 60), one after the other. Exits non-zero when any target finds a
# crash, a failed invariant or a hang; the input that did it is kept in
# fuzz/artifacts/<target>/ and the command to replay it is printed.
#
#   bash scripts/fuzz.sh                    # every target, 60 s each
#   FUZZ_SECONDS=20 bash scripts/fuzz.sh identity client_cn
#
# Installs cargo-fuzz from crates.io when it is missing. Uses the nightly toolchain
# when rustup has one; otherwise the stable one with RUSTC_BOOTSTRAP=1, which lets it
# take the unstable flags (sanitizer, coverage) that cargo-fuzz passes to rustc.
# FUZZ_TARGET_DIR, when set, is the build directory (default fuzz/target); the corpus
# grows in fuzz/corpus/<target>/ and is reused by later runs.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
case "$seconds" in
  '' | *[!0-9]*) echo "fuzz.sh: FUZZ_SECONDS must be a whole number of seconds, not '$seconds'" >&2; exit 2 ;;
esac
all_targets=(signature challenge client_cn identity)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
for target in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $target "* ]] || {
    echo "fuzz.sh: no fuzz target '$target' (targets: ${all_targets[*]})" >&2
    exit 2
  }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

fuzz=(cargo)
if command -v rustup >/dev/null && rustup run nightly rustc --version >/dev/null 2>&1; then
  fuzz+=(+nightly)
  toolchain=$(rustup run nightly rustc --version)
else
  export RUSTC_BOOTSTRAP=1
  toolchain="$(rustc --version) with RUSTC_BOOTSTRAP=1"
fi
fuzz+=(fuzz)
build_options=()
[ -z "${FUZZ_TARGET_DIR:-}" ] || build_options+=(--target-dir "$FUZZ_TARGET_DIR")

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

echo "fuzz.sh: building the fuzz targets ($toolchain)"
start=$SECONDS
if ! "${fuzz[@]}" build "${build_options[@]}" >"$logs/build.log" 2>&1; then
  cat "$logs/build.log" >&2
  echo "fuzz.sh: FAILED: the fuzz targets do not build" >&2
  exit 1
fi
echo "fuzz.sh: built in $((SECONDS - start)) s"

failed=()
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  log="$logs/$target.log"
  echo "fuzz.sh: $target for ${seconds} s"
  status=0
  "${fuzz[@]}" run "${build_options[@]}" "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
  if [ "$status" -eq 0 ]; then
    echo "fuzz.sh: $target: ok, ${runs:-?} executions, ${rate:-?} exec/s, corpus $corpus inputs"
  else
    failed+=("$target")
    echo "fuzz.sh: $target FAILED (exit status $status) after ${runs:-?} executions:" >&2
    grep -v -e '^#[0-9]' -e '^INFO:' "$log" | tail -n 60 >&2
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/; replay with the cargo fuzz run command above)" >&2
  exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets ran ${seconds} s each without a failure"
