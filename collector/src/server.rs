//! Wiring: binds the listeners, runs ingest and HTTP until cancelled, drains.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::alert::engine::Engine;
use crate::alert::Alerting;
use crate::config::Config;
use crate::http::{self, Http};
use crate::ingest::{self, Ingest};
use crate::ledger::{Ledger, QueueSpec};
use crate::listen::Gate;
use crate::metrics::Metrics;
use crate::remote_write::queue::QueueState;
use crate::remote_write::sender::Prepared;
use crate::store::Store;

/// How long a push waits for its share of the decode budget before a 503.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// How long in-flight pushes and requests get to finish on shutdown.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Errors starting the collector.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Db(#[from] crate::db::DbError),
    #[error("{0}")]
    RemoteWrite(#[from] crate::remote_write::sender::SenderError),
}

/// A running collector.
pub struct Running {
    /// Where the ingest listener is bound (useful with port 0).
    pub ingest_addr: SocketAddr,
    /// Where the HTTP listener is bound.
    pub http_addr: SocketAddr,
    /// Cancel to shut down.
    pub token: CancellationToken,
    task: JoinHandle<()>,
    /// The state database, for the watchdog's check.
    db: Arc<std::sync::Mutex<rusqlite::Connection>>,
    status: String,
}

impl tierwatch_runtime::service::Instance for Running {
    async fn wait(self) {
        Running::wait(self).await
    }

    fn health_check(&self) -> tierwatch_runtime::service::HealthCheck {
        // The state database answers: it is what a hung collector waits on.
        let db = self.db.clone();
        Arc::new(move || {
            let c = db.lock().unwrap_or_else(|p| p.into_inner());
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).is_ok()
        })
    }

    fn status(&self) -> String {
        self.status.clone()
    }
}

impl Running {
    /// Cancels and waits until every listener and connection has stopped.
    pub async fn shutdown(self) {
        self.token.cancel();
        let _ = self.task.await;
    }

    /// Waits until the collector stops (its token was cancelled elsewhere).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Binds the listeners and starts serving; returns once both are bound and ready.
pub async fn start(config: Config, token: CancellationToken) -> Result<Running, StartError> {
    let tls = config.tls.clone();
    let remote_names: Vec<String> = config.remote_write.iter().map(|r| r.name.clone()).collect();
    let metrics = Metrics::new(&remote_names)?;
    let store = Arc::new(Store::new(Arc::new(config.topology.clone()), config.stale_after));
    let queues: Vec<QueueSpec> = config
        .remote_write
        .iter()
        .map(|r| QueueSpec {
            name: r.name.clone(),
            max_bytes: r.max_queue_bytes,
            state: Arc::new(QueueState::default()),
        })
        .collect();
    let mut senders = Vec::new();
    for r in &config.remote_write {
        senders.push(Prepared::new(r.clone())?);
    }
    let (state_dir, q, max_age, m) =
        (config.state_dir.clone(), queues.clone(), config.ingest.limits.max_age_ms, metrics.clone());
    let events_per_node = config.ingest.quotas.security_events_per_node;
    let (ledger, ledger_thread) =
        tokio::task::spawn_blocking(move || Ledger::open(&state_dir, q, max_age, events_per_node, m)).await.map_err(
            |e| crate::db::DbError::Dir { dir: config.state_dir.clone(), source: std::io::Error::other(e) },
        )??;
    // Each sender reads and trims its queue on its own connection (WAL lets it run beside the ledger).
    let mut sender_conns = Vec::new();
    for _ in &senders {
        let dir = config.state_dir.clone();
        sender_conns.push(tokio::task::spawn_blocking(move || crate::db::open(&dir)).await.map_err(|e| {
            crate::db::DbError::Dir { dir: config.state_dir.clone(), source: std::io::Error::other(e) }
        })??);
    }

    // The security event list of the API reads on its own connection; the
    // counters continue from what is stored.
    let dir = config.state_dir.clone();
    let security_db = tokio::task::spawn_blocking(move || -> Result<_, crate::db::DbError> {
        let conn = crate::db::open(&dir)?;
        let counts = crate::security::counts(&conn)
            .map_err(|source| crate::db::DbError::Sqlite { file: dir.join(crate::db::FILE), source })?;
        Ok((conn, counts))
    })
    .await
    .map_err(|e| crate::db::DbError::Dir { dir: config.state_dir.clone(), source: std::io::Error::other(e) })??;
    store.seed_security_counts(security_db.1);
    let security_db = Arc::new(std::sync::Mutex::new(security_db.0));

    let ingest_listener = TcpListener::bind(config.ingest.listen).await.map_err(|source| StartError::Bind {
        what: "ingest",
        addr: config.ingest.listen,
        source,
    })?;
    let http_listener = TcpListener::bind(config.http.listen).await.map_err(|source| StartError::Bind {
        what: "http",
        addr: config.http.listen,
        source,
    })?;
    let ingest_addr = ingest_listener.local_addr().map_err(|source| StartError::Bind {
        what: "ingest",
        addr: config.ingest.listen,
        source,
    })?;
    let http_addr = http_listener.local_addr().map_err(|source| StartError::Bind {
        what: "http",
        addr: config.http.listen,
        source,
    })?;

    let alerting = if config.rules.rules.is_empty() {
        None
    } else {
        let dir = config.state_dir.clone();
        let conn = tokio::task::spawn_blocking(move || crate::db::open(&dir)).await.map_err(|e| {
            crate::db::DbError::Dir { dir: config.state_dir.clone(), source: std::io::Error::other(e) }
        })??;
        let engine = Engine::new(config.rules.clone(), Arc::new(config.topology.clone()), tierwatch_protocol::now_ms());
        let a = Alerting::new(engine, conn, config.receivers.clone(), config.maintenance.clone())
            .map_err(|source| crate::db::DbError::Sqlite { file: config.state_dir.join(crate::db::FILE), source })?;
        Some(Arc::new(a))
    };
    let ingest = Arc::new(Ingest {
        store: store.clone(),
        alerting: alerting.clone(),
        ledger: ledger.clone(),
        remote_write: !queues.is_empty(),
        metrics: metrics.clone(),
        limits: config.ingest.limits.clone(),
        max_body_bytes: config.ingest.max_body_bytes,
        handshake_timeout: config.ingest.handshake_timeout,
        request_timeout: config.ingest.request_timeout,
        detect: crate::detect::Detector::new(ledger.clone(), store.clone()),
        admission: Admission::new(config.ingest.decode_budget_bytes, BUDGET_WAIT, config.ingest.quotas.clone()),
        gate: Gate::new(config.ingest_connections.clone()),
        refusal_logs: Default::default(),
    });
    let http_state = Arc::new(Http {
        store: store.clone(),
        alerting: alerting.clone(),
        metrics: metrics.clone(),
        node_down_after: config.node_down_after,
        ready: Default::default(),
        queues: queues.clone(),
        api_token: config.api_token.clone(),
        protect_security_events: config.protect_security_events,
        security_db: security_db.clone(),
        locale: config.locale,
        request_timeout: config.http.request_timeout,
    });

    let tracker = TaskTracker::new();
    let senders_token = CancellationToken::new();
    let sender_tasks = TaskTracker::new();
    for ((prepared, conn), q) in senders.into_iter().zip(sender_conns).zip(&queues) {
        sender_tasks.spawn(crate::remote_write::sender::run(
            prepared,
            conn,
            q.state.clone(),
            metrics.clone(),
            senders_token.clone(),
        ));
    }
    sender_tasks.close();
    // Stale series leave memory on the store's own timer, not when read.
    let every = (config.stale_after / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
    tracker.spawn(crate::store::expire(store.clone(), every, token.clone()));
    if let Some(a) = &alerting {
        tracker.spawn(crate::alert::run(a.clone(), store.clone(), metrics.clone(), token.clone()));
        crate::alert::spawn_notifiers(a, &metrics, &token, &tracker);
    }
    tracker.spawn(ingest::serve(ingest_listener, TlsAcceptor::from(tls), ingest, token.clone(), tracker.clone()));
    tracker.spawn(http::serve(
        http_listener,
        http_state.clone(),
        Gate::new(config.http_connections.clone()),
        config.http.request_timeout,
        token.clone(),
        tracker.clone(),
    ));
    if config.api_token.is_none() {
        tracing::warn!("no api.token_file: acknowledgements and maintenance windows cannot be changed through the API");
    }
    http_state.ready.store(true, Ordering::Release);
    tracing::info!(
        ingest = %ingest_addr,
        http = %http_addr,
        nodes = config.topology.nodes().len(),
        rules = config.rules.rules.len(),
        "collector ready"
    );
    let wait_token = token.clone();
    let task = tokio::spawn(async move {
        wait_token.cancelled().await;
        // Pushes in flight finish (and commit) first; then the ledger closes
        // the database, and the senders stop with their queues kept on disk.
        tierwatch_runtime::shutdown::drain(&tracker, DRAIN_GRACE).await;
        let joined = tokio::task::spawn_blocking(move || ledger_thread.join());
        if tokio::time::timeout(Duration::from_secs(5), joined).await.is_err() {
            tracing::warn!("ledger still busy at shutdown; its last commit is durable or was never acknowledged");
        }
        senders_token.cancel();
        sender_tasks.wait().await;
        tracing::info!("collector stopped");
    });
    let status = format!(
        "{} nodes, ingest on {ingest_addr}, HTTP on {http_addr}, {} rules",
        config.topology.nodes().len(),
        config.rules.rules.len()
    );
    Ok(Running { ingest_addr, http_addr, token, task, db: security_db, status })
}
