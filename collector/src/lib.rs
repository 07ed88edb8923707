//! The tierwatch collector: authenticates agents by certificate, validates
//! and stores their batches exactly once, exposes them to Prometheus and
//! forwards them by remote_write.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub(crate) mod admission;
pub mod alert;
pub mod config;
pub(crate) mod db;
pub(crate) mod detect;
pub(crate) mod exposition;
pub(crate) mod http;
pub mod i18n;
pub(crate) mod ingest;
pub(crate) mod ledger;
pub mod listen;
pub mod metrics;
pub(crate) mod outbound;
pub mod pki;
pub mod remote_write;
pub(crate) mod security;
pub(crate) mod seqset;
pub mod server;
pub mod status;
pub(crate) mod store;
pub(crate) mod template;
pub(crate) mod textfmt;
pub(crate) mod timestamp;
pub(crate) mod tls;
pub mod topology;
