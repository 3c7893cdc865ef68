//! Fuzz target: a `POST /api/v1/results` body → `recorder::http::decode_submission`, and any JSON
//! array `[client_info, results, extras?]` straight into `ResultDoc::from_json`; no panics, and a
//! result that validated once validates again, unchanged, from its stored JSON form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paddock::recorder::ResultDoc;
use paddock::recorder::http::decode_submission;
use serde_json::Value;

fn round_trip(doc: &ResultDoc) {
    let again = ResultDoc::from_json(
        doc.client_info.to_json(),
        Value::Array(doc.steps.iter().map(|s| s.to_json()).collect()),
        Some(Value::Object(doc.extras.clone())),
    )
    .expect("a validated result re-validates");
    assert_eq!(&again, doc);
    // The store keeps the JSON as text and parses it back.
    let text = serde_json::to_string(&doc.client_info.to_json()).expect("serialises");
    let back: Value = serde_json::from_str(&text).expect("parses back");
    assert_eq!(back, doc.client_info.to_json());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(sub) = decode_submission(data) {
        if let Some(k) = &sub.idempotency_key {
            assert!(!k.is_empty() && k.len() <= 256);
        }
        round_trip(&sub.doc);
    }
    if let Ok(Value::Array(mut parts)) = serde_json::from_slice::<Value>(data)
        && (2..=3).contains(&parts.len())
    {
        let extras = if parts.len() == 3 { parts.pop() } else { None };
        let results = parts.pop().expect("two parts");
        let client_info = parts.pop().expect("two parts");
        if let Ok(doc) = ResultDoc::from_json(client_info, results, extras) {
            round_trip(&doc);
        }
    }
});
