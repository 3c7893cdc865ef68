//! `docs/fleet.toml.md` against the types that parse `fleet.toml`: the page lists
//! exactly the keys each section accepts, each example is accepted where the page
//! puts it, and each default is what validation gives when the key is absent.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::raw::*;

const DOC: &str = include_str!("../../docs/fleet.toml.md");

/// One table row of the page.
#[derive(Debug)]
struct Row {
    key: String,
    default: String,
    example: String,
}

/// The page's sections (`## \`[daemon]\``) and their rows, in order.
fn doc_sections() -> BTreeMap<String, Vec<Row>> {
    let mut out: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut section = None;
    for line in DOC.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = Some(h.trim().trim_matches('`').to_string());
            out.entry(section.clone().unwrap()).or_default();
            continue;
        }
        let Some(s) = &section else { continue };
        let cells: Vec<&str> = line.split(" | ").map(|c| c.trim().trim_matches('|').trim()).collect();
        if !line.starts_with("| `") || cells.len() < 5 {
            continue;
        }
        out.get_mut(s).unwrap().push(Row {
            key: cells[0].trim_matches('`').to_string(),
            default: cells[2].to_string(),
            example: cells[3].to_string(),
        });
    }
    out
}

/// The keys a serde type accepts, read from its own "unknown field" error: the
/// derive lists every field it knows, so the list cannot drift from the struct.
fn keys_of<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
    let err = toml::from_str::<T>("zz_not_a_key = 0").unwrap_err().message().to_string();
    let expected = err.split_once("expected").map(|(_, e)| e).unwrap_or_else(|| panic!("no field list in {err:?}"));
    let mut keys: Vec<String> = expected.split('`').skip(1).step_by(2).map(str::to_string).collect();
    keys.sort();
    keys
}

fn type_sections() -> BTreeMap<String, Vec<String>> {
    [
        ("top level", keys_of::<RawFleet>()),
        ("[daemon]", keys_of::<RawDaemon>()),
        ("[[hosts]]", keys_of::<RawHost>()),
        ("[[images]]", keys_of::<RawImage>()),
        ("[[machines]]", keys_of::<RawMachine>()),
        ("[[jobs]]", keys_of::<RawJob>()),
        ("[[jobs.steps]]", keys_of::<RawStep>()),
        ("[[users]]", keys_of::<RawUser>()),
        ("[[recorders]]", keys_of::<RawRecorder>()),
        ("[access]", keys_of::<RawAccess>()),
        ("[limits]", keys_of::<RawLimits>()),
        ("[retention]", keys_of::<RawRetention>()),
    ]
    .into_iter()
    .map(|(s, k)| (s.to_string(), k))
    .collect()
}

#[test]
fn the_reference_lists_exactly_the_keys_each_section_accepts() {
    let doc = doc_sections();
    let types = type_sections();
    assert_eq!(doc.keys().collect::<Vec<_>>(), types.keys().collect::<Vec<_>>(), "sections of docs/fleet.toml.md");
    for (section, keys) in &types {
        let mut listed: Vec<String> = doc[section].iter().map(|r| r.key.clone()).collect();
        listed.sort();
        let missing: Vec<&String> = keys.iter().filter(|k| !listed.contains(k)).collect();
        let extra: Vec<&String> = listed.iter().filter(|k| !keys.contains(k)).collect();
        assert!(missing.is_empty() && extra.is_empty(), "{section}: not documented {missing:?}, documented but unknown {extra:?}");
    }
}

/// A small valid fleet, section by section, that a row's key is set in. Its names are
/// the page's examples, so that an example name keeps every reference resolved.
fn base() -> Vec<(&'static str, Vec<(String, String)>)> {
    let kv = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    vec![
        ("top level", kv(&[("version", "1")])),
        ("[daemon]", kv(&[("listen", r#""127.0.0.1:0""#), ("state_dir", r#""state""#), ("ssh_ports", r#""22200-22209""#)])),
        (
            "[[hosts]]",
            kv(&[
                ("name", r#""rack-1""#),
                ("uri", r#""test:///default""#),
                ("accelerator", r#""tcg""#),
                ("address", r#""127.0.0.1""#),
                ("max_vms", "2"),
                ("memory_mib", "4096"),
                ("vcpus", "4"),
            ]),
        ),
        (
            "[[images]]",
            kv(&[
                ("name", r#""debian-12""#),
                ("os", r#""linux""#),
                ("arch", r#""x86_64""#),
                ("kernel", r#""vmlinuz""#),
                ("initrd", r#""initrd.img""#),
                ("memory_mib", "256"),
                ("vcpus", "1"),
                ("user", r#""root""#),
                ("host_key", r#""console""#),
            ]),
        ),
        (
            "[[machines]]",
            kv(&[
                ("name", r#""mac-mini""#),
                ("host", r#""rack-1""#),
                ("domain", r#""macos-14""#),
                ("ssh_port", "2222"),
                ("host_key", r#""ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKVQ4ZlC/DCTfJt/QRKzoV1EhzzDfvKOzQoLdCgLnEX4""#),
                ("user", r#""admin""#),
            ]),
        ),
        ("[[users]]", kv(&[("name", r#""alice""#), ("role", r#""maintainer""#)])),
        ("[[jobs]]", kv(&[("name", r#""nightly""#), ("images", r#"["debian-12"]"#)])),
        ("[[jobs.steps]]", kv(&[("name", r#""build""#), ("type", r#""test""#), ("command", r#""echo hello""#)])),
        ("[[recorders]]", kv(&[("name", r#""central""#), ("kind", r#""paddock""#), ("url", r#""http://127.0.0.1:9/""#)])),
        ("[access]", Vec::new()),
        ("[limits]", Vec::new()),
        ("[retention]", Vec::new()),
    ]
}

/// Keys that are valid only beside others: what to set and remove with them.
fn companions(section: &str, key: &str) -> (Vec<(&'static str, &'static str)>, Vec<&'static str>) {
    match (section, key) {
        ("[[hosts]]", "timezone" | "hard_stop") => (vec![("windows", r#"["Mon-Fri 20:00-07:00"]"#)], vec![]),
        ("[[images]]", "disk") => (vec![], vec!["kernel", "initrd", "cmdline"]),
        ("[[images]]", "identity") => (vec![], vec!["host_key"]),
        ("[[images]]", "start") => {
            (vec![("disk", r#""debian-12.qcow2""#), ("identity", r#""cloud-init""#)], vec!["kernel", "initrd", "cmdline", "host_key"])
        }
        ("[[images]]", "min_ready") => (
            vec![("disk", r#""debian-12.qcow2""#), ("identity", r#""cloud-init""#), ("start", r#""warm""#)],
            vec!["kernel", "initrd", "cmdline", "host_key"],
        ),
        ("[[machines]]", "after") => (vec![("snapshot", r#""clean""#)], vec![]),
        ("[[jobs]]", "timezone") => (vec![("schedule", r#""0 2 * * *""#)], vec![]),
        _ => (vec![], vec![]),
    }
}

/// The fleet text with `section.key = value` (and its companions) set.
fn render(section: &str, key: &str, value: Option<&str>) -> String {
    let (with, without) = companions(section, key);
    let mut out = String::new();
    for (s, mut pairs) in base() {
        if s == section {
            pairs.retain(|(k, _)| k != key && !without.contains(&k.as_str()) && !with.iter().any(|(w, _)| w == k));
            pairs.extend(with.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            if let Some(v) = value {
                pairs.push((key.to_string(), v.to_string()));
            }
        }
        if s != "top level" {
            out.push_str(&format!("\n{s}\n"));
        }
        for (k, v) in pairs {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out
}

fn parse(src: &str) -> Result<super::Fleet, String> {
    super::parse(src, Path::new("/etc/paddock/fleet.toml")).map_err(|e| e.to_string())
}

/// The first backticked literal of a cell, if the cell starts with one.
fn literal(cell: &str) -> Option<&str> {
    cell.strip_prefix('`')?.split('`').next()
}

#[test]
fn every_example_is_accepted_and_every_default_is_what_absence_gives() {
    parse(&render("", "", None)).unwrap_or_else(|e| panic!("the base fleet is invalid: {e}"));
    let mut checked = (0, 0);
    for (section, rows) in doc_sections() {
        for row in rows {
            if let Some(example) = literal(&row.example) {
                let src = render(&section, &row.key, Some(example));
                parse(&src).unwrap_or_else(|e| panic!("{section} {}: example `{example}` refused: {e}\n{src}", row.key));
                checked.0 += 1;
            }
            if let Some(default) = literal(&row.default) {
                let absent = parse(&render(&section, &row.key, None)).unwrap();
                let given = parse(&render(&section, &row.key, Some(default)))
                    .unwrap_or_else(|e| panic!("{section} {}: default `{default}` refused: {e}", row.key));
                assert_eq!(
                    format!("{absent:?}"),
                    format!("{given:?}"),
                    "{section} {}: the documented default `{default}` is not what absence gives",
                    row.key
                );
                checked.1 += 1;
            }
        }
    }
    // Guards the parser of the page itself: a broken table would check nothing.
    assert!(checked.0 >= 60 && checked.1 >= 25, "only {checked:?} examples and defaults were found");
}
