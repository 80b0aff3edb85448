//! Loading a bundle for serving: nothing in it is used before all of these hold, in order:
//! the ed25519 signature of the manifest with the trusted key, the format version, every
//! listed file's size and sha256 and no unlisted file, the manifest's consistency with its
//! files (`shared::bundle::verify`), then a self-test of the engine on the golden inputs
//! within the manifest's tolerance. Any failure is a [`LoadError`] that names the file and
//! the check.
//!
//! Everything is built from the bytes verification hashed (`VerifiedBundle::file`): no
//! file is read twice, so replacing one on disk after it was verified changes nothing.

use std::path::Path;
use std::time::Instant;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use shared::bundle::golden::{Golden, GoldenError};
use shared::bundle::{self, BundleError, VerifiedBundle};
use shared::icp::NcmKind;

use crate::model::predictor::{Predictor, PredictorError};
use crate::model::runtime::{max_abs_diff, Engine, ModelFormat, Runtime, RuntimeError};

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bundle refused: {0}")]
    Bundle(#[from] BundleError),
    #[error("bundle refused: the manifest lists no {format} model")]
    NoModel { format: &'static str },
    #[error("bundle refused: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("bundle refused: {0}")]
    Golden(#[from] GoldenError),
    #[error("bundle refused: self-test failed: {file} through the {runtime} runtime differs from the golden outputs by {max_abs_diff:e} (tolerance {tolerance:e})")]
    SelfTest {
        file: String,
        runtime: &'static str,
        max_abs_diff: f32,
        tolerance: f32,
    },
    #[error("bundle refused: {0}")]
    Predictor(#[from] PredictorError),
    #[error("bundle refused: manifest: {0}")]
    Manifest(String),
}

/// How to load a bundle.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Which engine serves (and so which model file).
    pub runtime: Runtime,
    /// Nonconformity measure; `None`: the manifest's.
    pub ncm: Option<NcmKind>,
    /// Plan every batch size at load (else on first use).
    pub warm_up: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            runtime: Runtime::Native,
            ncm: None,
            warm_up: false,
        }
    }
}

/// Outcome of one model's golden-input self-test.
#[derive(Clone, Debug, Serialize)]
pub struct SelfTest {
    pub file: String,
    /// The engine that ran it (`native`, `tract`, `tflite`, `ort`).
    pub runtime: String,
    pub count: usize,
    pub max_abs_diff: f32,
    pub tolerance: f32,
}

/// A verified, self-tested bundle ready to serve.
#[derive(Debug)]
pub struct LoadedModel {
    pub bundle: VerifiedBundle,
    pub engine: Engine,
    pub predictor: Predictor,
    pub ncm: NcmKind,
    pub self_test: SelfTest,
    /// The golden inputs and outputs (for a self-test again, e.g. after a swap).
    pub golden: Golden,
    /// Time from the start of verification to ready, milliseconds.
    pub load_ms: f64,
}

impl LoadedModel {
    pub fn model_id(&self) -> &str {
        &self.bundle.manifest.model_id
    }

    pub fn side(&self) -> usize {
        self.engine.side()
    }
}

fn side_of(b: &VerifiedBundle) -> Result<usize, LoadError> {
    match b.manifest.input.shape[..] {
        [_, s, s2, 3] if s == s2 && s > 0 => Ok(s as usize),
        ref other => Err(LoadError::Manifest(format!(
            "input.shape {other:?} is not [-1, S, S, 3]"
        ))),
    }
}

/// Runs `engine` on the golden inputs and compares with the expected embeddings.
pub fn self_test(engine: &Engine, golden: &Golden, tolerance: f32) -> Result<SelfTest, LoadError> {
    if golden.side != engine.side() || golden.dim != engine.embedding_dim() {
        return Err(LoadError::Golden(GoldenError {
            file: engine.file().to_string(),
            what: format!(
                "golden data is for {}x{} input and {} outputs, the model has {}x{} and {}",
                golden.side,
                golden.side,
                golden.dim,
                engine.side(),
                engine.side(),
                engine.embedding_dim()
            ),
        }));
    }
    let x: Vec<f32> = golden.inputs.iter().map(|&v| f32::from(v)).collect();
    let y = engine.embed(&x)?;
    let d = max_abs_diff(&y, &golden.expected);
    if d.is_nan() || d > tolerance {
        return Err(LoadError::SelfTest {
            file: engine.file().to_string(),
            runtime: engine.runtime().name(),
            max_abs_diff: d,
            tolerance,
        });
    }
    Ok(SelfTest {
        file: engine.file().to_string(),
        runtime: engine.runtime().name().to_string(),
        count: golden.labels.len(),
        max_abs_diff: d,
        tolerance,
    })
}

fn engine_for(b: &mut VerifiedBundle, runtime: Runtime, side: usize) -> Result<Engine, LoadError> {
    let format = runtime.format();
    let entry = b
        .manifest
        .models
        .iter()
        .find(|m| m.format == format.name() && m.precision == "float32")
        .ok_or(LoadError::NoModel {
            format: format.name(),
        })?;
    let path = b.path(&entry.file);
    let name = entry.file.clone();
    let bytes = b.take_file(&name)?;
    Ok(Engine::new(
        runtime,
        &path.display().to_string(),
        bytes,
        side,
    )?)
}

fn golden_of(b: &VerifiedBundle) -> Result<Golden, LoadError> {
    let name = &b.manifest.golden.file;
    Ok(Golden::parse(
        b.file(name)?,
        &b.path(name).display().to_string(),
    )?)
}

fn predictor_of(b: &VerifiedBundle, ncm: NcmKind, dim: usize) -> Result<Predictor, LoadError> {
    let m = &b.manifest;
    Ok(Predictor::from_reference(
        b.file(&m.reference)?,
        &b.path(&m.reference).display().to_string(),
        ncm,
        m.icp.mondrian,
        m.icp.p_values,
        m.class_names.clone(),
        dim,
        m.icp
            .calibration
            .as_ref()
            .and_then(|c| c.label_free_scores.as_deref()),
    )?)
}

/// Verifies, self-tests and prepares the bundle in `dir` for serving.
pub fn load(dir: &Path, key: &VerifyingKey, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    let t0 = Instant::now();
    let mut b = bundle::verify(dir, key)?;
    let side = side_of(&b)?;
    let engine = engine_for(&mut b, opts.runtime, side)?;
    let golden = golden_of(&b)?;
    let self_test = self_test(&engine, &golden, b.manifest.golden.tolerance as f32)?;
    if opts.warm_up {
        engine.warm_up()?;
    }
    let ncm = opts.ncm.unwrap_or(b.manifest.icp.ncm);
    let predictor = predictor_of(&b, ncm, engine.embedding_dim())?;
    // the other files' bytes and the reference data are not needed any more
    b.release_files();
    crate::serving::memory::trim();
    Ok(LoadedModel {
        bundle: b,
        engine,
        predictor,
        ncm,
        self_test,
        golden,
        load_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// Every check of [`load`] for every parity-checked model of the bundle, without preparing
/// anything to serve: the ONNX file through the native engine and through tract (feature
/// `tract`) and onnxruntime (feature `ort`), the TFLite file through tract-tflite (feature
/// `tflite`).
pub fn verify(
    dir: &Path,
    key: &VerifyingKey,
) -> Result<(VerifiedBundle, Vec<SelfTest>), LoadError> {
    let mut b = bundle::verify(dir, key)?;
    let side = side_of(&b)?;
    let golden = golden_of(&b)?;
    let tolerance = b.manifest.golden.tolerance as f32;
    let mut reports = vec![];
    for m in b.manifest.models.iter().filter(|m| m.parity_checked) {
        // engines for a GPU are checked on that GPU
        let runtimes: &[Runtime] = match ModelFormat::parse(&m.format) {
            Some(ModelFormat::Onnx) => &[
                Runtime::Native,
                #[cfg(feature = "tract")]
                Runtime::Tract,
                #[cfg(feature = "ort")]
                Runtime::Ort,
            ],
            #[cfg(feature = "tflite")]
            Some(ModelFormat::Tflite) => &[Runtime::Tflite],
            // not in this build: its runtime is checked where it is built
            #[cfg(not(feature = "tflite"))]
            Some(ModelFormat::Tflite) => continue,
            None => continue,
        };
        let path = b.path(&m.file).display().to_string();
        let bytes = b.file(&m.file)?;
        for &rt in runtimes {
            let engine = Engine::new(rt, &path, bytes.to_vec(), side)?;
            reports.push(self_test(&engine, &golden, tolerance)?);
        }
    }
    predictor_of(&b, b.manifest.icp.ncm, golden.dim)?;
    b.release_files();
    Ok((b, reports))
}
