#!/bin/sh
# Runs every fuzz target in turn, one at a time at the lowest CPU priority, for SECONDS each
# (default 600), and prints each run's last status line. Works on the stable toolchain:
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly-only compiler flags.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -eu
cd "$(dirname "$0")"
seconds=${1:-600}
[ $# -gt 0 ] && shift
targets=${*:-reply manifest forms zip_intake}
export RUSTC_BOOTSTRAP=1
for target in $targets; do
    mkdir -p "corpus/$target" "seeds/$target" artifacts
    log="artifacts/$target.log"
    started=$(date +%s)
    status=0
    nice -n 19 cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    elapsed=$(( $(date +%s) - started ))
    fuzzed=$(grep -Eo '^Done [0-9]+ runs in [0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
    runs=$(grep -Eo '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
    rss=$(grep -Eo '^stat::peak_rss_mb: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
    echo "$target: exit $status after ${elapsed} s (${fuzzed} s fuzzing), $runs executions," \
        "peak RSS $rss MB (log: fuzz/$log)"
done
