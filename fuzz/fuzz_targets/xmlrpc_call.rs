//! Fuzz target: an XML-RPC request body → `recorder::xmlrpc::decode_call`, and for
//! `add_results` → `decode_add_results`; neither may panic, and a refused body's fault must not
//! echo the body back (dxr's own parse error would).
#![no_main]

use libfuzzer_sys::fuzz_target;
use paddock::recorder::xmlrpc::{decode_add_results, decode_call};

fuzz_target!(|data: &[u8]| {
    match decode_call(data) {
        Ok(call) => {
            // Whatever parsed must serialise again: the forwarder re-sends calls.
            let _ = call.to_xml();
            if let Ok(doc) = decode_add_results(call.params) {
                // What validated once validates again from its stored JSON form.
                let again = paddock::recorder::ResultDoc::from_json(
                    doc.client_info.to_json(),
                    serde_json::Value::Array(doc.steps.iter().map(|s| s.to_json()).collect()),
                    Some(serde_json::Value::Object(doc.extras.clone())),
                )
                .expect("a validated result re-validates");
                assert_eq!(again, doc);
            }
        }
        Err(fault) => assert!(fault.string().len() < 200, "fault echoes input: {}", fault.string()),
    }
});
