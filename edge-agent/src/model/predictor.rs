//! Embeddings -> conformal prediction sets, with the bundle's calibration (shared::icp does
//! the scoring and the p-values; this module reads the bundle's reference data into it).

use safetensors::{Dtype, SafeTensors};
use serde::Serialize;
use shared::icp::{
    Calibration, CentroidDistance, IcpError, IcpPredictor, LabelFreeKind, Ncm, NcmKind, PValueMode,
};

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
    /// The input's label-free score (in [0, 1]: higher is stranger), what the drift
    /// monitor tests: the bundle's kind (`shared::icp::novelty`), the distance to the
    /// nearest centroid or the min score.
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
    /// The label-free score the drift monitor tests and its calibration scores; `None` for
    /// bundles trained before they were written.
    label_free: Option<LabelFree>,
    /// The other label-free score where the reference file holds it too (not served:
    /// `edge-agent drift` compares the two).
    other_label_free: Option<LabelFree>,
}

/// A label-free score of the bundle: its kind, the calibration split's scores and, for
/// the centroid distance, the centroids.
#[derive(Debug)]
pub struct LabelFree {
    kind: LabelFreeKind,
    calibration: Vec<f64>,
    distance: Option<CentroidDistance>,
}

impl LabelFree {
    pub fn kind(&self) -> LabelFreeKind {
        self.kind
    }

    /// The calibration split's scores, calibration order.
    pub fn calibration(&self) -> &[f64] {
        &self.calibration
    }

    /// The scores of `n x E` embeddings (the min score through `icp`'s measure).
    pub fn scores(&self, icp: &IcpPredictor, embeddings: &[f32]) -> Result<Vec<f64>, IcpError> {
        match &self.distance {
            Some(d) => d.scores(embeddings),
            None => icp.ncm().label_free_scores(embeddings),
        }
    }
}

/// Reads the label-free score `kind` (tensor `name`) for `n_cal` calibration examples.
fn read_label_free(
    st: &SafeTensors<'_>,
    file: &str,
    kind: LabelFreeKind,
    name: &str,
    n_cal: usize,
    dim: usize,
) -> Result<LabelFree, PredictorError> {
    let bad = |what: String| PredictorError::Reference {
        file: file.to_string(),
        what,
    };
    let (_, free) = tensor(st, file, name, Dtype::F64, 1)?;
    let free = f64s(free);
    if free.len() != n_cal {
        return Err(bad(format!(
            "{name} holds {} scores for {n_cal} calibration examples: one per example expected",
            free.len(),
        )));
    }
    if let Some(v) = free.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(bad(format!(
            "{name} holds {v}, expected label-free scores in [0, 1]"
        )));
    }
    let distance = match kind {
        LabelFreeKind::MinScore => None,
        LabelFreeKind::CentroidDistance => {
            let (shape, data) = tensor(st, file, "centroids", Dtype::F32, 2)?;
            if shape.get(1) != Some(&dim) {
                return Err(bad(format!(
                    "centroids have shape {shape:?}, embeddings have {dim} values"
                )));
            }
            Some(CentroidDistance::new(f32s(data), dim)?)
        }
    };
    Ok(LabelFree {
        kind,
        calibration: free,
        distance,
    })
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
    /// errors): measure `ncm`, its calibration scores, pooled or Mondrian, and the
    /// label-free score in tensor `label_free` (the manifest's
    /// `icp.calibration.label_free_scores`; `None`: the min score if the file has it).
    #[allow(clippy::too_many_arguments)]
    pub fn from_reference(
        bytes: &[u8],
        file: &str,
        ncm: NcmKind,
        mondrian: bool,
        mode: PValueMode,
        class_names: Vec<String>,
        dim: usize,
        label_free: Option<&str>,
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
        let key = ncm.key();
        let free_name =
            label_free.map_or_else(|| LabelFreeKind::MinScore.tensor(&key), str::to_string);
        let kind = LabelFreeKind::of_tensor(&free_name, &key).ok_or_else(|| {
            bad(format!(
                "label-free scores {free_name:?}: expected {:?} or {:?}",
                LabelFreeKind::CentroidDistance.tensor(&key),
                LabelFreeKind::MinScore.tensor(&key)
            ))
        })?;
        let present = st.names().iter().any(|n| **n == free_name);
        if label_free.is_some() && !present {
            return Err(bad(format!(
                "no tensor {free_name:?} (the manifest's label-free scores)"
            )));
        }
        let n_cal = scores.len();
        let label_free = if present {
            Some(read_label_free(&st, file, kind, &free_name, n_cal, dim)?)
        } else {
            None
        };
        // the other kind, for comparison only: a malformed one is left out, not an error
        let other_label_free = LabelFreeKind::ALL
            .into_iter()
            .find(|k| *k != kind)
            .and_then(|k| {
                let name = k.tensor(&key);
                st.names().iter().any(|n| **n == name).then_some((k, name))
            })
            .and_then(|(k, name)| read_label_free(&st, file, k, &name, n_cal, dim).ok());
        Ok(Predictor {
            icp: IcpPredictor::new(fitted, calibration, mode)?,
            class_names,
            dim,
            label_free,
            other_label_free,
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
        self.label_free.as_ref().map(|l| l.calibration.as_slice())
    }

    /// Every label-free score the reference file holds, the one the answers carry first.
    pub fn label_free_variants(&self) -> Vec<&LabelFree> {
        self.label_free
            .iter()
            .chain(self.other_label_free.iter())
            .collect()
    }

    /// Which label-free score the answers carry, if the bundle has one.
    pub fn label_free_kind(&self) -> Option<LabelFreeKind> {
        self.label_free.as_ref().map(|l| l.kind)
    }

    /// The centroid-distance score of one embedding when the bundle tests that kind
    /// (`None` otherwise: the min score comes out of the conformal scoring itself).
    pub fn centroid_distance(&self, embedding: &[f32]) -> Option<f64> {
        let d = self.label_free.as_ref()?.distance.as_ref()?;
        Some(d.score(embedding))
    }

    /// Answers for `n x E` embeddings at significance level `epsilon`.
    pub fn answer(&self, embeddings: &[f32], epsilon: f64) -> Result<Vec<Answer>, IcpError> {
        let p = self.icp.predict(embeddings, epsilon)?;
        let distance = self.label_free.as_ref().and_then(|l| l.distance.as_ref());
        Ok((0..p.len())
            .map(|i| {
                let pr = p.prediction(i);
                let label_free = match distance {
                    Some(d) => d.score(&embeddings[i * self.dim..(i + 1) * self.dim]),
                    None => pr.label_free,
                };
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
                    label_free,
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
