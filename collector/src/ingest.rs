//! The mTLS ingest listener (`:7443`): TLS handshake with a required client
//! certificate, then HTTP/1.1 `POST /api/v1/push` carrying one batch.
//! Every refusal answers with a status and a plain-text reason, and is logged
//! with the peer address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message;
use tierwatch_protocol::wire::WireRejection;
use tierwatch_protocol::{validate, Ack, Batch, Limits, NodeId, PUSH_PATH};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ledger::{Job, Ledger, Outcome};
use crate::metrics::{BatchResult, Metrics};
use crate::remote_write::proto;
use crate::store::Store;
use crate::tls::{peer_node_id, IdentityError};

/// What the ingest path needs, shared by all connections.
pub struct Ingest {
    pub store: Arc<Store>,
    /// Woken after each stored batch, so alerts need not wait for a tick.
    pub alerting: Option<Arc<crate::alert::Alerting>>,
    pub ledger: Ledger,
    /// Whether accepted batches are converted for remote_write.
    pub remote_write: bool,
    pub metrics: Metrics,
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub handshake_timeout: Duration,
    /// The collector's own security detections.
    pub detect: crate::detect::Detector,
}

/// Accepts connections until `token` is cancelled; each connection is a task on `tracker`.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ingest: Arc<Ingest>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed on ingest listener");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = token.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(connection(stream, peer, acceptor.clone(), ingest.clone(), token.clone()));
    }
}

struct ConnGauge(Metrics);
impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.0.ingest_connections.dec();
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ingest: Arc<Ingest>,
    token: CancellationToken,
) {
    ingest.metrics.ingest_connections.inc();
    let _gauge = ConnGauge(ingest.metrics.clone());
    let tls = match tokio::time::timeout(ingest.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            ingest.metrics.tls_handshake_failures.inc();
            tracing::warn!(peer = %peer, error = %e, "TLS handshake refused");
            ingest.detect.tls_failure(peer.ip(), &e.to_string(), tierwatch_protocol::now_ms());
            return;
        }
        Err(_) => {
            ingest.metrics.tls_handshake_failures.inc();
            tracing::warn!(peer = %peer, timeout_ms = ingest.handshake_timeout.as_millis() as u64, "TLS handshake timed out");
            ingest.detect.tls_failure(peer.ip(), "handshake timed out", tierwatch_protocol::now_ms());
            return;
        }
    };
    let identity = peer_node_id(tls.get_ref().1.peer_certificates());
    let svc_ingest = ingest.clone();
    let service = hyper::service::service_fn(move |req| {
        let ingest = svc_ingest.clone();
        let identity = identity.clone();
        async move { Ok::<_, Infallible>(handle(req, &ingest, peer, identity).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "ingest connection ended with an error");
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}

fn refuse(status: StatusCode, reason: String) -> Response<Full<Bytes>> {
    reply(status, reason + "\n", "text/plain; charset=utf-8")
}

async fn handle(
    req: Request<Incoming>,
    ingest: &Ingest,
    peer: SocketAddr,
    identity: Result<NodeId, IdentityError>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (result, response) = process(req, ingest, peer, identity).await;
    if let Some(result) = result {
        ingest.metrics.batch(result);
        ingest.metrics.ingest_seconds.observe(started.elapsed().as_secs_f64());
    }
    response
}

async fn process(
    req: Request<Incoming>,
    ingest: &Ingest,
    peer: SocketAddr,
    identity: Result<NodeId, IdentityError>,
) -> (Option<BatchResult>, Response<Full<Bytes>>) {
    if req.uri().path() != PUSH_PATH {
        return (None, refuse(StatusCode::NOT_FOUND, format!("not found: batches go to POST {PUSH_PATH}")));
    }
    if req.method() != Method::POST {
        return (None, refuse(StatusCode::METHOD_NOT_ALLOWED, format!("{PUSH_PATH} takes POST")));
    }
    let node = match identity {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(peer = %peer, reason = %e, "push refused: certificate names no node");
            return (Some(BatchResult::Forbidden), refuse(StatusCode::FORBIDDEN, e.to_string()));
        }
    };
    if ingest.store.topology().get(&node).is_none() {
        tracing::warn!(peer = %peer, node = %node, "push refused: node is not in the topology");
        return (
            Some(BatchResult::UnknownNode),
            refuse(StatusCode::FORBIDDEN, format!("node {:?} is not in topology.yaml", node.as_str())),
        );
    }
    let sent_ms = req
        .headers()
        .get(tierwatch_protocol::SENT_AT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let declared =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared.filter(|&l| l > ingest.max_body_bytes) {
        tracing::warn!(peer = %peer, node = %node, bytes = len, limit = ingest.max_body_bytes, "push refused: body too large");
        return (Some(BatchResult::TooLarge), too_large(len, ingest.max_body_bytes));
    }
    let body = match Limited::new(req.into_body(), ingest.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            tracing::warn!(peer = %peer, node = %node, limit = ingest.max_body_bytes, "push refused: body too large");
            return (Some(BatchResult::TooLarge), too_large(ingest.max_body_bytes + 1, ingest.max_body_bytes));
        }
        Err(e) => {
            tracing::warn!(peer = %peer, node = %node, error = %e, "push refused: body could not be read");
            return (Some(BatchResult::Malformed), refuse(StatusCode::BAD_REQUEST, format!("reading body: {e}")));
        }
    };
    let mut batch = match Batch::decode(body) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(peer = %peer, node = %node, error = %e, "push refused: malformed batch");
            return (Some(BatchResult::Malformed), refuse(StatusCode::BAD_REQUEST, format!("malformed batch: {e}")));
        }
    };
    if batch.node_id != node.as_str() {
        tracing::warn!(peer = %peer, node = %node, claimed = %batch.node_id, "push refused: certificate and batch name different nodes");
        ingest.detect.impersonation(&node, &batch.node_id, peer.ip(), tierwatch_protocol::now_ms());
        return (
            Some(BatchResult::Forbidden),
            refuse(
                StatusCode::FORBIDDEN,
                format!("certificate is for node {:?} but the batch claims node {:?}", node.as_str(), batch.node_id),
            ),
        );
    }
    let now = tierwatch_protocol::now_ms();
    let report = match validate::validate(&mut batch, now, &ingest.limits) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(peer = %peer, node = %node, reason = %e, "push refused: invalid batch");
            return (Some(BatchResult::Invalid), refuse(StatusCode::BAD_REQUEST, format!("invalid batch: {e}")));
        }
    };
    let sequence = batch.sequence;
    let write = if ingest.remote_write {
        ingest.store.topology().get(&node).map(|n| {
            let (req, samples) = proto::from_batch(&batch, &n.identity_labels());
            (req.encode_to_vec(), samples)
        })
    } else {
        None
    };
    let job = Job {
        node: node.clone(),
        boot: batch.boot_id.clone(),
        sequence,
        created_ms: batch.created_ms,
        write,
        events: batch.events.clone(),
    };
    let outcome = match ingest.ledger.record(job).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(node = %node, sequence, error = %e, "push not stored: state database unavailable");
            return (
                Some(BatchResult::Unavailable),
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("collector cannot store batches now ({e}); retry later"),
                ),
            );
        }
    };
    let boot = tierwatch_protocol::ids::hex(&batch.boot_id);
    let created_ms = batch.created_ms;
    if outcome == Outcome::Duplicate {
        tracing::debug!(node = %node, boot_id = %boot, sequence, created_ms, "duplicate batch acknowledged, not stored again");
        let ack = Ack { sequence, duplicate: true, ..Default::default() };
        return (Some(BatchResult::Duplicate), reply(StatusCode::OK, ack.encode_to_vec(), "application/x-protobuf"));
    }
    ingest.detect.batch(&node, &batch, sent_ms, now);
    ingest.store.ingest(&node, batch, now);
    if let Some(a) = &ingest.alerting {
        a.trigger.notify_one();
    }
    ingest.metrics.samples_accepted.inc_by(report.accepted_points as u64);
    ingest.metrics.samples_rejected.inc_by(report.rejected.len() as u64);
    ingest.metrics.events_accepted.inc_by(report.accepted_events as u64);
    if let Some(first) = report.rejected.first() {
        tracing::warn!(node = %node, sequence, rejected = report.rejected.len(), first = %first, "samples refused from an accepted batch");
    }
    tracing::debug!(node = %node, boot_id = %boot, sequence, created_ms, points = report.accepted_points, "batch stored");
    let ack = Ack {
        sequence,
        accepted_points: report.accepted_points as u32,
        accepted_events: report.accepted_events as u32,
        rejected: report.rejected.iter().map(|r| WireRejection { reason: r.to_string() }).collect(),
        duplicate: false,
    };
    (Some(BatchResult::Accepted), reply(StatusCode::OK, ack.encode_to_vec(), "application/x-protobuf"))
}

fn too_large(len: usize, limit: usize) -> Response<Full<Bytes>> {
    refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("body of {len} bytes exceeds ingest.max_body_bytes = {limit}"))
}
