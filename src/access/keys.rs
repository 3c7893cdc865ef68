//! Installing a user's public keys into a guest that does not trust the fleet
//! CA, and removing them again: pure functions from (OS, grant, keys) to the
//! exact files uploaded and commands run, so they can be snapshot-tested.
//!
//! Every line paddock adds ends with the comment `paddock-grant:<id>:<user>`,
//! which is how removal finds exactly the lines of one grant and nothing else.

use crate::config::Os;

/// One thing done over the daemon's SSH session to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOp {
    /// Put `bytes` at `path` (SFTP spelling, forward slashes).
    Upload { path: String, bytes: Vec<u8> },
    /// Run `command`, feeding it `stdin`; it must exit 0.
    Exec { command: String, stdin: Vec<u8> },
}

/// Where Windows OpenSSH reads the keys of members of Administrators.
pub const WINDOWS_ADMIN_KEYS: &str = r"C:\ProgramData\ssh\administrators_authorized_keys";

/// Windows OpenSSH ignores `administrators_authorized_keys` unless only
/// Administrators and SYSTEM may touch it, so the ACL is reset after each write.
pub const WINDOWS_ACL: &str =
    r#"icacls.exe "C:\ProgramData\ssh\administrators_authorized_keys" /inheritance:r /grant "Administrators:F" /grant "SYSTEM:F""#;

const POWERSHELL: &str = "powershell -NoProfile -NonInteractive -ExecutionPolicy Bypass -File";

/// The comment that marks a grant's lines.
pub fn marker(grant_id: &str, user: &str) -> String {
    format!("paddock-grant:{grant_id}:{user}")
}

/// `authorized_keys` lines for `keys` (each an OpenSSH public key line; its own comment is replaced).
pub fn key_lines(grant_id: &str, user: &str, keys: &[String]) -> Vec<String> {
    keys.iter()
        .filter_map(|k| {
            let mut parts = k.split_whitespace();
            let (algo, data) = (parts.next()?, parts.next()?);
            Some(format!("{algo} {data} {}", marker(grant_id, user)))
        })
        .collect()
}

/// What installs the grant's keys for the image's login user.
pub fn install_ops(os: Os, grant_id: &str, user: &str, keys: &[String]) -> Vec<KeyOp> {
    let lines = key_lines(grant_id, user, keys);
    match os {
        Os::Windows => windows_script(grant_id, user, &lines, "install"),
        Os::Linux | Os::Macos => {
            let mut stdin = lines.join("\n").into_bytes();
            stdin.push(b'\n');
            // umask first: sshd's StrictModes refuses a group- or world-writable file.
            vec![KeyOp::Exec { command: "umask 077 && mkdir -p \"$HOME/.ssh\" && cat >> \"$HOME/.ssh/authorized_keys\"".into(), stdin }]
        }
    }
}

/// What removes the grant's keys again (and nothing else).
/// Ends every SSH session in a POSIX guest except the one running this
/// command: used when a grant ends on a VM that stays (a held run's), so a
/// session left open does not outlive the grant. A session is found by what sshd
/// gives every process it starts for a user, the `SSH_CONNECTION` variable, not by
/// process names (OpenSSH 9.8 renamed its session processes `sshd-session`): every
/// process carrying it, and every process of its session, is killed, except those of
/// this command's own session. A process that left its session and cleared its
/// environment escapes; it can no longer log in again once the certificate is
/// useless. Windows guests are not covered: their sessions end when the VM goes.
pub fn end_sessions_ops(os: Os) -> Vec<KeyOp> {
    match os {
        Os::Windows => Vec::new(),
        Os::Linux | Os::Macos => vec![KeyOp::Exec { command: END_SESSIONS.to_string(), stdin: Vec::new() }],
    }
}

// `sed 's/.*) //'` drops `pid (comm) ` greedily, so a name with `) ` in it cannot shift
// the fields; the session id is then the fourth. Works with busybox and procps alike.
const END_SESSIONS: &str = r#"sid() { sed 's/.*) //' "$1/stat" 2>/dev/null | cut -d" " -f4; }; me=$(sid /proc/$$); found=""; for d in /proc/[0-9]*; do s=$(sid "$d"); [ -n "$s" ] && [ "$s" != "$me" ] && [ "$s" != 0 ] || continue; if tr "\0" "\n" < "$d/environ" 2>/dev/null | grep -q "^SSH_CONNECTION="; then found="$found $s"; kill -KILL "${d#/proc/}" 2>/dev/null; fi; done; [ -z "$found" ] && exit 0; for d in /proc/[0-9]*; do s=$(sid "$d"); for t in $found; do [ "$s" = "$t" ] && kill -KILL "${d#/proc/}" 2>/dev/null; done; done; true"#;

/// Where a seeded guest's sshd reads the principals a certificate must name to log in
/// as `user` (`AuthorizedPrincipalsFile /etc/ssh/auth_principals/%u`, see `vm::seed`).
pub fn principals_path(user: &str) -> String {
    format!("/etc/ssh/auth_principals/{user}")
}

/// Makes `principal` (the VM's) the one a certificate must name on this guest again:
/// a grant on a held VM whose earlier grant was revoked.
pub fn allow_principal_ops(os: Os, user: &str, principal: &str) -> Vec<KeyOp> {
    match os {
        Os::Windows | Os::Macos => Vec::new(),
        Os::Linux => vec![KeyOp::Exec {
            command: format!("mkdir -p /etc/ssh/auth_principals && cat > {}", sh_quote(&principals_path(user))),
            stdin: format!("{principal}\n").into_bytes(),
        }],
    }
}

/// Empties the guest's principals file, so no certificate of the fleet CA logs in any
/// more (revoke or end of the last grant on a VM that stays). Paddock's own key is in
/// `authorized_keys` and still works.
pub fn revoke_principals_ops(os: Os, user: &str) -> Vec<KeyOp> {
    match os {
        Os::Windows | Os::Macos => Vec::new(),
        Os::Linux => {
            let f = sh_quote(&principals_path(user));
            vec![KeyOp::Exec { command: format!("[ ! -e {f} ] || : > {f}"), stdin: Vec::new() }]
        }
    }
}

/// `'...'` for sh, with `'` written as `'\''`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn removal_ops(os: Os, grant_id: &str, user: &str) -> Vec<KeyOp> {
    match os {
        Os::Windows => windows_script(grant_id, user, &[], "remove"),
        Os::Linux | Os::Macos => {
            let m = marker(grant_id, user);
            // `grep -v` exits 1 when no line is left, which is a success here;
            // the file is rewritten in place so its owner and mode stay.
            vec![KeyOp::Exec {
                command: format!(
                    "f=\"$HOME/.ssh/authorized_keys\"; [ -f \"$f\" ] || exit 0; \
                     grep -v -F ' {m}' \"$f\" > \"$f.paddock\"; [ $? -le 1 ] || exit 1; \
                     cat \"$f.paddock\" > \"$f\" && rm -f \"$f.paddock\""
                ),
                stdin: Vec::new(),
            }]
        }
    }
}

/// A PowerShell script (UTF-8 with BOM, CRLF, as Windows PowerShell 5.1 wants)
/// that drops the grant's lines, appends `add`, resets the ACL, and deletes itself.
fn windows_script(grant_id: &str, user: &str, add: &[String], verb: &str) -> Vec<KeyOp> {
    let m = marker(grant_id, user);
    let mut s = String::from("\u{feff}$ErrorActionPreference = 'Stop'\n");
    s.push_str(&format!("$f = '{WINDOWS_ADMIN_KEYS}'\n"));
    s.push_str("$keep = @()\n");
    s.push_str(&format!(
        "if (Test-Path -LiteralPath $f) {{ $keep = @(Get-Content -LiteralPath $f | Where-Object {{ -not $_.EndsWith(' {m}') }}) }}\n"
    ));
    s.push_str("$add = @(\n");
    for l in add {
        // Key lines are base64 and a marker of [A-Za-z0-9:_-]: no quote can occur.
        s.push_str(&format!("  '{l}'\n"));
    }
    s.push_str(")\n");
    s.push_str("Set-Content -LiteralPath $f -Value ($keep + $add) -Encoding ascii\n");
    s.push_str(&format!("& {WINDOWS_ACL}\n"));
    s.push_str("if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }\n");
    s.push_str("Remove-Item -LiteralPath $MyInvocation.MyCommand.Path\n");
    s.push_str("exit 0\n");
    let body = s.replace('\n', "\r\n");
    let file = format!("paddock-keys-{verb}-{grant_id}.ps1");
    vec![
        KeyOp::Upload { path: format!("C:/ProgramData/ssh/{file}"), bytes: body.into_bytes() },
        KeyOp::Exec { command: format!(r"{POWERSHELL} C:\ProgramData\ssh\{file}"), stdin: Vec::new() },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 2] = [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl mia@laptop",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA/XDHqQ4zGgrAo2cLdmgWGXXbEazbp/V20Cd7HR/aap mia@desk",
    ];

    fn render(ops: &[KeyOp]) -> String {
        let mut out = String::new();
        for op in ops {
            match op {
                KeyOp::Upload { path, bytes } => {
                    out.push_str(&format!("UPLOAD {path} ({} bytes)\n", bytes.len()));
                    let text = String::from_utf8(bytes.clone()).unwrap();
                    out.push_str(&text.replace('\u{feff}', "<BOM>").replace("\r\n", "<CRLF>\n"));
                }
                KeyOp::Exec { command, stdin } => {
                    out.push_str(&format!("EXEC {command}\n"));
                    if !stdin.is_empty() {
                        out.push_str(&format!("STDIN\n{}", String::from_utf8(stdin.clone()).unwrap()));
                    }
                }
            }
        }
        out
    }

    fn keys() -> Vec<String> {
        KEYS.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn windows_install() {
        insta::assert_snapshot!(render(&install_ops(Os::Windows, "g7", "mia", &keys())));
    }

    #[test]
    fn windows_removal() {
        insta::assert_snapshot!(render(&removal_ops(Os::Windows, "g7", "mia")));
    }

    #[test]
    fn posix_install_and_removal() {
        let mut both = render(&install_ops(Os::Linux, "g7", "mia", &keys()));
        both.push_str("----\n");
        both.push_str(&render(&removal_ops(Os::Linux, "g7", "mia")));
        insta::assert_snapshot!(both);
    }

    #[test]
    fn windows_acl_is_exactly_the_documented_one() {
        let ops = install_ops(Os::Windows, "g7", "mia", &keys());
        let KeyOp::Upload { bytes, .. } = &ops[0] else { panic!("upload first") };
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with('\u{feff}'));
        assert!(text.contains(
            "\r\n& icacls.exe \"C:\\ProgramData\\ssh\\administrators_authorized_keys\" /inheritance:r /grant \"Administrators:F\" /grant \"SYSTEM:F\"\r\n"
        ));
        assert!(!text.replace("\r\n", "").contains('\n'), "every line ends in CRLF");
    }

    /// The POSIX commands, run by a real `sh` against a real file: the grant's
    /// lines go in, and removal takes out exactly them.
    #[test]
    fn posix_commands_work_in_a_real_shell() {
        let home = tempfile::tempdir().unwrap();
        let ssh = home.path().join(".ssh");
        std::fs::create_dir(&ssh).unwrap();
        std::fs::write(ssh.join("authorized_keys"), "ssh-ed25519 AAAAother admin@lab\n").unwrap();
        let run = |ops: Vec<KeyOp>| {
            for op in ops {
                let KeyOp::Exec { command, stdin } = op else { panic!("posix has no uploads") };
                let mut child = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .env("HOME", home.path())
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                child.stdin.take().unwrap().write_all(&stdin).unwrap();
                assert!(child.wait().unwrap().success(), "{command}");
            }
        };
        let read = || std::fs::read_to_string(ssh.join("authorized_keys")).unwrap();
        run(install_ops(Os::Linux, "g7", "mia", &keys()));
        run(install_ops(Os::Linux, "g8", "otto", &keys()[..1]));
        assert_eq!(read().lines().count(), 4);
        run(removal_ops(Os::Linux, "g7", "mia"));
        let left = read();
        assert_eq!(
            left,
            "ssh-ed25519 AAAAother admin@lab\n\
             ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl paddock-grant:g8:otto\n"
        );
        // Removing again, or from a guest with no file, is not an error.
        run(removal_ops(Os::Linux, "g7", "mia"));
        std::fs::remove_file(ssh.join("authorized_keys")).unwrap();
        run(removal_ops(Os::Linux, "g8", "otto"));
    }
}

#[cfg(test)]
mod end_sessions_tests {
    use super::*;

    /// The command ends other SSH sessions' processes (whatever they are called) and
    /// spares its own session and processes without `SSH_CONNECTION`. Stand-ins run in a
    /// PID namespace of its own so the command cannot touch this machine's real SSH
    /// sessions (other tests run an sshd).
    #[test]
    fn ends_other_sessions_only() {
        let KeyOp::Exec { command, .. } = &end_sessions_ops(Os::Linux)[0] else { panic!() };
        let dir = tempfile::tempdir().unwrap();
        let cmd = dir.path().join("end.sh");
        std::fs::write(&cmd, command).unwrap();
        let script = format!(
            r#"SSH_CONNECTION="127.0.0.1 5 127.0.0.1 22" setsid bash -c '(exec -a "sshd-session: root@pts/0" sleep 61 &); exec -a grant-shell sleep 62' &
SSH_CONNECTION="127.0.0.1 6 127.0.0.1 22" setsid bash -c 'env -u SSH_CONNECTION bash -c "exec -a child-without-env sleep 63" & exec -a grant-build sleep 64' &
setsid bash -c 'exec -a bystander sleep 65' &
sleep 0.5
SSH_CONNECTION="127.0.0.1 7 127.0.0.1 22" setsid bash -c '(exec -a ours-too sleep 66 &); busybox sh {}'
sleep 0.3
ps -eo args"#,
            cmd.display()
        );
        let out = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "bash", "-c", &script])
            .env_remove("SSH_CONNECTION")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let ps = String::from_utf8_lossy(&out.stdout);
        for gone in ["sshd-session", "grant-shell", "grant-build", "child-without-env"] {
            assert!(!ps.contains(gone), "{gone} not ended:\n{ps}");
        }
        assert!(ps.contains("bystander"), "a process of no SSH session was killed:\n{ps}");
        assert!(ps.contains("ours-too"), "a process of the command's own session was killed:\n{ps}");
        assert!(end_sessions_ops(Os::Windows).is_empty());
    }
}
