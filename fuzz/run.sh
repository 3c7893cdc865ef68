#!/usr/bin/env bash
# Runs every fuzz target for $1 seconds (default 60) on the stable toolchain: RUSTC_BOOTSTRAP=1
# lets cargo-fuzz pass the nightly-only -Z flags it needs (sanitizer, coverage options) to the
# stable compiler. Installs cargo-fuzz from crates.io if missing. Fails on the first finding;
# the crashing input is in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
for target in fleet_toml xmlrpc_call rest_result; do
    mkdir -p "corpus/$target"
    echo "== $target for ${seconds}s"
    cargo fuzz run -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
