//! Bounded drains and cancellable sleeps (signals: `service`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Closes `tracker` and waits for its tasks, at most `grace`; logs when the deadline passes.
pub async fn drain(tracker: &TaskTracker, grace: Duration) {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            tasks = tracker.len(),
            "drain deadline passed; exiting with work in flight"
        );
    }
}

/// Sleeps for `d`; returns true if `token` was cancelled first.
pub async fn sleep_or_cancelled(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = token.cancelled() => true,
    }
}
