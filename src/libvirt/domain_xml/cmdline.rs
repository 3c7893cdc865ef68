//! The bundled guest's hand-over on the kernel command line (`paddock.authkey=`, `paddock.ca=`,
//! `paddock.hostkey=`, `paddock.hostpub=`, `paddock.principal=`), base64 so busybox can decode it.

/// The kernel command line of a kernel+initrd image with paddock's hand-over
/// parameters appended; the bundled guest's `/init` reads them.
pub fn kernel_cmdline(base: &str, authorized_keys: &[String], ca_key: Option<&str>) -> String {
    let mut line = base.trim().to_string();
    if !authorized_keys.is_empty() {
        let keys = authorized_keys.iter().map(|k| k.trim()).collect::<Vec<_>>().join("\n");
        line.push_str(" paddock.authkey=");
        line.push_str(&base64(keys.as_bytes()));
    }
    if let Some(ca) = ca_key {
        line.push_str(" paddock.ca=");
        line.push_str(&base64(ca.trim().as_bytes()));
    }
    line.trim_start().to_string()
}

/// The command-line words that give the bundled guest its own host key and principal.
pub fn identity_cmdline(host_key_pem: &str, host_pub: &str, principal: &str) -> String {
    format!(
        " paddock.hostkey={} paddock.hostpub={} paddock.principal={principal}",
        base64(host_key_pem.as_bytes()),
        base64(host_pub.trim().as_bytes())
    )
}

/// Standard base64 with padding (the guest decodes it with busybox `base64 -d`).
pub(super) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
