//! aarch64 Advanced SIMD (NEON) versions of the element-wise passes, written with
//! `std::arch::aarch64` intrinsics on one `float32x4_t` (4 channels) at a time: the
//! Winograd input and output transforms (F(2x2, 3x3) and F(4x4, 3x3), the output one with
//! bias, ReLU and the 2x2 max-pool fused), max-pooling, and bias + ReLU (im2col's pass
//! after its matrix product; im2col's fill itself is only copies and zero-fills).
//!
//! They replace the generic lane-array code when [`super::isa::isa`] is
//! [`Isa::Neon`](super::isa::Isa::Neon): that code holds 16 lanes per value, four NEON
//! registers, so F(4x4)'s 36 live values need 144 of the 32 registers and the compiler
//! spills; here each value is one register. The arithmetic is the generic code's, in the
//! same order, so results are bitwise equal, except in F(4x4)'s input transform, whose
//! multiplications by 5 are fused with the following addition (`vfmaq_f32`/`vfmsq_f32`:
//! one rounding instead of two). Multiplications by 2, 4 and 8 are exact, so fusing them
//! changes nothing. Maxima use `vmaxnmq_f32` (IEEE maxNum, as `f32::max`: a NaN operand
//! loses). A channel count that is not a multiple of 4 ends in a partial group (loaded
//! through a zeroed array, stored lane by lane).
//!
//! Every function here checks the lengths of its slices once, up front, against the
//! largest index its loops reach; the loads and stores inside are then unchecked.

use std::arch::aarch64::*;

use super::pool::PoolShape;
use super::winograd::{OutputSpec, Tile, WinogradShape};

type V = float32x4_t;

/// Calls of each entry point (input transform, output transform, max-pool, bias + ReLU):
/// the tests check that the engine's dispatch reaches them.
#[cfg(test)]
pub(crate) static CALLS: [std::sync::atomic::AtomicUsize; 4] =
    [const { std::sync::atomic::AtomicUsize::new(0) }; 4];

#[inline(always)]
fn count(_k: usize) {
    #[cfg(test)]
    CALLS[_k].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Loads `l` (1..=4) values from `p`, zeros in the other lanes.
///
/// # Safety
/// `p..p + l` must be readable.
#[inline(always)]
unsafe fn load(p: *const f32, l: usize) -> V {
    if l == 4 {
        // SAFETY: the caller guarantees 4 readable values.
        unsafe { vld1q_f32(p) }
    } else {
        let mut t = [0.0f32; 4];
        // SAFETY: the caller guarantees `l` readable values; `t` has room for 4 >= l.
        unsafe {
            std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), l);
            vld1q_f32(t.as_ptr())
        }
    }
}

/// Stores the first `l` (1..=4) lanes of `v` at `p`.
///
/// # Safety
/// `p..p + l` must be writable.
#[inline(always)]
unsafe fn store(p: *mut f32, l: usize, v: V) {
    if l == 4 {
        // SAFETY: the caller guarantees 4 writable values.
        unsafe { vst1q_f32(p, v) }
    } else {
        let mut t = [0.0f32; 4];
        // SAFETY: `t` holds 4 values; the caller guarantees `l <= 4` writable ones at `p`.
        unsafe {
            vst1q_f32(t.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(t.as_ptr(), p, l);
        }
    }
}

#[target_feature(enable = "neon")]
#[inline]
fn splat(k: f32) -> V {
    vdupq_n_f32(k)
}

/// F(2x2)'s 1-D input transform B^T: `[d0 - d2, d1 + d2, d2 - d1, d1 - d3]`.
#[target_feature(enable = "neon")]
#[inline]
fn bt2(d: [V; 4]) -> [V; 4] {
    [
        vsubq_f32(d[0], d[2]),
        vaddq_f32(d[1], d[2]),
        vsubq_f32(d[2], d[1]),
        vsubq_f32(d[1], d[3]),
    ]
}

/// F(4x4)'s 1-D input transform B^T (the generic `bt4`; the products by 5 fused).
#[target_feature(enable = "neon")]
#[inline]
fn bt4(d: [V; 6]) -> [V; 6] {
    let (four, five) = (splat(4.0), splat(5.0));
    let d34 = vaddq_f32(d[3], d[4]);
    let d4m3 = vsubq_f32(d[4], d[3]);
    let d12 = vaddq_f32(d[1], d[2]);
    let d1m2 = vsubq_f32(d[1], d[2]);
    let d4m2 = vsubq_f32(d[4], d[2]);
    let d3m1 = vmulq_f32(vsubq_f32(d[3], d[1]), splat(2.0));
    [
        // 4 d0 - 5 d2 + d4
        vaddq_f32(vfmsq_f32(vmulq_f32(d[0], four), d[2], five), d[4]),
        // (d3 + d4) - 4 (d1 + d2)
        vfmsq_f32(d34, d12, four),
        // (d4 - d3) + 4 (d1 - d2)
        vfmaq_f32(d4m3, d1m2, four),
        // (d4 - d2) + 2 (d3 - d1)
        vaddq_f32(d4m2, d3m1),
        // (d4 - d2) - 2 (d3 - d1)
        vsubq_f32(d4m2, d3m1),
        // 4 d1 - 5 d3 + d5
        vaddq_f32(vfmsq_f32(vmulq_f32(d[1], four), d[3], five), d[5]),
    ]
}

/// F(2x2)'s 1-D output transform A^T: `[m0 + m1 + m2, m1 - m2 - m3]`.
#[target_feature(enable = "neon")]
#[inline]
fn at2(m: [V; 4]) -> [V; 2] {
    [
        vaddq_f32(vaddq_f32(m[0], m[1]), m[2]),
        vsubq_f32(vsubq_f32(m[1], m[2]), m[3]),
    ]
}

/// F(4x4)'s 1-D output transform A^T (the generic `at4`; its products by 2, 4 and 8 are
/// exact, so fusing them with the additions rounds the same).
#[target_feature(enable = "neon")]
#[inline]
fn at4(m: [V; 6]) -> [V; 4] {
    let a = vaddq_f32(m[1], m[2]);
    let b = vsubq_f32(m[1], m[2]);
    let c = vaddq_f32(m[3], m[4]);
    let d = vsubq_f32(m[3], m[4]);
    [
        vaddq_f32(vaddq_f32(m[0], a), c),
        vfmaq_f32(b, d, splat(2.0)),
        vfmaq_f32(a, c, splat(4.0)),
        vaddq_f32(vfmaq_f32(b, d, splat(8.0)), m[5]),
    ]
}

/// The input window of one tile, one group of channels.
struct Window {
    x: *const f32,
    h: usize,
    w: usize,
    c_n: usize,
    c0: usize,
    l: usize,
    /// The window lies inside the image: no padding checks.
    inside: bool,
}

impl Window {
    /// Row `i` of the `N x N` window of tile (ty, tx) (blocks of `N - 2`, the window one
    /// pixel above and left of the block); zeros where it falls in the padding.
    ///
    /// # Safety
    /// `x` must hold the `h x w x c_n` image, `c0 + l <= c_n`.
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn row<const N: usize>(&self, ty: usize, tx: usize, i: usize) -> [V; N] {
        let mut r = [splat(0.0); N];
        let iy = (N - 2) * ty + i;
        if !self.inside && (iy == 0 || iy > self.h) {
            return r;
        }
        let base = (iy - 1) * self.w;
        for (j, v) in r.iter_mut().enumerate() {
            let ix = (N - 2) * tx + j;
            if self.inside || (ix != 0 && ix <= self.w) {
                // SAFETY: 1 <= iy <= h and 1 <= ix <= w (checked above, or implied by
                // `inside`), so pixel (iy - 1, ix - 1) is in the image and channels
                // c0..c0 + l are inside its c_n.
                *v = unsafe { load(self.x.add((base + ix - 1) * self.c_n + self.c0), self.l) };
            }
        }
        r
    }
}

/// Input transform of tile rows `ty0..ty1` of image `x` into `v`, laid out as the generic
/// `input_transform_generic` lays it out (tile-major, P rows of C values per tile).
pub fn input_transform(s: WinogradShape, x: &[f32], ty0: usize, ty1: usize, v: &mut [f32]) {
    count(0);
    let (c_n, tw, p) = (s.c, s.tile_cols(), s.tile.points());
    assert!(ty0 <= ty1 && ty1 <= s.tile_rows(), "tile rows out of range");
    assert!(x.len() >= s.h * s.w * c_n, "input image too short");
    assert!(v.len() >= (ty1 - ty0) * tw * p * c_n, "V too short");
    match s.tile {
        // SAFETY: the asserts above: every window pixel read is in the image (Window::row)
        // and every row written, (t * P + xi) * C + c for t < (ty1 - ty0) * tw, xi < P,
        // c < C, is inside `v`.
        Tile::F2 => unsafe { input_f2(s, x.as_ptr(), ty0, ty1, v.as_mut_ptr()) },
        // SAFETY: as above.
        Tile::F4 => unsafe { input_f4(s, x.as_ptr(), ty0, ty1, v.as_mut_ptr()) },
    }
}

/// # Safety
/// As checked by [`input_transform`].
// indices mirror the transform matrices' rows and columns
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "neon")]
unsafe fn input_f2(s: WinogradShape, x: *const f32, ty0: usize, ty1: usize, v: *mut f32) {
    let (c_n, tw, h, w) = (s.c, s.tile_cols(), s.h, s.w);
    for ty in ty0..ty1 {
        for tx in 0..tw {
            let t = (ty - ty0) * tw + tx;
            let inside = ty > 0 && 2 * ty + 3 < h && tx > 0 && 2 * tx + 3 < w;
            let mut c0 = 0;
            while c0 < c_n {
                let l = 4.min(c_n - c0);
                let g = Window {
                    x,
                    h,
                    w,
                    c_n,
                    c0,
                    l,
                    inside,
                };
                // SAFETY: the caller's image (Window::row's contract), c0 + l <= c_n.
                let r: [[V; 4]; 4] = unsafe {
                    [
                        bt2(g.row(ty, tx, 0)),
                        bt2(g.row(ty, tx, 1)),
                        bt2(g.row(ty, tx, 2)),
                        bt2(g.row(ty, tx, 3)),
                    ]
                };
                let dst = (t * 16) * c_n + c0;
                for j in 0..4 {
                    let col = bt2([r[0][j], r[1][j], r[2][j], r[3][j]]);
                    for (i, val) in col.iter().enumerate() {
                        // SAFETY: row t * 16 + i * 4 + j of `v`, channels c0..c0 + l.
                        unsafe { store(v.add(dst + (i * 4 + j) * c_n), l, *val) };
                    }
                }
                c0 += l;
            }
        }
    }
}

/// # Safety
/// As checked by [`input_transform`].
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "neon")]
unsafe fn input_f4(s: WinogradShape, x: *const f32, ty0: usize, ty1: usize, v: *mut f32) {
    let (c_n, tw, h, w) = (s.c, s.tile_cols(), s.h, s.w);
    for ty in ty0..ty1 {
        for tx in 0..tw {
            let t = (ty - ty0) * tw + tx;
            let inside = ty > 0 && 4 * ty + 5 < h && tx > 0 && 4 * tx + 5 < w;
            let mut c0 = 0;
            while c0 < c_n {
                let l = 4.min(c_n - c0);
                let g = Window {
                    x,
                    h,
                    w,
                    c_n,
                    c0,
                    l,
                    inside,
                };
                // SAFETY: the caller's image (Window::row's contract), c0 + l <= c_n.
                let r: [[V; 6]; 6] = unsafe {
                    [
                        bt4(g.row(ty, tx, 0)),
                        bt4(g.row(ty, tx, 1)),
                        bt4(g.row(ty, tx, 2)),
                        bt4(g.row(ty, tx, 3)),
                        bt4(g.row(ty, tx, 4)),
                        bt4(g.row(ty, tx, 5)),
                    ]
                };
                let dst = (t * 36) * c_n + c0;
                for j in 0..6 {
                    let col = bt4([r[0][j], r[1][j], r[2][j], r[3][j], r[4][j], r[5][j]]);
                    for (i, val) in col.iter().enumerate() {
                        // SAFETY: row t * 36 + i * 6 + j of `v`, channels c0..c0 + l.
                        unsafe { store(v.add(dst + (i * 6 + j) * c_n), l, *val) };
                    }
                }
                c0 += l;
            }
        }
    }
}

/// Output transform of a band (`m`: tile-major, P rows of O values per tile), bias, ReLU,
/// pool, into `out` (the band's output rows, NHWC), as the generic
/// `output_transform_generic`.
pub fn output_transform(
    s: WinogradShape,
    spec: OutputSpec<'_>,
    m: &[f32],
    band_tile_rows: usize,
    out: &mut [f32],
) {
    count(1);
    let (o_n, p) = (s.o, s.tile.points());
    let nt = band_tile_rows * s.tile_cols();
    assert!(m.len() >= nt * p * o_n, "M too short");
    assert!(spec.bias.len() >= o_n, "bias too short");
    assert!(
        out.len() >= band_tile_rows * s.row_out(spec.pool),
        "output too short"
    );
    // SAFETY: the asserts above: tile t < nt reads rows t * P..(t + 1) * P of `m`, and
    // writes its block (or pooled block) of the band's rows, inside `out`.
    unsafe {
        match s.tile {
            Tile::F2 => output_f::<false>(s, spec, m.as_ptr(), nt, out.as_mut_ptr()),
            Tile::F4 => output_f::<true>(s, spec, m.as_ptr(), nt, out.as_mut_ptr()),
        }
    }
}

/// # Safety
/// As checked by [`output_transform`].
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "neon")]
unsafe fn output_f<const F4: bool>(
    s: WinogradShape,
    spec: OutputSpec<'_>,
    m: *const f32,
    nt: usize,
    out: *mut f32,
) {
    let (o_n, tw) = (s.o, s.tile_cols());
    let (b, p) = if F4 { (4, 36) } else { (2, 16) };
    let zero = splat(0.0);
    for t in 0..nt {
        let (ty, tx) = (t / tw, t % tw);
        let mut o0 = 0;
        while o0 < o_n {
            let l = 4.min(o_n - o0);
            let base = t * p * o_n + o0;
            // SAFETY: row t * P + xi (xi < P) of `m`, values o0..o0 + l <= O.
            let ld = |xi: usize| unsafe { load(m.add(base + xi * o_n), l) };
            // A^T along each row's columns, then along the rows; y[i][j] is block pixel (i, j)
            let mut y = [[zero; 4]; 4];
            if F4 {
                let mut q = [[zero; 4]; 6];
                for (i, qi) in q.iter_mut().enumerate() {
                    let k = i * 6;
                    *qi = at4([ld(k), ld(k + 1), ld(k + 2), ld(k + 3), ld(k + 4), ld(k + 5)]);
                }
                for j in 0..4 {
                    let col = at4([q[0][j], q[1][j], q[2][j], q[3][j], q[4][j], q[5][j]]);
                    for i in 0..4 {
                        y[i][j] = col[i];
                    }
                }
            } else {
                let q: [[V; 2]; 4] = [
                    at2([ld(0), ld(1), ld(2), ld(3)]),
                    at2([ld(4), ld(5), ld(6), ld(7)]),
                    at2([ld(8), ld(9), ld(10), ld(11)]),
                    at2([ld(12), ld(13), ld(14), ld(15)]),
                ];
                for j in 0..2 {
                    let col = at2([q[0][j], q[1][j], q[2][j], q[3][j]]);
                    y[0][j] = col[0];
                    y[1][j] = col[1];
                }
            }
            // SAFETY: bias holds O values (checked by the caller), o0 + l <= O.
            let bias = unsafe { load(spec.bias.as_ptr().add(o0), l) };
            for row in y.iter_mut().take(b) {
                for px in row.iter_mut().take(b) {
                    *px = vaddq_f32(*px, bias);
                    if spec.relu {
                        *px = vmaxnmq_f32(*px, zero);
                    }
                }
            }
            if spec.pool {
                let pw = s.w / 2;
                for py in 0..b / 2 {
                    for qx in 0..b / 2 {
                        let v = vmaxnmq_f32(
                            vmaxnmq_f32(y[2 * py][2 * qx], y[2 * py][2 * qx + 1]),
                            vmaxnmq_f32(y[2 * py + 1][2 * qx], y[2 * py + 1][2 * qx + 1]),
                        );
                        let (ry, rx) = (ty * b / 2 + py, tx * b / 2 + qx);
                        // SAFETY: pooled pixel (ry, rx) of the band's rows, inside `out`.
                        unsafe { store(out.add((ry * pw + rx) * o_n + o0), l, v) };
                    }
                }
            } else {
                for (i, row) in y.iter().enumerate().take(b) {
                    for (j, px) in row.iter().enumerate().take(b) {
                        let at = ((b * ty + i) * s.w + b * tx + j) * o_n + o0;
                        // SAFETY: pixel (b ty + i, b tx + j) of the band's rows, in `out`.
                        unsafe { store(out.add(at), l, *px) };
                    }
                }
            }
            o0 += l;
        }
    }
}

/// Max-pools `x` (`h x w x c`) into `out` (`out_h x out_w x c`), as the generic
/// `max_pool_generic`.
pub fn max_pool(p: PoolShape, x: &[f32], h: usize, w: usize, c: usize, out: &mut [f32]) {
    count(2);
    let (Some(oh), Some(ow)) = (p.out(h), p.out(w)) else {
        return;
    };
    assert!(x.len() >= h * w * c, "input too short");
    assert!(out.len() >= oh * ow * c, "output too short");
    // SAFETY: the asserts above; every window lies inside the image because oh and ow
    // come from PoolShape::out.
    unsafe { pool_rows(p, x, w, c, oh, ow, out) }
}

/// # Safety
/// As checked by [`max_pool`]: `x` holds the image, `out` the `oh x ow x c` output.
#[target_feature(enable = "neon")]
unsafe fn pool_rows(
    p: PoolShape,
    x: &[f32],
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    out: &mut [f32],
) {
    let full = c - c % 4;
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    for oy in 0..oh {
        for ox in 0..ow {
            let dst = (oy * ow + ox) * c;
            // the window's pixels are (oy * stride + ky, ox * stride + kx), ky, kx < kernel
            let at = |ky: usize, kx: usize| ((oy * p.stride + ky) * w + ox * p.stride + kx) * c;
            let mut c0 = 0;
            while c0 < full {
                // SAFETY: pixel (0, 0) of the window is in `x` (the caller's contract),
                // c0 + 4 <= c.
                let mut acc = unsafe { vld1q_f32(xp.add(at(0, 0) + c0)) };
                for ky in 0..p.kernel {
                    for kx in 0..p.kernel {
                        if ky + kx > 0 {
                            // SAFETY: as above, pixel (ky, kx) of the window.
                            let v = unsafe { vld1q_f32(xp.add(at(ky, kx) + c0)) };
                            acc = vmaxnmq_f32(acc, v);
                        }
                    }
                }
                // SAFETY: output pixel (oy, ox) is in `out` (the caller's contract),
                // c0 + 4 <= c.
                unsafe { vst1q_f32(op.add(dst + c0), acc) };
                c0 += 4;
            }
            for ch in full..c {
                let mut acc = f32::NEG_INFINITY;
                for ky in 0..p.kernel {
                    for kx in 0..p.kernel {
                        acc = acc.max(x[at(ky, kx) + ch]);
                    }
                }
                out[dst + ch] = acc;
            }
        }
    }
}

/// Adds `bias` to every pixel (rows of `bias.len()` channels) of `x`, then clamps at zero
/// when `relu`, as the generic [`super::bias_relu`].
pub fn bias_relu(x: &mut [f32], bias: &[f32], relu: bool) {
    count(3);
    // SAFETY: NEON is part of every aarch64 target (this module is aarch64 only).
    unsafe { bias_relu_rows(x, bias, relu) }
}

/// [`bias_relu`]'s loop, compiled with NEON (safe to call wherever NEON is present):
/// `relu` is decided once per call, and two registers go per step (the autovectorised
/// generic loop runs fewer instructions than one register per step with the test inside).
#[target_feature(enable = "neon")]
fn bias_relu_rows(x: &mut [f32], bias: &[f32], relu: bool) {
    if relu {
        bias_then(x, bias, |y| vmaxnmq_f32(y, splat(0.0)), |y| y.max(0.0));
    } else {
        bias_then(x, bias, |y| y, |y| y);
    }
}

/// `x[p][c] = f(x[p][c] + bias[c])` over every pixel `p`, 8 then 4 channels at a time, the
/// last `c % 4` with `g` (the same function on one value).
#[target_feature(enable = "neon")]
#[inline]
fn bias_then(x: &mut [f32], bias: &[f32], f: impl Fn(V) -> V, g: impl Fn(f32) -> f32) {
    let c = bias.len();
    if c == 0 {
        return;
    }
    let (c8, c4) = (c - c % 8, c - c % 4);
    let b = bias.as_ptr();
    for px in x.chunks_exact_mut(c) {
        let p = px.as_mut_ptr();
        let mut c0 = 0;
        while c0 < c8 {
            // SAFETY: c0 + 8 <= c8 <= c = px.len() = bias.len().
            unsafe {
                let y0 = f(vaddq_f32(vld1q_f32(p.add(c0)), vld1q_f32(b.add(c0))));
                let y1 = f(vaddq_f32(
                    vld1q_f32(p.add(c0 + 4)),
                    vld1q_f32(b.add(c0 + 4)),
                ));
                vst1q_f32(p.add(c0), y0);
                vst1q_f32(p.add(c0 + 4), y1);
            }
            c0 += 8;
        }
        if c0 < c4 {
            // SAFETY: c0 + 4 <= c4 <= c, as above.
            unsafe {
                vst1q_f32(
                    p.add(c0),
                    f(vaddq_f32(vld1q_f32(p.add(c0)), vld1q_f32(b.add(c0)))),
                )
            };
        }
        for (v, bv) in px[c4..].iter_mut().zip(&bias[c4..]) {
            *v = g(*v + bv);
        }
    }
}
