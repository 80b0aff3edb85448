//! Watching the served model: online validity from labels ([`validity`]), its health for
//! rollouts and telemetry ([`health`]), the assurance output ([`assurance`]) and the
//! statistics they use ([`stats`]).

pub mod assurance;
pub mod health;
pub mod stats;
pub mod validity;
