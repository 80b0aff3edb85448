//! The edge agent: verified bundle loading ([`bundle_loader`]), inference ([`runtime`]),
//! conformal prediction sets ([`predictor`]), the swappable active model ([`slot`]), the
//! assurance output ([`assurance`]), online validity ([`validity`]) and the HTTP service
//! ([`server`]).

pub mod assurance;
pub mod bundle_loader;
pub mod config;
pub mod input;
pub mod memory;
pub mod metrics;
#[cfg(feature = "ort")]
pub mod ort_engine;
pub mod pipeline;
pub mod predictor;
pub mod runtime;
pub mod server;
pub mod slot;
pub mod stats;
pub mod validity;
