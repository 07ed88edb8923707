//! Process plumbing shared by `tierwatch-agent` and `tierwatch-collector`:
//! logging, shutdown on signals, TLS material, durations in config, URLs
//! and a small HTTP client.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod backoff;
pub mod duration;
pub mod exit;
pub mod http_client;
pub mod logging;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod systemd;
pub mod tls;
pub mod url;
