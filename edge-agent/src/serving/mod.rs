//! Answering inputs over HTTP: the service and its limits ([`http`]), image decoding
//! ([`input`]), counters ([`metrics`]) and returning freed memory ([`memory`]).

pub mod http;
pub mod input;
pub mod memory;
pub mod metrics;
