//! Wiring of a running agent: scheduler -> batcher -> outbox -> pusher, plus
//! the local health endpoint. Each task has one owner and stops on the token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batcher::{self, Stamp};
use crate::config::{Config, ProbeKind};
use crate::health::{self, Health};
use crate::metrics::{Metrics, PushResult};
use crate::outbox::Outbox;
use crate::probe::Icmp;
use crate::push::{PushError, Pusher};

/// How long queued batches get to reach the collector on shutdown.
pub const FINAL_PUSH_GRACE: Duration = Duration::from_secs(5);

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TLS: {0}")]
    Tls(#[from] tierwatch_runtime::tls::TlsError),
    #[error("binding the health endpoint on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running agent.
pub struct Running {
    /// Where the health endpoint listens, if enabled.
    pub health_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the agent has stopped (after its token was cancelled).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Starts every task of the agent; returns once the health endpoint is bound.
pub async fn start(config: Config, token: CancellationToken) -> Result<Running, StartError> {
    let tls = crate::push::client_config(&config)?;
    let metrics = Metrics::new()?;
    let outbox = Arc::new(Outbox::new(config.max_queued_batches));
    let needs_icmp = config.targets.iter().any(|t| t.kind() == ProbeKind::Icmp);
    let icmp = if needs_icmp { Icmp::open() } else { Icmp::Unavailable("no ICMP targets configured".into()) };
    let icmp_state = match &icmp {
        Icmp::Ready(e) => e.kind().as_str().to_string(),
        Icmp::Unavailable(why) => {
            if needs_icmp {
                tracing::error!(node = %config.node, error = %why, "ICMP probes cannot run");
            }
            format!("unavailable: {why}")
        }
    };

    let tracker = TaskTracker::new();
    let health_addr = match config.health {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
            let bound = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
            let state = Arc::new(Health {
                node: config.node.to_string(),
                icmp: icmp_state,
                metrics: metrics.clone(),
                outbox: outbox.clone(),
            });
            let t = token.clone();
            tracker.spawn(async move {
                let server = axum::serve(listener, health::router(state)).with_graceful_shutdown(t.cancelled_owned());
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "health endpoint failed");
                }
            });
            Some(bound)
        }
    };

    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    // Probes stop on `probe_token`; the batcher and pusher outlive them to deliver their data.
    let probe_token = token.child_token();
    let probes = TaskTracker::new();
    if let Some(spec) = &config.node_health {
        crate::scheduler::spawn_node_health(spec, tx.clone(), &probe_token, &probes);
    }
    crate::scheduler::spawn(&config.targets, icmp, tx, &probe_token, &probes);
    probes.close();

    let mut boot_id = [0u8; 16];
    rand::thread_rng().fill(&mut boot_id);
    let stamp = Stamp { node_id: config.node.to_string(), boot_id, config_hash: config.hash };
    let batcher_token = CancellationToken::new();
    let batcher = tokio::spawn(batcher::run(
        stamp,
        config.push_interval,
        rx,
        outbox.clone(),
        metrics.clone(),
        batcher_token.clone(),
    ));
    let pusher_token = CancellationToken::new();
    let pusher =
        tokio::spawn(push_loop(Pusher::new(&config, tls), outbox.clone(), metrics.clone(), pusher_token.clone()));

    tracing::info!(
        node = %config.node,
        targets = config.targets.len(),
        collector = %config.endpoints[0].url,
        health = ?health_addr,
        "agent running"
    );
    let task = tokio::spawn(async move {
        token.cancelled().await;
        // Order matters: probes finish their rounds, the batcher seals the
        // rest, the pusher delivers what it can within the grace period.
        probes.wait().await;
        batcher_token.cancel();
        let _ = batcher.await;
        let deadline = tokio::time::Instant::now() + FINAL_PUSH_GRACE;
        while !outbox.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pusher_token.cancel();
        let _ = pusher.await;
        tierwatch_runtime::shutdown::drain(&tracker, Duration::from_secs(2)).await;
        if !outbox.is_empty() {
            tracing::warn!(batches = outbox.len(), "stopped with batches not delivered");
        }
        tracing::info!("agent stopped");
    });
    Ok(Running { health_addr, task })
}

/// Delivers the outbox oldest first; backs off with jitter while the collector is unreachable.
async fn push_loop(mut pusher: Pusher, outbox: Arc<Outbox>, metrics: Metrics, token: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    const MAX_BACKOFF: Duration = Duration::from_secs(60);
    loop {
        let Some(batch) = outbox.front() else {
            tokio::select! {
                _ = outbox.ready.notified() => continue,
                _ = token.cancelled() => return,
            }
        };
        let result = tokio::select! {
            r = pusher.push(batch.body.clone()) => r,
            _ = token.cancelled() => return,
        };
        match result {
            Ok(ack) => {
                outbox.remove(batch.sequence);
                metrics.push(PushResult::Ok);
                metrics.last_push_success.set(tierwatch_protocol::now_ms() as f64 / 1000.0);
                if !ack.rejected.is_empty() {
                    tracing::warn!(sequence = batch.sequence, rejected = ack.rejected.len(), first = %ack.rejected[0].reason, "collector refused some samples");
                }
                backoff = Duration::from_millis(500);
            }
            Err(PushError::Refused { endpoint, status, reason }) => {
                outbox.remove(batch.sequence);
                metrics.push(PushResult::Refused);
                metrics.dropped_batches.inc();
                tracing::error!(sequence = batch.sequence, endpoint = %endpoint, status = status.as_u16(), reason = %reason, "collector refused the batch; dropped");
            }
            Err(e @ PushError::Transient { .. }) => {
                metrics.push(PushResult::Failed);
                let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
                tracing::warn!(sequence = batch.sequence, error = %e, retry_in_ms = wait.as_millis() as u64, "push failed");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = token.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        metrics.queued_batches.set(outbox.len() as i64);
    }
}
