#!/usr/bin/env bash
# Placement cost per run: the VM manager on 20 test:/// hosts x 50 slots with 5,000 queued
# launches of 10 jobs (examples/placement_bench.rs), against bare loops. Writes {"rows": [...]} to $1.
set -euo pipefail
OUT=${1:?usage: placement.sh OUT.json}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
cd "$HERE"
CARGO=${CARGO:-cargo}
TARGET=${TARGET:-${CARGO_TARGET_DIR:-$HERE/target}}
"$CARGO" build --locked --release --example placement_bench >&2
"$TARGET/release/examples/placement_bench" "$OUT" >&2
