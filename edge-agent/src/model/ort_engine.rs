//! onnxruntime as a runtime (cargo feature `ort`, `--runtime ort`). The shared library is
//! loaded at run time, from `ORT_DYLIB_PATH` or the loader's search path
//! (`libonnxruntime.so`), so the build downloads nothing and the same binary runs with a
//! CPU-only library (here: the one inside Python's onnxruntime wheel) or a Jetson's
//! CUDA/TensorRT one. The TensorRT and CUDA execution providers are asked for first; a
//! library without them falls back to the CPU provider (logged by onnxruntime).

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::ep;
use ort::session::Session;
use ort::value::TensorRef;

use crate::model::runtime::RuntimeError;

/// Loads the library and sets up the process's onnxruntime environment once.
fn environment() -> Result<Environment, String> {
    static INIT: OnceLock<Result<Environment, String>> = OnceLock::new();
    INIT.get_or_init(|| {
        let path = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("libonnxruntime.so"));
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "cannot load onnxruntime from {}: {e} (set ORT_DYLIB_PATH to a libonnxruntime.so)",
                path.display()
            )
        })?;
        builder
            .with_name("edge-agent")
            .with_execution_providers([
                ep::TensorRT::default().build(),
                ep::CUDA::default().build(),
            ])
            .build()
            .map_err(|e| format!("onnxruntime environment: {e}"))
    })
    .clone()
}

/// An onnxruntime session over one ONNX file.
pub struct OrtEngine {
    /// `Session::run` takes `&mut self`: calls from several requests take turns.
    session: Mutex<Session>,
    input: String,
    file: String,
    side: usize,
    embedding_dim: usize,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("file", &self.file)
            .field("side", &self.side)
            .field("embedding_dim", &self.embedding_dim)
            .finish_non_exhaustive()
    }
}

impl OrtEngine {
    /// A session for `bytes` (the model file `file`) with `[*, side, side, 3]` input.
    pub fn new(file: &str, bytes: &[u8], side: usize) -> Result<OrtEngine, RuntimeError> {
        let fail = |what: String| RuntimeError::Ort {
            file: file.to_string(),
            what,
        };
        let env = environment().map_err(fail)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let session = Session::builder(&env)
            .and_then(|b| b.with_intra_threads(threads).map_err(Into::into))
            .and_then(|mut b| b.commit_from_memory(bytes))
            .map_err(|e| fail(e.to_string()))?;
        let input = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .ok_or_else(|| fail("the model has no input".into()))?;
        let mut engine = OrtEngine {
            session: Mutex::new(session),
            input,
            file: file.to_string(),
            side,
            embedding_dim: 0,
        };
        // the output width from one run (the declared shape may be symbolic)
        let probe = engine.embed(&vec![0.0; side * side * 3])?;
        engine.embedding_dim = probe.len();
        Ok(engine)
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

    /// Embeddings (`n x E`) of `n` NHWC images of raw pixel values.
    pub fn embed(&self, input: &[f32]) -> Result<Vec<f32>, RuntimeError> {
        let per = self.side * self.side * 3;
        if input.is_empty() || !input.len().is_multiple_of(per) {
            return Err(RuntimeError::InputSize {
                got: input.len(),
                side: self.side,
            });
        }
        let n = input.len() / per;
        let fail = |what: String| RuntimeError::Run {
            file: self.file.clone(),
            what,
        };
        let tensor = TensorRef::from_array_view(([n, self.side, self.side, 3], input))
            .map_err(|e| fail(e.to_string()))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| fail("an earlier call panicked inside onnxruntime".into()))?;
        let outputs = session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| fail(e.to_string()))?;
        let (shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(e.to_string()))?;
        let e = data.len() / n.max(1);
        if shape.len() != 2 || shape[0] as usize != n || e * n != data.len() {
            return Err(RuntimeError::OutputShape {
                file: self.file.clone(),
                shape: Some(shape.iter().map(|&d| d as usize).collect()),
                batch: n,
            });
        }
        if self.embedding_dim != 0 && e != self.embedding_dim {
            return Err(fail(format!(
                "{e} outputs per image, the first run gave {}",
                self.embedding_dim
            )));
        }
        Ok(data.to_vec())
    }
}
