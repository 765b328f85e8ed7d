#!/usr/bin/env bash
# Compares `sagitta broker` with Mosquitto, rumqttd and a bare relay (bench/relay) under
# `sagitta bench` on this machine: issue 13, "Performance".
#
# Brokers (BROKERS): sagitta (release build), mosquitto (2.0.x), rumqttd (0.20, from PATH or
# ~/.cargo/bin; skipped with a warning if absent), relay (sagitta-relay: a deliberately bare
# MQTT 3.1.1 forwarder with no sessions, limits or validation, the machine's limit; QoS 0
# and 1 only). Each run gets a fresh broker process on a fresh port (so its peak RSS, VmHWM,
# belongs to that run), and the order of the brokers rotates from run to run.
#
# Scenarios (SCENARIOS), 64-byte payloads, MQTT 3.1.1:
#   fanin    50 publishers -> 1 subscriber on bench/fanin/+   closed loop, --inflight 20000
#   fanout   1 publisher -> 50 subscribers                    closed loop, --inflight 20000
#   pairs    100 publisher/subscriber pairs                   closed loop, --inflight 20000
#            (each at every QoS in QOS)
#   latency  100 pairs at a fixed total of LATENCY_RATE msg/s (20000), QoS 0 and 1: p50, p99
#   idle     IDLE_CONNS (10000) idle connections opened at IDLE_RATE/s (5000): the connect
#            rate achieved, CONNACK latency and the broker's RSS per connection. A finite
#            rate on purpose: opening thousands at once (IDLE_RATE=0) overflows the listen
#            queue, and the 1 s SYN retransmissions then decide the rate, not the broker.
# Every run passes --broker-pid, so the bench reports the broker's CPU time and peak RSS
# over the measured part of the run, and its own CPU time (a saturated bench is visible).
#
# Comparable limits where the brokers have them: INFLIGHT (1024, Sagitta's default) QoS 1/2
# messages in flight to each client and 100 000 queued per client for sagitta and Mosquitto
# (Mosquitto's defaults are 20 and 1000). The in-flight limit bounds QoS 1/2 throughput to
# one subscriber at INFLIGHT / round trip: with 256, fan-in QoS 1 is capped near 370k msg/s
# on the 2-core machine of docs/performance.md. Each bench publisher keeps at most WINDOW (256) QoS 1/2 publishes unacknowledged:
# an MQTT 3.1.1 client cannot learn the broker's limit, and Mosquitto drops incoming QoS 1/2
# messages beyond its max_inflight_messages (the bench's default window, 1024, made it lose
# messages). rumqttd 0.20 has no such settings: its outgoing window is fixed at 100 messages
# per connection and its queue is a commit log per topic (router.max_segment_size x
# max_segment_count). The relay has no limits at all.
#
# Persistence (issue 6): the brokers sagitta-always, sagitta-periodic and sagitta-never run
# Sagitta with its store (a fresh data directory per run) and that `sync` mode, and
# mosquitto-persist runs Mosquitto with `persistence true` (its defaults: a snapshot every
# 1800 s and at exit). With PERSISTENT=1 the bench's subscribers keep persistent sessions
# (clean session 0), so their QoS 1/2 messages go through the store. `sagitta` alone is
# in memory. Example: BROKERS="sagitta-always sagitta-periodic sagitta-never sagitta
# mosquitto-persist mosquitto" SCENARIOS="pairs fanin" QOS=1 PERSISTENT=1 bench/compare.sh
#
# Usage: bench/compare.sh [OUT_DIR]
# Environment: BROKERS="sagitta mosquitto rumqttd relay", SCENARIOS="fanin fanout pairs
#   latency idle", QOS="0 1 2", RUNS=3, WINDOW=256, INFLIGHT=1024, DURATION=10 (seconds per run), PORT=18900 (base;
#   each run uses the next port), IDLE_CONNS=10000, IDLE_RATE=5000, LATENCY_RATE=20000,
#   BENCH_THREADS (default: the bench's default, one per CPU), PERSISTENT (0),
#   SAGITTA / RELAY / MOSQUITTO / RUMQTTD = paths of the programs (default: a release build
#   under CARGO_TARGET_DIR or target/, made by this script; mosquitto or /usr/sbin/mosquitto;
#   rumqttd on PATH or ~/.cargo/bin/rumqttd).
# Output: OUT_DIR/results.tsv (every run), OUT_DIR/summary.md (medians; also on stdout), and
# each run's JSON summary, bench stderr and broker log.
# Needs: bash, python3, coreutils timeout. Every process it starts is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

BROKERS=${BROKERS:-"sagitta mosquitto rumqttd relay"}
SCENARIOS=${SCENARIOS:-"fanin fanout pairs latency idle"}
QOS=${QOS:-"0 1 2"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
PORT=${PORT:-18900}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_RATE=${IDLE_RATE:-5000}
LATENCY_RATE=${LATENCY_RATE:-20000}
WINDOW=${WINDOW:-256}
INFLIGHT=${INFLIGHT:-1024}
BENCH_THREADS=${BENCH_THREADS:-}
PERSISTENT=${PERSISTENT:-0}
OUT=${1:-$(mktemp -d /tmp/bench-compare.XXXXXX)}
mkdir -p "$OUT"

say() { echo "compare: $*" >&2; }

# --- programs -------------------------------------------------------------------------------
target=${CARGO_TARGET_DIR:-target}
if [ -z "${SAGITTA:-}" ] || [ -z "${RELAY:-}" ]; then
  say "building sagitta and sagitta-relay (release)"
  cargo build --release --locked -p sagitta -p sagitta-relay >&2
fi
SAGITTA=${SAGITTA:-$target/release/sagitta}
RELAY=${RELAY:-$target/release/sagitta-relay}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
RUMQTTD=${RUMQTTD:-$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")}
[ -x "$SAGITTA" ] || { say "no sagitta at $SAGITTA"; exit 2; }

program_of() {
  case "$1" in
    sagitta | sagitta-always | sagitta-periodic | sagitta-never) echo "$SAGITTA" ;;
    mosquitto | mosquitto-persist) echo "$MOSQUITTO" ;;
    rumqttd) echo "$RUMQTTD" ;;
    relay) echo "$RELAY" ;;
    *) echo "" ;;
  esac
}
available=""
for b in $BROKERS; do
  p=$(program_of "$b")
  if [ -z "$p" ]; then
    say "unknown broker $b (use sagitta, sagitta-always, sagitta-periodic, sagitta-never, mosquitto, mosquitto-persist, rumqttd, relay)"; exit 2
  elif [ -x "$p" ]; then
    available="$available $b"
  else
    case "$b" in
      mosquitto) say "warning: skipping mosquitto: not found (apt-get install mosquitto)" ;;
      rumqttd) say "warning: skipping rumqttd: not found (cargo install rumqttd --version 0.20.0)" ;;
      *) say "warning: skipping $b: $p not found" ;;
    esac
  fi
done
read -r -a brokers <<<"$available"
[ "${#brokers[@]}" -gt 0 ] || { say "no broker to run"; exit 2; }

# --- file descriptors -------------------------------------------------------------------------
hard=$(ulimit -Hn)
want=20000
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then want=$hard; fi
ulimit -n "$want"
if [ $((IDLE_CONNS + 200)) -gt "$want" ]; then
  IDLE_CONNS=$((want - 200))
  say "warning: open-file limit $want: idle scenario reduced to $IDLE_CONNS connections"
fi

# --- processes --------------------------------------------------------------------------------
broker_pid=""
bench_pid=""
stop_pid() { # pid: TERM, then KILL after 3 s; reaps it
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  [ -z "$bench_pid" ] || stop_pid "$bench_pid"
  [ -z "$broker_pid" ] || stop_pid "$broker_pid"
  bench_pid=""
  broker_pid=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

cat >"$OUT/sagitta.toml" <<EOF
persistence = false
max_inflight = $INFLIGHT
max_queued_messages = 100000
max_connections = 100000
sys_interval = 0
EOF

wait_port() { # port pid
  local i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  say "broker on port $1 did not come up"
  return 1
}

start_broker() { # name port log
  local name=$1 port=$2 log=$3
  case "$name" in
    sagitta)
      RUST_LOG=warn "$SAGITTA" broker --listen "127.0.0.1:$port" --config "$OUT/sagitta.toml" \
        >"$log" 2>&1 &
      ;;
    sagitta-*)
      rm -rf "$OUT/data"
      RUST_LOG=warn "$SAGITTA" broker --listen "127.0.0.1:$port" --config "$OUT/sagitta.toml" \
        --data-dir "$OUT/data" --sync "${name#sagitta-}" >"$log" 2>&1 &
      ;;
    mosquitto | mosquitto-persist)
      local persist="persistence false"
      if [ "$name" = mosquitto-persist ]; then
        rm -rf "$OUT/mosquitto-data"
        mkdir -p "$OUT/mosquitto-data"
        persist="persistence true
persistence_location $OUT/mosquitto-data/"
      fi
      cat >"$OUT/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
$persist
max_inflight_messages $INFLIGHT
max_queued_messages 100000
max_connections -1
log_type error
log_type warning
EOF
      "$MOSQUITTO" -c "$OUT/mosquitto.conf" >"$log" 2>&1 &
      ;;
    rumqttd)
      # rumqttd 0.20's format (see its rumqttd.toml). next_connection_delay_ms = 0: no pause
      # between accepts. max_inflight_count is how many packets a connection reads per batch;
      # connection_timeout_ms is a u16 (at most 65535). No console, prometheus or websocket.
      cat >"$OUT/rumqttd.toml" <<EOF
id = 0

[router]
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 10000
    dynamic_filters = true
EOF
      "$RUMQTTD" --quiet --config "$OUT/rumqttd.toml" >"$log" 2>&1 &
      ;;
    relay)
      "$RELAY" --listen "127.0.0.1:$port" >"$log" 2>&1 &
      ;;
  esac
  broker_pid=$!
  wait_port "$port" "$broker_pid"
}

# --- runs -------------------------------------------------------------------------------------
results="$OUT/results.tsv"
printf 'broker\tscenario\tqos\trun\texit\tpublish_rate\tdelivery_rate\tdelivered\texpected\tp50_ms\tp99_ms\tlosses\terrors\tbroker_cpu_s\tbroker_cpu_pct\tbroker_rss_kb\tbroker_peak_rss_kb\tbench_cpu_s\tbench_cpu_pct\tbench_threads\tbench_saturated\tconnected\tconnect_rate\trss_per_conn_kb\tload1\n' >"$results"

run_one() { # broker scenario qos run port
  local broker=$1 scenario=$2 qos=$3 run=$4 port=$5 args limit load rc=0
  local name="$broker-$scenario-q$qos-$run"
  limit=$((DURATION + 60))
  case "$scenario" in
    fanin) args=(fanin --pubs 50 --subs 1 -q "$qos" --inflight 20000 --window "$WINDOW") ;;
    fanout) args=(fanout --pubs 1 --subs 50 -q "$qos" --inflight 20000 --window "$WINDOW") ;;
    pairs) args=(pairs --pubs 100 -q "$qos" --inflight 20000 --window "$WINDOW") ;;
    latency) args=(pairs --pubs 100 -q "$qos" --rate "$LATENCY_RATE" --window "$WINDOW") ;;
    idle)
      args=(conn -c "$IDLE_CONNS" --connect-rate "$IDLE_RATE")
      limit=$((DURATION + 180))
      ;;
  esac
  [ -z "$BENCH_THREADS" ] || args+=(--threads "$BENCH_THREADS")
  [ "$PERSISTENT" = 0 ] || [ "$scenario" = idle ] || args+=(--persistent)
  load=$(cut -d' ' -f1 /proc/loadavg)
  start_broker "$broker" "$port" "$OUT/$name.broker.log" || true
  # Bounded: the bench stops by itself after DURATION (+ at most 5 s of drain); timeout is
  # the safety net. In the background so that the trap can stop it.
  timeout -k 5 "$limit" "$SAGITTA" bench "${args[@]}" -s 64 -d "$DURATION" -p "$port" \
    -t "bench/$scenario" --broker-pid "$broker_pid" --json --quiet \
    >"$OUT/$name.json" 2>"$OUT/$name.err" &
  bench_pid=$!
  wait "$bench_pid" || rc=$?
  bench_pid=""
  cleanup
  python3 - "$OUT/$name.json" "$broker" "$scenario" "$qos" "$run" "$rc" "$load" \
    >>"$results" <<'PY'
import json, sys
path, broker, scenario, qos, run, rc, load = sys.argv[1:]
try:
    with open(path) as f:
        d = json.load(f)
except Exception:
    d = {}
conn = d.get("connect") or {}
# idle: the CONNACK latency in the latency columns.
lat = (conn.get("latency_ms") if conn else d.get("latency_ms")) or {}
def f(v, fmt="%.3f"):
    return "NA" if v is None else fmt % v
row = [broker, scenario, qos, run, rc,
       f(d.get("publish_rate"), "%.0f"), f(d.get("delivery_rate"), "%.0f"),
       f(d.get("delivered"), "%d"), f(d.get("expected"), "%d"),
       f(lat.get("p50")), f(lat.get("p99")),
       f(d.get("losses"), "%d"), f(d.get("errors"), "%d"),
       f(d.get("broker_cpu_s"), "%.2f"), f(d.get("broker_cpu_pct"), "%.0f"),
       f(d.get("broker_rss_kb"), "%d"), f(d.get("broker_peak_rss_kb"), "%d"),
       f(d.get("bench_cpu_s"), "%.2f"), f(d.get("bench_cpu_pct"), "%.0f"),
       f(d.get("bench_threads"), "%d"), str(d.get("bench_saturated", "NA")).lower(),
       f(conn.get("connected"), "%d"), f(conn.get("rate"), "%.0f"),
       f(conn.get("broker_rss_per_connection_kb"), "%.2f"), load]
print("\t".join(row))
PY
  tail -n 1 "$results" | awk -F'\t' '{
    extra = ($2 == "idle") ? sprintf(", %s connected at %s conn/s, CONNACK p99 %s ms, %s KiB/conn", $22, $23, $11, $24) \
      : sprintf(", %s msg/s delivered, p50 %s p99 %s ms, losses %s", $7, $10, $11, $12)
    printf "%s %s q%s #%s: exit %s%s, errors %s, broker CPU %s%% peak RSS %s kB, bench CPU %s%%\n",
      $1, $2, $3, $4, $5, extra, $13, $15, $17, $19 }' >&2
}

n=0
for scenario in $SCENARIOS; do
  case "$scenario" in
    fanin | fanout | pairs) levels=$QOS ;;
    latency) levels=$(for q in $QOS; do [ "$q" = 2 ] || echo "$q"; done) ;;
    idle) levels="-" ;;
    *) say "unknown scenario $scenario (use fanin fanout pairs latency idle)"; exit 2 ;;
  esac
  for qos in $levels; do
    for run in $(seq 1 "$RUNS"); do
      # Rotate the order of the brokers from run to run.
      count=${#brokers[@]}
      for i in $(seq 0 $((count - 1))); do
        broker=${brokers[$(((i + run - 1) % count))]}
        if [ "$broker" = relay ] && [ "$qos" = 2 ]; then continue; fi
        n=$((n + 1))
        q=$qos
        [ "$q" != "-" ] || q=0
        run_one "$broker" "$scenario" "$q" "$run" $((PORT + n))
        sleep 1
      done
    done
  done
done

# --- summary ----------------------------------------------------------------------------------
python3 - "$results" "$DURATION" "$RUNS" "${brokers[*]}" <<'PY' | tee "$OUT/summary.md"
import csv, statistics, sys
path, duration, runs, brokers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
rows = list(csv.DictReader(open(path), delimiter="\t"))

def med(b, s, q, k):
    v = []
    for r in rows:
        if (r["broker"], r["scenario"], r["qos"]) == (b, s, q):
            try:
                v.append(float(r[k]))
            except ValueError:
                pass
    return statistics.median(v) if v else None

def fmt(v, spec):
    return "–" if v is None else format(v, spec)

def ratio(a, b):
    return "–" if a is None or not b else f"{a / b:.2f}"

keys = []
for r in rows:
    if (r["scenario"], r["qos"]) not in keys:
        keys.append((r["scenario"], r["qos"]))

print(f"# Broker comparison: {runs} run(s) of {duration} s, medians\n")
print("| scenario | QoS | broker | runs | delivered msg/s | p50 ms | p99 ms | losses | errors "
      "| peak RSS MiB | broker CPU % | msg per broker CPU-s | bench CPU % | conn/s | KiB/conn |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for s, q in keys:
    for b in brokers:
        n = sum(1 for r in rows if (r["broker"], r["scenario"], r["qos"]) == (b, s, q))
        if n == 0:
            continue
        m = lambda k: med(b, s, q, k)
        rate, cpu = m("delivery_rate"), m("broker_cpu_s")
        per_cpu = None
        if s != "idle" and rate is not None and m("broker_cpu_pct"):
            per_cpu = rate / (m("broker_cpu_pct") / 100)
        peak = m("broker_peak_rss_kb")
        idle = s == "idle"
        print(f"| {s} | {'–' if idle else q} | {b} | {n} "
              f"| {'–' if idle else fmt(rate, ',.0f')} "
              f"| {fmt(m('p50_ms'), '.2f')} | {fmt(m('p99_ms'), '.2f')} "
              f"| {fmt(m('losses'), '.0f')} | {fmt(m('errors'), '.0f')} "
              f"| {fmt(None if peak is None else peak / 1024, '.1f')} "
              f"| {fmt(m('broker_cpu_pct'), '.0f')} | {fmt(per_cpu, ',.0f')} "
              f"| {fmt(m('bench_cpu_pct'), '.0f')} "
              f"| {fmt(m('connect_rate'), ',.0f') if idle else '–'} "
              f"| {fmt(m('rss_per_conn_kb'), '.2f') if idle else '–'} |")

others = [b for b in ("mosquitto", "rumqttd", "relay") if b in brokers]
if "sagitta" in brokers and others:
    print()
    print("Ratios sagitta / other (medians). msg/s and conn/s: above 1 is better for sagitta; "
          "p99 and KiB/conn: below 1 is better.\n")
    print("| scenario | QoS | metric | sagitta | " + " | ".join(f"sagitta/{o}" for o in others) + " |")
    print("|---|---|---|---|" + "---|" * len(others))
    for s, q in keys:
        metrics = {"latency": [("p99 ms", "p99_ms", ".2f")],
                   "idle": [("conn/s", "connect_rate", ",.0f"),
                            ("KiB/conn", "rss_per_conn_kb", ".2f")]}.get(
                       s, [("msg/s", "delivery_rate", ",.0f")])
        for label, k, spec in metrics:
            a = med("sagitta", s, q, k)
            cells = [ratio(a, med(o, s, q, k)) for o in others]
            print(f"| {s} | {'–' if s == 'idle' else q} | {label} | {fmt(a, spec)} | "
                  + " | ".join(cells) + " |")

sat = [r for r in rows if r["bench_saturated"] == "true"]
bad = [r for r in rows if r["exit"] != "0"]
print()
print("Closed-loop scenarios: at most 20000 deliveries in flight, so their latency includes that "
      "queue; `latency` runs at a fixed rate. For `idle`, p50/p99 are the CONNACK latency. "
      "The relay does no QoS 2 (no row). Peak RSS is "
      "VmHWM of a fresh broker process per run; CPU % is of one core over the measured part.")
if sat:
    print(f"\nWarning: the bench used >90% of its threads in {len(sat)} run(s) "
          "(it may have been the limit): "
          + ", ".join(f"{r['broker']}/{r['scenario']}/q{r['qos']}#{r['run']}" for r in sat))
if bad:
    print(f"\nRuns with a non-zero exit (losses, errors or timeout; see their .err/.json): "
          + ", ".join(f"{r['broker']}/{r['scenario']}/q{r['qos']}#{r['run']} (exit {r['exit']})"
                      for r in bad))
PY
say "all results: $OUT"
