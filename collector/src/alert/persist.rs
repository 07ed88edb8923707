//! Alert state in the state database: the open incidents (restored at
//! start, so a restart pages nothing twice) and the history of every
//! opening, update and resolution.

use rusqlite::{params, Connection};

use super::model::{Change, IncidentView};
use super::notify::Receiver;

/// Loads the incidents open at the last stop.
pub fn load_open(conn: &Connection) -> rusqlite::Result<Vec<IncidentView>> {
    let mut stmt = conn.prepare("SELECT view FROM incident ORDER BY opened_ms")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        let text = row?;
        match serde_json::from_str::<IncidentView>(&text) {
            Ok(v) => out.push(v),
            Err(e) => {
                tracing::error!(error = %e, "alert: an open incident could not be read back; it will be paged again if still true")
            }
        }
    }
    Ok(out)
}

/// The engine's timers saved at the last stop (JSON) and when, if any.
pub fn load_timers(conn: &Connection) -> rusqlite::Result<Option<(String, i64)>> {
    use rusqlite::OptionalExtension;
    conn.query_row("SELECT state, saved_ms FROM alert_timers WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// Saves the engine's timers (JSON), replacing the last.
pub fn save_timers(conn: &Connection, state: &str, now_ms: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO alert_timers (id, saved_ms, state) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET saved_ms = excluded.saved_ms, state = excluded.state",
        params![now_ms, state],
    )?;
    Ok(())
}

/// Records `changes` and queues their notifications, in one transaction.
pub fn record(
    conn: &mut Connection,
    changes: &[Change],
    receivers: &[Receiver],
    now_ms: i64,
) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    for c in changes {
        let (event, view) = (c.event(), c.view());
        let json = serde_json::to_string(view).unwrap_or_default();
        match c {
            Change::Resolved { .. } => {
                tx.execute("DELETE FROM incident WHERE key = ?1", [&view.key])?;
            }
            // Never paged: nothing to remember across a restart but the history.
            Change::Muted(_) | Change::MutedResolved { .. } => {}
            _ => {
                tx.execute(
                    "INSERT INTO incident (key, opened_ms, view) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET view = excluded.view",
                    params![view.key, view.since_ms, json],
                )?;
            }
        }
        tx.execute(
            "INSERT INTO incident_history (key, event, at_ms, view) VALUES (?1, ?2, ?3, ?4)",
            params![view.key, event, now_ms, json],
        )?;
    }
    let queued = super::notify::outbox::enqueue(&tx, receivers, changes, now_ms)?;
    tx.commit()?;
    Ok(queued)
}

/// One history entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryEntry {
    pub event: String,
    pub at_ms: i64,
    pub incident: serde_json::Value,
}

/// The newest `limit` history entries, newest first.
pub fn history(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<HistoryEntry>> {
    let mut stmt = conn.prepare("SELECT event, at_ms, view FROM incident_history ORDER BY id DESC LIMIT ?1")?;
    let rows = stmt.query_map([limit as i64], |r| {
        let view: String = r.get(2)?;
        Ok(HistoryEntry {
            event: r.get(0)?,
            at_ms: r.get(1)?,
            incident: serde_json::from_str(&view).unwrap_or(serde_json::Value::Null),
        })
    })?;
    rows.collect()
}

/// The nodes that ever pushed a batch (the exactly-once ledger knows them).
pub fn known_nodes(conn: &Connection) -> rusqlite::Result<std::collections::HashSet<tierwatch_protocol::NodeId>> {
    let mut stmt = conn.prepare("SELECT DISTINCT node FROM ledger")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = std::collections::HashSet::new();
    for row in rows {
        if let Ok(id) = tierwatch_protocol::NodeId::new(&row?) {
            out.insert(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_are_saved_replaced_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open(dir.path()).unwrap();
        assert_eq!(load_timers(&conn).unwrap(), None, "nothing saved yet");
        save_timers(&conn, r#"{"instances":[]}"#, 1000).unwrap();
        save_timers(&conn, r#"{"instances":[1]}"#, 2000).unwrap();
        drop(conn);
        // Reopened, as after a restart: the last one saved.
        let conn = crate::db::open(dir.path()).unwrap();
        assert_eq!(load_timers(&conn).unwrap(), Some((r#"{"instances":[1]}"#.to_string(), 2000)));
    }
}
