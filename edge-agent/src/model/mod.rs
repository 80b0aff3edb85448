//! A model as the agent holds it: verified and self-tested ([`loader`]), run by an engine
//! ([`runtime`]), answering with conformal prediction sets ([`predictor`], [`pipeline`]),
//! behind an atomic slot ([`slot`]).

pub mod loader;
#[cfg(feature = "ort")]
pub mod ort_engine;
pub mod pipeline;
pub mod predictor;
pub mod runtime;
pub mod slot;
#[cfg(feature = "tract")]
pub mod tract_engine;
