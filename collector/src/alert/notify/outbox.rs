//! The outbox in the state database: what each receiver still has to send.
//! Rows are written by the alert runner (changes, repeats, Alertmanager
//! re-sends) and drained by the receiver's worker; a row leaves only once
//! sent or refused for good. Each row says the version of its message
//! format; one this build cannot read (a newer version, a damaged row) is
//! moved to the dead letters (`outbox_dead`), so the rows behind it go on.

use std::time::Duration;

use rusqlite::{params, Connection, Transaction};

use super::{Kind, Receiver};
use crate::alert::model::{Change, IncidentView};

/// The JSON every notifier sends or renders from (documented in docs/alerts.md).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Unique per incident change: `key/event/at_ms`, for receivers to dedupe.
    pub id: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// `opened`, `updated` or `resolved`.
    pub event: String,
    pub at_ms: i64,
    pub incident: IncidentView,
    /// With a `resent` row: the other open incidents, sent in the same
    /// request (one row per receiver, so a slow Alertmanager holds back
    /// what is queued behind it by one request at most).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<IncidentView>,
}

/// The version of [`Message`] rows this build writes and reads.
pub const MESSAGE_VERSION: i64 = 1;

/// The event of a row that only keeps Alertmanager's alerts firing: no news,
/// not counted as a notification, not retried.
pub const RESENT: &str = "resent";

impl Message {
    /// The message for one change at `now_ms`.
    pub fn from_change(c: &Change, now_ms: i64) -> Message {
        let at = match c {
            Change::Resolved { ended_ms, .. } => *ended_ms,
            _ => now_ms,
        };
        Message::new(c.event(), c.view(), at)
    }

    /// The message of `event` about `incident` at `at_ms`.
    pub fn new(event: &str, incident: &IncidentView, at_ms: i64) -> Message {
        Message {
            id: format!("{}/{event}/{at_ms}", incident.key),
            status: if event == "resolved" { "resolved" } else { "firing" }.to_string(),
            event: event.to_string(),
            at_ms,
            incident: incident.clone(),
            also: Vec::new(),
        }
    }
}

/// Queues `changes` for every receiver whose route matches, inside `tx`.
pub fn enqueue(
    tx: &Transaction<'_>,
    receivers: &[Receiver],
    changes: &[Change],
    now_ms: i64,
) -> rusqlite::Result<usize> {
    let mut n = 0;
    for c in changes.iter().filter(|c| c.notifies()) {
        let m = Message::from_change(c, now_ms);
        let resolved = matches!(c, Change::Resolved { .. });
        for r in receivers.iter().filter(|r| r.routes(&m.incident, resolved)) {
            queue(tx, r, &m, now_ms)?;
            n += 1;
        }
        if resolved {
            tx.execute("DELETE FROM reminder WHERE key = ?1", [&m.incident.key])?;
        }
    }
    Ok(n)
}

fn queue(tx: &Transaction<'_>, r: &Receiver, m: &Message, now_ms: i64) -> rusqlite::Result<()> {
    let body = serde_json::to_string(m).unwrap_or_default();
    tx.execute(
        "INSERT INTO outbox (receiver, created_ms, attempts, next_ms, message, version) VALUES (?1, ?2, 0, ?2, ?3, ?4)",
        params![r.name, now_ms, body, MESSAGE_VERSION],
    )?;
    if r.repeat_interval.is_some() && m.status == "firing" {
        tx.execute(
            "INSERT INTO reminder (receiver, key, last_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (receiver, key) DO UPDATE SET last_ms = excluded.last_ms",
            params![r.name, m.incident.key, now_ms],
        )?;
    }
    Ok(())
}

/// Queues a `repeated` message for every open, unacknowledged incident a
/// receiver with a repeat interval was paged about longer ago than that
/// interval. Returns how many were queued.
pub fn enqueue_repeats(
    conn: &mut Connection,
    receivers: &[Receiver],
    open: &[IncidentView],
    now_ms: i64,
) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let mut n = 0;
    for r in receivers {
        let Some(every) = r.repeat_interval else { continue };
        for v in open.iter().filter(|v| v.ack.is_none()) {
            let last: Option<i64> = tx
                .query_row(
                    "SELECT last_ms FROM reminder WHERE receiver = ?1 AND key = ?2",
                    params![r.name, v.key],
                    |row| row.get(0),
                )
                .map(Some)
                .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
            // Only incidents this receiver was paged about.
            if last.is_some_and(|t| now_ms - t >= every.as_millis() as i64) {
                queue(&tx, r, &Message::new("repeated", v, now_ms), now_ms)?;
                n += 1;
            }
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Queues one `resent` row with every open incident routed to each
/// Alertmanager receiver in `due` whose outbox is empty: Alertmanager
/// takes a firing alert for resolved at its `endsAt`, so an open incident
/// is sent again each `resend`. A receiver with rows still queued (a
/// resolution, say) gets none: what it has goes first, in order. Returns
/// the receivers done with (a row queued, or nothing open to send); the
/// others are tried again at the next evaluation.
pub fn enqueue_resends(
    conn: &mut Connection,
    due: &[Receiver],
    open: &[IncidentView],
    now_ms: i64,
) -> rusqlite::Result<Vec<String>> {
    let tx = conn.transaction()?;
    let mut done = Vec::new();
    for r in due.iter().filter(|r| matches!(r.kind, Kind::Alertmanager(_))) {
        let waiting: i64 =
            tx.query_row("SELECT count(*) FROM outbox WHERE receiver = ?1", [&r.name], |row| row.get(0))?;
        if waiting > 0 {
            continue;
        }
        let mut routed = open.iter().filter(|v| r.routes(v, false));
        if let Some(first) = routed.next() {
            let mut m = Message::new(RESENT, first, now_ms);
            m.also = routed.cloned().collect();
            queue(&tx, r, &m, now_ms)?;
        }
        done.push(r.name.clone());
    }
    tx.commit()?;
    Ok(done)
}

/// A queued notification.
#[derive(Debug)]
pub struct Pending {
    pub id: i64,
    pub attempts: u32,
    pub message: Message,
}

/// Notifications waiting in the outbox, per receiver that has any.
pub fn queued(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT receiver, count(*) FROM outbox GROUP BY receiver")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    rows.collect()
}

/// A row moved to the dead letters: its id and why it could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Dead {
    pub id: i64,
    pub error: String,
}

/// The oldest notification of `receiver` due at `now_ms` that can be
/// read; the unreadable rows before it are moved to the dead letters and
/// returned (for the caller to log and count).
pub fn next_due(conn: &Connection, receiver: &str, now_ms: i64) -> rusqlite::Result<(Option<Pending>, Vec<Dead>)> {
    let mut dead = Vec::new();
    loop {
        // The message is read as bytes: a damaged row (a BLOB, not UTF-8)
        // must reach the dead letters, not stop the query.
        let row = conn
            .query_row(
                "SELECT id, attempts, CAST(message AS BLOB), version FROM outbox WHERE receiver = ?1 AND next_ms <= ?2 ORDER BY id LIMIT 1",
                params![receiver, now_ms],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, i64>(3)?)),
            )
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
        let Some((id, attempts, text, version)) = row else { return Ok((None, dead)) };
        let read = if version == MESSAGE_VERSION {
            serde_json::from_slice::<Message>(&text).map_err(|e| format!("message does not parse: {e}"))
        } else {
            Err(format!("message format version {version}; this collector reads {MESSAGE_VERSION}"))
        };
        match read {
            Ok(message) => return Ok((Some(Pending { id, attempts: attempts as u32, message }), dead)),
            Err(error) => {
                bury(conn, id, now_ms, &error)?;
                dead.push(Dead { id, error });
            }
        }
    }
}

/// Moves row `id` to the dead letters with `error` (a row that cannot be
/// read, or a notification the notifier panicked on).
pub fn bury(conn: &Connection, id: i64, now_ms: i64, error: &str) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    // Its own id: outbox ids are reused once the outbox drains.
    tx.execute(
        "INSERT INTO outbox_dead (outbox_id, receiver, created_ms, dead_ms, version, message, error)
         SELECT id, receiver, created_ms, ?2, version, CAST(message AS BLOB), ?3 FROM outbox WHERE id = ?1",
        params![id, now_ms, error],
    )?;
    tx.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
    tx.commit()
}

/// Removes a sent (or given up) notification.
pub fn done(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM outbox WHERE id = ?1", [id]).map(|_| ())
}

/// Schedules another attempt.
pub fn retry_at(conn: &Connection, id: i64, attempts: u32, next_ms: i64) -> rusqlite::Result<()> {
    conn.execute("UPDATE outbox SET attempts = ?2, next_ms = ?3 WHERE id = ?1", params![id, attempts as i64, next_ms])
        .map(|_| ())
}

/// Delay before attempt `attempts + 1`: 1 s doubling to 5 minutes.
pub fn backoff(attempts: u32) -> Duration {
    tierwatch_runtime::backoff::nth(Duration::from_secs(1), Duration::from_secs(300), attempts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::model::{Scope, Severity};

    fn view(key: &str) -> IncidentView {
        IncidentView {
            key: format!("{key}/unreachable"),
            node: key.into(),
            node_name: key.into(),
            problem: "unreachable".into(),
            scope: Scope::Node,
            severity: Severity::Critical,
            since_ms: 1_000,
            summary: format!("{key} is unreachable"),
            affected: Vec::new(),
            service: None,
            alerts: Vec::new(),
            muted: None,
            ack: None,
        }
    }

    #[test]
    fn one_resent_row_per_receiver_and_only_into_an_empty_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::db::open(dir.path()).unwrap();
        let yaml = "- name: am\n  alertmanager:\n    url: http://127.0.0.1:9093\n";
        let raw: Vec<super::super::RawReceiver> = serde_yaml::from_str(yaml).unwrap();
        let mut p = tierwatch_yamlconf::Problems::default();
        let receivers = super::super::validate(&raw, dir.path(), &mut p);
        let open = [view("a"), view("b"), view("c")];
        assert_eq!(enqueue_resends(&mut conn, &receivers, &open, 2_000).unwrap(), ["am"]);
        assert_eq!(queued(&conn).unwrap(), [("am".to_string(), 1)], "one row for three incidents");
        let m = next_due(&conn, "am", 2_000).unwrap().0.unwrap().message;
        assert_eq!((m.event.as_str(), m.incident.key.as_str(), m.also.len()), ("resent", "a/unreachable", 2));
        // Still queued: no second row, and the receiver is not done with.
        assert!(enqueue_resends(&mut conn, &receivers, &open, 3_000).unwrap().is_empty());
        assert_eq!(queued(&conn).unwrap(), [("am".to_string(), 1)]);
        // Nothing open: nothing queued, but done.
        let id = next_due(&conn, "am", 3_000).unwrap().0.unwrap().id;
        done(&conn, id).unwrap();
        assert_eq!(enqueue_resends(&mut conn, &receivers, &[], 4_000).unwrap(), ["am"]);
        assert!(queued(&conn).unwrap().is_empty());
    }

    #[test]
    fn unreadable_rows_go_to_the_dead_letters_and_the_rest_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open(dir.path()).unwrap();
        let insert = |message: &str, version: i64| {
            conn.execute(
                "INSERT INTO outbox (receiver, created_ms, attempts, next_ms, message, version) VALUES ('hook', 1, 0, 1, ?1, ?2)",
                params![message, version],
            )
            .unwrap();
        };
        insert("{not json", MESSAGE_VERSION);
        conn.execute(
            "INSERT INTO outbox (receiver, created_ms, attempts, next_ms, message, version) VALUES ('hook', 1, 0, 1, ?1, 1)",
            [vec![0xffu8, 0xfe, 0x00]],
        )
        .unwrap();
        insert(&serde_json::to_string(&Message::new("opened", &view("a"), 1)).unwrap(), 2);
        insert(&serde_json::to_string(&Message::new("opened", &view("b"), 1)).unwrap(), MESSAGE_VERSION);
        let (pending, dead) = next_due(&conn, "hook", 10).unwrap();
        assert_eq!(pending.unwrap().message.incident.key, "b/unreachable", "the receiver carries on");
        assert_eq!(dead.len(), 3);
        assert!(dead[0].error.contains("does not parse"), "{dead:?}");
        assert!(dead[1].error.contains("does not parse"), "a BLOB row too: {dead:?}");
        assert!(dead[2].error.contains("version 2"), "{dead:?}");
        let kept: i64 = conn.query_row("SELECT count(*) FROM outbox_dead", [], |r| r.get(0)).unwrap();
        assert_eq!(kept, 3, "kept for a person to look at");
        assert_eq!(queued(&conn).unwrap(), [("hook".to_string(), 1)]);
        // The outbox drained, its ids are used again: a second dead letter of id 1 is kept too.
        let id = next_due(&conn, "hook", 10).unwrap().0.unwrap().id;
        done(&conn, id).unwrap();
        insert("{again not json", MESSAGE_VERSION);
        let (pending, dead) = next_due(&conn, "hook", 10).unwrap();
        assert!(pending.is_none() && dead.len() == 1, "{dead:?}");
        let kept: i64 = conn.query_row("SELECT count(*) FROM outbox_dead", [], |r| r.get(0)).unwrap();
        assert_eq!(kept, 4);
    }
}
