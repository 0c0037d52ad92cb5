#!/usr/bin/env bash
# The control-plane benchmark (docs/benchmarks.md, "Control plane").
#
#   bench/run-controlplane.sh            # 1,000 Services, 10,000 endpoints, 200 clients, 50 changes
#   bench/run-controlplane.sh --quick    # 100 Services, 1,000 endpoints, 20 clients, 10 changes
#   bench/run-controlplane.sh --no-build # use the release binaries already built
#   bench/run-controlplane.sh --changes 10  # fewer single changes (each is timed one at a time)
#   bench/run-controlplane.sh --store etcd  # the control plane on etcd (Debian etcd-server), not
#                                           # its embedded file store
#   bench/run-controlplane.sh --store etcd --replicas 2  # two control planes on that etcd; the
#                                           # clients split between them, changes are written
#                                           # through the first, the restart restarts the first
#
# Builds release, starts `strait control-plane` on a fresh data directory and free loopback
# ports, writes the config through the REST API, connects simulated Delta-ADS sidecars
# (strait-xds-load), times the full push, single endpoint changes and the full push after a
# restart, and writes bench/results/<date>-controlplane[-quick].json and a Markdown table.
# Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
# What the script needs beyond the Rust toolchain.
command -v jq >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq; }
STRAIT=$TARGET/release/strait
LOAD=$TARGET/release/strait-xds-load

# Control plane N (1, 2, ...) of a work directory: started in its own session, known by its PID
# file; replica 1 keeps its data directory and ports across the restart ($API_ADDR, $XDS_ADDR).
start_cp() {
    local n=${1:-1} api=127.0.0.1:0 xds=127.0.0.1:0
    [[ $n == 1 ]] && api=$API_ADDR xds=$XDS_ADDR
    local store=()
    [[ -n ${ETCD:-} ]] && store=(--store "etcd://$ETCD")
    setsid "$STRAIT" control-plane --data-dir "$WORK/data$n" "${store[@]}" \
        --api-addr "$api" --xds-addr "$xds" --tls-addr 127.0.0.1:0 \
        >>"$WORK/control-plane$n.log" 2>&1 </dev/null &
    echo $! >"$WORK/cp$n.pid"
}

stop_cp() {
    local pid
    pid=$(cat "$WORK/cp${1:-1}.pid" 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 200); do
        [[ -e /proc/$pid ]] || return 0
        sleep 0.05
    done
    echo "the control plane (pid $pid) did not stop within 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

# Internal: called by strait-xds-load as its restart command.
if [[ ${1:-} == __restart ]]; then
    WORK=$2
    # shellcheck source=/dev/null
    source "$WORK/env"
    stop_cp
    start_cp
    exit 0
fi

SERVICES=1000 PER_SERVICE=10 CLIENTS=200 CHANGES=50 SUFFIX="" BUILD=1 STORE=file REPLICAS=1
ARGS=("$@")
while (($#)); do
    case $1 in
    --quick) SERVICES=100 PER_SERVICE=10 CLIENTS=20 CHANGES=10 SUFFIX="-quick" ;;
    --no-build) BUILD=0 ;;
    --changes) CHANGES=${2:?--changes needs a number}; shift ;;
    --store) STORE=${2:?--store needs file or etcd}; shift ;;
    --replicas) REPLICAS=${2:?--replicas needs a number}; shift ;;
    *) echo "usage: $0 [--quick] [--no-build] [--changes N] [--store file|etcd] [--replicas N]" >&2; exit 2 ;;
    esac
    shift
done
case $STORE in
file) ((REPLICAS == 1)) || { echo "--replicas needs --store etcd (replicas share one etcd)" >&2; exit 2; } ;;
etcd)
    SUFFIX="$SUFFIX-etcd"
    ((REPLICAS > 1)) && SUFFIX="$SUFFIX-${REPLICAS}replicas"
    command -v etcd >/dev/null || [[ -x /usr/bin/etcd ]] || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server
    }
    ;;
*) echo "--store: expected file or etcd, got '$STORE'" >&2; exit 2 ;;
esac

if [[ $BUILD == 1 ]]; then
    cargo build --release --bin strait --bin strait-xds-load
fi

WORK=$(mktemp -d /tmp/strait-bench-cp.XXXXXX)
cleanup() {
    for n in $(seq "$REPLICAS"); do stop_cp "$n"; done
    [[ -s $WORK/etcd.pid ]] && kill -TERM "$(cat "$WORK/etcd.pid")" 2>/dev/null
    rm -rf "$WORK"/data* "$WORK/etcd"
    echo "control plane logs: $WORK/control-plane*.log" >&2
}
trap cleanup EXIT

# A free loopback port (the kernel's pick, released at once).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

ETCD=""
if [[ $STORE == etcd ]]; then
    ETCD_BIN=$(command -v etcd || echo /usr/bin/etcd)
    ETCD=127.0.0.1:$(free_port)
    peer=http://127.0.0.1:$(free_port)
    setsid "$ETCD_BIN" --name=bench --data-dir="$WORK/etcd" --log-level=warn \
        --listen-client-urls="http://$ETCD" --advertise-client-urls="http://$ETCD" \
        --listen-peer-urls="$peer" --initial-advertise-peer-urls="$peer" \
        --initial-cluster="bench=$peer" >"$WORK/etcd.log" 2>&1 </dev/null &
    echo $! >"$WORK/etcd.pid"
    for _ in $(seq 200); do
        curl -fsS "http://$ETCD/health" >/dev/null 2>&1 && break
        sleep 0.05
    done
    curl -fsS "http://$ETCD/health" >/dev/null || { echo "etcd did not start; see $WORK/etcd.log" >&2; exit 1; }
    echo "etcd: pid $(cat "$WORK/etcd.pid"), $ETCD, $(etcd --version | head -1)" >&2
fi

# Every replica shares one API token (given before the first start).
mkdir -p "$WORK/data1"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/data1/token"
chmod 600 "$WORK/data1/token"

# First start on ports the kernel picks; the restart reuses them.
API_ADDR=127.0.0.1:0 XDS_ADDR=127.0.0.1:0
XDS_LIST=""
for n in $(seq "$REPLICAS"); do
    if ((n > 1)); then
        mkdir -p "$WORK/data$n"
        cp "$WORK/data1/token" "$WORK/data$n/token"
    fi
    start_cp "$n"
    for _ in $(seq 400); do
        [[ -s $WORK/data$n/server && -s $WORK/data$n/xds ]] && break
        sleep 0.05
    done
    [[ -s $WORK/data$n/xds ]] || { echo "control plane $n did not start; see $WORK/control-plane$n.log" >&2; exit 1; }
    echo "control plane $n: pid $(cat "$WORK/cp$n.pid"), API $(cat "$WORK/data$n/server"), xDS $(cat "$WORK/data$n/xds"), data $WORK/data$n" >&2
    XDS_LIST="$XDS_LIST${XDS_LIST:+,}$(cat "$WORK/data$n/xds")"
done
API=$(cat "$WORK/data1/server")
API_ADDR=${API#http://}
XDS_ADDR=$(cat "$WORK/data1/xds")
printf 'STRAIT=%q\nAPI_ADDR=%q\nXDS_ADDR=%q\nETCD=%q\n' "$STRAIT" "$API_ADDR" "$XDS_ADDR" "$ETCD" >"$WORK/env"

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
SEED=$("$LOAD" seed --api "$API" --token-file "$WORK/data1/token" \
    --services "$SERVICES" --endpoints-per-service "$PER_SERVICE")

"$LOAD" --xds "$XDS_LIST" --clients "$CLIENTS" \
    --api "$API" --token-file "$WORK/data1/token" \
    --services "$SERVICES" --changes "$CHANGES" \
    --pid-file "$WORK/cp1.pid" \
    --restart-cmd "$(printf '%q __restart %q' "$PWD/bench/run-controlplane.sh" "$WORK")" \
    >"$WORK/run.json"

mkdir -p bench/results
RESULT=bench/results/$(date +%F)-controlplane$SUFFIX.json
COMMAND="bench/run-controlplane.sh ${ARGS[*]}"
jq -n --argjson seed "$SEED" --slurpfile run "$WORK/run.json" \
    --arg date "$(date -u +%FT%TZ)" --arg command "${COMMAND% }" \
    --arg commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --arg os "$(. /etc/os-release && echo "$PRETTY_NAME")" --arg kernel "$(uname -r)" \
    --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
    --argjson cores "$(nproc)" --arg load_start "$LOADAVG_START" \
    --arg store "$STORE" --argjson replicas "$REPLICAS" \
    --arg load_end "$(cut -d' ' -f1-3 /proc/loadavg)" \
    '{date: $date, command: $command, commit: $commit,
      store: $store, replicas: $replicas,
      machine: {os: $os, kernel: $kernel, cpu: $cpu, cores: $cores,
                loadavg_at_start: $load_start, loadavg_at_end: $load_end},
      seed: $seed, run: $run[0]}' >"$RESULT"
echo "wrote $RESULT" >&2
"$LOAD" table "$RESULT"
