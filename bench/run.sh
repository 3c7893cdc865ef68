#!/usr/bin/env bash
# `make bench`: builds the release binaries once, then measures paddock next to its
# baselines in one run and prints one table (figure, paddock, baseline, ratio). The same
# figures go to bench/out/results-<git sha>.json, to compare commits.
#
# Knobs (environment): BENCH_COLD_N (5 cold boots per side), BENCH_PARALLEL (4 runs at
# once), BENCH_LOG_BYTES (200000000), BENCH_CONTROL_N (1000 VMs on test:///),
# RECORDER_BENCH_N (200 results per ingest path and round; bench/figures/recorder.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"
CARGO=${CARGO:-cargo}
SHA=$(git rev-parse --short=12 HEAD)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then SHA="$SHA-dirty"; fi
OUT=bench/out
mkdir -p "$OUT"
TARGET=${CARGO_TARGET_DIR:-$HERE/target}

echo "[bench] building release binaries (once)" >&2
"$CARGO" build --locked --release --example bench_compare

# Each bench/figures/NAME.sh measures its own rows and writes them as JSON to the path it is
# given ({"rows": [{"figure", "unit", "paddock", "baseline", "baseline_is"}], ...}); the
# table below appends them. BENCH_FIGURES="a b" runs only those (default: all of them).
EXTRA=()
for script in bench/figures/*.sh; do
    [ -e "$script" ] || continue
    name=$(basename "$script" .sh)
    if [ -n "${BENCH_FIGURES:-}" ] && ! [[ " $BENCH_FIGURES " == *" $name "* ]]; then continue; fi
    echo "[bench] figures: $name" >&2
    rm -f "$OUT/figures-$name-$SHA.json"
    BENCH_GIT_SHA=$SHA CARGO=$CARGO TARGET=$TARGET bash "$script" "$OUT/figures-$name-$SHA.json" >&2 \
        || echo "[bench] $name failed" >&2
    EXTRA+=("$OUT/figures-$name-$SHA.json")
done

echo "[bench] VM figures (cold boots, parallel runs, log throughput, control plane)" >&2
BENCH_GIT_SHA=$SHA "$TARGET/release/examples/bench_compare" all \
    --json "$OUT/results-$SHA.json" "${EXTRA[@]}"
