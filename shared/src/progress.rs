//! Progress reporting without tying the library to a terminal UI.
//!
//! Long operations (ingest, calibration) take a `&dyn Progress`; the binaries pass an
//! indicatif bar, tests and library callers pass `&()`.

/// Receives progress from long-running work. Implementations must be cheap and thread-safe:
/// `inc` is called from rayon workers.
pub trait Progress: Sync {
    /// Announces the total amount of work (items). May be called again when it grows.
    fn set_total(&self, _total: u64) {}
    /// `n` more items are done.
    fn inc(&self, _n: u64) {}
    /// A short description of the current phase.
    fn phase(&self, _name: &str) {}
}

/// No progress reporting.
impl Progress for () {}
