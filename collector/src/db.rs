//! The collector's state database (SQLite, WAL). One file,
//! `<state_dir>/collector.db`, holds what must survive a restart: the
//! exactly-once ledger, the remote_write queues and the alert incidents.
//!
//! Why SQLite: crash-safe transactions let the ledger mark and the queued
//! samples of a batch become durable together, before the agent gets its
//! acknowledgement; it is one file to back up, and inspectable with the
//! `sqlite3` shell. `synchronous=FULL` makes each commit durable against
//! power loss; commits are grouped, so the fsync is shared by concurrent pushes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

/// File name inside the state directory.
pub(crate) const FILE: &str = "collector.db";

/// Errors opening or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("state directory {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("state database {}: {source}", file.display())]
    Sqlite { file: PathBuf, source: rusqlite::Error },
    #[error("state database {} has schema version {found}, newer than this collector's {known}; upgrade the collector", file.display())]
    TooNew { file: PathBuf, found: i64, known: i64 },
}

const MIGRATIONS: &[&str] = &[
    // 1: exactly-once ledger and remote_write queues.
    "CREATE TABLE ledger (
        node TEXT NOT NULL,
        boot BLOB NOT NULL,
        ranges BLOB NOT NULL,
        max_created_ms INTEGER NOT NULL,
        PRIMARY KEY (node, boot)
    ) WITHOUT ROWID;
    CREATE TABLE rw_queue (
        id INTEGER PRIMARY KEY,
        remote TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        samples INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX rw_queue_remote ON rw_queue (remote, id);",
    // 2: alert incidents: open ones (restored after a restart, so nothing is
    // paged twice) and the history of every incident.
    "CREATE TABLE incident (
        key TEXT PRIMARY KEY,
        opened_ms INTEGER NOT NULL,
        view TEXT NOT NULL
    );
    CREATE TABLE incident_history (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        event TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        view TEXT NOT NULL
    );
    CREATE INDEX incident_history_at ON incident_history (at_ms);",
    // 3: notification outbox, one row per receiver and incident change.
    "CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        receiver TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        next_ms INTEGER NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX outbox_due ON outbox (receiver, next_ms, id);",
    // 4: maintenance windows set through the API, and when each receiver was
    // last paged about each open incident (for repeat intervals).
    "CREATE TABLE maintenance (
        id TEXT PRIMARY KEY,
        starts_ms INTEGER NOT NULL,
        ends_ms INTEGER NOT NULL,
        window TEXT NOT NULL
    );
    CREATE TABLE reminder (
        receiver TEXT NOT NULL,
        key TEXT NOT NULL,
        last_ms INTEGER NOT NULL,
        PRIMARY KEY (receiver, key)
    ) WITHOUT ROWID;",
    // 5: security events with their evidence, stored with their batch.
    "CREATE TABLE security_event (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        attributes TEXT NOT NULL
    );
    CREATE INDEX security_event_at ON security_event (at_ms);
    CREATE INDEX security_event_node ON security_event (node, at_ms);",
    // 6: per-node shares: each node's events pruned on their own, and the
    // node of each remote_write row (a full queue drops from the node
    // holding the most).
    "CREATE INDEX security_event_node_id ON security_event (node, id);
    ALTER TABLE rw_queue ADD COLUMN node TEXT NOT NULL DEFAULT '';
    CREATE INDEX rw_queue_node ON rw_queue (remote, node, id);",
    // 7: outbox rows carry the version of their message format; a row that
    // cannot be read goes to the dead letters, so it never jams its receiver.
    "ALTER TABLE outbox ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE outbox_dead (
        id INTEGER PRIMARY KEY,
        outbox_id INTEGER NOT NULL,
        receiver TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        dead_ms INTEGER NOT NULL,
        version INTEGER NOT NULL,
        message BLOB NOT NULL,
        error TEXT NOT NULL
    );",
    // 8: the alert engine's timers (pending `for`, firing since, flap
    // openings and quiet periods), one JSON row, so a restart keeps them.
    "CREATE TABLE alert_timers (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        saved_ms INTEGER NOT NULL,
        state TEXT NOT NULL
    );",
];

/// Opens (creating) the database in `dir` and brings its schema up to date.
pub(crate) fn open(dir: &Path) -> Result<Connection, DbError> {
    std::fs::create_dir_all(dir).map_err(|source| DbError::Dir { dir: dir.to_path_buf(), source })?;
    let file = dir.join(FILE);
    let err = |source| DbError::Sqlite { file: file.clone(), source };
    let conn = Connection::open(&file).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(DbError::TooNew { file, found: version, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", i as i64 + 1).map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_twice_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()).unwrap());
        let c = open(dir.path()).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(open(dir.path()), Err(DbError::TooNew { found: 99, .. })));
    }
}
