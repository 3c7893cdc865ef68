#!/usr/bin/env bash
# Warm starts of the bundled guest (issue 18): its warm-capable variant (images/out/x86_64-warm)
# booted cold against clones restored from its template and clones taken from a ready pool, in
# one run; the plain guest's cold boot beside them. Writes {"rows": [...]} to $1.
set -euo pipefail
out=${1:?usage: warm_guest.sh OUT.json}
cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
bash images/build-guest.sh x86_64 >&2
bash images/build-guest.sh x86_64-warm >&2
"$CARGO" build --locked --release --example warm_guest_bench >&2
"${TARGET:-target}/release/examples/warm_guest_bench" "$out"
