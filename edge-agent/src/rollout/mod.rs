//! Rollouts on the device: the sans-IO state machine ([`machine`]) and its persisted state
//! ([`persist`]); around them the IO: resumable verified downloads ([`download`], with
//! [`disk`] for free space and durable renames) and the driver that runs the machine
//! ([`driver`]).

pub mod disk;
pub mod download;
pub mod driver;
pub mod machine;
pub mod persist;
