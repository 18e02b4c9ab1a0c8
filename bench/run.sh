#!/usr/bin/env bash
# Load benchmark of xhubd over loopback (127.0.0.1 only), bounded in time.
#
# Starts bench-upstream (bench/upstream.rs) and xhubd on free ports with a fresh spool,
# loads xhubd with wrk and bench/sign.lua (distinct, signed ~1 KiB JSON bodies), waits
# until the upstream has received every event xhubd accepted, and prints a table.
# The same wrk load sent straight to bench-upstream, in the same run, is the baseline.
#
# Usage: bash bench/run.sh [--smoke]
#   --smoke (or SMOKE=1)  2 s loads, for CI
# Environment (defaults in brackets):
#   DURATION [10s; 2s with --smoke]  wrk -d, per load
#   CONNECTIONS [64]  THREADS [2]    wrk -c and -t
#   BODY_BYTES [1024]                size of each request body
#   CONCURRENCY [8]                  xhubd --upstream-concurrency
#   LOG_LEVEL [warn]                 XHUBD_LOG for xhubd (info logs one line per event)
#   LOG_FILE [xhubd.log in the temporary directory]  where xhubd's stderr goes
#   DRAIN_TIMEOUT [60]               seconds to wait for delivery after the load
# Installs wrk and curl with apt-get when missing. The table is also written to
# bench/out/. Exits non-zero when an answer was not 2xx, a socket error occurred, or
# delivery did not drain in time. Figures are targets for the report, not assertions.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=${SMOKE:-0}
for arg in "$@"; do
  case $arg in
    --smoke) SMOKE=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
[ "$SMOKE" = 1 ] && DURATION=${DURATION:-2s}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
BODY_BYTES=${BODY_BYTES:-1024}
CONCURRENCY=${CONCURRENCY:-8}
LOG_LEVEL=${LOG_LEVEL:-warn}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-60}
HOST=127.0.0.1

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

cargo build --release --locked --bin xhubd --example bench-upstream
target_dir=${CARGO_TARGET_DIR:-target}/release
xhubd_bin=$target_dir/xhubd
upstream_bin=$target_dir/examples/bench-upstream

tmp=$(mktemp -d -t xhubd-bench.XXXXXX)
LOG_FILE=${LOG_FILE:-$tmp/xhubd.log}
pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { echo "$EPOCHREALTIME"; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

seconds() { # wrk duration (10, 10s, 2m, 1h) in whole seconds
  local d=$1
  case $d in
    *h) echo $((${d%h} * 3600)) ;;
    *m) echo $((${d%m} * 60)) ;;
    *s) echo "${d%s}" ;;
    *) echo "$d" ;;
  esac
}

free_port() { # a port nothing listens on
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "no free port found" >&2
  return 1
}

wait_listening() { # PID PORT NAME
  for _ in $(seq 200); do
    kill -0 "$1" 2>/dev/null || { echo "$3 exited at start" >&2; return 1; }
    (exec 3<>"/dev/tcp/$HOST/$2") 2>/dev/null && return
    sleep 0.05
  done
  echo "$3 did not listen on $HOST:$2" >&2
  return 1
}

upstream_count() { curl -sf --max-time 5 "http://$HOST:$upstream_port/count"; }

cpu_ticks() { # utime + stime of PID, in clock ticks
  local stat fields
  stat=$(<"/proc/$1/stat")
  read -ra fields <<<"${stat##*) }"
  echo $((fields[11] + fields[12]))
}

declare -A base xhub
run_wrk() { # URL OUTFILE ARRAYNAME: runs the load, parses done()'s WRKSTATS line
  local -n stats=$3
  local kv kvs=()
  timeout $(($(seconds "$DURATION") + 60)) \
    env BENCH_APP_SECRET="$secret" BODY_BYTES="$BODY_BYTES" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/sign.lua "$1" >"$2"
  read -ra kvs < <(sed -n 's/^WRKSTATS //p' "$2") || true
  if [ ${#kvs[@]} -eq 0 ]; then
    echo "no WRKSTATS line from wrk:" >&2
    cat "$2" >&2
    return 1
  fi
  for kv in "${kvs[@]}"; do stats["${kv%%=*}"]=${kv#*=}; done
  stats["ok"]=$((stats["requests"] - stats["status"]))
  stats["socket"]="${stats["connect"]}/${stats["read"]}/${stats["write"]}/${stats["timeout"]}"
  stats["socket_errors"]=$((stats["connect"] + stats["read"] + stats["write"] + stats["timeout"]))
  stats["rate"]=$(calc %.0f "${stats["ok"]} / (${stats["duration_us"]} / 1e6)")
  stats["latency"]=$(calc "%.2f / %.2f / %.2f" \
    "${stats["p50_us"]} / 1e3, ${stats["p99_us"]} / 1e3, ${stats["max_us"]} / 1e3")
}

secret="bench-$RANDOM$RANDOM$RANDOM"

# The bench upstream, shared by the baseline and xhubd.
upstream_port=$(free_port)
"$upstream_bin" "$HOST:$upstream_port" >"$tmp/upstream.out" &
upstream_pid=$!
pids+=("$upstream_pid")
wait_listening "$upstream_pid" "$upstream_port" bench-upstream

echo "baseline: wrk -> bench-upstream for $DURATION" >&2
run_wrk "http://$HOST:$upstream_port/" "$tmp/wrk-baseline.txt" base
sleep 0.5 # the stragglers wrk did not wait for
before=$(upstream_count)

xhubd_port=$(free_port)
XHUBD_LOG=$LOG_LEVEL "$xhubd_bin" serve \
  --listen "$HOST:$xhubd_port" \
  --upstream "http://$HOST:$upstream_port/" \
  --upstream-concurrency "$CONCURRENCY" \
  --verify-token bench \
  --app-secret "$secret" \
  --state-dir "$tmp/state" \
  2>"$LOG_FILE" &
xhubd_pid=$!
pids+=("$xhubd_pid")
wait_listening "$xhubd_pid" "$xhubd_port" xhubd || { tail -n 20 "$LOG_FILE" >&2; exit 1; }

echo "xhubd: wrk -> xhubd -> bench-upstream for $DURATION" >&2
cpu_start=$(cpu_ticks "$xhubd_pid")
t_start=$(now)
run_wrk "http://$HOST:$xhubd_port/" "$tmp/wrk-xhubd.txt" xhub
t_load_end=$(now)

# Delivered: the upstream has at least every event wrk saw accepted (a few more may
# have been accepted while wrk stopped with requests in flight).
drained=0
deadline=$(calc %.6f "$t_load_end + $DRAIN_TIMEOUT")
while :; do
  delivered=$(($(upstream_count) - before))
  t_now=$(now)
  if [ "$delivered" -ge "${xhub[ok]}" ]; then drained=1; break; fi
  [ "$(calc %d "($t_now > $deadline)")" = 1 ] && break
  sleep 0.02
done
t_drained=$t_now
cpu_end=$(cpu_ticks "$xhubd_pid")
sleep 1 # the stragglers wrk did not wait for
delivered_total=$(($(upstream_count) - before))
rss_kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$xhubd_pid/status")
ticks=$(getconf CLK_TCK)

if [ "$drained" = 1 ]; then
  delivered_rate=$(calc %.0f "$delivered / ($t_drained - $t_start)")
  drain=$(calc %.2f "$t_drained - $t_load_end")
else
  delivered_rate="-"
  drain="not drained ($delivered of ${xhub[ok]} after ${DRAIN_TIMEOUT}s)"
fi
extra=$((delivered_total - xhub[ok]))
cpu_per_k="-"
if [ "$delivered" -gt 0 ]; then
  cpu_per_k=$(calc %.3f "($cpu_end - $cpu_start) / $ticks / $delivered * 1000")
fi

mkdir -p bench/out
report=bench/out/run-$(date +%Y%m%dT%H%M%S).txt
{
  echo "xhubd $(git describe --always --dirty 2>/dev/null || echo '?'), $(nproc) cores;" \
    "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $BODY_BYTES-byte signed bodies;" \
    "--upstream-concurrency $CONCURRENCY, XHUBD_LOG=$LOG_LEVEL"
  row() { printf '| %-34s | %-22s | %-22s | %-5s |\n' "$@"; }
  row "figure" "xhubd" "baseline: upstream" "ratio"
  row "----------------------------------" "----------------------" \
    "----------------------" "-----"
  row "accepted events/s (2xx / duration)" "${xhub[rate]}" "${base[rate]}" \
    "$(calc %.3f "${xhub[rate]} / ${base[rate]}")"
  row "delivered events/s (load to drain)" "$delivered_rate" "-" \
    "$([ "$drained" = 1 ] && calc %.3f "$delivered_rate / ${base[rate]}" || echo -)"
  row "drain time after load (s)" "$drain" "-" ""
  row "latency p50 / p99 / max (ms)" "${xhub[latency]}" "${base[latency]}" ""
  row "2xx answers" "${xhub[ok]}" "${base[ok]}" ""
  row "non-2xx answers" "${xhub[status]}" "${base[status]}" ""
  row "socket errors conn/read/write/tmo" "${xhub[socket]}" "${base[socket]}" ""
  row "delivered (+ in flight at stop)" "$delivered_total (+$extra)" "-" ""
  row "peak RSS (MiB)" "$(calc %.1f "$rss_kib / 1024")" "-" ""
  row "CPU s per 1,000 events" "$cpu_per_k" "-" ""
} | tee "$report"

status=0
if [ "${xhub[status]}" -ne 0 ] || [ "${base[status]}" -ne 0 ]; then
  echo "FAIL: non-2xx answers" >&2; status=1
fi
if [ "${xhub[socket_errors]}" -ne 0 ] || [ "${base[socket_errors]}" -ne 0 ]; then
  echo "FAIL: socket errors" >&2; status=1
fi
if [ "$drained" != 1 ]; then echo "FAIL: delivery did not drain" >&2; status=1; fi
if [ "$status" -ne 0 ] && [ -f "$LOG_FILE" ]; then
  echo "last lines of xhubd's log ($LOG_FILE):" >&2
  tail -n 20 "$LOG_FILE" >&2
fi
exit "$status"
