#!/usr/bin/env bash
# Warm starts (issue 18): debian-12 cold boots against clones restored from its template, in
# one run; trigger -> first byte and SSH banner -> first byte. Writes {"rows": [...]} to $1.
set -euo pipefail
out=${1:?usage: warm.sh OUT.json}
cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
bash images/build-debian.sh >&2
"$CARGO" build --locked --release --example warm_bench >&2
"${TARGET:-target}/release/examples/warm_bench" "$out"
