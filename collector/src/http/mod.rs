//! The plain HTTP listener (`:9400`): `/metrics`, health, and the JSON API
//! around one shared state ([`Http`]). Each API is a file: nodes, alerts
//! (incidents, acknowledgements, maintenance), security events, the status
//! page; the bearer-token check and JSON bodies are extractors
//! (`auth.rs`). `http` reads from alerting, the store and the database;
//! nothing below imports it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

mod alerts;
mod auth;
pub(crate) mod nodes;
mod security;
pub(crate) mod status_page;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::exposition;
use crate::ledger::QueueSpec;
use crate::listen::{Ended, Gate, Ticket};
use crate::metrics::Metrics;
use crate::store::Store;

/// Shared state of the HTTP handlers.
pub(crate) struct Http {
    pub store: Arc<Store>,
    pub alerting: Option<Arc<crate::alert::Alerting>>,
    pub metrics: Metrics,
    pub node_down_after: Duration,
    /// Set once every listener is bound.
    pub ready: AtomicBool,
    /// remote_write queues, for their gauges.
    pub queues: Vec<QueueSpec>,
    /// Bearer token of the API's changing endpoints; none: nothing changes.
    pub api_token: Option<String>,
    /// Whether listing security events takes the token too.
    pub protect_security_events: bool,
    /// The state database, for the security event list.
    pub security_db: Arc<std::sync::Mutex<rusqlite::Connection>>,
    /// Language and local time of the status page.
    pub locale: crate::i18n::Locale,
    /// `http.request_timeout`: also how long a scrape waits for the scraper to take a chunk.
    pub request_timeout: Duration,
}

/// Serves the router on `listener` until `token` is cancelled: each
/// connection admitted by `gate`, each request answered within `timeout`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Http>,
    gate: Arc<Gate>,
    timeout: Duration,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let metrics = state.metrics.clone();
    let router = router(state.clone());
    let conn_token = token.clone();
    let conn_gate = gate.clone();
    let handle = move |stream: tokio::net::TcpStream, peer: SocketAddr, ticket: Ticket| {
        let (router, token, gate, metrics) =
            (router.clone(), conn_token.clone(), conn_gate.clone(), state.metrics.clone());
        async move {
            let _ticket = ticket;
            metrics.http_connections.inc();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let answer = router.clone().call(req.map(axum::body::Body::new));
                async move {
                    match tokio::time::timeout(timeout, answer).await {
                        Ok(r) => r,
                        Err(_) => Ok((
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("request not answered within http.request_timeout ({} ms)\n", timeout.as_millis()),
                        )
                            .into_response()),
                    }
                }
            });
            let ended = crate::listen::serve(stream, service, gate.limits(), &token).await;
            if let Some(reason) = ended.closed_reason() {
                metrics.connection_closed("http", reason);
            } else if let Ended::Error(e) = ended {
                tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
            }
            metrics.http_connections.dec();
        }
    };
    let refused = move |why| metrics.connection_refused("http", why);
    crate::listen::accept("http", listener, gate, refused, handle, token, tracker).await;
}

/// The router of the HTTP listener.
pub(crate) fn router(state: Arc<Http>) -> Router {
    Router::new()
        .route("/", get(status_page::page))
        .route("/api", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/nodes", get(nodes::list))
        .route("/api/v1/security/events", get(security::events))
        .merge(alerts::routes())
        // API bodies are a few hundred bytes; axum's default is 2 MB.
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .with_state(state)
}

async fn index() -> impl IntoResponse {
    "tierwatch collector\n\n/               status page (HTML)\n/metrics        Prometheus exposition\n/api/v1/nodes   nodes and their status (JSON)\n/api/v1/alerts  open incidents (JSON)\n/api/v1/alerts/history  incident history (JSON)\n/api/v1/alerts/ack      acknowledge an incident (POST)\n/api/v1/maintenance     maintenance windows (GET, POST, DELETE /{id})\n/api/v1/security/events security events with evidence (?node=&kind=&since_ms=&limit=)\n/healthz        liveness\n/readyz         readiness\n"
}

async fn metrics(State(s): State<Arc<Http>>, headers: axum::http::HeaderMap) -> Response {
    for q in &s.queues {
        s.metrics.remote_write_queue(
            &q.name,
            q.state.bytes.load(Ordering::Relaxed),
            q.state.rows.load(Ordering::Relaxed),
        );
    }
    let now = tierwatch_protocol::now_ms();
    let mut derived =
        exposition::Derived { alerts: s.alerting.as_ref().map(|a| a.alerts_per_node()), ..Default::default() };
    match read_db(&s, move |c| crate::security::recent(c, now - 86_400_000, RECENT_EVENT_GROUPS_PER_NODE)).await {
        Ok(r) => derived.recent_events = r,
        Err(e) => tracing::warn!(error = %e, "/metrics: reading recent security events failed"),
    }
    if let Some(a) = s.alerting.clone() {
        match tokio::task::spawn_blocking(move || a.queued()).await {
            Ok(Ok(q)) => q.iter().for_each(|(r, n)| s.metrics.notifications_queued(r, *n)),
            Ok(Err(e)) => tracing::warn!(error = %e, "/metrics: reading the notification outbox failed"),
            Err(e) => tracing::warn!(error = %e, "/metrics: outbox task failed"),
        }
    }
    const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
    let zip = accepts_gzip(&headers);
    let body = stream(s.clone(), derived, now, zip);
    if zip {
        let headers =
            [(header::CONTENT_TYPE, TEXT), (header::CONTENT_ENCODING, "gzip"), (header::VARY, "accept-encoding")];
        (headers, body).into_response()
    } else {
        ([(header::CONTENT_TYPE, TEXT)], body).into_response()
    }
}

/// Bytes of exposition text (before gzip) handed to the scraper at a time.
const CHUNK: usize = 64 * 1024;

/// A scrape on its way to the scraper: chunks, then the end.
enum Chunk {
    Data(bytes::Bytes),
    End,
}

/// The exposition as a streamed body: written on a blocking thread (it
/// walks every series: seconds at national scale) chunk by chunk, gzipped
/// when asked (Prometheus asks; province-wide text is megabytes that gzip
/// takes to about a tenth), each chunk waiting until the scraper took the
/// ones before: memory stays a few chunks whatever the series count. The
/// body is whole only once the render sent its end: a scraper that takes
/// nothing for `http.request_timeout`, or a render that fails or panics,
/// ends it with an error instead (the connection is cut, so no scraper
/// mistakes a partial exposition for a whole one).
fn stream(s: Arc<Http>, derived: exposition::Derived, now: i64, zip: bool) -> axum::body::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(4);
    let runtime = tokio::runtime::Handle::current();
    let wait = s.request_timeout;
    tokio::task::spawn_blocking(move || {
        let sink = Sink { tx, runtime, wait, buf: Vec::with_capacity(CHUNK) };
        let scrape = exposition::Scrape {
            store: &s.store,
            metrics: &s.metrics,
            derived: &derived,
            now_ms: now,
            down_after_ms: s.node_down_after.as_millis() as i64,
        };
        let run = || -> std::io::Result<()> {
            if zip {
                let z = flate2::write::GzEncoder::new(sink, flate2::Compression::fast());
                let mut w = std::io::BufWriter::with_capacity(CHUNK, z);
                scrape.write(&mut w)?;
                w.into_inner().map_err(|e| e.into_error())?.finish()?.finish()
            } else {
                let mut w = sink;
                scrape.write(&mut w)?;
                w.finish()
            }
        };
        // Dropping the sink without its end cuts the body.
        let failed = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(Ok(())) => return,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                tracing::debug!("/metrics: the scraper went away");
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => std::io::Error::other("rendering /metrics panicked"),
        };
        tracing::error!(error = %failed, "/metrics: scrape cut short");
    });
    axum::body::Body::new(Chunks(rx))
}

/// The writing end of a streamed scrape.
struct Sink {
    tx: tokio::sync::mpsc::Sender<Chunk>,
    runtime: tokio::runtime::Handle,
    wait: Duration,
    buf: Vec<u8>,
}

impl Sink {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        // On a blocking thread: waiting here holds no lock and no runtime thread.
        match self.runtime.block_on(tokio::time::timeout(self.wait, self.tx.send(Chunk::Data(chunk)))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::ErrorKind::BrokenPipe.into()),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the scraper took nothing for http.request_timeout ({} ms)", self.wait.as_millis()),
            )),
        }
    }

    /// Sends what is left, then the end.
    fn finish(mut self) -> std::io::Result<()> {
        self.send()?;
        self.runtime.block_on(self.tx.send(Chunk::End)).map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }
}

impl std::io::Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The reading end: a response body of the chunks as they come, an error
/// if the writing end went without sending the end.
struct Chunks(tokio::sync::mpsc::Receiver<Chunk>);

impl hyper::body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| match c {
            Some(Chunk::Data(d)) => Some(Ok(hyper::body::Frame::data(d))),
            Some(Chunk::End) => None,
            None => Some(Err(std::io::Error::other("/metrics: the scrape was cut short"))),
        })
    }
}

/// Whether `Accept-Encoding` allows gzip (not with `q=0`).
fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |c| {
            let mut parts = c.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| p.replace(' ', "") == "q=0" || p.replace(' ', "") == "q=0.0");
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        },
    )
}

/// Runs `f` on the state database off the runtime.
pub(crate) async fn read_db<T: Send + 'static>(
    s: &Http,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, String> {
    let db = s.security_db.clone();
    tokio::task::spawn_blocking(move || f(&db.lock().unwrap_or_else(|p| p.into_inner())).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
}

/// Bytes of a JSON request body.
const MAX_API_BODY: usize = 64 * 1024;

/// Bound on the recent security event groups exposed per node (each is two
/// series): one node's flood cannot push another's groups out.
const RECENT_EVENT_GROUPS_PER_NODE: usize = 20;

async fn readyz(State(s): State<Arc<Http>>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_scrape_is_whole_only_with_its_end() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Chunk::Data(bytes::Bytes::from_static(b"a 1\n"))).await.unwrap();
        tx.send(Chunk::End).await.unwrap();
        assert_eq!(Chunks(rx).collect().await.unwrap().to_bytes(), "a 1\n");

        // The writer went (failed, timed out, panicked) without its end.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Chunk::Data(bytes::Bytes::from_static(b"a 1\n"))).await.unwrap();
        drop(tx);
        assert!(Chunks(rx).collect().await.is_err(), "a partial exposition must not look whole");
    }
}
