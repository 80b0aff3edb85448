//! What an exported model is worth on a dataset: nearest-centroid accuracy and ICP error
//! at epsilon 0.05 from its own embeddings (centroids from the proper-training split,
//! calibration scores from the calibration split, figures on the validation split), and
//! whether two embedding sources give the same prediction sets.

use anyhow::Result;
use serde::Serialize;
use shared::data::ImageSet;
use shared::icp::{IcpPredictor, Ncm, NcmKind, PValueMode};

/// Embeddings of the three splits from one model.
pub struct SplitEmbeddings {
    pub train: Vec<f32>,
    pub calibration: Vec<f32>,
    pub validation: Vec<f32>,
}

/// The three splits.
pub struct Splits {
    pub train: ImageSet,
    pub calibration: ImageSet,
    pub validation: ImageSet,
    pub n_classes: usize,
}

/// Figures of one model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelFigures {
    pub nc_accuracy: f64,
    pub epsilon: f64,
    pub icp_error: f64,
    pub singleton: f64,
    pub mean_set_size: f64,
}

fn predictor(
    e: &SplitEmbeddings,
    s: &Splits,
    dim: usize,
    mondrian: bool,
    mode: PValueMode,
) -> Result<IcpPredictor> {
    let ncm = Ncm::fit(
        NcmKind::NearestCentroid,
        &e.train,
        &s.train.labels,
        dim,
        s.n_classes,
    )?;
    Ok(IcpPredictor::calibrate(
        ncm,
        &e.calibration,
        &s.calibration.labels,
        mondrian,
        mode,
    )?)
}

/// Accuracy and ICP figures at `epsilon` (nearest-centroid measure).
pub fn figures(
    e: &SplitEmbeddings,
    s: &Splits,
    dim: usize,
    epsilon: f64,
    mondrian: bool,
    mode: PValueMode,
) -> Result<ModelFigures> {
    let p = predictor(e, s, dim, mondrian, mode)?;
    let scores = p.ncm().scores(&e.validation)?;
    let labels = &s.validation.labels;
    let c = s.n_classes;
    let correct = scores
        .chunks(c)
        .zip(labels)
        .filter(|(row, &y)| {
            row.iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k)
                == Some(usize::from(y))
        })
        .count();
    p.set_next_sample(0);
    let pred = p.predict(&e.validation, epsilon)?;
    let n = labels.len().max(1) as f64;
    let (mut errors, mut singletons, mut total) = (0usize, 0usize, 0usize);
    for (i, &y) in labels.iter().enumerate() {
        let set = pred.set(i);
        errors += usize::from(!set.contains(usize::from(y)));
        singletons += usize::from(set.len() == 1);
        total += set.len();
    }
    Ok(ModelFigures {
        nc_accuracy: correct as f64 / n,
        epsilon,
        icp_error: errors as f64 / n,
        singleton: singletons as f64 / n,
        mean_set_size: total as f64 / n,
    })
}

/// How two embedding sources' prediction sets compare.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Agreement {
    /// Fraction of (image, epsilon) pairs with identical sets.
    pub identical: f64,
    /// Pairs whose sets differ.
    pub differ: usize,
    /// Largest p-value difference behind a differing set, in calibration scores (units of
    /// 1/(n+1), pooled): 1 means every difference is one calibration score landing on the
    /// other side of a test score, i.e. a tie within float rounding of the embeddings.
    pub max_scores_crossed: usize,
}

/// Whether the prediction sets of the validation images agree exactly between two
/// embedding sources, over every epsilon of `grid`.
pub fn set_agreement(
    a: &SplitEmbeddings,
    b: &SplitEmbeddings,
    s: &Splits,
    dim: usize,
    grid: &[f64],
    mondrian: bool,
    mode: PValueMode,
) -> Result<Agreement> {
    let pa = predictor(a, s, dim, mondrian, mode)?;
    let pb = predictor(b, s, dim, mondrian, mode)?;
    let n = s.validation.labels.len();
    let unit = 1.0 / (s.calibration.labels.len() as f64 + 1.0);
    let (mut differ, mut max_crossed) = (0usize, 0usize);
    for &eps in grid {
        pa.set_next_sample(0);
        pb.set_next_sample(0);
        let ra = pa.predict(&a.validation, eps)?;
        let rb = pb.predict(&b.validation, eps)?;
        for i in 0..n {
            let x: Vec<usize> = ra.set(i).iter().collect();
            let y: Vec<usize> = rb.set(i).iter().collect();
            if x != y {
                differ += 1;
                let (qa, qb) = (ra.prediction(i), rb.prediction(i));
                for (c, (va, vb)) in qa.p_values.iter().zip(&qb.p_values).enumerate() {
                    if x.contains(&c) != y.contains(&c) {
                        max_crossed = max_crossed.max(((va - vb).abs() / unit).round() as usize);
                    }
                }
            }
        }
    }
    let pairs = (n * grid.len()).max(1);
    Ok(Agreement {
        identical: 1.0 - differ as f64 / pairs as f64,
        differ,
        max_scores_crossed: max_crossed,
    })
}
