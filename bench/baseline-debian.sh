#!/usr/bin/env bash
# The hand-made baseline for the debian-12 image, what a lab admin would script without
# paddock: a qcow2 overlay of the image, a cloud-init NoCloud seed of the same kind paddock
# writes (xorriso, `cidata`: hostname, a login key, a host key made for this VM and checked
# on login, sshd drop-in), a transient domain of the same shape paddock defines (SeaBIOS →
# GRUB from the disk, seed as a read-only virtio disk, passt forward on 127.0.0.1, guest
# agent channel, <genid/>, virtio rng), then an SSH poll and one `ssh guest COMMAND`.
#
#   bench/baseline-debian.sh [--timeout SECONDS] [--memory MIB] [--cloud-init-wait] PORT COMMAND
#
# stdout: the command's output, then key=value lines: create_s, boot_to_ssh_s, first_byte_s,
# command_s, exit_status and, with --cloud-init-wait, cloud_init_done_s (from `virsh create`
# until `cloud-init status --wait` returns in the guest; measured after the command, so it
# does not delay the first byte). Progress on stderr. A refused login ends the script with
# status 3. The domain (prefix `pdkg2-bdeb-`), overlay and seed are removed on every exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
TIMEOUT=600
MEMORY=1024
CI_WAIT=""
while [ $# -gt 0 ]; do
    case "$1" in
    --timeout) TIMEOUT=$2; shift 2 ;;
    --memory) MEMORY=$2; shift 2 ;;
    --cloud-init-wait) CI_WAIT=1; shift ;;
    --) shift; break ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
done
[ $# -eq 2 ] || { echo "usage: $0 [--timeout S] [--memory MIB] [--cloud-init-wait] PORT COMMAND" >&2; exit 2; }
PORT=$1
COMMAND=$2
URI=qemu:///system
BASE=$HERE/images/out/debian-12/disk.qcow2
[ -s "$BASE" ] || { echo "missing $BASE: run images/build-debian.sh" >&2; exit 1; }
command -v xorriso >/dev/null || { echo "missing xorriso: run scripts/setup-host.sh" >&2; exit 1; }

log() { printf '[baseline-debian] %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

TMP=$(mktemp -d /tmp/pdkg2-bdeb.XXXXXX)
# QEMU runs as another user and must reach the overlay and the seed.
chmod 0755 "$TMP"
NAME=pdkg2-bdeb-$PORT-$$
cleanup() {
    local rc=$?
    if virsh -c "$URI" domstate "$NAME" >/dev/null 2>&1; then
        virsh -c "$URI" destroy "$NAME" >/dev/null 2>&1 || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Keys and seed: the work paddock does before `create` too, so it counts in both timings.
T0=$(now)
ssh-keygen -q -t ed25519 -N '' -C baseline -f "$TMP/id"
ssh-keygen -q -t ed25519 -N '' -C "$NAME" -f "$TMP/hostkey"
qemu-img create -q -f qcow2 -F qcow2 -b "$BASE" "$TMP/overlay.qcow2"
mkdir "$TMP/seed"
python3 - "$TMP" "$NAME" >"$TMP/seed/user-data" <<'PY'
import json, sys
tmp, name = sys.argv[1], sys.argv[2]
read = lambda p: open(f"{tmp}/{p}").read()
doc = {
    "hostname": name, "preserve_hostname": False, "users": [], "disable_root": False,
    "ssh_pwauth": False, "ssh_deletekeys": True, "ssh_genkeytypes": [],
    "ssh_keys": {"ed25519_private": read("hostkey"), "ed25519_public": read("hostkey.pub").strip()},
    "ssh_authorized_keys": [read("id.pub").strip()],
    "write_files": [{"path": "/etc/ssh/sshd_config.d/50-baseline.conf", "permissions": "0644",
                     "content": "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"}],
}
print("#cloud-config")
print(json.dumps(doc, indent=2))
PY
printf '{"instance-id": "%s", "local-hostname": "%s"}\n' "$NAME" "$NAME" >"$TMP/seed/meta-data"
xorriso -as mkisofs -quiet -volid cidata -joliet -rock -output "$TMP/seed.iso" "$TMP/seed" 2>/dev/null
printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cut -d' ' -f1,2 "$TMP/hostkey.pub")" >"$TMP/known_hosts"

cat >"$TMP/domain.xml" <<XML
<domain type='qemu'>
  <name>$NAME</name>
  <genid/>
  <memory unit='MiB'>$MEMORY</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$TMP/overlay.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$TMP/seed.iso'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='user'>
      <backend type='passt'/>
      <model type='virtio'/>
      <portForward proto='tcp' address='127.0.0.1'><range start='$PORT' to='22'/></portForward>
    </interface>
    <serial type='pty'><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
XML

SSH=(ssh -p "$PORT" -i "$TMP/id" -o IdentitiesOnly=yes -o BatchMode=yes
    -o UserKnownHostsFile="$TMP/known_hosts" -o StrictHostKeyChecking=yes -o LogLevel=ERROR)

virsh -c "$URI" create "$TMP/domain.xml" >/dev/null
T_CREATED=$(now)
log "created $NAME, waiting for SSH on 127.0.0.1:$PORT"
DEADLINE=$(awk -v t="$T0" -v d="$TIMEOUT" 'BEGIN { printf "%d", t + d }')
# passt holds a connection while the guest does not listen yet: keep probes short.
until "${SSH[@]}" -o ConnectTimeout=2 root@127.0.0.1 true 2>"$TMP/ssh.err"; do
    if grep -q 'Permission denied\|REMOTE HOST IDENTIFICATION' "$TMP/ssh.err"; then
        log "login refused: $(tail -n1 "$TMP/ssh.err")"
        exit 3
    fi
    if [ "$(date +%s)" -ge "$DEADLINE" ]; then
        log "no SSH login within ${TIMEOUT}s: $(tail -n1 "$TMP/ssh.err")"
        exit 1
    fi
    sleep 0.2
done
T_SSH=$(now)
log "logged in after $(elapsed "$T0" "$T_SSH")s"

T_CMD=$(now)
set +e
"${SSH[@]}" -o ConnectTimeout=10 root@127.0.0.1 "$COMMAND" | {
    dd bs=1 count=1 status=none
    now >"$TMP/first_byte"
    cat
}
STATUS=${PIPESTATUS[0]}
set -e
T_END=$(now)
[ -s "$TMP/first_byte" ] && FIRST=$(elapsed "$T_CMD" "$(cat "$TMP/first_byte")") || FIRST=""
if [ -n "$CI_WAIT" ]; then
    "${SSH[@]}" -o ConnectTimeout=10 root@127.0.0.1 'cloud-init status --wait' >"$TMP/ci" 2>&1 || log "cloud-init: $(tail -n1 "$TMP/ci")"
    echo "cloud_init_done_s=$(elapsed "$T0" "$(now)")"
    echo "cloud_init_status=$(tr -d '.\n' <"$TMP/ci" | sed 's/^status: //')"
fi

echo "create_s=$(elapsed "$T0" "$T_CREATED")"
echo "boot_to_ssh_s=$(elapsed "$T0" "$T_SSH")"
echo "first_byte_s=$FIRST"
echo "command_s=$(elapsed "$T_CMD" "$T_END")"
echo "exit_status=$STATUS"
