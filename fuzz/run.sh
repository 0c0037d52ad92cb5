#!/usr/bin/env bash
# Fuzzing campaigns: every target for SECONDS each (default 900), one at a time, each under the
# project's cargo lock (/tmp/strait-cargo.lock). Needs cargo-fuzz (`cargo install cargo-fuzz
# --locked`); RUSTC_BOOTSTRAP lets the stable toolchain take the sanitizer flags cargo fuzz
# passes. It starts from corpus/TARGET (the seeds and kept crashers, replayed by every
# `cargo test`) and writes what it finds to artifacts/TARGET/work (not kept); a crash stops its
# target and leaves the input in artifacts/TARGET/: fix it, then copy it into corpus/TARGET. One summary line per target goes to
# stdout and to runs.log: target, seconds, executions, result.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-900}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(config_parse api_request proto_config h1_head)
fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
lock=/tmp/strait-cargo.lock
status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target/work"
    log="artifacts/$target/run.log"
    started=$(date -u +%FT%TZ)
    set +e
    flock "$lock" cargo fuzz run "$target" "artifacts/$target/work" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=4096 -timeout=20 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    if [ $rc -eq 0 ]; then
        result="no crash"
    else
        result="FAILED (exit $rc): $(grep -m1 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" || echo 'see log')"
        status=1
    fi
    line="$started $target ${seconds}s executions=${runs:-?} $result"
    echo "$line" | tee -a runs.log
done
exit $status
