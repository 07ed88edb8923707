//! How both listeners hold connections: a cap on open connections, overall
//! and per source address (one host cannot take every slot); a bound on
//! header size and on the time to send one; and idle connections closed.
//! A client that opens thousands of connections and never finishes a
//! header gets a bounded number of small buffers, for a bounded time.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// The connection discipline of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections from one source address at most.
    pub max_per_source: usize,
    /// Time to send a request's header.
    pub header_timeout: Duration,
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes of a request header (hyper's read buffer; at least 8 KiB).
    pub max_header_bytes: usize,
}

/// How long a closing connection may take to flush its last response.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_connections` are open.
    Listener,
    /// `max_per_source` are open from this address.
    Source,
}

impl Full {
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Full::Listener => "max_connections",
            Full::Source => "max_per_source",
        }
    }
}

/// Counts the open connections of one listener.
pub(crate) struct Gate {
    limits: ConnLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; its slot is freed when this is dropped.
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

impl Gate {
    pub(crate) fn new(limits: ConnLimits) -> Arc<Gate> {
        Arc::new(Gate { limits, open: Mutex::default() })
    }

    pub(crate) fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// A slot for a connection from `ip`, or why there is none.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Full> {
        let ip = canonical(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.limits.max_connections {
            return Err(Full::Listener);
        }
        let from = open.1.entry(ip).or_insert(0);
        if *from >= self.limits.max_per_source {
            return Err(Full::Source);
        }
        *from += 1;
        open.0 += 1;
        Ok(Ticket { gate: self.clone(), ip })
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A log line for refused connections at most every this often: a flood
/// of refusals must not become a flood of log lines (the counter has each).
const REFUSAL_LOG_EVERY_MS: u64 = 10_000;

/// Rate-limits a repeated warning, saying how many were not logged.
#[derive(Default)]
pub(crate) struct Throttle {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub(crate) fn allow(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last == 0 || now_ms.saturating_sub(last) >= REFUSAL_LOG_EVERY_MS)
            && self.last_ms.compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// What a connection has been doing, for its watchdog.
struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last byte read or written.
    last_ms: AtomicU64,
    /// When the request head being read began (ms since `epoch`, plus one;
    /// 0: no head is being read). A new connection starts one at once, a
    /// kept-alive one with the first byte of its next request.
    head_since: AtomicU64,
    /// True between requests: the next byte read starts a head.
    between: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn read(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.between.swap(false, Ordering::Relaxed) {
            self.head_since.store(now + 1, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The head is complete: the request goes to the service.
    fn request(&self) {
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// The answer is ready: the connection waits for its next request.
    fn answered(&self) {
        self.between.store(true, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// How long the head being read has taken, if one is.
    fn reading_head(&self) -> Option<Duration> {
        match self.head_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(self.now_ms().saturating_sub(since - 1))),
        }
    }
}

/// An I/O stream that records when a byte last moved.
struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How a served connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The client closed it, or it finished after a shutdown.
    Done,
    /// Closed for idleness.
    Idle,
    /// Closed: a request head took longer than `header_timeout`.
    HeaderTimeout,
    /// Closed: a request head over `max_header_bytes` (answered 431).
    HeaderTooLarge,
    /// HTTP failed (a malformed request, a reset).
    Error(hyper::Error),
}

impl Ended {
    /// The `reason` label of a connection the collector closed, if it did.
    pub(crate) fn closed_reason(&self) -> Option<&'static str> {
        match self {
            Ended::Idle => Some("idle"),
            Ended::HeaderTimeout => Some("header_timeout"),
            Ended::HeaderTooLarge => Some("header_too_large"),
            Ended::Done | Ended::Error(_) => None,
        }
    }
}

/// `service` with the connection's activity told of each request and answer.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<hyper::Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = hyper::Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.activity.request();
        let answer = self.inner.call(req);
        let activity = self.activity.clone();
        Box::pin(async move {
            let r = answer.await;
            activity.answered();
            r
        })
    }
}

/// Serves HTTP/1.1 on `io` with `limits` until the client leaves, the
/// connection idles out, a request head is too slow, or `token` is
/// cancelled (then in-flight requests finish first). The header timeout
/// runs from the connection's start and then from the first byte of each
/// request: a kept-alive connection waiting for its next request is idle,
/// not slow (hyper's own header timer would close it after
/// `header_timeout`, racing an agent that pushes every 10 s).
pub(crate) async fn serve<IO, S, B>(io: IO, service: S, limits: &ConnLimits, token: &CancellationToken) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity {
        epoch: Instant::now(),
        last_ms: AtomicU64::new(0),
        head_since: AtomicU64::new(1),
        between: std::sync::atomic::AtomicBool::new(false),
    });
    let io = Watched { io, activity: activity.clone() };
    let service = Tracked { inner: service, activity: activity.clone() };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let shortest = limits.idle_timeout.min(limits.header_timeout);
    let check = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut tick = tokio::time::interval(check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            r = conn.as_mut() => return ended(r),
            _ = token.cancelled() => break Ended::Done,
            _ = tick.tick() => {
                if activity.reading_head().is_some_and(|t| t >= limits.header_timeout) {
                    break Ended::HeaderTimeout;
                }
                if activity.idle() >= limits.idle_timeout {
                    break Ended::Idle;
                }
            },
        }
    };
    if matches!(why, Ended::HeaderTimeout) {
        // No answer is owed to a head that never came: close now.
        return why;
    }
    conn.as_mut().graceful_shutdown();
    // A client that never reads its response must not hold the slot forever.
    match tokio::time::timeout(CLOSE_GRACE, conn).await {
        Ok(Err(e)) => ended(Err(e)),
        _ => why,
    }
}

fn ended(r: Result<(), hyper::Error>) -> Ended {
    match r {
        Ok(()) => Ended::Done,
        Err(e) if e.is_parse_too_large() => Ended::HeaderTooLarge,
        Err(e) => Ended::Error(e),
    }
}

/// Accepts connections on `listener` until `token` is cancelled: each one
/// admitted by `gate` runs `handle` as a task on `tracker`; one over a cap
/// is closed at once and reported to `refused` (counted there), with a log
/// line at most every ten seconds.
pub(crate) async fn accept<H, Fut>(
    name: &'static str,
    listener: tokio::net::TcpListener,
    gate: Arc<Gate>,
    refused: impl Fn(Full),
    handle: H,
    token: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
) where
    H: Fn(tokio::net::TcpStream, std::net::SocketAddr, Ticket) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let throttle = Throttle::default();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = token.cancelled() => break,
        };
        match gate.admit(peer.ip()) {
            Ok(ticket) => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(handle(stream, peer, ticket));
            }
            Err(full) => {
                refused(full);
                if let Some(suppressed) = throttle.allow(tierwatch_protocol::now_ms().max(0) as u64) {
                    let (max, per_source) = (gate.limits.max_connections, gate.limits.max_per_source);
                    tracing::warn!(listener = name, peer = %peer, reason = full.as_str(), max, per_source, suppressed, "connection refused: listener full");
                }
                drop(stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_per_source: usize) -> ConnLimits {
        ConnLimits {
            max_connections,
            max_per_source,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_header_bytes: 8192,
        }
    }

    #[test]
    fn caps_per_source_and_overall() {
        let gate = Gate::new(limits(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Full::Source));
        // The mapped form of the same address is the same source.
        assert_eq!(gate.admit("::ffff:10.0.0.1".parse().unwrap()).err(), Some(Full::Source));
        let _b1 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Full::Listener));
        drop(a1);
        assert!(gate.admit(b).is_ok());
    }

    #[test]
    fn throttle_logs_once_per_period_and_counts_the_rest() {
        let t = Throttle::default();
        assert_eq!(t.allow(1_000), Some(0));
        assert_eq!(t.allow(2_000), None);
        assert_eq!(t.allow(3_000), None);
        assert_eq!(t.allow(11_000), Some(2));
    }
}
