#!/usr/bin/env bash
# Restart recovery (issue 6): fills a store with RETAINED retained messages (1 000 000) and
# SESSIONS persistent sessions (100 000; one subscription and one queued QoS 1 message each),
# then starts `sagitta broker` on it RUNS times (3) and reports, per start: the time until
# the listener accepts connections, what the broker logged (store read, state restored),
# its resident memory once serving (VmRSS) and its peak (VmHWM), and the store's size.
# The last start is ended with SIGKILL and followed by one more start (recovery after a
# crash).
#
# Usage: bench/recovery.sh [OUT_DIR]   Environment: RETAINED, SESSIONS, RUNS, PORT (18990).
set -euo pipefail
cd "$(dirname "$0")/.."
RETAINED=${RETAINED:-1000000}
SESSIONS=${SESSIONS:-100000}
RUNS=${RUNS:-3}
PORT=${PORT:-18990}
OUT=${1:-$(mktemp -d /tmp/bench-recovery.XXXXXX)}
mkdir -p "$OUT"
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -p sagitta -p sagitta-broker --example recovery >&2
SAGITTA=$target/release/sagitta
DATA=$OUT/data
rm -rf "$DATA"
"$target/release/examples/recovery" "$DATA" "$RETAINED" "$SESSIONS"
echo "store: $(du -sh "$DATA" | cut -f1)"

pid=""
trap '[ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true' EXIT

start() { # label signal
  local log="$OUT/$1.log" t0 t1 i
  t0=$(date +%s.%N)
  RUST_LOG=info "$SAGITTA" broker --listen "127.0.0.1:$PORT" --data-dir "$DATA" >"$log" 2>&1 &
  pid=$!
  # The listener opens once the state is restored.
  for i in $(seq 1 60000); do
    if grep -q "listening" "$log"; then break; fi
    kill -0 "$pid" 2>/dev/null || { echo "broker exited; see $log"; exit 1; }
    sleep 0.01
  done
  t1=$(date +%s.%N)
  local rss hwm
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  printf '%s: serving after %.2f s, RSS %d MiB, peak %d MiB; %s; %s\n' "$1" \
    "$(echo "$t1 - $t0" | bc)" $((rss / 1024)) $((hwm / 1024)) \
    "$(grep -o 'store opened.*' "$log" | sed 's/\x1b\[[0-9;]*m//g')" \
    "$(grep -o 'state restored.*' "$log" | sed 's/\x1b\[[0-9;]*m//g')"
  kill "-$2" "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
}

for run in $(seq 1 "$RUNS"); do
  if [ "$run" = "$RUNS" ]; then start "start-$run" KILL; else start "start-$run" TERM; fi
done
start "after-kill" TERM
echo "store after: $(du -sh "$DATA" | cut -f1); logs in $OUT"
