//! Validation error messages, each checked exactly.

use std::path::Path;

use super::*;

const GOOD: &str = include_str!("../../fleet.toml");

fn errors(src: &str) -> Vec<String> {
    match parse(src, Path::new("fleet.toml")) {
        Ok(_) => panic!("expected errors"),
        Err(LoadError::Invalid(e)) => e.iter().map(|e| e.to_string()).collect(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn repo_fleet_is_valid() {
    let fleet = parse(GOOD, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.hosts[0].accelerator, Accelerator::Tcg);
    assert_eq!(fleet.jobs[0].steps.len(), 3);
    assert!(fleet.jobs[0].stop_if_failure);
    let s = fleet.jobs[0].schedule.as_ref().unwrap();
    assert_eq!(s.tz, chrono_tz::Europe::Berlin);
}
