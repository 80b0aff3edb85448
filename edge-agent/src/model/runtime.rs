//! Inference engines over the bundle's model files; all take NHWC f32 raw pixels and return
//! `[batch, E]` embeddings.
//!
//! - `native` (the default): the ONNX file through our own engine ([`infer`]): Winograd
//!   convolutions written for this network, 1.5-1.9x onnxruntime's speed on 2 cores (see
//!   the README's "Edge agent" figures). It runs the chains the exporter writes and refuses
//!   other graphs by node.
//! - `tract`: the ONNX file through tract-onnx, a general runtime (any graph it supports).
//! - `tflite`: the TFLite file through tract-tflite.
//! - `ort` (cargo feature `ort`): the ONNX file through onnxruntime's shared library,
//!   loaded at run time, with the CUDA/TensorRT execution providers where present.
//!
//! tract's ONNX plans are concretised per batch size (tract optimises a concrete shape
//! better than a symbolic one) and built lazily, so cold start pays for the batch-1 plan
//! only. A call with `n` images is split greedily over the plan sizes, so no call pads.

use std::sync::{Arc, OnceLock};

use tract_onnx::prelude::*;

/// Batch sizes the ONNX engine plans for (largest first is how calls are split).
pub const PLAN_BATCHES: [usize; 4] = [1, 4, 16, 64];

/// Which engine runs the bundle's model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// The ONNX file through [`infer`] (the default).
    Native,
    /// The ONNX file through tract-onnx (`onnx` is accepted as an older name).
    #[serde(alias = "onnx")]
    Tract,
    /// The TFLite file through tract-tflite.
    Tflite,
    /// The ONNX file through onnxruntime (cargo feature `ort`).
    Ort,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Native => "native",
            Runtime::Tract => "tract",
            Runtime::Tflite => "tflite",
            Runtime::Ort => "ort",
        }
    }

    /// The model file it runs.
    pub fn format(self) -> ModelFormat {
        match self {
            Runtime::Tflite => ModelFormat::Tflite,
            _ => ModelFormat::Onnx,
        }
    }

    pub fn parse(s: &str) -> Option<Runtime> {
        match s {
            "native" => Some(Runtime::Native),
            "tract" | "onnx" => Some(Runtime::Tract),
            "tflite" => Some(Runtime::Tflite),
            "ort" | "onnxruntime" => Some(Runtime::Ort),
            _ => None,
        }
    }
}

impl std::str::FromStr for Runtime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Runtime::parse(s)
            .ok_or_else(|| format!("unknown runtime {s:?} (native, tract, tflite or ort)"))
    }
}

/// Which model file of the bundle an engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Onnx,
    Tflite,
}

impl ModelFormat {
    pub fn name(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "onnx",
            ModelFormat::Tflite => "tflite",
        }
    }

    /// The manifest's `models[].format` value.
    pub fn parse(s: &str) -> Option<ModelFormat> {
        match s {
            "onnx" => Some(ModelFormat::Onnx),
            "tflite" => Some(ModelFormat::Tflite),
            _ => None,
        }
    }
}

/// Why an engine could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{file}: cannot load or plan the model: {what}")]
    Load { file: String, what: String },
    #[error("{file}: the model gives output shape {shape:?}, expected [{batch}, E]")]
    OutputShape {
        file: String,
        shape: Option<Vec<usize>>,
        batch: usize,
    },
    #[error("input of {got} values is not a whole number of {side}x{side}x3 images")]
    InputSize { got: usize, side: usize },
    #[error("{file}: inference failed: {what}")]
    Run { file: String, what: String },
    #[error("{0}")]
    Native(#[from] infer::EngineError),
    #[error("{source} (a general runtime runs it: --runtime tract)")]
    NativeUnsupported { source: infer::EngineError },
    #[error("the {runtime} runtime is not in this build: rebuild edge-agent with `--features {runtime}`")]
    NotBuilt { runtime: &'static str },
    #[error("{file}: onnxruntime: {what}")]
    Ort { file: String, what: String },
}

/// An engine for one model file.
#[derive(Debug)]
pub enum Engine {
    Native(NativeEngine),
    Tract(TractEngine),
    #[cfg(feature = "ort")]
    Ort(crate::model::ort_engine::OrtEngine),
}

impl Engine {
    /// Loads `bytes` (the model file `file`, for errors) for `[*, side, side, 3]` input
    /// with `runtime`.
    pub fn new(
        runtime: Runtime,
        file: &str,
        bytes: Vec<u8>,
        side: usize,
    ) -> Result<Engine, RuntimeError> {
        match runtime {
            Runtime::Native => Ok(Engine::Native(NativeEngine::new(file, &bytes, side)?)),
            Runtime::Tract | Runtime::Tflite => Ok(Engine::Tract(TractEngine::new(
                runtime.format(),
                file,
                bytes,
                side,
            )?)),
            #[cfg(feature = "ort")]
            Runtime::Ort => Ok(Engine::Ort(crate::model::ort_engine::OrtEngine::new(
                file, &bytes, side,
            )?)),
            #[cfg(not(feature = "ort"))]
            Runtime::Ort => Err(RuntimeError::NotBuilt { runtime: "ort" }),
        }
    }

    pub fn runtime(&self) -> Runtime {
        match self {
            Engine::Native(_) => Runtime::Native,
            Engine::Tract(t) if t.format() == ModelFormat::Tflite => Runtime::Tflite,
            Engine::Tract(_) => Runtime::Tract,
            #[cfg(feature = "ort")]
            Engine::Ort(_) => Runtime::Ort,
        }
    }

    pub fn file(&self) -> &str {
        match self {
            Engine::Native(e) => &e.file,
            Engine::Tract(e) => e.file(),
            #[cfg(feature = "ort")]
            Engine::Ort(e) => e.file(),
        }
    }

    pub fn side(&self) -> usize {
        match self {
            Engine::Native(e) => e.side,
            Engine::Tract(e) => e.side(),
            #[cfg(feature = "ort")]
            Engine::Ort(e) => e.side(),
        }
    }

    pub fn embedding_dim(&self) -> usize {
        match self {
            Engine::Native(e) => e.engine.embedding_dim(),
            Engine::Tract(e) => e.embedding_dim(),
            #[cfg(feature = "ort")]
            Engine::Ort(e) => e.embedding_dim(),
        }
    }

    /// Prepares every batch size now (tract plans them lazily).
    pub fn warm_up(&self) -> Result<(), RuntimeError> {
        match self {
            Engine::Tract(e) => e.warm_up(),
            _ => Ok(()),
        }
    }

    /// Embeddings (`n x E`, row-major) of `input`: `n` NHWC images of raw pixel values.
    pub fn embed(&self, input: &[f32]) -> Result<Vec<f32>, RuntimeError> {
        match self {
            Engine::Native(e) => Ok(e.engine.embed(input)?),
            Engine::Tract(e) => e.embed(input),
            #[cfg(feature = "ort")]
            Engine::Ort(e) => e.embed(input),
        }
    }
}

/// [`infer::Engine`] with the bundle's input side checked.
#[derive(Debug)]
pub struct NativeEngine {
    engine: infer::Engine,
    file: String,
    side: usize,
}

impl NativeEngine {
    fn new(file: &str, bytes: &[u8], side: usize) -> Result<NativeEngine, RuntimeError> {
        let engine = match infer::Engine::from_onnx(bytes, file, infer::Options::default()) {
            Err(source @ infer::EngineError::Unsupported { .. }) => {
                return Err(RuntimeError::NativeUnsupported { source })
            }
            other => other?,
        };
        let (h, w, c) = engine.input_dims();
        if (h, w, c) != (side, side, 3) {
            return Err(RuntimeError::Load {
                file: file.to_string(),
                what: format!(
                    "the model takes {h}x{w}x{c} input, the manifest says {side}x{side}x3"
                ),
            });
        }
        for line in engine.describe() {
            tracing::debug!(file, "native engine: {line}");
        }
        Ok(NativeEngine {
            engine,
            file: file.to_string(),
            side,
        })
    }
}

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
            ModelFormat::Tflite => tract_tflite::tflite()
                .model_for_read(&mut &self.bytes[..])
                .and_then(|m| m.into_optimized())
                .map_err(load)?,
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

/// Largest absolute difference between two equally long slices (NaN and a length mismatch
/// count as infinite, so they never pass a tolerance).
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
