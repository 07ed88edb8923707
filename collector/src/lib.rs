//! The tierwatch collector: authenticates agents by certificate, validates
//! and stores their batches, exposes them to Prometheus.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod config;
pub mod exposition;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod pki;
pub mod server;
pub mod status;
pub mod store;
pub mod tls;
pub mod topology;
