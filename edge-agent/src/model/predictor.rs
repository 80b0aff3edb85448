//! Embeddings -> conformal prediction sets, with the bundle's calibration (shared::icp does
//! the scoring and the p-values; this module reads the bundle's reference data into it).

use safetensors::{Dtype, SafeTensors};
use serde::Serialize;
use shared::icp::{Calibration, IcpError, IcpPredictor, Ncm, NcmKind, PValueMode};

/// Why the conformal predictor could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum PredictorError {
    #[error("{file}: {what}")]
    Reference { file: String, what: String },
    #[error("conformal predictor: {0}")]
    Icp(#[from] IcpError),
    #[error(
        "unknown nonconformity measure {0:?} (nearest_centroid, knnK such as knn40, nn_ratio)"
    )]
    UnknownNcm(String),
}

/// Parses a measure name as [`NcmKind::key`] writes it (`knn` alone is k = 40).
pub fn parse_ncm(s: &str) -> Result<NcmKind, PredictorError> {
    match s {
        "nearest_centroid" | "centroid" => Ok(NcmKind::NearestCentroid),
        "nn_ratio" | "nearest_neighbour_ratio" => Ok(NcmKind::NearestNeighbourRatio),
        "knn" => Ok(NcmKind::KNN40),
        _ => s
            .strip_prefix("knn")
            .and_then(|k| k.parse().ok())
            .map(|k| NcmKind::Knn { k })
            .ok_or_else(|| PredictorError::UnknownNcm(s.to_string())),
    }
}

/// One input's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Answer {
    /// Class ids of the prediction set `{y : p_y > epsilon}`, ascending.
    pub set: Vec<u16>,
    /// Class names of the set.
    pub labels: Vec<String>,
    pub p_values: Vec<f64>,
    pub credibility: f64,
    pub confidence: f64,
    pub epsilon: f64,
    /// The input's label-free score (`Ncm::label_free_score`, in [0, 1]: higher is
    /// stranger), what the drift monitor tests.
    pub label_free: f64,
    /// With adaptive calibration (`--adaptive aci`): the level the set was cut at,
    /// `{y : p_y > level}`, which ACI moves so that the long-run error rate stays at
    /// `epsilon`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<f64>,
}

impl Answer {
    /// Cuts the set again at `level` (adaptive calibration).
    pub fn cut_at(&mut self, level: f64, class_names: &[String]) {
        self.set = (0..self.p_values.len())
            .filter(|&y| self.p_values[y] > level)
            .map(|y| y as u16)
            .collect();
        self.labels = self
            .set
            .iter()
            .map(|&c| class_names.get(usize::from(c)).cloned().unwrap_or_default())
            .collect();
        self.level = Some(level);
    }
}

/// A fitted measure with its calibration and the class names.
#[derive(Debug)]
pub struct Predictor {
    icp: IcpPredictor,
    class_names: Vec<String>,
    dim: usize,
    /// The calibration split's label-free scores (`calibration_label_free.<measure>`);
    /// `None` for bundles trained before they were written.
    label_free_calibration: Option<Vec<f64>>,
}

fn tensor<'a>(
    st: &'a SafeTensors<'a>,
    file: &str,
    name: &str,
    dtype: Dtype,
    rank: usize,
) -> Result<(Vec<usize>, &'a [u8]), PredictorError> {
    let bad = |what: String| PredictorError::Reference {
        file: file.to_string(),
        what,
    };
    let t = st
        .tensor(name)
        .map_err(|_| bad(format!("no tensor {name:?}")))?;
    if t.dtype() != dtype {
        return Err(bad(format!(
            "tensor {name:?} is {:?}, expected {dtype:?}",
            t.dtype()
        )));
    }
    if t.shape().len() != rank {
        return Err(bad(format!(
            "tensor {name:?} has shape {:?}, expected rank {rank}",
            t.shape()
        )));
    }
    Ok((t.shape().to_vec(), t.data()))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f64s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn u16s(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

impl Predictor {
    /// Builds the predictor from the bytes of `reference.safetensors` (`file` names it in
    /// errors): measure `ncm`, its calibration scores, pooled or Mondrian.
    pub fn from_reference(
        bytes: &[u8],
        file: &str,
        ncm: NcmKind,
        mondrian: bool,
        mode: PValueMode,
        class_names: Vec<String>,
        dim: usize,
    ) -> Result<Predictor, PredictorError> {
        let bad = |what: String| PredictorError::Reference {
            file: file.to_string(),
            what,
        };
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let n_classes = class_names.len();
        let fitted = match ncm {
            NcmKind::NearestCentroid => {
                let (shape, data) = tensor(&st, file, "centroids", Dtype::F32, 2)?;
                if shape != [n_classes, dim] {
                    return Err(bad(format!(
                        "centroids have shape {shape:?}, the manifest says [{n_classes}, {dim}]"
                    )));
                }
                Ncm::from_centroids(f32s(data), dim, n_classes)?
            }
            NcmKind::Knn { .. } | NcmKind::NearestNeighbourRatio => {
                let (shape, data) = tensor(&st, file, "train_embeddings", Dtype::F32, 2)?;
                if shape.get(1) != Some(&dim) {
                    return Err(bad(format!(
                        "train_embeddings have shape {shape:?}, embeddings have {dim} values"
                    )));
                }
                let (_, labels) = tensor(&st, file, "train_labels", Dtype::U16, 1)?;
                Ncm::fit(ncm, &f32s(data), &u16s(labels), dim, n_classes)?
            }
        };
        let scores_name = format!("calibration_scores.{}", ncm.key());
        let (_, scores) = tensor(&st, file, &scores_name, Dtype::F64, 1)?;
        let scores = f64s(scores);
        let calibration = if mondrian {
            let (_, labels) = tensor(&st, file, "calibration_labels", Dtype::U16, 1)?;
            Calibration::new(&scores, &u16s(labels), n_classes, true)?
        } else {
            Calibration::pooled(&scores, n_classes)?
        };
        let free_name = format!("calibration_label_free.{}", ncm.key());
        let label_free_calibration = if st.names().iter().any(|n| **n == free_name) {
            let (_, free) = tensor(&st, file, &free_name, Dtype::F64, 1)?;
            let free = f64s(free);
            if free.len() != scores.len() {
                return Err(bad(format!(
                    "{free_name} holds {} scores, {scores_name} {}: one per calibration example expected",
                    free.len(),
                    scores.len()
                )));
            }
            if let Some(v) = free.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                return Err(bad(format!(
                    "{free_name} holds {v}, expected label-free scores in [0, 1]"
                )));
            }
            Some(free)
        } else {
            None
        };
        Ok(Predictor {
            icp: IcpPredictor::new(fitted, calibration, mode)?,
            class_names,
            dim,
            label_free_calibration,
        })
    }

    pub fn icp(&self) -> &IcpPredictor {
        &self.icp
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    pub fn n_classes(&self) -> usize {
        self.class_names.len()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The calibration split's label-free scores, if the bundle has them.
    pub fn label_free_calibration(&self) -> Option<&[f64]> {
        self.label_free_calibration.as_deref()
    }

    /// Answers for `n x E` embeddings at significance level `epsilon`.
    pub fn answer(&self, embeddings: &[f32], epsilon: f64) -> Result<Vec<Answer>, IcpError> {
        let p = self.icp.predict(embeddings, epsilon)?;
        Ok((0..p.len())
            .map(|i| {
                let pr = p.prediction(i);
                Answer {
                    labels: pr
                        .set
                        .iter()
                        .map(|&c| self.class_names[usize::from(c)].clone())
                        .collect(),
                    set: pr.set,
                    p_values: pr.p_values,
                    credibility: pr.credibility,
                    confidence: pr.confidence,
                    epsilon,
                    label_free: pr.label_free,
                    level: None,
                }
            })
            .collect())
    }

    /// Nonconformity score of `embedding` (one row) for class `label`.
    pub fn score(&self, embedding: &[f32], label: u16) -> Result<f64, IcpError> {
        Ok(self.icp.ncm().label_scores(embedding, &[label])?[0])
    }
}
