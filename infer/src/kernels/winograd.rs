//! 3x3 convolution (stride 1, padding 1) by Winograd's minimal filtering (Lavin & Gray,
//! 2015). F(2x2, 3x3) makes each 2x2 block of output from a 4x4 input window with 16
//! multiplies per (input, output) channel pair instead of 36 (2.25x less work than
//! im2col); F(4x4, 3x3) makes 4x4 blocks from 6x6 windows with 36 instead of 144 (4x).
//! Per band of tiles, with `P` = 16 or 36 transform points:
//!
//! ```text
//! V[xi] = (B^T d B)[xi]      input transform, xi = 0..P, V[xi] is [tiles, C]
//! M[xi] = V[xi] · U[xi]      P matrix products, U[xi] = (G g G^T)[xi] is [C, O]
//! y     = A^T M A + bias     output transform, then ReLU, then the 2x2 max-pool when fused
//! ```
//!
//! Both tiles are whole 2x2 pooling windows, so a fused pool is a max over values already
//! in registers. F(2x2) uses only additions and halves and stays within a few roundings
//! of a direct convolution; F(4x4)'s points (0, +-1, +-2) multiply by up to 8 and lose
//! about one more decimal digit, still far inside the 1e-4 that bundles are held to (the
//! tests compare both with im2col). F(4x4) is used where a band has enough tiles to keep
//! the matrix products efficient (see [`Tile::choose`]).

use super::dispatch;
use super::isa::{self, Isa};
use super::matmul::matmul;

/// Lanes of the element-wise transforms (one AVX-512 register of f32).
const LANES: usize = 16;
/// Values of V and M per band (about 512 KiB, half of a Zen 4 L2).
const BAND_VALUES: usize = 131_072;

/// The Winograd tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// F(2x2, 3x3): 4x4 windows, 16 points.
    F2,
    /// F(4x4, 3x3): 6x6 windows, 36 points.
    F4,
}

impl Tile {
    /// Output block side.
    pub fn out(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Input window side.
    pub fn window(self) -> usize {
        self.out() + 2
    }

    /// Transform points (matrix products per band).
    pub fn points(self) -> usize {
        self.window() * self.window()
    }

    /// The tile for an `h x w` output: F(4x4) when whole 4x4 blocks cover it and there
    /// are at least 64 of them (fewer make matrix products too short to run at speed),
    /// F(2x2) for any even sides, otherwise none (im2col).
    pub fn choose(h: usize, w: usize) -> Option<Tile> {
        if h.is_multiple_of(4) && w.is_multiple_of(4) && (h / 4) * (w / 4) >= 64 {
            Some(Tile::F4)
        } else if h >= 2 && w >= 2 && h.is_multiple_of(2) && w.is_multiple_of(2) {
            Some(Tile::F2)
        } else {
            None
        }
    }
}

/// Geometry: an `h x w x c` image to `h x w x o` (before the optional pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinogradShape {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub o: usize,
    pub tile: Tile,
}

impl WinogradShape {
    pub fn tile_rows(&self) -> usize {
        self.h / self.tile.out()
    }

    pub fn tile_cols(&self) -> usize {
        self.w / self.tile.out()
    }

    /// Tile rows per band: at least 64 tiles (full-height matrix products), more while V
    /// and M stay within [`BAND_VALUES`].
    pub fn band_rows(&self) -> usize {
        let per_tile = self.tile.points() * (self.c + self.o);
        let tiles = (BAND_VALUES / per_tile.max(1)).max(64);
        (tiles / self.tile_cols().max(1)).clamp(1, self.tile_rows().max(1))
    }

    /// Output values one tile row produces (pooled or not).
    pub fn row_out(&self, pool: bool) -> usize {
        let b = self.tile.out();
        if pool {
            (b / 2) * (self.w / 2) * self.o
        } else {
            b * self.w * self.o
        }
    }
}

/// `U = G g G^T` for every (c, o): `P` planes of `[C, O]` from ONNX weights `[O, C, 3, 3]`.
pub fn pack_weights(tile: Tile, c_n: usize, o_n: usize, w: &[f32]) -> Vec<f32> {
    const G2: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    const G4: [[f64; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    let g_m: &[[f64; 3]] = match tile {
        Tile::F2 => &G2,
        Tile::F4 => &G4,
    };
    let n = g_m.len();
    let mut u = vec![0.0f32; n * n * c_n * o_n];
    for o in 0..o_n {
        for c in 0..c_n {
            let g = &w[(o * c_n + c) * 9..(o * c_n + c + 1) * 9];
            // t = G g (n x 3), then t G^T (n x n), in f64 so packing adds no rounding of its own
            let t: Vec<[f64; 3]> = g_m
                .iter()
                .map(|ga| {
                    let mut row = [0.0; 3];
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|i| ga[i] * f64::from(g[i * 3 + j])).sum();
                    }
                    row
                })
                .collect();
            for (a, ta) in t.iter().enumerate() {
                for (b, gb) in g_m.iter().enumerate() {
                    let v: f64 = (0..3).map(|j| ta[j] * gb[j]).sum();
                    u[((a * n + b) * c_n + c) * o_n + o] = v as f32;
                }
            }
        }
    }
    u
}

/// `LANES` values from `src[at..]` (only `l` of them when `l < LANES`, the rest 0). The
/// whole-register case is a fixed-size copy the compiler keeps in registers; a slice copy
/// of run-time length would be a call to memmove per lane group.
#[inline(always)]
fn load(src: &[f32], at: usize, l: usize) -> [f32; LANES] {
    let mut r = [0.0f32; LANES];
    if l == LANES {
        r.copy_from_slice(&src[at..at + LANES]);
    } else {
        r[..l].copy_from_slice(&src[at..at + l]);
    }
    r
}

/// Stores the first `l` lanes of `v` at `dst[at..]`.
#[inline(always)]
fn store(dst: &mut [f32], at: usize, l: usize, v: &[f32; LANES]) {
    if l == LANES {
        dst[at..at + LANES].copy_from_slice(v);
    } else {
        dst[at..at + l].copy_from_slice(&v[..l]);
    }
}

/// One register of channels.
type Lanes = [f32; LANES];
const ZERO: Lanes = [0.0; LANES];

// Lane-wise arithmetic on values, not slices: inlined, each becomes one vector
// instruction and the transforms' 20-odd live values stay in registers. (Plain loops:
// closures, as in `array::from_fn`, are not inlined into the `#[target_feature]` copies
// and ran the transforms 3x slower.)
#[inline(always)]
fn add(mut a: Lanes, b: Lanes) -> Lanes {
    for q in 0..LANES {
        a[q] += b[q];
    }
    a
}
#[inline(always)]
fn sub(mut a: Lanes, b: Lanes) -> Lanes {
    for q in 0..LANES {
        a[q] -= b[q];
    }
    a
}
#[inline(always)]
fn max(mut a: Lanes, b: Lanes) -> Lanes {
    for q in 0..LANES {
        a[q] = a[q].max(b[q]);
    }
    a
}

#[inline(always)]
fn scale(mut a: Lanes, k: f32) -> Lanes {
    for v in a.iter_mut() {
        *v *= k;
    }
    a
}

/// F(2x2)'s 1-D input transform B^T: `[d0 - d2, d1 + d2, d2 - d1, d1 - d3]`.
#[inline(always)]
fn bt2(d: [Lanes; 4]) -> [Lanes; 4] {
    [
        sub(d[0], d[2]),
        add(d[1], d[2]),
        sub(d[2], d[1]),
        sub(d[1], d[3]),
    ]
}

/// F(4x4)'s 1-D input transform B^T (rows 4 0 -5 0 1 0 / 0 -4 -4 1 1 0 / 0 4 -4 -1 1 0 /
/// 0 -2 -1 2 1 0 / 0 2 -1 -2 1 0 / 0 4 0 -5 0 1).
#[inline(always)]
fn bt4(d: [Lanes; 6]) -> [Lanes; 6] {
    let d34 = add(d[3], d[4]);
    let d4m3 = sub(d[4], d[3]);
    let d12 = add(d[1], d[2]);
    let d1m2 = sub(d[1], d[2]);
    let d4m2 = sub(d[4], d[2]);
    let d3m1 = scale(sub(d[3], d[1]), 2.0);
    [
        add(sub(scale(d[0], 4.0), scale(d[2], 5.0)), d[4]),
        sub(d34, scale(d12, 4.0)),
        add(d4m3, scale(d1m2, 4.0)),
        add(d4m2, d3m1),
        sub(d4m2, d3m1),
        add(sub(scale(d[1], 4.0), scale(d[3], 5.0)), d[5]),
    ]
}

/// F(2x2)'s 1-D output transform A^T: `[m0 + m1 + m2, m1 - m2 - m3]`.
#[inline(always)]
fn at2(m: [Lanes; 4]) -> [Lanes; 2] {
    [add(add(m[0], m[1]), m[2]), sub(sub(m[1], m[2]), m[3])]
}

/// F(4x4)'s 1-D output transform A^T (rows 1 1 1 1 1 0 / 0 1 -1 2 -2 0 / 0 1 1 4 4 0 /
/// 0 1 -1 8 -8 1).
#[inline(always)]
fn at4(m: [Lanes; 6]) -> [Lanes; 4] {
    let a = add(m[1], m[2]);
    let b = sub(m[1], m[2]);
    let c = add(m[3], m[4]);
    let d = sub(m[3], m[4]);
    [
        add(add(m[0], a), c),
        add(b, scale(d, 2.0)),
        add(a, scale(c, 4.0)),
        add(add(b, scale(d, 8.0)), m[5]),
    ]
}

/// Reads the input window of a tile, one lane group of channels.
struct Window<'a> {
    x: &'a [f32],
    h: usize,
    w: usize,
    c_n: usize,
    c0: usize,
    l: usize,
    /// The window lies inside the image: no padding checks.
    inside: bool,
}

impl Window<'_> {
    /// Row `i` of the `N x N` window of tile (ty, tx) (blocks of `N - 2`); zeros where it
    /// falls in the padding.
    #[inline(always)]
    fn row<const N: usize>(&self, ty: usize, tx: usize, i: usize) -> [Lanes; N] {
        let mut r = [ZERO; N];
        // image row iy - 1: the window starts one pixel above and left of the block
        let iy = (N - 2) * ty + i;
        if !self.inside && (iy == 0 || iy > self.h) {
            return r;
        }
        let base = (iy - 1) * self.w;
        for (j, v) in r.iter_mut().enumerate() {
            let ix = (N - 2) * tx + j;
            if self.inside || (ix != 0 && ix <= self.w) {
                *v = load(self.x, (base + ix - 1) * self.c_n + self.c0, self.l);
            }
        }
        r
    }
}

/// Input transform of tile rows `ty0..ty1` of image `x` into `v`, tile-major: tile t's P
/// transformed rows of C values are contiguous (row `t * P + xi`), so the transforms
/// write and read memory in order. `FULL`: C is a multiple of [`LANES`], so every load is
/// a whole register (the compiler then keeps the transform in registers; a partial group
/// costs spills). `F4`: F(4x4), else F(2x2).
// indices mirror the transform matrices' rows and columns
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn input_transform_generic<const FULL: bool, const F4: bool>(
    s: WinogradShape,
    x: &[f32],
    ty0: usize,
    ty1: usize,
    v: &mut [f32],
) {
    let (c_n, tw, h, w) = (s.c, s.tile_cols(), s.h, s.w);
    let (b, p) = if F4 { (4, 36) } else { (2, 16) };
    for ty in ty0..ty1 {
        for tx in 0..tw {
            let t = (ty - ty0) * tw + tx;
            let inside = ty > 0 && b * ty + b + 1 < h && tx > 0 && b * tx + b + 1 < w;
            let mut c0 = 0;
            while c0 < c_n {
                let l = if FULL { LANES } else { LANES.min(c_n - c0) };
                let g = Window {
                    x,
                    h,
                    w,
                    c_n,
                    c0,
                    l,
                    inside,
                };
                // B^T along each row's columns, then along the rows
                if F4 {
                    let r: [[Lanes; 6]; 6] = [
                        bt4(g.row(ty, tx, 0)),
                        bt4(g.row(ty, tx, 1)),
                        bt4(g.row(ty, tx, 2)),
                        bt4(g.row(ty, tx, 3)),
                        bt4(g.row(ty, tx, 4)),
                        bt4(g.row(ty, tx, 5)),
                    ];
                    for j in 0..6 {
                        let col = bt4([r[0][j], r[1][j], r[2][j], r[3][j], r[4][j], r[5][j]]);
                        for (i, val) in col.iter().enumerate() {
                            store(v, (t * p + i * 6 + j) * c_n + c0, l, val);
                        }
                    }
                } else {
                    let r: [[Lanes; 4]; 4] = [
                        bt2(g.row(ty, tx, 0)),
                        bt2(g.row(ty, tx, 1)),
                        bt2(g.row(ty, tx, 2)),
                        bt2(g.row(ty, tx, 3)),
                    ];
                    for j in 0..4 {
                        let col = bt2([r[0][j], r[1][j], r[2][j], r[3][j]]);
                        for (i, val) in col.iter().enumerate() {
                            store(v, (t * p + i * 4 + j) * c_n + c0, l, val);
                        }
                    }
                }
                c0 += l;
            }
        }
    }
}

/// What the output transform adds and fuses.
#[derive(Clone, Copy)]
pub(crate) struct OutputSpec<'a> {
    pub(crate) bias: &'a [f32],
    pub(crate) relu: bool,
    pub(crate) pool: bool,
}

/// Output transform of a band (`m`: tile-major, P rows of O values per tile), bias, ReLU,
/// pool, into `out` (the band's output rows, NHWC). `FULL` and `F4` as in
/// [`input_transform_generic`].
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn output_transform_generic<const FULL: bool, const F4: bool>(
    s: WinogradShape,
    spec: OutputSpec<'_>,
    m: &[f32],
    band_tile_rows: usize,
    out: &mut [f32],
) {
    let (o_n, tw) = (s.o, s.tile_cols());
    let nt = band_tile_rows * tw;
    let (b, p) = if F4 { (4, 36) } else { (2, 16) };
    for t in 0..nt {
        let (ty, tx) = (t / tw, t % tw);
        let mut o0 = 0;
        while o0 < o_n {
            let l = if FULL { LANES } else { LANES.min(o_n - o0) };
            let base = t * p * o_n + o0;
            // (closures are not inlined into the #[target_feature] copies: a macro)
            macro_rules! ld {
                ($xi:expr) => {
                    load(m, base + $xi * o_n, l)
                };
            }
            // A^T along each row's columns, then along the rows; y[i][j] is block pixel (i, j)
            let mut y = [[ZERO; 4]; 4];
            if F4 {
                let mut q = [[ZERO; 4]; 6];
                for (i, qi) in q.iter_mut().enumerate() {
                    let k = i * 6;
                    *qi = at4([
                        ld!(k),
                        ld!(k + 1),
                        ld!(k + 2),
                        ld!(k + 3),
                        ld!(k + 4),
                        ld!(k + 5),
                    ]);
                }
                for j in 0..4 {
                    let col = at4([q[0][j], q[1][j], q[2][j], q[3][j], q[4][j], q[5][j]]);
                    for i in 0..4 {
                        y[i][j] = col[i];
                    }
                }
            } else {
                let q: [[Lanes; 2]; 4] = [
                    at2([ld!(0), ld!(1), ld!(2), ld!(3)]),
                    at2([ld!(4), ld!(5), ld!(6), ld!(7)]),
                    at2([ld!(8), ld!(9), ld!(10), ld!(11)]),
                    at2([ld!(12), ld!(13), ld!(14), ld!(15)]),
                ];
                for j in 0..2 {
                    let col = at2([q[0][j], q[1][j], q[2][j], q[3][j]]);
                    y[0][j] = col[0];
                    y[1][j] = col[1];
                }
            }
            let bias = load(spec.bias, o0, l);
            for row in y.iter_mut().take(b) {
                for px in row.iter_mut().take(b) {
                    *px = add(*px, bias);
                    if spec.relu {
                        *px = max(*px, ZERO);
                    }
                }
            }
            if spec.pool {
                let pw = s.w / 2;
                for py in 0..b / 2 {
                    for qx in 0..b / 2 {
                        let v = max(
                            max(y[2 * py][2 * qx], y[2 * py][2 * qx + 1]),
                            max(y[2 * py + 1][2 * qx], y[2 * py + 1][2 * qx + 1]),
                        );
                        let (ry, rx) = (ty * b / 2 + py, tx * b / 2 + qx);
                        store(out, (ry * pw + rx) * o_n + o0, l, &v);
                    }
                }
            } else {
                for (i, row) in y.iter().enumerate().take(b) {
                    for (j, px) in row.iter().enumerate().take(b) {
                        store(out, ((b * ty + i) * s.w + b * tx + j) * o_n + o0, l, px);
                    }
                }
            }
            o0 += l;
        }
    }
}

/// Input transform of tile rows `ty0..ty1` of `x` into `v` ([`input_transform_generic`]'s
/// layout) with the kernels of `isa` (the NEON one, or the generic code compiled for the
/// x86 set [`isa::isa`] picks).
pub(crate) fn input_transform(
    isa: Isa,
    s: WinogradShape,
    x: &[f32],
    ty0: usize,
    ty1: usize,
    v: &mut [f32],
) {
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        return super::neon::input_transform(s, x, ty0, ty1, v);
    }
    let _ = isa;
    match (s.tile, s.c.is_multiple_of(LANES)) {
        (Tile::F2, true) => dispatch!(input_transform_generic::<true, false>(s, x, ty0, ty1, v)),
        (Tile::F2, false) => dispatch!(input_transform_generic::<false, false>(s, x, ty0, ty1, v)),
        (Tile::F4, true) => dispatch!(input_transform_generic::<true, true>(s, x, ty0, ty1, v)),
        (Tile::F4, false) => dispatch!(input_transform_generic::<false, true>(s, x, ty0, ty1, v)),
    }
}

/// Output transform of a band of `rows` tile rows ([`output_transform_generic`]) with the
/// kernels of `isa`, as [`input_transform`].
pub(crate) fn output_transform(
    isa: Isa,
    s: WinogradShape,
    spec: OutputSpec<'_>,
    m: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        return super::neon::output_transform(s, spec, m, rows, out);
    }
    let _ = isa;
    match (s.tile, s.o.is_multiple_of(LANES)) {
        (Tile::F2, true) => dispatch!(output_transform_generic::<true, false>(
            s, spec, m, rows, out
        )),
        (Tile::F2, false) => dispatch!(output_transform_generic::<false, false>(
            s, spec, m, rows, out
        )),
        (Tile::F4, true) => dispatch!(output_transform_generic::<true, true>(
            s, spec, m, rows, out
        )),
        (Tile::F4, false) => dispatch!(output_transform_generic::<false, true>(
            s, spec, m, rows, out
        )),
    }
}

/// Makes `v` at least `n` long.
pub(crate) fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// Scratch of one thread.
#[derive(Default)]
pub struct WinogradScratch {
    v: Vec<f32>,
    m: Vec<f32>,
}

/// Output tile rows `ty0..ty1` of the convolution of image `x` (`h x w x c`, NHWC) with
/// packed weights `u` ([`pack_weights`]) plus `bias`, ReLU when `relu`, 2x2 max-pool when
/// `pool`, into `out`: those tiles' output rows (pooled or not), NHWC.
#[allow(clippy::too_many_arguments)]
pub fn conv_rows(
    s: WinogradShape,
    u: &[f32],
    bias: &[f32],
    relu: bool,
    pool: bool,
    x: &[f32],
    ty0: usize,
    ty1: usize,
    scratch: &mut WinogradScratch,
    out: &mut [f32],
) {
    let (c_n, o_n, tw, p) = (s.c, s.o, s.tile_cols(), s.tile.points());
    let band = s.band_rows();
    let row_out = s.row_out(pool);
    let spec = OutputSpec { bias, relu, pool };
    let isa = isa::isa();
    let mut ty = ty0;
    while ty < ty1 {
        let tb = (ty + band).min(ty1);
        let nt = (tb - ty) * tw;
        // grown, never shrunk: no zero-filling per call (every value used is written first)
        grow(&mut scratch.v, p * nt * c_n);
        grow(&mut scratch.m, p * nt * o_n);
        let v = &mut scratch.v[..p * nt * c_n];
        input_transform(isa, s, x, ty, tb, v);
        let m = &mut scratch.m[..p * nt * o_n];
        for xi in 0..p {
            // tile-major V and M: row t of product xi is at (t * P + xi) * width
            matmul(
                nt,
                o_n,
                c_n,
                &v[xi * c_n..],
                p * c_n,
                &u[xi * c_n * o_n..(xi + 1) * c_n * o_n],
                o_n,
                &mut m[xi * o_n..],
                p * o_n,
            );
        }
        let dst = &mut out[(ty - ty0) * row_out..(tb - ty0) * row_out];
        let rows = tb - ty;
        output_transform(isa, s, spec, m, rows, dst);
        ty = tb;
    }
}
