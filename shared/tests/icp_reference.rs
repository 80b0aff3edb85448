//! `shared::icp` against independent references:
//! - a brute-force implementation written plainly below (loops, no sorting, f64), which
//!   must agree bit for bit on data where f32 arithmetic is exact (small integers);
//! - crepes 0.8.0 (Python, via `scripts/py/crepes_ref.py`) on the same calibration and
//!   test scores, for standard, smoothed (crepes' own taus) and Mondrian p-values;
//! - the validity guarantee on exchangeable synthetic data, over many seeds.
//!
//! Python is found through `EDGECP_PYTHON`, else `scripts/pyenv.sh`; if neither works the
//! crepes tests fail (they never pass silently).

// The brute force is written as plain index loops on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use shared::icp::{
    evaluate, tau_row, Calibration, IcpError, IcpPredictor, Ncm, NcmKind, PValueMode,
};

// ---------------------------------------------------------------------------------------
// brute force: the formulas of DESIGN.md "ICP, precisely", as plainly as possible

fn bf_ratio(num: f64, den: f64) -> f64 {
    // the documented convention: 0/0 = 1, x/0 = +inf
    if num == den {
        1.0
    } else if den == 0.0 {
        f64::INFINITY
    } else {
        num / den
    }
}

fn bf_sq(a: &[f32], b: &[f64]) -> f64 {
    let mut s = 0.0;
    for t in 0..a.len() {
        let d = a[t] as f64 - b[t];
        s += d * d;
    }
    s
}

fn widen(a: &[f32]) -> Vec<f64> {
    a.iter().map(|&v| v as f64).collect()
}

/// alpha(x, y) for every query and class, n x C.
fn bf_scores(kind: NcmKind, tx: &[f32], ty: &[u16], dim: usize, c: usize, q: &[f32]) -> Vec<f64> {
    let nq = q.len() / dim;
    let nt = ty.len();
    let mut out = vec![0.0; nq * c];
    for i in 0..nq {
        let x = &q[i * dim..(i + 1) * dim];
        match kind {
            NcmKind::NearestCentroid | NcmKind::NearestNeighbourRatio => {
                let mut d = vec![0.0f64; c];
                for class in 0..c {
                    if kind == NcmKind::NearestCentroid {
                        let mut mu = vec![0.0f64; dim];
                        let mut count = 0.0;
                        for j in 0..nt {
                            if ty[j] as usize == class {
                                for t in 0..dim {
                                    mu[t] += tx[j * dim + t] as f64;
                                }
                                count += 1.0;
                            }
                        }
                        for m in mu.iter_mut() {
                            *m /= count;
                        }
                        d[class] = bf_sq(x, &mu).sqrt();
                    } else {
                        let mut best = f64::INFINITY;
                        for j in 0..nt {
                            if ty[j] as usize == class {
                                let v = bf_sq(x, &widen(&tx[j * dim..(j + 1) * dim])).sqrt();
                                if v < best {
                                    best = v;
                                }
                            }
                        }
                        d[class] = best;
                    }
                }
                for y in 0..c {
                    let mut other = f64::INFINITY;
                    for cc in 0..c {
                        if cc != y && d[cc] < other {
                            other = d[cc];
                        }
                    }
                    out[i * c + y] = bf_ratio(d[y], other);
                }
            }
            NcmKind::Knn { k } => {
                let d: Vec<f64> = (0..nt)
                    .map(|j| bf_sq(x, &widen(&tx[j * dim..(j + 1) * dim])))
                    .collect();
                // k rounds of "nearest not yet chosen", lower index first on ties
                let mut chosen = vec![false; nt];
                for _ in 0..k {
                    let mut best: Option<usize> = None;
                    for j in 0..nt {
                        if !chosen[j] && best.is_none_or(|b| d[j] < d[b]) {
                            best = Some(j);
                        }
                    }
                    chosen[best.unwrap()] = true;
                }
                for y in 0..c {
                    let mut count = 0.0;
                    for j in 0..nt {
                        if chosen[j] && ty[j] as usize != y {
                            count += 1.0;
                        }
                    }
                    out[i * c + y] = count;
                }
            }
        }
    }
    out
}

/// One p-value by counting.
fn bf_p(
    cal: &[f64],
    cal_y: &[u16],
    mondrian: bool,
    y: usize,
    a: f64,
    mode: PValueMode,
    tau: f64,
) -> f64 {
    let (mut gt, mut eq, mut n) = (0usize, 0usize, 0usize);
    for i in 0..cal.len() {
        if mondrian && cal_y[i] as usize != y {
            continue;
        }
        n += 1;
        if cal[i] > a {
            gt += 1;
        } else if cal[i] == a {
            eq += 1;
        }
    }
    match mode {
        PValueMode::Standard => (gt + eq + 1) as f64 / (n + 1) as f64,
        PValueMode::ReferenceCount => (gt + eq) as f64 / n as f64,
        PValueMode::Smoothed { .. } => (gt as f64 + tau * (eq + 1) as f64) / (n + 1) as f64,
    }
}

// ---------------------------------------------------------------------------------------
// data

/// Small-integer embeddings (values -2..=4): every f32 operation on them, on centroids of
/// 128 points and on their squared distances is exact, so results must match bit for bit.
/// Many exact distance ties, on purpose.
fn int_data(rng: &mut ChaCha8Rng, per_class: usize, c: usize, dim: usize) -> (Vec<f32>, Vec<u16>) {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..per_class * c {
        let class = (i + i / c) % c; // interleaved labels, each block of c has all classes
        for t in 0..dim {
            let bias = if t % c == class { 2 } else { 0 };
            x.push((rng.random_range(-2..=2) + bias) as f32);
        }
        y.push(class as u16);
    }
    // make sure the class counts are exactly per_class (centroids exact: divide by 2^7)
    let mut counts = vec![0usize; c];
    for &l in &y {
        counts[l as usize] += 1;
    }
    assert!(counts.iter().all(|&n| n == per_class), "{counts:?}");
    (x, y)
}

/// Gaussian class clusters; labels drawn uniformly (exchangeable examples).
struct Gauss {
    means: Vec<f64>,
    dim: usize,
    c: usize,
}

impl Gauss {
    fn new(rng: &mut ChaCha8Rng, c: usize, dim: usize, separation: f64) -> Self {
        let n = Normal::new(0.0, separation).unwrap();
        Gauss {
            means: (0..c * dim).map(|_| n.sample(rng)).collect(),
            dim,
            c,
        }
    }

    fn sample(&self, rng: &mut ChaCha8Rng, n: usize) -> (Vec<f32>, Vec<u16>) {
        let noise = Normal::new(0.0, 1.0).unwrap();
        let mut x = Vec::with_capacity(n * self.dim);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let class = rng.random_range(0..self.c);
            for t in 0..self.dim {
                x.push((self.means[class * self.dim + t] + noise.sample(rng)) as f32);
            }
            y.push(class as u16);
        }
        (x, y)
    }

    /// as `sample`, but every class appears at least once (for fitting centroids)
    fn sample_all(&self, rng: &mut ChaCha8Rng, n: usize) -> (Vec<f32>, Vec<u16>) {
        loop {
            let (x, y) = self.sample(rng, n);
            if (0..self.c).all(|c| y.iter().any(|&l| l as usize == c)) {
                return (x, y);
            }
        }
    }
}

const KINDS: [NcmKind; 4] = [
    NcmKind::NearestCentroid,
    NcmKind::Knn { k: 1 },
    NcmKind::Knn { k: 40 },
    NcmKind::NearestNeighbourRatio,
];

// ---------------------------------------------------------------------------------------
// brute-force equality

/// Proper training 5 x 128 (two reference tiles), 300 queries (three query blocks, so the
/// parallel path runs), the first 20 queries duplicates of training points (zero distances).
type Setup = (
    usize,
    usize,
    Vec<f32>,
    Vec<u16>,
    Vec<f32>,
    Vec<u16>,
    Vec<f32>,
    Vec<u16>,
);

/// (classes, dim, train x, train y, calibration x, calibration y, query x, query y)
fn exact_setup() -> Setup {
    let (c, dim) = (5, 20);
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let (tx, ty) = int_data(&mut rng, 128, c, dim);
    let (cx, cy) = int_data(&mut rng, 64, c, dim);
    let (mut qx, qy) = int_data(&mut rng, 60, c, dim);
    for i in 0..20 {
        let j = i * 31 % ty.len();
        qx[i * dim..(i + 1) * dim].copy_from_slice(&tx[j * dim..(j + 1) * dim]);
    }
    (c, dim, tx, ty, cx, cy, qx, qy)
}

#[test]
fn brute_force_scores_equal_for_every_measure() {
    let (c, dim, tx, ty, cx, cy, qx, _) = exact_setup();
    for kind in KINDS {
        let ncm = Ncm::fit(kind, &tx, &ty, dim, c).unwrap();
        let ours = ncm.scores(&qx).unwrap();
        let want = bf_scores(kind, &tx, &ty, dim, c, &qx);
        assert_eq!(ours.len(), want.len());
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            assert!(
                a == b,
                "{kind:?}: score {i} (row {}, class {}): ours {a} brute force {b}",
                i / c,
                i % c
            );
        }
        // one query at a time (serial path) gives the same scores
        for i in [0usize, 7, 150, 299] {
            let one = ncm.scores(&qx[i * dim..(i + 1) * dim]).unwrap();
            assert_eq!(
                one,
                want[i * c..(i + 1) * c].to_vec(),
                "{kind:?} single query {i}"
            );
        }
        // calibration scores = the true-label column
        let cal = ncm.label_scores(&cx, &cy).unwrap();
        let cal_bf = bf_scores(kind, &tx, &ty, dim, c, &cx);
        for (i, &a) in cal.iter().enumerate() {
            assert!(
                a == cal_bf[i * c + cy[i] as usize],
                "{kind:?} calibration score {i}"
            );
        }
    }
    // the data do exercise ties: k-NN distances and equal ratio scores
    let ncm = Ncm::fit(NcmKind::NearestNeighbourRatio, &tx, &ty, dim, c).unwrap();
    let s = ncm.scores(&qx).unwrap();
    assert!(
        s.contains(&0.0),
        "duplicated training points must score 0 for their class"
    );
}

#[test]
fn brute_force_p_values_sets_credibility_confidence_every_mode() {
    let (c, dim, tx, ty, cx, cy, qx, _) = exact_setup();
    let eps = 0.1;
    let mut checked = 0usize;
    for kind in KINDS {
        let ncm = Ncm::fit(kind, &tx, &ty, dim, c).unwrap();
        let cal_scores = ncm.label_scores(&cx, &cy).unwrap();
        let test_scores = bf_scores(kind, &tx, &ty, dim, c, &qx);
        for mondrian in [false, true] {
            for mode in [
                PValueMode::Standard,
                PValueMode::ReferenceCount,
                PValueMode::Smoothed { seed: 11 },
            ] {
                let icp = IcpPredictor::calibrate(ncm.clone(), &cx, &cy, mondrian, mode).unwrap();
                let pred = icp.predict(&qx, eps).unwrap();
                let n = qx.len() / dim;
                assert_eq!(pred.len(), n);
                let mut taus = vec![0.0; c];
                for i in 0..n {
                    if let PValueMode::Smoothed { seed } = mode {
                        tau_row(seed, i as u64, &mut taus);
                    }
                    let p = pred.p_values_of(i);
                    let mut want = vec![0.0; c];
                    for y in 0..c {
                        want[y] = bf_p(
                            &cal_scores,
                            &cy,
                            mondrian,
                            y,
                            test_scores[i * c + y],
                            mode,
                            taus[y],
                        );
                        assert!(
                            p[y] == want[y],
                            "{kind:?} mondrian={mondrian} {mode:?}: p[{i}][{y}] ours {} brute force {}",
                            p[y],
                            want[y]
                        );
                        assert_eq!(pred.set(i).contains(y), want[y] > eps);
                    }
                    // credibility / confidence by plain loops
                    let mut top = 0;
                    for y in 1..c {
                        if want[y] > want[top] {
                            top = y;
                        }
                    }
                    let mut second = f64::NEG_INFINITY;
                    for y in 0..c {
                        if y != top && want[y] > second {
                            second = want[y];
                        }
                    }
                    assert_eq!(pred.credibility()[i], want[top]);
                    assert_eq!(pred.confidence()[i], 1.0 - second);
                    let size = (0..c).filter(|&y| want[y] > eps).count();
                    assert_eq!(pred.set(i).len(), size);
                    checked += 1;
                }
                // the lower-level API on the brute-force scores agrees too
                let cal = Calibration::new(&cal_scores, &cy, c, mondrian).unwrap();
                let mut p2 = vec![0.0; test_scores.len()];
                cal.p_values(&test_scores, mode, 0, &mut p2).unwrap();
                assert_eq!(
                    p2.as_slice(),
                    pred.p_values(),
                    "{kind:?} {mondrian} {mode:?}"
                );
                // batching does not change anything: one sample per call
                icp.set_next_sample(0);
                for i in (0..n).step_by(37) {
                    icp.set_next_sample(i as u64);
                    let one = icp.predict(&qx[i * dim..(i + 1) * dim], eps).unwrap();
                    assert_eq!(one.p_values_of(0), pred.p_values_of(i));
                }
            }
        }
    }
    assert_eq!(checked, 4 * 2 * 3 * 300);
}

#[test]
fn evaluation_matches_brute_force() {
    let (c, dim, tx, ty, cx, cy, qx, qy) = exact_setup();
    let ncm = Ncm::fit(NcmKind::Knn { k: 40 }, &tx, &ty, dim, c).unwrap();
    let icp =
        IcpPredictor::calibrate(ncm, &cx, &cy, false, PValueMode::Smoothed { seed: 3 }).unwrap();
    let grid = shared::icp::default_epsilon_grid();
    let p = icp.p_values(&qx).unwrap();
    let ev = evaluate(&p, &qy, c, &grid).unwrap();
    let n = qy.len();
    let mut sum_dev = 0.0;
    let mut max_dev: f64 = 0.0;
    for (j, &eps) in grid.iter().enumerate() {
        let (mut err, mut size, mut empty, mut single, mut multi) =
            (0usize, 0usize, 0usize, 0usize, 0usize);
        for i in 0..n {
            let mut s = 0;
            for y in 0..c {
                if p[i * c + y] > eps {
                    s += 1;
                }
            }
            size += s;
            if s == 0 {
                empty += 1;
            } else if s == 1 {
                single += 1;
            } else {
                multi += 1;
            }
            if p[i * c + qy[i] as usize] <= eps {
                err += 1;
            }
        }
        let r = &ev.rows[j];
        assert_eq!(r.epsilon, eps);
        assert_eq!(r.error_rate, err as f64 / n as f64, "eps {eps}");
        assert_eq!(r.mean_set_size, size as f64 / n as f64);
        assert_eq!(r.empty, empty as f64 / n as f64);
        assert_eq!(r.singleton, single as f64 / n as f64);
        assert_eq!(r.multiple, multi as f64 / n as f64);
        let dev = (err as f64 / n as f64 - eps).abs();
        sum_dev += dev;
        max_dev = max_dev.max(dev);
    }
    assert!((ev.ece - sum_dev / grid.len() as f64).abs() < 1e-15);
    assert_eq!(ev.mce, max_dev);
    // serialisable for the trainer
    let json = serde_json::to_string(&ev).unwrap();
    assert!(json.contains("\"ece\""));
}

// ---------------------------------------------------------------------------------------
// edge cases

#[test]
fn ties_in_calibration_scores() {
    // scores with ties: 1 x1, 2 x3, 3 x2
    let cal = Calibration::pooled(&[2.0, 3.0, 1.0, 2.0, 3.0, 2.0], 2).unwrap();
    let p = |a: f64, mode| cal.p_value(0, a, mode, 0.25);
    assert_eq!(p(2.0, PValueMode::Standard), 6.0 / 7.0); // 5 scores >= 2, +1
    assert_eq!(p(2.0, PValueMode::ReferenceCount), 5.0 / 6.0);
    assert_eq!(
        p(2.0, PValueMode::Smoothed { seed: 0 }),
        (2.0 + 0.25 * 4.0) / 7.0
    );
    assert_eq!(p(3.0, PValueMode::Standard), 3.0 / 7.0);
    assert_eq!(p(3.5, PValueMode::Standard), 1.0 / 7.0);
    assert_eq!(p(0.0, PValueMode::Standard), 1.0);
    assert_eq!(
        p(f64::INFINITY, PValueMode::Smoothed { seed: 0 }),
        0.25 / 7.0
    );
    let counts = cal.counts(1, 2.0);
    assert_eq!((counts.greater, counts.equal, counts.n), (2, 3, 6));
}

#[test]
fn empty_calibration_set_is_a_clear_error() {
    let err = Calibration::pooled(&[], 4).unwrap_err();
    assert_eq!(err, IcpError::EmptyCalibration);
    assert!(
        err.to_string().contains("calibration set is empty"),
        "{err}"
    );
    let (c, dim, tx, ty, ..) = exact_setup();
    let ncm = Ncm::fit(NcmKind::NearestCentroid, &tx, &ty, dim, c).unwrap();
    assert_eq!(
        IcpPredictor::calibrate(ncm, &[], &[], true, PValueMode::Standard).unwrap_err(),
        IcpError::EmptyCalibration
    );
}

#[test]
fn mondrian_class_without_calibration_examples_is_a_clear_error() {
    let (c, dim, tx, ty, cx, cy, ..) = exact_setup();
    let keep: Vec<usize> = (0..cy.len()).filter(|&i| cy[i] != 3).collect();
    let x: Vec<f32> = keep
        .iter()
        .flat_map(|&i| cx[i * dim..(i + 1) * dim].to_vec())
        .collect();
    let y: Vec<u16> = keep.iter().map(|&i| cy[i]).collect();
    for kind in KINDS {
        let ncm = Ncm::fit(kind, &tx, &ty, dim, c).unwrap();
        let err =
            IcpPredictor::calibrate(ncm.clone(), &x, &y, true, PValueMode::Standard).unwrap_err();
        assert_eq!(err, IcpError::EmptyCalibrationClass { class: 3 });
        let msg = err.to_string();
        assert!(
            msg.contains("class 3") && msg.contains("no calibration examples"),
            "{msg}"
        );
        // pooled calibration on the same data is fine
        let icp = IcpPredictor::calibrate(ncm, &x, &y, false, PValueMode::Standard).unwrap();
        assert!(icp
            .p_values(&cx)
            .unwrap()
            .iter()
            .all(|p| p.is_finite() && *p > 0.0 && *p <= 1.0));
    }
}

// ---------------------------------------------------------------------------------------
// validity on exchangeable data

struct Tally {
    err: Vec<f64>,              // per eps: sum over seeds of error rate
    class_err: Vec<Vec<f64>>,   // per eps, per class: sum over seeds of per-class error rate
    class_seeds: Vec<Vec<f64>>, // seeds in which the class had test examples
}

const EPS: [f64; 4] = [0.02, 0.05, 0.1, 0.2];

fn run_validity(kind: NcmKind, mondrian: bool, mode_seed: Option<u64>, seeds: u64) -> Tally {
    let (c, dim, n_train, n_cal, n_test) = (5, 8, 200, 500, 500);
    let mut t = Tally {
        err: vec![0.0; EPS.len()],
        class_err: vec![vec![0.0; c]; EPS.len()],
        class_seeds: vec![vec![0.0; c]; EPS.len()],
    };
    for s in 0..seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + s);
        let g = Gauss::new(&mut rng, c, dim, 1.0); // overlapping classes: real errors
        let (tx, ty) = g.sample_all(&mut rng, n_train);
        let (cx, cy) = g.sample_all(&mut rng, n_cal);
        let (qx, qy) = g.sample(&mut rng, n_test);
        let mode = match mode_seed {
            Some(m) => PValueMode::Smoothed { seed: m + s },
            None => PValueMode::Standard,
        };
        let ncm = Ncm::fit(kind, &tx, &ty, dim, c).unwrap();
        let icp = IcpPredictor::calibrate(ncm, &cx, &cy, mondrian, mode).unwrap();
        let p = icp.p_values(&qx).unwrap();
        let ev = evaluate(&p, &qy, c, &EPS).unwrap();
        for (e, row) in ev.rows.iter().enumerate() {
            t.err[e] += row.error_rate;
        }
        for ce in &ev.per_class {
            for e in 0..EPS.len() {
                t.class_err[e][ce.class as usize] += ce.error_rate[e];
                t.class_seeds[e][ce.class as usize] += 1.0;
            }
        }
    }
    t
}

/// Standard deviation of the seed-averaged error rate at `eps`: the test-set binomial
/// part plus the calibration part (the conditional error given the calibration set is a
/// Beta variable with variance about eps (1 - eps) / (n_cal + 2)).
fn sigma(eps: f64, n_test: f64, n_cal: f64, seeds: f64) -> f64 {
    (eps * (1.0 - eps) * (1.0 / n_test + 1.0 / (n_cal + 2.0)) / seeds).sqrt()
}

fn check_validity(kind: NcmKind) {
    let seeds = 150u64;
    let (c, n_cal, n_test) = (5.0, 500.0, 500.0);
    for mondrian in [false, true] {
        for smoothed in [false, true] {
            let t = run_validity(kind, mondrian, smoothed.then_some(77), seeds);
            for (e, &eps) in EPS.iter().enumerate() {
                let mean = t.err[e] / seeds as f64;
                let sd = sigma(eps, n_test, n_cal, seeds as f64);
                let what = format!("{kind:?} mondrian={mondrian} smoothed={smoothed} eps={eps}");
                assert!(
                    mean <= eps + 3.0 * sd,
                    "{what}: error rate {mean} > eps + 3 sigma ({sd})"
                );
                if smoothed {
                    // smoothed conformal prediction is exactly valid: error rate = eps
                    assert!(
                        mean >= eps - 3.0 * sd,
                        "{what}: error rate {mean} far below eps ({sd})"
                    );
                } else if kind == NcmKind::NearestCentroid && !mondrian {
                    // continuous scores: conservative by at most 1/(n+1)
                    assert!(
                        mean >= eps - 1.0 / (n_cal + 1.0) - 3.0 * sd,
                        "{what}: error rate {mean} too conservative"
                    );
                }
                if mondrian {
                    for class in 0..5 {
                        let k = t.class_seeds[e][class];
                        let m = t.class_err[e][class] / k;
                        let sdc = sigma(eps, n_test / c, n_cal / c, k);
                        assert!(
                            m <= eps + 3.0 * sdc,
                            "{what}: class {class} error rate {m} > eps + 3 sigma ({sdc})"
                        );
                        if smoothed {
                            assert!(
                                m >= eps - 3.0 * sdc,
                                "{what}: class {class} error rate {m} far below eps"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn validity_nearest_centroid() {
    check_validity(NcmKind::NearestCentroid);
}

#[test]
fn validity_knn() {
    check_validity(NcmKind::Knn { k: 15 });
}

#[test]
fn validity_nn_ratio() {
    check_validity(NcmKind::NearestNeighbourRatio);
}

// ---------------------------------------------------------------------------------------
// crepes

fn write_f64(path: &Path, v: &[f64]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_f64(path: &Path) -> Vec<f64> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn crepes_agreement(kind: NcmKind, seed: u64) {
    let (c, dim) = (6, 10);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let g = Gauss::new(&mut rng, c, dim, 1.2);
    let (tx, ty) = g.sample_all(&mut rng, 400);
    let (cx, cy) = g.sample_all(&mut rng, 400);
    let (qx, _) = g.sample(&mut rng, 150);
    let ncm = Ncm::fit(kind, &tx, &ty, dim, c).unwrap();
    let cal = ncm.label_scores(&cx, &cy).unwrap();
    let test = ncm.scores(&qx).unwrap();
    let n = qx.len() / dim;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let py_seed = 12345u64;
    std::fs::write(
        d.join("meta.json"),
        format!(
            r#"{{"n_cal": {}, "n_test": {n}, "n_classes": {c}, "seed": {py_seed}}}"#,
            cal.len()
        ),
    )
    .unwrap();
    write_f64(&d.join("cal_scores.f64"), &cal);
    let labels: Vec<u8> = cy.iter().flat_map(|l| l.to_le_bytes()).collect();
    std::fs::write(d.join("cal_labels.u16"), labels).unwrap();
    write_f64(&d.join("test_scores.f64"), &test);
    common::run_reference_script("crepes_ref.py", d);

    let pooled = Calibration::pooled(&cal, c).unwrap();
    let mond = Calibration::mondrian(&cal, &cy, c).unwrap();
    let mut ours = vec![0.0; test.len()];

    pooled
        .p_values(&test, PValueMode::Standard, 0, &mut ours)
        .unwrap();
    let diff = max_abs_diff(&ours, &read_f64(&d.join("p_standard")));
    assert!(
        diff <= 1e-12,
        "{kind:?} standard p-values differ from crepes by {diff}"
    );

    let taus = read_f64(&d.join("taus_smoothed"));
    assert!(taus.iter().any(|&t| t != taus[0]));
    pooled.p_values_with_taus(&test, &taus, &mut ours).unwrap();
    let diff = max_abs_diff(&ours, &read_f64(&d.join("p_smoothed")));
    assert!(
        diff <= 1e-12,
        "{kind:?} smoothed p-values differ from crepes by {diff}"
    );

    mond.p_values(&test, PValueMode::Standard, 0, &mut ours)
        .unwrap();
    let diff = max_abs_diff(&ours, &read_f64(&d.join("p_mondrian_standard")));
    assert!(
        diff <= 1e-12,
        "{kind:?} Mondrian p-values differ from crepes by {diff}"
    );

    let taus = read_f64(&d.join("taus_mondrian"));
    mond.p_values_with_taus(&test, &taus, &mut ours).unwrap();
    let diff = max_abs_diff(&ours, &read_f64(&d.join("p_mondrian_smoothed")));
    assert!(
        diff <= 1e-12,
        "{kind:?} Mondrian smoothed p-values differ from crepes by {diff}"
    );

    // the comparison covered ties between test and calibration scores where they occur
    let ties = test.iter().filter(|a| cal.contains(a)).count();
    if matches!(kind, NcmKind::Knn { .. }) {
        assert!(
            ties >= test.len() / 10,
            "k-NN scores should tie often, got {ties}"
        );
    }
}

#[test]
fn crepes_agreement_knn_integer_scores_with_ties() {
    crepes_agreement(NcmKind::Knn { k: 40 }, 5);
}

#[test]
fn crepes_agreement_nearest_centroid() {
    crepes_agreement(NcmKind::NearestCentroid, 6);
}

#[test]
fn crepes_agreement_nn_ratio() {
    crepes_agreement(NcmKind::NearestNeighbourRatio, 7);
}
