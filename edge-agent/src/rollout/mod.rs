//! Rollouts on the device: the sans-IO state machine ([`machine`]), its persisted state
//! ([`persist`]), and the IO around it.

pub mod machine;
pub mod persist;
