//! What the fuzz targets and the seed generator share: the fixed test keys, the sample
//! commands and bundles the seeds are made of, the split of one fuzz input into several
//! files, and the invariants checked on whatever a parser accepts.
//!
//! Keys are derived from constant seeds, so seeds signed once stay valid: the command key
//! from `[7; 32]`, the bundle key from `[1; 32]`, a stranger's key from `[9; 32]`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use shared::bundle::{self, golden::Golden, FileEntry, Manifest};
use shared::command::{self, Action, Command, CommandError, Envelope, Target, TrustedKeys};

/// What a command key signs: this prefix, then the command's bytes (shared::command's
/// `DOMAIN`, private there; a change there shows up here as a failed round trip).
pub const COMMAND_DOMAIN: &[u8] = b"edgecp-command-v1\n";

/// The device's command key.
pub fn command_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The device's bundle key (a different key, as `TrustedKeys::check` demands).
pub fn bundle_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

/// A key the device does not know.
pub fn stranger_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

/// The keys the fuzzed device trusts.
pub fn trusted_keys() -> TrustedKeys {
    let keys = TrustedKeys {
        bundle: vec![bundle_key().verifying_key()],
        command: vec![command_key().verifying_key()],
    };
    keys.check().expect("the fuzz keys are a valid configuration");
    keys
}

pub fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// `DOMAIN || bytes`.
pub fn signed_message(bytes: &[u8]) -> Vec<u8> {
    [COMMAND_DOMAIN, bytes].concat()
}

/// An envelope around arbitrary command bytes, signed by `key` over `message(bytes)`.
pub fn envelope(bytes: &[u8], key: &SigningKey, message: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let sig: Signature = key.sign(&message(bytes));
    serde_json::to_vec(&Envelope {
        command: b64().encode(bytes),
        signature: b64().encode(sig.to_bytes()),
    })
    .expect("an envelope serialises")
}

/// Whether `envelope` (JSON) carries a signature of the command key over its command:
/// checked here independently of `command::open`.
pub fn signed_by_command_key(envelope: &[u8]) -> bool {
    let Ok(env) = serde_json::from_slice::<Envelope>(envelope) else {
        return false;
    };
    let (Ok(bytes), Ok(sig)) = (b64().decode(&env.command), b64().decode(&env.signature)) else {
        return false;
    };
    let Ok(sig) = <[u8; 64]>::try_from(sig.as_slice()) else {
        return false;
    };
    command_key()
        .verifying_key()
        .verify_strict(&signed_message(&bytes), &Signature::from_bytes(&sig))
        .is_ok()
}

/// The invariants of a command that opened: it passes `check`, and signing it again with
/// the command key gives an envelope that opens to an equal command.
pub fn assert_opened_command(cmd: &Command) {
    if let Err(e) = cmd.check() {
        panic!("an opened command fails check(): {e}: {cmd:?}");
    }
    let env = cmd
        .sign(&command_key())
        .unwrap_or_else(|e| panic!("an opened command cannot be signed again: {e}: {cmd:?}"));
    let bytes = serde_json::to_vec(&env).expect("an envelope serialises");
    match command::open(&bytes, &trusted_keys()) {
        Ok(again) => assert_eq!(&again, cmd, "re-signed command opens to another command"),
        Err(e) => panic!(
            "re-signed command refused ({}): {e}: {cmd:?}",
            e.reason()
        ),
    }
}

/// Error values are printed by the device: their text must not panic either.
pub fn touch_error(e: &CommandError) {
    let _ = e.reason();
    let _ = e.to_string();
}

/// Splits one fuzz input into `N` parts: each but the last is preceded by its length as a
/// u16 (little-endian; a length beyond the input takes what is left), the last part is the
/// rest. Mutations of a length shift the boundary, which libFuzzer handles well enough.
pub fn split<const N: usize>(mut data: &[u8]) -> [&[u8]; N] {
    let mut parts = [&[][..]; N];
    for part in parts.iter_mut().take(N - 1) {
        if data.len() < 2 {
            *part = data;
            data = &[];
            continue;
        }
        let n = usize::from(u16::from_le_bytes([data[0], data[1]]));
        data = &data[2..];
        let n = n.min(data.len());
        *part = &data[..n];
        data = &data[n..];
    }
    parts[N - 1] = data;
    parts
}

/// The inverse of [`split`] (for seeds).
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![];
    for (i, p) in parts.iter().enumerate() {
        if i + 1 < parts.len() {
            let n = u16::try_from(p.len()).expect("a seed part fits a u16 length");
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(p);
    }
    out
}

pub const MANIFEST_PATH: &str = "bundle/manifest.json";

/// `bundle::manifest_from_bytes`, and on success the invariants it promises: format and
/// version, plain model_id, every file name plain and listed once with a lowercase hex
/// sha256 and at most MAX_FILE_BYTES; and the manifest, serialised again (compact, and
/// pretty as `write_signed` writes it), is accepted again as the same manifest.
pub fn manifest_checked(bytes: &[u8]) -> Option<Manifest> {
    let path = Path::new(MANIFEST_PATH);
    let m = match bundle::manifest_from_bytes(bytes, path) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.to_string();
            return None;
        }
    };
    assert_eq!(m.format, bundle::FORMAT);
    assert_eq!(m.format_version, bundle::FORMAT_VERSION);
    assert!(
        plain(&m.model_id) && m.model_id.len() <= 128,
        "accepted model_id {:?}",
        m.model_id
    );
    let mut names = std::collections::BTreeSet::new();
    for f in &m.files {
        assert!(
            plain(&f.name)
                && f.name.len() <= 255
                && f.name != bundle::MANIFEST_FILE
                && f.name != bundle::SIGNATURE_FILE,
            "accepted file name {:?}",
            f.name
        );
        assert!(names.insert(f.name.as_str()), "{:?} listed twice", f.name);
        assert!(
            f.sha256.len() == 64 && f.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "accepted sha256 {:?}",
            f.sha256
        );
        assert!(f.bytes <= bundle::MAX_FILE_BYTES);
    }
    let mut pretty = serde_json::to_vec_pretty(&m).expect("an accepted manifest serialises");
    pretty.push(b'\n');
    let compact = serde_json::to_vec(&m).expect("an accepted manifest serialises");
    for again in [pretty, compact] {
        match bundle::manifest_from_bytes(&again, path) {
            Ok(m2) => assert!(
                same_manifest(&m, &m2),
                "re-serialised manifest reads as another one:\n{m:?}\n{m2:?}"
            ),
            Err(e) => panic!(
                "an accepted manifest, serialised again, is refused: {e}\n{}",
                String::from_utf8_lossy(&again)
            ),
        }
    }
    Some(m)
}

/// The same manifest, compared as JSON trees: integers, strings, booleans and structure
/// exactly, floats within a millionth. serde_json's default float parsing (without its
/// `float_roundtrip` feature) can read its own shortest output one ULP off, e.g.
/// 0.021844674407370954 as 0.02184467440737095; harmless for what a manifest's floats mean,
/// so not asserted here.
fn same_manifest(a: &Manifest, b: &Manifest) -> bool {
    let tree = |m: &Manifest| serde_json::to_value(m).expect("a manifest serialises");
    same_json(&tree(a), &tree(b))
}

fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let d = (x - y).abs();
            d <= 1e-6 * x.abs().max(y.abs()) || d < 1e-37
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_json(v, w))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x
                    .iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn plain(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Golden::parse, and on success: the data is consistent and writes back to a file that
/// reads as the same data.
pub fn golden_checked(bytes: &[u8]) -> Option<Golden> {
    let g = Golden::parse(bytes, "golden.safetensors").ok()?;
    let n = g.count();
    assert!(n > 0);
    assert_eq!(g.inputs.len(), n * g.side * g.side * 3);
    assert_eq!(g.expected.len(), n * g.dim);
    let again = g
        .to_safetensors()
        .unwrap_or_else(|e| panic!("accepted golden data cannot be written: {e}"));
    let g2 = Golden::parse(&again, "golden.safetensors").expect("written golden data reads");
    let bits = |g: &Golden| g.expected.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(
        g.side == g2.side && g.dim == g2.dim && g.inputs == g2.inputs && g.labels == g2.labels,
        "golden data changes through a write"
    );
    assert_eq!(bits(&g), bits(&g2), "golden outputs change through a write");
    Some(g)
}

// ---------------------------------------------------------------------------------------
// Samples the seeds are made of (the formats of docs/BUNDLE.md and shared's tests).

/// A valid rollout command.
pub fn sample_command(target: Target, action: Action) -> Command {
    Command {
        format: command::FORMAT.into(),
        format_version: command::FORMAT_VERSION,
        rollout_id: "r-2024-06-01.1".into(),
        fleet: "lab".into(),
        target,
        sequence: 7,
        not_before_ms: 1_717_200_000_000,
        not_after_ms: 1_717_286_400_000,
        action,
    }
}

pub fn sample_rollout() -> Action {
    Action::Rollout {
        model_id: "r1-0123abcd".into(),
        bundle: "s3://edgecp/models/r1-0123abcd".into(),
        manifest_sha256: "ab".repeat(32),
        bundle_bytes: 123_456,
        model_created_ms: 1_717_100_000_000,
    }
}

/// Every target kind with both actions.
pub fn sample_commands() -> Vec<(&'static str, Command)> {
    vec![
        ("rollout_all", sample_command(Target::All, sample_rollout())),
        (
            "rollout_percent",
            sample_command(Target::Percent { percent: 10 }, sample_rollout()),
        ),
        (
            "rollout_devices",
            sample_command(
                Target::Devices {
                    devices: vec!["dev-1".into(), "cam_02".into(), "a.b-c".into()],
                },
                sample_rollout(),
            ),
        ),
        ("rollback_all", sample_command(Target::All, Action::Rollback)),
        (
            "rollback_devices",
            sample_command(
                Target::Devices {
                    devices: vec!["dev-1".into()],
                },
                Action::Rollback,
            ),
        ),
    ]
}

pub const SIDE: usize = 2;
pub const DIM: usize = 4;
pub const N_CAL: usize = 3;
pub const CLASSES: usize = 2;

fn f32s(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn u16s(v: impl IntoIterator<Item = u16>) -> Vec<u8> {
    v.into_iter().flat_map(u16::to_le_bytes).collect()
}

/// reference.safetensors for `ncm`: centroids, training embeddings and labels, calibration
/// labels and scores (as the trainer writes it).
pub fn reference_file(ncm_key: &str) -> Vec<u8> {
    let centroids = f32s((0..CLASSES * DIM).map(|i| i as f32 * 0.25));
    let train = f32s((0..4 * DIM).map(|i| (i as f32).sin()));
    let train_labels = u16s([0, 1, 0, 1]);
    let cal_labels = u16s([0, 1, 1]);
    let scores: Vec<u8> = (0..N_CAL).flat_map(|i| (i as f64 * 0.5).to_le_bytes()).collect();
    let scores_name = format!("calibration_scores.{ncm_key}");
    let views = vec![
        (
            "centroids",
            TensorView::new(Dtype::F32, vec![CLASSES, DIM], &centroids).unwrap(),
        ),
        (
            "train_embeddings",
            TensorView::new(Dtype::F32, vec![4, DIM], &train).unwrap(),
        ),
        (
            "train_labels",
            TensorView::new(Dtype::U16, vec![4], &train_labels).unwrap(),
        ),
        (
            "calibration_labels",
            TensorView::new(Dtype::U16, vec![N_CAL], &cal_labels).unwrap(),
        ),
        (
            scores_name.as_str(),
            TensorView::new(Dtype::F64, vec![N_CAL], &scores).unwrap(),
        ),
    ];
    safetensors::serialize(views, None).unwrap()
}

/// golden.safetensors with two inputs.
pub fn golden_file() -> Vec<u8> {
    Golden {
        side: SIDE,
        dim: DIM,
        inputs: (0..2 * SIDE * SIDE * 3).map(|v| v as u8).collect(),
        labels: vec![1, 0],
        expected: vec![0.5; 2 * DIM],
    }
    .to_safetensors()
    .unwrap()
}

fn entry(name: &str, role: &str, bytes: &[u8]) -> FileEntry {
    FileEntry {
        name: name.into(),
        role: role.into(),
        sha256: bundle::sha256_hex(bytes),
        bytes: bytes.len() as u64,
    }
}

/// A manifest as `exporter bundle` writes it (docs/BUNDLE.md), with its reference and
/// golden files.
pub fn sample_bundle(ncm: shared::icp::NcmKind, mondrian: bool) -> (Manifest, Vec<u8>, Vec<u8>) {
    use shared::bundle::*;
    let reference = reference_file(&ncm.key());
    let golden = golden_file();
    let onnx: Vec<u8> = (0..40).map(|i| (i * 7) as u8).collect();
    let m = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        model_id: "r1-0123abcd".into(),
        run_id: "r1".into(),
        created_ms: 1_717_100_000_000,
        producer: "edgecp-exporter 0.1.0".into(),
        input: InputSpec {
            name: "input".into(),
            shape: vec![-1, SIDE as i64, SIDE as i64, 3],
            layout: "NHWC".into(),
            dtype: "float32".into(),
            color: "RGB".into(),
            value_range: [0.0, 255.0],
            normalization: Normalization {
                scale: 1.0 / 255.0,
                offset: -0.5,
                in_graph: true,
            },
        },
        output: OutputSpec {
            name: "embedding".into(),
            shape: vec![-1, DIM as i64],
            dtype: "float32".into(),
            l2_normalized: true,
        },
        arch: serde_json::json!({"side": SIDE, "embedding_dim": DIM, "batch_norm": true,
            "l2_normalize": true, "dropout": 0.1, "input": "rgb"}),
        class_names: vec!["stop".into(), "yield".into()],
        icp: IcpSpec {
            ncm,
            mondrian,
            p_values: if mondrian {
                shared::icp::PValueMode::Smoothed { seed: 42 }
            } else {
                shared::icp::PValueMode::Standard
            },
            epsilon: 0.05,
            calibration_scores: format!("calibration_scores.{}", ncm.key()),
            n_calibration: N_CAL as u64,
            calibration: None,
        },
        models: vec![
            ModelEntry {
                file: "model.onnx".into(),
                format: "onnx".into(),
                precision: "float32".into(),
                opset: Some(13),
                target: None,
                max_abs_diff: 1e-6,
                parity_checked: true,
            },
            ModelEntry {
                file: "model.int8.tflite".into(),
                format: "tflite".into(),
                precision: "int8".into(),
                opset: None,
                target: None,
                max_abs_diff: 0.02,
                parity_checked: false,
            },
        ],
        reference: "reference.safetensors".into(),
        golden: GoldenSpec {
            file: "golden.safetensors".into(),
            count: 2,
            tolerance: 1e-4,
        },
        metrics: BTreeMap::from([
            ("validation_nc_accuracy".to_string(), 0.93),
            ("icp_error_eps050".to_string(), 0.048),
        ]),
        files: vec![
            entry("model.onnx", "onnx", &onnx),
            entry("model.int8.tflite", "tflite_int8", &onnx[..20]),
            entry("reference.safetensors", "reference", &reference),
            entry("golden.safetensors", "golden", &golden),
        ],
    };
    (m, reference, golden)
}

/// The files `validate` may ask for: the golden and reference bytes under the names the
/// manifest gives them, every other listed file empty (validate does not read models).
pub fn validate_files<'a>(
    m: &Manifest,
    golden: &'a [u8],
    reference: &'a [u8],
) -> BTreeMap<String, &'a [u8]> {
    let mut files: BTreeMap<String, &'a [u8]> =
        m.files.iter().map(|f| (f.name.clone(), &[][..])).collect();
    for (name, bytes) in [(&m.reference, reference), (&m.golden.file, golden)] {
        if let Some(slot) = files.get_mut(name) {
            *slot = bytes;
        }
    }
    files
}
