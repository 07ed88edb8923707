//! The on-disk queue of one remote_write receiver: rows of encoded
//! `WriteRequest`s in the state database, oldest first, bounded in bytes.

use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{params, Connection, Transaction};
use tokio::sync::Notify;

/// What the ledger and the sender share about one queue.
#[derive(Debug, Default)]
pub struct QueueState {
    /// Body bytes queued.
    pub bytes: AtomicU64,
    /// Rows queued.
    pub rows: AtomicU64,
    /// Wakes the sender when rows were added.
    pub added: Notify,
}

/// A queued row.
#[derive(Debug)]
pub struct Row {
    pub id: i64,
    pub created_ms: i64,
    pub samples: u64,
    pub body: Vec<u8>,
}

/// Bytes and rows queued for `remote` (at startup).
pub fn totals(conn: &Connection, remote: &str) -> rusqlite::Result<(u64, u64)> {
    conn.query_row("SELECT COALESCE(SUM(length(body)), 0), COUNT(*) FROM rw_queue WHERE remote = ?1", [remote], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })
}

/// Deletes rows of receivers no longer configured; returns how many.
pub fn purge_others(conn: &Connection, keep: &[String]) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare("SELECT DISTINCT remote FROM rw_queue")?;
    let names: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    let mut n = 0;
    for name in names.iter().filter(|n| !keep.contains(n)) {
        n += conn.execute("DELETE FROM rw_queue WHERE remote = ?1", [name])?;
    }
    Ok(n)
}

/// Appends a row inside the caller's transaction.
pub fn push(tx: &Transaction<'_>, remote: &str, created_ms: i64, samples: u64, body: &[u8]) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO rw_queue (remote, created_ms, samples, body) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![remote, created_ms, samples as i64, body])?;
    Ok(())
}

/// Deletes the oldest rows until the queue fits `max_bytes` after adding
/// `incoming`; returns (rows, samples) dropped.
pub fn trim(
    tx: &Transaction<'_>,
    remote: &str,
    state: &QueueState,
    incoming: u64,
    max_bytes: u64,
) -> rusqlite::Result<(u64, u64)> {
    let mut dropped = (0u64, 0u64);
    while state.bytes.load(Ordering::Relaxed) + incoming > max_bytes {
        let oldest: Option<(i64, i64, i64)> = tx
            .prepare_cached("SELECT id, length(body), samples FROM rw_queue WHERE remote = ?1 ORDER BY id LIMIT 1")?
            .query_row([remote], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
        let Some((id, len, samples)) = oldest else { break };
        tx.prepare_cached("DELETE FROM rw_queue WHERE id = ?1")?.execute([id])?;
        state.bytes.fetch_sub((len as u64).min(state.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        state.rows.fetch_sub(1.min(state.rows.load(Ordering::Relaxed)), Ordering::Relaxed);
        dropped.0 += 1;
        dropped.1 += samples as u64;
    }
    Ok(dropped)
}

/// The oldest rows of `remote`, up to about `max_samples` samples (at least one row).
pub fn peek(conn: &Connection, remote: &str, max_samples: u64) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, created_ms, samples, body FROM rw_queue WHERE remote = ?1 ORDER BY id LIMIT 256")?;
    let mut rows = stmt.query([remote])?;
    let mut out = Vec::new();
    let mut samples = 0u64;
    while let Some(r) = rows.next()? {
        let row = Row { id: r.get(0)?, created_ms: r.get(1)?, samples: r.get::<_, i64>(2)? as u64, body: r.get(3)? };
        if !out.is_empty() && samples + row.samples > max_samples {
            break;
        }
        samples += row.samples;
        out.push(row);
    }
    Ok(out)
}

/// Deletes rows after they were sent (or refused for good).
pub fn remove(conn: &mut Connection, rows: &[Row], state: &QueueState) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut del = tx.prepare_cached("DELETE FROM rw_queue WHERE id = ?1")?;
        for r in rows {
            if del.execute([r.id])? > 0 {
                let len = r.body.len() as u64;
                state.bytes.fetch_sub(len.min(state.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
                state.rows.fetch_sub(1.min(state.rows.load(Ordering::Relaxed)), Ordering::Relaxed);
            }
        }
    }
    tx.commit()
}
