//! Wiring of a running agent: scheduler -> batcher -> spool writer -> spool ->
//! one sender per destination, plus the local health endpoint. Each task has one owner and
//! stops on the token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batcher::{self, Stamp};
use crate::config::{Config, SendTo};
use crate::deliver::{self, Destination};
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::probe::{Icmp, ProbeKind, Prober};
use crate::push::Pusher;
use crate::spool::{self, Spool, SpoolError};

/// How long unsent batches get to reach the collector on shutdown; what
/// does not make it stays in the spool for the next start.
pub const FINAL_PUSH_GRACE: Duration = Duration::from_secs(5);

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the health endpoint on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("{0}")]
    Other(String),
}

/// The destinations of `config`: in failover mode one for all endpoints
/// (spool key 0), else one per endpoint (keyed by a hash of its URL, so
/// reordering the list keeps what each has acknowledged).
fn destinations(config: &Config) -> Vec<(u32, String, Vec<crate::push::Endpoint>)> {
    match config.send_to {
        SendTo::Failover => vec![(0, "any".to_string(), config.endpoints.clone())],
        SendTo::All => config.endpoints.iter().map(|e| (ring_key(&e.url), e.url.clone(), vec![e.clone()])).collect(),
    }
}

fn ring_key(url: &str) -> u32 {
    let d = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    let b = d.as_ref();
    // 0 is the failover key and u32::MAX marks drops.
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]).clamp(1, u32::MAX - 1)
}

/// A running agent.
pub struct Running {
    /// Where the health endpoint listens, if enabled.
    pub health_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
    spool: Arc<Spool>,
    status: String,
}

impl Running {
    /// Waits until the agent has stopped (after its token was cancelled).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

impl tierwatch_runtime::service::Instance for Running {
    async fn wait(self) {
        Running::wait(self).await
    }

    fn health_check(&self) -> tierwatch_runtime::service::HealthCheck {
        // Takes the spool's lock: a write stuck on a dead disk holds it.
        let spool = self.spool.clone();
        Arc::new(move || {
            spool.check_lock();
            true
        })
    }

    fn status(&self) -> String {
        self.status.clone()
    }
}

/// Starts every task of the agent; returns once the health endpoint is bound.
pub async fn start(config: Config, token: CancellationToken) -> Result<Running, StartError> {
    let tls = config
        .tls
        .clone()
        .ok_or_else(|| StartError::Other("the configuration was loaded without its TLS material".into()))?;
    let dests = destinations(&config);
    let names: Vec<String> = dests.iter().map(|d| d.1.clone()).collect();
    let metrics = Metrics::new(&names)?;
    let spool_cfg = config.spool.clone();
    let keys = dests.iter().map(|d| d.0).collect();
    let m = metrics.clone();
    let (spool, report) = tokio::task::spawn_blocking(move || Spool::open(spool_cfg, keys, m))
        .await
        .map_err(|e| SpoolError::Dir { dir: config.spool.dir.clone(), source: std::io::Error::other(e) })??;
    let spool = Arc::new(spool);
    tracing::info!(dir = %config.spool.dir.display(), unsent = report.pending, truncated = report.truncated.len(), "spool opened");
    let needs_icmp = config.targets.iter().any(|t| t.kind() == ProbeKind::Icmp);
    let icmp = if needs_icmp {
        Icmp::open(metrics.icmp_stray_replies.clone())
    } else {
        Icmp::Unavailable("no ICMP targets configured".into())
    };
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
                spool: spool.clone(),
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
    let started = |what: &str, r: std::io::Result<std::thread::JoinHandle<()>>| {
        r.map_err(|e| tracing::error!(error = %e, sensor = what, "sensor thread could not start")).ok()
    };
    let lan_sensor = config
        .lan
        .clone()
        .and_then(|spec| started("lan", crate::sensor::spawn_lan(spec, tx.clone(), probe_token.clone())));
    let host_sensor = config
        .host
        .clone()
        .and_then(|spec| started("host", crate::sensor::spawn_host(spec, tx.clone(), probe_token.clone())));
    // Trust roots and CA files are read here, off the runtime, before any
    // probe task runs: a slow disk delays the start, never a probe round.
    // Only the roots: the probers themselves are built here, so their
    // memory comes from the runtime thread's allocator arena.
    let targets = config.targets.clone();
    let roots = tokio::task::spawn_blocking(move || targets.iter().map(Prober::roots_of).collect::<Vec<_>>())
        .await
        .map_err(|e| StartError::Other(format!("loading trust roots: {e}")))?;
    let probers = config.targets.iter().cloned().zip(roots).map(|(t, r)| Prober::with_roots(t, r)).collect();
    crate::scheduler::spawn(probers, icmp, tx, &probe_token, &probes);
    probes.close();

    let mut boot_id = [0u8; 16];
    rand::thread_rng().fill(&mut boot_id);
    let stamp = Stamp {
        node_id: config.node.to_string(),
        boot_id,
        config_hash: config.hash,
        push_interval: config.push_interval,
    };
    // What the last run measured but did not seal is sealed first, then this
    // run's first batch opens its journal.
    let (s, m) = (spool.clone(), metrics.clone());
    let generation = tokio::task::spawn_blocking(move || spool::writer::recover(&s, &m))
        .await
        .map_err(|e| StartError::Other(format!("resealing the last run's open batch: {e}")))?
        .map_err(|source| SpoolError::Dir { dir: config.spool.dir.clone(), source })?;
    let header = batcher::envelope(&stamp, 1).encode_to_vec();
    let boot = tierwatch_protocol::ids::hex(&boot_id);
    let (writer, writer_threads) = spool::writer::start(spool.clone(), generation, header, boot, metrics.clone())
        .map_err(|source| SpoolError::Dir { dir: config.spool.dir.clone(), source })?;
    let batcher_token = CancellationToken::new();
    let batcher = tokio::spawn(batcher::run(
        stamp,
        config.push_interval,
        rx,
        writer,
        spool.clone(),
        metrics.clone(),
        batcher_token.clone(),
    ));
    let senders_token = CancellationToken::new();
    let senders = TaskTracker::new();
    for (index, (_, name, endpoints)) in dests.into_iter().enumerate() {
        let dest = Destination {
            index,
            name,
            pusher: Pusher::new(endpoints, config.server_name.as_deref(), config.push_timeout, tls.clone()),
            push_interval: config.push_interval,
        };
        senders.spawn(deliver::run(
            dest,
            spool.clone(),
            config.replay_bytes_per_second,
            metrics.clone(),
            senders_token.clone(),
        ));
    }
    senders.close();

    let status = format!(
        "probing {} targets, pushing to {}{}",
        config.targets.len(),
        config.endpoints[0].url,
        if config.endpoints.len() > 1 { format!(" (+{} more)", config.endpoints.len() - 1) } else { String::new() }
    );
    tracing::info!(
        node = %config.node,
        targets = config.targets.len(),
        collector = %config.endpoints[0].url,
        send_to = ?config.send_to,
        health = ?health_addr,
        "agent running"
    );
    let spool_handle = spool.clone();
    let task = tokio::spawn(async move {
        token.cancelled().await;
        // Order matters: probes finish their rounds, the batcher seals and
        // spools the rest, the senders deliver what they can within the
        // grace period; the spool keeps the remainder for the next start.
        probes.wait().await;
        for h in [lan_sensor, host_sensor].into_iter().flatten() {
            // Each sees the token within half a second; its last events reach the batcher.
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        batcher_token.cancel();
        let _ = batcher.await;
        // The batcher let go of the writer: it writes what is queued and commits.
        let _ = tokio::task::spawn_blocking(move || writer_threads.finish()).await;
        let deadline = tokio::time::Instant::now() + FINAL_PUSH_GRACE;
        while !spool.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        senders_token.cancel();
        senders.wait().await;
        tierwatch_runtime::shutdown::drain(&tracker, Duration::from_secs(2)).await;
        let s = spool.clone();
        match tokio::task::spawn_blocking(move || s.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "spool: final flush failed"),
            Err(e) => tracing::error!(error = %e, "spool: final flush task failed"),
        }
        if !spool.is_empty() {
            tracing::info!(batches = spool.len(), "stopped; unsent batches stay in the spool");
        }
        tracing::info!("agent stopped");
    });
    Ok(Running { health_addr, task, spool: spool_handle, status })
}
