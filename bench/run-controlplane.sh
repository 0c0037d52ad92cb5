#!/usr/bin/env bash
# The control-plane benchmark (docs/benchmarks.md, "Control plane").
#
#   bench/run-controlplane.sh            # 1,000 Services, 10,000 endpoints, 200 clients, 50 changes
#   bench/run-controlplane.sh --quick    # 100 Services, 1,000 endpoints, 20 clients, 10 changes
#   bench/run-controlplane.sh --no-build # use the release binaries already built
#   bench/run-controlplane.sh --changes 10  # fewer single changes (each is timed one at a time)
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

# The control plane of a work directory: started in its own session, known by its PID file.
start_cp() {
    setsid "$STRAIT" control-plane --data-dir "$WORK/data" \
        --api-addr "$API_ADDR" --xds-addr "$XDS_ADDR" --tls-addr 127.0.0.1:0 \
        >>"$WORK/control-plane.log" 2>&1 </dev/null &
    echo $! >"$WORK/cp.pid"
}

stop_cp() {
    local pid
    pid=$(cat "$WORK/cp.pid" 2>/dev/null) || return 0
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

SERVICES=1000 PER_SERVICE=10 CLIENTS=200 CHANGES=50 SUFFIX="" BUILD=1
ARGS=("$@")
while (($#)); do
    case $1 in
    --quick) SERVICES=100 PER_SERVICE=10 CLIENTS=20 CHANGES=10 SUFFIX="-quick" ;;
    --no-build) BUILD=0 ;;
    --changes) CHANGES=${2:?--changes needs a number}; shift ;;
    *) echo "usage: $0 [--quick] [--no-build] [--changes N]" >&2; exit 2 ;;
    esac
    shift
done

if [[ $BUILD == 1 ]]; then
    cargo build --release --bin strait --bin strait-xds-load
fi

WORK=$(mktemp -d /tmp/strait-bench-cp.XXXXXX)
cleanup() {
    stop_cp
    rm -rf "$WORK/data"
    echo "control plane log: $WORK/control-plane.log" >&2
}
trap cleanup EXIT

# First start on ports the kernel picks; the restart reuses them.
API_ADDR=127.0.0.1:0 XDS_ADDR=127.0.0.1:0
start_cp
for _ in $(seq 200); do
    [[ -s $WORK/data/server && -s $WORK/data/xds ]] && break
    sleep 0.05
done
[[ -s $WORK/data/xds ]] || { echo "the control plane did not start; see $WORK/control-plane.log" >&2; exit 1; }
API=$(cat "$WORK/data/server")
API_ADDR=${API#http://}
XDS_ADDR=$(cat "$WORK/data/xds")
printf 'STRAIT=%q\nAPI_ADDR=%q\nXDS_ADDR=%q\n' "$STRAIT" "$API_ADDR" "$XDS_ADDR" >"$WORK/env"
echo "control plane: pid $(cat "$WORK/cp.pid"), API $API, xDS $XDS_ADDR, data $WORK/data" >&2

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
SEED=$("$LOAD" seed --api "$API" --token-file "$WORK/data/token" \
    --services "$SERVICES" --endpoints-per-service "$PER_SERVICE")

"$LOAD" --xds "$XDS_ADDR" --clients "$CLIENTS" \
    --api "$API" --token-file "$WORK/data/token" \
    --services "$SERVICES" --changes "$CHANGES" \
    --pid-file "$WORK/cp.pid" \
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
    --arg load_end "$(cut -d' ' -f1-3 /proc/loadavg)" \
    '{date: $date, command: $command, commit: $commit,
      machine: {os: $os, kernel: $kernel, cpu: $cpu, cores: $cores,
                loadavg_at_start: $load_start, loadavg_at_end: $load_end},
      seed: $seed, run: $run[0]}' >"$RESULT"
echo "wrote $RESULT" >&2
"$LOAD" table "$RESULT"
