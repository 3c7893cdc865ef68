//! `GET /api/v1/machines`: persistent machines of `fleet.toml` with what they are doing, from
//! the runs in the store: one running a run with another queued for its turn, one with runs
//! queued and none past the queue, one idle; each with the last run that ended on it.

use axum::http::{Method, StatusCode};
use serde_json::Value;

use crate::common::{Lab, finished, lab_with, row};
use crate::router::json;

const MACHINES: &str = r#"
[[machines]]
name = "mac-mini"
host = "local"
domain = "pdkt4-macos-14"
snapshot = "clean"
ssh_port = 24201
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKVQ4ZlC/DCTfJt/QRKzoV1EhzzDfvKOzQoLdCgLnEX4"
user = "admin"
after = "revert"

[[machines]]
name = "win-box"
host = "rack-2"
domain = "pdkt4-win11"
ssh_port = 24202
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKVQ4ZlC/DCTfJt/QRKzoV1EhzzDfvKOzQoLdCgLnEX4"
user = "admin"

[[machines]]
name = "spare"
host = "local"
domain = "pdkt4-spare"
ssh_port = 24203
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKVQ4ZlC/DCTfJt/QRKzoV1EhzzDfvKOzQoLdCgLnEX4"
user = "admin"
"#;

/// The lab with three machines: `mac-mini` runs `r-mac-2` with `r-mac-3` queued and ended
/// `r-mac-1` (a failure) before; `win-box` has two runs queued for their turn and passed
/// `r-win-0`; `spare` never ran anything.
pub async fn machine_lab(public_reads: bool) -> Lab {
    let l = lab_with(public_reads, MACHINES, |_| {}).await;
    finished(&l.store, "r-mac-0", "demo", "mac-mini", "success", 120).await;
    finished(&l.store, "r-mac-1", "demo", "mac-mini", "build-failure", 30).await;
    l.store.insert_run(&row("r-mac-2", "demo", "mac-mini", "running:1", 5)).await.unwrap();
    l.store.insert_run(&row("r-mac-3", "docs", "mac-mini", "queued", 2)).await.unwrap();
    finished(&l.store, "r-win-0", "docs", "win-box", "success", 60).await;
    l.store.insert_run(&row("r-win-1", "demo", "win-box", "queued", 3)).await.unwrap();
    l.store.insert_run(&row("r-win-2", "docs", "win-box", "queued", 1)).await.unwrap();
    l
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().unwrap().iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no machine {name}: {list}"))
}

#[tokio::test]
async fn machines_show_their_domain_snapshot_state_and_last_run_to_readers() {
    let l = machine_lab(false).await;
    let (st, _) = json(&l.state, Method::GET, "/api/v1/machines", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, body) = json(&l.state, Method::GET, "/api/v1/machines", Some(&l.bob), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 3, "{body}");

    let mac = named(&body, "mac-mini");
    assert_eq!(
        (mac["host"].as_str(), mac["domain"].as_str(), mac["snapshot"].as_str()),
        (Some("local"), Some("pdkt4-macos-14"), Some("clean"))
    );
    assert_eq!(mac["after"], "revert");
    assert_eq!(
        (mac["state"].as_str(), mac["run_id"].as_str(), mac["queued"].as_u64()),
        (Some("running"), Some("r-mac-2"), Some(1)),
        "{mac}"
    );
    assert_eq!(
        (mac["last"]["run_id"].as_str(), mac["last"]["outcome"].as_str()),
        (Some("r-mac-1"), Some("build-failure")),
        "the newest end: {mac}"
    );

    let win = named(&body, "win-box");
    assert_eq!((win["state"].as_str(), win["queued"].as_u64()), (Some("queued"), Some(2)), "{win}");
    assert!(win["run_id"].is_null() && win["snapshot"].is_null(), "{win}");
    assert_eq!(win["last"]["run_id"], "r-win-0");

    let spare = named(&body, "spare");
    assert_eq!((spare["state"].as_str(), spare["queued"].as_u64()), (Some("idle"), Some(0)), "{spare}");
    assert!(spare["last"].is_null() && spare["run_id"].is_null(), "{spare}");

    // The run on the machine ends: it is idle but for its queued run, and that end is its last.
    crate::router::paddock_finish(&l.store, "r-mac-2").await;
    let (_, body) = json(&l.state, Method::GET, "/api/v1/machines", Some(&l.bob), None).await;
    let mac = named(&body, "mac-mini");
    assert_eq!((mac["state"].as_str(), mac["queued"].as_u64()), (Some("queued"), Some(1)), "{mac}");
    assert_eq!(mac["last"]["run_id"], "r-mac-2", "{mac}");
}
