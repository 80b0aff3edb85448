//! The trainer as a library: the `trainer` binary's commands, and what the exporter needs
//! to rebuild a run's network (the [`training::model`] items) and to find runs and their
//! artifacts ([`registry`]).

pub mod bench;
pub mod best;
pub mod bundling;
pub mod demo;
pub mod evaluate;
pub mod ingest;
pub mod memory;
pub mod plots;
pub mod progress;
// Part of the registry's API (best_run, metric_history, heartbeat) serves `trainer best`
// and the cloud issue; its tests (tests/registry_backends.rs) exercise all of it.
#[allow(dead_code)]
pub mod registry;
pub mod rollout;
pub mod runs;
pub mod sweep;
pub mod tracking;
pub mod train_cmd;
pub mod training;
pub mod trial;
pub mod worker;
