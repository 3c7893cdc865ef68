//! The migration that gives paddock's old results their platform back: before results named
//! the platform (the image), paddock sent the disposable VM's name as `host` (and the
//! hypervisor host among the tags), so every run made a new tagset. This merges those per-VM
//! tagsets into one per platform, keeping every result.

use rusqlite::{Transaction, params};
use serde_json::Value as Json;

use super::super::model::{ClientInfo, Tagset};

/// How an old paddock result is recognised: its `host` is a VM name (`paddock-<instance>-<run>`)
/// or the placeholder of a run that never had a VM, and its `extras` carry paddock's `run_id`
/// and `image`. Anything else (a pony-build client's result) is left exactly as it was.
fn old_paddock_result(host: &str, extras: &serde_json::Map<String, Json>) -> Option<String> {
    let vm_like = host == "(no vm)" || host.starts_with("paddock-");
    let image = extras.get("image")?.as_str()?;
    (vm_like && extras.get("run_id").is_some_and(Json::is_string) && !image.is_empty()).then(|| image.to_owned())
}

/// Rewrites each old paddock result to its platform (`host` = its image, the hypervisor host
/// out of the tags, the VM's name kept as `extras.vm_name`), moves it to that platform's tagset
/// and drops the tagsets left empty; every tagset's first/latest pointers are recomputed.
pub fn merge_vm_tagsets(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let rows: Vec<(i64, String, String, String, f64)> = {
        let mut stmt = tx.prepare("SELECT id, host, client_info, extras, received_at FROM results ORDER BY id")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?.collect::<rusqlite::Result<_>>()?
    };
    let mut moved = 0usize;
    for (id, host, ci_text, extras_text, at) in rows {
        let Ok(Json::Object(mut extras)) = serde_json::from_str::<Json>(&extras_text) else { continue };
        let Some(platform) = old_paddock_result(&host, &extras) else { continue };
        let Ok(mut ci) = serde_json::from_str::<Json>(&ci_text).map_err(|_| ()).and_then(|v| ClientInfo::from_json(v).map_err(|_| ()))
        else {
            continue;
        };
        // Old documents listed [os, arch, image, hypervisor host, job tags...].
        let hypervisor = extras.get("hypervisor_host").and_then(Json::as_str).map(str::to_owned);
        if let Some(h) = &hypervisor
            && ci.tags.get(3) == Some(h)
        {
            ci.tags.remove(3);
            if !ci.tags.contains(h) {
                tx.execute("DELETE FROM result_tags WHERE tag = ?1 AND result_id = ?2", params![h, id])?;
            }
        }
        if host != "(no vm)" {
            extras.entry("vm_name").or_insert(Json::String(host.clone()));
        }
        ci.host = platform;
        let tagset = Tagset::of(&ci).canonical();
        tx.execute(
            "INSERT INTO tagsets (package, tagset, latest_id, first_at, latest_at) VALUES (?1, ?2, 0, ?3, ?3)
             ON CONFLICT (package, tagset) DO NOTHING",
            params![ci.package, tagset, at],
        )?;
        let tagset_id: i64 =
            tx.query_row("SELECT id FROM tagsets WHERE package = ?1 AND tagset = ?2", params![ci.package, tagset], |r| r.get(0))?;
        tx.execute(
            "UPDATE results SET host = ?1, tagset_id = ?2, client_info = ?3, extras = ?4 WHERE id = ?5",
            params![ci.host, tagset_id, ci.to_json().to_string(), Json::Object(extras).to_string(), id],
        )?;
        moved += 1;
    }
    if moved == 0 {
        return Ok(());
    }
    tx.execute("DELETE FROM tagsets WHERE id NOT IN (SELECT DISTINCT tagset_id FROM results)", [])?;
    tx.execute(
        "UPDATE tagsets SET
            latest_id = (SELECT max(id) FROM results WHERE tagset_id = tagsets.id),
            first_at = (SELECT min(received_at) FROM results WHERE tagset_id = tagsets.id)",
        [],
    )?;
    tx.execute("UPDATE tagsets SET latest_at = (SELECT received_at FROM results WHERE id = tagsets.latest_id)", [])?;
    // Reservations and build requests of platforms that no longer exist can never be used.
    tx.execute("DELETE FROM reservations WHERE tagset NOT IN (SELECT tagset FROM tagsets)", [])?;
    tx.execute("DELETE FROM build_requests WHERE tagset NOT IN (SELECT tagset FROM tagsets)", [])?;
    tracing::info!(results = moved, "merged per-VM tagsets of paddock results into their platforms");
    Ok(())
}
