//! Fuzz target: an XML-RPC request body → `recorder::xmlrpc::decode` (the streaming reader for
//! `add_results`, dxr for the other methods); it may not panic, a refused body's fault must not
//! echo the body back (dxr's own parse error would), and a call dxr read must serialise again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paddock::recorder::xmlrpc::{Decoded, decode};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Decoded::Call(call)) => {
            // Whatever parsed must serialise again: the forwarder re-sends calls.
            let _ = call.to_xml();
        }
        Ok(Decoded::AddResults(call)) => {
            if let Ok(doc) = call.doc {
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
