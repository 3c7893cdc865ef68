#!/usr/bin/env bash
# The recorder's ingest rate over REST and XML-RPC next to raw SQLite inserts of the same rows,
# and its package page's latency with 100,000 stored results (benches/recorder_ingest.rs).
# Usage: recorder.sh OUT.json. Knobs: RECORDER_BENCH_N (500 results per path and round),
# RECORDER_BENCH_ROUNDS (5).
set -euo pipefail
OUT=$1
CARGO=${CARGO:-cargo}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
cd "$HERE"
mkdir -p "$(dirname "$OUT")"
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
# A [[bench]] target (harness = false): `cargo bench --no-run` builds it in release and names it.
"$CARGO" bench --locked --no-run --bench recorder_ingest 2>&1 | tee "$LOG" >&2
INGEST=$(grep -o 'Executable [^ ]* (\(.*\))' "$LOG" | sed 's/.*(\(.*\))/\1/' | tail -n1)
case "$INGEST" in /*) ;; *) INGEST=$HERE/$INGEST ;; esac
[ -x "$INGEST" ] || { echo "cannot find the recorder_ingest bench binary" >&2; exit 1; }
RECORDER_BENCH_N=${RECORDER_BENCH_N:-500} RECORDER_BENCH_ROUNDS=${RECORDER_BENCH_ROUNDS:-5} RECORDER_BENCH_JSON=$OUT "$INGEST" >&2
