//! Remote command lines for POSIX guests: quoting, the step wrapper, and the kill command.
//!
//! Everything here must run under busybox ash as well as dash and bash: no bash-isms, no
//! GNU-only flags.

use std::collections::BTreeMap;

/// Quotes `s` for a POSIX shell so that the shell reads back exactly these bytes.
///
/// Inside single quotes nothing is special except the single quote itself, which is written
/// as `'\''` (close, escaped quote, reopen).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Whether `name` can be exported by a POSIX shell.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic()) && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// The command line for one step.
///
/// The first line the guest prints on stdout is the step's process group id (the runner strips
/// it before anything is logged). OpenSSH runs each non-pty exec in a new session, so the
/// login shell that reads this line is a process group leader and `$$` is the group id; `exec`
/// keeps that PID for the step's own `sh`, and everything the script starts inherits the
/// group. On timeout [`kill_command`] kills the whole group.
///
/// Env names must be valid (checked by the caller); values and the script may hold any bytes
/// but NUL.
pub fn step_command(script: &str, env: &BTreeMap<String, String>) -> String {
    let mut cmd = String::from("echo $$ && ");
    if !env.is_empty() {
        cmd.push_str("export");
        for (name, value) in env {
            cmd.push(' ');
            cmd.push_str(name);
            cmd.push('=');
            cmd.push_str(&quote(value));
        }
        cmd.push_str(" && ");
    }
    cmd.push_str("exec sh -c ");
    cmd.push_str(&quote(script));
    cmd
}

/// Kills the process group `pgid` and its leader.
///
/// dash and bash need `--` before a negative PID, busybox's kill rejects `--`: try both.
pub fn kill_command(pgid: u32) -> String {
    format!("kill -s KILL -- -{pgid} 2>/dev/null || kill -s KILL -{pgid} 2>/dev/null || kill -s KILL {pgid} 2>/dev/null; true")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    fn sh_output(cmd: &str) -> Vec<u8> {
        let out = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh");
        assert!(out.status.success(), "sh failed on {cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    #[test]
    fn quote_examples() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn env_names() {
        assert!(valid_env_name("CC"));
        assert!(valid_env_name("_x1"));
        assert!(!valid_env_name("1x"));
        assert!(!valid_env_name("A-B"));
        assert!(!valid_env_name(""));
        assert!(!valid_env_name("A B"));
    }

    #[test]
    fn step_command_shape() {
        let env = BTreeMap::from([("A".to_owned(), "x y".to_owned()), ("B".to_owned(), "it's".to_owned())]);
        assert_eq!(step_command("make -j2 && echo ok", &env), "echo $$ && export A='x y' B='it'\\''s' && exec sh -c 'make -j2 && echo ok'");
        assert_eq!(step_command("true", &BTreeMap::new()), "echo $$ && exec sh -c 'true'");
    }

    /// Strings without NUL (which no argv can carry), biased towards shell metacharacters.
    fn shell_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(vec!['\'', '"', '\\', '$', '`', '!', '*', '?', '~', '#', ';', '&', '|', '\n', ' ', '\t', '(', ')', '{', '}', '%', '-']),
                2 => any::<char>().prop_filter("no NUL", |c| *c != '\0'),
            ],
            0..40,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn sh_reads_back_exactly_the_quoted_bytes(s in shell_text()) {
            let got = sh_output(&format!("printf %s {}", quote(&s)));
            prop_assert_eq!(got, s.as_bytes());
        }

        #[test]
        fn script_and_env_arrive_intact(script_arg in shell_text(), value in shell_text()) {
            // The step prints its env value and an argument embedded in its own script; both
            // cross two levels of quoting (login shell, then `sh -c`).
            let env = BTreeMap::from([("PADDOCK_V".to_owned(), value.clone())]);
            let script = format!("printf '%s\\0' \"$PADDOCK_V\" {}", quote(&script_arg));
            let out = sh_output(&step_command(&script, &env));
            let nl = out.iter().position(|b| *b == b'\n').expect("pid line");
            let rest = &out[nl + 1..];
            let mut expected = value.into_bytes();
            expected.push(0);
            expected.extend_from_slice(script_arg.as_bytes());
            expected.push(0);
            prop_assert_eq!(rest, &expected[..]);
        }
    }
}
