//! `paddock templates`: the warm-start templates on each host (in the state directory, or in
//! the pool of a host with an `image_pool`): image, host, key, state (building, ready, stale;
//! `unlisted` for a pool host that could not be listed, with why on stderr), when made, size
//! on disk, the clones they back, and when the row was listed (a pool's templates are the VM
//! manager's last listing of it).

use std::process::ExitCode;

use anyhow::Result;
use paddock::api::wire::TemplateOut;
use paddock::vm::template::list::human_size;

use super::client::{Client, Remote, ago, block_on, opt, print_json, table};

pub fn run(remote: &Remote) -> Result<ExitCode> {
    block_on(async {
        let templates: Vec<TemplateOut> = Client::new(remote)?.get("/api/v1/templates").await?;
        if remote.json {
            print_json(&templates)?;
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = templates
            .iter()
            .map(|t| {
                let listed = t.listed_at.map(ago).unwrap_or_else(|| "-".into());
                if t.state == "unlisted" {
                    return vec![opt(&t.image), opt(&t.host), "-".into(), t.state.clone(), "-".into(), "-".into(), "-".into(), listed];
                }
                vec![
                    opt(&t.image),
                    opt(&t.host),
                    t.key.chars().take(16).collect(),
                    t.state.clone(),
                    t.made_at.map(ago).unwrap_or_else(|| "-".into()),
                    human_size(t.disk_bytes),
                    t.clones.to_string(),
                    listed,
                ]
            })
            .collect();
        table(&["image", "host", "key", "state", "made", "size", "clones", "listed"], &rows);
        for t in templates.iter().filter(|t| t.state == "unlisted") {
            eprintln!("host {}: {}", opt(&t.host), t.error.as_deref().unwrap_or("its pool could not be listed"));
        }
        Ok(ExitCode::SUCCESS)
    })
}
