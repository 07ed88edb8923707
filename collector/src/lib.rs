//! The tierwatch collector: authenticates agents by certificate, validates
//! and stores their batches exactly once, exposes them to Prometheus and
//! forwards them by remote_write.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod alert;
pub mod config;
pub mod db;
pub mod detect;
pub mod exposition;
pub mod http;
pub mod i18n;
pub mod ingest;
pub mod ledger;
pub mod metrics;
pub mod outbound;
pub mod pki;
pub mod remote_write;
pub mod security;
pub mod seqset;
pub mod server;
pub mod status;
pub mod store;
pub mod template;
pub mod timestamp;
pub mod tls;
pub mod topology;
