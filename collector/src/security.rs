//! Security events from the agents' sensors: stored with their evidence in
//! the state database in the same transaction as their batch's ledger mark
//! (so an event arrives exactly once, however often its batch is resent),
//! counted per node and kind in `/metrics`, listed by
//! `/api/v1/security/events`, and kept for the alert engine's event rules.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, Transaction};
use serde::Serialize;
use tierwatch_protocol::{Event, NodeId};

/// The counter exposed per node, kind and severity.
pub(crate) const EVENTS_TOTAL: &str = "tierwatch_security_events_total";
/// Events older than this are deleted.
pub(crate) const KEEP_MS: i64 = 90 * 86_400_000;

/// An event's severity as a label value.
pub(crate) fn severity_name(s: i32) -> &'static str {
    match tierwatch_protocol::Severity::try_from(s) {
        Ok(tierwatch_protocol::Severity::Critical) => "critical",
        Ok(tierwatch_protocol::Severity::Warning) => "warning",
        _ => "info",
    }
}

/// An event as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct StoredEvent {
    pub id: i64,
    pub node: String,
    pub kind: String,
    pub severity: &'static str,
    /// When it happened (agent clock), ms since the epoch.
    pub at_ms: i64,
    /// The same in RFC 3339.
    pub at: Option<String>,
    /// When the collector stored it.
    pub received_ms: i64,
    /// The evidence: source address and MAC, counts, window, sample ports.
    pub attributes: BTreeMap<String, String>,
}

/// Inserts the events of one new batch, inside the ledger's transaction.
pub(crate) fn insert(tx: &Transaction<'_>, node: &NodeId, events: &[Event], received_ms: i64) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO security_event (node, kind, severity, at_ms, received_ms, attributes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for e in events {
        let attributes = serde_json::to_string(&e.attributes).unwrap_or_default();
        stmt.execute(params![
            node.as_str(),
            e.kind,
            severity_name(e.severity),
            e.timestamp_ms,
            received_ms,
            attributes
        ])?;
    }
    Ok(())
}

/// Deletes events older than [`KEEP_MS`]; returns how many.
pub(crate) fn prune(conn: &Connection, now_ms: i64) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM security_event WHERE at_ms < ?1", [now_ms - KEEP_MS])
}

/// Deletes `node`'s oldest events beyond `keep`; returns how many. Each
/// node has its own share: a flood from one never deletes another's.
pub(crate) fn prune_node(conn: &Connection, node: &str, keep: usize) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM security_event WHERE node = ?1 AND id <
             (SELECT id FROM security_event WHERE node = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![node, keep.saturating_sub(1) as i64],
    )
}

/// Rows stored per node.
pub(crate) fn rows_per_node(conn: &Connection) -> rusqlite::Result<std::collections::HashMap<String, usize>> {
    let mut stmt = conn.prepare("SELECT node, count(*) FROM security_event GROUP BY node")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize)))?;
    rows.collect()
}

/// Which events to list.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Query {
    pub node: Option<String>,
    pub kind: Option<String>,
    /// Only events that happened at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// At most this many, newest first (default 100, at most 10,000).
    pub limit: Option<usize>,
}

/// The events matching `q`, newest first.
pub(crate) fn list(conn: &Connection, q: &Query) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, node, kind, severity, at_ms, received_ms, attributes FROM security_event
         WHERE (?1 IS NULL OR node = ?1) AND (?2 IS NULL OR kind = ?2) AND at_ms >= ?3
         ORDER BY at_ms DESC, id DESC LIMIT ?4",
    )?;
    let limit = q.limit.unwrap_or(100).min(10_000) as i64;
    let rows = stmt.query_map(params![q.node, q.kind, q.since_ms.unwrap_or(i64::MIN), limit], |r| {
        let severity: String = r.get(3)?;
        let attributes: String = r.get(6)?;
        let at_ms: i64 = r.get(4)?;
        Ok(StoredEvent {
            id: r.get(0)?,
            node: r.get(1)?,
            kind: r.get(2)?,
            severity: match severity.as_str() {
                "critical" => "critical",
                "warning" => "warning",
                _ => "info",
            },
            at_ms,
            at: crate::timestamp::rfc3339(at_ms),
            received_ms: r.get(5)?,
            attributes: serde_json::from_str(&attributes).unwrap_or_default(),
        })
    })?;
    rows.collect()
}

/// Recent events of one node, kind, severity and source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Recent {
    pub node: String,
    pub kind: String,
    pub severity: String,
    /// The `src` evidence attribute; empty when the event has none.
    pub source: String,
    pub count: u64,
    pub last_ms: i64,
}

/// Events since `since_ms` grouped by node, kind, severity and source: the
/// `limit` groups with the latest events (a bound on the series exposed).
pub(crate) fn recent(conn: &Connection, since_ms: i64, per_node: usize) -> rusqlite::Result<Vec<Recent>> {
    // Each node's newest groups: one node's flood cannot push another's out.
    let mut stmt = conn.prepare_cached(
        "SELECT node, kind, severity, src, n, last FROM (
             SELECT node, kind, severity, ifnull(json_extract(attributes, '$.src'), '') AS src,
                    count(*) AS n, max(at_ms) AS last,
                    row_number() OVER (PARTITION BY node ORDER BY max(at_ms) DESC) AS rank
             FROM security_event WHERE at_ms >= ?1
             GROUP BY node, kind, severity, src)
         WHERE rank <= ?2 ORDER BY last DESC",
    )?;
    let rows = stmt.query_map(params![since_ms, per_node as i64], |r| {
        Ok(Recent {
            node: r.get(0)?,
            kind: r.get(1)?,
            severity: r.get(2)?,
            source: r.get(3)?,
            count: r.get::<_, i64>(4)? as u64,
            last_ms: r.get(5)?,
        })
    })?;
    // Kinds outside the catalogue are one label value ("other"); their groups merge.
    let mut merged: BTreeMap<(String, String, String, String), (u64, i64)> = BTreeMap::new();
    for row in rows {
        let r = row?;
        let kind = tierwatch_protocol::catalogue::event_kind_label(&r.kind).to_string();
        let m = merged.entry((r.node, kind, r.severity, r.source)).or_insert((0, i64::MIN));
        m.0 += r.count;
        m.1 = m.1.max(r.last_ms);
    }
    let mut out: Vec<Recent> = merged
        .into_iter()
        .map(|((node, kind, severity, source), (count, last_ms))| Recent {
            node,
            kind,
            severity,
            source,
            count,
            last_ms,
        })
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.last_ms));
    Ok(out)
}

/// Events stored so far per (node, kind, severity): the counters start from
/// these after a restart, so `tierwatch_security_events_total` never goes back.
pub(crate) fn counts(conn: &Connection) -> rusqlite::Result<Vec<(String, String, String, u64)>> {
    let mut stmt =
        conn.prepare("SELECT node, kind, severity, count(*) FROM security_event GROUP BY node, kind, severity")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, at: i64, src: &str) -> Event {
        Event::new(kind, tierwatch_protocol::Severity::Warning, at, [("src", src)])
    }

    #[test]
    fn stored_listed_filtered_counted_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::db::open(dir.path()).unwrap();
        let c1 = NodeId::new("c1").unwrap();
        let now = 1_800_000_000_000;
        let tx = conn.transaction().unwrap();
        insert(
            &tx,
            &c1,
            &[event("port_scan", now - 2000, "10.2.1.50"), event("arp_spoof", now - 1000, "10.2.1.51")],
            now,
        )
        .unwrap();
        insert(&tx, &NodeId::new("c2").unwrap(), &[event("port_scan", now - KEEP_MS - 1, "10.2.2.9")], now).unwrap();
        tx.commit().unwrap();
        let all = list(&conn, &Query::default()).unwrap();
        assert_eq!(all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["arp_spoof", "port_scan", "port_scan"]);
        assert_eq!(all[1].attributes["src"], "10.2.1.50");
        let q = Query { node: Some("c1".into()), kind: Some("port_scan".into()), ..Default::default() };
        assert_eq!(list(&conn, &q).unwrap().len(), 1);
        let q = Query { since_ms: Some(now - 1500), ..Default::default() };
        assert_eq!(list(&conn, &q).unwrap().len(), 1);
        assert!(counts(&conn).unwrap().contains(&("c1".into(), "port_scan".into(), "warning".into(), 1)));
        let tx = conn.transaction().unwrap();
        insert(&tx, &c1, &[event("port_scan", now - 500, "10.2.1.50")], now).unwrap();
        tx.commit().unwrap();
        let r = recent(&conn, now - 86_400_000, 10).unwrap();
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(
            (r[0].kind.as_str(), r[0].source.as_str(), r[0].count, r[0].last_ms),
            ("port_scan", "10.2.1.50", 2, now - 500)
        );
        assert_eq!(recent(&conn, now - 86_400_000, 1).unwrap().len(), 1, "bounded");
        conn.execute("DELETE FROM security_event WHERE at_ms = ?1", [now - 500]).unwrap();
        assert_eq!(prune(&conn, now).unwrap(), 1, "the one older than the retention");
        assert_eq!(list(&conn, &Query::default()).unwrap().len(), 2);
    }
}
