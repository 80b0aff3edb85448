//! Every kernel against a direct convolution in f64 on random data: both Winograd tiles,
//! with and without the fused pool, channel counts that are not whole lane groups, bands
//! and row ranges that split the image; im2col with strides and padding.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::im2col::{self, ConvShape};
use super::pool::{max_pool, PoolShape};
use super::winograd::{self, Tile, WinogradScratch, WinogradShape};

fn random(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Direct convolution (correlation, as ONNX Conv) in f64 + bias, optional ReLU; NHWC.
fn direct(s: &ConvShape, x: &[f32], w: &[f32], b: &[f32], relu: bool) -> Vec<f32> {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut out = vec![0.0f32; oh * ow * s.out_c];
    for y in 0..oh {
        for xo in 0..ow {
            for o in 0..s.out_c {
                let mut acc = f64::from(b[o]);
                for ky in 0..s.kernel {
                    for kx in 0..s.kernel {
                        let iy = (y * s.stride + ky) as isize - s.pad as isize;
                        let ix = (xo * s.stride + kx) as isize - s.pad as isize;
                        if iy < 0 || ix < 0 || iy >= s.in_h as isize || ix >= s.in_w as isize {
                            continue;
                        }
                        for c in 0..s.in_c {
                            let xv = x[(iy as usize * s.in_w + ix as usize) * s.in_c + c];
                            let wv = w[((o * s.in_c + c) * s.kernel + ky) * s.kernel + kx];
                            acc += f64::from(xv) * f64::from(wv);
                        }
                    }
                }
                let v = acc as f32;
                out[(y * ow + xo) * s.out_c + o] = if relu { v.max(0.0) } else { v };
            }
        }
    }
    out
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f32::max)
}

#[test]
fn winograd_matches_direct_convolution() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // (h, w, c, o, tile): whole lane groups, partial ones, tiny images, non-square
    let cases = [
        (32, 32, 32, 64, Tile::F4),
        (32, 32, 32, 64, Tile::F2),
        (16, 16, 64, 64, Tile::F2),
        (16, 16, 64, 64, Tile::F4),
        (8, 12, 5, 7, Tile::F4),
        (6, 10, 17, 33, Tile::F2),
        (2, 2, 3, 1, Tile::F2),
        (4, 8, 16, 20, Tile::F4),
    ];
    for (h, w, c, o, tile) in cases {
        let x = random(&mut rng, h * w * c, 1.0);
        let wt = random(&mut rng, o * c * 9, 0.5);
        let b = random(&mut rng, o, 0.5);
        let shape = ConvShape {
            in_h: h,
            in_w: w,
            in_c: c,
            out_c: o,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let u = winograd::pack_weights(tile, c, o, &wt);
        let ws = WinogradShape { h, w, c, o, tile };
        for relu in [false, true] {
            let want = direct(&shape, &x, &wt, &b, relu);
            let mut scratch = WinogradScratch::default();
            // whole image, then the same image in two row ranges (as the split mode runs it)
            let mut got = vec![f32::NAN; h * w * o];
            winograd::conv_rows(
                ws,
                &u,
                &b,
                relu,
                false,
                &x,
                0,
                ws.tile_rows(),
                &mut scratch,
                &mut got,
            );
            let tol = if tile == Tile::F4 { 2e-5 } else { 2e-6 };
            let d = max_rel_diff(&got, &want);
            assert!(d < tol, "{h}x{w} {c}->{o} {tile:?} relu {relu}: {d}");
            let mid = ws.tile_rows() / 2;
            let mut halves = vec![f32::NAN; h * w * o];
            let (top, bottom) = halves.split_at_mut(mid * ws.row_out(false));
            winograd::conv_rows(ws, &u, &b, relu, false, &x, 0, mid, &mut scratch, top);
            winograd::conv_rows(
                ws,
                &u,
                &b,
                relu,
                false,
                &x,
                mid,
                ws.tile_rows(),
                &mut scratch,
                bottom,
            );
            assert_eq!(
                halves, got,
                "{h}x{w} {tile:?}: split rows differ from one pass"
            );
            // the fused pool equals a separate 2x2/2 pool of the unpooled output
            let p = PoolShape {
                kernel: 2,
                stride: 2,
            };
            let mut pooled_ref = vec![0.0; (h / 2) * (w / 2) * o];
            max_pool(p, &got, h, w, o, &mut pooled_ref);
            let mut pooled = vec![f32::NAN; (h / 2) * (w / 2) * o];
            winograd::conv_rows(
                ws,
                &u,
                &b,
                relu,
                true,
                &x,
                0,
                ws.tile_rows(),
                &mut scratch,
                &mut pooled,
            );
            assert_eq!(pooled, pooled_ref, "{h}x{w} {tile:?}: fused pool");
        }
    }
}

#[test]
fn im2col_matches_direct_convolution() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // (h, w, c, o, k, stride, pad)
    let cases = [
        (32, 32, 3, 32, 5, 1, 2),
        (9, 7, 4, 6, 3, 2, 1),
        (10, 10, 2, 3, 4, 3, 0),
        (5, 5, 1, 1, 5, 1, 0),
        (7, 9, 17, 19, 3, 1, 1),
    ];
    for (h, w, c, o, k, stride, pad) in cases {
        let s = ConvShape {
            in_h: h,
            in_w: w,
            in_c: c,
            out_c: o,
            kernel: k,
            stride,
            pad,
        };
        let x = random(&mut rng, h * w * c, 1.0);
        let wt = random(&mut rng, o * c * k * k, 0.5);
        let b = random(&mut rng, o, 0.5);
        let packed = im2col::pack_weights(&s, &wt);
        let want = direct(&s, &x, &wt, &b, true);
        let mut got = vec![f32::NAN; s.out_h() * s.out_w() * o];
        let mut cols = Vec::new();
        im2col::conv_rows(&s, &packed, &b, true, &x, 0, s.out_h(), &mut cols, &mut got);
        let d = max_rel_diff(&got, &want);
        assert!(d < 2e-6, "{h}x{w} k{k} s{stride} p{pad}: {d}");
    }
}

#[test]
fn tile_choice_follows_the_image() {
    assert_eq!(Tile::choose(32, 32), Some(Tile::F4));
    // 16 blocks of 4x4 are too few for F(4x4)'s matrix products
    assert_eq!(Tile::choose(16, 16), Some(Tile::F2));
    assert_eq!(Tile::choose(14, 14), Some(Tile::F2));
    assert_eq!(Tile::choose(9, 8), None);
}

/// The NEON kernels against the generic code they replace, called side by side on random
/// shapes with ragged edges: channel counts that are not multiples of 4 (nor of the
/// generic code's 16), odd numbers of tile rows and columns, odd image sides for the
/// pool, row ranges that start inside the image. Bitwise equal, except F(4x4)'s input
/// transform (its products by 5 are fused: one rounding fewer), held to 1e-6 of the
/// largest value.
#[cfg(target_arch = "aarch64")]
mod neon_parity {
    use std::sync::atomic::Ordering;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::super::isa::{self, Isa};
    use super::super::neon;
    use super::super::pool::{max_pool_with, PoolShape};
    use super::super::winograd::{
        input_transform, output_transform, OutputSpec, Tile, WinogradShape,
    };
    use super::{max_rel_diff, random};

    /// Channel counts: single, 3 (RGB), partial groups of 4 and of 16, whole ones.
    const CHANNELS: [usize; 10] = [1, 3, 4, 5, 7, 8, 16, 17, 30, 64];

    fn shape(rng: &mut ChaCha8Rng, tile: Tile) -> WinogradShape {
        let b = tile.out();
        WinogradShape {
            h: b * rng.random_range(1..8),
            w: b * rng.random_range(1..8),
            c: CHANNELS[rng.random_range(0..CHANNELS.len())],
            o: CHANNELS[rng.random_range(0..CHANNELS.len())],
            tile,
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn input_transforms_match_the_generic_code() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        for tile in [Tile::F2, Tile::F4] {
            for _ in 0..60 {
                let s = shape(&mut rng, tile);
                let x = random(&mut rng, s.h * s.w * s.c, 2.0);
                let ty0 = rng.random_range(0..s.tile_rows());
                let ty1 = rng.random_range(ty0 + 1..=s.tile_rows());
                let n = (ty1 - ty0) * s.tile_cols() * tile.points() * s.c;
                let (mut want, mut got) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                input_transform(Isa::Baseline, s, &x, ty0, ty1, &mut want);
                input_transform(Isa::Neon, s, &x, ty0, ty1, &mut got);
                if tile == Tile::F2 {
                    assert_eq!(bits(&got), bits(&want), "{s:?} rows {ty0}..{ty1}");
                } else {
                    let d = max_rel_diff(&got, &want);
                    assert!(d <= 1e-6, "{s:?} rows {ty0}..{ty1}: {d}");
                }
            }
        }
    }

    #[test]
    fn output_transforms_match_the_generic_code() {
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        for tile in [Tile::F2, Tile::F4] {
            for i in 0..80 {
                let s = shape(&mut rng, tile);
                let rows = rng.random_range(1..=s.tile_rows());
                let m = random(&mut rng, rows * s.tile_cols() * tile.points() * s.o, 3.0);
                let bias = random(&mut rng, s.o, 0.5);
                let (relu, pool) = (i % 2 == 0, i % 4 < 2);
                let spec = OutputSpec {
                    bias: &bias,
                    relu,
                    pool,
                };
                let n = rows * s.row_out(pool);
                let (mut want, mut got) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                output_transform(Isa::Baseline, s, spec, &m, rows, &mut want);
                output_transform(Isa::Neon, s, spec, &m, rows, &mut got);
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{s:?} rows {rows} relu {relu} pool {pool}"
                );
            }
        }
    }

    #[test]
    fn max_pool_matches_the_generic_code() {
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        for _ in 0..120 {
            let p = PoolShape {
                kernel: rng.random_range(1..4),
                stride: rng.random_range(1..4),
            };
            let (h, w) = (rng.random_range(1..12), rng.random_range(1..12));
            let c = CHANNELS[rng.random_range(0..CHANNELS.len())];
            let x = random(&mut rng, h * w * c, 1.0);
            let n = p.out(h).unwrap_or(0) * p.out(w).unwrap_or(0) * c;
            let (mut want, mut got) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            max_pool_with(Isa::Baseline, p, &x, h, w, c, &mut want);
            max_pool_with(Isa::Neon, p, &x, h, w, c, &mut got);
            assert_eq!(bits(&got), bits(&want), "{p:?} {h}x{w}x{c}");
        }
    }

    #[test]
    fn bias_relu_matches_the_generic_code() {
        let mut rng = ChaCha8Rng::seed_from_u64(24);
        for i in 0..60 {
            let c = CHANNELS[rng.random_range(0..CHANNELS.len())];
            let px = rng.random_range(1..20);
            let x = random(&mut rng, px * c, 1.0);
            let bias = random(&mut rng, c, 0.5);
            let (mut want, mut got) = (x.clone(), x);
            let relu = i % 2 == 0;
            super::super::bias_relu_with(Isa::Baseline, &mut want, &bias, relu);
            super::super::bias_relu_with(Isa::Neon, &mut got, &bias, relu);
            assert_eq!(bits(&got), bits(&want), "{px} px x {c} relu {relu}");
        }
    }

    /// The engine's entry points reach the NEON kernels (unless `EDGECP_INFER_ISA` asks
    /// for the generic code): their call counters move.
    #[test]
    fn the_entry_points_run_the_neon_kernels() {
        if isa::isa() != Isa::Neon {
            return;
        }
        let calls = || neon::CALLS.each_ref().map(|c| c.load(Ordering::Relaxed));
        let before = calls();
        let mut rng = ChaCha8Rng::seed_from_u64(25);
        let (h, w, c, o) = (8, 8, 5, 6);
        let x = random(&mut rng, h * w * c, 1.0);
        let wt = random(&mut rng, o * c * 9, 0.5);
        let b = random(&mut rng, o, 0.5);
        let s = WinogradShape {
            h,
            w,
            c,
            o,
            tile: Tile::F2,
        };
        let u = super::winograd::pack_weights(Tile::F2, c, o, &wt);
        let mut out = vec![0.0; h * w * o];
        let mut scratch = super::WinogradScratch::default();
        super::winograd::conv_rows(
            s,
            &u,
            &b,
            true,
            false,
            &x,
            0,
            s.tile_rows(),
            &mut scratch,
            &mut out,
        );
        let mut pooled = vec![0.0; (h / 2) * (w / 2) * o];
        let p = PoolShape {
            kernel: 2,
            stride: 2,
        };
        super::max_pool(p, &out, h, w, o, &mut pooled);
        let cs = super::ConvShape {
            in_h: h,
            in_w: w,
            in_c: c,
            out_c: o,
            kernel: 3,
            stride: 2,
            pad: 1,
        };
        let packed = super::im2col::pack_weights(&cs, &wt);
        let mut y = vec![0.0; cs.out_h() * cs.out_w() * o];
        super::im2col::conv_rows(
            &cs,
            &packed,
            &b,
            true,
            &x,
            0,
            cs.out_h(),
            &mut Vec::new(),
            &mut y,
        );
        let after = calls();
        for (k, name) in [
            "input transform",
            "output transform",
            "max-pool",
            "bias+relu",
        ]
        .iter()
        .enumerate()
        {
            assert!(after[k] > before[k], "the NEON {name} did not run");
        }
    }
}
