#!/usr/bin/env bash
# A short run of every fuzz target from its seeds, for CI: builds the targets, then
# runs each for SECS seconds (default 10) in a throwaway corpus. A crash, a hang over
# 10 s or more than 2 GiB of memory fails the run. Installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")"
secs=${SECS:-10}
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz build -O
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in $(cargo fuzz list); do
    mkdir -p "$work/$t"
    echo "fuzz smoke: $t for ${secs}s"
    if ! cargo fuzz run -O "$t" "$work/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log"
        echo "fuzz smoke: $t FAILED"
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$t.log"
done
