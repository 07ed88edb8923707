//! The on-disk queue of one remote_write receiver: rows of encoded
//! `WriteRequest`s in the state database, oldest first, bounded in bytes.
//! A full queue drops the oldest row of the node holding the most bytes:
//! one node pushing hard cannot push the others' samples out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
    /// Body bytes queued per node.
    pub per_node: Mutex<HashMap<String, u64>>,
}

impl QueueState {
    fn node_add(&self, node: &str, bytes: u64) {
        *self.per_node.lock().unwrap_or_else(|p| p.into_inner()).entry(node.to_string()).or_default() += bytes;
    }

    fn node_sub(&self, node: &str, bytes: u64) {
        let mut m = self.per_node.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = m.get_mut(node) {
            *b = b.saturating_sub(bytes);
            if *b == 0 {
                m.remove(node);
            }
        }
    }

    fn sub(&self, bytes: u64) {
        self.bytes.fetch_sub(bytes.min(self.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        self.rows.fetch_sub(1.min(self.rows.load(Ordering::Relaxed)), Ordering::Relaxed);
    }

    /// The node holding the most bytes.
    fn largest(&self) -> Option<String> {
        let m = self.per_node.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().max_by_key(|(n, b)| (**b, std::cmp::Reverse((*n).clone()))).map(|(n, _)| n.clone())
    }
}

/// A queued row.
#[derive(Debug)]
pub struct Row {
    pub id: i64,
    pub node: String,
    pub created_ms: i64,
    pub samples: u64,
    pub body: Vec<u8>,
}

/// Loads the queue's totals, overall and per node, into `state` (at startup,
/// and after a failed commit raised them for rows that are not there).
pub fn load_totals(conn: &Connection, remote: &str, state: &QueueState) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT node, COALESCE(SUM(length(body)), 0), COUNT(*) FROM rw_queue WHERE remote = ?1 GROUP BY node",
    )?;
    let rows = stmt.query_map([remote], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64))
    })?;
    let (mut bytes, mut count, mut per_node) = (0, 0, HashMap::new());
    for row in rows {
        let (node, b, n) = row?;
        bytes += b;
        count += n;
        per_node.insert(node, b);
    }
    state.bytes.store(bytes, Ordering::Relaxed);
    state.rows.store(count, Ordering::Relaxed);
    *state.per_node.lock().unwrap_or_else(|p| p.into_inner()) = per_node;
    Ok(())
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

/// Appends a row of `node` inside the caller's transaction and counts it in `state`.
pub fn push(
    tx: &Transaction<'_>,
    remote: &str,
    state: &QueueState,
    node: &str,
    created_ms: i64,
    samples: u64,
    body: &[u8],
) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO rw_queue (remote, node, created_ms, samples, body) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![remote, node, created_ms, samples as i64, body])?;
    state.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    state.rows.fetch_add(1, Ordering::Relaxed);
    state.node_add(node, body.len() as u64);
    Ok(())
}

/// Deletes rows until the queue fits `max_bytes` after adding `incoming`,
/// each time the oldest row of the node holding the most bytes; returns
/// (rows, samples) dropped and the nodes they were of.
pub fn trim(
    tx: &Transaction<'_>,
    remote: &str,
    state: &QueueState,
    incoming: u64,
    max_bytes: u64,
) -> rusqlite::Result<(u64, u64, Vec<String>)> {
    let mut dropped = (0u64, 0u64, Vec::new());
    while state.bytes.load(Ordering::Relaxed) + incoming > max_bytes {
        let Some(node) = state.largest() else { break };
        let oldest: Option<(i64, i64, i64)> = tx
            .prepare_cached(
                "SELECT id, length(body), samples FROM rw_queue WHERE remote = ?1 AND node = ?2 ORDER BY id LIMIT 1",
            )?
            .query_row(params![remote, node], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
        let Some((id, len, samples)) = oldest else {
            // The counts were off for this node: it holds nothing.
            state.per_node.lock().unwrap_or_else(|p| p.into_inner()).remove(&node);
            continue;
        };
        tx.prepare_cached("DELETE FROM rw_queue WHERE id = ?1")?.execute([id])?;
        state.sub(len as u64);
        state.node_sub(&node, len as u64);
        dropped.0 += 1;
        dropped.1 += samples as u64;
        if !dropped.2.contains(&node) {
            dropped.2.push(node);
        }
    }
    Ok(dropped)
}

/// The oldest rows of `remote`, up to about `max_samples` samples (at least one row).
pub fn peek(conn: &Connection, remote: &str, max_samples: u64) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, node, created_ms, samples, body FROM rw_queue WHERE remote = ?1 ORDER BY id LIMIT 256",
    )?;
    let mut rows = stmt.query([remote])?;
    let mut out = Vec::new();
    let mut samples = 0u64;
    while let Some(r) = rows.next()? {
        let row = Row {
            id: r.get(0)?,
            node: r.get(1)?,
            created_ms: r.get(2)?,
            samples: r.get::<_, i64>(3)? as u64,
            body: r.get(4)?,
        };
        if !out.is_empty() && samples + row.samples > max_samples {
            break;
        }
        samples += row.samples;
        out.push(row);
    }
    Ok(out)
}

/// Deletes rows after they were sent (or refused for good). The counters
/// move only once the deletion is committed.
pub fn remove(conn: &mut Connection, rows: &[Row], state: &QueueState) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut gone = Vec::new();
    {
        let mut del = tx.prepare_cached("DELETE FROM rw_queue WHERE id = ?1")?;
        for r in rows {
            if del.execute([r.id])? > 0 {
                gone.push(r);
            }
        }
    }
    tx.commit()?;
    for r in gone {
        state.sub(r.body.len() as u64);
        state.node_sub(&r.node, r.body.len() as u64);
    }
    Ok(())
}
