#!/usr/bin/env bash
# Builds paddock's bundled small Linux guest (kernel + initramfs with busybox and OpenSSH)
# from Debian packages, without root-only tools: `apt-get download` + `dpkg -x` + cpio.
#
#   images/build-guest.sh [ARCH]      ARCH: x86_64 (default), aarch64, s390x, or
#                                     x86_64-warm (the variant that may start warm, below).
#
# Output in images/out/ARCH/: vmlinuz, initrd.img, stamp. The image holds no SSH host
# key: each VM gets its own on the kernel command line (paddock.hostkey=, see
# images/README.md), and the build fails if a private key ended up in the initramfs.
# A re-run is a no-op when the
# package versions, this script and images/guest/* are unchanged. Downloads are cached
# in images/out/cache/DEBARCH/. Environment: PADDOCK_GUEST_COMPRESS=zstd|xz|gzip.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ARCH=${1:-x86_64}
COMPRESS=${PADDOCK_GUEST_COMPRESS:-zstd}

log() { printf '[build-guest %s] %s\n' "$ARCH" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Per-architecture facts. Module names are in load order (dependencies first).
# Library package names are the same on every Debian architecture; the NEEDED
# closure check below fails loudly if one is missing for a new architecture.
case "$ARCH" in
x86_64)
    DEBARCH=amd64
    ELF_MACHINE="Advanced Micro Devices X86-64"
    KERNEL_META=linux-image-cloud-amd64
    MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
        failover net_failover virtio_net virtio-rng button evdev)
    ;;
aarch64)
    # The `virt` machine puts virtio on PCI (libvirt's default) or MMIO; both are modules.
    # No ACPI without UEFI firmware, so no ACPI power button (virsh destroy instead).
    DEBARCH=arm64
    ELF_MACHINE="AArch64"
    KERNEL_META=linux-image-cloud-arm64
    MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
        virtio_mmio failover net_failover virtio_net virtio-rng)
    ;;
s390x)
    # s390x has no cloud flavour. virtio and virtio_ccw (channel I/O, CONFIG_S390_GUEST)
    # are built in; only the NIC and the RNG drivers are modules.
    DEBARCH=s390x
    ELF_MACHINE="IBM S/390"
    KERNEL_META=linux-image-s390x
    MODULES=(failover net_failover virtio_net virtio-rng)
    ;;
x86_64-warm)
    # The warm-capable variant (`start = "warm"`, `guest_agent = true`): Debian's generic
    # kernel, whose VMGENID driver (built in) reseeds the RNG as soon as a restored clone
    # sees a new VM generation ID, plus virtio_console for the guest agent's virtio-serial
    # port and the QEMU guest agent itself, through which paddock gives each clone its own
    # clock, host key, principal, hostname and machine-id. The default guest keeps the
    # cloud kernel: every cold-booting test pays for the generic one's larger boot.
    DEBARCH=amd64
    ELF_MACHINE="Advanced Micro Devices X86-64"
    KERNEL_META=linux-image-amd64
    MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
        failover net_failover virtio_net virtio-rng button evdev virtio_console)
    EXTRA_PKGS=(qemu-guest-agent libglib2.0-0 libnuma1 libudev1 liburing2)
    EXTRA_BINS=(usr/sbin/qemu-ga)
    # sshd runs once per connection (`sshd -i` under busybox nc), so a clone's new host key
    # needs no sshd restart (images/guest/init).
    SSH_PER_CONNECTION=1
    ;;
*) die "unknown ARCH '$ARCH' (x86_64, aarch64, s390x, x86_64-warm)" ;;
esac

LIB_PKGS=(libc6 libcrypt1 libwrap0 libnsl2 libtirpc3 libaudit1 libcap-ng0 libpam0g
    libsystemd0 libcap2 libgcrypt20 libgpg-error0 liblz4-1 liblzma5 libzstd1 libselinux1
    libpcre2-8-0 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1
    libcom-err2 libssl3 zlib1g)
# Binaries copied into the guest; their shared libraries are resolved from the packages.
ELF_BINS=(usr/sbin/sshd ${EXTRA_BINS[@]+"${EXTRA_BINS[@]}"})

OUT=$HERE/out/$ARCH
CACHE=$HERE/out/cache/$DEBARCH
GUEST=$HERE/guest
mkdir -p "$OUT" "$CACHE"
# Concurrent callers (parallel tests) wait for each other instead of racing on $OUT.
exec 9>"$HERE/out/.lock-$ARCH"
flock 9

for tool in apt-get apt-cache dpkg readelf cpio ssh-keygen sha256sum flock; do
    command -v "$tool" >/dev/null || die "missing host tool: $tool"
done
case "$COMPRESS" in
zstd) command -v zstd >/dev/null || die "missing host tool: zstd"; COMPRESS_CMD=(zstd -q -19 -T0 --stdout) ;;
xz) COMPRESS_CMD=(xz -9e --check=crc32 --stdout) ;; # the kernel's xz reader needs crc32
gzip) COMPRESS_CMD=(gzip -9 -n --stdout) ;;
*) die "PADDOCK_GUEST_COMPRESS must be zstd, xz or gzip" ;;
esac

# The quick check: with apt's package lists, apt's configuration, this script and
# images/guest/* all as they were when the image last passed the full check below, it is
# still current. Each apt call below re-reads every package list when apt keeps no
# binary cache (Debian's container images set `Dir::Cache::pkgcache ""`): ~3 s of CPU
# each, paid by every test process that makes sure of the guest.
QUICK=$( {
    echo "arch=$ARCH compress=$COMPRESS"
    sha256sum "$0" "$GUEST"/* | awk '{print $1}'
    find /var/lib/apt/lists /etc/apt -maxdepth 2 -type f -printf '%p %s %T@\n' 2>/dev/null | sort
} | sha256sum | awk '{print $1}')
current() {
    [ -f "$OUT/stamp" ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ ! -e "$OUT/ssh_host_ed25519_key" ]
}
if current && [ -f "$OUT/stamp.quick" ] && [ "$(cat "$OUT/stamp.quick")" = "$QUICK" ]; then
    log "up to date ($OUT)"
    exit 0
fi

# Resolve the kernel metapackage to the versioned image package it depends on.
KERNEL_PKG=$(apt-cache depends "$KERNEL_META:$DEBARCH" 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
KERNEL_PKG=${KERNEL_PKG%:*}
[ -n "$KERNEL_PKG" ] || die "cannot resolve $KERNEL_META for $DEBARCH (is the architecture known to apt?)"

PKGS=("$KERNEL_PKG" busybox-static openssh-server "${LIB_PKGS[@]}" ${EXTRA_PKGS[@]+"${EXTRA_PKGS[@]}"})
PKG_ARGS=()
for p in "${PKGS[@]}"; do PKG_ARGS+=("$p:$DEBARCH"); done

# The candidate .deb file names pin the versions; they go into the stamp.
URIS=$(apt-get download --print-uris "${PKG_ARGS[@]}") || die "apt-get download --print-uris failed"
DEBS=$(printf '%s\n' "$URIS" | awk '{print $2}' | sort)

STAMP_INPUT=$( {
    echo "arch=$ARCH compress=$COMPRESS modules=${MODULES[*]} bins=${ELF_BINS[*]}"
    printf '%s\n' "$DEBS"
    sha256sum "$0" "$GUEST"/* | awk '{print $1}'
})
STAMP=$(printf '%s\n' "$STAMP_INPUT" | sha256sum | awk '{print $1}')
if current && [ "$(cat "$OUT/stamp")" = "$STAMP" ]; then
    echo "$QUICK" >"$OUT/stamp.quick"
    log "up to date ($OUT)"
    exit 0
fi

# Download what the cache lacks.
MISSING=()
while read -r deb; do
    [ -f "$CACHE/$deb" ] || MISSING+=("$deb")
done <<<"$DEBS"
if [ "${#MISSING[@]}" -gt 0 ]; then
    log "downloading ${#MISSING[@]} packages into $CACHE"
    # apt drops privileges to _apt for downloads when it can write the target dir.
    (cd "$CACHE" && apt-get download -q "${PKG_ARGS[@]}" >/dev/null 2>&1) || die "apt-get download failed"
fi

WORK=$(mktemp -d "$HERE/out/.build-$ARCH.XXXXXX")
trap '[ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT
SYSROOT=$WORK/sysroot
ROOT=$WORK/root
mkdir -p "$SYSROOT" "$ROOT"
while read -r deb; do
    dpkg -x "$CACHE/$deb" "$SYSROOT"
done <<<"$DEBS"

# Kernel and modules.
KVER=$(ls "$SYSROOT/lib/modules")
[ "$(printf '%s\n' "$KVER" | wc -l)" -eq 1 ] || die "expected one kernel in $KERNEL_PKG, got: $KVER"
cp "$SYSROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
mkdir -p "$ROOT/lib/modules/$KVER" "$ROOT/etc/paddock"
: >"$ROOT/etc/paddock/modules"
for m in "${MODULES[@]}"; do
    src=$(find "$SYSROOT/lib/modules/$KVER/kernel" -name "$m.ko*" | head -n1)
    [ -n "$src" ] || die "module $m not found in $KERNEL_PKG"
    cp "$src" "$ROOT/lib/modules/$KVER/"
    basename "$src" >>"$ROOT/etc/paddock/modules"
done

# Busybox (static) provides /bin/sh and every tool; /init installs the applet links.
mkdir -p "$ROOT/bin" "$ROOT/sbin" "$ROOT/usr/bin" "$ROOT/usr/sbin"
cp "$SYSROOT/bin/busybox" "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"

# ELF binaries and the closure of their NEEDED libraries, found in the sysroot by
# soname (readelf works for every architecture, unlike running ldd).
LIBDIRS=()
for d in lib usr/lib; do
    for sub in "$SYSROOT/$d"/*-linux-gnu* "$SYSROOT/$d"; do
        [ -d "$sub" ] && LIBDIRS+=("${sub#"$SYSROOT/"}")
    done
done
find_lib() {
    local d
    for d in "${LIBDIRS[@]}"; do
        if [ -e "$SYSROOT/$d/$1" ]; then
            echo "$d/$1"
            return 0
        fi
    done
    return 1
}
declare -A SEEN=()
QUEUE=("${ELF_BINS[@]}")
INTERP=""
while [ "${#QUEUE[@]}" -gt 0 ]; do
    f=${QUEUE[0]}
    QUEUE=("${QUEUE[@]:1}")
    mkdir -p "$ROOT/$(dirname "$f")"
    cp -L "$SYSROOT/$f" "$ROOT/$f"
    if [ -z "$INTERP" ]; then
        INTERP=$(readelf -l "$SYSROOT/$f" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
    fi
    for so in $(readelf -d "$SYSROOT/$f" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
        [ -z "${SEEN[$so]:-}" ] || continue
        SEEN[$so]=1
        lib=$(find_lib "$so") || die "$so (needed by $f) is in none of the packages; add its package to LIB_PKGS"
        QUEUE+=("$lib")
    done
done
[ -n "$INTERP" ] || die "no program interpreter found in ${ELF_BINS[*]}"
# A foreign binary can't be run here to notice a wrong-architecture package; its ELF header can.
for f in bin/busybox "${ELF_BINS[@]}"; do
    machine=$(readelf -h "$ROOT/$f" | sed -n 's/^ *Machine: *//p')
    [ "$machine" = "$ELF_MACHINE" ] || die "$f is built for '$machine', expected '$ELF_MACHINE'"
done
# The interpreter must also sit where the binaries ask for it (e.g. /lib64/...).
if [ ! -e "$ROOT$INTERP" ]; then
    mkdir -p "$ROOT$(dirname "$INTERP")"
    so=$(find_lib "$(basename "$INTERP")") || so=""
    if [ -n "$so" ] && [ -e "$ROOT/$so" ]; then
        ln -s "/$so" "$ROOT$INTERP"
    else
        cp -L "$SYSROOT$INTERP" "$ROOT$INTERP"
    fi
fi
# Debian's binaries are stripped already; strip debug leftovers where the host's strip
# understands the architecture.
if command -v strip >/dev/null; then
    find "$ROOT" -type f \( -name '*.so*' -o -path '*/sbin/*' \) -exec strip --strip-unneeded {} + 2>/dev/null || true
    find "$ROOT/lib/modules" -name '*.ko' -exec strip --strip-debug {} + 2>/dev/null || true
fi

# /etc and the rest of the tree.
mkdir -p "$ROOT/etc/ssh" "$ROOT/etc/acpi/PWRF" "$ROOT/root" "$ROOT/tmp" "$ROOT/proc" "$ROOT/sys" \
    "$ROOT/dev" "$ROOT/run" "$ROOT/var/empty" "$ROOT/var/log"
install -m 0755 "$GUEST/init" "$ROOT/init"
install -m 0644 "$GUEST/sshd_config" "$ROOT/etc/ssh/sshd_config"
install -m 0644 "$GUEST/inittab" "$ROOT/etc/inittab"
install -m 0755 "$GUEST/udhcpc.script" "$ROOT/etc/udhcpc.script"
if [ -n "${SSH_PER_CONNECTION:-}" ]; then
    : >"$ROOT/etc/paddock/ssh-per-connection"
fi
# busybox acpid runs /etc/acpi/PWRF/00000080 for the ACPI power button (virsh shutdown).
printf '#!/bin/sh\nexec /sbin/poweroff\n' >"$ROOT/etc/acpi/PWRF/00000080"
chmod 0755 "$ROOT/etc/acpi/PWRF/00000080"
cat >"$ROOT/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534:sshd privilege separation:/run/sshd:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat >"$ROOT/etc/group" <<'G'
root:x:0:
tty:x:5:
nogroup:x:65534:
G
# `*` (not `!`): no password, yet not "locked", which would make sshd refuse keys too.
cat >"$ROOT/etc/shadow" <<'S'
root:*:19000:0:99999:7:::
sshd:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
S
chmod 0600 "$ROOT/etc/shadow"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$ROOT/etc/nsswitch.conf"
echo paddock-guest >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost paddock-guest\n::1 localhost\n' >"$ROOT/etc/hosts"
printf 'export PS1="\\u@\\h:\\w\\$ "\n' >"$ROOT/etc/profile"
chmod 0700 "$ROOT/root"
chmod 1777 "$ROOT/tmp"

# No private key may ship in the image: every guest booted from it would share it, and
# any build could read it and impersonate the others. "openssh-key-v1" is the magic at
# the start of every OpenSSH private key, base64 `b3BlbnNzaC1rZXktdjE`; PEM keys of other
# formats start with "PRIVATE KEY-----" lines.
if grep -rlE 'b3BlbnNzaC1rZXktdjE|BEGIN (RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY-----' "$ROOT" >"$WORK/keys" 2>/dev/null; then
    die "private key material in the initramfs: $(tr '\n' ' ' <"$WORK/keys")"
fi
find "$ROOT" -name 'ssh_host_*key*' | grep -q . && die "host key files in the initramfs: $(find "$ROOT" -name 'ssh_host_*key*')"

# cpio with every file owned by root, in a stable order.
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) | "${COMPRESS_CMD[@]}" >"$WORK/initrd.img"

mv "$WORK/vmlinuz" "$OUT/vmlinuz"
mv "$WORK/initrd.img" "$OUT/initrd.img"
chmod 0644 "$OUT/vmlinuz" "$OUT/initrd.img"
# A host key from an older build (when one was baked in) must not stay around as if current.
rm -f "$OUT/ssh_host_ed25519_key" "$OUT/ssh_host_ed25519_key.pub"
echo "$STAMP" >"$OUT/stamp"
echo "$QUICK" >"$OUT/stamp.quick"
log "built $OUT: kernel $KVER, initrd $(du -k "$OUT/initrd.img" | cut -f1) KiB ($COMPRESS, $(du -sk "$ROOT" | cut -f1) KiB unpacked)"
