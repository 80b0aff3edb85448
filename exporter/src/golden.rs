//! Golden inputs: a few images with the trained network's own outputs, stored in the
//! bundle so that a device (or `exporter verify`) can prove its runtime computes the same
//! embeddings. Format: safetensors with `inputs` u8 `[G, S, S, 3]` (NHWC RGB, raw pixels),
//! `expected` f32 `[G, E]`, `labels` u16 `[G]`.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use shared::data::ImageSet;
use trainer::training::Backbone;

use crate::net::reference_embeddings;

/// Golden images per bundle.
pub const GOLDEN_COUNT: usize = 16;
/// Largest |difference| a float32 model may show against the trained network.
pub const TOLERANCE: f32 = 1e-4;

/// Golden inputs and expected outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Golden {
    pub side: usize,
    pub dim: usize,
    pub inputs: Vec<u8>,
    pub labels: Vec<u16>,
    pub expected: Vec<f32>,
}

impl Golden {
    pub fn count(&self) -> usize {
        self.labels.len()
    }

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
        let set =
            shared::data::synthetic::generate(&spec, &()).context("synthetic golden images")?;
        let step = (set.len() / GOLDEN_COUNT).max(1);
        let idx: Vec<usize> = (0..set.len()).step_by(step).take(GOLDEN_COUNT).collect();
        Golden::from_images(net, &set, &idx)
    }

    /// The inputs as the exported graphs take them (f32 raw pixel values).
    pub fn raw_f32(&self) -> Vec<f32> {
        self.inputs.iter().map(|&v| f32::from(v)).collect()
    }

    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let g = self.count();
        let expected: Vec<u8> = self.expected.iter().flat_map(|x| x.to_le_bytes()).collect();
        let labels: Vec<u8> = self.labels.iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = vec![
            (
                "inputs",
                TensorView::new(Dtype::U8, vec![g, self.side, self.side, 3], &self.inputs)?,
            ),
            (
                "expected",
                TensorView::new(Dtype::F32, vec![g, self.dim], &expected)?,
            ),
            ("labels", TensorView::new(Dtype::U16, vec![g], &labels)?),
        ];
        let meta = HashMap::from([(
            "edgecp.golden".to_string(),
            format!("inputs: raw RGB pixels NHWC; expected: embeddings; tolerance {TOLERANCE}"),
        )]);
        Ok(safetensors::serialize(views, Some(meta))?)
    }

    /// Reads a golden file; `file` names it in errors.
    pub fn from_safetensors(bytes: &[u8], file: &str) -> Result<Golden> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .with_context(|| format!("{file}: not a valid safetensors file"))?;
        let get = |name: &str, dtype: Dtype| -> Result<(Vec<usize>, Vec<u8>)> {
            let t = st
                .tensor(name)
                .with_context(|| format!("{file}: no tensor {name:?}"))?;
            if t.dtype() != dtype {
                bail!(
                    "{file}: tensor {name:?} is {:?}, expected {dtype:?}",
                    t.dtype()
                );
            }
            Ok((t.shape().to_vec(), t.data().to_vec()))
        };
        let (ishape, inputs) = get("inputs", Dtype::U8)?;
        let (eshape, expected) = get("expected", Dtype::F32)?;
        let (lshape, labels) = get("labels", Dtype::U16)?;
        let [g, s, s2, 3] = ishape[..] else {
            bail!("{file}: inputs have shape {ishape:?}, expected [G, S, S, 3]");
        };
        let [g2, dim] = eshape[..] else {
            bail!("{file}: expected has shape {eshape:?}, expected [G, E]");
        };
        if s != s2 || g2 != g || lshape != [g] {
            bail!("{file}: inconsistent shapes {ishape:?} / {eshape:?} / {lshape:?}");
        }
        Ok(Golden {
            side: s,
            dim,
            inputs,
            labels: labels
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
            expected: expected
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        })
    }
}
