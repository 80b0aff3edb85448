//! ICP evaluation over a grid of significance levels.
//!
//! For each epsilon of the grid and test examples with p-values `p_y(x)` and true labels:
//! error rate (true label not in `{y : p_y > eps}`), mean set size, fractions of empty,
//! singleton and multiple-label sets, and the error rate per class. `ece` and `mce` are the
//! mean and the maximum of `|error(eps) - eps|` over the grid (as the reference pipeline).

use serde::{Deserialize, Serialize};

use super::ncm::check_labels;
use super::IcpError;

/// The reference pipeline's grid: 0.001, 0.002, ..., 0.199.
pub fn default_epsilon_grid() -> Vec<f64> {
    (1..=199).map(|i| i as f64 / 1000.0).collect()
}

/// `start, start + step, ...` up to `stop` inclusive (with a tolerance of step/1000), each
/// value computed as `start + i * step` and rounded to 12 decimals.
pub fn epsilon_grid(start: f64, stop: f64, step: f64) -> Result<Vec<f64>, IcpError> {
    if !(start.is_finite() && stop.is_finite() && step.is_finite()) || step <= 0.0 || stop < start {
        return Err(IcpError::InvalidGrid(format!(
            "start {start}, stop {stop}, step {step}: need finite start <= stop and step > 0"
        )));
    }
    let n = ((stop - start) / step + 1e-3).floor() as usize + 1;
    let grid: Vec<f64> = (0..n)
        .map(|i| ((start + i as f64 * step) * 1e12).round() / 1e12)
        .collect();
    check_grid(&grid)?;
    Ok(grid)
}

fn check_grid(grid: &[f64]) -> Result<(), IcpError> {
    if grid.is_empty() {
        return Err(IcpError::InvalidGrid("the epsilon grid is empty".into()));
    }
    if let Some(e) = grid.iter().find(|e| !(0.0..=1.0).contains(*e)) {
        return Err(IcpError::InvalidGrid(format!(
            "epsilon {e} is outside [0, 1]"
        )));
    }
    if grid.windows(2).any(|w| w[0] >= w[1]) {
        return Err(IcpError::InvalidGrid(
            "epsilons must be strictly increasing".into(),
        ));
    }
    Ok(())
}

/// Figures at one significance level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpsilonRow {
    pub epsilon: f64,
    /// fraction of test examples whose true label is not in the set
    pub error_rate: f64,
    pub mean_set_size: f64,
    pub empty: f64,
    pub singleton: f64,
    pub multiple: f64,
}

/// Error rate per epsilon of one class (test examples of that class only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassErrors {
    pub class: u16,
    pub n: usize,
    /// one per grid epsilon
    pub error_rate: Vec<f64>,
}

/// ICP evaluation over an epsilon grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IcpEvaluation {
    pub n_samples: usize,
    pub n_classes: usize,
    pub rows: Vec<EpsilonRow>,
    /// mean over the grid of |error(eps) - eps|
    pub ece: f64,
    /// max over the grid of |error(eps) - eps|
    pub mce: f64,
    /// classes with at least one test example
    pub per_class: Vec<ClassErrors>,
}

impl IcpEvaluation {
    /// The row of the grid epsilon closest to `epsilon`.
    pub fn at(&self, epsilon: f64) -> Option<&EpsilonRow> {
        self.rows.iter().min_by(|a, b| {
            (a.epsilon - epsilon)
                .abs()
                .total_cmp(&(b.epsilon - epsilon).abs())
        })
    }
}

/// Evaluates p-values (`n x C`, row-major) with true labels over an ascending epsilon grid.
pub fn evaluate(
    p_values: &[f64],
    labels: &[u16],
    n_classes: usize,
    grid: &[f64],
) -> Result<IcpEvaluation, IcpError> {
    check_grid(grid)?;
    if n_classes == 0 || p_values.len() != labels.len() * n_classes {
        return Err(IcpError::Shape {
            what: "p-values (samples x classes)",
            expected: labels.len() * n_classes,
            got: p_values.len(),
        });
    }
    if labels.is_empty() {
        return Err(IcpError::Shape {
            what: "test examples to evaluate",
            expected: 1,
            got: 0,
        });
    }
    check_labels(labels, n_classes)?;
    if let Some(index) = p_values.iter().position(|p| p.is_nan()) {
        return Err(IcpError::NanScore {
            what: "p-values",
            index,
        });
    }
    let g = grid.len();
    // idx(p) = #{grid eps < p}: p is in the set at grid point j iff idx(p) > j.
    let idx = |p: f64| grid.partition_point(|&e| e < p);
    let mut member = vec![0u64; g + 1]; // histogram of idx over all (sample, class)
    let mut top1 = vec![0u64; g + 1];
    let mut top2 = vec![0u64; g + 1];
    let mut truth = vec![0u64; g + 1];
    let mut truth_class = vec![0u64; n_classes * (g + 1)];
    let mut class_n = vec![0usize; n_classes];
    for (row, &l) in p_values.chunks_exact(n_classes).zip(labels) {
        let (mut m1, mut m2) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        for &p in row {
            member[idx(p)] += 1;
            if p > m1 {
                m2 = m1;
                m1 = p;
            } else if p > m2 {
                m2 = p;
            }
        }
        top1[idx(m1)] += 1;
        top2[if n_classes > 1 { idx(m2) } else { 0 }] += 1;
        let it = idx(row[usize::from(l)]);
        truth[it] += 1;
        truth_class[usize::from(l) * (g + 1) + it] += 1;
        class_n[usize::from(l)] += 1;
    }
    let n_u = labels.len() as u64;
    let n = n_u as f64;
    // suffix sums: #{idx > j}
    let above = |h: &[u64]| -> Vec<u64> {
        let mut out = vec![0u64; g];
        let mut acc = 0u64;
        for j in (0..g).rev() {
            acc += h[j + 1];
            out[j] = acc;
        }
        out
    };
    let member_above = above(&member);
    let top1_above = above(&top1);
    let top2_above = above(&top2);
    let truth_above = above(&truth);
    let mut rows = Vec::with_capacity(g);
    let (mut sum_dev, mut max_dev) = (0.0f64, 0.0f64);
    for (j, &eps) in grid.iter().enumerate() {
        let error_rate = (n_u - truth_above[j]) as f64 / n;
        let non_empty = top1_above[j];
        let multiple = top2_above[j];
        let dev = (error_rate - eps).abs();
        sum_dev += dev;
        max_dev = max_dev.max(dev);
        rows.push(EpsilonRow {
            epsilon: eps,
            error_rate,
            mean_set_size: member_above[j] as f64 / n,
            empty: (n_u - non_empty) as f64 / n,
            singleton: (non_empty - multiple) as f64 / n,
            multiple: multiple as f64 / n,
        });
    }
    let per_class = (0..n_classes)
        .filter(|&c| class_n[c] > 0)
        .map(|c| {
            let h = &truth_class[c * (g + 1)..(c + 1) * (g + 1)];
            let a = above(h);
            ClassErrors {
                class: c as u16,
                n: class_n[c],
                error_rate: a
                    .iter()
                    .map(|&v| (class_n[c] as u64 - v) as f64 / class_n[c] as f64)
                    .collect(),
            }
        })
        .collect();
    Ok(IcpEvaluation {
        n_samples: labels.len(),
        n_classes,
        rows,
        ece: sum_dev / g as f64,
        mce: max_dev,
        per_class,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_grid_is_reference_grid() {
        let g = default_epsilon_grid();
        assert_eq!(g.len(), 199);
        assert_eq!(g[0], 0.001);
        assert_eq!(g[16], 0.017);
        assert_eq!(g[198], 0.199);
        assert_eq!(epsilon_grid(0.001, 0.199, 0.001).unwrap(), g);
        assert!(epsilon_grid(0.1, 0.0, 0.01).is_err());
    }

    #[test]
    fn evaluate_matches_direct_count() {
        // 4 samples, 3 classes
        let p = [
            0.50, 0.02, 0.01, // label 0: {0} for eps<0.02... sizes vary
            0.30, 0.40, 0.005, // label 1
            0.001, 0.002, 0.003, // label 2
            0.9, 0.9, 0.9, // label 0
        ];
        let labels = [0u16, 1, 2, 0];
        let grid = [0.001, 0.002, 0.01, 0.02, 0.5];
        let ev = evaluate(&p, &labels, 3, &grid).unwrap();
        for (j, &eps) in grid.iter().enumerate() {
            let (mut err, mut size, mut empty, mut single, mut multi) = (0, 0, 0, 0, 0);
            for i in 0..4 {
                let row = &p[i * 3..i * 3 + 3];
                let s = row.iter().filter(|&&v| v > eps).count();
                size += s;
                match s {
                    0 => empty += 1,
                    1 => single += 1,
                    _ => multi += 1,
                }
                if row[labels[i] as usize] <= eps {
                    err += 1;
                }
            }
            let r = &ev.rows[j];
            assert_eq!(r.error_rate, err as f64 / 4.0, "eps {eps}");
            assert_eq!(r.mean_set_size, size as f64 / 4.0);
            assert_eq!(r.empty, empty as f64 / 4.0);
            assert_eq!(r.singleton, single as f64 / 4.0);
            assert_eq!(r.multiple, multi as f64 / 4.0);
        }
        let devs: Vec<f64> = ev
            .rows
            .iter()
            .map(|r| (r.error_rate - r.epsilon).abs())
            .collect();
        assert_eq!(ev.mce, devs.iter().cloned().fold(0.0, f64::max));
        assert!((ev.ece - devs.iter().sum::<f64>() / 5.0).abs() < 1e-15);
        assert_eq!(ev.per_class.len(), 3);
        assert_eq!(ev.per_class[0].n, 2);
    }
}
