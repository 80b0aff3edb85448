//! [`BlockingRegistry`]: the registry for synchronous code (the CPU-bound training loop).

use std::future::Future;

use super::{Registry, RegistryError, Result};

/// A [`Registry`] with a small runtime of its own: `reg.block_on(reg.registry().log_metrics(..))`.
/// Do not use it from inside another tokio runtime (blocking there panics); async code uses
/// [`Registry`] directly.
pub struct BlockingRegistry {
    rt: tokio::runtime::Runtime,
    registry: Registry,
}

impl BlockingRegistry {
    /// [`Registry::open`] on a current-thread runtime owned by the result.
    pub fn open(url: &str) -> Result<BlockingRegistry> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RegistryError::Invalid(format!("cannot start a tokio runtime: {e}")))?;
        let registry = rt.block_on(Registry::open(url))?;
        Ok(BlockingRegistry { rt, registry })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs one registry call (or any future) to completion.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }
}

impl Drop for BlockingRegistry {
    fn drop(&mut self) {
        self.rt.block_on(self.registry.close());
    }
}
