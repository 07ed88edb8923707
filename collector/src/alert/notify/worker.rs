//! One task per receiver drains its outbox rows, oldest first: sent or
//! refused rows leave the outbox, failed ones wait out a backoff. The
//! worker only drains; what to send (changes, repeats, Alertmanager
//! re-sends) is queued by the alert runner.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{outbox, Client, Outcome, Receiver};
use crate::i18n::Locale;
use crate::metrics::Metrics;

/// What every worker shares: the outbox's database and the bell the
/// runner rings after queueing.
#[derive(Clone)]
pub struct Outbox {
    pub conn: Arc<Mutex<Connection>>,
    pub queued: Arc<Notify>,
}

impl Outbox {
    /// Runs `f` on the database off the runtime.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<rusqlite::Result<T>, tokio::task::JoinError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&conn.lock().unwrap_or_else(|p| p.into_inner()))).await
    }
}

/// Starts one worker per receiver on `tracker`, until `token` is cancelled.
pub fn spawn(
    outbox: &Outbox,
    receivers: &[Receiver],
    locale: Locale,
    metrics: &Metrics,
    token: &CancellationToken,
    tracker: &TaskTracker,
) {
    for r in receivers.iter().cloned() {
        metrics.receiver(&r.name);
        let (outbox, metrics, token) = (outbox.clone(), metrics.clone(), token.clone());
        let name = r.name.clone();
        let (m, t) = (metrics.clone(), token.clone());
        tracker.spawn(restart_on_panic(
            name,
            move || drain(outbox.clone(), r.clone(), locale, metrics.clone(), token.clone()),
            move |n| m.notification(n, "panicked"),
            t,
        ));
    }
}

/// Runs the task `make` builds until it returns; when it panics, logs it,
/// reports it to `panicked` and starts a new one after a pause (doubling to
/// a minute), so one bad notification cannot silence a receiver for good.
pub(crate) async fn restart_on_panic<F, Fut>(name: String, make: F, panicked: impl Fn(&str), token: CancellationToken)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut restarts = 0u32;
    loop {
        match tokio::spawn(make()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                restarts += 1;
                panicked(&name);
                let wait =
                    tierwatch_runtime::backoff::nth(Duration::from_secs(1), Duration::from_secs(60), restarts - 1);
                tracing::error!(receiver = %name, restarts, restart_in_ms = wait.as_millis() as u64, "notifier task panicked; restarting it");
                if tierwatch_runtime::shutdown::sleep_or_cancelled(wait, &token).await {
                    return;
                }
            }
            // Cancelled with the runtime: shutting down.
            Err(_) => return,
        }
    }
}

async fn drain(outbox: Outbox, receiver: Receiver, locale: Locale, metrics: Metrics, token: CancellationToken) {
    let mut client = Client::new(&receiver.kind, locale);
    let name = receiver.name.clone();
    loop {
        let now = tierwatch_protocol::now_ms();
        let n = name.clone();
        let due = outbox.db(move |c| outbox::next_due(c, &n, now)).await;
        if let Ok(Ok((_, dead))) = &due {
            for d in dead {
                metrics.notification(&name, "dead_letter");
                tracing::error!(receiver = %name, row = d.id, error = %d.error, "notify: outbox row cannot be read; moved to outbox_dead");
            }
        }
        let pending = match due.map(|r| r.map(|(p, _)| p)) {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => {
                tokio::select! {
                    _ = outbox.queued.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = token.cancelled() => return,
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::error!(receiver = %name, error = %e, "notify: reading the outbox failed");
                if tierwatch_runtime::shutdown::sleep_or_cancelled(Duration::from_secs(5), &token).await {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        // Sent from a task of its own: a notification that makes the
        // notifier panic is buried (moved to the dead letters), and the
        // receiver goes on with a fresh client and the next row.
        let message = pending.message.clone();
        let mut sending = tokio::spawn(async move {
            let outcome = client.send(&message).await;
            (client, outcome)
        });
        let outcome = tokio::select! {
            r = &mut sending => match r {
                Ok((c, o)) => {
                    client = c;
                    o
                }
                Err(e) if e.is_panic() => {
                    client = Client::new(&receiver.kind, locale);
                    metrics.notification(&name, "panicked");
                    tracing::error!(receiver = %name, id = %pending.message.id, "notifier panicked on this notification; moved to outbox_dead");
                    let (id, now) = (pending.id, tierwatch_protocol::now_ms());
                    if let Ok(Err(e)) = outbox.db(move |c| outbox::bury(c, id, now, "the notifier panicked on it")).await {
                        tracing::error!(receiver = %name, error = %e, "notify: moving a row to outbox_dead failed");
                    }
                    continue;
                }
                Err(_) => return,
            },
            _ = token.cancelled() => {
                sending.abort();
                return;
            }
        };
        let (id, attempts) = (pending.id, pending.attempts + 1);
        // Re-sends keep Alertmanager's alerts firing; they are no news.
        let resend = pending.message.event == outbox::RESENT;
        let result = match outcome {
            Outcome::Failed(why) | Outcome::Refused(why) if resend => {
                // The next resend comes soon; retrying this one would only
                // hold back what is queued behind it.
                tracing::warn!(receiver = %name, error = %why, "alertmanager: sending an open incident again failed; next time");
                outbox.db(move |c| outbox::done(c, id)).await
            }
            Outcome::Sent => {
                if resend {
                    tracing::debug!(receiver = %name, id = %pending.message.id, "open incident sent again");
                } else {
                    metrics.notification(&name, "sent");
                    tracing::info!(receiver = %name, id = %pending.message.id, "notification sent");
                }
                outbox.db(move |c| outbox::done(c, id)).await
            }
            Outcome::Refused(why) => {
                metrics.notification(&name, "refused");
                tracing::error!(receiver = %name, id = %pending.message.id, reason = %why, "notification refused by the receiver; dropped");
                outbox.db(move |c| outbox::done(c, id)).await
            }
            Outcome::Failed(why) => {
                metrics.notification(&name, "failed");
                let wait = outbox::backoff(pending.attempts);
                tracing::warn!(receiver = %name, id = %pending.message.id, attempts, error = %why, retry_in_ms = wait.as_millis() as u64, "notification failed");
                let next = tierwatch_protocol::now_ms() + wait.as_millis() as i64;
                outbox.db(move |c| outbox::retry_at(c, id, attempts, next)).await
            }
        };
        if let Ok(Err(e)) = result {
            tracing::error!(receiver = %name, error = %e, "notify: updating the outbox failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_notifier_is_restarted_and_reported() {
        let runs = Arc::new(AtomicU32::new(0));
        let reported = Arc::new(AtomicU32::new(0));
        let (r, p) = (runs.clone(), reported.clone());
        restart_on_panic(
            "hook".into(),
            move || {
                let r = r.clone();
                async move {
                    // Panics twice, then runs to its end.
                    if r.fetch_add(1, Ordering::SeqCst) < 2 {
                        panic!("a bad notification");
                    }
                }
            },
            move |name| {
                assert_eq!(name, "hook");
                p.fetch_add(1, Ordering::SeqCst);
            },
            CancellationToken::new(),
        )
        .await;
        assert_eq!((runs.load(Ordering::SeqCst), reported.load(Ordering::SeqCst)), (3, 2));
    }
}
