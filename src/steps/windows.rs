//! Windows steps: each step becomes a script file uploaded over SFTP and run by path, so no
//! hand-built quoting of the step crosses the wire.

use std::collections::BTreeMap;

use crate::config::Shell;

/// Where step scripts go in the guest (SFTP spelling; the command uses backslashes).
pub const SCRIPT_DIR: &str = "C:/paddock";

/// A file to put on the guest before running the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// An SFTP path, with forward slashes.
    pub path: String,
    pub bytes: Vec<u8>,
}

/// What to upload and run for one Windows step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsStep {
    pub uploads: Vec<Upload>,
    pub command: String,
    /// Kills the step's process tree (run as a second exec on timeout or cancel).
    pub kill_command: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowsStepError {
    #[error("the image's shell is sh, not a Windows shell")]
    NotWindowsShell,
    #[error("env value of {name} holds a line break, which a cmd script cannot set")]
    LineBreakInCmdEnv { name: String },
}

const POWERSHELL: &str = "powershell -NoProfile -NonInteractive -ExecutionPolicy Bypass -File";

/// Builds the uploads and the command for step `index` (1-based) of a job.
///
/// PowerShell scripts are UTF-8 with a BOM (Windows PowerShell 5.1 reads BOM-less files in the
/// ANSI code page) and stop on the first cmdlet error; the script's exit code is that of the
/// last native command. cmd scripts set the env with `set "NAME=value"`, doubling `%`.
/// Both use CRLF line ends.
pub fn windows_step(shell: Shell, index: usize, script: &str, env: &BTreeMap<String, String>) -> Result<WindowsStep, WindowsStepError> {
    let stem = format!("step-{index:02}");
    let (file, body, command) = match shell {
        Shell::Sh => return Err(WindowsStepError::NotWindowsShell),
        Shell::Powershell => {
            let file = format!("{stem}.ps1");
            let mut body = String::from("\u{feff}$ErrorActionPreference = 'Stop'\n");
            for (name, value) in env {
                body.push_str(&format!("$env:{name} = {}\n", ps_quote(value)));
            }
            body.push_str(script);
            if !script.ends_with('\n') {
                body.push('\n');
            }
            body.push_str("exit $LASTEXITCODE\n");
            let command = format!("{POWERSHELL} {}", win_path(&file));
            (file, body, command)
        }
        Shell::Cmd => {
            let file = format!("{stem}.cmd");
            let mut body = String::from("@echo off\n");
            for (name, value) in env {
                if value.contains(['\r', '\n']) {
                    return Err(WindowsStepError::LineBreakInCmdEnv { name: name.clone() });
                }
                body.push_str(&format!("set \"{name}={}\"\n", value.replace('%', "%%")));
            }
            body.push_str(script);
            if !script.ends_with('\n') {
                body.push('\n');
            }
            body.push_str("exit /b %ERRORLEVEL%\n");
            let command = format!("cmd /c {}", win_path(&file));
            (file, body, command)
        }
    };
    let kill_file = format!("kill-{index:02}.ps1");
    // The step's own interpreter is found by its command line (the script path is unique per
    // step), then taskkill /T takes its whole tree.
    let kill_body = format!(
        "\u{feff}Get-CimInstance Win32_Process | Where-Object {{ $_.CommandLine -like '*\\paddock\\{file}*' -and $_.ProcessId -ne $PID }} | ForEach-Object {{ & taskkill.exe /F /T /PID $_.ProcessId | Out-Null }}\nexit 0\n"
    );
    Ok(WindowsStep {
        uploads: vec![
            Upload { path: format!("{SCRIPT_DIR}/{file}"), bytes: crlf(&body) },
            Upload { path: format!("{SCRIPT_DIR}/{kill_file}"), bytes: crlf(&kill_body) },
        ],
        command,
        kill_command: format!("{POWERSHELL} {}", win_path(&kill_file)),
    })
}

fn win_path(file: &str) -> String {
    format!("{}\\{file}", SCRIPT_DIR.replace('/', "\\"))
}

/// A PowerShell single-quoted string: only `'` is special, written twice.
fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Normalises line ends to CRLF (a lone `\n` becomes `\r\n`, an existing `\r\n` stays).
fn crlf(s: &str) -> Vec<u8> {
    s.replace("\r\n", "\n").replace('\n', "\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        BTreeMap::from([("CC".to_owned(), "cl.exe".to_owned()), ("MSG".to_owned(), "it's 100% done".to_owned())])
    }

    fn render(step: &WindowsStep) -> String {
        let mut out = format!("command: {}\nkill: {}\n", step.command, step.kill_command);
        for u in &step.uploads {
            out.push_str(&format!("--- {} ({} bytes)\n{}\n", u.path, u.bytes.len(), visible(&u.bytes)));
        }
        out
    }

    /// The bytes as text with the BOM and every CR spelled out, so the snapshot is exact.
    fn visible(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap().replace('\u{feff}', "<BOM>").replace('\r', "<CR>")
    }

    #[test]
    fn powershell_step_uploads_and_command() {
        let step = windows_step(Shell::Powershell, 2, "cmake --build build\nctest -C Debug", &env()).unwrap();
        insta::assert_snapshot!(render(&step));
    }

    #[test]
    fn cmd_step_uploads_and_command() {
        let step = windows_step(Shell::Cmd, 1, "nmake /f Makefile.win\r\n", &env()).unwrap();
        insta::assert_snapshot!(render(&step));
    }

    #[test]
    fn cmd_refuses_line_breaks_in_env() {
        let env = BTreeMap::from([("X".to_owned(), "a\nb".to_owned())]);
        assert_eq!(windows_step(Shell::Cmd, 1, "echo", &env), Err(WindowsStepError::LineBreakInCmdEnv { name: "X".into() }));
        assert_eq!(windows_step(Shell::Sh, 1, "echo", &env), Err(WindowsStepError::NotWindowsShell));
    }
}
