//! Watching the served model: online validity from labels ([`validity`]), the assurance
//! output ([`assurance`]) and the statistics both use ([`stats`]).

pub mod assurance;
pub mod stats;
pub mod validity;
