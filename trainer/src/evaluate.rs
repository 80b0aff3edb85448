//! What a trained embedding is worth: reference data, calibration scores, accuracy,
//! silhouette and the ICP table, computed from embeddings of the three splits.
//!
//! The model only enters through its embeddings, so the same code evaluates the trained
//! network, the untrained stand-in of the interim demo and, later, an exported model.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;
use shared::icp::{
    default_epsilon_grid, EpsilonRow, IcpEvaluation, IcpPredictor, Ncm, NcmKind, PValueMode,
};

/// Embeddings of one split with their labels and tracks.
pub struct Embedded<'a> {
    pub emb: &'a [f32],
    pub labels: &'a [u16],
    pub tracks: &'a [String],
}

impl<'a> Embedded<'a> {
    /// The embeddings `emb` of the images of `set`.
    pub fn of(emb: &'a [f32], set: &'a shared::data::ImageSet) -> Self {
        Embedded {
            emb,
            labels: &set.labels,
            tracks: &set.tracks,
        }
    }
}

/// How the ICP is set up.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct IcpSettings {
    pub ncm: NcmKind,
    pub mondrian: bool,
    pub p_values: PValueMode,
}

/// ICP validity at one epsilon judged two ways: frames as if independent, and tracks as
/// the independent units (frames of one physical sign are not independent, so the
/// honest sigma comes from the number of tracks).
#[derive(Clone, Debug, Serialize)]
pub struct ValidityCheck {
    pub epsilon: f64,
    pub error_rate: f64,
    pub sigma_frames: f64,
    pub sigma_tracks: f64,
    /// error_rate <= epsilon + 3 sigma_tracks
    pub within_3_sigma_tracks: bool,
    pub singleton: f64,
    /// Fraction of empty sets and the mean set size: a device's health gate compares its
    /// own answers with these (through the bundle's manifest).
    pub empty: f64,
    pub mean_set_size: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub dim: usize,
    pub n_classes: usize,
    pub counts: [usize; 3],
    pub validation_tracks: usize,
    pub icp_settings: IcpSettings,
    /// nearest-centroid accuracy on validation (centroids of proper-training embeddings)
    pub nc_accuracy: f64,
    /// k-NN (k = 40) majority accuracy on validation
    pub knn_accuracy: f64,
    pub train_silhouette: f64,
    pub calibration_silhouette: f64,
    pub validation_silhouette: f64,
    pub ece: f64,
    pub mce: f64,
    pub icp: Vec<EpsilonRow>,
    pub validity: Vec<ValidityCheck>,
    #[serde(skip)]
    pub full: IcpEvaluation,
}

/// The measures whose calibration scores are stored for the edge agent to choose from.
pub const MEASURES: [NcmKind; 3] = [
    NcmKind::NearestCentroid,
    NcmKind::KNN40,
    NcmKind::NearestNeighbourRatio,
];

/// Fraction of rows whose smallest score is at the true label (ties: lowest class).
fn argmin_accuracy(scores: &[f64], labels: &[u16], n_classes: usize) -> f64 {
    let correct = scores
        .chunks_exact(n_classes)
        .zip(labels)
        .filter(|(row, &y)| {
            let best = row
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(c, _)| c);
            best == Some(usize::from(y))
        })
        .count();
    correct as f64 / labels.len().max(1) as f64
}

fn silhouette(e: &Embedded, dim: usize) -> Result<f64> {
    // Silhouette needs two clusters; a tiny split may have one.
    let classes: BTreeSet<u16> = e.labels.iter().copied().collect();
    if classes.len() < 2 {
        return Ok(f64::NAN);
    }
    Ok(shared::silhouette::silhouette_score(e.emb, dim, e.labels)?)
}

/// Evaluates embeddings and writes the reference data (centroids, proper-training
/// embeddings, calibration scores of every measure) as safetensors to `reference_path`.
pub fn evaluate(
    train: &Embedded,
    calibration: &Embedded,
    validation: &Embedded,
    dim: usize,
    n_classes: usize,
    settings: IcpSettings,
    reference_path: Option<&Path>,
) -> Result<Evaluation> {
    let centroid = Ncm::fit(
        NcmKind::NearestCentroid,
        train.emb,
        train.labels,
        dim,
        n_classes,
    )
    .context("fitting class centroids")?;
    let nc_accuracy = argmin_accuracy(
        &centroid.scores(validation.emb)?,
        validation.labels,
        n_classes,
    );
    let knn = Ncm::fit(NcmKind::KNN40, train.emb, train.labels, dim, n_classes)
        .context("fitting the k-NN measure")?;
    let knn_accuracy = argmin_accuracy(&knn.scores(validation.emb)?, validation.labels, n_classes);

    let mut cal_scores: HashMap<String, Vec<f64>> = HashMap::new();
    for kind in MEASURES {
        let ncm = match kind {
            NcmKind::NearestCentroid => centroid.clone(),
            NcmKind::Knn { k: 40 } => knn.clone(),
            _ => Ncm::fit(kind, train.emb, train.labels, dim, n_classes)?,
        };
        let s = ncm
            .label_scores(calibration.emb, calibration.labels)
            .with_context(|| format!("calibration scores of {}", kind.name()))?;
        cal_scores.insert(kind.key(), s);
    }

    let chosen = match settings.ncm {
        NcmKind::NearestCentroid => centroid.clone(),
        NcmKind::Knn { k: 40 } => knn,
        kind => Ncm::fit(kind, train.emb, train.labels, dim, n_classes)?,
    };
    let icp = IcpPredictor::calibrate(
        chosen,
        calibration.emb,
        calibration.labels,
        settings.mondrian,
        settings.p_values,
    )
    .context("calibrating the ICP")?;
    let full = icp
        .evaluate(validation.emb, validation.labels, &default_epsilon_grid())
        .context("evaluating the ICP on the validation split")?;

    let validation_tracks = validation.tracks.iter().collect::<BTreeSet<_>>().len();
    let validity = [0.01, 0.05, 0.10]
        .iter()
        .filter_map(|&eps| full.at(eps))
        .map(|r| {
            let var = r.epsilon * (1.0 - r.epsilon);
            let sigma_tracks = (var / validation_tracks.max(1) as f64).sqrt();
            ValidityCheck {
                epsilon: r.epsilon,
                error_rate: r.error_rate,
                sigma_frames: (var / validation.labels.len().max(1) as f64).sqrt(),
                sigma_tracks,
                within_3_sigma_tracks: r.error_rate <= r.epsilon + 3.0 * sigma_tracks,
                singleton: r.singleton,
                empty: r.empty,
                mean_set_size: r.mean_set_size,
            }
        })
        .collect();

    if let Some(path) = reference_path {
        write_reference(path, &centroid, train, calibration, &cal_scores, dim)?;
    }

    Ok(Evaluation {
        dim,
        n_classes,
        counts: [
            train.labels.len(),
            calibration.labels.len(),
            validation.labels.len(),
        ],
        validation_tracks,
        icp_settings: settings,
        nc_accuracy,
        knn_accuracy,
        train_silhouette: silhouette(train, dim)?,
        calibration_silhouette: silhouette(calibration, dim)?,
        validation_silhouette: silhouette(validation, dim)?,
        ece: full.ece,
        mce: full.mce,
        icp: full.rows.clone(),
        validity,
        full,
    })
}

fn le_bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// Reference data as safetensors, readable by any tool: `centroids` f32 [C,E],
/// `train_embeddings` f32 [N,E], `train_labels` u16 [N], `calibration_labels` u16 [M] and
/// `calibration_scores.<measure>` f64 [M] (in calibration order, unsorted).
fn write_reference(
    path: &Path,
    centroid: &Ncm,
    train: &Embedded,
    calibration: &Embedded,
    cal_scores: &HashMap<String, Vec<f64>>,
    dim: usize,
) -> Result<()> {
    let centroids = centroid.centroids().unwrap_or_default();
    let n_classes = centroids.len() / dim.max(1);
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
        (
            "centroids".into(),
            Dtype::F32,
            vec![n_classes, dim],
            le_bytes(centroids, f32::to_le_bytes),
        ),
        (
            "train_embeddings".into(),
            Dtype::F32,
            vec![train.labels.len(), dim],
            le_bytes(train.emb, f32::to_le_bytes),
        ),
        (
            "train_labels".into(),
            Dtype::U16,
            vec![train.labels.len()],
            le_bytes(train.labels, u16::to_le_bytes),
        ),
        (
            "calibration_labels".into(),
            Dtype::U16,
            vec![calibration.labels.len()],
            le_bytes(calibration.labels, u16::to_le_bytes),
        ),
    ];
    let mut keys: Vec<&String> = cal_scores.keys().collect();
    keys.sort();
    for k in keys {
        let s = &cal_scores[k];
        blobs.push((
            format!("calibration_scores.{k}"),
            Dtype::F64,
            vec![s.len()],
            le_bytes(s, f64::to_le_bytes),
        ));
    }
    let views = blobs
        .iter()
        .map(|(name, dtype, shape, data)| {
            Ok((name.clone(), TensorView::new(*dtype, shape.clone(), data)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .context("packing reference data")?;
    let bytes = safetensors::serialize(views, None).context("encoding reference data")?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well separated classes in 2-D, tracks of 2 frames.
    fn blobs(n_per: usize, shift: f32) -> (Vec<f32>, Vec<u16>, Vec<String>) {
        let (mut e, mut l, mut t) = (vec![], vec![], vec![]);
        for c in 0..3u16 {
            for i in 0..n_per {
                let j = (i as f32 * 0.37 + shift).sin() * 0.3;
                e.extend_from_slice(&[c as f32 * 5.0 + j, -j]);
                l.push(c);
                t.push(format!("{c}/{}", i / 2));
            }
        }
        (e, l, t)
    }

    #[test]
    fn separable_data_is_classified_and_calibrated() {
        let (te, tl, tt) = blobs(40, 0.0);
        let (ce, cl, ct) = blobs(30, 1.0);
        let (ve, vl, vt) = blobs(30, 2.0);
        let tmp = tempfile::tempdir().unwrap();
        let refp = tmp.path().join("reference.safetensors");
        let ev = evaluate(
            &Embedded {
                emb: &te,
                labels: &tl,
                tracks: &tt,
            },
            &Embedded {
                emb: &ce,
                labels: &cl,
                tracks: &ct,
            },
            &Embedded {
                emb: &ve,
                labels: &vl,
                tracks: &vt,
            },
            2,
            3,
            IcpSettings {
                ncm: NcmKind::NearestCentroid,
                mondrian: false,
                p_values: PValueMode::Standard,
            },
            Some(&refp),
        )
        .unwrap();
        assert_eq!(ev.nc_accuracy, 1.0);
        assert_eq!(ev.knn_accuracy, 1.0);
        assert!(
            ev.validation_silhouette > 0.8,
            "{}",
            ev.validation_silhouette
        );
        assert_eq!(ev.validation_tracks, 45);
        assert_eq!(ev.icp.len(), 199);
        assert!(ev.validity.iter().all(|v| v.within_3_sigma_tracks));
        let bytes = std::fs::read(&refp).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("centroids").unwrap().shape(), &[3, 2]);
        assert_eq!(
            st.tensor("calibration_scores.knn40").unwrap().shape(),
            &[90]
        );
    }
}
