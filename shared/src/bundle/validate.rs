//! A signed manifest can still say impossible things: a bug in an exporter, or a signing
//! key used carelessly, and a device would load a model whose self-test is disabled or
//! whose prediction sets hold a class that does not exist. [`validate`] checks the manifest
//! against itself and against the files it describes, with everything short of running a
//! model (shapes, counts, names, tolerances, the calibration scores). `verify` calls it, so
//! the exporter's `verify`, `edge-agent verify` and every load of the agent run the same
//! checks. The rules are listed in docs/BUNDLE.md ("What a valid manifest says").

use std::collections::BTreeSet;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::golden::Golden;
use super::{BundleError, Manifest};
use crate::icp::NcmKind;

/// Largest `golden.tolerance`: ten times what the exporter writes (1e-4). A larger one would
/// let a model that computes something else pass its self-test.
pub const MAX_GOLDEN_TOLERANCE: f64 = 1e-3;
/// Largest input side (pixels).
pub const MAX_SIDE: i64 = 1024;
/// Largest embedding width.
pub const MAX_EMBEDDING_DIM: i64 = 1 << 16;

/// What each model format's file is listed as in `files[]`.
fn role_of(format: &str, precision: &str) -> Option<&'static str> {
    match (format, precision) {
        ("onnx", "float32" | "float16" | "int8") => Some("onnx"),
        ("tflite", "float32" | "float16") => Some("tflite"),
        ("tflite", "int8") => Some("tflite_int8"),
        ("tensorrt", "float32" | "float16" | "int8") => Some("tensorrt"),
        _ => None,
    }
}

/// The roles a file may have.
const ROLES: [&str; 6] = [
    "onnx",
    "tflite",
    "tflite_int8",
    "tensorrt",
    "reference",
    "golden",
];

/// A plain identifier: it becomes a folder name on devices (`models/<model_id>/`).
pub(crate) fn plain_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks `m` (read from `path`) against itself and against the files it lists, whose
/// verified bytes `file` returns by name. Errors name the field and what was expected.
pub fn validate<'a>(
    m: &Manifest,
    path: &Path,
    file: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<(), BundleError> {
    let bad = |field: &str, what: String| BundleError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        what,
    };
    if !plain_id(&m.model_id) {
        return Err(bad(
            "model_id",
            format!(
                "{:?} is not a plain identifier (1-128 letters, digits, '.', '_', '-')",
                m.model_id
            ),
        ));
    }
    if m.run_id.is_empty() {
        return Err(bad("run_id", "is empty".into()));
    }

    // input and output tensors
    let side = match m.input.shape[..] {
        [-1, s, s2, 3] if s == s2 && (1..=MAX_SIDE).contains(&s) => s as usize,
        ref other => {
            return Err(bad(
                "input.shape",
                format!("{other:?} is not [-1, S, S, 3] with 1 <= S <= {MAX_SIDE}"),
            ))
        }
    };
    for (field, got, want) in [
        ("input.layout", &m.input.layout, "NHWC"),
        ("input.dtype", &m.input.dtype, "float32"),
        ("input.color", &m.input.color, "RGB"),
        ("output.dtype", &m.output.dtype, "float32"),
    ] {
        if got != want {
            return Err(bad(
                field,
                format!("is {got:?}, version 1 knows only {want:?}"),
            ));
        }
    }
    if m.input.value_range != [0.0, 255.0] {
        return Err(bad(
            "input.value_range",
            format!(
                "is {:?}, version 1 feeds raw pixels [0, 255]",
                m.input.value_range
            ),
        ));
    }
    let n = &m.input.normalization;
    if !(n.scale.is_finite() && n.scale != 0.0 && n.offset.is_finite()) {
        return Err(bad(
            "input.normalization",
            format!(
                "scale {} and offset {} must be finite, scale non-zero",
                n.scale, n.offset
            ),
        ));
    }
    let dim = match m.output.shape[..] {
        [-1, e] if (1..=MAX_EMBEDDING_DIM).contains(&e) => e as usize,
        ref other => {
            return Err(bad(
                "output.shape",
                format!("{other:?} is not [-1, E] with 1 <= E <= {MAX_EMBEDDING_DIM}"),
            ))
        }
    };

    // classes
    let classes = m.class_names.len();
    if classes == 0 || classes > usize::from(u16::MAX) + 1 {
        return Err(bad(
            "class_names",
            format!("has {classes} names, expected 1 to 65536"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, c) in m.class_names.iter().enumerate() {
        if c.trim().is_empty() || c.chars().any(char::is_control) {
            return Err(bad(
                &format!("class_names[{i}]"),
                format!("{c:?} is empty or holds control characters"),
            ));
        }
        if !seen.insert(c.as_str()) {
            return Err(bad(
                &format!("class_names[{i}]"),
                format!("{c:?} appears twice"),
            ));
        }
    }

    // files[]
    let mut names = BTreeSet::new();
    for (i, f) in m.files.iter().enumerate() {
        if !names.insert(f.name.as_str()) {
            return Err(bad(
                &format!("files[{i}].name"),
                format!("{:?} is listed twice", f.name),
            ));
        }
        if !ROLES.contains(&f.role.as_str()) {
            return Err(bad(
                &format!("files[{i}].role"),
                format!("{:?} is not one of {ROLES:?}", f.role),
            ));
        }
        if f.sha256.len() != 64
            || !f
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad(
                &format!("files[{i}].sha256"),
                "is not 64 lowercase hex digits".into(),
            ));
        }
    }
    // every file a field names is one of files[], with the role that field implies
    let listed = |field: &str, name: &str, role: &str| -> Result<&'a [u8], BundleError> {
        let entry = m.files.iter().find(|f| f.name == name).ok_or_else(|| {
            bad(
                field,
                format!("{name:?} is not one of the files the manifest lists (files[])"),
            )
        })?;
        if entry.role != role {
            return Err(bad(
                field,
                format!(
                    "{name:?} is listed with role {:?}, expected {role:?}",
                    entry.role
                ),
            ));
        }
        file(name).ok_or_else(|| bad(field, format!("{name:?} was not verified")))
    };

    // models[]
    if m.models.is_empty() {
        return Err(bad(
            "models",
            "is empty: a bundle holds at least one model".into(),
        ));
    }
    let tolerance = m.golden.tolerance;
    if !(tolerance.is_finite() && tolerance > 0.0 && tolerance <= MAX_GOLDEN_TOLERANCE) {
        return Err(bad(
            "golden.tolerance",
            format!("{tolerance:e} is outside (0, {MAX_GOLDEN_TOLERANCE:e}]: a larger tolerance would not test the model"),
        ));
    }
    let mut model_files = BTreeSet::new();
    for (i, model) in m.models.iter().enumerate() {
        let field = format!("models[{i}]");
        let role = role_of(&model.format, &model.precision).ok_or_else(|| {
            bad(
                &field,
                format!(
                    "format {:?} with precision {:?} is not known (onnx, tflite, tensorrt; float32, float16, int8)",
                    model.format, model.precision
                ),
            )
        })?;
        listed(&format!("{field}.file"), &model.file, role)?;
        if !model_files.insert(model.file.as_str()) {
            return Err(bad(
                &format!("{field}.file"),
                format!("{:?} is described twice", model.file),
            ));
        }
        let d = model.max_abs_diff;
        if !(d.is_finite() && d >= 0.0) {
            return Err(bad(
                &format!("{field}.max_abs_diff"),
                format!("{d} is not a finite non-negative number"),
            ));
        }
        if model.parity_checked && (model.precision != "float32" || d > tolerance) {
            return Err(bad(
                &format!("{field}.parity_checked"),
                format!(
                    "a parity-checked model is float32 and within golden.tolerance {tolerance:e} at export (this one: {}, {d:e})",
                    model.precision
                ),
            ));
        }
    }

    // golden data: as many inputs as the manifest says, of the model's shapes
    let golden_bytes = listed("golden.file", &m.golden.file, "golden")?;
    let golden = Golden::parse(golden_bytes, &m.golden.file)
        .map_err(|e| bad("golden.file", e.to_string()))?;
    if golden.count() as u64 != m.golden.count {
        return Err(bad(
            "golden.count",
            format!(
                "is {}, {} holds {} inputs",
                m.golden.count,
                m.golden.file,
                golden.count()
            ),
        ));
    }
    if golden.side != side || golden.dim != dim {
        return Err(bad(
            "golden.file",
            format!(
                "{} holds {}x{} inputs with {} outputs, the manifest says {side}x{side} and {dim}",
                m.golden.file, golden.side, golden.side, golden.dim
            ),
        ));
    }
    if let Some(l) = golden.labels.iter().find(|&&l| usize::from(l) >= classes) {
        return Err(bad(
            "golden.file",
            format!("label {l} is not a class (the manifest names {classes})"),
        ));
    }
    if !golden.expected.iter().all(|v| v.is_finite()) {
        return Err(bad(
            "golden.file",
            "expected outputs hold a non-finite value".into(),
        ));
    }

    // reference data: the measure's data and calibration scores, counted
    let icp = &m.icp;
    if !(icp.epsilon > 0.0 && icp.epsilon < 1.0) {
        return Err(bad(
            "icp.epsilon",
            format!("{} is outside (0, 1)", icp.epsilon),
        ));
    }
    let scores_name = format!("calibration_scores.{}", icp.ncm.key());
    if icp.calibration_scores != scores_name {
        return Err(bad(
            "icp.calibration_scores",
            format!(
                "is {:?}, the scores of icp.ncm ({}) are {scores_name:?}",
                icp.calibration_scores,
                icp.ncm.name()
            ),
        ));
    }
    let rname = m.reference.as_str();
    let st = SafeTensors::deserialize(listed("reference", rname, "reference")?)
        .map_err(|e| bad("reference", format!("{rname}: not a safetensors file: {e}")))?;
    let tensor = |name: &str, dtype: Dtype| -> Result<Option<Vec<usize>>, BundleError> {
        match st.tensor(name) {
            Err(_) => Ok(None),
            Ok(t) if t.dtype() == dtype => Ok(Some(t.shape().to_vec())),
            Ok(t) => Err(bad(
                "reference",
                format!(
                    "{rname}: tensor {name:?} is {:?}, expected {dtype:?}",
                    t.dtype()
                ),
            )),
        }
    };
    let need = |name: &str, dtype: Dtype, why: &str| {
        tensor(name, dtype)?
            .ok_or_else(|| bad("reference", format!("{rname}: no tensor {name:?} ({why})")))
    };
    let scores_shape = need(&scores_name, Dtype::F64, "icp.calibration_scores")?;
    let n_cal = match scores_shape[..] {
        [n] if n > 0 => n,
        ref other => {
            return Err(bad(
                "icp.calibration_scores",
                format!("{rname}: {scores_name:?} has shape {other:?}, expected [M] with M >= 1"),
            ))
        }
    };
    if icp.n_calibration != n_cal as u64 {
        return Err(bad(
            "icp.n_calibration",
            format!(
                "is {}, {rname} holds {n_cal} calibration scores",
                icp.n_calibration
            ),
        ));
    }
    if let Some(c) = &icp.calibration {
        let name_ok = !c.grouped_by.is_empty()
            && c.grouped_by.len() <= 32
            && c.grouped_by
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_');
        if !name_ok {
            return Err(bad(
                "icp.calibration.grouped_by",
                format!(
                    "{:?}: expected a short lowercase name such as \"track\"",
                    c.grouped_by.chars().take(40).collect::<String>()
                ),
            ));
        }
        if !(1..=n_cal as u64).contains(&c.groups) {
            return Err(bad(
                "icp.calibration.groups",
                format!(
                    "is {}, expected 1..={n_cal} (one group or more per calibration score)",
                    c.groups
                ),
            ));
        }
        if let Some(free) = &c.label_free_scores {
            let key = icp.ncm.key();
            if crate::icp::LabelFreeKind::of_tensor(free, &key).is_none() {
                return Err(bad(
                    "icp.calibration.label_free_scores",
                    format!(
                        "is {free:?}, expected {:?} or {:?} (the label-free scores of icp.ncm)",
                        crate::icp::LabelFreeKind::CentroidDistance.tensor(&key),
                        crate::icp::LabelFreeKind::MinScore.tensor(&key),
                    ),
                ));
            }
            let shape = need(free, Dtype::F64, "icp.calibration.label_free_scores")?;
            if shape != [n_cal] {
                return Err(bad(
                    "icp.calibration.label_free_scores",
                    format!("{rname}: {free:?} has shape {shape:?}, expected [{n_cal}] (one per calibration score)"),
                ));
            }
        }
    }
    let scores = st
        .tensor(&scores_name)
        .map_err(|e| bad("icp.calibration_scores", e.to_string()))?;
    if scores
        .data()
        .chunks_exact(8)
        .any(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]).is_nan())
    {
        return Err(bad(
            "icp.calibration_scores",
            format!("{rname}: {scores_name:?} holds NaN"),
        ));
    }
    let u16s = |name: &str| -> Result<Vec<u16>, BundleError> {
        let t = st
            .tensor(name)
            .map_err(|e| bad("reference", format!("{rname}: {name}: {e}")))?;
        Ok(t.data()
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    };
    let check_labels = |name: &str, expected_len: usize| -> Result<Vec<u16>, BundleError> {
        let shape = need(name, Dtype::U16, "labels")?;
        if shape != [expected_len] {
            return Err(bad(
                "reference",
                format!("{rname}: {name:?} has shape {shape:?}, expected [{expected_len}]"),
            ));
        }
        let labels = u16s(name)?;
        if let Some(l) = labels.iter().find(|&&l| usize::from(l) >= classes) {
            return Err(bad(
                "class_names",
                format!(
                    "{rname}: {name:?} holds label {l}, but the manifest names {classes} classes"
                ),
            ));
        }
        Ok(labels)
    };
    if icp.mondrian || tensor("calibration_labels", Dtype::U16)?.is_some() {
        check_labels("calibration_labels", n_cal)?;
    }
    let centroids = tensor("centroids", Dtype::F32)?;
    if let Some(shape) = &centroids {
        if shape[..] != [classes, dim] {
            return Err(bad(
                "class_names",
                format!(
                    "{rname}: centroids have shape {shape:?}: {} classes of {} values, the manifest names {classes} classes of {dim}",
                    shape.first().copied().unwrap_or(0),
                    shape.get(1).copied().unwrap_or(0)
                ),
            ));
        }
    }
    let train = tensor("train_embeddings", Dtype::F32)?;
    if let Some(shape) = &train {
        let rows = match shape[..] {
            [r, e] if e == dim && r > 0 => r,
            _ => {
                return Err(bad(
                    "reference",
                    format!("{rname}: train_embeddings have shape {shape:?}, expected [N, {dim}]"),
                ))
            }
        };
        let labels = check_labels("train_labels", rows)?;
        // a class without a single training example would be a phantom in k-NN sets
        let mut present = vec![false; classes];
        for &l in &labels {
            present[usize::from(l)] = true;
        }
        if let Some(c) = present.iter().position(|p| !p) {
            return Err(bad(
                "class_names",
                format!(
                    "class {c} ({:?}) has no training example in {rname}: the manifest names {classes} classes, the reference data fewer",
                    m.class_names[c]
                ),
            ));
        }
        if let NcmKind::Knn { k } = icp.ncm {
            if k == 0 || k > rows {
                return Err(bad(
                    "icp.ncm",
                    format!("k = {k} for {rows} training embeddings"),
                ));
            }
        }
    }
    let centroid_distance = icp
        .calibration
        .as_ref()
        .and_then(|c| c.label_free_scores.as_deref())
        .is_some_and(|t| t == crate::icp::novelty::CENTROID_DISTANCE_TENSOR);
    if centroid_distance && centroids.is_none() {
        return Err(bad(
            "icp.calibration.label_free_scores",
            format!("the centroid-distance drift score needs centroids in {rname}"),
        ));
    }
    let needs = match icp.ncm {
        NcmKind::NearestCentroid => centroids.is_some(),
        NcmKind::Knn { .. } | NcmKind::NearestNeighbourRatio => train.is_some(),
    };
    if !needs {
        return Err(bad(
            "icp.ncm",
            format!(
                "{} needs {} in {rname}",
                icp.ncm.name(),
                match icp.ncm {
                    NcmKind::NearestCentroid => "centroids",
                    _ => "train_embeddings and train_labels",
                }
            ),
        ));
    }

    if let Some((k, v)) = m.metrics.iter().find(|(_, v)| !v.is_finite()) {
        return Err(bad(&format!("metrics.{k}"), format!("{v} is not finite")));
    }
    Ok(())
}
