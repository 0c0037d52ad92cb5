#!/usr/bin/env bash
# Strait's main job: the whole Bookinfo mesh on this machine with one command. Builds strait,
# strait-proxy and bookinfo (release), then runs `strait demo`: its own control plane, the ingress
# gateway and Bookinfo's pods with sidecars, until Ctrl-C, which removes everything it started.
# Usage: bash scripts/run.sh [--proxy strait|envoy] [--capture iptables|none] [--listen IP] [--data-dir DIR]
# As root the pods run in network namespaces with Istio's iptables capture; otherwise (or with
# --capture none) on loopback addresses of their own, the apps using their sidecars as HTTP proxies.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="setpriv:util-linux"
if [ "$(id -u)" = 0 ]; then
  case " $* " in
    *" none "* | *"--capture=none"*) ;;
    *) tools="ip:iproute2 iptables-restore:iptables $tools" ;;
  esac
fi
for tool in $tools; do
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
