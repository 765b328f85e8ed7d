#!/usr/bin/env bash
# A Sagitta cluster on this machine, without containers: three nats-server processes forming
# one NATS cluster with JetStream, and three Sagitta brokers (`sagitta broker --config`), each
# with a `[cluster]` table naming the NATS servers, all on 127.0.0.1.
#
#   scripts/cluster-local.sh start               # NATS cluster, then the brokers (again:
#                                                # starts what is not running, e.g. after
#                                                # a kill -9 of one node)
#   scripts/cluster-local.sh start --nats-only   # only the NATS cluster (run brokers yourself)
#   scripts/cluster-local.sh status              # processes, NATS health and meta leader,
#                                                # brokers' /ready
#   scripts/cluster-local.sh stop                # brokers (SIGTERM: clean shutdown), then NATS
#
# Ports of node i (1 to NODES) on 127.0.0.1: a base plus i - 1, each base overridable with
# its environment variable:
#
#   MQTT_PORT_BASE=1883         the brokers' MQTT listeners (n1 1883, n2 1884, n3 1885)
#   HTTP_PORT_BASE=8081         the brokers' [http]: admin API, metrics, /ready (8081-8083)
#   NATS_PORT_BASE=4222         NATS clients, i.e. the brokers (4222-4224)
#   NATS_ROUTE_PORT_BASE=6222   NATS cluster routes (6222-6224)
#   NATS_HTTP_PORT_BASE=8222    NATS monitoring: /healthz, /jsz, /varz... (8222-8224)
#
# Other settings:
#
#   NODES=3                  brokers and NATS servers (1 to 9)
#   CLUSTER_DIR=./cluster-local   state: generated configs, logs, pid files, broker stores
#                            (n1/data), JetStream stores (nats1/jetstream); kept by `stop`,
#                            so `start` resumes the same state; delete it to start afresh
#   CLUSTER_NAME=sagitta     the brokers' [cluster] name (prefix of their NATS subjects and
#                            JetStream names)
#   REPLICAS=3               the brokers' [cluster] replicas (at most NODES; default 3, or
#                            NODES if fewer)
#   SAGITTA=...              the sagitta binary; default: target/release/sagitta (under
#                            $CARGO_TARGET_DIR if set), built with
#                            `cargo build --release -p sagitta` if missing (an existing one
#                            is used as it is: rebuild it after changing the code)
#   NATS_SERVER=...          the nats-server binary; default: Debian's (apt-get install
#                            nats-server), /usr/sbin/nats-server
#   SAGITTA_LOG_LEVEL=info   the brokers' --log-level
#
# Give every command the same environment (stop and status find the processes by NODES and
# CLUSTER_DIR, and report on the same ports).
#
# Debian's nats-server package runs a system server on 127.0.0.1:4222 where systemd runs:
# `systemctl stop nats-server`, or another NATS_PORT_BASE, if `start` says 4222 is in use.
#
# Then, for example:
#   sagitta sub -h 127.0.0.1 -p 1884 -t '#' -v           # subscribe on n2
#   sagitta pub -h 127.0.0.1 -p 1883 -t hello -m world   # publish on n1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)

NODES=${NODES:-3}
CLUSTER_DIR=${CLUSTER_DIR:-./cluster-local}
CLUSTER_NAME=${CLUSTER_NAME:-sagitta}
REPLICAS=${REPLICAS:-}
MQTT_PORT_BASE=${MQTT_PORT_BASE:-1883}
HTTP_PORT_BASE=${HTTP_PORT_BASE:-8081}
NATS_PORT_BASE=${NATS_PORT_BASE:-4222}
NATS_ROUTE_PORT_BASE=${NATS_ROUTE_PORT_BASE:-6222}
NATS_HTTP_PORT_BASE=${NATS_HTTP_PORT_BASE:-8222}
SAGITTA_LOG_LEVEL=${SAGITTA_LOG_LEVEL:-info}
# The NATS cluster's own name (nats-server's `cluster { name }`), not the brokers'.
NATS_CLUSTER_NAME="sagitta-local"
# How long start waits for the NATS cluster, then for each broker (seconds).
START_TIMEOUT=30
# How long stop waits for a broker's clean shutdown (the broker's own limit is 30 s) and for
# a NATS server, before SIGKILL.
BROKER_STOP_TIMEOUT=35
NATS_STOP_TIMEOUT=10

die() {
  printf 'cluster-local: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

check_settings() {
  case $NODES in [1-9]) ;; *) die "NODES must be 1 to 9, not '$NODES'" ;; esac
  REPLICAS=${REPLICAS:-$((NODES < 3 ? NODES : 3))}
  case $REPLICAS in [1-9]) ;; *) die "REPLICAS must be 1 to 9, not '$REPLICAS'" ;; esac
  if [ "$REPLICAS" -gt "$NODES" ]; then
    die "REPLICAS=$REPLICAS is more than NODES=$NODES (JetStream cannot place the replicas)"
  fi
  local var
  for var in MQTT_PORT_BASE HTTP_PORT_BASE NATS_PORT_BASE NATS_ROUTE_PORT_BASE NATS_HTTP_PORT_BASE; do
    case ${!var} in '' | *[!0-9]*) die "$var must be a port number, not '${!var}'" ;; esac
  done
  # start creates the state directory; the other commands only read it.
  if [ "${1:-}" = create ]; then mkdir -p "$CLUSTER_DIR"; fi
  if [ -d "$CLUSTER_DIR" ]; then CLUSTER_DIR=$(cd "$CLUSTER_DIR" && pwd); fi
}

# --- ports, names, paths (node i = 1..NODES) ------------------------------------------------

mqtt_port() { echo $((MQTT_PORT_BASE + $1 - 1)); }
http_port() { echo $((HTTP_PORT_BASE + $1 - 1)); }
nats_port() { echo $((NATS_PORT_BASE + $1 - 1)); }
nats_route_port() { echo $((NATS_ROUTE_PORT_BASE + $1 - 1)); }
nats_http_port() { echo $((NATS_HTTP_PORT_BASE + $1 - 1)); }
broker_dir() { echo "$CLUSTER_DIR/n$1"; }
nats_dir() { echo "$CLUSTER_DIR/nats$1"; }

# --- binaries ---------------------------------------------------------------------------------

find_nats_server() {
  if [ -n "${NATS_SERVER:-}" ]; then
    [ -x "$NATS_SERVER" ] || die "NATS_SERVER=$NATS_SERVER is not an executable"
  elif command -v nats-server >/dev/null; then
    NATS_SERVER=$(command -v nats-server)
  elif [ -x /usr/sbin/nats-server ]; then
    NATS_SERVER=/usr/sbin/nats-server
  else
    die "nats-server not found: install Debian's package (sudo apt-get install nats-server) or set NATS_SERVER"
  fi
}

find_sagitta() {
  if [ -n "${SAGITTA:-}" ]; then
    [ -x "$SAGITTA" ] || die "SAGITTA=$SAGITTA is not an executable"
    return
  fi
  SAGITTA=${CARGO_TARGET_DIR:-$ROOT/target}/release/sagitta
  case $SAGITTA in /*) ;; *) SAGITTA=$ROOT/$SAGITTA ;; esac
  if [ ! -x "$SAGITTA" ]; then
    echo "building $SAGITTA (cargo build --release -p sagitta)"
    (cd "$ROOT" && cargo build --release -p sagitta) || die "cargo build failed"
    [ -x "$SAGITTA" ] || die "cargo build did not produce $SAGITTA"
  fi
}

# --- processes --------------------------------------------------------------------------------

# live PID: whether process PID exists and is not a zombie (our processes are reparented when
# this script exits, and a zombie lingers until its new parent reaps it).
live() {
  kill -0 "$1" 2>/dev/null || return 1
  case $(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) in
    Z | X) return 1 ;;
  esac
}

# alive PIDFILE NAME: whether the pid in PIDFILE is a live process whose command line mentions
# NAME (a pid reused by another program does not count).
alive() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  case $pid in '' | *[!0-9]*) return 1 ;; esac
  live "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# launch PIDFILE LOG COMMAND...: runs COMMAND in the background, immune to the terminal's
# hangup, its output appended to LOG, its pid in PIDFILE.
launch() {
  local pidfile=$1 log=$2
  shift 2
  printf '\n=== %s: %s\n' "$(date '+%F %T')" "$*" >>"$log"
  nohup "$@" </dev/null >>"$log" 2>&1 &
  echo $! >"$pidfile"
}

# terminate PIDFILE NAME TIMEOUT: SIGTERM, then SIGKILL after TIMEOUT seconds.
terminate() {
  local pidfile=$1 name=$2 timeout=$3 pid waited=0
  if alive "$pidfile" "$name"; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    while live "$pid" && [ "$waited" -lt $((timeout * 10)) ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    if live "$pid"; then
      echo "  $name (pid $pid) still runs after ${timeout}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

# in_use PORT: whether something accepts connections on 127.0.0.1:PORT.
in_use() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# http_get PORT PATH: prints the status code, a newline and the body (curl-less: bash's
# /dev/tcp); fails if nothing answers within 3 s.
http_get() {
  # shellcheck disable=SC2016 # the inner script expands its own arguments
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
    response=$(cat <&3)
    status=${response#HTTP/* }
    printf "%s\n%s\n" "${status%% *}" "${response#*$'"'"'\r\n\r\n'"'"'}"
  ' _ "$1" "$2" 2>/dev/null
}

# The JetStream meta leader that NATS server i names (empty if none).
meta_leader() {
  http_get "$(nats_http_port "$1")" /jsz | sed -n 's/.*"leader": *"\([^"]*\)".*/\1/p' | head -n 1
}

show_log_tail() {
  printf -- '--- the end of %s:\n' "$1" >&2
  tail -n 20 "$1" >&2 || true
}

# --- configs ----------------------------------------------------------------------------------

write_nats_config() {
  local i=$1 dir routes="" j
  dir=$(nats_dir "$i")
  mkdir -p "$dir/jetstream"
  {
    echo "# Written by scripts/cluster-local.sh ($(date '+%F %T'))."
    echo "server_name: \"nats$i\""
    echo "listen: \"127.0.0.1:$(nats_port "$i")\""
    echo "http: \"127.0.0.1:$(nats_http_port "$i")\""
    echo "jetstream {"
    echo "  store_dir: \"$dir/jetstream\""
    echo "}"
    if [ "$NODES" -gt 1 ]; then
      for j in $(seq 1 "$NODES"); do
        [ "$j" = "$i" ] && continue
        routes="$routes${routes:+, }\"nats-route://127.0.0.1:$(nats_route_port "$j")\""
      done
      echo "cluster {"
      echo "  name: \"$NATS_CLUSTER_NAME\""
      echo "  listen: \"127.0.0.1:$(nats_route_port "$i")\""
      echo "  routes: [$routes]"
      echo "}"
    fi
  } >"$dir/nats.conf"
}

write_broker_config() {
  local i=$1 dir servers="" j k
  dir=$(broker_dir "$i")
  mkdir -p "$dir/data"
  # Every NATS server, this node's own first.
  for k in $(seq 0 $((NODES - 1))); do
    j=$(((i - 1 + k) % NODES + 1))
    servers="$servers${servers:+, }\"nats://127.0.0.1:$(nats_port "$j")\""
  done
  cat >"$dir/sagitta.toml" <<EOF
# Written by scripts/cluster-local.sh ($(date '+%F %T')): node n$i of $NODES.
listen = ["127.0.0.1:$(mqtt_port "$i")"]
data_dir = "$dir/data"

[http]
bind = "127.0.0.1:$(http_port "$i")"

[cluster]
node = "n$i"
servers = [$servers]
name = "$CLUSTER_NAME"
replicas = $REPLICAS
EOF
}

# --- start ------------------------------------------------------------------------------------

check_ports_free() {
  local port taken=""
  for port in "$@"; do
    if in_use "$port"; then taken="$taken $port"; fi
  done
  if [ -n "$taken" ]; then
    die "port(s)$taken in use on 127.0.0.1 (another broker or NATS server? Debian's nats-server service listens on 4222: \`systemctl stop nats-server\`); choose other ports with MQTT_PORT_BASE, HTTP_PORT_BASE, NATS_PORT_BASE, NATS_ROUTE_PORT_BASE, NATS_HTTP_PORT_BASE"
  fi
}

# NATS server i's /healthz: "ok", or why not.
nats_health() {
  local answer
  answer=$(http_get "$(nats_http_port "$1")" /healthz) || { echo "no answer"; return; }
  if [ "$(head -n 1 <<<"$answer")" = 200 ]; then
    echo ok
  else
    sed -n 's/.*"error": *"\([^"]*\)".*/\1/p' <<<"$answer" | head -n 1
  fi
}

# Waits until every NATS server says /healthz ok (JetStream current with a meta leader) and
# all name the same meta leader.
wait_nats() {
  local deadline=$((SECONDS + START_TIMEOUT)) i ready leader first
  while :; do
    ready=yes
    first=""
    for i in $(seq 1 "$NODES"); do
      if ! alive "$(nats_dir "$i")/nats.pid" nats-server; then
        echo "cluster-local: nats$i exited" >&2
        show_log_tail "$(nats_dir "$i")/nats.log"
        return 1
      fi
      if [ "$(nats_health "$i")" != ok ]; then
        ready=no
        continue
      fi
      if [ "$NODES" -gt 1 ]; then
        leader=$(meta_leader "$i")
        if [ -z "$leader" ] || { [ -n "$first" ] && [ "$leader" != "$first" ]; }; then
          ready=no
        fi
        first=${first:-$leader}
      fi
    done
    [ "$ready" = yes ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "cluster-local: the NATS cluster is not ready after ${START_TIMEOUT}s" >&2
      for i in $(seq 1 "$NODES"); do show_log_tail "$(nats_dir "$i")/nats.log"; done
      return 1
    fi
    sleep 0.2
  done
}

# Waits until broker i answers /ready with 200.
wait_broker() {
  local i=$1 deadline=$((SECONDS + START_TIMEOUT)) dir
  dir=$(broker_dir "$i")
  while [ "$(http_get "$(http_port "$i")" /ready | head -n 1)" != 200 ]; do
    if ! alive "$dir/broker.pid" sagitta; then
      echo "cluster-local: broker n$i exited" >&2
      show_log_tail "$dir/broker.log"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "cluster-local: broker n$i is not ready after ${START_TIMEOUT}s" >&2
      show_log_tail "$dir/broker.log"
      return 1
    fi
    sleep 0.2
  done
}

# Starts what is not running: everything the first time, a killed node's processes later.
start() {
  local nats_only=no i dir output ports=() nats_todo=() brokers_todo=()
  case ${1:-} in
    '') ;;
    --nats-only) nats_only=yes ;;
    *) die "start: unknown option '$1' (start [--nats-only])" ;;
  esac
  check_settings create
  find_nats_server
  [ "$nats_only" = yes ] || find_sagitta
  for i in $(seq 1 "$NODES"); do
    alive "$(nats_dir "$i")/nats.pid" nats-server && continue
    nats_todo+=("$i")
    ports+=("$(nats_port "$i")" "$(nats_http_port "$i")")
    if [ "$NODES" -gt 1 ]; then ports+=("$(nats_route_port "$i")"); fi
  done
  if [ "$nats_only" = no ]; then
    for i in $(seq 1 "$NODES"); do
      alive "$(broker_dir "$i")/broker.pid" sagitta && continue
      brokers_todo+=("$i")
      ports+=("$(mqtt_port "$i")" "$(http_port "$i")")
    done
  fi
  if [ ${#nats_todo[@]} -eq 0 ] && [ ${#brokers_todo[@]} -eq 0 ]; then
    echo "everything runs already"
    status || true
    return
  fi
  check_ports_free "${ports[@]}"

  # Check the brokers' configs before starting anything.
  for i in "${brokers_todo[@]}"; do
    write_broker_config "$i"
    dir=$(broker_dir "$i")
    if ! output=$("$SAGITTA" broker --config "$dir/sagitta.toml" --check-config 2>&1); then
      printf '%s\n' "$output" >&2
      die "$SAGITTA rejects $dir/sagitta.toml (does this build have the cluster feature?); \`$0 start --nats-only\` starts the NATS cluster alone"
    fi
  done

  if [ ${#nats_todo[@]} -gt 0 ]; then
    echo "starting NATS server(s) ${nats_todo[*]/#/nats} ($NATS_SERVER, JetStream) in $CLUSTER_DIR"
    for i in "${nats_todo[@]}"; do
      write_nats_config "$i"
      dir=$(nats_dir "$i")
      launch "$dir/nats.pid" "$dir/nats.log" "$NATS_SERVER" -c "$dir/nats.conf"
    done
  fi
  if ! wait_nats; then
    stop_some "${nats_todo[@]}" --
    die "the NATS cluster is not ready (logs: $CLUSTER_DIR/nats*/nats.log); stopped what this start started"
  fi
  if [ "$NODES" -gt 1 ]; then
    echo "NATS cluster ready: JetStream meta leader $(meta_leader 1)"
  else
    echo "NATS server ready"
  fi

  if [ ${#brokers_todo[@]} -gt 0 ]; then
    echo "starting broker(s) ${brokers_todo[*]/#/n} ($SAGITTA)"
    for i in "${brokers_todo[@]}"; do
      dir=$(broker_dir "$i")
      # NO_COLOR: plain log files.
      NO_COLOR=1 launch "$dir/broker.pid" "$dir/broker.log" \
        "$SAGITTA" broker --config "$dir/sagitta.toml" --log-level "$SAGITTA_LOG_LEVEL"
    done
    for i in "${brokers_todo[@]}"; do
      if ! wait_broker "$i"; then
        stop_some "${nats_todo[@]}" -- "${brokers_todo[@]}"
        die "broker n$i did not start (log: $(broker_dir "$i")/broker.log); stopped what this start started"
      fi
    done
  fi
  echo
  status || true
  echo
  print_usage_hints "$nats_only"
}

print_usage_hints() {
  local sagitta=sagitta other=1
  if [ "$1" = yes ]; then
    echo "NATS servers for your brokers' [cluster] servers = [$(
      for i in $(seq 1 "$NODES"); do printf '"nats://127.0.0.1:%s"%s' "$(nats_port "$i")" "$([ "$i" -lt "$NODES" ] && echo ', ')"; done
    )]"
    echo "Stop with: $0 stop"
    return
  fi
  command -v sagitta >/dev/null || sagitta=$SAGITTA
  [ "$NODES" -gt 1 ] && other=2
  echo "Connect with any MQTT client, e.g. subscribe on n$other and publish on n1:"
  echo "  $sagitta sub -h 127.0.0.1 -p $(mqtt_port "$other") -t '#' -v"
  echo "  $sagitta pub -h 127.0.0.1 -p $(mqtt_port 1) -t hello -m world -q 1"
  echo "Admin API and metrics: http://127.0.0.1:$(http_port 1)/ (n1)"
  echo "Logs: $CLUSTER_DIR/n*/broker.log, $CLUSTER_DIR/nats*/nats.log"
  echo "Stop with: $0 stop (the state stays in $CLUSTER_DIR; delete it to start afresh)"
}

# --- stop, status -----------------------------------------------------------------------------

# stop_some NATS_INDEXES... -- BROKER_INDEXES...: stops those brokers (in parallel), then those
# NATS servers.
stop_some() {
  local i dir nats=() brokers=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    nats+=("$1")
    shift
  done
  [ $# -gt 0 ] && shift
  brokers=("$@")
  for i in "${brokers[@]}"; do
    dir=$(broker_dir "$i")
    if alive "$dir/broker.pid" sagitta; then echo "stopping broker n$i (pid $(cat "$dir/broker.pid"))"; fi
    terminate "$dir/broker.pid" sagitta "$BROKER_STOP_TIMEOUT" &
  done
  wait
  for i in "${nats[@]}"; do
    dir=$(nats_dir "$i")
    if alive "$dir/nats.pid" nats-server; then echo "stopping nats$i (pid $(cat "$dir/nats.pid"))"; fi
    terminate "$dir/nats.pid" nats-server "$NATS_STOP_TIMEOUT" &
  done
  wait
}

stop() {
  local all
  check_settings
  if [ ! -d "$CLUSTER_DIR" ]; then
    echo "nothing in $CLUSTER_DIR"
    return
  fi
  all=$(seq 1 "$NODES")
  # shellcheck disable=SC2086 # one word per node
  stop_some $all -- $all
  echo "stopped"
}

# Exit status: 0 if everything runs, 3 if nothing does, 1 otherwise.
status() {
  local i dir running=0 total=0 health leader
  check_settings
  printf '%-7s %-5s %-8s %-22s %s\n' PROCESS STATE PID ADDRESS HEALTH
  for i in $(seq 1 "$NODES"); do
    dir=$(nats_dir "$i")
    total=$((total + 1))
    if alive "$dir/nats.pid" nats-server; then
      running=$((running + 1))
      health="/healthz: $(nats_health "$i")"
      leader=$(meta_leader "$i")
      printf '%-7s %-5s %-8s %-22s %s\n' "nats$i" up "$(cat "$dir/nats.pid")" \
        "nats://127.0.0.1:$(nats_port "$i")" "$health${leader:+, meta leader $leader}"
    else
      printf '%-7s %-5s %-8s %s\n' "nats$i" down - "nats://127.0.0.1:$(nats_port "$i")"
    fi
  done
  for i in $(seq 1 "$NODES"); do
    dir=$(broker_dir "$i")
    # Brokers count once started (not after start --nats-only in a fresh directory).
    [ -f "$dir/broker.log" ] || continue
    total=$((total + 1))
    if alive "$dir/broker.pid" sagitta; then
      running=$((running + 1))
      health=$(http_get "$(http_port "$i")" /ready | head -n 1)
      case $health in 200) health=ready ;; '') health="no answer" ;; esac
      printf '%-7s %-5s %-8s %-22s %s\n' "n$i" up "$(cat "$dir/broker.pid")" \
        "mqtt://127.0.0.1:$(mqtt_port "$i")" "/ready: $health (http://127.0.0.1:$(http_port "$i"))"
    else
      printf '%-7s %-5s %-8s %s\n' "n$i" down - "mqtt://127.0.0.1:$(mqtt_port "$i")"
    fi
  done
  if [ "$running" -eq "$total" ]; then return 0; fi
  if [ "$running" -eq 0 ]; then return 3; fi
  return 1
}

case ${1:-} in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
