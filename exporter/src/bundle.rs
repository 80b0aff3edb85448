//! `exporter bundle`: the signed bundle of one run (format: docs/BUNDLE.md), its upload
//! through object_store to `<store>/models/<model_id>/` and its record in the registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use shared::bundle::{
    self, CalibrationInfo, FileEntry, GoldenSpec, IcpSpec, InputSpec, Manifest, ModelEntry,
    Normalization, OutputSpec,
};
use shared::icp::{LabelFreeKind, NcmKind, PValueMode};

use crate::export::{export, parity, Exported};
use crate::golden::{Golden, TOLERANCE};
use crate::runtime::Format;
use crate::source::RunSource;

pub const ONNX_FILE: &str = "model.onnx";
pub const TFLITE_FILE: &str = "model.tflite";
pub const REFERENCE_FILE: &str = "reference.safetensors";
pub const GOLDEN_FILE: &str = "golden.safetensors";
/// Significance level the manifest's ICP settings are evaluated at.
pub const DEFAULT_EPSILON: f64 = 0.05;

/// A written bundle.
#[derive(Debug)]
pub struct BuiltBundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub manifest_sha256: String,
}

/// The model id: the run id's first 12 digits and the ONNX file's first 8 sha256 digits,
/// so that the same weights always get the same id.
pub fn model_id(run_id: &str, onnx: &[u8]) -> String {
    let run: String = run_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("{run}-{}", &bundle::sha256_hex(onnx)[..8])
}

fn calibration_count(reference: &[u8], tensor: &str) -> Result<u64> {
    let st = safetensors::SafeTensors::deserialize(reference)
        .context("the run's reference.safetensors is not a valid safetensors file")?;
    let t = st.tensor(tensor).with_context(|| {
        format!("the run's reference.safetensors has no tensor {tensor:?} (calibration scores of the chosen measure)")
    })?;
    Ok(t.shape().first().copied().unwrap_or(0) as u64)
}

/// How the run's calibration split was drawn, from its reference data: the number of
/// distinct groups (`calibration_groups`, tracks) and the label-free scores (centroid
/// distance, else the min score of `ncm`) if the trainer wrote them. None for runs trained before either was recorded.
fn calibration_info(reference: &[u8], ncm: NcmKind) -> Result<Option<CalibrationInfo>> {
    let st = safetensors::SafeTensors::deserialize(reference)
        .context("the run's reference.safetensors is not a valid safetensors file")?;
    let Ok(groups) = st.tensor("calibration_groups") else {
        return Ok(None);
    };
    if groups.dtype() != safetensors::Dtype::U32 {
        bail!(
            "the run's reference.safetensors: calibration_groups is {:?}, expected U32",
            groups.dtype()
        );
    }
    let distinct: std::collections::BTreeSet<u32> = groups
        .data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // the centroid distance where the trainer wrote it (it sees capture conditions that
    // leave the min-score ratio unmoved: docs/AGENT.md), else the older min score
    let key = ncm.key();
    let free = LabelFreeKind::ALL
        .into_iter()
        .map(|k| k.tensor(&key))
        .find(|t| st.tensor(t).is_ok());
    Ok(Some(CalibrationInfo {
        grouped_by: "track".into(),
        groups: distinct.len() as u64,
        label_free_scores: free,
    }))
}

/// Writes the bundle of `src` into `out` (which must not exist or be empty), signed with
/// `key`. `extra` are further (file name, role, bytes, model entry) to include.
pub fn build(
    src: &RunSource,
    golden: &Golden,
    key: &SigningKey,
    out: &Path,
    class_names: Vec<String>,
) -> Result<BuiltBundle> {
    let reference = src.reference.as_ref().with_context(|| {
        format!(
            "run {} has no reference.safetensors (centroids and calibration scores): a bundle needs it",
            src.run_id
        )
    })?;
    let ex: Exported = export(src, golden)?;
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("bundle folder {} exists and is not empty", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(out.join(name), bytes)
            .with_context(|| format!("writing {}", out.join(name).display()))
    };
    write(ONNX_FILE, &ex.onnx)?;
    write(TFLITE_FILE, &ex.tflite)?;
    write(REFERENCE_FILE, reference)?;
    write(GOLDEN_FILE, &golden.to_safetensors()?)?;
    let icp_run = src.icp.clone();
    let ncm = icp_run.as_ref().map_or(NcmKind::NearestCentroid, |i| i.ncm);
    let scores = format!("calibration_scores.{}", ncm.key());
    let n_calibration = calibration_count(reference, &scores)?;
    let arch = src.net.arch();
    let s = arch.side as i64;
    let files: Vec<FileEntry> = [
        (ONNX_FILE, "onnx"),
        (TFLITE_FILE, "tflite"),
        (REFERENCE_FILE, "reference"),
        (GOLDEN_FILE, "golden"),
    ]
    .iter()
    .map(|(n, r)| bundle::file_entry(out, n, r))
    .collect::<Result<_, _>>()?;
    let mut metrics: BTreeMap<String, f64> = src.metrics.clone();
    metrics.insert("onnx_tract_max_abs_diff".into(), f64::from(ex.onnx_max_abs));
    metrics.insert(
        "tflite_tract_max_abs_diff".into(),
        f64::from(ex.tflite_max_abs),
    );
    let manifest = Manifest {
        format: bundle::FORMAT.into(),
        format_version: bundle::FORMAT_VERSION,
        model_id: model_id(&src.run_id, &ex.onnx),
        run_id: src.run_id.clone(),
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        producer: format!("edgecp-exporter {}", env!("CARGO_PKG_VERSION")),
        input: InputSpec {
            name: crate::onnx::INPUT_NAME.into(),
            shape: vec![-1, s, s, 3],
            layout: "NHWC".into(),
            dtype: "float32".into(),
            color: "RGB".into(),
            value_range: [0.0, 255.0],
            normalization: Normalization {
                scale: ex.net.input_scale,
                offset: ex.net.input_offset,
                in_graph: true,
            },
        },
        output: OutputSpec {
            name: crate::onnx::OUTPUT_NAME.into(),
            shape: vec![-1, arch.embedding_dim as i64],
            dtype: "float32".into(),
            l2_normalized: arch.l2_normalize,
        },
        arch: serde_json::to_value(arch)?,
        class_names,
        icp: IcpSpec {
            ncm,
            mondrian: icp_run.as_ref().is_some_and(|i| i.mondrian),
            p_values: icp_run.map_or(PValueMode::Standard, |i| i.p_values),
            epsilon: DEFAULT_EPSILON,
            calibration_scores: scores,
            n_calibration,
            calibration: calibration_info(reference, ncm)?,
        },
        models: vec![
            ModelEntry {
                file: ONNX_FILE.into(),
                format: "onnx".into(),
                precision: "float32".into(),
                opset: Some(crate::onnx::OPSET),
                target: None,
                max_abs_diff: f64::from(ex.onnx_max_abs),
                parity_checked: true,
            },
            ModelEntry {
                file: TFLITE_FILE.into(),
                format: "tflite".into(),
                precision: "float32".into(),
                opset: None,
                target: None,
                max_abs_diff: f64::from(ex.tflite_max_abs),
                parity_checked: true,
            },
        ],
        reference: REFERENCE_FILE.into(),
        golden: GoldenSpec {
            file: GOLDEN_FILE.into(),
            count: golden.count() as u64,
            tolerance: f64::from(TOLERANCE),
        },
        metrics,
        files,
    };
    let bytes = bundle::write_signed(out, &manifest, key)?;
    // what a device will check, checked here first: an exporter bug shows up at export
    bundle::verify(out, &key.verifying_key())
        .with_context(|| format!("the bundle written to {} does not verify", out.display()))?;
    Ok(BuiltBundle {
        dir: out.to_path_buf(),
        manifest,
        manifest_sha256: bundle::sha256_hex(&bytes),
    })
}

/// What `verify` found, model by model.
#[derive(Debug, serde::Serialize)]
pub struct ParityReport {
    pub file: String,
    pub max_abs_diff: f32,
    pub tolerance: f32,
}

/// Full verification: signature, format version, every file (shared::bundle::verify),
/// then every float32 model re-run through tract on the golden inputs.
pub fn verify_full(
    dir: &Path,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<(bundle::VerifiedBundle, Vec<ParityReport>)> {
    let mut b = bundle::verify(dir, key)?;
    let m = &b.manifest;
    let gpath = b.path(&m.golden.file);
    // the bytes that were hashed, never the files again (they may have changed since)
    let golden = Golden::parse(b.file(&m.golden.file)?, &gpath.display().to_string())?;
    let tolerance = m.golden.tolerance as f32;
    let mut reports = vec![];
    for model in &m.models {
        let path = b.path(&model.file);
        let format = match model.format.as_str() {
            "onnx" => Format::Onnx,
            "tflite" => Format::Tflite,
            // engines for a GPU are checked on that GPU (exporter tensorrt)
            _ => continue,
        };
        if !model.parity_checked {
            continue;
        }
        let bytes = b.file(&model.file)?;
        let file = path.display().to_string();
        match format {
            Format::Onnx => {
                crate::onnx::check_onnx(bytes, &file)?;
            }
            Format::Tflite => crate::tflite::check_tflite(bytes, &file)?,
        }
        let d = parity(format, bytes, &golden)
            .with_context(|| format!("{file}: golden-input check"))?;
        if d.is_nan() || d > tolerance {
            bail!("{file}: differs from the golden outputs by {d:e} (tolerance {tolerance:e})");
        }
        reports.push(ParityReport {
            file: model.file.clone(),
            max_abs_diff: d,
            tolerance,
        });
    }
    b.release_files();
    Ok((b, reports))
}

/// Uploads the bundle in `dir` to `<store>/models/<model_id>/` (every listed file, then
/// the manifest, then the signature last, so that a reader never finds a signature
/// without its files) and records it in the registry. Returns the bundle's URL.
pub fn publish(
    dir: &Path,
    manifest: &Manifest,
    manifest_sha256: &str,
    public_key_hex: &str,
    store: &str,
    registry_url: &str,
) -> Result<String> {
    let reg = trainer::registry::BlockingRegistry::open(registry_url)
        .with_context(|| format!("opening the run registry {registry_url}"))?;
    let loc = shared::store::open(store)?;
    let prefix = format!("models/{}", manifest.model_id);
    let mut names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    names.push(bundle::MANIFEST_FILE);
    names.push(bundle::SIGNATURE_FILE);
    for name in names {
        let object = loc.child(&format!("{prefix}/{name}"));
        reg.block_on(shared::store::upload_file(&loc, &object, &dir.join(name)))
            .with_context(|| format!("uploading {name}"))?;
    }
    let uri = shared::store::object_url(&loc, &loc.child(&prefix))?;
    let record = trainer::registry::BundleRecord {
        model_id: manifest.model_id.clone(),
        run_id: manifest.run_id.clone(),
        format_version: i64::from(manifest.format_version),
        manifest_sha256: manifest_sha256.to_string(),
        uri: uri.clone(),
        public_key: public_key_hex.to_string(),
        created_ms: manifest.created_ms,
    };
    reg.block_on(reg.registry().record_bundle(&record))
        .with_context(|| format!("recording bundle {} in {registry_url}", manifest.model_id))?;
    Ok(uri)
}
