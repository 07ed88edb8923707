//! What a probe is asked to do, validated from a target in `agent.yaml`
//! (`config/target.rs` reads the file's shape and builds these): the kind,
//! the kind's parameters, and the schedule.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::dns::RecordType;
use super::http::HttpSpec;

/// Probe kinds an agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    Icmp,
    Tcp,
    Http,
    Tls,
    Dns,
}

impl ProbeKind {
    /// The `probe` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Icmp => "icmp",
            ProbeKind::Tcp => "tcp",
            ProbeKind::Http => "http",
            ProbeKind::Tls => "tls",
            ProbeKind::Dns => "dns",
        }
    }
}

/// What one probe does, resolved from the target and the defaults.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeSpec {
    /// `stall`: the longest hold of every frame that is not a failure;
    /// `keepalive`: the watch's longest gap without a request (fast_down).
    Icmp {
        count: u32,
        spacing: Duration,
        fast_down: bool,
        stall: Duration,
        keepalive: Option<Duration>,
    },
    Tcp {
        port: u16,
    },
    Http(Box<HttpSpec>),
    Tls {
        port: u16,
        server_name: String,
        ca: Option<PathBuf>,
    },
    Dns {
        port: u16,
        query: String,
        record_type: RecordType,
        expect: Option<BTreeSet<String>>,
    },
}

/// A validated target.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    /// Where the probe sends (for http, the URL's host unless overridden).
    pub host: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub jitter: Duration,
    pub spec: ProbeSpec,
}

impl Target {
    /// The probe kind.
    pub fn kind(&self) -> ProbeKind {
        match self.spec {
            ProbeSpec::Icmp { .. } => ProbeKind::Icmp,
            ProbeSpec::Tcp { .. } => ProbeKind::Tcp,
            ProbeSpec::Http(_) => ProbeKind::Http,
            ProbeSpec::Tls { .. } => ProbeKind::Tls,
            ProbeSpec::Dns { .. } => ProbeKind::Dns,
        }
    }
}
