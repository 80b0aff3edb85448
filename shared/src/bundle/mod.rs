//! Model bundles: what a device receives (format described in `docs/BUNDLE.md`).
//!
//! A bundle is a directory: `manifest.json`, `manifest.sig` (the 64-byte ed25519 signature
//! of the exact bytes of `manifest.json`) and the files the manifest lists, each with its
//! sha256 and size. [`verify`] checks, in this order, that the signature holds for the
//! given public key, that the format and its version are known, and that every listed file
//! exists with the listed size and digest and that no other file is present, and then
//! that the manifest says nothing impossible about those files ([`validate`]). Only then
//! is anything in the bundle trusted, and only through the bytes that were hashed: the
//! [`VerifiedBundle`] holds them, so nothing is read from disk a second time (a file
//! swapped after verification is never used). Running the models on the golden inputs is
//! the caller's step (it needs an inference engine).

mod files;
pub mod golden;
pub mod keys;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Value of the manifest's `format` field.
pub const FORMAT: &str = "edgecp-bundle";
/// The bundle format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The signature's file name.
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// Largest `manifest.json` a reader accepts (a real one is a few kilobytes).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest file a manifest may list (TensorRT engines are the largest: tens of MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Why a bundle was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {}: {what}", path.display())]
    Key { path: PathBuf, what: String },
    #[error("no random numbers from the operating system: {0}")]
    Random(String),
    #[error("{}: the signature of {MANIFEST_FILE} does not verify with the given public key (tampered manifest, or signed by another key)", path.display())]
    BadSignature { path: PathBuf },
    #[error("{}: {what}", path.display())]
    Manifest { path: PathBuf, what: String },
    #[error("{}: bundle format version {found} is not supported (this build reads version {FORMAT_VERSION})", path.display())]
    UnknownVersion { path: PathBuf, found: u64 },
    #[error("{}: is {found} bytes, the manifest says {expected}", path.display())]
    Size {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{}: sha256 {found} differs from the manifest's {expected}", path.display())]
    Digest {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{}: not listed in the manifest (a bundle holds only what its signature covers)", path.display())]
    Unlisted { path: PathBuf },
    #[error("{}: is a symbolic link: the files of a bundle must be regular files (a link can point outside what the signature covers, or be re-pointed after verification)", path.display())]
    Symlink { path: PathBuf },
    #[error("{}: is a {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: is {found} bytes, more than the {limit} bytes allowed", path.display())]
    TooLarge {
        path: PathBuf,
        limit: u64,
        found: u64,
    },
    #[error("{}: {field}: {what}", path.display())]
    Invalid {
        path: PathBuf,
        /// The manifest field (JSON path) or file that is wrong.
        field: String,
        what: String,
    },
    #[error("{name}: not a verified file of this bundle (every file used must be listed in the manifest's files[])")]
    NotVerified { name: String },
}

/// One file of the bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the bundle directory (plain file name; no `/`, no `..`).
    pub name: String,
    /// What the file is: `onnx`, `tflite`, `tflite_int8`, `tensorrt`, `reference`, `golden`.
    pub role: String,
    /// Lowercase hex sha256 of the file's bytes.
    pub sha256: String,
    pub bytes: u64,
}

/// Input tensor description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    /// `[-1, S, S, 3]`: -1 is the dynamic batch.
    pub shape: Vec<i64>,
    pub layout: String,
    pub dtype: String,
    pub color: String,
    /// What the caller feeds: raw pixel values 0..=255 as float32.
    pub value_range: [f32; 2],
    pub normalization: Normalization,
}

/// The input normalisation and where it happens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// `v = x * scale + offset` per channel value x.
    pub scale: f32,
    pub offset: f32,
    /// True: the models apply it themselves (feed raw pixels).
    pub in_graph: bool,
}

/// Output tensor description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    /// `[-1, E]`.
    pub shape: Vec<i64>,
    pub dtype: String,
    pub l2_normalized: bool,
}

/// How the device's conformal predictor is set up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcpSpec {
    /// Nonconformity measure, e.g. `{"kind": "nearest_centroid"}`.
    pub ncm: crate::icp::NcmKind,
    pub mondrian: bool,
    /// p-value rule, e.g. `{"kind": "standard"}`: (count + 1) / (n + 1).
    pub p_values: crate::icp::PValueMode,
    /// Significance level the bundle was evaluated at (a device may choose another).
    pub epsilon: f64,
    /// Tensor in the reference file holding the calibration scores of `ncm`.
    pub calibration_scores: String,
    pub n_calibration: u64,
    /// How the calibration split was drawn (absent in bundles made before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationInfo>,
}

/// Where a bundle's calibration scores came from: what a user needs to judge how far the
/// split's error rates carry to a device (frames of one group are alike, so the honest
/// sample size of the calibration and validation figures is the number of groups).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationInfo {
    /// What the splits were dealt by: every example of a group went to one split
    /// (`track`: every frame of one physical sign).
    pub grouped_by: String,
    /// Distinct groups among the calibration examples.
    pub groups: u64,
    /// Tensor in the reference file with every calibration example's label-free score:
    /// the label-free drift monitor's reference, and which score it tests
    /// (`calibration_centroid_distance`, or `calibration_label_free.<measure>` for the
    /// min-score kind of earlier bundles; see `shared::icp::novelty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_free_scores: Option<String>,
}

/// One model file and how it was checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub file: String,
    /// `onnx`, `tflite`, `tensorrt`.
    pub format: String,
    /// `float32`, `int8`, `float16`.
    pub precision: String,
    /// ONNX opset (ONNX only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opset: Option<i64>,
    /// GPU and TensorRT version (TensorRT only: engines are specific to both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Largest |difference| to the trained network on the golden inputs at export.
    pub max_abs_diff: f64,
    /// Whether the golden-input parity check applies with [`GoldenSpec::tolerance`]
    /// (false for quantised models, which are judged by accuracy instead).
    pub parity_checked: bool,
}

/// Golden inputs for the on-device self-test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSpec {
    pub file: String,
    pub count: u64,
    /// Largest allowed |difference| of a float32 model's output to `expected`.
    pub tolerance: f64,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub model_id: String,
    pub run_id: String,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    pub producer: String,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// The network's architecture as the trainer records it.
    pub arch: serde_json::Value,
    pub class_names: Vec<String>,
    pub icp: IcpSpec,
    pub models: Vec<ModelEntry>,
    pub reference: String,
    pub golden: GoldenSpec,
    /// Final metrics of the run (and of the exported models), by name.
    pub metrics: BTreeMap<String, f64>,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The file entry with `role`, if any.
    pub fn file_with_role(&self, role: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.role == role)
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A file entry for `dir/name`, hashing the file.
pub fn file_entry(dir: &Path, name: &str, role: &str) -> Result<FileEntry, BundleError> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|source| BundleError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(FileEntry {
        name: name.to_string(),
        role: role.to_string(),
        sha256: sha256_hex(&bytes),
        bytes: bytes.len() as u64,
    })
}

/// Writes `manifest.json` (pretty JSON, trailing newline) and `manifest.sig` into `dir`;
/// returns the manifest bytes that were signed.
pub fn write_signed(
    dir: &Path,
    manifest: &Manifest,
    key: &ed25519_dalek::SigningKey,
) -> Result<Vec<u8>, BundleError> {
    let mut bytes = serde_json::to_vec_pretty(manifest).map_err(|e| BundleError::Manifest {
        path: dir.join(MANIFEST_FILE),
        what: e.to_string(),
    })?;
    bytes.push(b'\n');
    let sig = keys::sign(key, &bytes);
    let io = |path: PathBuf| move |source| BundleError::Io { path, source };
    std::fs::write(dir.join(MANIFEST_FILE), &bytes).map_err(io(dir.join(MANIFEST_FILE)))?;
    std::fs::write(dir.join(SIGNATURE_FILE), sig).map_err(io(dir.join(SIGNATURE_FILE)))?;
    Ok(bytes)
}

/// A bundle whose signature, version, files and manifest have been checked, with the bytes
/// of its files exactly as they were hashed.
#[derive(Clone, Debug)]
pub struct VerifiedBundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// sha256 of the manifest bytes (what rollout commands name).
    pub manifest_sha256: String,
    /// File name -> the verified bytes; emptied by [`VerifiedBundle::release_files`].
    files: BTreeMap<String, Vec<u8>>,
}

impl VerifiedBundle {
    /// Where the file `name` was read from (for messages: the bytes come from
    /// [`VerifiedBundle::file`], never from this path).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The verified bytes of the listed file `name`.
    pub fn file(&self, name: &str) -> Result<&[u8], BundleError> {
        self.files
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| BundleError::NotVerified {
                name: name.to_string(),
            })
    }

    /// Takes the verified bytes of `name` out of the bundle (no copy).
    pub fn take_file(&mut self, name: &str) -> Result<Vec<u8>, BundleError> {
        self.files
            .remove(name)
            .ok_or_else(|| BundleError::NotVerified {
                name: name.to_string(),
            })
    }

    /// Frees the bytes of every file (once what is needed has been built from them).
    pub fn release_files(&mut self) {
        self.files.clear();
    }
}

/// A file name is a plain name of the bundle directory: ASCII letters, digits, `.`, `_`,
/// `-`, not starting with `.`, at most 255 bytes, and not the manifest or its signature.
fn check_name(name: &str, manifest: &Path) -> Result<(), BundleError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != MANIFEST_FILE
        && name != SIGNATURE_FILE;
    if ok {
        Ok(())
    } else {
        Err(BundleError::Manifest {
            path: manifest.to_path_buf(),
            what: format!(
                "file name {name:?} is not a plain file name of the bundle (letters, digits, '.', '_', '-'; not starting with '.')"
            ),
        })
    }
}

/// Reads the manifest without checking anything (for `inspect` of a bundle one cannot
/// verify). Unknown format versions are still refused, since their fields may mean
/// something else.
pub fn read_unverified(dir: &Path) -> Result<Manifest, BundleError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = files::read_bounded(&path, MAX_MANIFEST_BYTES, files::Links::Refuse)?;
    parse_manifest(&bytes, &path)
}

/// The first object key of `input` (a JSON path such as `icp.ncm.extra`) that `known`, the
/// manifest as this code serialises it, lacks. serde's `deny_unknown_fields` does not reach
/// into internally tagged enums (`icp.ncm`, `icp.p_values`), so this walks both trees.
fn unknown_key(input: &serde_json::Value, known: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (input, known) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            // an optional field given as null is the same as leaving it out
            None if v.is_null() => None,
            None => Some(join(k)),
            Some(w) => unknown_key(v, w, &join(k)),
        }),
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| unknown_key(v, w, &format!("{at}[{i}]"))),
        _ => None,
    }
}

fn parse_manifest(bytes: &[u8], path: &Path) -> Result<Manifest, BundleError> {
    let bad = |what: String| BundleError::Manifest {
        path: path.to_path_buf(),
        what,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let format = value.get("format").and_then(|v| v.as_str());
    if format != Some(FORMAT) {
        return Err(bad(format!("format is {format:?}, expected {FORMAT:?}")));
    }
    let version = value
        .get("format_version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("format_version is missing or not a number".into()))?;
    if version != u64::from(FORMAT_VERSION) {
        return Err(BundleError::UnknownVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let manifest: Manifest =
        serde_json::from_value(value.clone()).map_err(|e| bad(format!("bad manifest: {e}")))?;
    // a number beyond f32's range reads as infinity, which JSON cannot hold (serde_json
    // writes null): such a manifest would not read back once written
    let input = &manifest.input;
    for (field, v) in [
        ("input.value_range[0]", input.value_range[0]),
        ("input.value_range[1]", input.value_range[1]),
        ("input.normalization.scale", input.normalization.scale),
        ("input.normalization.offset", input.normalization.offset),
    ] {
        if !v.is_finite() {
            return Err(bad(format!(
                "{field} is beyond the range of a 32-bit float"
            )));
        }
    }
    let known = serde_json::to_value(&manifest).map_err(|e| bad(e.to_string()))?;
    if let Some(field) = unknown_key(&value, &known, "") {
        return Err(bad(format!(
            "unknown field {field} (format version {FORMAT_VERSION} has no such field)"
        )));
    }
    Ok(manifest)
}

/// The manifest in `bytes` (read from `path`, for messages), checked as far as it can be
/// without the files it lists: format and version, no unknown field, every file name a
/// plain name of the bundle listed once with a lowercase hex sha256 and at most
/// [`MAX_FILE_BYTES`], and a plain `model_id`. For a downloader, which must know what it
/// may fetch before fetching it; [`verify`] still checks everything once the files are
/// there (the caller checks the signature over `bytes` first).
pub fn manifest_from_bytes(bytes: &[u8], path: &Path) -> Result<Manifest, BundleError> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(BundleError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_MANIFEST_BYTES,
            found: bytes.len() as u64,
        });
    }
    let manifest = parse_manifest(bytes, path)?;
    let invalid = |field: String, what: String| BundleError::Invalid {
        path: path.to_path_buf(),
        field,
        what,
    };
    if !validate::plain_id(&manifest.model_id) {
        return Err(invalid(
            "model_id".into(),
            format!("{:?} is not a plain identifier", manifest.model_id),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, f) in manifest.files.iter().enumerate() {
        check_name(&f.name, path)?;
        if !names.insert(f.name.as_str()) {
            return Err(invalid(
                format!("files[{i}].name"),
                format!("{:?} is listed twice", f.name),
            ));
        }
        let hex = f.sha256.len() == 64
            && f.sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(invalid(
                format!("files[{i}].sha256"),
                "is not 64 lowercase hex digits".into(),
            ));
        }
        if f.bytes > MAX_FILE_BYTES {
            return Err(BundleError::TooLarge {
                path: path.with_file_name(&f.name),
                limit: MAX_FILE_BYTES,
                found: f.bytes,
            });
        }
    }
    Ok(manifest)
}

/// Verifies the bundle in `dir` against `key`: signature over the exact manifest bytes,
/// format version, every file's size and sha256 (each file opened once, as a regular file,
/// its read bounded by the manifest's size), no unlisted file, and the manifest's
/// consistency with the files it describes ([`validate::validate`]). The returned bundle
/// holds the bytes that were hashed.
pub fn verify(dir: &Path, key: &VerifyingKey) -> Result<VerifiedBundle, BundleError> {
    let mpath = dir.join(MANIFEST_FILE);
    let spath = dir.join(SIGNATURE_FILE);
    let bytes = files::read_bounded(&mpath, MAX_MANIFEST_BYTES, files::Links::Refuse)?;
    // one byte more than a signature: a longer file is reported with its size
    let sig = files::read_bounded(&spath, 64, files::Links::Refuse).map_err(|e| match e {
        BundleError::TooLarge { path, found, .. } => BundleError::Manifest {
            path,
            what: format!("is {found} bytes, an ed25519 signature is 64"),
        },
        e => e,
    })?;
    let sig: [u8; 64] = sig
        .as_slice()
        .try_into()
        .map_err(|_| BundleError::Manifest {
            path: spath.clone(),
            what: format!("is {} bytes, an ed25519 signature is 64", sig.len()),
        })?;
    key.verify_strict(&bytes, &Signature::from_bytes(&sig))
        .map_err(|_| BundleError::BadSignature {
            path: spath.clone(),
        })?;
    let manifest = parse_manifest(&bytes, &mpath)?;
    // names before any file is opened: nothing outside the directory is ever touched
    for f in &manifest.files {
        check_name(&f.name, &mpath)?;
    }
    let mut contents = BTreeMap::new();
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let data = files::read_listed(&path, f.bytes, MAX_FILE_BYTES)?;
        let digest = sha256_hex(&data);
        if digest != f.sha256 {
            return Err(BundleError::Digest {
                path,
                expected: f.sha256.clone(),
                found: digest,
            });
        }
        if contents.insert(f.name.clone(), data).is_some() {
            return Err(BundleError::Manifest {
                path: mpath.clone(),
                what: format!("file {:?} is listed twice in files[]", f.name),
            });
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|source| BundleError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| BundleError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name == MANIFEST_FILE || name == SIGNATURE_FILE {
            continue;
        }
        if !contents.contains_key(&name) {
            return Err(BundleError::Unlisted { path: entry.path() });
        }
    }
    validate::validate(&manifest, &mpath, |name| {
        contents.get(name).map(Vec::as_slice)
    })?;
    Ok(VerifiedBundle {
        dir: dir.to_path_buf(),
        manifest_sha256: sha256_hex(&bytes),
        manifest,
        files: contents,
    })
}

#[cfg(test)]
mod tests;
