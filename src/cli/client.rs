//! The HTTP client every remote subcommand uses: base URL and token from flags
//! or `PADDOCK_URL` / `PADDOCK_TOKEN`, JSON in and out, API errors shown with
//! their reason, and a small Server-Sent Events reader for live follows.

use std::io::IsTerminal;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use paddock::api::wire::{ErrorOut, FollowState};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the daemon is and who we are; shared by every remote subcommand.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The daemon's base URL.
    #[arg(long, env = "PADDOCK_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// An API token (`paddock token create USER`).
    #[arg(long, env = "PADDOCK_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// One event of a log follow.
pub enum Follow {
    State(FollowState),
    Log(String),
    End,
}

impl Client {
    pub fn new(remote: &Remote) -> Result<Client> {
        // reqwest with `rustls-no-provider` panics without a process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().user_agent(concat!("paddock/", env!("CARGO_PKG_VERSION"))).build()?;
        Ok(Client { http, base: remote.url.trim_end_matches('/').to_string(), token: remote.token.clone() })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response> {
        let resp = r.send().await.with_context(|| format!("cannot reach paddock at {} ({what})", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorOut>(&body) {
            Ok(e) => Err(anyhow!("{what}: {} ({})", e.detail, status)),
            Err(_) => Err(anyhow!("{what}: HTTP {status}: {}", body.trim())),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send(self.req(reqwest::Method::GET, path), &format!("GET {path}")).await?;
        resp.json().await.with_context(|| format!("GET {path}: unexpected response"))
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        Ok(self.send(self.req(reqwest::Method::GET, path), &format!("GET {path}")).await?.text().await?)
    }

    pub async fn post<T: DeserializeOwned, B: Serialize>(&self, path: &str, body: Option<&B>) -> Result<T> {
        let mut r = self.req(reqwest::Method::POST, path);
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = self.send(r, &format!("POST {path}")).await?;
        resp.json().await.with_context(|| format!("POST {path}: unexpected response"))
    }

    /// Follows a run's log over SSE, calling `on` for each event, until the
    /// run ends; returns its final state.
    pub async fn follow(&self, run: &str, mut on: impl FnMut(Follow)) -> Result<FollowState> {
        let path = format!("/api/v1/runs/{run}/log/follow");
        let mut resp = self.send(self.req(reqwest::Method::GET, &path), &format!("GET {path}")).await?;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.with_context(|| format!("following {run}"))? {
            buf.extend_from_slice(&chunk);
            while let Some(end) = find_blank_line(&buf) {
                let raw: Vec<u8> = buf.drain(..end.1).collect();
                let text = String::from_utf8_lossy(&raw[..end.0]);
                let (mut event, mut data) = ("message", String::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = if v.trim() == "log" {
                            "log"
                        } else if v.trim() == "state" {
                            "state"
                        } else if v.trim() == "end" {
                            "end"
                        } else {
                            "other"
                        };
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                match event {
                    "log" => on(Follow::Log(serde_json::from_str(&data).context("bad log event")?)),
                    "state" => on(Follow::State(serde_json::from_str(&data).context("bad state event")?)),
                    "end" => {
                        let s: FollowState = serde_json::from_str(&data).context("bad end event")?;
                        on(Follow::End);
                        return Ok(s);
                    }
                    _ => {}
                }
            }
        }
        Err(anyhow!("the daemon closed the log of {run} before the run ended"))
    }
}

/// (end of the event, end of its blank-line separator)
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
        outln!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>().iter().map(|s| s.as_str()).collect());
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect());
    }
}

pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

/// `t` relative to now: "5m ago", or "in 5m" for a time still to come.
pub fn ago(t: chrono::DateTime<chrono::Utc>) -> String {
    relative(t, chrono::Utc::now())
}

/// `t` relative to `now`: "42s ago", "3h ago", or "in 2d" when `t` is later.
pub fn relative(t: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (now - t).num_seconds();
    let s = secs.unsigned_abs();
    let span = match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    };
    if secs < 0 { format!("in {span}") } else { format!("{span} ago") }
}

/// Runs `f` on a small runtime: the CLI makes a handful of requests at most.
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

/// Whether stderr is a terminal (progress lines get colour there).
pub fn tty() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};

    use super::relative;

    #[test]
    fn past_and_future_times_read_as_such() {
        let now = Utc::now();
        assert_eq!(relative(now - Duration::seconds(42), now), "42s ago");
        assert_eq!(relative(now - Duration::hours(3), now), "3h ago");
        // A grant's end still to come is not "0s ago".
        assert_eq!(relative(now + Duration::minutes(30), now), "in 30m");
        assert_eq!(relative(now + Duration::days(2), now), "in 2d");
        assert_eq!(relative(now, now), "0s ago");
    }
}
