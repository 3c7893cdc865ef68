//! Files attached to a result (pony-build's uploads: build products, logs, eggs): stored in the
//! recorder's database beside the result, within a per-file and a per-result cap.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::super::model::ResultKey;

/// A file's metadata, as listed on the result's page and in the API.
#[derive(Debug, Clone, PartialEq)]
pub struct FileInfo {
    pub filename: String,
    pub description: String,
    /// pony-build's `visible`: listed on the result's page (hidden files are only in the API).
    pub visible: bool,
    pub size: u64,
    pub uploaded_at: f64,
}

/// A file to attach.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub filename: String,
    pub description: String,
    pub visible: bool,
    pub content: Vec<u8>,
}

/// What `attach` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Attached {
    /// Stored now.
    Stored,
    /// The same file (name and bytes) was already there: an upload repeated after a lost answer.
    AlreadyThere,
    /// Another file of that name is there; nothing changed.
    NameTaken,
    /// The result's files would be larger than the per-result cap; nothing changed.
    OverResultCap { already: u64 },
}

/// The result an upload's `auth_key` belongs to, with the time it was received.
pub fn result_for_auth_key(conn: &Connection, auth_key: &str) -> rusqlite::Result<Option<(ResultKey, f64)>> {
    conn.prepare_cached("SELECT id, received_at FROM results WHERE auth_key = ?1")?
        .query_row([auth_key], |r| Ok((ResultKey(r.get(0)?), r.get(1)?)))
        .optional()
}

/// Attach `file` to result `key`, unless the result's files would pass `result_cap` bytes.
pub fn attach(tx: &Transaction<'_>, key: ResultKey, file: &NewFile, result_cap: u64, now: f64) -> rusqlite::Result<Attached> {
    let existing: Option<Vec<u8>> = tx
        .query_row("SELECT content FROM files WHERE result_id = ?1 AND filename = ?2", params![key.0, file.filename], |r| r.get(0))
        .optional()?;
    if let Some(bytes) = existing {
        return Ok(if bytes == file.content { Attached::AlreadyThere } else { Attached::NameTaken });
    }
    let already: i64 = tx.query_row("SELECT coalesce(sum(size), 0) FROM files WHERE result_id = ?1", [key.0], |r| r.get(0))?;
    let already = already.max(0) as u64;
    if already + file.content.len() as u64 > result_cap {
        return Ok(Attached::OverResultCap { already });
    }
    tx.execute(
        "INSERT INTO files (result_id, filename, description, visible, size, content, uploaded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![key.0, file.filename, file.description, file.visible, file.content.len() as i64, file.content, now],
    )?;
    Ok(Attached::Stored)
}

/// The files of result `key`, in upload order.
pub fn list(conn: &Connection, key: ResultKey) -> rusqlite::Result<Vec<FileInfo>> {
    conn.prepare_cached("SELECT filename, description, visible, size, uploaded_at FROM files WHERE result_id = ?1 ORDER BY id")?
        .query_map([key.0], |r| {
            Ok(FileInfo {
                filename: r.get(0)?,
                description: r.get(1)?,
                visible: r.get(2)?,
                size: r.get::<_, i64>(3)?.max(0) as u64,
                uploaded_at: r.get(4)?,
            })
        })?
        .collect()
}

/// One file's bytes.
pub fn content(conn: &Connection, key: ResultKey, filename: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT content FROM files WHERE result_id = ?1 AND filename = ?2")?
        .query_row(params![key.0, filename], |r| r.get(0))
        .optional()
}
