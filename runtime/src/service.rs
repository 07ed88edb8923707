//! The life of a daemon under systemd: start, tell systemd it is ready,
//! feed the watchdog, reload on SIGHUP, drain and stop on SIGTERM or SIGINT.
//!
//! A reload loads and validates the configuration first: a bad one is
//! refused with a log line and the running instance is not touched. A good
//! one replaces the running instance (drained like a stop, so nothing in
//! flight is lost); should the new one fail to start (a port taken), the
//! previous configuration is started again, retried for ten seconds. The
//! binaries load every file a configuration needs (certificates and keys
//! included) when they validate it, so a bad file refuses the reload and
//! the previous configuration never needs a file again. systemd hears
//! `RELOADING=1` and then `READY=1` either way, with the outcome in `STATUS`.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::systemd;

/// A health check of a running instance (see [`Instance::health_check`]).
pub type HealthCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// A started instance of a service.
pub trait Instance: Send {
    /// Waits until the instance has stopped after its token was cancelled.
    fn wait(self) -> impl Future<Output = ()> + Send;
    /// A check that the instance's core still works (its state database or
    /// spool answers), run on the blocking pool to feed the watchdog.
    fn health_check(&self) -> HealthCheck;
    /// One line for `systemctl status`.
    fn status(&self) -> String;
}

/// Errors of the supervisor itself.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError<E: std::fmt::Display> {
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("{0}")]
    Start(E),
}

enum Event {
    Stop(&'static str),
    Reload,
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.term.recv() => Event::Stop("SIGTERM"),
            _ = self.int.recv() => Event::Stop("SIGINT"),
            _ = self.hup.recv() => Event::Reload,
        }
    }
}

/// How often, and how far apart, the previous configuration is tried again
/// when neither it nor the new one starts (a port held a moment longer by
/// the old instance's last connections).
const FALLBACK_ATTEMPTS: u32 = 10;
const FALLBACK_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the previous configuration again, retrying: every file it needs
/// was loaded with it, so only a resource held a moment longer can stop it.
async fn restart_previous<C, I, E, S, Fut>(config: &C, start: &S, token: &mut CancellationToken) -> Result<I, E>
where
    C: Clone,
    E: std::fmt::Display,
    S: Fn(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<I, E>>,
{
    let mut attempt = 1;
    loop {
        *token = CancellationToken::new();
        match start(config.clone(), token.clone()).await {
            Ok(r) => return Ok(r),
            Err(e) if attempt < FALLBACK_ATTEMPTS => {
                tracing::error!(error = %e, attempt, "the previous configuration did not start either; trying again");
                tokio::time::sleep(FALLBACK_PAUSE).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs `start(config)` until SIGTERM or SIGINT; SIGHUP calls `reload` for a
/// new configuration and restarts the instance with it.
pub async fn supervise<C, I, E, S, Fut>(
    first: C,
    reload: impl Fn() -> Result<C, String>,
    start: S,
) -> Result<(), ServiceError<E>>
where
    C: Clone,
    I: Instance,
    E: std::fmt::Display,
    S: Fn(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<I, E>>,
{
    // Installed before the first start, so a signal during start-up is not lost.
    let mut signals = Signals::new().map_err(ServiceError::Signals)?;
    let check: Arc<Mutex<Option<HealthCheck>>> = Arc::default();
    let watchdog_token = CancellationToken::new();
    let _stop_watchdog = watchdog_token.clone().drop_guard();
    let c = check.clone();
    systemd::spawn_watchdog(
        // Between instances (a reload in progress) the process is alive by definition.
        Arc::new(move || {
            let current = c.lock().unwrap_or_else(|p| p.into_inner()).clone();
            current.is_none_or(|f| f())
        }),
        watchdog_token,
    );
    let set_check = |f: Option<HealthCheck>| {
        *check.lock().unwrap_or_else(|p| p.into_inner()) = f;
    };

    let mut config = first;
    let mut token = CancellationToken::new();
    let mut running = start(config.clone(), token.clone()).await.map_err(ServiceError::Start)?;
    set_check(Some(running.health_check()));
    systemd::ready(&running.status());
    loop {
        match signals.next().await {
            Event::Stop(signal) => {
                tracing::info!(signal, "shutting down");
                systemd::stopping();
                set_check(None);
                token.cancel();
                running.wait().await;
                return Ok(());
            }
            Event::Reload => {
                tracing::info!("SIGHUP: reloading the configuration");
                systemd::reloading();
                let new = match reload() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "reload refused: the new configuration is invalid; the running one stays");
                        // READY again: `systemctl reload` returns, and the status says why nothing changed.
                        systemd::ready(&format!(
                            "reload refused: invalid configuration (see the log); running the previous one: {}",
                            running.status()
                        ));
                        continue;
                    }
                };
                set_check(None);
                token.cancel();
                running.wait().await;
                token = CancellationToken::new();
                running = match start(new.clone(), token.clone()).await {
                    Ok(r) => {
                        config = new;
                        tracing::info!("configuration reloaded");
                        r
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the new configuration did not start; running the previous one again");
                        restart_previous(&config, &start, &mut token).await.map_err(ServiceError::Start)?
                    }
                };
                set_check(Some(running.health_check()));
                systemd::ready(&running.status());
            }
        }
    }
}
