#!/usr/bin/env bash
# debian-12 cold first byte: trigger → first step byte through the daemon for the real
# Debian 12 image, against bench/baseline-debian.sh (same domain shape, same kind of
# cloud-init seed, SSH poll, `ssh guest cmd`), interleaved; plus boot → SSH and the
# baseline's cloud-init-done time. BENCH_DEBIAN_N samples per side (default 2; each is a
# cold TCG boot of 1-3 minutes).
#   bash bench/figures/debian.sh OUT.json
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
cd "$HERE"
OUT=${1:?usage: debian.sh OUT.json}
CARGO=${CARGO:-cargo}
TARGET=${TARGET:-${CARGO_TARGET_DIR:-$HERE/target}}
[ -s images/out/debian-12/disk.qcow2 ] || bash images/build-debian.sh >&2
"$CARGO" build --locked --release --example bench_debian >&2
"$TARGET/release/examples/bench_debian" "$OUT"
