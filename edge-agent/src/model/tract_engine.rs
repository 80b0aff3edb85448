//! tract as a runtime (cargo features `tract`, `tflite`): the ONNX file through tract-onnx
//! or the TFLite file through tract-tflite.
//!
//! tract's ONNX plans are concretised per batch size (tract optimises a concrete shape
//! better than a symbolic one) and built lazily, so cold start pays for the batch-1 plan
//! only. A call with `n` images is split greedily over the plan sizes, so no call pads.

use std::sync::{Arc, OnceLock};

use tract_onnx::prelude::*;

use super::runtime::{ModelFormat, RuntimeError, PLAN_BATCHES};

type Plan = Arc<TypedRunnableModel>;

/// A tract engine for one model file.
pub struct TractEngine {
    format: ModelFormat,
    file: String,
    bytes: Vec<u8>,
    side: usize,
    embedding_dim: usize,
    /// One lazily built plan per entry of [`PLAN_BATCHES`] (TFLite: batch 1 only).
    plans: Vec<(usize, OnceLock<Plan>)>,
}

impl std::fmt::Debug for TractEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractEngine")
            .field("format", &self.format)
            .field("file", &self.file)
            .field("side", &self.side)
            .field("embedding_dim", &self.embedding_dim)
            .finish_non_exhaustive()
    }
}

impl TractEngine {
    /// Loads `bytes` (the model file `file`, for errors) for `[*, side, side, 3]` input and
    /// plans batch 1 at once.
    pub fn new(
        format: ModelFormat,
        file: &str,
        bytes: Vec<u8>,
        side: usize,
    ) -> Result<Self, RuntimeError> {
        let batches: &[usize] = match format {
            ModelFormat::Onnx => &PLAN_BATCHES,
            // tract-tflite resolves the RESHAPE's -1 with the stored batch 1 at import, so
            // the graph cannot be re-planned for another batch (see exporter::runtime)
            ModelFormat::Tflite => &[1],
        };
        let mut engine = TractEngine {
            format,
            file: file.to_string(),
            bytes,
            side,
            embedding_dim: 0,
            plans: batches.iter().map(|&b| (b, OnceLock::new())).collect(),
        };
        let (plan, dim) = engine.build(1)?;
        engine.embedding_dim = dim;
        // set() cannot fail on a fresh OnceLock
        let _ = engine.plans[0].1.set(plan);
        Ok(engine)
    }

    pub fn format(&self) -> ModelFormat {
        self.format
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn side(&self) -> usize {
        self.side
    }

    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    fn build(&self, batch: usize) -> Result<(Plan, usize), RuntimeError> {
        let load = |e: TractError| RuntimeError::Load {
            file: self.file.clone(),
            what: format!("{e:#}"),
        };
        let typed = match self.format {
            ModelFormat::Onnx => tract_onnx::onnx()
                .model_for_read(&mut &self.bytes[..])
                .and_then(|m| {
                    m.with_input_fact(0, f32::fact([batch, self.side, self.side, 3]).into())
                })
                .and_then(|m| m.into_optimized())
                .map_err(load)?,
            #[cfg(feature = "tflite")]
            ModelFormat::Tflite => tract_tflite::tflite()
                .model_for_read(&mut &self.bytes[..])
                .and_then(|m| m.into_optimized())
                .map_err(load)?,
            #[cfg(not(feature = "tflite"))]
            ModelFormat::Tflite => return Err(RuntimeError::NotBuilt { runtime: "tflite" }),
        };
        let shape = typed
            .output_fact(0)
            .ok()
            .and_then(|f| f.shape.as_concrete().map(|s| s.to_vec()));
        let dim = match shape.as_deref() {
            Some([b, e]) if *b == batch && *e > 0 => *e,
            _ => {
                return Err(RuntimeError::OutputShape {
                    file: self.file.clone(),
                    shape,
                    batch,
                })
            }
        };
        let plan = typed.into_runnable().map_err(load)?;
        Ok((plan, dim))
    }

    fn plan(&self, i: usize) -> Result<&Plan, RuntimeError> {
        let (batch, cell) = &self.plans[i];
        if let Some(p) = cell.get() {
            return Ok(p);
        }
        let (plan, _) = self.build(*batch)?;
        Ok(cell.get_or_init(|| plan))
    }

    /// Plans every batch size now (so that the first large request does not pay for it).
    pub fn warm_up(&self) -> Result<(), RuntimeError> {
        for i in 0..self.plans.len() {
            self.plan(i)?;
        }
        Ok(())
    }

    /// Embeddings (`n x E`, row-major) of `input`: `n` NHWC images of raw pixel values.
    pub fn embed(&self, input: &[f32]) -> Result<Vec<f32>, RuntimeError> {
        let per = self.side * self.side * 3;
        if input.is_empty() || !input.len().is_multiple_of(per) {
            return Err(RuntimeError::InputSize {
                got: input.len(),
                side: self.side,
            });
        }
        let n = input.len() / per;
        let mut out = Vec::with_capacity(n * self.embedding_dim);
        let mut done = 0;
        while done < n {
            let left = n - done;
            // the largest plan that fits what is left: no padding
            let i = self
                .plans
                .iter()
                .rposition(|(b, _)| *b <= left)
                .unwrap_or(0);
            let batch = self.plans[i].0;
            let plan = self.plan(i)?;
            let chunk = &input[done * per..(done + batch) * per];
            let run = |e: TractError| RuntimeError::Run {
                file: self.file.clone(),
                what: format!("{e:#}"),
            };
            let t = Tensor::from_shape(&[batch, self.side, self.side, 3], chunk).map_err(run)?;
            let y = plan.run(tvec!(t.into())).map_err(run)?;
            let y = y[0]
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
                .map_err(run)?;
            out.extend_from_slice(&y);
            done += batch;
        }
        Ok(out)
    }
}
