#!/usr/bin/env bash
# Soak test (issue 9; not run by CI): mixed load against a broker for MINUTES, with connections
# of random clients killed all along, then a delivery check and the broker's memory over time.
#
# By default it starts our broker (release build, persistence on: a fresh store in a temporary
# directory, sync periodic) on a free local port, and samples its RSS (/proc/PID/status VmRSS)
# every SAMPLE seconds. The load is `cargo run --release -p sagitta-client --example soak`
# (crates/client/examples/soak.rs): PUBLISHERS publishers, one third each at QoS 0, 1 and 2,
# RATE messages/s each, and SUBSCRIBERS subscribers on soak/# with persistent sessions (MQTT
# 5.0 and 3.1.1 alternately, publishers too); every KILL_MS milliseconds a random client's TCP
# connection is cut (no DISCONNECT), and that client reconnects and resumes its session.
#
# PASS needs all of:
#   - every QoS 1 message acknowledged to its publisher reached every subscriber at least once,
#     every QoS 2 message exactly once (and no QoS 2 message arrived twice at all), no publish
#     failed;
#   - memory flat: after the first minute (warm-up), the broker's RSS never exceeds the first
#     sample after warm-up by more than 25 % or 32 MiB, whichever is larger (with BROKER set,
#     or runs under two minutes, RSS is not judged);
#   - the broker still running at the end, and stopping cleanly on SIGTERM (exit 0).
#
# Usage: bench/soak.sh [MINUTES (default 10)]
# Environment: PUBLISHERS=6 SUBSCRIBERS=4 RATE=200 KILL_MS=1500 SAMPLE=5 PORT (default: a
#   free one), BROKER=host:port (use a running broker instead: no RSS sampling), SAGITTA (path
#   of the sagitta binary; default: built here), OUT (directory for logs and rss.tsv; default
#   a temporary one, kept).
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${1:-10}
PUBLISHERS=${PUBLISHERS:-6}
SUBSCRIBERS=${SUBSCRIBERS:-4}
RATE=${RATE:-200}
KILL_MS=${KILL_MS:-1500}
SAMPLE=${SAMPLE:-5}
OUT=${OUT:-$(mktemp -d /tmp/sagitta-soak.XXXXXX)}
mkdir -p "$OUT"
SECONDS_TOTAL=$((MINUTES * 60))
TARGET=${CARGO_TARGET_DIR:-target}

echo "==> building (release)"
cargo build --release --quiet -p sagitta
cargo build --release --quiet -p sagitta-client --example soak
SAGITTA=${SAGITTA:-$TARGET/release/sagitta}
SOAK=$TARGET/release/examples/soak

BROKER_PID=
SAMPLER_PID=
cleanup() {
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null || true
  [ -n "$BROKER_PID" ] && kill -9 "$BROKER_PID" 2>/dev/null || true
}
trap cleanup EXIT

if [ -z "${BROKER:-}" ]; then
  PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  BROKER=127.0.0.1:$PORT
  cat >"$OUT/sagitta.toml" <<EOF
listen = ["$BROKER"]
data_dir = "$OUT/data"
persistence = true
sync = "periodic"
# Subscribers are cut off for up to a second or so: keep what they miss meanwhile.
max_queued_messages = 100000
EOF
  "$SAGITTA" broker --config "$OUT/sagitta.toml" --log-level warn >"$OUT/broker.log" 2>&1 &
  BROKER_PID=$!
  up=0
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  if [ $up = 0 ]; then
    echo "the broker did not start:"; cat "$OUT/broker.log"; exit 1
  fi
  echo "==> broker pid $BROKER_PID on $BROKER (store in $OUT/data)"
  printf 'seconds\trss_kib\n' >"$OUT/rss.tsv"
  (
    t0=$(date +%s)
    while kill -0 "$BROKER_PID" 2>/dev/null; do
      rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$BROKER_PID/status" 2>/dev/null || true)
      [ -n "$rss" ] && printf '%s\t%s\n' "$(($(date +%s) - t0))" "$rss" >>"$OUT/rss.tsv"
      sleep "$SAMPLE"
    done
  ) &
  SAMPLER_PID=$!
else
  echo "==> using the broker at $BROKER (RSS not sampled)"
fi

echo "==> soak for $MINUTES min: $PUBLISHERS publishers x $RATE msg/s, $SUBSCRIBERS subscribers, a kill every $KILL_MS ms"
load_ok=1
"$SOAK" "$BROKER" "$SECONDS_TOTAL" --publishers "$PUBLISHERS" --subscribers "$SUBSCRIBERS" \
  --rate "$RATE" --kill-every "$KILL_MS" | tee "$OUT/soak.log" || load_ok=0

broker_ok=1
mem_ok=1
if [ -n "$BROKER_PID" ]; then
  kill "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  SAMPLER_PID=
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    echo "broker died during the run (see $OUT/broker.log)"
    broker_ok=0
  else
    kill -TERM "$BROKER_PID"
    code=0
    wait "$BROKER_PID" || code=$?
    BROKER_PID=
    if [ "$code" != 0 ]; then
      echo "broker exited $code on SIGTERM (see $OUT/broker.log)"
      broker_ok=0
    fi
  fi
  echo
  echo "broker RSS (MiB) every ~${SAMPLE}s:"
  awk 'NR > 1 { printf "%s%.1f", (n++ % 12 ? " " : (n > 1 ? "\n  " : "  ")), $2 / 1024 } END { print "" }' "$OUT/rss.tsv"
  verdict=$(awk -v total="$SECONDS_TOTAL" '
    NR == 1 { next }
    $1 >= 60 && base == "" { base = $2 }
    $1 >= 60 { if ($2 > max) max = $2 }
    { all_max = ($2 > all_max ? $2 : all_max) }
    END {
      if (total < 120 || base == "") { printf "not judged (run under 2 min); peak %.1f MiB\n", all_max / 1024; exit 0 }
      limit = base * 1.25; if (base + 32768 > limit) limit = base + 32768
      printf "after warm-up: first %.1f MiB, peak %.1f MiB, limit %.1f MiB: %s\n", base / 1024, max / 1024, limit / 1024, (max <= limit ? "flat" : "GROWING")
      exit (max <= limit ? 0 : 1)
    }' "$OUT/rss.tsv") || mem_ok=0
  echo "memory: $verdict"
fi

echo
echo "deliveries: $([ $load_ok = 1 ] && echo ok || echo FAILED)   memory: $([ $mem_ok = 1 ] && echo ok || echo FAILED)   broker: $([ $broker_ok = 1 ] && echo ok || echo FAILED)   (logs in $OUT)"
if [ $load_ok = 1 ] && [ $mem_ok = 1 ] && [ $broker_ok = 1 ]; then
  echo "SOAK PASS"
else
  echo "SOAK FAIL"
  exit 1
fi
