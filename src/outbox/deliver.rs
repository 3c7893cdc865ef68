//! Where results go: the embedded recorder (in process), another paddock
//! recorder over REST, or a pony-build server over XML-RPC `add_results`.

use std::collections::BTreeMap;

use dxr::{MethodCall, MethodResponse, Value};
use tracing::warn;

use super::files::{self, RunFile};
use crate::recorder::{Attached, NewFile, Recorder, RecorderError, ResultDoc, ResultKey};

/// One recorder's address and how to talk to it.
#[derive(Clone)]
pub enum Destination {
    /// The recorder inside this daemon.
    Embedded(Recorder),
    /// A paddock recorder's REST API (`POST {url}/api/v1/results`).
    Paddock { client: reqwest::Client, url: String, token: Option<String> },
    /// A pony-build server's XML-RPC endpoint.
    PonyBuild { client: reqwest::Client, url: String },
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the embedded recorder refused the result: {0}")]
    Invalid(String),
    #[error("the embedded recorder failed")]
    Embedded(#[source] RecorderError),
    #[error("the stored result is not valid JSON")]
    BadPayload(#[source] serde_json::Error),
    #[error("cannot reach {url}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{url} answered HTTP {status}: {body}")]
    Refused { url: String, status: u16, body: String },
    #[error("{url} answered with an XML-RPC fault {code}: {message}")]
    Fault { url: String, code: i32, message: String },
    #[error("cannot read artifact {name}")]
    File { name: String, source: std::io::Error },
    #[error("{url} answered with something that is not an XML-RPC response: {detail}")]
    BadResponse { url: String, detail: String },
}

impl Destination {
    /// Delivers one result and then its run's `files`; returns the recorder's key for it, if it
    /// gave one. A file the recorder refuses (too big, a name taken) or that is gone is skipped
    /// with a warning; a recorder that fails is retried with the whole delivery, which paddock
    /// recorders take idempotently (the run id for the result, same name and bytes for files).
    /// pony-build has no idempotency key, so its uploads are tried once, after `add_results`.
    pub async fn deliver(&self, run_id: &str, payload: &str, files: &[RunFile]) -> Result<Option<String>, DeliveryError> {
        let doc: serde_json::Value = serde_json::from_str(payload).map_err(DeliveryError::BadPayload)?;
        match self {
            Destination::Embedded(recorder) => {
                let field = |k: &str| doc.get(k).cloned().unwrap_or(serde_json::Value::Null);
                let extras = doc.get("extras").cloned();
                let parsed = ResultDoc::from_json(field("client_info"), field("results"), extras)
                    .map_err(|e| DeliveryError::Invalid(e.to_string()))?;
                let key = recorder.ingest(parsed, Some(run_id.to_string())).await.map_err(DeliveryError::Embedded)?;
                for f in files {
                    attach_embedded(recorder, key, run_id, f).await?;
                }
                Ok(Some(key.to_string()))
            }
            Destination::Paddock { client, url, token } => {
                let endpoint = format!("{}/api/v1/results", url.trim_end_matches('/'));
                let mut req = client.post(&endpoint).header("Idempotency-Key", run_id).json(&doc);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.map_err(|source| DeliveryError::Unreachable { url: endpoint.clone(), source })?;
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if !status.is_success() {
                    return Err(DeliveryError::Refused { url: endpoint, status: status.as_u16(), body: truncate(body) });
                }
                let answer = serde_json::from_str::<serde_json::Value>(&body).ok();
                let field = |k: &str| answer.as_ref().and_then(|v| v.get(k)?.as_str().map(str::to_string));
                let (key, auth_key) = (field("result_key"), field("auth_key"));
                if let Some(auth_key) = auth_key {
                    let upload = format!("{}/upload", url.trim_end_matches('/'));
                    for f in files {
                        match upload_one(client, &upload, &auth_key, f).await {
                            Ok(()) => {}
                            // Refused for what the file is: retrying would not change that.
                            Err(DeliveryError::Refused { status: 400 | 401 | 409 | 413, body, .. }) => {
                                warn!(run_id, file = %f.name, reason = %body, "the recorder refused an artifact; skipped");
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(key)
            }
            Destination::PonyBuild { client, url } => {
                // pony-build's add_results takes no extras; they travel inside client_info (kept
                // whole by pony-build, outside the tagset), so the VM, hypervisor and run id
                // reach it while `host` stays the platform.
                let mut client_info = doc.get("client_info").cloned().unwrap_or(serde_json::Value::Null);
                if let (Some(ci), Some(extras)) = (client_info.as_object_mut(), doc.get("extras")) {
                    ci.insert("paddock".into(), extras.clone());
                }
                let client_info = json_to_xmlrpc(&client_info);
                let results = json_to_xmlrpc(doc.get("results").unwrap_or(&serde_json::Value::Null));
                let call = MethodCall { name: "add_results".into(), params: vec![client_info, results] };
                let xml = call.to_xml().map_err(|e| DeliveryError::BadResponse { url: url.clone(), detail: e.to_string() })?;
                let resp = client
                    .post(url)
                    .header("Content-Type", "text/xml")
                    .body(xml)
                    .send()
                    .await
                    .map_err(|source| DeliveryError::Unreachable { url: url.clone(), source })?;
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if !status.is_success() {
                    return Err(DeliveryError::Refused { url: url.clone(), status: status.as_u16(), body: truncate(body) });
                }
                if let Ok(fault) = dxr::FaultResponse::from_xml(&body) {
                    return Err(DeliveryError::Fault {
                        url: url.clone(),
                        code: fault.fault.code(),
                        message: fault.fault.string().to_string(),
                    });
                }
                let response =
                    MethodResponse::from_xml(&body).map_err(|e| DeliveryError::BadResponse { url: url.clone(), detail: e.to_string() })?;
                // pony-build answers (result_key, auth_key).
                let strings: Vec<String> = match response.value {
                    Value::Array(items) => items
                        .into_iter()
                        .map(|v| match v {
                            Value::String(s) => s,
                            _ => String::new(),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                // The result is stored now; sending add_results again would store it twice, so
                // each file is tried once and a failure only logged.
                if let Some(auth_key) = strings.get(1).filter(|k| !k.is_empty()) {
                    let upload = files::upload_url(url);
                    for f in files {
                        if let Err(e) = upload_one(client, &upload, auth_key, f).await {
                            warn!(run_id, file = %f.name, error = %crate::error::chain(&e), "artifact upload to pony-build failed");
                        }
                    }
                }
                Ok(strings.into_iter().next().filter(|k| !k.is_empty()))
            }
        }
    }
}

/// One artifact into the embedded recorder; a database failure fails the delivery (retried).
async fn attach_embedded(recorder: &Recorder, key: ResultKey, run_id: &str, f: &RunFile) -> Result<(), DeliveryError> {
    let limit = recorder.config().file_limit as u64;
    if f.size > limit {
        warn!(run_id, file = %f.name, size = f.size, limit, "artifact larger than the recorder's file limit; skipped");
        return Ok(());
    }
    let content = match tokio::fs::read(&f.path).await {
        Ok(c) => c,
        Err(e) => {
            warn!(run_id, file = %f.name, error = %e, "artifact gone before delivery; skipped");
            return Ok(());
        }
    };
    let file = NewFile { filename: f.name.clone(), description: files::DESCRIPTION.into(), visible: true, content };
    match recorder.attach(key, file).await {
        Ok(Attached::Stored | Attached::AlreadyThere) => Ok(()),
        Ok(skipped @ (Attached::NameTaken | Attached::OverResultCap { .. })) => {
            warn!(run_id, file = %f.name, outcome = ?skipped, "the recorder kept no copy of an artifact; skipped");
            Ok(())
        }
        Err(e @ (RecorderError::OverLimit { .. } | RecorderError::BadFilename(..) | RecorderError::UnknownAuthKey)) => {
            warn!(run_id, file = %f.name, error = %e, "the recorder refused an artifact; skipped");
            Ok(())
        }
        Err(e) => Err(DeliveryError::Embedded(e)),
    }
}

/// One artifact to pony-build's `/upload` (or a paddock recorder's) with the result's auth_key.
async fn upload_one(client: &reqwest::Client, upload: &str, auth_key: &str, f: &RunFile) -> Result<(), DeliveryError> {
    let content = tokio::fs::read(&f.path).await.map_err(|e| DeliveryError::File { name: f.name.clone(), source: e })?;
    let endpoint = format!("{upload}?{}", files::upload_query(auth_key, &f.name));
    let resp = client
        .post(&endpoint)
        .header("Content-Type", "application/octet-stream")
        .body(content)
        .send()
        .await
        .map_err(|source| DeliveryError::Unreachable { url: upload.to_owned(), source })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    // The URL carries the auth_key: name only the endpoint.
    Err(DeliveryError::Refused { url: upload.to_owned(), status: status.as_u16(), body: truncate(body) })
}

fn truncate(mut s: String) -> String {
    if s.len() > 500 {
        let mut cut = 500;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// JSON to XML-RPC, using the `i8` and `nil` extensions that Python's
/// `xmlrpc.client` (and so pony-build) understands.
pub fn json_to_xmlrpc(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => match i32::try_from(i) {
                Ok(small) => Value::Integer(small),
                Err(_) => Value::Long(i),
            },
            None => Value::Double(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(json_to_xmlrpc).collect()),
        serde_json::Value::Object(o) => Value::Struct(o.iter().map(|(k, v)| (k.clone(), json_to_xmlrpc(v))).collect::<BTreeMap<_, _>>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_maps_to_xmlrpc_types() {
        let v = serde_json::json!({"a": 1, "b": 5_000_000_000i64, "c": 1.5, "d": null, "e": [true, "x"]});
        let x = json_to_xmlrpc(&v);
        let Value::Struct(m) = x else { panic!() };
        assert_eq!(m["a"], Value::Integer(1));
        assert_eq!(m["b"], Value::Long(5_000_000_000));
        assert_eq!(m["c"], Value::Double(1.5));
        assert_eq!(m["d"], Value::Nil);
        assert_eq!(m["e"], Value::Array(vec![Value::Boolean(true), Value::String("x".into())]));
    }
}
