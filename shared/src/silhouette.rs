//! Exact silhouette score of labelled embeddings (Euclidean), as scikit-learn's
//! `silhouette_score` / `silhouette_samples`.
//!
//! For sample i of cluster A with `a(i)` = mean distance to the other members of A and
//! `b(i)` = min over other clusters B of the mean distance to the members of B:
//! `s(i) = (b - a) / max(a, b)`, 0 for members of singleton clusters (and 0 when
//! `a = b = 0`); the score is the mean of `s(i)` over all samples.
//!
//! Every pairwise distance is computed once: samples are grouped by cluster, the
//! `n x n` distance matrix is swept in square tiles `(I, J)` with `I <= J` (f32 gemm for
//! the dot products, `sqrt(|x|^2 + |y|^2 - 2 x.y)` on data centred first), and each tile
//! adds its row sums per cluster into the rows of `I` and, by symmetry, its column sums
//! per cluster into the rows of `J`. Tiles run in parallel with rayon; each worker thread
//! accumulates into its own `n x K` f64 table, summed at the end.

use std::sync::Mutex;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::icp::gram;
use crate::icp::simd::{self, all_finite};

/// Side of the square distance tiles.
const TILE: usize = 256;
/// Upper bound on the memory of the per-thread accumulator tables.
const ACCUMULATOR_BUDGET: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SilhouetteError {
    #[error("wrong size of {what}: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("the silhouette needs at least 2 clusters, got {0}")]
    TooFewClusters(usize),
    #[error(
        "the silhouette needs fewer clusters than samples (at most n - 1 = {max}), got {clusters}"
    )]
    TooManyClusters { clusters: usize, max: usize },
    #[error("the embeddings contain a non-finite value (NaN or infinity)")]
    NonFinite,
}

/// Mean silhouette of one cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterSilhouette {
    pub label: u16,
    pub size: usize,
    pub mean: f64,
}

/// Silhouette of a labelled set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Silhouette {
    /// mean of `samples`
    pub score: f64,
    /// per-sample values, in input order
    pub samples: Vec<f64>,
    /// per-cluster means, ascending label
    pub clusters: Vec<ClusterSilhouette>,
}

/// The mean silhouette (scikit-learn's `silhouette_score` with the Euclidean metric).
pub fn silhouette_score(x: &[f32], dim: usize, labels: &[u16]) -> Result<f64, SilhouetteError> {
    Ok(silhouette(x, dim, labels)?.score)
}

/// Per-sample silhouette values (scikit-learn's `silhouette_samples`).
pub fn silhouette_samples(
    x: &[f32],
    dim: usize,
    labels: &[u16],
) -> Result<Vec<f64>, SilhouetteError> {
    Ok(silhouette(x, dim, labels)?.samples)
}

/// Score, per-sample values and per-cluster means of `x` (`labels.len()` rows of `dim`).
pub fn silhouette(x: &[f32], dim: usize, labels: &[u16]) -> Result<Silhouette, SilhouetteError> {
    let n = labels.len();
    if dim == 0 || x.len() != n * dim {
        return Err(SilhouetteError::Shape {
            what: "embeddings (labels x dim)",
            expected: n * dim.max(1),
            got: x.len(),
        });
    }
    let mut uniq: Vec<u16> = labels.to_vec();
    uniq.sort_unstable();
    uniq.dedup();
    let k = uniq.len();
    if k < 2 {
        return Err(SilhouetteError::TooFewClusters(k));
    }
    if k > n - 1 {
        return Err(SilhouetteError::TooManyClusters {
            clusters: k,
            max: n - 1,
        });
    }
    if !simd::dispatch(
        #[inline(always)]
        || all_finite(x),
    ) {
        return Err(SilhouetteError::NonFinite);
    }
    let cid: Vec<usize> = labels
        .iter()
        .map(|l| uniq.binary_search(l).unwrap_or(0))
        .collect();
    let mut sizes = vec![0usize; k];
    for &c in &cid {
        sizes[c] += 1;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| cid[i]);
    let cl: Vec<usize> = order.iter().map(|&i| cid[i]).collect();

    // centred copy in cluster order (centring reduces cancellation in |x|^2+|y|^2-2x.y)
    let mut mean = vec![0.0f64; dim];
    for row in x.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    for m in &mut mean {
        *m /= n as f64;
    }
    let mut xs = vec![0.0f32; n * dim];
    for (dst, &i) in xs.chunks_exact_mut(dim).zip(&order) {
        for ((d, &v), m) in dst.iter_mut().zip(&x[i * dim..(i + 1) * dim]).zip(&mean) {
            *d = (f64::from(v) - m) as f32;
        }
    }
    let norms: Vec<f32> = xs
        .chunks_exact(dim)
        .map(|r| r.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() as f32)
        .collect();

    let sums = cluster_distance_sums(&xs, &norms, &cl, dim, k);

    // per-sample values in cluster order, then back to input order
    let mut samples = vec![0.0f64; n];
    for (r, srow) in sums.chunks_exact(k).enumerate() {
        let c = cl[r];
        if sizes[c] <= 1 {
            continue;
        }
        let a = srow[c] / (sizes[c] - 1) as f64;
        let mut b = f64::INFINITY;
        for (j, (&s, &sz)) in srow.iter().zip(&sizes).enumerate() {
            if j != c {
                b = b.min(s / sz as f64);
            }
        }
        let m = a.max(b);
        samples[order[r]] = if m > 0.0 { (b - a) / m } else { 0.0 };
    }
    let score = samples.iter().sum::<f64>() / n as f64;
    let mut csum = vec![0.0f64; k];
    for (s, &c) in samples.iter().zip(&cid) {
        csum[c] += s;
    }
    let clusters = uniq
        .iter()
        .zip(&sizes)
        .zip(&csum)
        .map(|((&label, &size), &s)| ClusterSilhouette {
            label,
            size,
            mean: s / size as f64,
        })
        .collect();
    Ok(Silhouette {
        score,
        samples,
        clusters,
    })
}

/// Runs of equal cluster id in `cl[a..b]`: (start, end, cluster), positions relative to `a`.
fn runs(cl: &[usize], a: usize, b: usize, out: &mut Vec<(usize, usize, usize)>) {
    out.clear();
    let mut s = a;
    while s < b {
        let c = cl[s];
        let mut e = s + 1;
        while e < b && cl[e] == c {
            e += 1;
        }
        out.push((s - a, e - a, c));
        s = e;
    }
}

#[inline(always)]
fn sum_f64(v: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ch, tail) = v.as_chunks::<8>();
    for c in ch {
        for l in 0..8 {
            acc[l] += f64::from(c[l]);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for &t in tail {
        s += f64::from(t);
    }
    s
}

struct TileScratch {
    d: Vec<f32>,
    col: Vec<f64>,
    row_runs: Vec<(usize, usize, usize)>,
    col_runs: Vec<(usize, usize, usize)>,
}

/// `out[r * k + c]` = sum of the distances from row r to the rows of cluster c.
fn cluster_distance_sums(
    xs: &[f32],
    norms: &[f32],
    cl: &[usize],
    dim: usize,
    k: usize,
) -> Vec<f64> {
    let n = norms.len();
    let nt = n.div_ceil(TILE);
    let mut tasks = Vec::with_capacity(nt * (nt + 1) / 2);
    for i in 0..nt {
        for j in i..nt {
            tasks.push((i, j));
        }
    }
    // one n x k table per worker thread, within a memory budget (threads share tables,
    // taking whichever is free, when the budget allows fewer tables than threads)
    let table_bytes = (n * k * std::mem::size_of::<f64>()).max(1);
    let threads = rayon::current_num_threads()
        .max(1)
        .min(tasks.len())
        .min((ACCUMULATOR_BUDGET / table_bytes).max(1));
    let slabs: Vec<Mutex<Vec<f64>>> = (0..threads).map(|_| Mutex::new(Vec::new())).collect();
    tasks.par_iter().for_each_init(
        || TileScratch {
            d: vec![0.0; TILE * TILE],
            col: vec![0.0; TILE],
            row_runs: Vec::new(),
            col_runs: Vec::new(),
        },
        |s, &(ti, tj)| {
            let first = rayon::current_thread_index().unwrap_or(0) % threads;
            let mut acc = (0..threads)
                .find_map(|i| slabs[(first + i) % threads].try_lock().ok())
                .unwrap_or_else(|| slabs[first].lock().unwrap_or_else(|e| e.into_inner()));
            if acc.is_empty() {
                acc.resize(n * k, 0.0);
            }
            simd::dispatch(
                #[inline(always)]
                || tile(xs, norms, cl, dim, k, ti, tj, s, &mut acc),
            );
        },
    );
    let mut slabs: Vec<Vec<f64>> = slabs
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .filter(|v| !v.is_empty())
        .collect();
    let mut total = slabs.pop().unwrap_or_else(|| vec![0.0; n * k]);
    for s in &slabs {
        total
            .par_iter_mut()
            .zip(s.par_iter())
            .for_each(|(t, v)| *t += v);
    }
    total
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile(
    xs: &[f32],
    norms: &[f32],
    cl: &[usize],
    dim: usize,
    k: usize,
    ti: usize,
    tj: usize,
    s: &mut TileScratch,
    acc: &mut [f64],
) {
    let n = norms.len();
    let (a0, a1) = (ti * TILE, ((ti + 1) * TILE).min(n));
    let (b0, b1) = (tj * TILE, ((tj + 1) * TILE).min(n));
    let (m, nb) = (a1 - a0, b1 - b0);
    let d = &mut s.d[..m * nb];
    gram(&xs[a0 * dim..a1 * dim], &xs[b0 * dim..b1 * dim], dim, d);
    let nj = &norms[b0..b1];
    for (i, row) in d.chunks_exact_mut(nb).enumerate() {
        let ni = norms[a0 + i];
        for (v, &q) in row.iter_mut().zip(nj) {
            let sq = ni + q - 2.0 * *v;
            *v = if sq > 0.0 { sq.sqrt() } else { 0.0 };
        }
    }
    if ti == tj {
        for i in 0..m {
            d[i * nb + i] = 0.0;
        }
    }
    runs(cl, b0, b1, &mut s.col_runs);
    for (i, row) in d.chunks_exact(nb).enumerate() {
        let r = &mut acc[(a0 + i) * k..(a0 + i + 1) * k];
        for &(cs, ce, c) in &s.col_runs {
            r[c] += sum_f64(&row[cs..ce]);
        }
    }
    if ti != tj {
        runs(cl, a0, a1, &mut s.row_runs);
        let col = &mut s.col[..nb];
        for &(rs, re, c) in &s.row_runs {
            col.fill(0.0);
            for row in d[rs * nb..re * nb].chunks_exact(nb) {
                for (cv, &v) in col.iter_mut().zip(row) {
                    *cv += f64::from(v);
                }
            }
            for (j, &cv) in col.iter().enumerate() {
                acc[(b0 + j) * k + c] += cv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(x: &[f32], dim: usize, labels: &[u16]) -> Vec<f64> {
        let n = labels.len();
        let d = |i: usize, j: usize| -> f64 {
            (0..dim)
                .map(|t| {
                    let v = f64::from(x[i * dim + t]) - f64::from(x[j * dim + t]);
                    v * v
                })
                .sum::<f64>()
                .sqrt()
        };
        let mut out = vec![0.0; n];
        for i in 0..n {
            let mut sums = std::collections::BTreeMap::<u16, (f64, usize)>::new();
            for (j, &lj) in labels.iter().enumerate() {
                let e = sums.entry(lj).or_insert((0.0, 0));
                e.0 += if i == j { 0.0 } else { d(i, j) };
                e.1 += 1;
            }
            let (sa, na) = sums[&labels[i]];
            if na == 1 {
                continue;
            }
            let a = sa / (na - 1) as f64;
            let b = sums
                .iter()
                .filter(|(l, _)| **l != labels[i])
                .map(|(_, (s, c))| s / *c as f64)
                .fold(f64::INFINITY, f64::min);
            let m = a.max(b);
            out[i] = if m > 0.0 { (b - a) / m } else { 0.0 };
        }
        out
    }

    #[test]
    fn silhouette_matches_brute_force_across_tiles() {
        // more than one tile, unsorted labels, a singleton cluster, label gaps
        let n = 600;
        let dim = 5;
        let mut x = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        let mut state = 12345u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5
        };
        for i in 0..n {
            let l = if i == 17 {
                9u16
            } else {
                (i * 7 % 4) as u16 * 2
            };
            for t in 0..dim {
                x.push(rnd() + if t == 0 { l as f32 * 0.7 } else { 0.0 });
            }
            labels.push(l);
        }
        let sil = silhouette(&x, dim, &labels).unwrap();
        let want = brute(&x, dim, &labels);
        for (a, b) in sil.samples.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(sil.samples[17], 0.0);
        let mean = want.iter().sum::<f64>() / n as f64;
        assert!((sil.score - mean).abs() < 1e-6);
        assert_eq!(sil.clusters.len(), 5);
    }

    #[test]
    fn silhouette_errors() {
        assert_eq!(
            silhouette(&[0.0, 1.0], 1, &[3, 3]).unwrap_err(),
            SilhouetteError::TooFewClusters(1)
        );
        assert!(matches!(
            silhouette(&[0.0, 1.0], 1, &[0, 1]),
            Err(SilhouetteError::TooManyClusters { .. })
        ));
        assert!(matches!(
            silhouette(&[0.0, 1.0], 1, &[0, 1, 1]),
            Err(SilhouetteError::Shape { .. })
        ));
        assert_eq!(
            silhouette(&[0.0, f32::NAN, 1.0], 1, &[0, 1, 1]).unwrap_err(),
            SilhouetteError::NonFinite
        );
    }
}
