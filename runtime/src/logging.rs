//! tracing-subscriber set-up: human text or JSON lines on stderr.

use std::sync::{Arc, Mutex};

use tracing_subscriber::{reload, EnvFilter, Registry};

/// Log output format, chosen with `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The options every binary takes to run: `--config FILE` and `--log-format`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Configuration file to run with.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `level`
/// (which comes from the config file). The handle changes the level later,
/// when a reloaded configuration says another.
pub fn init(format: LogFormat, level: &str) -> LogLevel {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env.or_else(|| EnvFilter::try_new(level).ok()).unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = colour(std::io::IsTerminal::is_terminal(&std::io::stderr()), std::env::var_os("NO_COLOR"));
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    // A second init (tests) is harmless: keep the first subscriber.
    let installed = match format {
        LogFormat::Text => registry.with(text).try_init(),
        LogFormat::Json => registry.with(text.json().flatten_event(true)).try_init(),
    };
    LogLevel { handle: installed.is_ok().then_some(handle), pinned, current: Arc::new(Mutex::new(level.to_string())) }
}

/// Whether text logs carry ANSI colours: only on a terminal, and not when
/// `NO_COLOR` is set to anything but the empty string (no-color.org). The
/// journal and log files get plain text.
pub fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The running log filter, changeable without a restart.
#[derive(Clone)]
pub struct LogLevel {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    /// `RUST_LOG` was set: it stays.
    pinned: bool,
    current: Arc<Mutex<String>>,
}

impl LogLevel {
    /// Applies `level` (a config's `log_level`) if it differs from the one in force.
    pub fn set(&self, level: &str) {
        let Some(handle) = &self.handle else { return };
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if self.pinned || *current == level {
            return;
        }
        // Config validation has parsed it already; a bad one keeps the old.
        let Ok(filter) = EnvFilter::try_new(level) else { return };
        match handle.reload(filter) {
            Ok(()) => {
                tracing::info!(from = %current, to = level, "log level changed");
                *current = level.to_string();
            }
            Err(e) => tracing::warn!(error = %e, "log level could not be changed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a file or the journal gets plain text");
        assert!(!colour(true, Some("1".into())));
        assert!(colour(true, Some("".into())), "an empty NO_COLOR does not count");
    }
}
