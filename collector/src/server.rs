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

use crate::config::Config;
use crate::http::{self, Http};
use crate::ingest::{self, Ingest};
use crate::metrics::Metrics;
use crate::store::Store;

/// How long in-flight pushes and requests get to finish on shutdown.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Errors starting the collector.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TLS: {0}")]
    Tls(#[from] tierwatch_runtime::tls::TlsError),
    #[error("binding {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
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
    let tls = crate::tls::server_config(&config.ingest.ca, &config.ingest.cert, &config.ingest.key)?;
    let metrics = Metrics::new()?;
    let store = Arc::new(Store::new(Arc::new(config.topology.clone())));

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

    let ingest = Arc::new(Ingest {
        store: store.clone(),
        metrics: metrics.clone(),
        limits: config.ingest.limits.clone(),
        max_body_bytes: config.ingest.max_body_bytes,
        handshake_timeout: config.ingest.handshake_timeout,
    });
    let http_state = Arc::new(Http {
        store,
        metrics,
        stale_after: config.stale_after,
        node_down_after: config.node_down_after,
        ready: Default::default(),
    });

    let tracker = TaskTracker::new();
    tracker.spawn(ingest::serve(ingest_listener, TlsAcceptor::from(tls), ingest, token.clone(), tracker.clone()));
    let router = http::router(http_state.clone());
    let http_token = token.clone();
    tracker.spawn(async move {
        let server = axum::serve(http_listener, router).with_graceful_shutdown(http_token.cancelled_owned());
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    });
    http_state.ready.store(true, Ordering::Release);
    tracing::info!(
        ingest = %ingest_addr,
        http = %http_addr,
        nodes = config.topology.nodes().len(),
        "collector ready"
    );
    let wait_token = token.clone();
    let task = tokio::spawn(async move {
        wait_token.cancelled().await;
        tierwatch_runtime::shutdown::drain(&tracker, DRAIN_GRACE).await;
        tracing::info!("collector stopped");
    });
    Ok(Running { ingest_addr, http_addr, token, task })
}
