//! The edge agent, in parts:
//!
//! - [`model`]: verified bundle loading, the inference runtimes, conformal prediction sets
//!   and the swappable slot that holds the serving model;
//! - [`serving`]: the HTTP service, input decoding, metrics;
//! - [`monitoring`]: online validity, the assurance output and the statistics they share;
//! - [`rollout`]: signed commands, the sans-IO rollout state machine and the IO around it
//!   (downloads, activation, health gate);
//! - [`mqtt`]: the broker connection (the only module that speaks MQTT);
//! - [`sdnotify`]: readiness, status and watchdog pings for systemd (`Type=notify`).

pub mod alloc;
pub mod config;
pub mod model;
pub mod monitoring;
pub mod mqtt;
pub mod rollout;
pub mod sdnotify;
pub mod serving;
