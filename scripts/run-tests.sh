#!/usr/bin/env bash
# Checks formatting and lints first (both must pass: a warning fails the run),
# then runs every test with cargo-nextest (installed on the machine image; installed
# from crates.io here if missing). VM tests are separate test processes, so
# nextest runs the independent ones concurrently.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
mkdir -p test-artifacts
exec cargo nextest run --locked --no-fail-fast --profile ci "$@"
