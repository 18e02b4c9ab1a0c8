#!/usr/bin/env bash
# Load benchmark of xhubd over loopback (127.0.0.1 and Unix sockets only), bounded in
# time.
#
# Starts bench-upstream (bench/upstream.rs) and loads, with wrk and bench/sign.lua
# (distinct, signed JSON bodies of BODY_BYTES), one after the other:
#   baseline  wrk -> bench-upstream over TCP: one hop with no work behind it;
#   C         wrk -> xhubd over TCP -> bench-upstream (fresh spool, or see DEDUP_PREFILL);
# and with --nginx (Nginx from the shipped nginx/xhubd.conf, plain-HTTP variant: no TLS,
# no client-certificate check; installed when missing):
#   A         wrk -> Nginx -> bench-upstream over a Unix socket: no verification and
#             no storage, one hop fewer than B;
#   A-relay   wrk -> Nginx -> bench-relay (bench/relay.rs) over a Unix socket ->
#             bench-upstream: the honest ceiling, B's hops with nothing durable (the relay
#             answers 200 once it has read the body, then forwards it over a pooled
#             keep-alive client from CONCURRENCY senders; no verification, no storage);
#   B         wrk -> Nginx -> xhubd over a Unix socket -> bench-upstream (fresh spool);
# and with --tls (implies --nginx; wrk cannot present a client certificate, so these
# loads use bench-load, bench/load.rs: the same signed bodies from a Rust HTTP/1.1 client,
# one TLS session per connection), after A and B:
#   A-load    bench-load -> Nginx (plain HTTP) -> bench-upstream: A with bench-load, so
#             A-load / A shows the tool's own ceiling against wrk's;
#   B-load    bench-load -> Nginx (plain HTTP) -> xhubd -> bench-upstream (fresh spool);
#   A-tls     bench-load -> Nginx (HTTPS + mutual TLS) -> bench-upstream;
#   B-tls     bench-load -> Nginx (HTTPS + mutual TLS) -> xhubd -> bench-upstream (fresh
#             spool; xhubd also checks the subject, --client-cn-header X-Client-Subject);
# where Nginx runs the shipped nginx/xhubd.conf as shipped but for its listen address,
# certificate paths, trust anchor, socket and snippet paths, with a throw-away PKI made
# with the openssl CLI (a server CA and a certificate for 127.0.0.1/localhost, a client
# CA and a client certificate with CN=client.webhooks.fbclientcerts.com);
# and with --catch-up: xhubd accepts for CATCH_UP_DURATION (or, with CATCH_UP_EVENTS=N,
# until bench-load has had N events accepted) while its upstream is down, then the
# upstream starts and the time until every accepted event arrives is measured, with
# xhubd's RSS while they are all pending (xhubd has taken the upstream as down: one
# probe at a time, at most 2 s apart with the --retry-max-delay it gets here); with wrk
# (no CATCH_UP_EVENTS), the acceptance rate is also given over C's, the same load with
# the upstream up.
# For xhubd (and the relay) it waits until the upstream has received every event
# accepted, and prints a table with the ratios C/baseline, B/A and B/A-relay, and the CPU
# per event of each process a load goes through (with --tls, a second table for the
# bench-load loads, with B-tls/A-tls, B-load/A-load and A-load/A).
#
# and with --fanout: xhubd with a config file of one route and three destinations, two
# of them matching one phone number each (narrowed, re-signed bodies), the third taking
# everything; wrk sends 1 KiB WhatsApp batches for the two numbers. Reports events/s,
# deliveries/s (three per event) and CPU per event, next to C.
# and with --postgres: a throw-away PostgreSQL cluster on this machine (Debian's
# postgresql, its default settings; initdb as the postgres user when run as root), and
# on it, each on a fresh database:
#   C-pg      wrk -> xhubd --spool postgres://… -> bench-upstream (C on PostgreSQL);
#   B-pg1     wrk -> Nginx (plain HTTP) -> one xhubd on PostgreSQL;
#   B-pg2     wrk -> Nginx -> two xhubd instances on one database (an upstream block of
#             two sockets, the shipped site otherwise), delivering between them;
# with the CPU per event split between xhubd and PostgreSQL's processes, and the ratios
# C-pg / C and B-pg2 / B-pg1.
# and with --peers, after C, two other receivers that check the same signatures, each
# loaded alone by the same wrk load (one hop, as C), with nothing stored durably and
# nothing forwarded:
#   express   Meta's sample receiver pattern (fbsamples/graph-api-webhooks-samples) on
#             Node.js and Express, bench/peers/express/receiver.js: checks
#             X-Hub-Signature-256 over the raw body, parses the JSON, keeps the event in
#             an array in memory, answers 200 (npm ci from its package-lock.json into the
#             temporary directory; NODE_ENV=production);
#   webhook   adnanh/webhook (Debian's webhook), one hook from the template
#             bench/peers/webhook/hooks.json.tmpl: a payload-hmac-sha256 rule on
#             X-Hub-Signature-256, /bin/true run for each event (after the 200: its
#             commands can still be running when the load ends);
# each measured until it is idle, with accepted events/s, events/s until idle, latency,
# CPU per event (webhook's with the commands it ran) and peak RSS next to C's, and the
# ratios C / express and C / webhook, and B (Nginx in front) / each. Before each is loaded, a body signed with the
# secret must get 2xx and one signed with another key must not, else the run fails.
# With BASELINE_XHUBD=PATH (an earlier release's binary), C is measured again with it
# and with this build, alternated (C-prev, C, C-prev, C), and the ratio of the medians
# is printed.
#
# Usage: bash bench/run.sh [--smoke] [--nginx] [--tls] [--catch-up] [--fanout] [--postgres]
#                          [--peers]
#   --smoke (or SMOKE=1)  2 s loads, for CI
# Environment (defaults in brackets):
#   DURATION [10s; 2s with --smoke]  wrk -d, per load (and bench-load's)
#   ROUNDS [1]                       with --nginx: A, A-relay and B this many times in
#                                    turn, with every round's B / A-relay and the median
#   CONNECTIONS [64]  THREADS [2]    wrk -c and -t (bench-load: connections, runtime
#                                    worker threads)
#   BODY_BYTES [1024]                size of each request body
#   CONCURRENCY [8]                  xhubd --upstream-concurrency
#   UPSTREAM_DELAY_MS [0]            bench-upstream answers each POST this long after
#                                    reading it, as a backend doing some work (every
#                                    load's upstream, the baseline's and A's too)
#   LOG_LEVEL [info]                 XHUBD_LOG for xhubd (its default, info: two lines
#                                    per event, written to LOG_FILE)
#   LOG_FILE [xhubd.log in the temporary directory]  where xhubd's stderr goes
#   DRAIN_TIMEOUT [60]               seconds to wait for delivery after the load
#   CATCH_UP_DURATION [DURATION]     how long xhubd accepts with its upstream down
#   CATCH_UP_EVENTS [unset]          instead, load with bench-load until exactly N events
#                                    were sent (and all accepted) with its upstream down,
#                                    e.g. 1000000 (bounded by CATCH_UP_TIMEOUT)
#   CATCH_UP_TIMEOUT [600]           seconds to wait for the backlog's delivery (and, with
#                                    CATCH_UP_EVENTS, the most the load may take)
#   PROFILE [release]                cargo profile of the binaries (dev: the smoke run
#                                    in scripts/test.sh, which has them built already)
#   DEDUP_PREFILL [0]                identities every SQLite spool but --fanout's (C,
#                                    BASELINE_XHUBD's rounds, B, B-load, B-tls, the
#                                    catch-up) already remembers when its load starts
#                                    (random keys, seen now), as a spool does after days
#                                    of traffic (the dedup window is 7 days): the load's
#                                    xhubd creates the spool and stops, then sqlite3 adds
#                                    them; 4000000 take about a minute per spool
#   DEAD_PREFILL [0]                 events every such SQLite spool already keeps for a
#                                    dead delivery, received 2 h before the load (older
#                                    than the window with DEDUP_WINDOW): what pruning
#                                    must pass over while it deletes what was delivered
#   DEDUP_WINDOW [xhubd's, 7d]       --dedup-window of every xhubd; a window shorter
#                                    than the load (10s) makes it prune as much as it
#                                    accepts, as a spool does once it has run a window
#   XHUBD_BIN [the build's xhubd]    another xhubd binary to measure in every load (an
#                                    earlier build's, to set B against B: alternate
#                                    runs); also the "this build" side of BASELINE_XHUBD
# Installs wrk and curl (and nginx-light with --nginx or --postgres, openssl with --tls,
# postgresql with --postgres; webhook, openssl, and nodejs and npm when node or npm is
# missing, with --peers; sqlite3 with DEDUP_PREFILL or DEAD_PREFILL) with apt-get when missing; builds bench-load with --tls or
# CATCH_UP_EVENTS. The table is also written to bench/out/. Exits non-zero when an
# answer was not 2xx, a socket error occurred (for a peer, a timeout is its figure, not a
# failure), delivery did not drain in time, or (with --peers) a peer failed its
# signature check, before or after its load, or did not keep every event it accepted.
# Figures are targets for the report, not assertions.
set -euo pipefail
# Binaries named relative to the caller's directory, before leaving it.
for var in XHUBD_BIN BASELINE_XHUBD; do
  if [ -n "${!var:-}" ]; then
    [ -f "${!var}" ] && [ -x "${!var}" ] \
      || { echo "$var=${!var}: not an executable file" >&2; exit 2; }
    printf -v "$var" '%s' "$(realpath "${!var}")"
  fi
done
cd "$(dirname "$0")/.."

SMOKE=${SMOKE:-0}
WITH_NGINX=0
WITH_TLS=0
CATCH_UP=0
FANOUT=0
POSTGRES=0
PEERS=0
for arg in "$@"; do
  case $arg in
    --smoke) SMOKE=1 ;;
    --nginx) WITH_NGINX=1 ;;
    --tls) WITH_TLS=1; WITH_NGINX=1 ;;
    --catch-up) CATCH_UP=1 ;;
    --fanout) FANOUT=1 ;;
    --postgres) POSTGRES=1 ;;
    --peers) PEERS=1 ;;
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
UPSTREAM_DELAY_MS=${UPSTREAM_DELAY_MS:-0}
LOG_LEVEL=${LOG_LEVEL:-info}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-60}
CATCH_UP_TIMEOUT=${CATCH_UP_TIMEOUT:-600}
PROFILE=${PROFILE:-release}
CATCH_UP_DURATION=${CATCH_UP_DURATION:-$DURATION}
CATCH_UP_EVENTS=${CATCH_UP_EVENTS:-}
ROUNDS=${ROUNDS:-1}
DEDUP_PREFILL=${DEDUP_PREFILL:-0}
if ! [[ $DEDUP_PREFILL =~ ^(0|[1-9][0-9]*)$ ]]; then
  echo "DEDUP_PREFILL must be a number of identities" >&2
  exit 2
fi
DEAD_PREFILL=${DEAD_PREFILL:-0}
if ! [[ $DEAD_PREFILL =~ ^(0|[1-9][0-9]*)$ ]]; then
  echo "DEAD_PREFILL must be a number of events" >&2
  exit 2
fi
DEDUP_WINDOW=${DEDUP_WINDOW:-}
if ! [[ $ROUNDS =~ ^[1-9][0-9]*$ ]]; then
  echo "ROUNDS must be a positive number of rounds" >&2
  exit 2
fi
if [ -n "$CATCH_UP_EVENTS" ] && ! [[ $CATCH_UP_EVENTS =~ ^[1-9][0-9]*$ ]]; then
  echo "CATCH_UP_EVENTS must be a positive number of events" >&2
  exit 2
fi
HOST=127.0.0.1

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
{ [ "$WITH_NGINX" = 0 ] && [ "$POSTGRES" = 0 ]; } || [ -x "$nginx_bin" ] || missing+=(nginx-light)
pg_bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
[ "$POSTGRES" = 0 ] || [ -x "$pg_bin/initdb" ] || missing+=(postgresql)
[ "$WITH_TLS" = 0 ] || command -v openssl >/dev/null || missing+=(openssl)
{ [ "$DEDUP_PREFILL" = 0 ] && [ "$DEAD_PREFILL" = 0 ]; } || command -v sqlite3 >/dev/null \
  || missing+=(sqlite3)
if [ "$PEERS" = 1 ]; then
  command -v webhook >/dev/null || missing+=(webhook)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  command -v openssl >/dev/null || missing+=(openssl)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
pg_bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)

examples=(--example bench-upstream)
[ "$WITH_NGINX" = 0 ] || examples+=(--example bench-relay)
if [ "$WITH_TLS" = 1 ] || { [ "$CATCH_UP" = 1 ] && [ -n "$CATCH_UP_EVENTS" ]; }; then
  examples+=(--example bench-load)
fi
cargo build --profile "$PROFILE" --locked --bin xhubd "${examples[@]}"
profile_dir=$PROFILE
[ "$PROFILE" != dev ] || profile_dir=debug
target_dir=${CARGO_TARGET_DIR:-target}/$profile_dir
xhubd_bin=${XHUBD_BIN:-$target_dir/xhubd}
upstream_bin=$target_dir/examples/bench-upstream
load_bin=$target_dir/examples/bench-load
relay_bin=$target_dir/examples/bench-relay

tmp=$(mktemp -d -t xhubd-bench.XXXXXX)
LOG_FILE=${LOG_FILE:-$tmp/xhubd.log}
pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
pg_dir=""
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$pg_dir" ] && [ -f "$pg_dir/data/postmaster.pid" ]; then
    as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp" ${pg_dir:+"$pg_dir"}
}
# PostgreSQL refuses to run as root: as root, its commands run as the postgres user.
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { echo "$EPOCHREALTIME"; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
# The median of numbers ("-" left out), or "-" when there is none.
median() { # NUMBER...
  printf '%s\n' "$@" | grep -v '^-$' | sort -g \
    | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2];
      else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# FORMAT of A / B, or "-" when either is not a positive number (a load that did not
# drain, say).
ratio() { # FORMAT A B
  if [[ $2 =~ ^[0-9.]+$ ]] && [[ $3 =~ ^[0-9.]+$ ]] && [ "$(calc %d "($2 > 0 && $3 > 0)")" = 1 ]; then
    calc "$1" "$2 / $3"
  else
    echo "-"
  fi
}

seconds() { # wrk duration (10, 10s, 2m, 1h) in whole seconds
  local d=$1
  case $d in
    *h) echo $((${d%h} * 3600)) ;;
    *m) echo $((${d%m} * 60)) ;;
    *s) echo "${d%s}" ;;
    *) echo "$d" ;;
  esac
}

# Below the kernel's range of ephemeral ports: a port picked there could be taken as
# the source port of one of the many client connections before its server binds it.
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() { # a port nothing listens on
  local port
  for _ in $(seq 200); do
    port=$((10000 + RANDOM % (ephemeral_low - 10000)))
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

# CPU of PID and its children, live (Nginx's workers) and reaped (cutime, cstime: the
# commands a peer runs).
tree_ticks() {
  local stat fields total pid
  stat=$(<"/proc/$1/stat")
  read -ra fields <<<"${stat##*) }"
  total=$((fields[11] + fields[12] + fields[13] + fields[14]))
  for pid in $(pgrep -P "$1"); do
    total=$((total + $(cpu_ticks "$pid" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# CPU ticks of the other processes a load goes through, and of the whole machine (every
# core, kernel and interrupts included, from /proc/stat; not the time a hypervisor gave
# to other guests): "NGINX UPSTREAM MACHINE" (NGINX 0 when no Nginx runs).
others_ticks() {
  local nginx=0 user nice system irq softirq
  if [ -n "${nginx_pid:-}" ] && kill -0 "$nginx_pid" 2>/dev/null; then
    nginx=$(tree_ticks "$nginx_pid")
  fi
  read -r _ user nice system _ _ irq softirq _ </proc/stat
  echo "$nginx $(cpu_ticks "$upstream_pid") $((user + nice + system + irq + softirq))"
}

# CPU s per 1,000 events of Nginx, the upstream and the whole machine into ARRAYNAME,
# from two others_ticks readings.
# shellcheck disable=SC2034 # o is the caller's array
others_cpu() { # ARRAYNAME BEFORE AFTER EVENTS
  local -n o=$1
  local before after
  read -ra before <<<"$2"
  read -ra after <<<"$3"
  o["nginx_cpu_per_k"]="-"
  o["upstream_cpu_per_k"]="-"
  o["machine_cpu_per_k"]="-"
  [ "$4" -gt 0 ] || return 0
  o["machine_cpu_per_k"]=$(calc %.3f "(${after[2]} - ${before[2]}) / $(getconf CLK_TCK) / $4 * 1000")
  [ "${after[0]}" = 0 ] \
    || o["nginx_cpu_per_k"]=$(calc %.3f "(${after[0]} - ${before[0]}) / $(getconf CLK_TCK) / $4 * 1000")
  o["upstream_cpu_per_k"]=$(calc %.3f "(${after[1]} - ${before[1]}) / $(getconf CLK_TCK) / $4 * 1000")
}

# CPU ticks of the measured processes' threads, summed by thread name: "name=ticks ..."
# (xhubd: tokio-rt-worker, its runtime's threads: HTTP in and out, and the blocking
# pool's reads of the spool; spool-writer; spool-checkpoin; log-writer. Linux keeps 15
# characters of a thread's name).
thread_ticks() {
  local pid task stat fields name
  declare -A by_name=()
  for pid in ${measured_pids:-$xhubd_pid}; do
    for task in /proc/"$pid"/task/*; do
      stat=$(<"$task/stat") || continue
      name=${stat#*(}
      name=${name%%)*}
      name=${name// /_}
      read -ra fields <<<"${stat##*) }"
      by_name[$name]=$((${by_name[$name]:-0} + fields[11] + fields[12]))
    done
  done
  for name in "${!by_name[@]}"; do printf '%s=%s ' "$name" "${by_name[$name]}"; done
}

# Bytes the measured processes had sent towards storage (/proc/PID/io: write_bytes less
# cancelled_write_bytes, pages dirtied then dropped before they were written, as a log
# file cut short). Counted when a page is dirtied: a checkpoint after the load is not in.
written_bytes() {
  local pid total=0
  for pid in ${measured_pids:-$xhubd_pid}; do
    total=$((total + $(awk '/^write_bytes:/ { w = $2 } /^cancelled_write_bytes:/ { c = $2 }
      END { printf "%.0f\n", w - c }' "/proc/$pid/io")))
  done
  echo "$total"
}

# The xhubd processes a load measures: xhubd_pid, or all of measured_pids.
xhubd_ticks() {
  local pid total=0
  for pid in ${measured_pids:-$xhubd_pid}; do total=$((total + $(cpu_ticks "$pid"))); done
  echo "$total"
}

# CPU of the PostgreSQL cluster: the postmaster with the children it reaped (cutime,
# cstime), and its live children (backends, WAL writer, checkpointer, ...).
postgres_ticks() {
  tree_ticks "$(head -n 1 "$pg_dir/data/postmaster.pid")"
}

declare -A base xhub_c ceiling relay xhub_b ceiling_load xhub_b_load ceiling_tls xhub_b_tls backlog fan \
  xhub_c_pg xhub_b_pg1 xhub_b_pg2
declare -A peer_express peer_webhook
# The load generator of run_load: wrk with bench/sign.lua, or bench-load (same bodies,
# same WRKSTATS line) with load_args (its TLS files, --requests).
load_tool=wrk
load_args=()
run_load() { # URL OUTFILE ARRAYNAME: runs the load, parses the WRKSTATS line
  local -n stats=$3
  local kv kvs=() others_before
  others_before=$(others_ticks)
  if [ "$load_tool" = wrk ]; then
    timeout $(($(seconds "$DURATION") + 60)) \
      env BENCH_APP_SECRET="$secret" BODY_BYTES="$BODY_BYTES" BODY_SHAPE="${BODY_SHAPE:-user}" \
      wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/sign.lua "$1" >"$2"
  else
    timeout $(($(seconds "$DURATION") + 60)) \
      env BENCH_APP_SECRET="$secret" "$load_bin" --threads "$THREADS" \
      --connections "$CONNECTIONS" --duration "$DURATION" --body-bytes "$BODY_BYTES" \
      "${load_args[@]}" "$1" >"$2" 2>&1
  fi
  read -ra kvs < <(sed -n 's/^WRKSTATS //p' "$2") || true
  if [ ${#kvs[@]} -eq 0 ]; then
    echo "no WRKSTATS line from $load_tool:" >&2
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
  others_cpu "$3" "$others_before" "$(others_ticks)" "${stats["ok"]}"
}

secret="bench-$RANDOM$RANDOM$RANDOM"
failures=()

# The bench upstream, shared by every load: TCP for wrk and xhubd, a Unix socket for
# Nginx in the ceiling load.
upstream_port=$(free_port)
BENCH_UPSTREAM_DELAY_MS=$UPSTREAM_DELAY_MS \
  "$upstream_bin" "$HOST:$upstream_port" "$tmp/upstream.sock" >"$tmp/upstream.out" &
upstream_pid=$!
pids+=("$upstream_pid")
wait_listening "$upstream_pid" "$upstream_port" bench-upstream

# The allocator's settings of the shipped unit (systemd/xhubd.service), so that xhubd runs
# here as it does there: each Environment=MALLOC_...=VALUE line (one unquoted setting per
# line, as the unit writes them).
xhubd_env=()
while IFS= read -r setting; do
  xhubd_env+=("$setting")
done < <(sed -n 's/^Environment=\(MALLOC_[A-Z_]*=.*\)$/\1/p' systemd/xhubd.service)
[ "${#xhubd_env[@]}" -gt 0 ] || { echo "no allocator settings in systemd/xhubd.service" >&2; exit 1; }

# With DEDUP_PREFILL: a new SQLite spool in STATE_DIR that already remembers that many
# identities; with DEAD_PREFILL, that keeps that many dead events received 2 h ago.
# xhubd creates it (and stops once it listens), then sqlite3 adds the rows.
prefill_spool() { # STATE_DIR
  local pid
  env XHUBD_LOG=warn "$xhubd_bin" serve --listen "unix:$1.prefill.sock" \
    --upstream "http://$HOST:$upstream_port/" --verify-token bench --app-secret "$secret" \
    --state-dir "$1" 2>>"$LOG_FILE" &
  pid=$!
  pids+=("$pid")
  wait_socket "$pid" "$1.prefill.sock" "xhubd (creating a spool to prefill)" \
    || { tail -n 20 "$LOG_FILE" >&2; exit 1; }
  stop "$pid"
  echo "prefilling $1 with $DEDUP_PREFILL identities and $DEAD_PREFILL dead events" >&2
  sqlite3 "$1/spool.sqlite3" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n
    WHERE i < $DEDUP_PREFILL) INSERT INTO dedup (key, event_seq, seen_at) SELECT
    randomblob(16), -i, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) FROM n
    WHERE $DEDUP_PREFILL > 0;
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $DEAD_PREFILL)
    INSERT INTO events (seq, id, received_at, size, signature) SELECT -i, 'dead-' || i,
    CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - 7200000 + i, 2, 'sha256=0'
    FROM n WHERE $DEAD_PREFILL > 0;
    INSERT INTO bodies (seq, body) SELECT seq, x'7b7d' FROM events WHERE seq < 0;
    INSERT INTO deliveries (id, event_seq, destination, state, attempts, next_attempt_at,
      retry_from, finished_at, last_error)
    SELECT 'dead-' || -seq, seq, 'default/default', 2, 1, received_at, received_at,
      received_at, 'HTTP 404' FROM events WHERE seq < 0;"
}

start_xhubd() { # LISTEN STATE_DIR UPSTREAM_URL [ARG...]: starts xhubd, sets xhubd_pid
  if [ "$DEDUP_PREFILL$DEAD_PREFILL" != 00 ] && [ ! -e "$2" ] \
    && [[ " ${*:4} " != *" --spool "* ]]; then
    prefill_spool "$2"
  fi
  env "${xhubd_env[@]}" XHUBD_LOG="$LOG_LEVEL" "$xhubd_bin" serve \
    --listen "$1" \
    --upstream "$3" \
    --upstream-concurrency "$CONCURRENCY" \
    --verify-token bench \
    --app-secret "$secret" \
    --state-dir "$2" \
    ${DEDUP_WINDOW:+--dedup-window "$DEDUP_WINDOW"} \
    "${@:4}" \
    2>>"$LOG_FILE" &
  xhubd_pid=$!
  pids+=("$xhubd_pid")
}

wait_socket() { # PID PATH NAME
  for _ in $(seq 200); do
    kill -0 "$1" 2>/dev/null || { echo "$3 exited at start" >&2; return 1; }
    [ -S "$2" ] && return
    sleep 0.05
  done
  echo "$3 did not listen on $2" >&2
  return 1
}

# Loads xhubd (through URL) and measures acceptance, delivery until drained, RSS, CPU.
# FANOUT: deliveries per accepted event (default 1).
measure_xhubd() { # NAME URL ARRAYNAME [FANOUT]
  local -n m=$3
  local fanout=${4:-1}
  local before t_start t_load_end t_now deadline delivered cpu_start cpu_end rss_kib
  local pg_start pg_end others_start threads_start written_start kv name
  local drained=0
  before=$(upstream_count)
  echo "$1 for $DURATION" >&2
  cpu_start=$(xhubd_ticks)
  threads_start=$(thread_ticks)
  written_start=$(written_bytes)
  others_start=$(others_ticks)
  [ -z "${measure_postgres:-}" ] || pg_start=$(postgres_ticks)
  t_start=$(now)
  run_load "$2" "$tmp/wrk-$3.txt" "$3"
  t_load_end=$(now)
  # Delivered: the upstream has at least every event wrk saw accepted (a few more may
  # have been accepted while wrk stopped with requests in flight).
  deadline=$(calc %.6f "$t_load_end + $DRAIN_TIMEOUT")
  while :; do
    delivered=$(($(upstream_count) - before))
    t_now=$(now)
    if [ "$delivered" -ge $((m[ok] * fanout)) ]; then drained=1; break; fi
    [ "$(calc %d "($t_now > $deadline)")" = 1 ] && break
    sleep 0.02
  done
  cpu_end=$(xhubd_ticks)
  others_cpu "$3" "$others_start" "$(others_ticks)" $((delivered / fanout))
  # Per thread name, CPU s per 1,000 events; and KiB written to storage per event.
  declare -A thread_start=()
  for kv in $threads_start; do thread_start[${kv%%=*}]=${kv#*=}; done
  m["threads"]=""
  m["written"]="-"
  if [ "$delivered" -gt 0 ]; then
    for kv in $(thread_ticks); do
      name=${kv%%=*}
      # A thread that did nothing in the load (the main thread) is left out.
      [ "${kv#*=}" != "${thread_start[$name]:-0}" ] || continue
      m["threads"]+="${m["threads"]:+, }$name $(calc %.3f "(${kv#*=} - ${thread_start[$name]:-0}) / $(getconf CLK_TCK) / ($delivered / $fanout) * 1000")"
    done
    m["written"]=$(calc %.2f "($(written_bytes) - $written_start) / 1024 / ($delivered / $fanout)")
  fi
  [ -z "${measure_postgres:-}" ] || pg_end=$(postgres_ticks)
  sleep 1 # the stragglers wrk did not wait for
  m["extra"]=$(($(upstream_count) - before - m[ok] * fanout))
  rss_kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$xhubd_pid/status")
  m["rss"]=$(calc %.1f "$rss_kib / 1024")
  if [ "$drained" = 1 ]; then
    m["delivered_rate"]=$(calc %.0f "$delivered / $fanout / ($t_now - $t_start)")
    m["deliveries_rate"]=$(calc %.0f "$delivered / ($t_now - $t_start)")
    m["drain"]=$(calc %.2f "$t_now - $t_load_end")
  else
    m["delivered_rate"]="-"
    m["drain"]="not drained ($delivered of ${m[ok]})"
    failures+=("$1: delivery did not drain within ${DRAIN_TIMEOUT}s")
  fi
  m["cpu_per_k"]="-"
  m["pg_cpu_per_k"]="-"
  if [ "$delivered" -gt 0 ]; then
    m["cpu_per_k"]=$(calc %.3f "($cpu_end - $cpu_start) / $(getconf CLK_TCK) / ($delivered / $fanout) * 1000")
    [ -z "${measure_postgres:-}" ] \
      || m["pg_cpu_per_k"]=$(calc %.3f "($pg_end - $pg_start) / $(getconf CLK_TCK) / ($delivered / $fanout) * 1000")
  fi
}

stop() { # PID
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# The shipped site file on PORT in front of SOCKET. Plain: made plain HTTP, no TLS and
# so no client certificate to check; everything else (upstream keep-alive, proxy
# snippet, body limits) as shipped. tls: as shipped, mutual TLS and the subject check
# included, with only the listen address, the certificate and key, the trust anchor
# (make_pki's files), the socket and the snippet's path substituted.
start_nginx() { # NAME PORT SOCKET[ SOCKET...] [tls]: sets nginx_pid
  local dir="$tmp/nginx-$1" user="" more=""
  # Several sockets: the first in the shipped server line, the others added after it.
  if [ "${3#* }" != "$3" ]; then
    more=${3#* }
    set -- "$1" "$2" "${3%% *}" "${@:4}"
  fi
  mkdir -p "$dir"
  if [ "${4:-}" = tls ]; then
    sed -e "s|listen 443 ssl;|listen $HOST:$2 ssl;|" \
      -e '/listen \[::\]:443 ssl;/d' \
      -e "/^[[:space:]]*ssl_certificate[[:space:]]/s|/etc/ssl/certs/webhooks.example.com.fullchain.pem;|$pki/server.pem;|" \
      -e "/^[[:space:]]*ssl_certificate_key[[:space:]]/s|/etc/ssl/private/webhooks.example.com.key;|$pki/server.key;|" \
      -e "/^[[:space:]]*ssl_client_certificate[[:space:]]/s|/etc/nginx/meta-webhooks-ca.pem;|$pki/client-ca.pem;|" \
      -e "s|unix:/run/xhubd/xhubd.sock|unix:$3|" \
      -e "s|include /etc/nginx/snippets/xhubd-proxy.conf;|include $PWD/nginx/xhubd-proxy.conf;|" \
      -e "s|/var/log/nginx/|$dir/|" \
      nginx/xhubd.conf >"$dir/site.conf"
    # Every path of the shipped file replaced: otherwise it changed and this needs to.
    if grep -v '^[[:space:]]*#' "$dir/site.conf" | grep -E -q '/etc/|/run/|/var/|443'; then
      echo "nginx/xhubd.conf: a path or port was not substituted for the TLS load:" >&2
      grep -v '^[[:space:]]*#' "$dir/site.conf" | grep -E '/etc/|/run/|/var/|443' >&2
      return 1
    fi
  else
    sed -e "s|listen 443 ssl;|listen $HOST:$2;|" \
      -e '/listen \[::\]:443 ssl;/d' \
      -e '/^[[:space:]]*ssl_/d' \
      -e '0,/default 0;/s//default 1;/' \
      -e "s|unix:/run/xhubd/xhubd.sock|unix:$3|" \
      -e "s|include /etc/nginx/snippets/xhubd-proxy.conf;|include $PWD/nginx/xhubd-proxy.conf;|" \
      -e "s|/var/log/nginx/|$dir/|" \
      nginx/xhubd.conf >"$dir/site.conf"
  fi
  if [ -n "$more" ]; then
    awk -v more="$more" '{ print }
      !added && /^[[:space:]]*server unix:/ {
        n = split(more, extra, " ")
        for (i = 1; i <= n; i++) print "    server unix:" extra[i] ";"
        added = 1
      }' "$dir/site.conf" >"$dir/site.conf.new"
    mv "$dir/site.conf.new" "$dir/site.conf"
  fi
  [ "$(id -u)" -ne 0 ] || user="user root;"
  cat >"$dir/nginx.conf" <<CONF
$user
worker_processes auto;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  include $dir/site.conf;
}
CONF
  "$nginx_bin" -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" \
    || { cat "$dir/error.log" >&2; return 1; }
  "$nginx_bin" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
  nginx_pid=$!
  pids+=("$nginx_pid")
  wait_listening "$nginx_pid" "$2" nginx
}

# A throw-away PKI in $pki: a server CA and, signed by it, a certificate for 127.0.0.1
# and localhost (bench-load trusts that CA); a client CA (Nginx's
# ssl_client_certificate, in Meta's CA's place) and, signed by it, a client certificate
# with Meta's subject CN=client.webhooks.fbclientcerts.com. ECDSA P-256 keys.
make_pki() {
  pki=$tmp/pki
  mkdir -p "$pki"
  (
    set -e
    cd "$pki"
    ca() { # NAME CN
      openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1.key" -out "$1.pem" -days 2 -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign
    }
    leaf() { # NAME CA CN EXTENSIONS
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1.key" -out "$1.csr" -subj "/CN=$3"
      printf '%b' "$4" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
        -days 2 -extfile "$1.ext" -out "$1.pem"
    }
    ca server-ca "xhubd bench server CA"
    leaf server server-ca localhost \
      'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n'
    ca client-ca "xhubd bench client CA"
    leaf client client-ca client.webhooks.fbclientcerts.com \
      'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n'
  ) >"$tmp/pki.log" 2>&1 || { cat "$tmp/pki.log" >&2; return 1; }
}

echo "baseline: wrk -> bench-upstream for $DURATION" >&2
run_load "http://$HOST:$upstream_port/" "$tmp/wrk-baseline.txt" base
sleep 0.5 # the stragglers wrk did not wait for

xhubd_port=$(free_port)
start_xhubd "$HOST:$xhubd_port" "$tmp/state-c" "http://$HOST:$upstream_port/"
wait_listening "$xhubd_pid" "$xhubd_port" xhubd || { tail -n 20 "$LOG_FILE" >&2; exit 1; }
measure_xhubd "C: wrk -> xhubd -> bench-upstream" "http://$HOST:$xhubd_port/" xhub_c
stop "$xhubd_pid"

# C again, alternating an earlier release's binary and this one.
compare=""
if [ -n "${BASELINE_XHUBD:-}" ]; then
  declare -A c_round
  prev_rates=() this_rates=() prev_cpu=() this_cpu=()
  for round in 1 2; do
    for which in prev this; do
      bin=$xhubd_bin
      [ "$which" = this ] || bin=$BASELINE_XHUBD
      xhubd_bin_saved=$xhubd_bin
      xhubd_bin=$bin
      xhubd_port=$(free_port)
      start_xhubd "$HOST:$xhubd_port" "$tmp/state-c-$which-$round" "http://$HOST:$upstream_port/"
      xhubd_bin=$xhubd_bin_saved
      wait_listening "$xhubd_pid" "$xhubd_port" xhubd || { tail -n 20 "$LOG_FILE" >&2; exit 1; }
      measure_xhubd "C ($which, round $round)" "http://$HOST:$xhubd_port/" c_round
      stop "$xhubd_pid"
      if [ "$which" = prev ]; then
        prev_rates+=("${c_round[rate]}"); prev_cpu+=("${c_round[cpu_per_k]}")
      else
        this_rates+=("${c_round[rate]}"); this_cpu+=("${c_round[cpu_per_k]}")
      fi
    done
  done
  median2() { calc %.0f "($1 + $2) / 2"; }
  prev_mid=$(median2 "${prev_rates[@]}")
  this_mid=$(median2 "${this_rates[@]}")
  compare="C alternated with $BASELINE_XHUBD: previous ${prev_rates[*]} events/s"
  compare+=" (CPU s per 1,000: ${prev_cpu[*]}), ${XHUBD_BIN:-this build} ${this_rates[*]}"
  compare+=" (${this_cpu[*]}); this / previous, mean of two: $(calc %.3f "$this_mid / $prev_mid")"
fi

# Peers: other receivers checking the same signatures, each loaded alone by the same
# wrk load; they store nothing durably and forward nothing.
peers_line=""
if [ "$PEERS" = 1 ]; then
  # POSTs BODY signed with KEY to URL; prints the status (000 when curl failed).
  peer_post() { # URL BODY KEY
    local sig
    sig=$(printf '%s' "$2" | openssl dgst -sha256 -hmac "$3" -r | cut -d' ' -f1)
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Content-Type: application/json' \
      -H "X-Hub-Signature-256: sha256=$sig" --data-binary "$2" "$1" || true
  }
  # The peer really checks signatures: 2xx for a body signed with the secret, not for
  # one signed with another key (else the run stops here).
  peer_signature_check() { # NAME URL
    local body='{"object":"user","entry":[{"id":"signature-check","time":0,"changed_fields":["photos"]}]}'
    local good bad
    good=$(peer_post "$2" "$body" "$secret")
    bad=$(peer_post "$2" "$body" "not-$secret")
    if [[ $good != 2?? ]] || [[ $bad == 2?? ]]; then
      echo "$1: a body signed with the secret got $good, one signed with another key" \
        "got $bad (expected 2xx, then not 2xx)" >&2
      exit 1
    fi
  }
  # Loads the peer PID (through URL) and measures acceptance, latency, peak RSS, and
  # CPU: PID's own with that of its children, reaped (webhook's commands) or running.
  # webhook answers before it runs the command, which then waits its turn: after the
  # load, the peer counts as done when it is idle (at most 1 tick of CPU in 0.25 s, no
  # child left), and its CPU is taken until then.
  measure_peer() { # NAME URL ARRAYNAME PID
    local -n p=$3
    local cpu_start cpu_prev cpu_now t_start t_load_end t_prev t_now deadline idle=0
    echo "$1 for $DURATION" >&2
    cpu_start=$(tree_ticks "$4")
    t_start=$(now)
    run_load "$2" "$tmp/wrk-$3.txt" "$3"
    t_load_end=$(now)
    deadline=$(calc %.6f "$t_load_end + $DRAIN_TIMEOUT")
    cpu_prev=$(tree_ticks "$4")
    t_prev=$(now)
    while :; do
      sleep 0.25
      cpu_now=$(tree_ticks "$4")
      t_now=$(now)
      if [ $((cpu_now - cpu_prev)) -le 1 ] && [ -z "$(pgrep -P "$4")" ]; then idle=1; break; fi
      [ "$(calc %d "($t_now > $deadline)")" = 1 ] && break
      cpu_prev=$cpu_now
      t_prev=$t_now
    done
    p["rss"]=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$4/status")
    p["cpu_per_k"]="-"
    p["delivered_rate"]="-"
    if [ "$idle" = 1 ]; then
      p["drain"]=$(calc %.2f "$t_prev - $t_load_end")
      p["delivered_rate"]=$(calc %.0f "${p[ok]} / ($t_prev - $t_start)")
    else
      p["drain"]="busy after ${DRAIN_TIMEOUT}s"
      failures+=("$1: still busy ${DRAIN_TIMEOUT}s after the load")
    fi
    [ "${p[ok]}" -eq 0 ] \
      || p["cpu_per_k"]=$(calc %.3f "($cpu_now - $cpu_start) / $(getconf CLK_TCK) / ${p[ok]} * 1000")
  }

  # express: installed from the committed lock file into the temporary directory.
  mkdir -p "$tmp/express"
  cp bench/peers/express/package.json bench/peers/express/package-lock.json \
    bench/peers/express/receiver.js "$tmp/express/"
  t_install=$(now)
  (cd "$tmp/express" && npm ci --omit=dev --no-audit --no-fund --prefer-offline) \
    >"$tmp/npm-ci.log" 2>&1 || { cat "$tmp/npm-ci.log" >&2; exit 1; }
  npm_seconds=$(calc %.1f "$(now) - $t_install")
  peer_port=$(free_port)
  APP_SECRET=$secret NODE_ENV=production node "$tmp/express/receiver.js" "$peer_port" "$HOST" \
    >"$tmp/express.out" 2>&1 &
  peer_pid=$!
  pids+=("$peer_pid")
  wait_listening "$peer_pid" "$peer_port" express || { cat "$tmp/express.out" >&2; exit 1; }
  peer_signature_check express "http://$HOST:$peer_port/"
  kept_before=$(curl -sf --max-time 5 "http://$HOST:$peer_port/count")
  measure_peer "express: wrk -> node (Express, events kept in memory)" \
    "http://$HOST:$peer_port/" peer_express "$peer_pid"
  peer_signature_check express "http://$HOST:$peer_port/" # still up, still checking
  kept=$(($(curl -sf --max-time 5 "http://$HOST:$peer_port/count") - kept_before))
  peer_express["extra"]=$((kept - peer_express[ok]))
  [ "$kept" -ge "${peer_express[ok]}" ] \
    || failures+=("express: $kept events kept of ${peer_express[ok]} accepted")
  stop "$peer_pid"
  sleep 0.5

  # webhook: the hooks file is a Go template that reads the secret from APP_SECRET.
  peer_port=$(free_port)
  APP_SECRET=$secret webhook -template -hooks bench/peers/webhook/hooks.json.tmpl \
    -ip "$HOST" -port "$peer_port" -hotreload=false >"$tmp/webhook.out" 2>&1 &
  peer_pid=$!
  pids+=("$peer_pid")
  wait_listening "$peer_pid" "$peer_port" webhook || { cat "$tmp/webhook.out" >&2; exit 1; }
  peer_signature_check webhook "http://$HOST:$peer_port/hooks/meta"
  measure_peer "webhook: wrk -> webhook (/bin/true per event)" \
    "http://$HOST:$peer_port/hooks/meta" peer_webhook "$peer_pid"
  peer_signature_check webhook "http://$HOST:$peer_port/hooks/meta" # still up, still checking
  # shellcheck disable=SC2034 # read through a nameref in the report
  peer_webhook["extra"]="-"
  stop "$peer_pid"
  sleep 0.5
  peers_line="express: Node.js $(node --version), Express $(node -p 'require(process.argv[1]).version' \
    "$tmp/express/node_modules/express/package.json") (npm ci took $npm_seconds s);"
  peers_line+=" webhook: $(webhook -version | sed 's/^webhook version //')"
fi

# Fan-out: one route, three destinations, narrowing.
fanout_line=""
if [ "$FANOUT" = 1 ]; then
  declare -A fan
  cat >"$tmp/fanout.toml" <<TOML
[[route]]
name = "wa"
path = "/"
verify_token = "bench"
app_secret = "$secret"
  [[route.destination]]
  name = "number-111"
  url = "http://$HOST:$upstream_port/a"
  concurrency = $CONCURRENCY
  match = { phone_number_id = "111" }
  [[route.destination]]
  name = "number-222"
  url = "http://$HOST:$upstream_port/b"
  concurrency = $CONCURRENCY
  match = { phone_number_id = "222" }
  [[route.destination]]
  name = "archive"
  url = "http://$HOST:$upstream_port/all"
  concurrency = $CONCURRENCY
TOML
  xhubd_port=$(free_port)
  env "${xhubd_env[@]}" XHUBD_LOG="$LOG_LEVEL" "$xhubd_bin" serve --listen "$HOST:$xhubd_port" \
    --config "$tmp/fanout.toml" --state-dir "$tmp/state-fanout" \
    ${DEDUP_WINDOW:+--dedup-window "$DEDUP_WINDOW"} 2>>"$LOG_FILE" &
  xhubd_pid=$!
  pids+=("$xhubd_pid")
  wait_listening "$xhubd_pid" "$xhubd_port" xhubd || { tail -n 20 "$LOG_FILE" >&2; exit 1; }
  BODY_SHAPE=whatsapp measure_xhubd "fan-out: wrk -> xhubd (3 destinations, 2 narrowed)" \
    "http://$HOST:$xhubd_port/" fan 3
  stop "$xhubd_pid"
  fanout_line="fan-out (1 route, 3 destinations, 2 narrowed and re-signed; WhatsApp batches"
  fanout_line+=" of two numbers): ${fan[rate]} events/s accepted, ${fan[delivered_rate]} events/s"
  fanout_line+=" = ${fan[deliveries_rate]:--} deliveries/s delivered, p50/p99/max ${fan[latency]} ms,"
  fanout_line+=" xhubd CPU ${fan[cpu_per_k]} s per 1,000 events, peak RSS ${fan[rss]} MiB"
  fanout_line+=" (C: ${xhub_c[rate]} events/s, ${xhub_c[cpu_per_k]} s per 1,000)"
fi

if [ "$WITH_NGINX" = 1 ]; then
  # A, A-relay and B, ROUNDS times in turn (A R B A R B ...); the table shows the last
  # round, a line every round's ratios and their medians.
  rounds_line=""
  rounds_relay=() rounds_p99=()
  for round in $(seq "$ROUNDS"); do
    round_label=""
    [ "$ROUNDS" = 1 ] || round_label=" (round $round of $ROUNDS)"
    nginx_port=$(free_port)
    start_nginx ceiling "$nginx_port" "$tmp/upstream.sock"
    echo "A${round_label}: wrk -> nginx -> bench-upstream for $DURATION" >&2
    run_load "http://$HOST:$nginx_port/webhook" "$tmp/wrk-ceiling.txt" ceiling
    stop "$nginx_pid"
    sleep 0.5

    "$relay_bin" "$tmp/relay-$round.sock" "http://$HOST:$upstream_port/" "$CONCURRENCY" >"$tmp/relay.out" &
    xhubd_pid=$!
    pids+=("$xhubd_pid")
    wait_socket "$xhubd_pid" "$tmp/relay-$round.sock" bench-relay
    nginx_port=$(free_port)
    start_nginx relay "$nginx_port" "$tmp/relay-$round.sock"
    measure_xhubd "A-relay${round_label}: wrk -> nginx -> bench-relay -> bench-upstream" \
      "http://$HOST:$nginx_port/webhook" relay
    stop "$nginx_pid"
    relay_counts=$(curl -sf --max-time 5 --unix-socket "$tmp/relay-$round.sock" http://relay/count || echo "? ?")
    stop "$xhubd_pid"
    [ "${relay_counts#* }" = 0 ] || failures+=("A-relay: ${relay_counts#* } bodies not forwarded")
    sleep 0.5

    start_xhubd "unix:$tmp/xhubd-$round.sock" "$tmp/state-b-$round" "http://$HOST:$upstream_port/"
    wait_socket "$xhubd_pid" "$tmp/xhubd-$round.sock" xhubd || { tail -n 20 "$LOG_FILE" >&2; exit 1; }
    nginx_port=$(free_port)
    start_nginx xhubd "$nginx_port" "$tmp/xhubd-$round.sock"
    measure_xhubd "B${round_label}: wrk -> nginx -> xhubd -> bench-upstream" \
      "http://$HOST:$nginx_port/webhook" xhub_b
    stop "$nginx_pid"
    stop "$xhubd_pid"
    rounds_relay+=("$(ratio %.3f "${xhub_b[rate]}" "${relay[rate]}")")
    rounds_p99+=("$(ratio %.2f "${xhub_b[p99_us]}" "${relay[p99_us]}")")
    rounds_line+="${rounds_line:+; }A ${ceiling[rate]}, A-relay ${relay[rate]}, B ${xhub_b[rate]}"
    rounds_line+=" (B / A-relay ${rounds_relay[-1]}, p99 ${rounds_p99[-1]} x)"
  done
fi

if [ "$WITH_TLS" = 1 ]; then
  # A and B again with bench-load: plain HTTP (A-load, B-load), then HTTPS with the
  # client certificate (A-tls, B-tls).
  make_pki
  load_tool=bench-load
  for variant in load tls; do
    mode=plain scheme=http what="plain HTTP" xhubd_args=()
    load_args=()
    if [ "$variant" = tls ]; then
      mode=tls scheme=https what="HTTPS+mTLS"
      xhubd_args=(--client-cn-header X-Client-Subject)
      load_args=(--cacert "$pki/server-ca.pem" --cert "$pki/client.pem" --key "$pki/client.key")
    fi
    sleep 0.5
    nginx_port=$(free_port)
    start_nginx "ceiling-$variant" "$nginx_port" "$tmp/upstream.sock" "$mode"
    if [ "$variant" = tls ]; then
      # The site really requires the client certificate: 403 without it.
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$pki/server-ca.pem" \
        -X POST --data '{}' "https://$HOST:$nginx_port/webhook" || true)
      [ "$code" = 403 ] || failures+=("A-tls: a request without a client certificate got $code, not 403")
    fi
    echo "A-$variant: bench-load -> nginx ($what) -> bench-upstream for $DURATION" >&2
    run_load "$scheme://$HOST:$nginx_port/webhook" "$tmp/load-ceiling-$variant.txt" \
      "ceiling_$variant"
    stop "$nginx_pid"
    sleep 0.5

    start_xhubd "unix:$tmp/xhubd-$variant.sock" "$tmp/state-b-$variant" \
      "http://$HOST:$upstream_port/" "${xhubd_args[@]}"
    wait_socket "$xhubd_pid" "$tmp/xhubd-$variant.sock" xhubd \
      || { tail -n 20 "$LOG_FILE" >&2; exit 1; }
    nginx_port=$(free_port)
    start_nginx "xhubd-$variant" "$nginx_port" "$tmp/xhubd-$variant.sock" "$mode"
    measure_xhubd "B-$variant: bench-load -> nginx ($what) -> xhubd -> bench-upstream" \
      "$scheme://$HOST:$nginx_port/webhook" "xhub_b_$variant"
    stop "$nginx_pid"
    stop "$xhubd_pid"
  done
  load_tool=wrk
  load_args=()
fi

if [ "$POSTGRES" = 1 ]; then
  # A throw-away cluster with Debian's defaults (synchronous_commit on, fsync on),
  # reached over TCP on the loopback, as a database on another host would be.
  pg_dir=$(mktemp -d -t xhubd-bench-pg.XXXXXX)
  [ "$(id -u)" -ne 0 ] || chown postgres "$pg_dir"
  pg_port=$(free_port)
  as_postgres "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust >"$tmp/initdb.log" 2>&1 \
    || { cat "$tmp/initdb.log" >&2; exit 1; }
  as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
    -o "-p $pg_port -k $pg_dir -c listen_addresses=$HOST -c shared_preload_libraries=pg_stat_statements" \
    start >/dev/null \
    || { cat "$pg_dir/server.log" >&2; exit 1; }
  pg_version=$("$pg_bin/postgres" --version)
  for db in spool_c spool_b1 spool_b2; do
    "$pg_bin/psql" -q -h "$pg_dir" -p "$pg_port" -U postgres -c "CREATE DATABASE $db"
  done
  "$pg_bin/psql" -q -h "$pg_dir" -p "$pg_port" -U postgres -c "CREATE EXTENSION pg_stat_statements"
  # Where the database's time went in a load: the statements run on DB, the most
  # expensive first, with their calls and execution time per event accepted.
  pg_profile() { # DB EVENTS
    "$pg_bin/psql" -q -h "$pg_dir" -p "$pg_port" -U postgres -A -F ' | ' -t -c "
      SELECT calls, round(total_exec_time::numeric), round((total_exec_time * 1000 / $2)::numeric, 1),
             left(regexp_replace(query, '\s+', ' ', 'g'), 70)
      FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$1')
      ORDER BY total_exec_time DESC LIMIT 8" | sed 's/^/| /; s/$/ |/'
  }
  pg_url() { echo "postgres://postgres@$HOST:$pg_port/$1?sslmode=disable"; }
  measure_postgres=1

  xhubd_port=$(free_port)
  start_xhubd "$HOST:$xhubd_port" "$tmp/state-c-pg" "http://$HOST:$upstream_port/" \
    --spool "$(pg_url spool_c)" --instance-name bench-c
  wait_listening "$xhubd_pid" "$xhubd_port" xhubd || { tail -n 20 "$LOG_FILE" >&2; exit 1; }
  measure_xhubd "C-pg: wrk -> xhubd (PostgreSQL spool) -> bench-upstream" \
    "http://$HOST:$xhubd_port/" xhub_c_pg
  stop "$xhubd_pid"
  # shellcheck disable=SC2034 # read through ${!profile} in the report
  pg_profile_c=$(pg_profile spool_c "${xhub_c_pg[ok]}")

  for n in 1 2; do
    sockets="" measured_pids=""
    for i in $(seq "$n"); do
      start_xhubd "unix:$tmp/xhubd-pg$n-$i.sock" "$tmp/state-b-pg$n-$i" \
        "http://$HOST:$upstream_port/" --spool "$(pg_url "spool_b$n")" --instance-name "bench-$i"
      wait_socket "$xhubd_pid" "$tmp/xhubd-pg$n-$i.sock" xhubd || { tail -n 20 "$LOG_FILE" >&2; exit 1; }
      sockets+="${sockets:+ }$tmp/xhubd-pg$n-$i.sock"
      measured_pids+="${measured_pids:+ }$xhubd_pid"
    done
    nginx_port=$(free_port)
    start_nginx "xhubd-pg$n" "$nginx_port" "$sockets"
    measure_xhubd "B-pg$n: wrk -> nginx -> $n xhubd (one PostgreSQL spool) -> bench-upstream" \
      "http://$HOST:$nginx_port/webhook" "xhub_b_pg$n"
    stop "$nginx_pid"
    for pid in $measured_pids; do stop "$pid"; done
    measured_pids=""
  done
  # shellcheck disable=SC2034 # read through ${!profile} in the report
  pg_profile_b2=$(pg_profile spool_b2 "${xhub_b_pg2[ok]}")
  measure_postgres=""
fi

catch_up=""
if [ "$CATCH_UP" = 1 ]; then
  # xhubd accepts while nothing listens on its upstream's port; then a second
  # bench-upstream starts there, and the backlog's delivery is timed.
  declare -A backlog
  down_port=$(free_port)
  xhubd_port=$(free_port)
  # While it is down, the destination gets one probe at a time on the retry backoff:
  # at most 2 s apart here, so that the figure is the backlog's delivery, not the wait
  # for the next probe (at most --retry-max-delay, 5 min by default).
  start_xhubd "$HOST:$xhubd_port" "$tmp/state-catch-up" "http://$HOST:$down_port/" \
    --retry-max-delay 2s
  wait_listening "$xhubd_pid" "$xhubd_port" xhubd || { tail -n 20 "$LOG_FILE" >&2; exit 1; }
  catch_up_tool=""
  if [ -n "$CATCH_UP_EVENTS" ]; then
    # Exactly CATCH_UP_EVENTS requests, all to be accepted (checked with the others).
    echo "catch-up: bench-load -> xhubd (upstream down) for $CATCH_UP_EVENTS events" >&2
    load_tool=bench-load
    load_args=(--requests "$CATCH_UP_EVENTS")
    DURATION=${CATCH_UP_TIMEOUT}s run_load "http://$HOST:$xhubd_port/" \
      "$tmp/load-backlog.txt" backlog
    load_tool=wrk
    load_args=()
    catch_up_tool=", bench-load"
    if [ "${backlog[ok]}" -lt "$CATCH_UP_EVENTS" ]; then
      failures+=("catch-up: ${backlog[ok]} of $CATCH_UP_EVENTS events accepted")
    fi
  else
    echo "catch-up: wrk -> xhubd (upstream down) for $CATCH_UP_DURATION" >&2
    DURATION=$CATCH_UP_DURATION run_load "http://$HOST:$xhubd_port/" "$tmp/wrk-backlog.txt" backlog
  fi
  sleep 1 # the stragglers wrk did not wait for
  rss_pending=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$xhubd_pid/status")
  t_up=$(now)
  "$upstream_bin" "$HOST:$down_port" >"$tmp/upstream-late.out" &
  late_pid=$!
  pids+=("$late_pid")
  wait_listening "$late_pid" "$down_port" bench-upstream
  deadline=$(calc %.6f "$t_up + $CATCH_UP_TIMEOUT")
  while :; do
    got=$(curl -sf --max-time 5 "http://$HOST:$down_port/count")
    t_now=$(now)
    [ "$got" -ge "${backlog[ok]}" ] && break
    if [ "$(calc %d "($t_now > $deadline)")" = 1 ]; then
      failures+=("catch-up: $got of ${backlog[ok]} delivered after ${CATCH_UP_TIMEOUT}s")
      break
    fi
    sleep 0.05
  done
  catch_up="catch-up: ${backlog[ok]} events accepted with the upstream down (${backlog[rate]}/s$catch_up_tool"
  if [ -z "$CATCH_UP_EVENTS" ]; then
    # The same load as C, whose upstream is up: acceptance while it is down, over up.
    catch_up+=", $(calc %.2f "${backlog[rate]} / ${xhub_c[rate]}") x C's ${xhub_c[rate]}/s with it up"
  fi
  catch_up+=");"
  catch_up+=" $got delivered $(calc %.2f "$t_now - $t_up") s after it came back:"
  catch_up+=" $(calc %.0f "$got / ($t_now - $t_up)") events/s; xhubd's RSS with them all pending"
  catch_up+=" $rss_pending MiB, peak $(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' \
    "/proc/$xhubd_pid/status") MiB"
  stop "$xhubd_pid"
fi

mkdir -p bench/out
report=bench/out/run-$(date +%Y%m%dT%H%M%S).txt
{
  version=$(git describe --always --dirty 2>/dev/null || echo '?')
  which_xhubd="$version ($PROFILE build)"
  [ -z "${XHUBD_BIN:-}" ] || which_xhubd="$XHUBD_BIN (with the benchmark's own programs of $version, $PROFILE build)"
  [ "$DEDUP_PREFILL" = 0 ] || which_xhubd+=" on spools remembering $DEDUP_PREFILL identities"
  [ "$DEAD_PREFILL" = 0 ] || which_xhubd+=" keeping $DEAD_PREFILL old dead events"
  [ -z "$DEDUP_WINDOW" ] || which_xhubd+=", --dedup-window $DEDUP_WINDOW"
  echo "xhubd $which_xhubd, $(nproc) cores;" \
    "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $BODY_BYTES-byte signed bodies;" \
    "--upstream-concurrency $CONCURRENCY, XHUBD_LOG=$LOG_LEVEL ${xhubd_env[*]}"
  row() { printf '| %-34s' "$1"; shift; printf ' | %-22s' "$@"; printf ' |\n'; }
  pick() { local -n a=$1; [ "$WITH_NGINX" = 1 ] || [ "$1" = xhub_c ] || [ "$1" = base ] \
    || { echo "-"; return; }; echo "${a[$2]:--}"; }
  echo "(the daemon: xhubd, or bench-relay in A-relay)"
  row "figure" "baseline: upstream" "C: xhubd" "A: nginx" "A-relay: nginx + relay" \
    "B: nginx + xhubd"
  row "----------------------------------" "----------------------" \
    "----------------------" "----------------------" "----------------------" \
    "----------------------"
  # Each row of the tables: its label, then the key of the figure in a load's array.
  fields=("accepted events/s (2xx / duration):rate"
    "delivered events/s (load to drain):delivered_rate"
    "drain time after load (s):drain" "latency p50 / p99 / max (ms):latency"
    "2xx answers:ok" "non-2xx answers:status" "socket errors conn/read/write/tmo:socket"
    "delivered beyond 2xx (in flight):extra" "peak RSS of the daemon (MiB):rss"
    "daemon CPU s per 1,000 events:cpu_per_k"
    "Nginx CPU s per 1,000 events:nginx_cpu_per_k"
    "upstream CPU s per 1,000 events:upstream_cpu_per_k"
    "machine CPU s per 1,000 events:machine_cpu_per_k"
    "KiB the daemon wrote per event:written")
  for f in "${fields[@]}"; do
    row "${f%%:*}" "$(pick base "${f##*:}")" "$(pick xhub_c "${f##*:}")" \
      "$(pick ceiling "${f##*:}")" "$(pick relay "${f##*:}")" "$(pick xhub_b "${f##*:}")"
  done
  echo
  for load in "C:xhub_c" "A-relay:relay" "B:xhub_b"; do
    declare -n l=${load#*:}
    [ -z "${l[threads]:-}" ] || echo "${load%%:*}, the daemon's threads, CPU s per 1,000 events: ${l[threads]}"
    unset -n l
  done
  echo "C / baseline, accepted events/s: $(calc %.3f "${xhub_c[rate]} / ${base[rate]}")"
  if [ "$WITH_NGINX" = 1 ]; then
    echo "B / A, accepted events/s: $(calc %.3f "${xhub_b[rate]} / ${ceiling[rate]}")"
    echo "B / A, p99 latency: $(calc %.2f "${xhub_b[p99_us]} / ${ceiling[p99_us]}")"
    echo "B / A-relay, accepted events/s: $(ratio %.3f "${xhub_b[rate]}" "${relay[rate]}")"
    echo "B / A-relay, p99 latency: $(ratio %.2f "${xhub_b[p99_us]}" "${relay[p99_us]}")"
    echo "A-relay / A, events/s (what the third hop costs): $(ratio %.3f "${relay[rate]}" "${ceiling[rate]}")"
    if [ "$ROUNDS" -gt 1 ]; then
      echo "rounds, in turn: $rounds_line"
      echo "B / A-relay over $ROUNDS rounds, median: events/s $(median "${rounds_relay[@]}"), p99 $(median "${rounds_p99[@]}") x"
    fi
  fi
  if [ "$WITH_TLS" = 1 ]; then
    echo
    echo "bench-load -c$CONNECTIONS -d$DURATION ($THREADS threads), same bodies; -tls: HTTPS" \
      "with a client certificate through the shipped site file (B-tls's xhubd with" \
      "--client-cn-header X-Client-Subject)"
    get() { local -n a=$1; echo "${a[$2]:--}"; }
    row "figure" "A-load: nginx" "B-load: nginx + xhubd" "A-tls: nginx mTLS" "B-tls: mTLS + xhubd"
    row "----------------------------------" "----------------------" \
      "----------------------" "----------------------" "----------------------"
    for f in "${fields[@]}"; do
      row "${f%%:*}" "$(get ceiling_load "${f##*:}")" "$(get xhub_b_load "${f##*:}")" \
        "$(get ceiling_tls "${f##*:}")" "$(get xhub_b_tls "${f##*:}")"
    done
    echo
    echo "B-tls / A-tls, accepted events/s: $(calc %.3f "${xhub_b_tls[rate]} / ${ceiling_tls[rate]}")"
    echo "B-tls / A-tls, p99 latency: $(calc %.2f "${xhub_b_tls[p99_us]} / ${ceiling_tls[p99_us]}")"
    echo "B-load / A-load, accepted events/s: $(calc %.3f "${xhub_b_load[rate]} / ${ceiling_load[rate]}")"
    echo "B-load / A-load, p99 latency: $(calc %.2f "${xhub_b_load[p99_us]} / ${ceiling_load[p99_us]}")"
    echo "A-tls / A-load, requests/s (TLS at the ceiling): $(calc %.3f "${ceiling_tls[rate]} / ${ceiling_load[rate]}")"
    echo "B-tls / B-load, accepted events/s (TLS in front of xhubd): $(calc %.3f "${xhub_b_tls[rate]} / ${xhub_b_load[rate]}")"
    echo "A-load / A, requests/s (bench-load against wrk, same Nginx, plain HTTP):" \
      "$(calc %.3f "${ceiling_load[rate]} / ${ceiling[rate]}")"
  fi
  if [ "$POSTGRES" = 1 ]; then
    echo
    echo "PostgreSQL spool: $pg_version, a throw-away cluster on this machine with its" \
      "default settings, over TCP; wrk as above; B-pg: the shipped site (plain HTTP) with" \
      "an upstream block of 1 or 2 xhubd sockets"
    get() { local -n a=$1; echo "${a[$2]:--}"; }
    row "figure" "C: SQLite" "C-pg: PostgreSQL" "B-pg1: nginx + 1" "B-pg2: nginx + 2"
    row "----------------------------------" "----------------------" \
      "----------------------" "----------------------" "----------------------"
    for f in "${fields[@]}" "PostgreSQL CPU s per 1,000 events:pg_cpu_per_k"; do
      row "${f%%:*}" "$(get xhub_c "${f##*:}")" "$(get xhub_c_pg "${f##*:}")" \
        "$(get xhub_b_pg1 "${f##*:}")" "$(get xhub_b_pg2 "${f##*:}")"
    done
    echo "(B-pg2: CPU and RSS of both instances together, RSS of the first)"
    echo
    echo "C-pg / C, accepted events/s: $(calc %.3f "${xhub_c_pg[rate]} / ${xhub_c[rate]}")"
    [ "${xhub_c_pg[delivered_rate]}" = - ] \
      || echo "C-pg / C, delivered events/s: $(calc %.3f "${xhub_c_pg[delivered_rate]} / ${xhub_c[delivered_rate]}")"
    echo "B-pg2 / B-pg1, accepted events/s: $(calc %.3f "${xhub_b_pg2[rate]} / ${xhub_b_pg1[rate]}")"
    for load in C-pg:c B-pg2:b2; do
      profile=pg_profile_${load#*:}
      echo
      echo "PostgreSQL's time in ${load%:*}: the costliest statements (execution only)"
      echo "| calls | ms | us per event | statement |"
      echo "| --- | --- | --- | --- |"
      echo "${!profile}"
    done
  fi
  if [ "$PEERS" = 1 ]; then
    echo
    echo "Peers, each loaded alone by the same wrk load, one hop as C; neither stores anything" \
      "durably nor forwards anything: express keeps the events in an array in memory," \
      "webhook runs /bin/true for each (C: xhubd's spool on SQLite, every event delivered" \
      "to the upstream; its CPU is xhubd's own, delivery included)"
    peer_row() {
      printf '| %-26s | %-8s | %-9s | %-9s | %-24s | %-7s | %-7s | %-13s | %-15s | %-14s | %-10s |\n' "$@"
    }
    peer_row "load" "events/s" "to done/s" "drain (s)" "latency p50 / p99 / max" "2xx" \
      "non-2xx" "socket errors" "CPU s per 1,000" "peak RSS (MiB)" "beyond 2xx"
    peer_row "--------------------------" "--------" "---------" "---------" \
      "------------------------" "-------" "-------" "-------------" "---------------" \
      "--------------" "----------"
    for load in "C: xhubd:xhub_c" "express: Node.js + Express:peer_express" \
      "webhook: adnanh/webhook:peer_webhook"; do
      declare -n l=${load##*:}
      peer_row "${load%:*}" "${l[rate]}" "${l[delivered_rate]}" "${l[drain]}" "${l[latency]}" \
        "${l[ok]}" "${l[status]}" "${l[socket]}" "${l[cpu_per_k]}" "${l[rss]}" "${l[extra]}"
      unset -n l
    done
    echo "(events/s: 2xx answers per second of load; to done/s: the 2xx events per second from" \
      "the load's start until C's upstream had them all, or until the peer was idle (webhook" \
      "runs the command after its 200); drain: seconds from the load's end to then; latency" \
      "in ms; CPU: the daemon's own, with the commands webhook ran; beyond 2xx: events" \
      "delivered (C) or kept (express) beyond wrk's 2xx answers, in flight when it stopped)"
    echo "$peers_line"
    for peer in express webhook; do
      declare -n l=peer_$peer
      echo "C / $peer, accepted events/s: $(ratio %.3f "${xhub_c[rate]}" "${l[rate]}");" \
        "to done: $(ratio %.3f "${xhub_c[delivered_rate]}" "${l[delivered_rate]}");" \
        "CPU per event: $(ratio %.3f "${xhub_c[cpu_per_k]}" "${l[cpu_per_k]}")"
      [ "$WITH_NGINX" = 0 ] \
        || echo "B (Nginx in front) / $peer, accepted events/s: $(ratio %.3f "${xhub_b[rate]}" "${l[rate]}");" \
          "to done: $(ratio %.3f "${xhub_b[delivered_rate]}" "${l[delivered_rate]}")"
      unset -n l
    done
  fi
  [ -z "$catch_up" ] || echo "$catch_up"
  [ -z "$compare" ] || echo "$compare"
  [ -z "$fanout_line" ] || echo "$fanout_line"
} | tee "$report"

for name in base xhub_c ceiling relay xhub_b ceiling_load xhub_b_load ceiling_tls xhub_b_tls backlog fan \
  xhub_c_pg xhub_b_pg1 xhub_b_pg2 peer_express peer_webhook; do
  declare -n r=$name
  if [ -z "${r[ok]:-}" ]; then unset -n r; continue; fi
  [ "${r[status]}" -eq 0 ] || failures+=("$name: ${r[status]} non-2xx answers")
  # A peer that times out under the load shows it in its row; that is its figure, not a
  # failure of the run. Any other socket error is.
  errors=${r[socket_errors]}
  [[ $name != peer_* ]] || errors=$((errors - r[timeout]))
  [ "$errors" -eq 0 ] || failures+=("$name: socket errors ${r[socket]}")
  unset -n r
done
if [ ${#failures[@]} -gt 0 ]; then
  printf 'FAIL: %s\n' "${failures[@]}" >&2
  echo "last lines of xhubd's log ($LOG_FILE):" >&2
  tail -n 20 "$LOG_FILE" >&2
  exit 1
fi
