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
