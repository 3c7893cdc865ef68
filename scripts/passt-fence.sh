#!/bin/sh
# paddock's passt fence, installed as /usr/local/bin/passt by scripts/setup-host.sh (ahead of
# /usr/bin in libvirtd's PATH). libvirt 11.3 starts passt itself and has no way to pass it
# options, so this wrapper adds them for paddock's guests only, recognised by the interface alias
# paddock writes (`ua-paddock-<mode>`), which libvirt puts in passt's --socket path:
#   every paddock guest:   --no-map-gw   the gateway address is no longer the host's loopback, so a
#                                        guest reaches neither the daemon nor other guests' forwards
#   network = "none":      --ipv4-only --outbound 127.0.0.1
#                                        no IPv6; IPv4 sockets are bound to loopback, so the kernel refuses
#                                        every connection to another address before a packet leaves
# Any other guest gets passt unchanged.
real=/usr/bin/passt
case "$*" in
    *ua-paddock-none*) exec "$real" --no-map-gw --ipv4-only --outbound 127.0.0.1 "$@" ;;
    *ua-paddock-*) exec "$real" --no-map-gw "$@" ;;
esac
exec "$real" "$@"
