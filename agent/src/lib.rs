//! The tierwatch agent: probes WAN links and services on a schedule and
//! pushes what it measures to the collector over mutually authenticated TLS.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod batcher;
pub mod config;
pub mod deliver;
pub(crate) mod events;
pub(crate) mod health;
pub mod metrics;
pub mod probe;
pub mod push;
pub mod run;
pub mod scheduler;
pub mod sensor;
pub mod spool;
