//! Watching the served model: online validity from labels ([`validity`]), drift of the
//! inputs without labels ([`inputs`]), adaptive calibration from labels ([`adaptive`]),
//! its health for
//! rollouts and telemetry ([`health`]), the assurance output ([`assurance`]) and the
//! statistics they use ([`stats`]).

pub mod adaptive;
pub mod assurance;
pub mod health;
pub mod inputs;
pub mod stats;
pub mod validity;
