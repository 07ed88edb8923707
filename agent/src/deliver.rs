//! Delivery of spooled batches to one destination, live first.
//!
//! The newest batch always goes next: after an outage the collector sees the
//! present at once. The backlog drains oldest first in the gaps, no faster
//! than the replay cap, so a recovering link is not flooded. While the
//! destination is unreachable the sender backs off exponentially with
//! jitter; every attempt then carries the newest batch. The backoff is cut
//! short when the path is back: after a failure before any connection stood,
//! a bare TCP connection attempt every second tells when it returns; a fresh
//! batch waiting also ends the wait (at most one attempt a second, and the
//! backoff never exceeds a push interval anyway). A collector that answers
//! and then fails (TLS, 5xx) gets no connection checks: nothing but the
//! next attempt, at the backoff's pace.

use std::sync::Arc;
use std::time::Duration;

use tierwatch_runtime::backoff::Backoff;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{CollectorRejected, InternalEvent, PushAccepted, PushFailed, PushRefused};
use crate::metrics::Metrics;
use crate::push::{PushError, Pusher};
use crate::spool::{Live, Spool};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
// Short enough that a restored link is used within seconds; with jitter,
// 100 agents retrying are a few TLS handshakes per second at most.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// The longest wait between attempts: never more than one push interval, so
/// a node is back at the collector within an interval of its link's return
/// (its heartbeat then clears before it could be declared down).
fn max_backoff(push_interval: Duration) -> Duration {
    MAX_BACKOFF.min(push_interval.max(FIRST_BACKOFF))
}

/// A byte-rate limiter for the backlog; bursts of up to one second of rate.
#[derive(Debug)]
pub struct ReplayCap {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl ReplayCap {
    /// A cap of `bytes_per_second`; 0 means no cap.
    pub fn new(bytes_per_second: u64) -> Self {
        ReplayCap { rate: bytes_per_second as f64, tokens: bytes_per_second as f64, at: Instant::now() }
    }

    /// How long to wait before `size` bytes may go; zero when they may go now.
    /// A batch larger than one second of rate goes once the bucket is full.
    pub fn wait(&mut self, size: u64, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        let need = (size as f64).min(self.rate);
        if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / self.rate)
        }
    }

    /// Charges `size` bytes that were sent.
    pub fn take(&mut self, size: u64) {
        if self.rate > 0.0 {
            self.tokens -= size as f64;
        }
    }
}

/// While backing off from an unreachable collector, how often a bare TCP
/// connection attempt checks whether the path is back (and its timeout).
const RECHECK: Duration = Duration::from_secs(1);

/// How a backoff ended.
#[derive(Debug)]
enum Resume {
    Cancelled,
    /// Time for the next push.
    Push,
    /// The backoff ran out while every check failed: one more failed
    /// attempt (this error), started at the instant given.
    Unreachable(PushError, Instant),
}

/// Waits `wait` after a failed attempt that started at `attempted`.
///
/// After an `unreachable` failure (no TCP connection stood) the wait is a
/// series of bare TCP connection attempts, one starting every [`RECHECK`]
/// (the first a [`RECHECK`] after the failed attempt started, so at once
/// after one that took seconds), each bounded by [`RECHECK`]: the first that
/// succeeds ends the wait, and its socket carries the next push. A push is
/// never what waits for the path: its connect could take the kernel's
/// seconds of neighbour resolution to fail, and a restore during it would
/// be seen only then. When the wait runs out with every check failed, that
/// is a failed attempt of its own (logged and counted by the caller).
///
/// After any other failure (the collector answered, then failed) the wait
/// is the backoff's, cut short by a fresh batch at least a [`RECHECK`]
/// after the failure.
async fn back_off(
    wait: Duration,
    attempted: Instant,
    unreachable: bool,
    pusher: &mut Pusher,
    live: &mut tokio::sync::watch::Receiver<Option<Live>>,
    token: &CancellationToken,
) -> Resume {
    let failed = Instant::now();
    let deadline = failed + wait;
    if unreachable {
        let mut check_at = attempted + RECHECK;
        // When a check last went again at once (see below).
        let mut hurried: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(check_at) => {}
                _ = token.cancelled() => return Resume::Cancelled,
            }
            let started = Instant::now();
            let checked = tokio::select! {
                r = pusher.check(RECHECK) => r,
                _ = token.cancelled() => return Resume::Cancelled,
            };
            tracing::debug!(
                up = checked.is_ok(),
                took_ms = started.elapsed().as_millis() as u64,
                "collector path checked"
            );
            match checked {
                Ok(()) => return Resume::Push,
                Err((e, _)) if Instant::now() >= deadline => return Resume::Unreachable(e, started),
                // The kernel gave up resolving the next hop (its probes a
                // second apart went unanswered): a new attempt starts a new
                // resolution with a probe at once, which after a restore is
                // answered; waiting out the pace would add up to a second.
                // At most once per resolution cycle (3 s): a remote router's
                // host-unreachable answers the same, and must not double the pace.
                Err((_, std::io::ErrorKind::HostUnreachable))
                    if started.elapsed() >= RECHECK / 4 && hurried.is_none_or(|h| h.elapsed() >= RECHECK * 3) =>
                {
                    hurried = Some(Instant::now());
                    check_at = Instant::now();
                }
                Err(_) => check_at = started + RECHECK,
            }
        }
    }
    let mut fresh = false;
    loop {
        let now = Instant::now();
        if now >= deadline || (fresh && now >= failed + RECHECK) {
            return Resume::Push;
        }
        let next = if fresh { failed + RECHECK } else { deadline };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            r = live.changed(), if !fresh => match r {
                Ok(()) => fresh = true,
                Err(_) => return Resume::Cancelled,
            },
            _ = token.cancelled() => return Resume::Cancelled,
        }
    }
}

/// One destination: which spool bit it owns and how to reach it.
pub struct Destination {
    /// Bit index in the spool.
    pub index: usize,
    /// Label value for metrics and logs.
    pub name: String,
    pub pusher: Pusher,
    /// The node's push interval: caps the backoff.
    pub push_interval: Duration,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "spool task failed");
            None
        }
    }
}

/// Sends to `dest` until `token` is cancelled.
pub async fn run(mut dest: Destination, spool: Arc<Spool>, cap: u64, metrics: Metrics, token: CancellationToken) {
    let mut live_rx = spool.subscribe();
    let mut last_live = 0u64;
    let mut cap = ReplayCap::new(cap);
    let mut backoff = Backoff::new(FIRST_BACKOFF, max_backoff(dest.push_interval));
    let idx = dest.index;
    loop {
        if token.is_cancelled() {
            return;
        }
        let live: Option<Live> = live_rx.borrow_and_update().clone().filter(|l| l.id > last_live);
        let (id, body, backlog) = if let Some(l) = live {
            last_live = l.id;
            (l.id, l.body, false)
        } else {
            let s = spool.clone();
            match blocking(move || s.next_backlog(idx)).await.flatten() {
                Some((id, size)) => {
                    let wait = cap.wait(size, Instant::now());
                    if !wait.is_zero() {
                        // A fresh batch arriving meanwhile goes first.
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            r = live_rx.changed() => if r.is_err() { return },
                            _ = token.cancelled() => return,
                        }
                        continue;
                    }
                    let s = spool.clone();
                    match blocking(move || s.read(id)).await {
                        Some(Ok(Some(body))) => {
                            cap.take(body.len() as u64);
                            (id, body, true)
                        }
                        Some(Ok(None)) => continue,
                        Some(Err(e)) => {
                            tracing::error!(id, error = %e, "spool: reading a batch back failed");
                            if tierwatch_runtime::shutdown::sleep_or_cancelled(FIRST_BACKOFF, &token).await {
                                return;
                            }
                            continue;
                        }
                        None => return,
                    }
                }
                None => {
                    tokio::select! {
                        r = live_rx.changed() => if r.is_err() { return },
                        _ = token.cancelled() => return,
                    }
                    continue;
                }
            }
        };
        let attempted = Instant::now();
        let result = tokio::select! {
            r = dest.pusher.push(body) => r,
            _ = token.cancelled() => return,
        };
        match result {
            Ok(ack) => {
                PushAccepted { destination: &dest.name, id, backlog, duplicate: ack.duplicate }.emit(&metrics);
                let s = spool.clone();
                blocking(move || s.ack(idx, id)).await;
                if !ack.rejected.is_empty() || ack.truncated_attributes > 0 {
                    CollectorRejected { destination: &dest.name, id, ack: &ack }.emit(&metrics);
                }
                backoff.reset();
            }
            Err(PushError::Refused { endpoint, status, reason }) => {
                let status = status.as_u16();
                PushRefused { destination: &dest.name, id, backlog, endpoint: &endpoint, status, reason: &reason }
                    .emit(&metrics);
                let s = spool.clone();
                blocking(move || s.refuse(idx, id)).await;
            }
            Err(mut e @ PushError::Transient { .. }) => {
                let mut attempted = attempted;
                loop {
                    let wait = backoff.next_wait();
                    let unreachable = matches!(e, PushError::Transient { unreachable: true, .. });
                    PushFailed { destination: &dest.name, id, backlog, error: &e, retry_in: wait }.emit(&metrics);
                    match back_off(wait, attempted, unreachable, &mut dest.pusher, &mut live_rx, &token).await {
                        Resume::Cancelled => return,
                        Resume::Push => break,
                        Resume::Unreachable(again, at) => (e, attempted) = (again, at),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pusher(port: u16) -> Pusher {
        crate::push::test_pusher(port, Duration::from_secs(1))
    }

    /// A collector that comes back is used within a check interval, not
    /// after the rest of the backoff; one that answered and then failed is
    /// not hammered: the backoff runs its course.
    #[tokio::test]
    async fn the_backoff_is_cut_short_when_the_path_is_back() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut p = pusher(port);
        let (_tx, mut live) = tokio::sync::watch::channel(None);
        let token = CancellationToken::new();
        let started = Instant::now();
        let back = tokio::spawn(async move {
            let r = back_off(Duration::from_secs(10), started, true, &mut p, &mut live, &token).await;
            (r, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (r, took) = back.await.unwrap();
        assert!(matches!(r, Resume::Push), "{r:?}");
        assert!(took >= Duration::from_millis(1500) && took < Duration::from_millis(2700), "{took:?}");
        drop(listener);

        // Not unreachable (it answered, then failed later): the wait is the backoff's.
        let mut p = pusher(port);
        let (_tx, mut live) = tokio::sync::watch::channel(None);
        let t = Instant::now();
        let r = back_off(Duration::from_millis(1200), t, false, &mut p, &mut live, &CancellationToken::new()).await;
        assert!(matches!(r, Resume::Push), "{r:?}");
        assert!(t.elapsed() >= Duration::from_millis(1200));
    }

    /// Checks run one a second from the start of the failed attempt: after a
    /// push that took seconds to fail, the first check is at once; when the
    /// backoff runs out with every check failed, that is a failed attempt
    /// of its own, naming the check's error.
    #[tokio::test]
    async fn checks_are_paced_from_the_attempt_and_a_failed_wait_is_an_attempt() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut p = pusher(port);
        let (_tx, mut live) = tokio::sync::watch::channel(None);
        let token = CancellationToken::new();
        let t = Instant::now();
        let long_ago = t - Duration::from_secs(3);
        let r = back_off(Duration::from_millis(2500), long_ago, true, &mut p, &mut live, &token).await;
        let took = t.elapsed();
        // Checks at 0, 1 and 2 s fail at once (refused); the first one past the wait, at 3 s, ends it.
        assert!(took >= Duration::from_secs(3) && took < Duration::from_millis(3600), "{took:?}");
        match r {
            Resume::Unreachable(PushError::Transient { unreachable: true, reason, .. }, at) => {
                assert!(reason.starts_with("connect:"), "{reason}");
                assert!(at.duration_since(t) >= Duration::from_secs(3), "{:?}", at.duration_since(t));
            }
            other => panic!("{other:?}"),
        }
    }

    /// New data cuts the wait short too, but not before a check interval.
    #[tokio::test]
    async fn fresh_data_cuts_the_backoff_short() {
        let mut p = pusher(1);
        let (tx, mut live) = tokio::sync::watch::channel(None);
        let t = Instant::now();
        let back = tokio::spawn(async move {
            back_off(Duration::from_secs(10), t, false, &mut p, &mut live, &CancellationToken::new()).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send_replace(Some(Live { id: 1, body: bytes::Bytes::new() }));
        assert!(matches!(back.await.unwrap(), Resume::Push));
        let took = t.elapsed();
        assert!(took >= RECHECK && took < RECHECK + Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn replay_cap_paces_bytes() {
        let t0 = Instant::now();
        let mut c = ReplayCap::new(1000);
        assert_eq!(c.wait(600, t0), Duration::ZERO);
        c.take(600);
        // 400 left; 600 more needs 0.2 s of refill.
        let w = c.wait(600, t0);
        assert!((w.as_secs_f64() - 0.2).abs() < 1e-6, "{w:?}");
        assert_eq!(c.wait(600, t0 + Duration::from_millis(200)), Duration::ZERO);
        // A batch bigger than a second of rate waits for a full bucket, then goes.
        c.take(600);
        assert!(c.wait(5000, t0 + Duration::from_millis(200)) > Duration::ZERO);
        assert_eq!(c.wait(5000, t0 + Duration::from_millis(1200)), Duration::ZERO);
        assert_eq!(ReplayCap::new(0).wait(1 << 30, t0), Duration::ZERO);
    }
}
