#!/usr/bin/env bash
# Checks formatting, then runs every test with cargo-nextest (installed on the machine image;
# installed from crates.io here if missing) while clippy checks the lints beside the first tests.
# Both must pass: a lint warning fails the run as a failing test does. VM tests are separate
# test processes, so nextest runs the independent ones concurrently.
#
# Why clippy runs beside the tests rather than before them: it is a second compile of every
# crate in check mode (~100 s on 2 cores from scratch), and the suite opens with the libvirtd
# restart test, which has the machine to itself and mostly waits (libvirtd coming back, a
# reconnect). Cargo locks target/ for as long as it runs, so the test binaries are built and
# listed first, and nextest then runs them from that list without invoking cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
cargo fmt --check
mkdir -p test-artifacts target/nextest
meta=target/nextest
# Builds the test binaries (nothing left to do after `make build`) and says where they are.
cargo nextest list --locked --list-type binaries-only --message-format json >"$meta/binaries-metadata.json"
cargo metadata --locked --format-version 1 >"$meta/cargo-metadata.json"

clippy_log=$meta/clippy.log
cargo clippy --all-targets --locked -- -D warnings >"$clippy_log" 2>&1 &
clippy=$!
trap 'kill "$clippy" 2>/dev/null || true' EXIT

set +e
cargo nextest run --no-fail-fast --profile ci \
    --binaries-metadata "$meta/binaries-metadata.json" --cargo-metadata "$meta/cargo-metadata.json" "$@"
tests=$?
wait "$clippy"
lints=$?
set -e
trap - EXIT
if [ "$lints" -ne 0 ]; then
    cat "$clippy_log" >&2
    echo "run-tests: cargo clippy failed (exit $lints)" >&2
fi
[ "$tests" -eq 0 ] && [ "$lints" -eq 0 ]
