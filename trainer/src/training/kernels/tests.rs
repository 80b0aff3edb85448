//! The fused block against candle's own ops (conv2d, broadcast arithmetic, relu,
//! max_pool2d) on random shapes, and against finite differences.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{max_pool2d_exact, BlockSpec, ConvBlock};

#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    spec: BlockSpec,
}

fn spec(k: usize, pad: usize, stride: usize, bn: bool, pool: usize, input_grad: bool) -> BlockSpec {
    BlockSpec {
        kernel: k,
        pad,
        stride,
        batch_norm: bn,
        bn_eps: 1e-5,
        pool,
        input_grad,
        train: true,
    }
}

fn random(rng: &mut ChaCha8Rng, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The block written with candle's ops: what the fused kernel must equal.
fn candle_block(x: &Tensor, w: &Tensor, p: &Tensor, s: &BlockSpec) -> Tensor {
    let o = w.dim(0).unwrap();
    let y = x.conv2d(w, s.pad, s.stride, 1, 1).unwrap();
    let bias = if s.batch_norm {
        p.get(0).unwrap()
    } else {
        p.clone()
    };
    let mut y = y
        .broadcast_add(&bias.reshape((1, o, 1, 1)).unwrap())
        .unwrap();
    if s.batch_norm {
        let mean = y.mean_keepdim((0, 2, 3)).unwrap();
        let dev = y.broadcast_sub(&mean).unwrap();
        let var = dev.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
        let gamma = p.get(1).unwrap().reshape((1, o, 1, 1)).unwrap();
        let beta = p.get(2).unwrap().reshape((1, o, 1, 1)).unwrap();
        y = dev
            .broadcast_div(&(var + s.bn_eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&gamma)
            .unwrap()
            .broadcast_add(&beta)
            .unwrap();
    }
    let y = y.relu().unwrap();
    if s.pool > 1 {
        max_pool2d_exact(&y, s.pool).unwrap()
    } else {
        y
    }
}

/// max |t|.
fn max_abs(t: &Tensor) -> f32 {
    let m = t.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    m.to_scalar().unwrap()
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap()) / max_abs(b).max(1e-12)
}

fn params(rng: &mut ChaCha8Rng, o: usize, bn: bool) -> Tensor {
    let bias = random(rng, &[o], 0.5);
    if !bn {
        return bias;
    }
    let gamma = (random(rng, &[o], 0.5) + 1.0).unwrap();
    let beta = random(rng, &[o], 0.5);
    Tensor::stack(&[bias, gamma, beta], 0).unwrap()
}

/// Ours (f32) against candle's ops evaluated in f64 on the same numbers, so that the
/// bound measures our error, not the reference's own f32 rounding.
fn check(case: Case, seed: u64) {
    use candle_core::DType;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let Case {
        b,
        c,
        h,
        w,
        o,
        spec,
    } = case;
    let k = spec.kernel;
    let x = random(&mut rng, &[b, c, h, w], 1.0);
    let wt = random(&mut rng, &[o, c, k, k], 0.5);
    let p = params(&mut rng, o, spec.batch_norm);
    let vars = |t: &[&Tensor], dt: DType| -> Vec<Var> {
        t.iter()
            .map(|t| Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap())
            .collect()
    };
    let ours = vars(&[&x, &wt, &p], DType::F32);
    let refs = vars(&[&x, &wt, &p], DType::F64);
    let want = candle_block(
        refs[0].as_tensor(),
        refs[1].as_tensor(),
        refs[2].as_tensor(),
        &spec,
    );
    let block = ConvBlock::new(spec);
    let got = block
        .apply(
            ours[0].as_tensor(),
            ours[1].as_tensor(),
            ours[2].as_tensor(),
        )
        .unwrap();
    let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let e = rel_err(&got, &f32_of(&want));
    assert!(e < 1e-4, "{case:?}: forward differs by {e}");

    // A loss that weighs every output differently, so every gradient entry is exercised.
    let r = random(&mut rng, want.dims(), 1.0);
    let gw = (want * r.to_dtype(DType::F64).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gg = (got * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let names = ["input", "weights", "parameters"];
    for i in 0..3 {
        let mine = gg.get(ours[i].as_tensor());
        if i == 0 && !spec.input_grad {
            assert!(mine.is_none(), "{case:?}: input gradient computed");
            continue;
        }
        let theirs = f32_of(gw.get(refs[i].as_tensor()).unwrap());
        let e = rel_err(mine.unwrap(), &theirs);
        assert!(e < 1e-4, "{case:?}: {} gradient differs by {e}", names[i]);
    }
    if spec.batch_norm {
        let stats = block.batch_stats().unwrap();
        assert_eq!(stats.count, b * want_hw(&case));
        assert_eq!(stats.mean.len(), o);
    }
}

fn want_hw(c: &Case) -> usize {
    let s = &c.spec;
    let ho = (c.h + 2 * s.pad - s.kernel) / s.stride + 1;
    let wo = (c.w + 2 * s.pad - s.kernel) / s.stride + 1;
    ho * wo
}

#[test]
fn block_equals_candle_ops_on_chosen_shapes() {
    let cases = [
        // the network's own blocks, small batch
        (3, 3, 16, 16, 8, spec(5, 2, 1, true, 1, false)),
        (3, 8, 16, 16, 8, spec(3, 1, 1, true, 2, true)),
        (2, 8, 8, 8, 8, spec(3, 1, 1, false, 2, true)),
        // batch 1, odd sizes, no padding, stride 2, odd size with pooling (floor)
        (1, 2, 7, 9, 3, spec(3, 1, 1, false, 2, true)),
        (2, 3, 11, 9, 5, spec(3, 0, 2, true, 2, true)),
        (4, 5, 13, 13, 6, spec(3, 1, 1, false, 1, true)),
        (2, 4, 9, 7, 3, spec(5, 0, 1, true, 1, true)),
        (1, 3, 9, 9, 4, spec(3, 2, 3, true, 1, true)),
    ];
    for (i, (b, c, h, w, o, s)) in cases.into_iter().enumerate() {
        check(
            Case {
                b,
                c,
                h,
                w,
                o,
                spec: s,
            },
            i as u64,
        );
    }
}

#[test]
fn block_equals_candle_ops_on_random_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for seed in 0..24 {
        let k = [1, 3, 5][rng.random_range(0..3)];
        // pad <= k/2: with more, outputs that see only padding are equal, max-pool ties
        // arise, and candle's max passes the gradient to every tied element where
        // PyTorch and ours pick the first
        let pad = rng.random_range(0..=k / 2);
        let stride = rng.random_range(1..=2);
        let pool = [1, 2, 3][rng.random_range(0..3)];
        // candle's conv2d backward cannot do a strided convolution whose last stride
        // overhangs the input (its conv_transpose2d lacks output padding): keep the
        // reference to sizes it handles; the finite-difference test covers the others.
        let fit = |n: usize| n - (n + 2 * pad - k) % stride;
        let h = fit(rng.random_range(pool * stride + k..15));
        let w = fit(rng.random_range(pool * stride + k..15));
        let case = Case {
            b: rng.random_range(1..5),
            c: rng.random_range(1..6),
            h,
            w,
            o: rng.random_range(1..7),
            spec: spec(
                k,
                pad,
                stride,
                rng.random_bool(0.5),
                pool,
                rng.random_bool(0.7),
            ),
        };
        check(case, 1000 + seed);
    }
}

/// Central differences of L = sum(block(x) * r) against the analytic gradient.
#[test]
fn block_gradients_match_finite_differences() {
    // (batch norm, pool, stride, height): the last case is a strided convolution whose
    // last stride overhangs the input (7 + 2 - 3 = 6 is not a multiple of 4)
    for (bn, pool, stride, h) in [
        (true, 1, 1, 6),
        (true, 2, 1, 6),
        (false, 2, 1, 6),
        (true, 1, 4, 7),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(7 + pool as u64 + stride as u64);
        let (b, c, w, o, k) = (2, 2, 6, 3, 3);
        let s = spec(k, 1, stride, bn, pool, true);
        let ho = (h + 2 - k) / stride + 1;
        let wo = (w + 2 - k) / stride + 1;
        let x = random(&mut rng, &[b, c, h, w], 1.0);
        let wt = random(&mut rng, &[o, c, k, k], 0.5);
        let p = params(&mut rng, o, bn);
        let r = random(&mut rng, &[b, o, ho / pool, wo / pool], 1.0);
        let loss = |x: &Tensor, wt: &Tensor, p: &Tensor| -> f64 {
            let y = ConvBlock::new(s).apply(x, wt, p).unwrap();
            let v: Vec<f32> = (y * &r).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|&a| f64::from(a)).sum()
        };
        let (xv, wv, pv) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&wt).unwrap(),
            Var::from_tensor(&p).unwrap(),
        );
        let y = ConvBlock::new(s)
            .apply(xv.as_tensor(), wv.as_tensor(), pv.as_tensor())
            .unwrap();
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let eps = 1e-3f32;
        for (which, t) in [(0, &x), (1, &wt), (2, &p)] {
            let var = [&xv, &wv, &pv][which];
            let analytic: Vec<f32> = g
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            for idx in (0..base.len()).step_by(base.len().div_ceil(7).max(1)) {
                let mut plus = base.clone();
                plus[idx] += eps;
                let mut minus = base.clone();
                minus[idx] -= eps;
                let at = |v: Vec<f32>| Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
                let (lp, lm) = match which {
                    0 => (loss(&at(plus), &wt, &p), loss(&at(minus), &wt, &p)),
                    1 => (loss(&x, &at(plus), &p), loss(&x, &at(minus), &p)),
                    _ => (loss(&x, &wt, &at(plus)), loss(&x, &wt, &at(minus))),
                };
                let numeric = (lp - lm) / (2.0 * f64::from(eps));
                let a = f64::from(analytic[idx]);
                assert!(
                    (numeric - a).abs() <= 1e-2 * numeric.abs().max(a.abs()) + 5e-3,
                    "bn {bn} pool {pool} tensor {which} index {idx}: numeric {numeric} analytic {a}"
                );
            }
        }
    }
}

/// candle 0.11.1's max_pool2d passes (maxima / k^2) of the gradient: the reason the
/// `Candle` kernel and the reference above use [`max_pool2d_exact`]. If this starts
/// failing, candle fixed it and the workaround can go.
#[test]
fn candle_max_pool2d_gradient_is_scaled_down() {
    let x = Var::from_tensor(
        &Tensor::from_vec(vec![1f32, 2.0, 3.0, 4.0], (1, 1, 2, 2), &Device::Cpu).unwrap(),
    )
    .unwrap();
    let g = x
        .as_tensor()
        .max_pool2d(2)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(gx, vec![0.0, 0.0, 0.0, 0.25]);
    let g = max_pool2d_exact(x.as_tensor(), 2)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(gx, vec![0.0, 0.0, 0.0, 1.0]);
}
