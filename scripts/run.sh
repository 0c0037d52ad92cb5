#!/usr/bin/env bash
# Strait's main job for now: build, start the control plane on its embedded store, apply the
# project's Bookinfo config, show what the control plane holds, and keep running until Ctrl-C.
# Usage: bash scripts/run.sh        (data in ./.strait unless STRAIT_HOME is set)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bin strait
strait=target/release/strait
export STRAIT_HOME="${STRAIT_HOME:-$PWD/.strait}"
addr="${STRAIT_API_ADDR:-127.0.0.1:15014}"

"$strait" control-plane --api-addr "$addr" &
cp_pid=$!
trap 'kill "$cp_pid" 2>/dev/null; wait "$cp_pid" 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 100); do
  [ -f "$STRAIT_HOME/server" ] && "$strait" get ns >/dev/null 2>&1 && break
  kill -0 "$cp_pid" 2>/dev/null || { echo "error: the control plane exited; see its log above" >&2; exit 1; }
  sleep 0.1
done

"$strait" apply -f examples/bookinfo/
echo
"$strait" get svc
echo
"$strait" get vs
echo
"$strait" get dr
echo
"$strait" analyze --live
cat <<MSG

The control plane is running (API http://$addr, data in $STRAIT_HOME). In another shell:
  export STRAIT_HOME=$STRAIT_HOME
  $strait get vs reviews -o yaml
  $strait apply -f <your Istio YAML>
  $strait validate -f <files or folders>
Press Ctrl-C to stop it.
MSG
wait "$cp_pid"
