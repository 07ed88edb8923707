//! The alert engine: rules over the collector's series, grouped by the
//! topology into incidents that name the root cause, kept in the state
//! database so a restart pages nothing twice.
//!
//! The runner evaluates after every stored batch (a failing probe pages
//! without waiting for a tick) and every second (heartbeats).

pub mod engine;
pub mod flap;
pub mod incident;
pub mod maintenance;
pub mod mean;
pub mod model;
pub mod notify;
pub mod outage;
pub mod persist;
pub mod quorum;
pub mod readings;
pub mod rules;
pub mod state;
pub mod view;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;
use engine::Engine;
use maintenance::Window;
use model::{Ack, Change, IncidentView};

/// Shared by the runner, ingest (which triggers it) and the HTTP API.
pub struct Alerting {
    engine: Mutex<Engine>,
    conn: Arc<Mutex<Connection>>,
    receivers: Vec<notify::Receiver>,
    /// Windows from `collector.yaml`; the API's live in the database.
    configured: Vec<Window>,
    /// Wakes the runner after a stored batch.
    pub trigger: Notify,
    /// Firing alerts per node as of the last evaluation.
    per_node: Mutex<Arc<std::collections::HashMap<String, usize>>>,
    /// The outbox the notifiers drain, and the bell rung after queueing.
    outbox: notify::worker::Outbox,
    /// The language and local time of notification texts.
    pub locale: crate::i18n::Locale,
}

impl Alerting {
    /// Restores the incidents open and the maintenance windows set at the last stop into `engine`.
    pub fn new(
        mut engine: Engine,
        conn: Connection,
        receivers: Vec<notify::Receiver>,
        configured: Vec<Window>,
    ) -> rusqlite::Result<Alerting> {
        let open = persist::load_open(&conn)?;
        if !open.is_empty() {
            tracing::info!(incidents = open.len(), "alert: incidents still open from before the restart");
        }
        engine.set_known(persist::known_nodes(&conn)?);
        if let Some((json, saved_ms)) = persist::load_timers(&conn)? {
            match serde_json::from_str::<engine::Timers>(&json) {
                Ok(t) => {
                    tracing::info!(alerts = t.instances.len(), "alert: timers from before the restart");
                    engine.restore_timers(t, saved_ms);
                }
                Err(e) => {
                    tracing::error!(error = %e, "alert: the saved timers could not be read; pending alerts start over")
                }
            }
        }
        engine.restore(open);
        let mut windows = configured.clone();
        windows.extend(maintenance::load(&conn, tierwatch_protocol::now_ms())?);
        engine.set_windows(windows);
        let conn = Arc::new(Mutex::new(conn));
        Ok(Alerting {
            locale: engine.locale(),
            engine: Mutex::new(engine),
            outbox: notify::worker::Outbox { conn: conn.clone(), queued: Arc::new(Notify::new()) },
            conn,
            receivers,
            configured,
            trigger: Notify::new(),
            per_node: Default::default(),
        })
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The incidents currently open.
    pub fn open(&self) -> Vec<IncidentView> {
        self.engine().open_incidents().cloned().collect()
    }

    /// Firing alerts per node they are about, open or muted, grouped or
    /// not, as of the last evaluation: a copy the runner publishes, so
    /// `/metrics` never waits on the engine.
    pub fn alerts_per_node(&self) -> Arc<std::collections::HashMap<String, usize>> {
        self.per_node.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes [`Alerting::alerts_per_node`] from the engine.
    fn publish_per_node(&self, e: &Engine) {
        let mut seen = std::collections::HashSet::new();
        let mut per = std::collections::HashMap::new();
        for v in e.open_incidents().chain(e.muted_incidents()) {
            for a in &v.alerts {
                if seen.insert((a.rule.as_str(), a.subject.as_str(), &a.labels)) {
                    *per.entry(a.subject.clone()).or_insert(0) += 1;
                }
            }
        }
        *self.per_node.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(per);
    }

    /// Undelivered notifications per receiver (every receiver listed).
    pub fn queued(&self) -> rusqlite::Result<Vec<(String, u64)>> {
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = notify::outbox::queued(&c)?;
        for r in &self.receivers {
            if !n.iter().any(|(name, _)| *name == r.name) {
                n.push((r.name.clone(), 0));
            }
        }
        Ok(n)
    }

    /// The incidents a maintenance window keeps from paging.
    pub fn muted(&self) -> Vec<IncidentView> {
        self.engine().muted_incidents().cloned().collect()
    }

    /// Every maintenance window not yet over at `now_ms`.
    pub fn windows(&self, now_ms: i64) -> Vec<Window> {
        self.engine().windows().iter().filter(|w| w.ends_ms > now_ms).cloned().collect()
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Stores a window set through the API; it applies from the next evaluation.
    pub async fn add_window(&self, w: Window) -> Result<(), String> {
        let stored = w.clone();
        self.db(move |c| maintenance::insert(c, &stored)).await?;
        tracing::info!(window = %w.id, reason = %w.reason, by = w.by.as_deref().unwrap_or(""), "maintenance window set");
        let mut e = self.engine();
        let mut windows = e.windows().to_vec();
        windows.push(w);
        e.set_windows(windows);
        Ok(())
    }

    /// Ends a window set through the API now; false if there is none by that id.
    pub async fn delete_window(&self, id: &str) -> Result<bool, String> {
        if self.configured.iter().any(|w| w.id == id) {
            return Err(format!("{id} is set in collector.yaml; remove it there"));
        }
        let owned = id.to_string();
        let found = self.db(move |c| maintenance::delete(c, &owned)).await?;
        if found {
            tracing::info!(window = %id, "maintenance window removed");
            let mut e = self.engine();
            let windows = e.windows().iter().filter(|w| w.id != id).cloned().collect();
            e.set_windows(windows);
        }
        Ok(found)
    }

    /// Acknowledges the open incident `key`: recorded, notified, no more repeats.
    pub async fn acknowledge(&self, key: &str, ack: Ack) -> Result<Option<IncidentView>, String> {
        let Some(change) = self.engine().acknowledge(key, ack) else {
            return Ok(None);
        };
        let view = change.view().clone();
        tracing::info!(incident = %key, by = %view.ack.as_ref().map(|a| a.by.as_str()).unwrap_or(""), "incident acknowledged");
        let receivers = self.receivers.clone();
        let now = tierwatch_protocol::now_ms();
        let queued = self.db(move |c| persist::record(c, &[change], &receivers, now)).await?;
        if queued > 0 {
            self.outbox.queued.notify_waiters();
        }
        Ok(Some(view))
    }

    /// The newest `limit` history entries.
    pub async fn history(&self, limit: usize) -> Result<Vec<persist::HistoryEntry>, String> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(|p| p.into_inner());
            persist::history(&c, limit).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// The pause after an evaluation, in multiples of its duration.
const EVALUATION_PACE: u32 = 9;

/// The shortest pause after an evaluation. What an evaluation costs beyond
/// the nodes that pushed (every node's heartbeat and silence, a look at
/// each node's store version) then runs at most ten times a second however
/// many batches arrive, for at most a tenth of a second more before a page.
const EVALUATION_GAP: Duration = Duration::from_millis(100);

/// Evaluates until `token` is cancelled.
pub async fn run(alerting: Arc<Alerting>, store: Arc<Store>, metrics: Metrics, token: CancellationToken) {
    let mut next_repeat_check = 0;
    // When each Alertmanager receiver last had its open incidents queued again.
    let mut resent: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut timers = TimerSaver::default();
    // After each evaluation: the pause before the next may start.
    let mut pause = Duration::ZERO;
    loop {
        // Evaluations follow stored batches as closely as they can, but
        // under national load (hundreds of batches a second) at most a
        // tenth of the time: the rest of the core is ingest's.
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = token.cancelled() => {
                    timers.save(&alerting, tierwatch_protocol::now_ms(), true).await;
                    return;
                }
            }
        }
        tokio::select! {
            _ = alerting.trigger.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = token.cancelled() => {
                timers.save(&alerting, tierwatch_protocol::now_ms(), true).await;
                return;
            }
        }
        let now = tierwatch_protocol::now_ms();
        let started = std::time::Instant::now();
        // CPU work over every node: on a blocking thread, not the runtime's.
        let (a, st) = (alerting.clone(), store.clone());
        let evaluated = tokio::task::spawn_blocking(move || {
            let mut e = a.engine();
            let changes = e.evaluate(&st, now);
            a.publish_per_node(&e);
            (changes, e.open_incidents().count())
        })
        .await;
        let took = started.elapsed();
        metrics.alert_evaluation_seconds.observe(took.as_secs_f64());
        pause = took.saturating_mul(EVALUATION_PACE).max(EVALUATION_GAP);
        let (changes, open) = match evaluated {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "alert: evaluation failed");
                continue;
            }
        };
        metrics.incidents_open.set(open as i64);
        if changes.is_empty() {
            timers.save(&alerting, now, false).await;
            if open > 0 && now >= next_repeat_check {
                next_repeat_check = now + 1000;
                let views = alerting.open();
                let receivers = alerting.receivers.clone();
                let due = resends_due(&alerting.receivers, &resent, now);
                let queue = move |c: &mut Connection| {
                    let repeats = notify::outbox::enqueue_repeats(c, &receivers, &views, now)?;
                    Ok((repeats, notify::outbox::enqueue_resends(c, &due, &views, now)?))
                };
                match alerting.db(queue).await {
                    Ok((repeats, resends)) => {
                        // Marked only once queued: one skipped for a busy
                        // outbox is tried again at the next evaluation.
                        for name in &resends {
                            resent.insert(name.clone(), now);
                        }
                        if repeats > 0 || !resends.is_empty() {
                            alerting.outbox.queued.notify_waiters();
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "alert: queueing repeats failed"),
                }
            }
            continue;
        }
        for c in &changes {
            match c {
                Change::Opened(v) => {
                    metrics.incident("opened");
                    tracing::warn!(incident = %v.key, severity = v.severity.as_str(), affected = v.affected.len(), summary = %v.summary, "incident opened");
                }
                Change::Updated(v) => {
                    metrics.incident("updated");
                    tracing::info!(incident = %v.key, affected = v.affected.len(), summary = %v.summary, "incident updated");
                }
                Change::Resolved { incident, .. } => {
                    metrics.incident("resolved");
                    tracing::info!(incident = %incident.key, summary = %incident.summary, "incident resolved");
                }
                Change::Acknowledged(_) => {}
                Change::Muted(v) => {
                    tracing::info!(incident = %v.key, window = v.muted.as_deref().unwrap_or(""), summary = %v.summary, "incident muted by a maintenance window");
                }
                Change::MutedResolved { incident, .. } => {
                    tracing::info!(incident = %incident.key, "muted incident over");
                }
            }
        }
        let conn = alerting.conn.clone();
        let receivers = alerting.receivers.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            persist::record(&mut c, &changes, &receivers, now)
        })
        .await;
        match saved {
            Ok(Ok(queued)) => {
                if queued > 0 {
                    alerting.outbox.queued.notify_waiters();
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "alert: recording incidents failed"),
            Err(e) => tracing::error!(error = %e, "alert: recording task failed"),
        }
        // After the changes: the history and outbox follow the engine's
        // open incidents by one write, not two.
        timers.save(&alerting, now, false).await;
    }
}

/// Saves the engine's timers when they changed, at most once a second
/// (and at the stop), so a restart keeps pending `for` and flap timers.
#[derive(Default)]
struct TimerSaver {
    last: String,
    saved_ms: i64,
}

impl TimerSaver {
    async fn save(&mut self, alerting: &Alerting, now_ms: i64, stopping: bool) {
        if !stopping && now_ms - self.saved_ms < 1000 {
            return;
        }
        let json = match serde_json::to_string(&alerting.engine().timers()) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "alert: timers not saved");
                return;
            }
        };
        if json == self.last {
            return;
        }
        self.saved_ms = now_ms;
        let state = json.clone();
        match alerting.db(move |c| persist::save_timers(c, &state, now_ms)).await {
            Ok(()) => self.last = json,
            Err(e) => tracing::error!(error = %e, "alert: saving timers failed"),
        }
    }
}

/// The Alertmanager receivers whose `resend` is up at `now_ms` (each at
/// once after a start).
fn resends_due(
    receivers: &[notify::Receiver],
    resent: &std::collections::HashMap<String, i64>,
    now_ms: i64,
) -> Vec<notify::Receiver> {
    receivers
        .iter()
        .filter(|r| {
            let notify::Kind::Alertmanager(am) = &r.kind else { return false };
            resent.get(&r.name).is_none_or(|last| now_ms - last >= am.resend.as_millis() as i64)
        })
        .cloned()
        .collect()
}

/// Starts one worker per receiver, draining its outbox until `token` is cancelled.
pub fn spawn_notifiers(
    alerting: &Arc<Alerting>,
    metrics: &Metrics,
    token: &CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    notify::worker::spawn(&alerting.outbox, &alerting.receivers, alerting.locale, metrics, token, tracker);
}
