//! Golden inputs made from the trained network (the format and reader live in
//! `shared::bundle::golden`, which the agent uses too).

use anyhow::{Context, Result};
use shared::data::ImageSet;
use trainer::training::Backbone;

pub use shared::bundle::golden::{Golden, GOLDEN_COUNT, TOLERANCE};

use crate::net::reference_embeddings;

/// The images of `set` at `indices` with `net`'s embeddings.
pub fn from_images(net: &Backbone, set: &ImageSet, indices: &[usize]) -> Result<Golden> {
    let chosen = set.select(indices);
    let expected = reference_embeddings(net, &chosen)?;
    Ok(Golden {
        side: set.side,
        dim: net.arch().embedding_dim,
        inputs: chosen.pixels.clone(),
        labels: chosen.labels.clone(),
        expected,
    })
}

/// [`GOLDEN_COUNT`] synthetic signs of distinct classes (needs no dataset).
pub fn synthetic(net: &Backbone) -> Result<Golden> {
    let spec = shared::data::synthetic::SyntheticSpec {
        side: net.arch().side,
        tracks_per_class: 1,
        frames_per_track: 1,
        seed: 7,
    };
    let set = shared::data::synthetic::generate(&spec, &()).context("synthetic golden images")?;
    let step = (set.len() / GOLDEN_COUNT).max(1);
    let idx: Vec<usize> = (0..set.len()).step_by(step).take(GOLDEN_COUNT).collect();
    from_images(net, &set, &idx)
}
