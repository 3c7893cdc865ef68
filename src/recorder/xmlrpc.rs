//! pony-build's XML-RPC API: parses a method call (refusing DOCTYPEs), converts XML-RPC values to
//! and from the JSON bags the recorder stores, and answers each method with pony-build's shapes.
//!
//! Implementation note: this dispatches with `dxr`'s types directly rather than through
//! `dxr_server`'s handler map, because the handlers need the caller's address and token and
//! because dxr_server answers a missing Content-Length with a fault instead of reading the body.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use dxr::{Fault, FaultResponse, MethodCall, MethodResponse, Value};
use serde_json::Value as Json;

use super::model::{ClientInfo, ResultDoc, ResultKey, Tagset};
use super::{Origin, Recorder, RecorderError, StoredResult, wire, xmlrpc_read};

// Fault codes from the "specification for fault code interoperability", which Python and
// most XML-RPC libraries know; 401 is ours, for a missing or wrong submission token.
pub(super) const PARSE_ERROR: i32 = -32700;
const UNKNOWN_METHOD: i32 = -32601;
const INVALID_PARAMS: i32 = -32602;
const SERVER_ERROR: i32 = -32500;
pub(super) const UNAUTHORIZED: i32 = 401;

/// Who is calling: their address and whether they presented a valid submission token.
pub(super) struct Caller {
    pub client_ip: Option<String>,
    /// The submitter a valid token named; `None` if no (valid) token came with the call.
    pub submitter: Option<String>,
}

/// Answer one XML-RPC request body. Faults for a body that is not a method call come back with
/// HTTP 400 (nothing was dispatched); method-level faults come back with 200 as XML-RPC
/// requires, so standard clients raise them as `Fault`.
/// `received`: when the handler started and when the body was in (`timing.rs`).
pub(super) async fn handle(rec: &Recorder, caller: Caller, body: &[u8], received: (Instant, Instant)) -> (StatusCode, String) {
    let call = match decode(body) {
        Ok(c @ Decoded::AddResults(_)) => {
            rec.note_request(received.0, received.1, Instant::now());
            c
        }
        Ok(c) => c,
        Err(fault) => {
            return (StatusCode::BAD_REQUEST, fault_xml(fault.code(), fault.string()));
        }
    };
    let answer = match call {
        Decoded::AddResults(call) => add_results(rec, &caller, call).await,
        Decoded::Call(call) => dispatch(rec, &caller, &call.name, call.params).await,
    };
    let xml = match answer {
        Ok(value) => MethodResponse { value }.to_xml(),
        Err(fault) => FaultResponse { fault }.to_xml(),
    };
    match xml {
        Ok(x) => (StatusCode::OK, x),
        Err(e) => {
            tracing::error!(error = %e, "serialising an XML-RPC response");
            (StatusCode::INTERNAL_SERVER_ERROR, fault_xml(SERVER_ERROR, "internal error"))
        }
    }
}

/// A request body as the endpoint reads it.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// `add_results`, read straight from the body into a result (`xmlrpc_read`, `wire`).
    AddResults(AddResults),
    /// Any other method (small calls), through `dxr`.
    Call(MethodCall<'a>),
}

/// An `add_results` call: how many parameters it had, and its result or why it was refused
/// (the refusal is only given once arity and token have been checked, as for any call).
#[derive(Debug)]
pub struct AddResults {
    pub params: usize,
    pub doc: Result<ResultDoc, Fault>,
}

/// Turn a request body into a call, refusing non-UTF-8 text and DTDs; the fault says why.
/// Public so the fuzz targets (`fuzz/`) drive exactly what the endpoint runs on untrusted bytes.
pub fn decode(body: &[u8]) -> Result<Decoded<'_>, Fault> {
    let text = std::str::from_utf8(body).map_err(|e| fault(PARSE_ERROR, format!("request is not UTF-8: {e}")))?;
    if let Some(reason) = refuse_markup(text) {
        return Err(fault(PARSE_ERROR, reason));
    }
    // Parse errors say what was wrong without echoing the body.
    fn malformed<E>(_: E) -> Fault {
        fault(PARSE_ERROR, "malformed XML-RPC method call")
    }
    let mut r = xmlrpc_read::CallReader::new(text);
    if r.method_name().map_err(malformed)? != "add_results" {
        return MethodCall::from_xml(text).map(Decoded::Call).map_err(malformed);
    }
    let client_info = r.next_param(wire::ClientInfoSeed, "client_info").map_err(malformed)?;
    let results = match client_info {
        Some(_) => r.next_param(wire::StepsSeed, "results").map_err(malformed)?,
        None => None,
    };
    let extras = match results {
        Some(_) => r.next_param(wire::ExtrasSeed, "extras").map_err(malformed)?,
        None => None,
    };
    let mut params = usize::from(client_info.is_some()) + usize::from(results.is_some()) + usize::from(extras.is_some());
    if extras.is_some() {
        while r.next_param(std::marker::PhantomData::<serde::de::IgnoredAny>, "params").map_err(malformed)?.is_some() {
            params += 1;
        }
    }
    let doc = match (client_info, results, r.non_finite) {
        (_, _, Some(path)) => Err(fault(INVALID_PARAMS, format!("{path}: non-finite double"))),
        (Some(ci), Some(steps), None) => wire::assemble(ci, steps, extras).map_err(|e| fault(INVALID_PARAMS, e.to_string())),
        _ => Err(fault(INVALID_PARAMS, "add_results needs client_info and results")),
    };
    Ok(Decoded::AddResults(AddResults { params, doc }))
}

/// `add_results(client_info, results[, extras])`: pony-build's submission.
async fn add_results(rec: &Recorder, caller: &Caller, call: AddResults) -> Result<Value, Fault> {
    if !(2..=3).contains(&call.params) {
        return Err(fault(INVALID_PARAMS, format!("add_results(client_info, results[, extras]) called with {} parameter(s)", call.params)));
    }
    require_token(caller)?;
    let doc = call.doc?;
    let origin = Origin { client_ip: caller.client_ip.clone(), submitter: caller.submitter.clone() };
    let done = rec.ingest_from(doc, None, origin).await.map_err(recorder_fault)?;
    Ok(Value::Array(vec![Value::String(done.key.to_string()), Value::String(done.auth_key)]))
}

/// XML-RPC has no use for a DTD; refusing one up front closes entity-expansion attacks
/// whatever the parser would have done with them (quick-xml does not expand custom entities,
/// but an unexpanded reference should be a clear refusal, not a parse failure deep inside).
fn refuse_markup(text: &str) -> Option<&'static str> {
    // Every declaration starts with `<!` (no case to fold): find those with the standard
    // library's substring search, then look at the keyword, in one pass over the body.
    // A `char` pattern is found with memchr, far faster over a build's output than a two-byte
    // substring search; the byte after each `<` is checked by hand.
    let declares = |at: usize| {
        let Some(rest) = text.as_bytes()[at + 1..].strip_prefix(b"!") else { return false };
        ["DOCTYPE", "ENTITY"].iter().any(|k| rest.get(..k.len()).is_some_and(|w| w.eq_ignore_ascii_case(k.as_bytes())))
    };
    if text.match_indices('<').any(|(at, _)| declares(at)) {
        return Some("DOCTYPE and ENTITY declarations are not allowed");
    }
    None
}

pub(super) fn fault_xml(code: i32, message: &str) -> String {
    FaultResponse { fault: Fault::new(code, message.to_owned()) }
        .to_xml()
        .unwrap_or_else(|_| String::from("<?xml version=\"1.0\"?><methodResponse><fault/></methodResponse>"))
}

fn fault(code: i32, message: impl Into<String>) -> Fault {
    Fault::new(code, message.into())
}

fn recorder_fault(e: RecorderError) -> Fault {
    match e {
        RecorderError::Invalid(bag) => fault(INVALID_PARAMS, bag.to_string()),
        e @ (RecorderError::OverLimit { .. } | RecorderError::UnknownAuthKey | RecorderError::BadFilename(..)) => {
            fault(INVALID_PARAMS, e.to_string())
        }
        RecorderError::Open { .. }
        | RecorderError::Migrate { .. }
        | RecorderError::Database { .. }
        | RecorderError::Closed { .. }
        | RecorderError::Thread(..) => {
            tracing::error!(error = %crate_error_chain(&e), "XML-RPC call failed");
            fault(SERVER_ERROR, "internal error")
        }
    }
}

fn crate_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn arity(method: &str, params: &[Value], min: usize, max: usize, names: &str) -> Result<(), Fault> {
    if params.len() < min || params.len() > max {
        return Err(fault(INVALID_PARAMS, format!("{method}({names}) called with {} parameter(s)", params.len())));
    }
    Ok(())
}

async fn dispatch(rec: &Recorder, caller: &Caller, method: &str, params: Vec<Value>) -> Result<Value, Fault> {
    match method {
        "get_results" => {
            arity(method, &params, 1, 1, "result_key")?;
            let key = key_param(&params[0])?;
            match rec.get(key).await.map_err(recorder_fault)? {
                Some(r) => Ok(triple(&r)),
                None => Err(fault(INVALID_PARAMS, format!("no result with key {key}"))),
            }
        }
        "check_should_build" => {
            arity(method, &params, 1, 3, "client_info[, reserve_build[, build_allowance]]")?;
            let tagset =
                ClientInfo::tagset_from_json(to_json(&params[0], "client_info")?).map_err(|e| fault(INVALID_PARAMS, e.to_string()))?;
            let reserve = match params.get(1) {
                None => true,
                Some(Value::Boolean(b)) => *b,
                Some(Value::Integer(i)) => *i != 0,
                Some(other) => return Err(wrong_type("reserve_build", "boolean", other)),
            };
            let allowance = match params.get(2) {
                None => 0.0,
                Some(Value::Integer(i)) => f64::from(*i),
                Some(Value::Long(i)) => *i as f64,
                Some(Value::Double(d)) if d.is_finite() => *d,
                Some(other) => {
                    return Err(wrong_type("build_allowance", "number of seconds", other));
                }
            };
            // Reserving changes what other clients are told, so it is a write like a submission.
            if reserve {
                require_token(caller)?;
            }
            let (flag, reason) =
                rec.check_should_build(tagset, reserve, Duration::from_secs_f64(allowance.max(0.0))).await.map_err(recorder_fault)?;
            Ok(Value::Array(vec![Value::Boolean(flag), Value::String(reason)]))
        }
        "get_tagsets_for_package" => {
            arity(method, &params, 1, 1, "package")?;
            let package = string_param(&params[0], "package")?;
            let sets = rec.tagsets_for_package(&package).await.map_err(recorder_fault)?;
            Ok(Value::Array(sets.iter().map(|t| Value::Array(t.tags().iter().cloned().map(Value::String).collect())).collect()))
        }
        "get_last_result_for_tagset" => {
            arity(method, &params, 2, 2, "package, tagset")?;
            let package = string_param(&params[0], "package")?;
            let Value::Array(items) = &params[1] else {
                return Err(wrong_type("tagset", "array", &params[1]));
            };
            let tags = items.iter().enumerate().map(|(i, v)| string_param(v, &format!("tagset[{i}]"))).collect::<Result<Vec<_>, _>>()?;
            match rec.last_result_for_tagset(&package, Tagset::from_tags(tags)).await.map_err(recorder_fault)? {
                Some(r) => Ok(triple(&r)),
                // pony-build answers 0 when the tagset has no result.
                None => Ok(Value::Integer(0)),
            }
        }
        _ => Err(fault(UNKNOWN_METHOD, format!("unknown method {method:?}"))),
    }
}

fn require_token(caller: &Caller) -> Result<(), Fault> {
    if caller.submitter.is_none() {
        return Err(fault(UNAUTHORIZED, "a valid submission token is required: call /xmlrpc/<token>"));
    }
    Ok(())
}

fn wrong_type(path: &str, expected: &str, got: &Value) -> Fault {
    fault(INVALID_PARAMS, format!("{path}: expected {expected}, got {}", kind(got)))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "int",
        Value::Long(_) => "i8",
        Value::Boolean(_) => "boolean",
        Value::String(_) => "string",
        Value::Double(_) => "double",
        Value::DateTime(_) => "dateTime.iso8601",
        Value::Base64(_) => "base64",
        Value::Struct(_) => "struct",
        Value::Array(_) => "array",
        Value::Nil => "nil",
        _ => "unknown",
    }
}

fn string_param(v: &Value, path: &str) -> Result<String, Fault> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(wrong_type(path, "string", other)),
    }
}

/// pony-build keys are strings of integers; accept either form.
fn key_param(v: &Value) -> Result<ResultKey, Fault> {
    match v {
        Value::String(s) => s.parse().map_err(|_| fault(INVALID_PARAMS, format!("result_key: {s:?} is not a key"))),
        Value::Integer(i) => Ok(ResultKey(i64::from(*i))),
        Value::Long(i) => Ok(ResultKey(*i)),
        other => Err(wrong_type("result_key", "string", other)),
    }
}

/// pony-build's `(receipt, client_info, results)`.
fn triple(r: &StoredResult) -> Value {
    let mut receipt = std::collections::BTreeMap::new();
    receipt.insert("time".to_owned(), Value::Double(r.receipt.time));
    receipt.insert("result_key".to_owned(), Value::String(r.receipt.key.to_string()));
    if let Some(ip) = &r.receipt.client_ip {
        receipt.insert("client_ip".to_owned(), Value::String(ip.clone()));
    }
    if let Some(s) = &r.receipt.submitter {
        receipt.insert("submitter".to_owned(), Value::String(s.clone()));
    }
    let mut ci = from_json(&r.doc.client_info.to_json());
    if let Value::Struct(m) = &mut ci
        && !r.doc.extras.is_empty()
    {
        // XML-RPC's triple has no slot for extras; they ride along in client_info.
        m.insert("__extras".to_owned(), from_json(&Json::Object(r.doc.extras.clone())));
    }
    let steps = Value::Array(r.doc.steps.iter().map(|s| from_json(&s.to_json())).collect());
    Value::Array(vec![Value::Struct(receipt), ci, steps])
}

/// XML-RPC value → JSON, copying (for parameters the call keeps using).
fn to_json(v: &Value, path: &str) -> Result<Json, Fault> {
    Ok(match v {
        Value::Integer(i) => Json::from(*i),
        Value::Long(i) => Json::from(*i),
        Value::Boolean(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Double(d) => {
            serde_json::Number::from_f64(*d).map(Json::Number).ok_or_else(|| fault(INVALID_PARAMS, format!("{path}: non-finite double")))?
        }
        Value::DateTime(dt) => Json::String(dt.to_string()),
        Value::Base64(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
        Value::Struct(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                out.insert(k.clone(), to_json(v, &format!("{path}.{k}"))?);
            }
            Json::Object(out)
        }
        Value::Array(items) => {
            Json::Array(items.iter().enumerate().map(|(i, v)| to_json(v, &format!("{path}[{i}]"))).collect::<Result<_, _>>()?)
        }
        Value::Nil => Json::Null,
        other => return Err(wrong_type(path, "a known XML-RPC type", other)),
    })
}

/// JSON → XML-RPC value. Integers that fit use `<int>` (every client reads it), larger ones `<i8>`.
fn from_json(v: &Json) -> Value {
    match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => i32::try_from(i).map(Value::Integer).unwrap_or(Value::Long(i)),
            None => Value::Double(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        Json::Object(m) => Value::Struct(m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctype_is_refused_case_insensitively() {
        assert!(refuse_markup("<?xml version='1.0'?><!doctype x [<!ENTITY a 'b'>]><methodCall/>").is_some());
        assert!(refuse_markup("<methodCall><methodName>x</methodName></methodCall>").is_none());
    }

    #[test]
    fn values_round_trip_through_json() {
        let v = Value::Struct(
            [
                ("a".to_owned(), Value::Integer(3)),
                ("big".to_owned(), Value::Long(1 << 40)),
                ("l".to_owned(), Value::Array(vec![Value::Boolean(true), Value::Nil, Value::Double(1.5)])),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(from_json(&to_json(&v, "x").unwrap()), v);
    }

    /// The streaming reader makes of `add_results` exactly the result REST makes of the same
    /// values: strings keep their whitespace and escapes, numbers their kind, extra keys their
    /// nesting.
    #[test]
    fn add_results_reads_the_same_result_as_rest() {
        let ci = serde_json::json!({"package": "p", "arch": "x86_64", "host": "h", "tags": ["b", "a"], "success": true,
                                    "duration": 12.5, "rev": 42, "big": 1_i64 << 40, "nested": {"l": [1, "two", null, false]}});
        let results = serde_json::json!([
            {"name": "build", "type": "build", "command": ["make", "-j2"], "status": 0,
             "output": "  <lines> & \"quotes\"\n\tindented\n\n", "errout": "", "duration": 1.0, "junit": {"passed": 3}},
            {"name": "test", "status": 2, "output": "", "errout": "FAIL\n"}
        ]);
        let extras = serde_json::json!({"commit": "abc", "list": []});
        let body = serde_json::json!({"client_info": ci, "results": results, "extras": extras}).to_string();
        let rest = crate::recorder::http::decode_submission(body.as_bytes()).unwrap().doc;
        let call = MethodCall { name: "add_results".into(), params: vec![from_json(&ci), from_json(&results), from_json(&extras)] };
        let Decoded::AddResults(read) = decode(call.to_xml().unwrap().as_bytes()).unwrap() else { panic!("not add_results") };
        assert_eq!(read.params, 3);
        assert_eq!(read.doc.unwrap(), rest);
        assert_eq!(rest.steps[0].output, "  <lines> & \"quotes\"\n\tindented\n\n");
    }

    fn add_results_xml(client_info_members: &str) -> String {
        format!(
            "<?xml version='1.0'?><methodCall><methodName>add_results</methodName><params>\
             <param><value><struct>\
               <member><name>package</name><value>p</value></member>\
               <member><name>arch</name><value><string>a</string></value></member>\
               <member><name>host</name><value><string>h&amp;<![CDATA[<x>]]>&#33;</string></value></member>\
               <member><name>success</name><value><boolean>1</boolean></value></member>{client_info_members}\
             </struct></value></param>\
             <param><value><array><data></data></array></value></param></params></methodCall>"
        )
    }

    /// Every XML-RPC type reads as the JSON the recorder keeps (as dxr's values converted did),
    /// and a double JSON cannot hold is refused by its path.
    #[test]
    fn xmlrpc_types_read_as_their_json() {
        let members = "<member><name>b64</name><value><base64>aGk=</base64></value></member>\
                       <member><name>when</name><value><dateTime.iso8601>19980717T14:08:55</dateTime.iso8601></value></member>\
                       <member><name>n</name><value><nil/></value></member>\
                       <member><name>l</name><value><i8>1099511627776</i8></value></member>\
                       <member><name>i</name><value><i4>-3</i4></value></member>\
                       <member><name>d</name><value><double>0.5</double></value></member>\
                       <member><name>empty</name><value></value></member>\
                       <member><name>s</name><value><struct></struct></value></member>";
        let Decoded::AddResults(read) = decode(add_results_xml(members).as_bytes()).unwrap() else { panic!("not add_results") };
        let doc = read.doc.unwrap();
        assert_eq!(doc.client_info.host, "h&<x>!");
        let want = serde_json::json!({"b64": "hi", "when": "19980717T14:08:55", "n": null, "l": 1_i64 << 40, "i": -3, "d": 0.5,
                                      "empty": "", "s": {}});
        assert_eq!(serde_json::Value::Object(doc.client_info.extra), want);

        let inf = "<member><name>x</name><value><array><data><value><double>inf</double></value></data></array></value></member>";
        let Decoded::AddResults(read) = decode(add_results_xml(inf).as_bytes()).unwrap() else { panic!("not add_results") };
        assert_eq!(read.doc.unwrap_err().string(), "client_info.x[0]: non-finite double");
        // Broken markup anywhere is a parse error, whatever else is wrong.
        let broken = add_results_xml("<member><name>x</name><value><int>1</int></value>");
        assert_eq!(decode(broken.as_bytes()).unwrap_err().code(), PARSE_ERROR);
        let unknown = add_results_xml("<member><name>x</name><value><float>1</float></value></member>");
        assert_eq!(decode(unknown.as_bytes()).unwrap_err().code(), PARSE_ERROR);
    }

    fn nested_call(method: &str, depth: usize) -> String {
        format!(
            "<methodCall><methodName>{method}</methodName><params><param>{}<value><int>1</int></value>{}\
             </param></params></methodCall>",
            "<value><array><data>".repeat(depth),
            "</data></array></value>".repeat(depth)
        )
    }

    /// Every reader recurses per nesting level, and a 16 MiB body could nest 400,000 levels:
    /// `xmlrpc_read` refuses past `MAX_DEPTH`, dxr (the other methods) somewhere below 100 levels;
    /// this keeps both checked, on a stack as small as a tokio worker's.
    #[test]
    fn deep_nesting_is_refused_without_exhausting_a_worker_stack() {
        let answers = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let shallow = decode(nested_call("add_results", 10).as_bytes()).map(|d| match d {
                    Decoded::AddResults(a) => a.params == 1,
                    Decoded::Call(_) => false,
                });
                let deep = decode(nested_call("add_results", 300_000).as_bytes()).map(|_| ()).map_err(|f| f.code());
                // Other methods go through dxr, which has a limit of its own.
                let other = decode(nested_call("get_results", 10).as_bytes()).map(|d| match d {
                    Decoded::Call(c) => to_json(&c.params[0], "p").is_ok(),
                    Decoded::AddResults(_) => false,
                });
                let other_deep = decode(nested_call("get_results", 300_000).as_bytes()).map(|_| ()).map_err(|f| f.code());
                (shallow, deep, other, other_deep)
            })
            .expect("spawning")
            .join()
            .expect("no stack overflow");
        assert_eq!(answers.0, Ok(true));
        assert_eq!(answers.1, Err(PARSE_ERROR));
        assert_eq!(answers.2, Ok(true));
        assert_eq!(answers.3, Err(PARSE_ERROR));
    }
}
