#!/usr/bin/env bash
# The soak (docs/benchmarks.md, "Soak"): Bookinfo as `strait demo` runs it, steady page loads
# through the gateway, while the reviews route changes every 3 s, a pod is killed with kill -9
# and started again every 90 s and the control plane is killed and restarted every 5 minutes.
# Reports failed page loads (explained by a fault or not) and every proxy's and the control
# plane's RSS and open fds over time, on both data planes one after the other.
#
#   bench/soak.sh                      # 30 minutes per data plane, strait-proxy then Envoy
#   bench/soak.sh --minutes 10         # shorter
#   bench/soak.sh --proxy envoy        # one data plane (strait | envoy | both)
#   bench/soak.sh --smoke              # the suite's smoke mode: about 25 s per data plane
#   bench/soak.sh --release            # release binaries (the default is the debug profile)
#   bench/soak.sh --no-build           # use the binaries already built
#
# Writes bench/results/<date>-soak-<N>min-<proxy>.json and .md (the smoke mode too, under
# -smoke-) and prints the summary. Needs root (network namespaces, iptables), iproute2,
# iptables, setpriv and Envoy (installed into .venv if missing). Runs the test `soak` of the
# strait-e2e crate (tests/soak.rs), which holds the pods lock (one pod-using test at a time)
# for the whole soak. Exits non-zero when a page load failed that no fault explains, or when a
# proxy's RSS or fds were not flat. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=30 PROXY=both PROFILE=debug BUILD=1 SMOKE=0
usage="usage: $0 [--minutes N | --smoke] [--proxy strait|envoy|both] [--release] [--no-build]"
while (($#)); do
    case $1 in
    --minutes) MINUTES=${2:?$usage}; shift ;;
    --smoke) SMOKE=1 ;;
    --proxy) PROXY=${2:?$usage}; shift ;;
    --release) PROFILE=release ;;
    --no-build) BUILD=0 ;;
    *) echo "$usage" >&2; exit 2 ;;
    esac
    shift
done
case $PROXY in strait | envoy | both) ;; *) echo "$usage" >&2; exit 2 ;; esac
[[ $MINUTES =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "--minutes $MINUTES: expected a number" >&2; exit 2; }

ENVOY_BIN=${ENVOY_BIN:-$(bash scripts/install-envoy.sh)}
export ENVOY_BIN
export STRAIT_TESTDATA=${STRAIT_TESTDATA:-$(cd .. && pwd)/shared/testdata}
flags=()
[[ $PROFILE == release ]] && flags=(--release)
if ((BUILD)); then
    cargo build "${flags[@]}" --locked --bin strait --bin strait-proxy --bin bookinfo
    cargo test "${flags[@]}" --locked -p strait-e2e --test soak --no-run
fi
# The test binary cargo just built (or built before).
test_bin=$(cargo test "${flags[@]}" --locked -p strait-e2e --test soak --no-run --message-format json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*soak-[^"]*\)".*/\1/p' | tail -1)
[[ -x $test_bin ]] || { echo "the soak test binary is missing: run without --no-build" >&2; exit 1; }

command="bench/soak.sh --proxy $PROXY"
if ((SMOKE)); then
    unset STRAIT_SOAK_MINUTES
    command+=" --smoke"
else
    export STRAIT_SOAK_MINUTES=$MINUTES
    command+=" --minutes $MINUTES"
fi
[[ $PROFILE == release ]] && command+=" --release"
export STRAIT_SOAK_PROXY=$PROXY STRAIT_SOAK_RESULTS=$PWD/bench/results STRAIT_SOAK_COMMAND="$command"
exec "$test_bin" --exact soak_bookinfo_under_faults --nocapture
