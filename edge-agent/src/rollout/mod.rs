//! Rollouts.

pub mod disk;
pub mod download;
