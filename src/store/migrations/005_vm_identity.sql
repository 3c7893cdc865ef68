-- Each VM's pinned SSH host key (OpenSSH public line), for images whose VMs get a key
-- of their own (cloud-init identity). A table of its own: `put_vm` replaces whole
-- `vms` rows, and the key is written once, before the VM boots.

CREATE TABLE vm_host_keys (
    vm        TEXT PRIMARY KEY,
    host_key  TEXT NOT NULL
) STRICT;
