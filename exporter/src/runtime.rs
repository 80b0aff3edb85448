//! Running exported files through tract (the in-process checks and the edge runtime's
//! engine): ONNX through tract-onnx, TFLite through tract-tflite.

use tract_onnx::prelude::*;

/// Which file format a [`TractModel`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Onnx,
    Tflite,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Onnx => "onnx",
            Format::Tflite => "tflite",
        }
    }
}

/// An optimised tract plan for one batch size over NHWC f32 input.
pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    pub batch: usize,
    /// Images per call of the plan: `batch`, except for TFLite (see [`TractModel::load`]).
    pub plan_batch: usize,
    pub side: usize,
    pub embedding_dim: usize,
}

impl std::fmt::Debug for TractModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractModel")
            .field("batch", &self.batch)
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

impl TractModel {
    /// Loads `bytes` (a file of `format`) for input `[batch, side, side, 3]`, planned
    /// ahead by tract.
    ///
    /// ONNX is planned for `batch`. TFLite is planned for batch 1 and a call of `batch`
    /// images runs it `batch` times: tract-tflite reads the stored shape (batch 1; the
    /// dynamic batch is only in `shape_signature`) and resolves the RESHAPE's -1 with it
    /// at import, so the plan cannot be re-planned for another batch.
    pub fn load(
        format: Format,
        bytes: &[u8],
        batch: usize,
        side: usize,
    ) -> TractResult<TractModel> {
        let plan_batch = match format {
            Format::Onnx => batch,
            Format::Tflite => 1,
        };
        let fact = f32::fact([plan_batch, side, side, 3]);
        let typed = match format {
            Format::Onnx => tract_onnx::onnx()
                .model_for_read(&mut &bytes[..])?
                .with_input_fact(0, fact.into())?
                .into_optimized()?,
            Format::Tflite => tract_tflite::tflite()
                .model_for_read(&mut &bytes[..])?
                .into_optimized()?,
        };
        let out = typed
            .output_fact(0)?
            .shape
            .as_concrete()
            .map(|s| s.to_vec());
        let embedding_dim = match out.as_deref() {
            Some([b, e]) if *b == plan_batch => *e,
            other => anyhow::bail!("unexpected output shape {other:?} for batch {plan_batch}"),
        };
        Ok(TractModel {
            plan: typed.into_runnable()?,
            batch,
            plan_batch,
            side,
            embedding_dim,
        })
    }

    /// Embeddings of `input` (`batch * side * side * 3` raw pixel values, NHWC).
    pub fn run(&self, input: &[f32]) -> TractResult<Vec<f32>> {
        let per = self.plan_batch * self.side * self.side * 3;
        if input.len() != self.batch * self.side * self.side * 3 {
            anyhow::bail!("input of {} values for batch {}", input.len(), self.batch);
        }
        let mut y = Vec::with_capacity(self.batch * self.embedding_dim);
        for chunk in input.chunks(per) {
            let t = Tensor::from_shape(&[self.plan_batch, self.side, self.side, 3], chunk)?;
            let out = self.plan.run(tvec!(t.into()))?;
            y.extend_from_slice(out[0].try_as_plain_ram()?.as_slice::<f32>()?);
        }
        Ok(y)
    }

    /// Embeddings of any number of images, `batch` at a time (the last chunk padded).
    pub fn run_all(&self, input: &[f32]) -> TractResult<Vec<f32>> {
        let per = self.side * self.side * 3;
        let n = input.len() / per;
        let mut out = Vec::with_capacity(n * self.embedding_dim);
        for chunk in input.chunks(self.batch * per) {
            let m = chunk.len() / per;
            let y = if m == self.batch {
                self.run(chunk)?
            } else {
                let mut padded = chunk.to_vec();
                padded.resize(self.batch * per, 0.0);
                self.run(&padded)?
            };
            out.extend_from_slice(&y[..m * self.embedding_dim]);
        }
        Ok(out)
    }
}

/// Largest absolute difference between two equally long slices (NaN counts as infinite).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f32::max)
}

/// Runs tract's matrix products on `n` threads (tract's default is one).
pub fn set_threads(n: usize) {
    use tract_onnx::tract_core::tract_linalg::multithread::{set_default_executor, Executor};
    set_default_executor(if n > 1 {
        Executor::multithread(n)
    } else {
        Executor::SingleThread
    });
}
