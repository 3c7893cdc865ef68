#!/usr/bin/env bash
# Host set-up for paddock on Debian 12 (bookworm), as root. Safe to run twice.
# Installs libvirt + QEMU from bookworm-backports (see shared/HOST.md for why),
# the tools the image script and the tests use, starts virtlogd and libvirtd
# if they are not running, and keeps libvirt's `default` NAT network off.
set -euo pipefail

log() { printf '[setup-host] %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup-host.sh must run as root" >&2
        exit 1
    fi
}

add_backports() {
    local list=/etc/apt/sources.list.d/paddock-backports.sources
    if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return
    fi
    # Use the mirror the existing bookworm entry uses.
    local mirror
    mirror=$(grep -rhs '^URIs:.*debian/\?$' /etc/apt/sources.list.d/ | head -n1 | awk '{print $2}')
    if [ -z "$mirror" ]; then
        mirror=$(grep -hs '^deb .*bookworm ' /etc/apt/sources.list | head -n1 | awk '{print $2}')
    fi
    mirror=${mirror:-http://deb.debian.org/debian}
    log "adding bookworm-backports from $mirror"
    cat >"$list" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    APT_UPDATED=0
}

# images/build-guest.sh downloads the aarch64 and s390x guests' packages as PKG:arm64 and
# PKG:s390x, which apt only knows once dpkg lists those architectures (and lists are fetched).
add_foreign_architectures() {
    local a
    for a in arm64 s390x; do
        if ! dpkg --print-foreign-architectures | grep -qx "$a"; then
            log "adding dpkg architecture $a"
            dpkg --add-architecture "$a"
            APT_UPDATED=0
        fi
    done
}

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
}

install_packages() {
    # qemu-system-arm/-misc/-ppc: emulators for aarch64, s390x+riscv64, ppc64le guests (TCG);
    # ovmf: UEFI firmware for the windows/macos profiles; swtpm: the optional TPM emulator.
    # mmdebstrap, fdisk (sfdisk), e2fsprogs (mkfs.ext4 -d): images/build-debian.sh;
    # xorriso: the per-VM cloud-init seed ISOs (src/vm/seed.rs).
    # systemd: `systemd-analyze verify` for the package's units (254 from backports knows
    # RestartSteps=); nothing starts it. dpkg-dev: dpkg-shlibdeps for scripts/build-deb.sh.
    local backports=(libvirt-daemon-system libvirt-clients libvirt-dev qemu-system-x86
        qemu-system-arm qemu-system-misc qemu-system-ppc ovmf swtpm swtpm-tools
        qemu-utils passt pkg-config systemd)
    local plain=(busybox-static openssh-client openssh-server cpio gzip zstd xz-utils binutils libxml2-utils chromium
        sqlite3 python3 ca-certificates curl dpkg-dev adduser
        mmdebstrap fdisk e2fsprogs xorriso)
    local missing=()
    for p in "${backports[@]}" "${plain[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "packages already installed"
        return
    fi
    log "installing: ${missing[*]}"
    apt_update_once
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends -t bookworm-backports "${backports[@]}" >/dev/null
    apt-get install -y -qq --no-install-recommends "${plain[@]}" >/dev/null
}

start_daemons() {
    if ! pgrep -x virtlogd >/dev/null; then
        log "starting virtlogd"
        virtlogd -d
    fi
    if ! pgrep -x libvirtd >/dev/null; then
        log "starting libvirtd"
        libvirtd -d
    fi
    # Wait (bounded) until libvirtd answers.
    local i
    for i in $(seq 1 100); do
        if virsh -c qemu:///system version >/dev/null 2>&1; then
            break
        fi
        sleep 0.1
    done
    virsh -c qemu:///system version >/dev/null
    # Never run the default NAT network (private range, forbidden here).
    if virsh -c qemu:///system net-info default >/dev/null 2>&1; then
        virsh -c qemu:///system net-autostart default --disable >/dev/null 2>&1 || true
        if virsh -c qemu:///system net-info default | grep -q '^Active:.*yes'; then
            virsh -c qemu:///system net-destroy default >/dev/null
        fi
    fi
}

# libvirt 11.3 starts passt itself with no way to add options; the fence wrapper, ahead of
# /usr/bin in libvirtd's PATH, turns off passt's gateway mapping for paddock's guests (see the
# script). A hypervisor host of a real lab needs the same file.
install_passt_fence() {
    local src
    src="$(dirname "$0")/passt-fence.sh"
    if cmp -s "$src" /usr/local/bin/passt; then
        log "passt fence already installed"
        return
    fi
    install -m 0755 "$src" /usr/local/bin/passt
    log "installed the passt fence as /usr/local/bin/passt"
}

# scripts/run-tests.sh runs `cargo fmt --check` and `cargo clippy` before the tests.
rust_components() {
    if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
        return
    fi
    if command -v rustup >/dev/null 2>&1; then
        log "adding the rustfmt and clippy components"
        rustup component add rustfmt clippy
    else
        echo "cargo fmt / cargo clippy are missing and there is no rustup to add them" >&2
        exit 1
    fi
}

need_root
add_backports
add_foreign_architectures
# The guest image script downloads Debian packages: it needs current lists.
if ! compgen -G '/var/lib/apt/lists/*bookworm-backports*Packages*' >/dev/null ||
    ! compgen -G '/var/lib/apt/lists/*_binary-s390x_Packages*' >/dev/null ||
    ! compgen -G '/var/lib/apt/lists/*_binary-arm64_Packages*' >/dev/null; then
    apt_update_once
fi
install_packages
install_passt_fence
start_daemons
rust_components
log "host ready"
