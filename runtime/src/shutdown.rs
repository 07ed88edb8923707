//! Shutdown on SIGTERM or SIGINT through a cancellation token, and a bounded drain.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Returns a token cancelled when the process receives SIGTERM or SIGINT.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = t.cancelled() => return,
        };
        tracing::info!(signal = which, "shutting down");
        t.cancel();
    });
    Ok(token)
}

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
