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
use shared::icp::novelty::CENTROID_DISTANCE_TENSOR;
use shared::icp::{
    default_epsilon_grid, CentroidDistance, EpsilonRow, IcpEvaluation, IcpPredictor, Ncm, NcmKind,
    PValueMode,
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
    /// The spread across validation tracks (groups), which is what one device that sees
    /// one place, one camera, one season should expect, rather than the pooled rate.
    pub groups: GroupSpread,
}

/// Error rates of the validation groups (tracks) at one epsilon. Frames of a group are
/// alike, so group rates spread far more than `sqrt(eps (1 - eps) / group size)`, the
/// spread they would have if frames were independent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupSpread {
    pub groups: usize,
    pub mean_group_size: f64,
    /// Standard deviation of the group error rates.
    pub std: f64,
    /// What `std` would be with independent frames.
    pub std_if_independent: f64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
    /// Fraction of groups whose error rate is above epsilon.
    pub above_epsilon: f64,
    /// Fraction of groups whose error rate is above 2 epsilon.
    pub above_twice_epsilon: f64,
}

/// Group error rates of `errors` (one per frame) grouped by `groups`.
pub fn group_spread(errors: &[bool], groups: &[String], epsilon: f64) -> GroupSpread {
    let mut by: HashMap<&str, (u64, u64)> = HashMap::new();
    for (e, g) in errors.iter().zip(groups) {
        let c = by.entry(g.as_str()).or_default();
        c.0 += u64::from(*e);
        c.1 += 1;
    }
    let mut rates: Vec<f64> = by.values().map(|(e, n)| *e as f64 / *n as f64).collect();
    if rates.is_empty() {
        return GroupSpread::default();
    }
    rates.sort_by(f64::total_cmp);
    let n = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / n;
    let std = (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    let q = |f: f64| rates[((f * (n - 1.0)).round() as usize).min(rates.len() - 1)];
    let mean_group_size = errors.len() as f64 / n;
    GroupSpread {
        groups: rates.len(),
        mean_group_size,
        std,
        std_if_independent: (epsilon * (1.0 - epsilon) / mean_group_size).sqrt(),
        p50: q(0.5),
        p90: q(0.9),
        max: rates[rates.len() - 1],
        above_epsilon: rates.iter().filter(|&&r| r > epsilon).count() as f64 / n,
        above_twice_epsilon: rates.iter().filter(|&&r| r > 2.0 * epsilon).count() as f64 / n,
    }
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
    // label-free scores (`Ncm::label_free_score`) of the calibration split: what the
    // agent's drift monitor compares every answer with
    let mut cal_free: HashMap<String, Vec<f64>> = HashMap::new();
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
        let free = ncm
            .label_free_scores(calibration.emb)
            .with_context(|| format!("label-free calibration scores of {}", kind.name()))?;
        cal_free.insert(kind.key(), free);
    }

    // the centroid distance of every calibration example: the other label-free score
    // (`shared::icp::novelty`), the one bundles test by default
    let cal_distance =
        CentroidDistance::new(centroid.centroids().unwrap_or_default().to_vec(), dim)
            .and_then(|c| c.scores(calibration.emb))
            .context("centroid distances of the calibration split")?;

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
    let p = icp
        .p_values(validation.emb)
        .context("p-values of the validation split")?;
    let validity = [0.01, 0.05, 0.10]
        .iter()
        .filter_map(|&eps| full.at(eps))
        .map(|r| {
            let errors: Vec<bool> = p
                .chunks_exact(n_classes.max(1))
                .zip(validation.labels)
                .map(|(row, &y)| row.get(usize::from(y)).is_none_or(|&v| v <= r.epsilon))
                .collect();
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
                groups: group_spread(&errors, validation.tracks, r.epsilon),
            }
        })
        .collect();

    if let Some(path) = reference_path {
        write_reference(
            path,
            &centroid,
            train,
            calibration,
            &[
                ("calibration_scores", &cal_scores),
                ("calibration_label_free", &cal_free),
            ],
            &cal_distance,
            dim,
        )?;
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

/// Each example's group (track) as an index into the sorted distinct groups: the
/// calibration split's grouping, which the exporter records in the manifest.
fn group_ids(tracks: &[String]) -> Vec<u32> {
    let distinct: BTreeSet<&String> = tracks.iter().collect();
    let index: HashMap<&String, u32> = distinct
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    tracks.iter().map(|t| index[t]).collect()
}

fn le_bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// Reference data as safetensors, readable by any tool: `centroids` f32 [C,E],
/// `train_embeddings` f32 [N,E], `train_labels` u16 [N], `calibration_labels` u16 [M],
/// `calibration_scores.<measure>` f64 [M] (in calibration order, unsorted) and
/// `calibration_label_free.<measure>` f64 [M] (the min-score label-free scores, same order),
/// `calibration_centroid_distance` f64 [M] (the centroid-distance label-free scores) and
/// `calibration_groups` u32 [M] (each example's track, as an index of the split's tracks).
fn write_reference(
    path: &Path,
    centroid: &Ncm,
    train: &Embedded,
    calibration: &Embedded,
    per_measure: &[(&str, &HashMap<String, Vec<f64>>)],
    centroid_distance: &[f64],
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
        (
            "calibration_groups".into(),
            Dtype::U32,
            vec![calibration.labels.len()],
            le_bytes(&group_ids(calibration.tracks), u32::to_le_bytes),
        ),
    ];
    for (prefix, scores) in per_measure {
        let mut keys: Vec<&String> = scores.keys().collect();
        keys.sort();
        for k in keys {
            let s = &scores[k];
            blobs.push((
                format!("{prefix}.{k}"),
                Dtype::F64,
                vec![s.len()],
                le_bytes(s, f64::to_le_bytes),
            ));
        }
    }
    blobs.push((
        CENTROID_DISTANCE_TENSOR.into(),
        Dtype::F64,
        vec![centroid_distance.len()],
        le_bytes(centroid_distance, f64::to_le_bytes),
    ));
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

    #[test]
    fn group_spread_counts_groups_and_their_rates() {
        // 4 groups of 10 frames: error rates 0, 0, 0.1, 0.5
        let mut errors = vec![];
        let mut groups = vec![];
        for (g, bad) in [(0, 0), (1, 0), (2, 1), (3, 5)] {
            for i in 0..10 {
                errors.push(i < bad);
                groups.push(format!("t{g}"));
            }
        }
        let s = group_spread(&errors, &groups, 0.05);
        assert_eq!(s.groups, 4);
        assert_eq!(s.mean_group_size, 10.0);
        assert_eq!(s.max, 0.5);
        assert_eq!(s.above_epsilon, 0.5);
        assert_eq!(s.above_twice_epsilon, 0.25); // 0.1 is not above 2 x 0.05
        let mean: f64 = 0.6 / 4.0;
        let var = (2.0 * mean * mean + (0.1 - mean).powi(2) + (0.5 - mean).powi(2)) / 4.0;
        assert!((s.std - var.sqrt()).abs() < 1e-12);
        assert!((s.std_if_independent - (0.05f64 * 0.95 / 10.0).sqrt()).abs() < 1e-12);
        assert_eq!(group_spread(&[], &[], 0.05).groups, 0);
    }

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
        for v in &ev.validity {
            assert_eq!(v.groups.groups, 45, "{:?}", v.groups);
            assert!((v.groups.mean_group_size - 2.0).abs() < 1e-12);
            // the group rates average to the pooled rate (equal group sizes)
            let pooled = v.error_rate;
            assert!(v.groups.max >= pooled && v.groups.p50 <= v.groups.max);
        }
        let bytes = std::fs::read(&refp).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("centroids").unwrap().shape(), &[3, 2]);
        assert_eq!(
            st.tensor("calibration_scores.knn40").unwrap().shape(),
            &[90]
        );
        // the drift monitor's label-free calibration scores, in [0, 1]
        for key in ["nearest_centroid", "knn40", "nn_ratio"] {
            let t = st
                .tensor(&format!("calibration_label_free.{key}"))
                .unwrap_or_else(|e| panic!("calibration_label_free.{key}: {e}"));
            assert_eq!(t.shape(), &[90]);
            let v: Vec<f64> = t
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert!(v.iter().all(|s| (0.0..=1.0).contains(s)), "{key}: {v:?}");
        }
        // and the centroid distances (squashed into [0, 1), not all on a centroid)
        let t = st.tensor(CENTROID_DISTANCE_TENSOR).unwrap();
        assert_eq!(t.shape(), &[90]);
        let v: Vec<f64> = t
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert!(v.iter().all(|s| (0.0..1.0).contains(s)), "{v:?}");
        assert!(v.iter().any(|&s| s > 0.0), "{v:?}");
    }
}
