//! Inference engines over the bundle's model files; all take NHWC f32 raw pixels and return
//! `[batch, E]` embeddings.
//!
//! - `native` (the default): the ONNX file through our own engine ([`infer`]): Winograd
//!   convolutions written for this network, 1.5-1.9x onnxruntime's speed on 2 cores (see
//!   docs/BENCHMARKS.md). It runs the chains the exporter writes and refuses
//!   other graphs by node.
//! - `tract` (cargo feature `tract`): the ONNX file through tract-onnx, a general runtime
//!   (any graph it supports).
//! - `tflite` (cargo feature `tflite`): the TFLite file through tract-tflite.
//! - `ort` (cargo feature `ort`): the ONNX file through onnxruntime's shared library,
//!   loaded at run time, with the CUDA/TensorRT execution providers where present.
//!
//! A device build has the native engine only (the default features): tract and
//! tract-tflite are most of a binary's size (docs/JETSON.md has the figures), and the
//! bundle's golden self-test checks the native engine on every load.

#[cfg(feature = "tract")]
pub use crate::model::tract_engine::TractEngine;

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
    #[cfg(feature = "tract")]
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
            #[cfg(feature = "tract")]
            Runtime::Tract => Ok(Engine::Tract(TractEngine::new(
                ModelFormat::Onnx,
                file,
                bytes,
                side,
            )?)),
            #[cfg(not(feature = "tract"))]
            Runtime::Tract => Err(RuntimeError::NotBuilt { runtime: "tract" }),
            #[cfg(feature = "tflite")]
            Runtime::Tflite => Ok(Engine::Tract(TractEngine::new(
                ModelFormat::Tflite,
                file,
                bytes,
                side,
            )?)),
            #[cfg(not(feature = "tflite"))]
            Runtime::Tflite => Err(RuntimeError::NotBuilt { runtime: "tflite" }),
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
            #[cfg(feature = "tract")]
            Engine::Tract(t) if t.format() == ModelFormat::Tflite => Runtime::Tflite,
            #[cfg(feature = "tract")]
            Engine::Tract(_) => Runtime::Tract,
            #[cfg(feature = "ort")]
            Engine::Ort(_) => Runtime::Ort,
        }
    }

    pub fn file(&self) -> &str {
        match self {
            Engine::Native(e) => &e.file,
            #[cfg(feature = "tract")]
            Engine::Tract(e) => e.file(),
            #[cfg(feature = "ort")]
            Engine::Ort(e) => e.file(),
        }
    }

    pub fn side(&self) -> usize {
        match self {
            Engine::Native(e) => e.side,
            #[cfg(feature = "tract")]
            Engine::Tract(e) => e.side(),
            #[cfg(feature = "ort")]
            Engine::Ort(e) => e.side(),
        }
    }

    pub fn embedding_dim(&self) -> usize {
        match self {
            Engine::Native(e) => e.engine.embedding_dim(),
            #[cfg(feature = "tract")]
            Engine::Tract(e) => e.embedding_dim(),
            #[cfg(feature = "ort")]
            Engine::Ort(e) => e.embedding_dim(),
        }
    }

    /// Prepares every batch size now (tract plans them lazily).
    pub fn warm_up(&self) -> Result<(), RuntimeError> {
        match self {
            #[cfg(feature = "tract")]
            Engine::Tract(e) => e.warm_up(),
            _ => Ok(()),
        }
    }

    /// Embeddings (`n x E`, row-major) of `input`: `n` NHWC images of raw pixel values.
    pub fn embed(&self, input: &[f32]) -> Result<Vec<f32>, RuntimeError> {
        match self {
            Engine::Native(e) => Ok(e.engine.embed(input)?),
            #[cfg(feature = "tract")]
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
