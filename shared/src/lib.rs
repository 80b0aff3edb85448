//! The common language of the three programs (`trainer`, `exporter`, `edge-agent`):
//! dataset sources and shards, inductive conformal prediction, embedding-quality metrics,
//! model bundles (manifest, hashes, ed25519 signatures).

pub mod broker;
pub mod bundle;
pub mod command;
pub mod data;
pub mod error_text;
pub mod icp;
pub mod image;
pub mod progress;
pub mod pyenv;
pub mod silhouette;
pub mod store;
