//! Fuzz target: `fleet.toml` text → `paddock::config::parse`, which must never panic and must
//! point every positioned error at a real line and column of the input.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use paddock::config::{LoadError, parse};

fuzz_target!(|data: &[u8]| {
    // The loader reads files with `read_to_string`, so non-UTF-8 never reaches `parse`.
    let Ok(src) = std::str::from_utf8(data) else { return };
    match parse(src, Path::new("fleet.toml")) {
        Ok(fleet) => {
            // Describing a valid fleet is part of `paddock check`; it must not panic either.
            let _ = format!("{fleet:?}");
        }
        Err(LoadError::Invalid(errors)) => {
            assert!(!errors.is_empty(), "Invalid with no errors");
            let lines = src.split('\n').count();
            for e in &errors {
                assert_eq!(e.line.is_some(), e.column.is_some(), "line without column: {e:?}");
                if let Some(l) = e.line {
                    assert!((1..=lines).contains(&l), "line {l} outside 1..={lines}: {e:?}");
                }
                if let Some(c) = e.column {
                    assert!(c >= 1, "column 0: {e:?}");
                }
                // A syntax error (empty key path) has a line, except too-deep nesting, the one
                // error toml gives no span.
                if e.path.is_empty() && e.line.is_none() {
                    assert!(e.message.starts_with("nested too deeply"), "syntax error without a line: {e:?}");
                }
                assert!(!e.to_string().is_empty());
            }
        }
        Err(LoadError::Read { .. }) => unreachable!("parse does not read files"),
    }
});
