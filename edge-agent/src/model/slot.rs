//! The active model behind an atomic pointer swap: requests take a snapshot (`Arc`) and
//! keep using it to the end even if a new bundle is swapped in meanwhile; the old model is
//! dropped when its last request finishes. `edge-agent run` swaps verified bundles here (`rollout::driver`).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::model::loader::LoadedModel;

/// Holds the model that answers requests.
#[derive(Debug)]
pub struct ModelSlot {
    active: ArcSwap<LoadedModel>,
}

impl ModelSlot {
    pub fn new(model: LoadedModel) -> Self {
        ModelSlot {
            active: ArcSwap::from_pointee(model),
        }
    }

    /// The model to answer one request with.
    pub fn current(&self) -> Arc<LoadedModel> {
        self.active.load_full()
    }

    /// Makes `model` active; returns the one it replaces. Only verified, self-tested
    /// models exist as [`LoadedModel`], so nothing unverified can be swapped in.
    pub fn swap(&self, model: LoadedModel) -> Arc<LoadedModel> {
        self.active.swap(Arc::new(model))
    }

    /// Makes a model that is already shared active again (a rollback to the model kept
    /// loaded during a health gate).
    pub fn swap_arc(&self, model: Arc<LoadedModel>) -> Arc<LoadedModel> {
        self.active.swap(model)
    }
}
