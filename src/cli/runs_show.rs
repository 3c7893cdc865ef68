//! `paddock runs show RUN`: one run in full, for people — its reason (with the guest's console
//! tail when it ended outside its steps), its steps, VM, host, image, how its VM started (cold,
//! warm, ready pool) and how fast, log and recorder delivery.
//! RUN may be a unique prefix of the run's id.

use std::process::ExitCode;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use paddock::api::wire::{OutboxOut, RunDetailOut, RunListOut, StepOut, TimingsOut};

use super::client::{Client, Remote, block_on, opt, print_json, relative, table};
use super::runs::{Filters, encode};

#[derive(Debug, Clone, Subcommand)]
pub enum RunsCommand {
    /// One run in full: reason, steps, VM, host, image, log and recorder delivery.
    Show {
        /// The run's id, or a prefix of it that names one run.
        run: String,
    },
}

/// How times read.
const TIME: &str = "%Y-%m-%d %H:%M:%S UTC";

/// How many runs an ambiguous prefix names in its error.
const SHOWN: usize = 10;

pub fn run(remote: &Remote, filters: &Filters, command: &RunsCommand) -> Result<ExitCode> {
    let RunsCommand::Show { run } = command;
    if !filters.is_empty() {
        bail!("`paddock runs show` takes no filters (--job, --image, --state, --since, --limit): they are for the listing");
    }
    block_on(async {
        let c = Client::new(remote)?;
        let detail = find(&c, run).await?;
        if remote.json {
            print_json(&detail)?;
        } else {
            print(&detail, Utc::now());
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The run `given` names: the run of that id, else the one run whose id starts with it.
async fn find(c: &Client, given: &str) -> Result<RunDetailOut> {
    if given.is_empty() {
        bail!("a run id is needed (`paddock runs` lists them)");
    }
    // The whole id is the common case: one request. Any error here (a 404 for a prefix, or a
    // refusal the listing below meets again) falls through to the prefix lookup.
    if let Ok(d) = c.get::<RunDetailOut>(&format!("/api/v1/runs/{}", encode(given))).await {
        return Ok(d);
    }
    let path = format!("/api/v1/runs?id_prefix={}&limit={}", encode(given), SHOWN + 1);
    let found: Vec<RunListOut> = c.get(&path).await?;
    match found.as_slice() {
        [] => bail!("no run `{given}`, and no run's id starts with it (`paddock runs` lists them)"),
        [one] => Ok(c.get(&format!("/api/v1/runs/{}", encode(&one.run.id))).await?),
        many => {
            let mut ids: Vec<&str> = many.iter().take(SHOWN).map(|r| r.run.id.as_str()).collect();
            let count = if many.len() > SHOWN { format!("more than {SHOWN}") } else { many.len().to_string() };
            if many.len() > SHOWN {
                ids.push("...");
            }
            bail!("`{given}` is the start of {count} run ids ({}): give more of the id", ids.join(", "))
        }
    }
}

fn print(d: &RunDetailOut, now: DateTime<Utc>) {
    let r = &d.run;
    let mut fields: Vec<(&str, String)> = vec![
        ("run", r.id.clone()),
        ("job", r.job.clone()),
        ("image", r.image.clone()),
        ("state", r.state_label.clone()),
        ("outcome", opt(&r.outcome)),
    ];
    if let Some(reason) = &r.reason {
        fields.push(("reason", reason.clone()));
    }
    let by = r.requested_by.as_deref().map(|u| format!(" by {u}")).unwrap_or_default();
    fields.push(("trigger", format!("{}{by}", r.trigger)));
    fields.push(("host", opt(&r.host)));
    fields.push(("vm", opt(&r.vm_name)));
    if let Some(t) = &d.timings {
        fields.push(("start", start(t)));
        fields.push(("timings", timings(t)));
    }
    if let Some(t) = r.scheduled_at {
        fields.push(("scheduled", at(t, now)));
    }
    fields.push(("created", at(r.created_at, now)));
    fields.push(("started", r.started_at.map(|t| at(t, now)).unwrap_or_else(|| "-".into())));
    let finished = match (r.started_at, r.finished_at) {
        (Some(a), Some(b)) => {
            let took = seconds((b - a).num_milliseconds() as f64 / 1000.0);
            format!("{} ({}, took {took})", b.format(TIME), relative(b, now))
        }
        (_, Some(b)) => at(b, now),
        (_, None) => "-".into(),
    };
    fields.push(("finished", finished));
    if let Some(l) = &d.retry {
        fields.push(("retry", format!("attempt {} of {}, re-runs {}: {}", l.attempt, l.attempts, l.retry_of, l.note)));
    }
    if let Some(by) = &d.retried_by {
        fields.push(("retried", format!("as {by} (its result, not this one's, goes to the recorders)")));
    }
    let log = d.log_path.as_ref().map(|p| format!("{p} (`paddock logs {}`)", r.id));
    fields.push(("log", log.unwrap_or_else(|| "-".into())));
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &fields {
        // A reason may span lines: the rest line up under the first.
        let mut lines = printable_lines(v);
        outln!("{k:<width$}  {}", lines.next().unwrap_or_default());
        for l in lines {
            outln!("{:width$}  {l}", "");
        }
    }
    if let Some(tail) = &d.console_tail {
        outln!();
        outln!("console, last lines:");
        for l in printable_lines(tail) {
            outln!("  {l}");
        }
    }
    outln!();
    if d.steps.is_empty() {
        outln!("steps: {}", if r.terminal { "none ran" } else { "listed once the run has finished" });
    } else {
        let rows: Vec<Vec<String>> = d
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                vec![
                    (i + 1).to_string(),
                    printable(&s.name),
                    s.kind.clone(),
                    step_result(s),
                    s.duration_s.map(seconds).unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(&["step", "name", "type", "result", "duration"], &rows);
    }
    outln!();
    if d.outbox.is_empty() {
        let why = if r.terminal { "sent to no recorder" } else { "sent to the recorders when the run ends" };
        outln!("recorders: {why}");
    } else {
        let rows: Vec<Vec<String>> = d
            .outbox
            .iter()
            .map(|o| {
                vec![
                    o.recorder.clone(),
                    delivery(o, now),
                    o.attempts.to_string(),
                    o.last_error.as_deref().map(one_line).unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(&["recorder", "delivery", "attempts", "last error"], &rows);
    }
}

/// How a step ended: `ok`, `exit N`, `timed out`, `skipped`.
fn step_result(s: &StepOut) -> String {
    if s.skipped {
        "skipped".into()
    } else if s.timed_out {
        "timed out".into()
    } else {
        match s.status {
            Some(0) => "ok".into(),
            Some(n) => format!("exit {n}"),
            None => "-".into(),
        }
    }
}

/// How the run's VM came: cold, restored warm, taken from the ready pool, or cold after a
/// warm start failed (and why).
fn start(t: &TimingsOut) -> String {
    match t.start.as_str() {
        "cold" => "cold boot".into(),
        "warm" => "warm: restored from the image's template".into(),
        "ready-pool" => "ready pool: an idle clone taken, no restore on the run's path".into(),
        "cold-after-warm-failed" => {
            let why = t.warm_fallback.as_deref().map(one_line).unwrap_or_else(|| "no reason recorded".into());
            format!("cold, after a failed warm start: {why}")
        }
        other => printable(other),
    }
}

/// Where the time went before the first step's first byte: `boot 1.93s, first byte 0.31s after
/// the SSH banner, one handshake`.
fn timings(t: &TimingsOut) -> String {
    let pool = t.start == "ready-pool";
    let mut parts = Vec::new();
    if let Some(b) = t.boot_s {
        parts.push(format!("boot {}{}", fine(b), if pool { " (at refill)" } else { "" }));
    }
    match t.banner_to_first_byte_s {
        Some(f) => parts.push(format!("first byte {} after the {}", fine(f), if pool { "take" } else { "SSH banner" })),
        None => parts.push("first byte -".into()),
    }
    match t.one_handshake {
        Some(true) => parts.push("one handshake".into()),
        Some(false) => parts.push("a second handshake for the steps".into()),
        None => {}
    }
    parts.join(", ")
}

/// Seconds to the hundredth under a minute (start timings are often under one), else as
/// [`seconds`].
fn fine(s: f64) -> String {
    if s < 60.0 { format!("{:.2}s", s.max(0.0)) } else { seconds(s) }
}

/// Where a result stands with one recorder.
fn delivery(o: &OutboxOut, now: DateTime<Utc>) -> String {
    match o.delivered_at {
        Some(t) => format!("delivered {}", relative(t, now)),
        None if o.next_attempt_at > now => format!("pending, next attempt {}", relative(o.next_attempt_at, now)),
        None => "pending, due now".into(),
    }
}

fn at(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ({})", t.format(TIME), relative(t, now))
}

/// `0.4s`, `12.0s`, `2m 05s`, `1h 02m`.
fn seconds(s: f64) -> String {
    let whole = s.max(0.0) as u64;
    match whole {
        0..60 => format!("{:.1}s", s.max(0.0)),
        60..3600 => format!("{}m {:02}s", whole / 60, whole % 60),
        _ => format!("{}h {:02}m", whole / 3600, whole % 3600 / 60),
    }
}

/// `s` safe to print on a terminal: what a guest wrote (a reason, its console) may carry escape
/// sequences; every control character but tab is shown escaped instead.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() && c != '\t' { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// The lines of `s` (a console's `\r\n` ends a line too), each [`printable`].
fn printable_lines(s: &str) -> impl Iterator<Item = String> + '_ {
    s.lines().map(printable)
}

/// As [`printable`], on one line (a table cell).
fn one_line(s: &str) -> String {
    printable(&s.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::{one_line, printable_lines, seconds, start, timings};
    use paddock::api::wire::TimingsOut;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(seconds(0.42), "0.4s");
        assert_eq!(seconds(125.0), "2m 05s");
        assert_eq!(seconds(3720.0), "1h 02m");
    }

    #[test]
    fn a_guests_escape_sequences_are_shown_not_obeyed() {
        let lines: Vec<String> = printable_lines("red \u{1b}[31mtext\r\nnext\tcol\rx\u{7}\n").collect();
        assert_eq!(lines, ["red \\u{1b}[31mtext", "next\tcol\\rx\\u{7}"]);
        assert_eq!(one_line("refused:\n  \u{1b}[2J  twice"), "refused: \\u{1b}[2J twice");
    }

    #[test]
    fn a_start_reads_as_what_happened() {
        let t = |start: &str, fallback: Option<&str>, first: Option<f64>| TimingsOut {
            start: start.into(),
            warm_fallback: fallback.map(str::to_string),
            boot_s: Some(1.934),
            banner_to_first_byte_s: first,
            one_handshake: Some(true),
        };
        assert_eq!(start(&t("cold", None, None)), "cold boot");
        assert_eq!(
            start(&t("cold-after-warm-failed", Some("restore:\n no agent"), None)),
            "cold, after a failed warm start: restore: no agent"
        );
        assert_eq!(timings(&t("warm", None, Some(0.314))), "boot 1.93s, first byte 0.31s after the SSH banner, one handshake");
        assert_eq!(timings(&t("ready-pool", None, Some(0.05))), "boot 1.93s (at refill), first byte 0.05s after the take, one handshake");
        assert_eq!(timings(&t("cold", None, None)), "boot 1.93s, first byte -, one handshake");
    }
}
