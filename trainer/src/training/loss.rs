//! Metric-learning losses over a batch of embeddings.

use anyhow::Result;
use candle_core::{Device, Tensor};

/// Clamp inside square roots of distances (keeps gradients finite at zero distance).
const DIST_EPS: f64 = 1e-12;

/// Siamese contrastive loss (the reference's, Hadsell et al.):
/// `mean(y * d^2 + (1 - y) * max(margin - d, 0)^2)` with `d = ||a - b||_2` and `y = 1`
/// for a pair of the same class. `a`, `b`: `[N, E]`; `same`: one flag per pair.
pub fn contrastive(a: &Tensor, b: &Tensor, same: &[bool], margin: f64) -> Result<Tensor> {
    let n = same.len();
    let y: Vec<f32> = same.iter().map(|&s| if s { 1.0 } else { 0.0 }).collect();
    let y = Tensor::from_vec(y, n, a.device())?;
    let d2 = (a - b)?.sqr()?.sum(1)?;
    let d = d2.maximum(DIST_EPS)?.sqrt()?;
    let neg = (d.neg()? + margin)?.relu()?.sqr()?;
    let pos_term = (&d2 * &y)?;
    let neg_term = (neg * (1.0 - &y)?)?;
    Ok((pos_term + neg_term)?.mean_all()?)
}

/// Pairwise Euclidean distances `[N, N]` of the rows of `e` (`[N, E]`), from the
/// differences themselves. The shortcut `|a|^2 + |b|^2 - 2 a.b` cancels catastrophically
/// when embeddings are close (as at the start of training, or in a collapse): its f32
/// rounding noise, amplified by the square root's gradient, swamped the signal and kept
/// a GTSRB run at loss = margin for 1,000 steps.
pub fn pairwise_distances(e: &Tensor) -> Result<Tensor> {
    let (n, dim) = e.dims2()?;
    let a = e.reshape((n, 1, dim))?.broadcast_as((n, n, dim))?;
    let b = e.reshape((1, n, dim))?.broadcast_as((n, n, dim))?;
    let d2 = (a - b)?.sqr()?.sum(2)?;
    Ok(d2.maximum(DIST_EPS)?.sqrt()?)
}

/// Batch-hard triplet loss (Hermans et al. 2017): for every anchor, the farthest positive
/// and the nearest negative in the batch, `mean(max(d_ap - d_an + margin, 0))`. Anchors
/// without a positive or a negative in the batch are skipped.
pub fn batch_hard_triplet(e: &Tensor, labels: &[u16], margin: f64) -> Result<Tensor> {
    let n = labels.len();
    let dev: &Device = e.device();
    let d = pairwise_distances(e)?;
    let mut pos = vec![0f32; n * n];
    let mut neg_pen = vec![0f32; n * n];
    let mut valid = vec![0f32; n];
    for i in 0..n {
        let mut has_pos = false;
        let mut has_neg = false;
        for j in 0..n {
            if i != j && labels[i] == labels[j] {
                pos[i * n + j] = 1.0;
                has_pos = true;
            }
            if labels[i] == labels[j] {
                neg_pen[i * n + j] = 1e6;
            } else {
                has_neg = true;
            }
        }
        valid[i] = if has_pos && has_neg { 1.0 } else { 0.0 };
    }
    let n_valid: f32 = valid.iter().sum();
    let pos = Tensor::from_vec(pos, (n, n), dev)?;
    let neg_pen = Tensor::from_vec(neg_pen, (n, n), dev)?;
    let valid = Tensor::from_vec(valid, n, dev)?;
    let hardest_pos = (&d * pos)?.max(1)?;
    let hardest_neg = (&d + neg_pen)?.min(1)?;
    let per_anchor = ((hardest_pos - hardest_neg)? + margin)?.relu()?;
    Ok(((per_anchor * valid)?.sum_all()? / f64::from(n_valid.max(1.0)))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[[f32; 2]]) -> Tensor {
        let v: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(v, (rows.len(), 2), &Device::Cpu).unwrap()
    }

    fn scalar(t: Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn contrastive_matches_hand_computation() {
        let a = t(&[[0.0, 0.0], [0.0, 0.0]]);
        let b = t(&[[3.0, 4.0], [1.0, 0.0]]);
        // pair 0: same, d = 5 -> 25; pair 1: different, d = 1, margin 5 -> 16
        let l = scalar(contrastive(&a, &b, &[true, false], 5.0).unwrap());
        assert!((l - 20.5).abs() < 1e-4, "{l}");
    }

    #[test]
    fn batch_hard_triplet_matches_hand_computation() {
        // class 0 at x=0 and x=1, class 1 at x=3
        let e = t(&[[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]);
        let l = scalar(batch_hard_triplet(&e, &[0, 0, 1], 0.5).unwrap());
        // anchor 0: ap 1, an 3 -> 0; anchor 1: ap 1, an 2 -> 0; anchor 2: no positive
        assert!(l.abs() < 1e-6, "{l}");
        let l = scalar(batch_hard_triplet(&e, &[0, 0, 1], 2.5).unwrap());
        // anchor 0: 1 - 3 + 2.5 = 0.5; anchor 1: 1 - 2 + 2.5 = 1.5 -> mean 1.0
        assert!((l - 1.0).abs() < 1e-4, "{l}");
        // gradients are finite although the diagonal distances are zero
        let v = candle_core::Var::from_tensor(&e).unwrap();
        let g = batch_hard_triplet(v.as_tensor(), &[0, 0, 1], 2.5)
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f32> = g
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(g.iter().all(|x| x.is_finite()));
    }
}
