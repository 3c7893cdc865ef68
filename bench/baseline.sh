#!/usr/bin/env bash
# The hand-made baseline a lab admin would write without paddock: boot the bundled guest
# as a transient libvirt domain, wait for SSH, run one command, print timings, clean up.
#
#   bench/baseline.sh [--ca CA_PRIVATE_KEY [--sign-with OTHER_CA_KEY]] [--timeout SECONDS]
#                     [--arch ARCH] [--console-out FILE] PORT COMMAND
#
# Like paddock (`identity = "cmdline"`), it makes a host key for this one guest and passes it
# as `paddock.hostkey=`/`paddock.hostpub=` (the image has none of its own), with the domain's
# name as `paddock.principal=`, and checks exactly that key on login.
# Without --ca, a fresh client key is passed as `paddock.authkey=`. With --ca, only the CA's
# public key is passed (`paddock.ca=`) and the client logs in with a user certificate
# for the guest's principal signed by that CA, which proves the guest's sshd trusts the CA.
# --sign-with signs the certificate with another key instead (a login must then fail).
# A refused login ("Permission denied") ends the script at once with status 3.
# The command's output goes to stdout, followed by `key=value` timing lines:
#   create_s, boot_to_ssh_s, boot_to_ready_s, first_byte_s, command_s, exit_status, host_key.
# Progress goes to stderr. The domain (prefix `baseline-`) and temp files are removed on
# every exit path; --console-out copies the serial console log out first.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
CA_KEY=""
SIGN_KEY=""
TIMEOUT=120
ARCH=x86_64
CONSOLE_OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
    --ca) CA_KEY=$2; shift 2 ;;
    --sign-with) SIGN_KEY=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --arch) ARCH=$2; shift 2 ;;
    --console-out) CONSOLE_OUT=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
done
[ $# -eq 2 ] || { echo "usage: $0 [--ca KEY] [--timeout S] [--arch ARCH] [--console-out FILE] PORT COMMAND" >&2; exit 2; }
PORT=$1
COMMAND=$2
URI=qemu:///system
IMG=$HERE/images/out/$ARCH
for f in vmlinuz initrd.img; do
    [ -s "$IMG/$f" ] || { echo "missing $IMG/$f: run images/build-guest.sh $ARCH" >&2; exit 1; }
done

# Per-architecture domain facts. Every architecture runs under TCG (type='qemu') here.
case "$ARCH" in
x86_64)
    MACHINE=pc
    EMULATOR=/usr/bin/qemu-system-x86_64
    CONSOLE=ttyS0
    # As the daemon's own x86 guests (fleet.toml): under TCG on a loaded machine the kernel's
    # IO-APIC timer check can fail ("IO-APIC + timer doesn't work!") and panic the boot.
    KERNEL_ARGS="no_timer_check"
    # ACPI gives the power button that `virsh shutdown` presses.
    FEATURES="<features><acpi/></features>"
    CPU=""
    CONSOLE_ELEM=serial
    CONSOLE_TARGET="<target port='0'/>"
    ;;
aarch64)
    MACHINE=virt
    EMULATOR=/usr/bin/qemu-system-aarch64
    CONSOLE=ttyAMA0
    # No UEFI firmware, so the kernel boots from the device tree without ACPI.
    FEATURES=""
    # QEMU's default virt CPU is a 32-bit cortex-a15; cortex-a57 is a plain ARMv8.0 core
    # (`max` would add pointer authentication, which TCG emulates slowly).
    CPU="<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>cortex-a57</model></cpu>"
    CONSOLE_ELEM=serial
    CONSOLE_TARGET="<target port='0'/>"
    ;;
s390x)
    MACHINE=s390-ccw-virtio
    EMULATOR=/usr/bin/qemu-system-s390x
    # s390x has no UART: the console is SCLP, a console device rather than a serial one.
    CONSOLE=ttysclp0
    FEATURES=""
    # Same boot time as the default `qemu` CPU, and gives the guest a PRNG (KASLR on).
    CPU="<cpu mode='maximum' check='none'/>"
    CONSOLE_ELEM=console
    CONSOLE_TARGET="<target type='sclp' port='0'/>"
    ;;
*) echo "unknown --arch $ARCH (x86_64, aarch64, s390x)" >&2; exit 2 ;;
esac
[ -x "$EMULATOR" ] || { echo "missing $EMULATOR: run scripts/setup-host.sh" >&2; exit 1; }

log() { printf '[baseline] %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

TMP=$(mktemp -d /tmp/baseline.XXXXXX)
# QEMU and virtlogd run as other users and must reach the console file.
chmod 0755 "$TMP"
NAME=baseline-$PORT-$$
WATCHER=""
cleanup() {
    local rc=$?
    [ -z "$WATCHER" ] || kill "$WATCHER" 2>/dev/null || true
    if virsh -c "$URI" domstate "$NAME" >/dev/null 2>&1; then
        virsh -c "$URI" destroy "$NAME" >/dev/null 2>&1 || true
    fi
    if [ -n "$CONSOLE_OUT" ] && [ -f "$TMP/console.log" ]; then
        cp "$TMP/console.log" "$CONSOLE_OUT" || true
    fi
    if [ "$rc" -ne 0 ] && [ -f "$TMP/console.log" ]; then
        log "console log tail:"
        tail -n 30 "$TMP/console.log" >&2 || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ssh-keygen -q -t ed25519 -N '' -C baseline -f "$TMP/id"
ssh-keygen -q -t ed25519 -N '' -C "$NAME" -f "$TMP/hostkey"
CMDLINE="console=$CONSOLE quiet ${KERNEL_ARGS:+$KERNEL_ARGS }paddock.hostkey=$(base64 -w0 <"$TMP/hostkey") paddock.hostpub=$(base64 -w0 <"$TMP/hostkey.pub") paddock.principal=$NAME"
if [ -n "$CA_KEY" ]; then
    ssh-keygen -q -s "${SIGN_KEY:-$CA_KEY}" -I "baseline-$$" -n "$NAME" -V -1m:+30m "$TMP/id.pub"
    CA_PUB=$(ssh-keygen -y -f "$CA_KEY")
    CMDLINE="$CMDLINE paddock.ca=$(printf '%s' "$CA_PUB" | base64 -w0)"
else
    CMDLINE="$CMDLINE paddock.authkey=$(base64 -w0 <"$TMP/id.pub")"
fi
printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cut -d' ' -f1,2 "$TMP/hostkey.pub")" >"$TMP/known_hosts"

cat >"$TMP/domain.xml" <<XML
<domain type='qemu'>
  <name>$NAME</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='$ARCH' machine='$MACHINE'>hvm</type>
    <kernel>$IMG/vmlinuz</kernel>
    <initrd>$IMG/initrd.img</initrd>
    <cmdline>$CMDLINE</cmdline>
  </os>
  $FEATURES
  $CPU
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$EMULATOR</emulator>
    <interface type='user'>
      <backend type='passt'/>
      <model type='virtio'/>
      <portForward proto='tcp' address='127.0.0.1'>
        <range start='$PORT' to='22'/>
      </portForward>
    </interface>
    <$CONSOLE_ELEM type='file'>
      <source path='$TMP/console.log'/>
      $CONSOLE_TARGET
    </$CONSOLE_ELEM>
    <!-- Without an entropy source sshd waits ~1 s under TCG for the kernel's CRNG. -->
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
XML

SSH=(ssh -p "$PORT" -i "$TMP/id" -o IdentitiesOnly=yes -o BatchMode=yes
    -o UserKnownHostsFile="$TMP/known_hosts" -o StrictHostKeyChecking=yes
    -o LogLevel=ERROR)

T0=$(now)
virsh -c "$URI" create "$TMP/domain.xml" >/dev/null
T_CREATED=$(now)
log "created $NAME, waiting for SSH on 127.0.0.1:$PORT"
DEADLINE=$(awk -v t="$T0" -v d="$TIMEOUT" 'BEGIN { printf "%d", t + d }')
# For comparison only: when the guest announces sshd listening on its console.
(
    until grep -qs '^PADDOCK-READY' "$TMP/console.log"; do sleep 0.05; done
    now >"$TMP/ready"
) &
WATCHER=$!
# passt accepts on the host port at once and holds the connection while the guest is not
# listening yet, so a probe hangs until its timeout: keep probes short.
until "${SSH[@]}" -o ConnectTimeout=2 root@127.0.0.1 true 2>"$TMP/ssh.err"; do
    if grep -q 'Permission denied' "$TMP/ssh.err"; then
        log "login refused: $(tail -n1 "$TMP/ssh.err")"
        exit 3
    fi
    if [ "$(date +%s)" -ge "$DEADLINE" ]; then
        log "no SSH login within ${TIMEOUT}s: $(tail -n1 "$TMP/ssh.err")"
        exit 1
    fi
    if [ -n "${BASELINE_TRACE:-}" ]; then
        log "probe failed at $(elapsed "$T0" "$(now)"): $(tail -n1 "$TMP/ssh.err")"
    fi
    sleep 0.2
done
T_SSH=$(now)
log "logged in after $(elapsed "$T0" "$T_SSH")s"

# First output byte: `dd bs=1 count=1` reads exactly one byte from the pipe, then cat the rest.
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

echo "create_s=$(elapsed "$T0" "$T_CREATED")"
echo "boot_to_ssh_s=$(elapsed "$T0" "$T_SSH")"
# Console-announced readiness (what paddock can wait for instead of probing).
[ -s "$TMP/ready" ] && echo "boot_to_ready_s=$(elapsed "$T0" "$(cat "$TMP/ready")")" || echo "boot_to_ready_s="
echo "first_byte_s=$FIRST"
echo "command_s=$(elapsed "$T_CMD" "$T_END")"
echo "exit_status=$STATUS"
echo "host_key=$(cat "$TMP/hostkey.pub")"
