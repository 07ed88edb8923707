//! systemd's notify protocol (`sd_notify(3)`): readiness, reloading,
//! stopping and the watchdog, as datagrams to `$NOTIFY_SOCKET`. Without
//! that variable (not started by systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sends `state` (`READY=1`, `STATUS=...`) to systemd; returns whether it was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return false };
    let sent = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket: the name follows the '@'.
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    match sent {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, state, "systemd notification failed");
            false
        }
    }
}

/// The service is ready: configuration loaded, state opened, listeners bound.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// A reload began; `ready` follows when the new configuration runs.
pub fn reloading() {
    notify("RELOADING=1\nSTATUS=reloading the configuration");
}

/// The service is stopping.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=stopping");
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), if
/// enabled for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog every half interval while `healthy` (run on the
/// blocking pool, so a wedged lock or disk stops the pings) answers true
/// within the interval: systemd then restarts a hung process. Does nothing
/// when the watchdog is off. Stops on `token`.
pub fn spawn_watchdog(healthy: Arc<dyn Fn() -> bool + Send + Sync>, token: CancellationToken) {
    let Some(interval) = watchdog_interval() else { return };
    tracing::info!(interval_ms = interval.as_millis() as u64, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = token.cancelled() => return,
            }
            let h = healthy.clone();
            match tokio::time::timeout(interval, tokio::task::spawn_blocking(move || h())).await {
                Ok(Ok(true)) => {
                    notify("WATCHDOG=1");
                }
                Ok(Ok(false)) => tracing::error!("health check failed: not feeding the systemd watchdog"),
                Ok(Err(_)) | Err(_) => {
                    tracing::error!("health check hung: not feeding the systemd watchdog");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket_named_by_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Tests in this binary run in threads: this is the only one touching these variables.
        std::env::set_var("NOTIFY_SOCKET", &path);
        ready("serving");
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        std::env::set_var("WATCHDOG_USEC", "2000000");
        std::env::set_var("WATCHDOG_PID", "1");
        assert_eq!(watchdog_interval(), None, "another process's watchdog");
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(2)));
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(!notify("READY=1"), "not under systemd: nothing sent");
    }
}
