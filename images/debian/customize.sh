#!/usr/bin/env bash
# mmdebstrap customize hook for the debian-12 image: `customize.sh ROOTDIR LABEL`.
# Makes the tree a generic cloud image: no machine id, no host keys (cloud-init writes the
# per-VM key from the seed), DHCP on the passt NIC, cloud-init reading only NoCloud, and a
# GRUB core image that finds /boot/grub on the first partition.
set -euo pipefail
R=$1
LABEL=$2

echo "LABEL=$LABEL / ext4 errors=remount-ro 0 1" >"$R/etc/fstab"

# A clone must not share these: systemd makes a machine id at first boot, cloud-init the host keys.
: >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R"/etc/ssh/ssh_host_*

# passt answers DHCP on the one virtio NIC; nothing configures any other network.
mkdir -p "$R/etc/systemd/network"
cat >"$R/etc/systemd/network/10-paddock-dhcp.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NET
chroot "$R" systemctl enable systemd-networkd.service >/dev/null 2>&1
# Nothing to wait for beyond the one NIC; do not stall boot on "online" targets.
chroot "$R" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1

mkdir -p "$R/etc/cloud/cloud.cfg.d"
cat >"$R/etc/cloud/cloud.cfg.d/90-paddock.cfg" <<'CFG'
# paddock: identity comes only from the NoCloud seed (a `cidata` disk); the network is
# the passt NIC configured above, never rewritten by cloud-init.
datasource_list: [NoCloud, None]
network: {config: disabled}
locale: C.UTF-8
CFG

# A small initramfs: GRUB reads it through BIOS disk calls and the kernel unpacks it, both
# emulated under TCG, so the generic kernel's `MODULES=most` (every storage and fs driver)
# costs tens of seconds per boot. These guests only ever boot from a virtio disk with ext4.
mkdir -p "$R/etc/initramfs-tools/conf.d"
echo "MODULES=list" >"$R/etc/initramfs-tools/conf.d/paddock"
printf '%s\n' virtio_pci virtio_blk virtio_scsi ext4 crc32c_generic >>"$R/etc/initramfs-tools/modules"
chroot "$R" update-initramfs -u -k all >/dev/null

# Only the cloud-init modules paddock's seed uses (each costs seconds of Python under TCG).
cat >"$R/etc/cloud/cloud.cfg.d/91-paddock-modules.cfg" <<'CFG'
cloud_init_modules: [seed_random, bootcmd, write_files, growpart, resizefs, set_hostname, update_hostname, update_etc_hosts, users_groups, ssh]
cloud_config_modules: [runcmd]
cloud_final_modules: [scripts_per_once, scripts_per_boot, scripts_per_instance, scripts_user, final_message]
CFG

# Serial console for GRUB, the kernel and a getty (boot diagnostics land in the console log).
KVER=$(ls "$R/lib/modules")
[ "$(printf '%s\n' "$KVER" | wc -l)" -eq 1 ] || { echo "expected one kernel, got: $KVER" >&2; exit 1; }
mkdir -p "$R/boot/grub"
cp -a "$R/usr/lib/grub/i386-pc" "$R/boot/grub/"
cat >"$R/boot/grub/grub.cfg" <<CFG
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
linux /boot/vmlinuz-$KVER root=LABEL=$LABEL ro console=tty0 console=ttyS0,115200n8 no_timer_check panic=1
initrd /boot/initrd.img-$KVER
boot
CFG
chroot "$R" grub-mkimage -O i386-pc -o /boot/grub/core.img -p '(hd0,msdos1)/boot/grub' \
    biosdisk part_msdos ext2 normal linux serial terminal echo test configfile gzio
