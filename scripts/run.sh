#!/usr/bin/env bash
# Strait's main job: the whole Bookinfo mesh on this machine with one command. Builds strait,
# strait-proxy and bookinfo (release), then runs `strait demo`: its own control plane, the ingress
# gateway and Bookinfo's pods with sidecars, until Ctrl-C, which removes everything it started.
# Usage: bash scripts/run.sh [--proxy strait|envoy] [--listen IP] [--data-dir DIR]
# Needs root: the pods run in network namespaces with Istio's iptables capture.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "error: the demo runs Bookinfo's pods in network namespaces with iptables capture, which needs root:" >&2
  echo "       sudo bash scripts/run.sh $*" >&2
  exit 1
fi
for tool in ip:iproute2 iptables-restore:iptables setpriv:util-linux; do
  command -v "${tool%%:*}" >/dev/null || {
    echo "error: ${tool%%:*} is missing: apt-get install -y ${tool##*:}" >&2
    exit 1
  }
done
case " $* " in
  *" envoy "* | *"--proxy=envoy"*) bash scripts/install-envoy.sh >/dev/null ;;
esac

cargo build --release --locked --bin strait --bin strait-proxy --bin bookinfo
exec target/release/strait demo "$@"
