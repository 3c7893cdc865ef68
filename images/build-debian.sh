#!/usr/bin/env bash
# Builds the `debian-12` disk image: a real Debian 12 (bookworm) system that boots from its
# own disk (SeaBIOS + GRUB) and takes its identity from a cloud-init NoCloud seed.
#
#   images/build-debian.sh            (as root: mmdebstrap --mode=root, mkfs.ext4 -d)
#
# Output in images/out/debian-12/: disk.qcow2 (zstd-compressed qcow2), stamp. A re-run is a
# no-op when the stamp (this script, images/debian/*, the package list, the mirror) is
# unchanged and the disk exists. No loop devices, no mounts: the root file system is
# written into the raw disk by `mkfs.ext4 -d` at the partition's offset, and GRUB's
# boot.img/core.img are written with dd. Environment: PADDOCK_DEBIAN_MIRROR,
# PADDOCK_DEBIAN_SECURITY (mirror URLs), PADDOCK_DEBIAN_SIZE (disk size, default 3G).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NAME=debian-12
MIRROR=${PADDOCK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${PADDOCK_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
SIZE=${PADDOCK_DEBIAN_SIZE:-3G}
LABEL=pdk-root
OUT=$HERE/out/$NAME

log() { printf '[build-debian] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The generic kernel (not -cloud): it has the VM generation ID driver (CONFIG_VMGENID) that
# warm clones need. gcc + libc6-dev + make + python3 + git: enough to build real software.
PKGS=(systemd systemd-sysv udev dbus openssh-server cloud-init linux-image-amd64 grub-pc-bin
    initramfs-tools e2fsprogs cloud-guest-utils iproute2 netbase procps sudo qemu-guest-agent
    gcc libc6-dev make python3 git ca-certificates)

mkdir -p "$OUT"
exec 9>"$HERE/out/.lock-$NAME"
flock 9

[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap --mode=root, file ownership in mkfs.ext4 -d)"
for tool in mmdebstrap sfdisk mkfs.ext4 qemu-img dd sha256sum flock truncate; do
    command -v "$tool" >/dev/null || die "missing host tool: $tool (scripts/setup-host.sh installs it)"
done

STAMP=$( {
    echo "size=$SIZE label=$LABEL mirror=$MIRROR security=$SECURITY pkgs=${PKGS[*]}"
    sha256sum "$0" "$HERE"/debian/* | awk '{print $1}'
} | sha256sum | awk '{print $1}')
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] && [ -s "$OUT/disk.qcow2" ]; then
    log "up to date ($OUT)"
    exit 0
fi

START=$(date +%s)
WORK=$(mktemp -d "$HERE/out/.build-$NAME.XXXXXX")
trap '[ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT
ROOT=$WORK/root

log "mmdebstrap (${#PKGS[@]} packages, no Recommends)"
INCLUDE=$(IFS=,; echo "${PKGS[*]}")
mmdebstrap --quiet --variant=apt --mode=root --include="$INCLUDE" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="\"$HERE/debian/customize.sh\" \"\$1\" $LABEL" \
    bookworm "$ROOT" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY bookworm-security main"
log "rootfs: $(du -sm "$ROOT" | cut -f1) MB after $(($(date +%s) - START)) s"

# Disk: one DOS partition from sector 2048; GRUB's core.img sits in the gap before it.
RAW=$WORK/disk.raw
truncate -s "$SIZE" "$RAW"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk --quiet "$RAW"
PART_BYTES=$(( $(stat -c %s "$RAW") - 1048576 ))
mkfs.ext4 -q -F -L "$LABEL" -d "$ROOT" -E offset=1048576 "$RAW" "$((PART_BYTES / 1024))k"
CORE=$ROOT/boot/grub/core.img
[ "$(stat -c %s "$CORE")" -lt $((2047 * 512)) ] || die "core.img does not fit before the partition"
dd if="$ROOT/usr/lib/grub/i386-pc/boot.img" of="$RAW" bs=440 count=1 conv=notrunc status=none
dd if="$CORE" of="$RAW" bs=512 seek=1 conv=notrunc status=none

qemu-img convert -c -O qcow2 -o compression_type=zstd "$RAW" "$WORK/disk.qcow2"
mv "$WORK/disk.qcow2" "$OUT/disk.qcow2"
echo "$STAMP" >"$OUT/stamp"
log "built $OUT/disk.qcow2: $(du -m "$OUT/disk.qcow2" | cut -f1) MB in $(($(date +%s) - START)) s"
