#!/usr/bin/env bash
# The release daemon's HTTP port under read load: ?tail= on a 256 MiB run log against
# `tail -n`, and its memory idle, after reading that log, with 1,000 idle connections and
# with 200 live log streams (examples/bench_http.rs). Usage: http.sh OUT.json
set -euo pipefail
OUT=$1
CARGO=${CARGO:-cargo}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${TARGET:-${CARGO_TARGET_DIR:-$HERE/target}}
cd "$HERE"
"$CARGO" build --locked --release --bin paddock --example bench_http >&2
# 1,000 connections need more descriptors than the usual soft limit of 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096
mkdir -p "$(dirname "$OUT")"
"$TARGET/release/examples/bench_http" "$TARGET/release/paddock" "$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
