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
use prost::Message;
use tierwatch_protocol::validate::{Location, Rejection};
use tierwatch_protocol::wire::WireRejection;
use tierwatch_protocol::{validate, Ack, Batch, Limits, NodeId, Shape, ShapeError, PUSH_PATH};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Exhausted, OverRate};
use crate::ledger::{Job, Ledger, Outcome};
use crate::listen::{Ended, Gate, Throttle, Ticket};
use crate::metrics::{BatchResult, Metrics};
use crate::remote_write::proto;
use crate::store::Store;
use crate::tls::{peer_node_id, IdentityError};

/// What the ingest path needs, shared by all connections.
pub(crate) struct Ingest {
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
    /// Time for a push's body to arrive.
    pub request_timeout: Duration,
    /// The collector's own security detections.
    pub detect: crate::detect::Detector,
    /// One push per node at a time; the decode budget.
    pub admission: Admission,
    /// Connection caps of the listener.
    pub gate: Arc<Gate>,
    /// Log lines of refusals, throttled.
    pub refusal_logs: RefusalLogs,
}

/// Accepts connections until `token` is cancelled; each connection is a task on `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ingest: Arc<Ingest>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let (gate, metrics) = (ingest.gate.clone(), ingest.metrics.clone());
    let conn_token = token.clone();
    let handle = move |stream, peer, ticket| {
        connection(stream, peer, ticket, acceptor.clone(), ingest.clone(), conn_token.clone())
    };
    let refused = move |why| metrics.connection_refused("ingest", why);
    crate::listen::accept("ingest", listener, gate, refused, handle, token, tracker).await;
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
    _ticket: Ticket,
    acceptor: TlsAcceptor,
    ingest: Arc<Ingest>,
    token: CancellationToken,
) {
    ingest.metrics.ingest_connections.inc();
    let _gauge = ConnGauge(ingest.metrics.clone());
    let handshake = tokio::time::timeout(ingest.handshake_timeout, acceptor.accept(stream));
    let (handshake, revoked) = crate::tls::revoked_in(handshake).await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            ingest.metrics.tls_handshake_failures.inc();
            let now = tierwatch_protocol::now_ms();
            // Counted each time, logged at most every ten seconds per node or address.
            if let Some(node) = revoked {
                if let Some(suppressed) = ingest.refusal_logs.allow(node.to_string(), "revoked") {
                    tracing::warn!(peer = %peer, node = %node, suppressed, "TLS handshake refused: the certificate is revoked");
                }
                if ingest.store.topology().get(&node).is_some() {
                    ingest.metrics.node_refusal(node.as_str(), "revoked", 1);
                }
                ingest.detect.revoked(&node, peer.ip(), now);
                return;
            }
            if let Some(suppressed) = ingest.refusal_logs.allow(peer.ip().to_string(), "handshake") {
                tracing::warn!(peer = %peer, error = %e, suppressed, "TLS handshake refused");
            }
            ingest.detect.tls_failure(peer.ip(), &e.to_string(), now);
            return;
        }
        Err(_) => {
            ingest.metrics.tls_handshake_failures.inc();
            if let Some(suppressed) = ingest.refusal_logs.allow(peer.ip().to_string(), "handshake") {
                tracing::warn!(peer = %peer, timeout_ms = ingest.handshake_timeout.as_millis() as u64, suppressed, "TLS handshake timed out");
            }
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
    let ended = crate::listen::serve(tls, service, ingest.gate.limits(), &token).await;
    if let Some(reason) = ended.closed_reason() {
        ingest.metrics.connection_closed("ingest", reason);
        tracing::debug!(peer = %peer, reason, "ingest connection closed");
    } else if let Ended::Error(e) = ended {
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

/// A push refused. [`Refusal::emit`] logs it with the peer and node,
/// counts it in `tierwatch_collector_batches_total`, and answers it: one
/// call, so the log and the counter cannot disagree.
enum Refusal {
    NoIdentity(IdentityError),
    UnknownNode,
    TooLarge { bytes: usize },
    Unreadable(String),
    Malformed(String),
    Impersonation { claimed: String },
    Invalid(String),
    Unavailable { sequence: u64, error: String },
    Busy,
    RateLimited(OverRate),
    Overloaded(Exhausted),
    Timeout { after: Duration },
}

impl Refusal {
    fn emit(self, ingest: &Ingest, peer: SocketAddr, node: Option<&NodeId>) -> Response<Full<Bytes>> {
        let node = node.map(NodeId::as_str).unwrap_or("");
        let limit = ingest.max_body_bytes;
        // (outcome, answer, log message, what else the log line says)
        let (result, response, message, detail) = match self {
            Refusal::NoIdentity(e) => (
                BatchResult::Forbidden,
                refuse(StatusCode::FORBIDDEN, e.to_string()),
                "push refused: certificate names no node",
                e.to_string(),
            ),
            Refusal::UnknownNode => (
                BatchResult::UnknownNode,
                refuse(StatusCode::FORBIDDEN, format!("node {node:?} is not in topology.yaml")),
                "push refused: node is not in the topology",
                String::new(),
            ),
            Refusal::TooLarge { bytes } => (
                BatchResult::TooLarge,
                too_large(bytes, limit),
                "push refused: body too large",
                format!("{bytes} bytes, limit {limit}"),
            ),
            Refusal::Unreadable(e) => (
                BatchResult::Malformed,
                refuse(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
                "push refused: body could not be read",
                e,
            ),
            Refusal::Malformed(e) => (
                BatchResult::Malformed,
                refuse(StatusCode::BAD_REQUEST, format!("malformed batch: {e}")),
                "push refused: malformed batch",
                e,
            ),
            Refusal::Impersonation { claimed } => (
                BatchResult::Forbidden,
                refuse(
                    StatusCode::FORBIDDEN,
                    format!("certificate is for node {node:?} but the batch claims node {claimed:?}"),
                ),
                "push refused: certificate and batch name different nodes",
                format!("claimed {claimed:?}"),
            ),
            Refusal::Invalid(e) => (
                BatchResult::Invalid,
                refuse(StatusCode::BAD_REQUEST, format!("invalid batch: {e}")),
                "push refused: invalid batch",
                e,
            ),
            Refusal::Unavailable { sequence, error } => (
                BatchResult::Unavailable,
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("collector cannot store batches now ({error}); retry later"),
                ),
                "push not stored: state database unavailable",
                format!("sequence {sequence}: {error}"),
            ),
            Refusal::Busy => (
                BatchResult::Busy,
                refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("a push from node {node:?} is already in flight; one at a time"),
                ),
                "push refused: another push of this node is in flight",
                String::new(),
            ),
            Refusal::RateLimited(OverRate { what, rate, retry_after }) => {
                let retry_ms = retry_after.as_millis() as u64;
                let why =
                    format!("node {node:?} is over its rate of {rate} {what}/s (ingest.quotas); retry in {retry_ms} ms");
                let mut r = refuse(StatusCode::TOO_MANY_REQUESTS, why);
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
                    r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
                }
                (BatchResult::RateLimited, r, "push refused: over the node's rate", format!("{rate} {what}/s"))
            }
            Refusal::Overloaded(Exhausted { wanted, budget }) => (
                BatchResult::Overloaded,
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "collector is decoding {budget} bytes of pushes already (ingest.decode_budget_bytes); retry later"
                    ),
                ),
                "push refused: decode budget exhausted",
                format!("wanted {wanted} of {budget} bytes"),
            ),
            Refusal::Timeout { after } => {
                let after_ms = after.as_millis() as u64;
                (
                    BatchResult::Timeout,
                    refuse(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("body not received within ingest.request_timeout ({after_ms} ms)"),
                    ),
                    "push refused: body too slow",
                    format!("after {after_ms} ms"),
                )
            }
        };
        ingest.metrics.batch(result);
        // Only nodes of the topology get a series of their own (bounded).
        if !node.is_empty() && !matches!(result, BatchResult::UnknownNode) {
            ingest.metrics.node_refusal(node, result.as_str(), 1);
        }
        // Every refusal is counted; its log line comes at most every ten
        // seconds per node (or address) and outcome, saying how many were
        // not logged: a node refused in a loop cannot flood the journal.
        let who = if node.is_empty() { peer.ip().to_string() } else { node.to_string() };
        if let Some(suppressed) = ingest.refusal_logs.allow(who, result.as_str()) {
            if result == BatchResult::Unavailable {
                tracing::error!(peer = %peer, node, detail = %detail, suppressed, "{message}");
            } else {
                tracing::warn!(peer = %peer, node, detail = %detail, suppressed, "{message}");
            }
        }
        response
    }
}

/// One [`Throttle`] per (node or address, outcome) of refused pushes.
#[derive(Default)]
pub(crate) struct RefusalLogs(std::sync::Mutex<std::collections::HashMap<(String, &'static str), Throttle>>);

/// Addresses and nodes remembered for log throttling at most; beyond, the map starts over.
const MAX_THROTTLED: usize = 10_000;

impl RefusalLogs {
    pub(crate) fn allow(&self, who: String, outcome: &'static str) -> Option<u64> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_THROTTLED && !m.contains_key(&(who.clone(), outcome)) {
            m.clear();
        }
        m.entry((who, outcome)).or_default().allow(tierwatch_protocol::now_ms().max(0) as u64)
    }
}

async fn handle(
    req: Request<Incoming>,
    ingest: &Ingest,
    peer: SocketAddr,
    identity: Result<NodeId, IdentityError>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (push, response) = process(req, ingest, peer, identity).await;
    if push {
        ingest.metrics.ingest_seconds.observe(started.elapsed().as_secs_f64());
    }
    response
}

async fn process(
    req: Request<Incoming>,
    ingest: &Ingest,
    peer: SocketAddr,
    identity: Result<NodeId, IdentityError>,
) -> (bool, Response<Full<Bytes>>) {
    if req.uri().path() != PUSH_PATH || req.method() != Method::POST {
        // Not a push: counted for a node of the topology, logged (throttled).
        let who = identity.as_ref().map(|n| n.to_string()).unwrap_or_else(|_| peer.ip().to_string());
        if let Ok(n) = &identity {
            if ingest.store.topology().get(n).is_some() {
                ingest.metrics.node_refusal(n.as_str(), "not_a_push", 1);
            }
        }
        if let Some(suppressed) = ingest.refusal_logs.allow(who, "not_a_push") {
            tracing::warn!(peer = %peer, method = %req.method(), path = %req.uri().path().chars().take(100).collect::<String>(), suppressed, "ingest request that is not a push refused");
        }
        if req.uri().path() != PUSH_PATH {
            return (false, refuse(StatusCode::NOT_FOUND, format!("not found: batches go to POST {PUSH_PATH}")));
        }
        return (false, refuse(StatusCode::METHOD_NOT_ALLOWED, format!("{PUSH_PATH} takes POST")));
    }
    let node = match identity {
        Ok(n) => n,
        Err(e) => return (true, Refusal::NoIdentity(e).emit(ingest, peer, None)),
    };
    match push(req, ingest, peer, &node).await {
        Ok(r) => (true, r),
        Err(refusal) => (true, refusal.emit(ingest, peer, Some(&node))),
    }
}

/// One push of `node`: stored (or a duplicate) and acknowledged, or refused.
async fn push(
    req: Request<Incoming>,
    ingest: &Ingest,
    peer: SocketAddr,
    node: &NodeId,
) -> Result<Response<Full<Bytes>>, Refusal> {
    if ingest.store.topology().get(node).is_none() {
        return Err(Refusal::UnknownNode);
    }
    let Some(_slot) = ingest.admission.enter(node) else { return Err(Refusal::Busy) };
    // Only a plausible clock reading: the skew check subtracts it from ours.
    let sent_ms = req
        .headers()
        .get(tierwatch_protocol::SENT_AT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|t| (1..=tierwatch_protocol::validate::MAX_TIMESTAMP_MS).contains(t));
    let declared =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if let Some(bytes) = declared.filter(|&l| l > ingest.max_body_bytes) {
        return Err(Refusal::TooLarge { bytes });
    }
    // The body's bytes are held before it is read: a chunked body counts at the limit.
    let mut held =
        ingest.admission.reserve(declared.unwrap_or(ingest.max_body_bytes)).await.map_err(Refusal::Overloaded)?;
    let read = Limited::new(req.into_body(), ingest.max_body_bytes).collect();
    let body = match tokio::time::timeout(ingest.request_timeout, read).await {
        Err(_) => return Err(Refusal::Timeout { after: ingest.request_timeout }),
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return Err(Refusal::TooLarge { bytes: ingest.max_body_bytes + 1 }),
        Ok(Err(e)) => return Err(Refusal::Unreadable(e.to_string())),
    };
    // The push and its bytes count against the node's rate whatever comes
    // of them: refused pushes in a loop are held back like accepted ones.
    ingest.admission.spend(node, 1, body.len(), 0, Instant::now()).map_err(Refusal::RateLimited)?;
    // Counted on the wire first: what decoding would allocate is known,
    // and a batch over the limits is refused without being materialised.
    let shape = Shape::measure(&body, &ingest.limits).map_err(|e| match e {
        ShapeError::Malformed { .. } => Refusal::Malformed(e.to_string()),
        ShapeError::Over(e) => Refusal::Invalid(e.to_string()),
    })?;
    ingest.admission.spend(node, 0, 0, shape.events, Instant::now()).map_err(Refusal::RateLimited)?;
    ingest.admission.grow(&mut held, shape.decoded_bytes()).map_err(Refusal::Overloaded)?;
    let mut batch = Batch::decode(body).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if batch.node_id != node.as_str() {
        // The claim is the sender's text: logged and answered only once it is a node id.
        let claimed = match NodeId::new(&batch.node_id) {
            Ok(id) => id.to_string(),
            Err(_) => format!("(not a node id, {} bytes)", batch.node_id.len()),
        };
        ingest.detect.impersonation(node, &claimed, peer.ip(), tierwatch_protocol::now_ms());
        return Err(Refusal::Impersonation { claimed });
    }
    let now = tierwatch_protocol::now_ms();
    let mut report =
        validate::validate(&mut batch, now, &ingest.limits).map_err(|e| Refusal::Invalid(e.to_string()))?;
    let cap = ingest.admission.quotas().series_per_node;
    let over_cap = ingest.store.admit_series(node, &mut batch, cap);
    for (index, s) in &over_cap {
        report.accepted_points -= s.points.len().min(report.accepted_points);
        report.rejected.push(Rejection {
            location: Location::Series { index: *index, name: s.display_name() },
            reason: format!(
                "node is at its cap of {cap} live series (ingest.quotas.series_per_node); new series are refused, existing ones keep updating"
            ),
        });
    }
    if !over_cap.is_empty() {
        ingest.metrics.node_refusal(node.as_str(), "series_cap", over_cap.len() as u64);
    }
    let sequence = batch.sequence;
    let write = if ingest.remote_write {
        ingest.store.topology().get(node).map(|n| {
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
    let outcome =
        ingest.ledger.record(job).await.map_err(|e| Refusal::Unavailable { sequence, error: e.to_string() })?;
    let boot = tierwatch_protocol::ids::hex(&batch.boot_id);
    let created_ms = batch.created_ms;
    if outcome == Outcome::Duplicate {
        tracing::debug!(node = %node, boot_id = %boot, sequence, created_ms, "duplicate batch acknowledged, not stored again");
        let ack = Ack { sequence, duplicate: true, ..Default::default() };
        ingest.metrics.batch(BatchResult::Duplicate);
        return Ok(reply(StatusCode::OK, ack.encode_to_vec(), "application/x-protobuf"));
    }
    ingest.detect.batch(node, &batch, sent_ms, now);
    ingest.store.ingest(node, batch, now);
    if let Some(a) = &ingest.alerting {
        a.trigger.notify_one();
    }
    ingest.metrics.samples_accepted.inc_by(report.accepted_points as u64);
    ingest.metrics.samples_rejected.inc_by(report.rejected.len() as u64);
    ingest.metrics.events_accepted.inc_by(report.accepted_events as u64);
    let refused_events = report.rejected.iter().filter(|r| matches!(r.location, Location::Event { .. })).count();
    let refused_samples = report.rejected.len() - refused_events - over_cap.len();
    if refused_samples > 0 {
        ingest.metrics.node_refusal(node.as_str(), "sample", refused_samples as u64);
    }
    if refused_events > 0 {
        ingest.metrics.node_refusal(node.as_str(), "event", refused_events as u64);
        let first = report.rejected.iter().find(|r| matches!(r.location, Location::Event { .. }));
        let first = first.map(|r| r.to_string()).unwrap_or_default();
        tracing::error!(node = %node, sequence, refused = refused_events, first = %first, "security events refused from an accepted batch");
        // Evidence lost is itself a finding: stored and paged like one.
        ingest.detect.events_refused(node, refused_events, &first, now);
    }
    if report.truncated_attributes > 0 {
        ingest.metrics.attributes_truncated(node.as_str(), report.truncated_attributes as u64);
        tracing::warn!(node = %node, sequence, truncated = report.truncated_attributes, limit = ingest.limits.max_attribute_len, "event attributes over the limits cut, events kept");
    }
    if refused_samples > 0 {
        let first = report.rejected.iter().find(|r| !matches!(r.location, Location::Event { .. }));
        let first = first.map(|r| r.to_string()).unwrap_or_default();
        tracing::warn!(node = %node, sequence, rejected = refused_samples, first = %first, "samples refused from an accepted batch");
    }
    tracing::debug!(node = %node, boot_id = %boot, sequence, created_ms, points = report.accepted_points, "batch stored");
    ingest.metrics.batch(BatchResult::Accepted);
    let ack = Ack {
        sequence,
        accepted_points: report.accepted_points as u32,
        accepted_events: report.accepted_events as u32,
        rejected: report
            .rejected
            .iter()
            .map(|r| WireRejection { reason: r.to_string(), event: matches!(r.location, Location::Event { .. }) })
            .collect(),
        duplicate: false,
        truncated_attributes: report.truncated_attributes as u32,
    };
    Ok(reply(StatusCode::OK, ack.encode_to_vec(), "application/x-protobuf"))
}

fn too_large(len: usize, limit: usize) -> Response<Full<Bytes>> {
    refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("body of {len} bytes exceeds ingest.max_body_bytes = {limit}"))
}
