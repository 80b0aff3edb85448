//! A deterministic synthetic traffic-sign generator: 43 classes shaped like GTSRB's, for the
//! offline demo and for tests (no data needed).
//!
//! Every class is a procedurally drawn *design*: plate shape x colours x glyph (7-segment
//! digits, arrows, bars, pictograms from polygons and strokes; no fonts), named like GTSRB's
//! `signnames` (see [`class_names`]). Designs are rasterised once into antialiased RGBA
//! textures (4x4 supersampling, box filtered, with a mip pyramid).
//!
//! A *track* is one physical sign seen in consecutive frames, as in GTSRB. Per track a scene is
//! sampled (background of sky / foliage / buildings / ground with clutter, pose with rotation,
//! shear and perspective skew, lighting and colour cast, faded sign colours, camera blur,
//! noise, sometimes an occluder or motion blur) and it changes slowly and smoothly across the
//! frames while the sign grows (the car approaches) and gets sharper. Frames are rendered
//! with 2x2 supersampling of the sign over the background, then blurred, lit and noised.
//!
//! The output is a pure function of the [`SyntheticSpec`]: every track draws from its own RNG
//! seeded from `(seed, class, track)`, so the bytes do not depend on the number of threads.
//! (Byte identity holds for one build of this module on one platform: changes to the
//! renderer, or a libm with different `sin`/`powf` rounding, change the pixels.)
//!
//! Difficulty, for orientation: a nearest-class-mean classifier on raw pixels of held-out
//! tracks gets about 20-30 % (chance is 2.3 %), on per-image standardised pixels about 35 %;
//! the red warning triangles, which differ only in a small glyph, are the hardest classes.

use std::collections::HashMap;
use std::f32::consts::{FRAC_PI_2, PI};
use std::sync::{Arc, Mutex, OnceLock};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{DataError, ImageSet, Result, DEFAULT_SIDE, NUM_CLASSES};
use crate::progress::Progress;

/// Smallest image side the generator accepts.
pub const MIN_SIDE: usize = 8;
/// Largest image side the generator accepts.
pub const MAX_SIDE: usize = 1024;

/// What to generate: `NUM_CLASSES * tracks_per_class * frames_per_track` images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntheticSpec {
    /// Side length of every (square) image in pixels, `MIN_SIDE..=MAX_SIDE`.
    pub side: usize,
    /// Tracks (physical signs) per class, at least 1.
    pub tracks_per_class: usize,
    /// Frames (images) per track, at least 1.
    pub frames_per_track: usize,
    /// Everything random derives from this.
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            side: DEFAULT_SIDE,
            tracks_per_class: 10,
            frames_per_track: 10,
            seed: 42,
        }
    }
}

impl SyntheticSpec {
    /// Checks that the spec can be generated.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_SIDE..=MAX_SIDE).contains(&self.side) {
            return Err(DataError::Invalid(format!(
                "synthetic side must be within {MIN_SIDE}..={MAX_SIDE} pixels, got {}",
                self.side
            )));
        }
        if self.tracks_per_class == 0 {
            return Err(DataError::Invalid(
                "synthetic tracks_per_class must be at least 1, got 0".into(),
            ));
        }
        if self.frames_per_track == 0 {
            return Err(DataError::Invalid(
                "synthetic frames_per_track must be at least 1, got 0".into(),
            ));
        }
        let bytes = NUM_CLASSES
            .checked_mul(self.tracks_per_class)
            .and_then(|n| n.checked_mul(self.frames_per_track))
            .and_then(|n| n.checked_mul(self.side * self.side * 3));
        if bytes.is_none_or(|b| b > isize::MAX as usize) {
            return Err(DataError::Invalid(format!(
                "synthetic spec too large: {NUM_CLASSES} classes x {} tracks x {} frames of \
                 {s}x{s} pixels does not fit in memory",
                self.tracks_per_class,
                self.frames_per_track,
                s = self.side
            )));
        }
        Ok(())
    }

    /// Number of images the spec generates.
    pub fn num_images(&self) -> usize {
        NUM_CLASSES * self.tracks_per_class * self.frames_per_track
    }
}

/// Names of the 43 classes, indexed by class id (GTSRB's `signnames`).
pub fn class_names() -> Vec<String> {
    super::gtsrb_class_names()
}

/// Generates the synthetic set: classes in order, then tracks, then frames. Tracks are
/// `CCCCC/TTTTT`, files `synthetic/CCCCC/TTTTT_FFFFF`. Reports one item per image.
pub fn generate(spec: &SyntheticSpec, progress: &dyn Progress) -> Result<ImageSet> {
    spec.validate()?;
    let side = spec.side;
    let frames = spec.frames_per_track;
    let image_len = side * side * 3;
    let total = spec.num_images();
    progress.phase("synthetic signs");
    progress.set_total(total as u64);

    let textures = textures(texture_size(side));
    let mut set = ImageSet::new(side);
    set.pixels = vec![0u8; total * image_len];
    set.pixels
        .par_chunks_mut(frames * image_len)
        .enumerate()
        .for_each(|(i, out)| {
            let class = i / spec.tracks_per_class;
            let track = i % spec.tracks_per_class;
            let mut rng = track_rng(spec.seed, class, track);
            render_track(&mut rng, side, frames, &textures[class], out);
            progress.inc(frames as u64);
        });
    set.labels.reserve_exact(total);
    set.tracks.reserve_exact(total);
    set.files.reserve_exact(total);
    for class in 0..NUM_CLASSES {
        for track in 0..spec.tracks_per_class {
            let track_id = format!("{class:05}/{track:05}");
            for frame in 0..frames {
                set.labels.push(class as u16);
                set.tracks.push(track_id.clone());
                set.files
                    .push(format!("synthetic/{class:05}/{track:05}_{frame:05}"));
            }
        }
    }
    Ok(set)
}

// ---------------------------------------------------------------------------------------------
// Randomness

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The RNG of one track: a pure function of `(seed, class, track)`.
fn track_rng(seed: u64, class: usize, track: usize) -> ChaCha8Rng {
    let mut s = seed ^ 0x5359_4E54_5349_474E; // "SYNTSIGN"
    let mut h = splitmix64(&mut s);
    s = h ^ (class as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    h = splitmix64(&mut s);
    s = h ^ (track as u64).wrapping_mul(0xA076_1D64_78BD_642F);
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut s).to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Uniform in `[a, b)` (`a` when the range is empty).
fn uni(rng: &mut impl Rng, a: f32, b: f32) -> f32 {
    a + (b - a) * rng.random::<f32>()
}

fn normal(rng: &mut impl Rng) -> f32 {
    rng.sample(StandardNormal)
}

fn pick<T: Copy>(rng: &mut impl Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

// ---------------------------------------------------------------------------------------------
// Geometry

type P = [f32; 2];
type C = [f32; 3];

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

fn lerp3(a: C, b: C, t: f32) -> C {
    [
        lerp(a[0], b[0], t),
        lerp(a[1], b[1], t),
        lerp(a[2], b[2], t),
    ]
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// `floor` as an integer without a libm call (the baseline x86-64 target has no `roundss`).
#[inline]
fn fast_floor(x: f32) -> isize {
    let i = x as isize;
    if (i as f32) > x {
        i - 1
    } else {
        i
    }
}

fn seg_dist2(p: P, a: P, b: P) -> f32 {
    let (abx, aby) = (b[0] - a[0], b[1] - a[1]);
    let (apx, apy) = (p[0] - a[0], p[1] - a[1]);
    let len2 = abx * abx + aby * aby;
    let t = if len2 > 0.0 {
        ((apx * abx + apy * aby) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (dx, dy) = (apx - t * abx, apy - t * aby);
    dx * dx + dy * dy
}

/// Even-odd point in polygon.
fn in_poly(p: P, pts: &[P]) -> bool {
    let mut inside = false;
    let mut j = pts.len() - 1;
    for i in 0..pts.len() {
        let (a, b) = (pts[i], pts[j]);
        if (a[1] > p[1]) != (b[1] > p[1])
            && p[0] < (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0]
        {
            inside = !inside;
        }
        j = i;
    }
    inside
}

fn bbox_of(pts: &[P], pad: f32) -> [f32; 4] {
    let mut b = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
    for p in pts {
        b[0] = b[0].min(p[0]);
        b[1] = b[1].min(p[1]);
        b[2] = b[2].max(p[0]);
        b[3] = b[3].max(p[1]);
    }
    [b[0] - pad, b[1] - pad, b[2] + pad, b[3] + pad]
}

/// Filled shapes of sign designs, in canonical sign coordinates (x right, y down, the plate
/// fits the unit disc / square).
#[derive(Clone, Debug)]
enum Shape {
    Disc {
        c: P,
        r: f32,
    },
    Ring {
        c: P,
        r: f32,
        hw: f32,
    },
    Capsule {
        a: P,
        b: P,
        r: f32,
    },
    Poly(Vec<P>),
    /// A polygon grown by `r` (rounded corners).
    RoundPoly {
        pts: Vec<P>,
        r: f32,
    },
}

impl Shape {
    fn bbox(&self) -> [f32; 4] {
        match self {
            Shape::Disc { c, r } => bbox_of(&[*c], *r),
            Shape::Ring { c, r, hw } => bbox_of(&[*c], r + hw),
            Shape::Capsule { a, b, r } => bbox_of(&[*a, *b], *r),
            Shape::Poly(pts) => bbox_of(pts, 0.0),
            Shape::RoundPoly { pts, r } => bbox_of(pts, *r),
        }
    }

    fn contains(&self, p: P) -> bool {
        match self {
            Shape::Disc { c, r } => {
                let (dx, dy) = (p[0] - c[0], p[1] - c[1]);
                dx * dx + dy * dy <= r * r
            }
            Shape::Ring { c, r, hw } => {
                let d = ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2)).sqrt();
                (d - r).abs() <= *hw
            }
            Shape::Capsule { a, b, r } => seg_dist2(p, *a, *b) <= r * r,
            Shape::Poly(pts) => in_poly(p, pts),
            Shape::RoundPoly { pts, r } => {
                in_poly(p, pts)
                    || (0..pts.len())
                        .any(|i| seg_dist2(p, pts[i], pts[(i + 1) % pts.len()]) <= r * r)
            }
        }
    }
}

/// Maps glyph-local coordinates into sign coordinates: a similarity, optionally mirrored.
#[derive(Clone, Copy, Debug)]
struct Tf {
    c: P,
    s: f32,
    flip: bool,
}

impl Tf {
    const ID: Tf = Tf {
        c: [0.0, 0.0],
        s: 1.0,
        flip: false,
    };

    fn p(self, q: P) -> P {
        let x = if self.flip { -q[0] } else { q[0] };
        [self.c[0] + self.s * x, self.c[1] + self.s * q[1]]
    }

    /// A child frame centred at local `c`, scaled by `s`.
    fn sub(self, c: P, s: f32) -> Tf {
        Tf {
            c: self.p(c),
            s: self.s * s,
            flip: self.flip,
        }
    }

    fn mirrored(self, flip: bool) -> Tf {
        Tf {
            flip: self.flip ^ flip,
            ..self
        }
    }

    fn pts(self, pts: &[P]) -> Vec<P> {
        pts.iter().map(|&q| self.p(q)).collect()
    }
}

struct Layer {
    shape: Shape,
    color: C,
    bbox: [f32; 4],
}

/// A sign design: layers painted in order (the last layer containing a point wins).
#[derive(Default)]
struct Design {
    layers: Vec<Layer>,
}

impl Design {
    fn push(&mut self, shape: Shape, color: C) {
        let bbox = shape.bbox();
        self.layers.push(Layer { shape, color, bbox });
    }

    fn color_at(&self, p: P) -> Option<C> {
        self.layers
            .iter()
            .rev()
            .find(|l| {
                p[0] >= l.bbox[0]
                    && p[1] >= l.bbox[1]
                    && p[0] <= l.bbox[2]
                    && p[1] <= l.bbox[3]
                    && l.shape.contains(p)
            })
            .map(|l| l.color)
    }

    fn disc(&mut self, t: Tf, c: P, r: f32, col: C) {
        self.push(
            Shape::Disc {
                c: t.p(c),
                r: r * t.s,
            },
            col,
        );
    }

    fn ring(&mut self, t: Tf, c: P, r: f32, hw: f32, col: C) {
        self.push(
            Shape::Ring {
                c: t.p(c),
                r: r * t.s,
                hw: hw * t.s,
            },
            col,
        );
    }

    /// A polyline of round-capped strokes with half width `hw`.
    fn line(&mut self, t: Tf, pts: &[P], hw: f32, col: C) {
        for w in pts.windows(2) {
            self.push(
                Shape::Capsule {
                    a: t.p(w[0]),
                    b: t.p(w[1]),
                    r: hw * t.s,
                },
                col,
            );
        }
    }

    fn poly(&mut self, t: Tf, pts: &[P], col: C) {
        self.push(Shape::Poly(t.pts(pts)), col);
    }

    fn rect(&mut self, t: Tf, a: P, b: P, col: C) {
        self.poly(t, &[a, [b[0], a[1]], b, [a[0], b[1]]], col);
    }

    /// A regular polygon with circumradius `r` (first vertex at angle `a0`), corners rounded
    /// by `round`.
    #[allow(clippy::too_many_arguments)]
    fn regular(&mut self, t: Tf, n: usize, c: P, r: f32, a0: f32, round: f32, col: C) {
        let inradius = r * (PI / n as f32).cos();
        let k = 1.0 - round / inradius;
        let pts: Vec<P> = (0..n)
            .map(|i| {
                let a = a0 + 2.0 * PI * i as f32 / n as f32;
                t.p([c[0] + k * r * a.cos(), c[1] + k * r * a.sin()])
            })
            .collect();
        self.push(
            Shape::RoundPoly {
                pts,
                r: round * t.s,
            },
            col,
        );
    }

    /// A stroked path ending in an arrow head (`head_len` beyond the last point).
    fn arrow(&mut self, t: Tf, pts: &[P], hw: f32, head_len: f32, head_w: f32, col: C) {
        self.line(t, pts, hw, col);
        let e = pts[pts.len() - 1];
        let q = pts[pts.len() - 2];
        let (dx, dy) = (e[0] - q[0], e[1] - q[1]);
        let n = (dx * dx + dy * dy).sqrt().max(1e-6);
        let (dx, dy) = (dx / n, dy / n);
        let tip = [e[0] + dx * head_len, e[1] + dy * head_len];
        let l = [e[0] - dy * head_w, e[1] + dx * head_w];
        let r = [e[0] + dy * head_w, e[1] - dx * head_w];
        self.poly(t, &[tip, l, r], col);
    }
}

fn quad(p0: P, p1: P, p2: P, n: usize) -> Vec<P> {
    (0..=n)
        .map(|i| {
            let t = i as f32 / n as f32;
            let (a, b, c) = ((1.0 - t) * (1.0 - t), 2.0 * t * (1.0 - t), t * t);
            [
                a * p0[0] + b * p1[0] + c * p2[0],
                a * p0[1] + b * p1[1] + c * p2[1],
            ]
        })
        .collect()
}

fn cubic(p0: P, p1: P, p2: P, p3: P, n: usize) -> Vec<P> {
    (0..=n)
        .map(|i| {
            let t = i as f32 / n as f32;
            let u = 1.0 - t;
            let (a, b, c, d) = (u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t);
            [
                a * p0[0] + b * p1[0] + c * p2[0] + d * p3[0],
                a * p0[1] + b * p1[1] + c * p2[1] + d * p3[1],
            ]
        })
        .collect()
}

/// Points on a circular arc from angle `a0` to `a1` (radians, y down).
fn arc(c: P, r: f32, a0: f32, a1: f32, n: usize) -> Vec<P> {
    (0..=n)
        .map(|i| {
            let a = lerp(a0, a1, i as f32 / n as f32);
            [c[0] + r * a.cos(), c[1] + r * a.sin()]
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Sign designs

const RED: C = [0.78, 0.07, 0.09];
const WHITE: C = [0.94, 0.94, 0.92];
const RIM: C = [0.80, 0.80, 0.78];
const BLACK: C = [0.06, 0.06, 0.07];
const BLUE: C = [0.05, 0.27, 0.66];
const YELLOW: C = [0.97, 0.75, 0.07];
const GREY: C = [0.50, 0.50, 0.50];
const DARK_GREY: C = [0.22, 0.22, 0.23];
const AMBER: C = [0.96, 0.66, 0.08];
const GREEN: C = [0.10, 0.68, 0.30];

/// Radius of the white field inside a red prohibitory ring.
const PROHIB_INNER: f32 = 0.72;

/// Red ring on white: prohibitions. Returns the glyph frame.
fn plate_prohibitory(d: &mut Design) -> Tf {
    d.disc(Tf::ID, [0.0, 0.0], 1.0, RIM);
    d.disc(Tf::ID, [0.0, 0.0], 0.95, RED);
    d.disc(Tf::ID, [0.0, 0.0], PROHIB_INNER, WHITE);
    Tf {
        c: [0.0, 0.0],
        s: 0.62,
        flip: false,
    }
}

/// Red-bordered triangle pointing up: warnings. Returns the glyph frame.
fn plate_warning(d: &mut Design) -> Tf {
    let c = [0.0, 0.17];
    let up = -FRAC_PI_2;
    d.regular(Tf::ID, 3, c, 1.15, up, 0.10, RIM);
    d.regular(Tf::ID, 3, c, 1.08, up, 0.09, RED);
    d.regular(Tf::ID, 3, c, 0.74, up, 0.04, WHITE);
    Tf {
        c: [0.0, 0.19],
        s: 0.37,
        flip: false,
    }
}

/// White-rimmed blue disc: mandatory directions. Returns the glyph frame.
fn plate_mandatory(d: &mut Design) -> Tf {
    d.disc(Tf::ID, [0.0, 0.0], 1.0, WHITE);
    d.disc(Tf::ID, [0.0, 0.0], 0.94, BLUE);
    Tf {
        c: [0.0, 0.0],
        s: 0.72,
        flip: false,
    }
}

/// White disc with a grey edge: end of a restriction (stripes are drawn last, see
/// [`end_stripes`]). Returns the glyph frame.
fn plate_end(d: &mut Design) -> Tf {
    d.disc(Tf::ID, [0.0, 0.0], 1.0, DARK_GREY);
    d.disc(Tf::ID, [0.0, 0.0], 0.94, WHITE);
    Tf {
        c: [0.0, 0.0],
        s: 0.62,
        flip: false,
    }
}

/// The diagonal band of thin black lines (upper right to lower left) of the end signs.
fn end_stripes(d: &mut Design) {
    let s = std::f32::consts::FRAC_1_SQRT_2;
    let (dir, n) = ([-s, s], [s, s]);
    for k in -2..=2 {
        let o = k as f32 * 0.085;
        let l = (0.9f32 * 0.9 - o * o).sqrt() - 0.03;
        let c = [n[0] * o, n[1] * o];
        d.line(
            Tf::ID,
            &[
                [c[0] - dir[0] * l, c[1] - dir[1] * l],
                [c[0] + dir[0] * l, c[1] + dir[1] * l],
            ],
            0.026,
            BLACK,
        );
    }
}

/// Segments a..g of a 7-segment cell, as `(from, to)` in cell units (x 0..1, y 0..2).
const SEGMENTS: [([f32; 2], [f32; 2]); 7] = [
    ([0.0, 0.0], [1.0, 0.0]), // a
    ([1.0, 0.0], [1.0, 1.0]), // b
    ([1.0, 1.0], [1.0, 2.0]), // c
    ([0.0, 2.0], [1.0, 2.0]), // d
    ([0.0, 1.0], [0.0, 2.0]), // e
    ([0.0, 0.0], [0.0, 1.0]), // f
    ([0.0, 1.0], [1.0, 1.0]), // g
];

/// 7-segment-like text (digits and the letters of STOP), centred on the frame's origin.
/// `w`, `h`: cell size, `gap` between cells, `hw` stroke half width.
#[allow(clippy::too_many_arguments)]
fn text(d: &mut Design, t: Tf, s: &str, w: f32, h: f32, gap: f32, hw: f32, col: C) {
    let n = s.chars().count() as f32;
    let total = n * w + (n - 1.0) * gap;
    for (i, ch) in s.chars().enumerate() {
        let x0 = -total / 2.0 + i as f32 * (w + gap);
        let y0 = -h / 2.0;
        let cell = |p: [f32; 2]| [x0 + p[0] * w, y0 + p[1] * h / 2.0];
        let segs: &[usize] = match ch {
            '0' | 'O' => &[0, 1, 2, 3, 4, 5],
            '2' => &[0, 1, 6, 4, 3],
            '3' => &[0, 1, 6, 2, 3],
            '4' => &[5, 6, 1, 2],
            '5' | 'S' => &[0, 5, 6, 2, 3],
            '6' => &[0, 5, 6, 4, 3, 2],
            '8' => &[0, 1, 2, 3, 4, 5, 6],
            '9' => &[0, 1, 2, 3, 5, 6],
            'P' => &[0, 1, 6, 5, 4],
            _ => &[],
        };
        for &k in segs {
            let (a, b) = SEGMENTS[k];
            d.line(t, &[cell(a), cell(b)], hw, col);
        }
        match ch {
            '1' => {
                let x = x0 + 0.62 * w;
                d.line(t, &[[x, y0], [x, y0 + h]], hw, col);
                d.line(t, &[[x, y0], [x - 0.5 * w, y0 + 0.3 * h]], hw, col);
            }
            '7' => d.line(
                t,
                &[[x0, y0], [x0 + w, y0], [x0 + 0.35 * w, y0 + h]],
                hw,
                col,
            ),
            'T' => {
                d.line(t, &[[x0, y0], [x0 + w, y0]], hw, col);
                d.line(t, &[[x0 + w / 2.0, y0], [x0 + w / 2.0, y0 + h]], hw, col);
            }
            _ => {}
        }
    }
}

/// Speed-limit digits inside a prohibitory (or end) plate.
fn speed_digits(d: &mut Design, t: Tf, s: &str, col: C) {
    if s.len() >= 3 {
        text(d, t, s, 0.40, 1.15, 0.15, 0.085, col);
    } else {
        text(d, t, s, 0.52, 1.2, 0.2, 0.1, col);
    }
}

/// A car seen from behind, in a [-1, 1] box; `window` shows the plate colour through.
fn car_rear(d: &mut Design, t: Tf, col: C, window: C) {
    d.poly(
        t,
        &[[-0.62, -0.1], [-0.42, -0.72], [0.42, -0.72], [0.62, -0.1]],
        col,
    );
    d.rect(t, [-0.92, -0.15], [0.92, 0.5], col);
    d.rect(t, [-0.86, 0.45], [-0.5, 0.86], col);
    d.rect(t, [0.5, 0.45], [0.86, 0.86], col);
    d.poly(
        t,
        &[[-0.46, -0.16], [-0.32, -0.58], [0.32, -0.58], [0.46, -0.16]],
        window,
    );
}

/// A lorry seen from behind, in a [-1, 1] box.
fn truck_rear(d: &mut Design, t: Tf, col: C, line: C) {
    d.rect(t, [-0.86, -0.92], [0.86, 0.5], col);
    d.rect(t, [-0.82, 0.45], [-0.42, 0.88], col);
    d.rect(t, [0.42, 0.45], [0.82, 0.88], col);
    d.line(t, &[[0.0, -0.78], [0.0, 0.34]], 0.06, line);
}

/// A lorry from the side (facing right), in a [-1, 1] box.
fn truck_side(d: &mut Design, t: Tf, col: C, window: C) {
    d.rect(t, [-0.95, -0.6], [0.33, 0.28], col);
    d.poly(
        t,
        &[
            [0.4, -0.32],
            [0.74, -0.32],
            [0.96, 0.0],
            [0.96, 0.3],
            [0.4, 0.3],
        ],
        col,
    );
    d.poly(
        t,
        &[[0.5, -0.22], [0.7, -0.22], [0.84, -0.02], [0.5, -0.02]],
        window,
    );
    d.rect(t, [-0.95, 0.22], [0.96, 0.38], col);
    for x in [-0.68, -0.3, 0.7] {
        d.disc(t, [x, 0.45], 0.17, col);
    }
}

/// A walking person, in a [-1, 1] box.
fn person(d: &mut Design, t: Tf, col: C) {
    d.disc(t, [0.05, -0.75], 0.18, col);
    d.line(t, &[[0.02, -0.5], [-0.04, 0.15]], 0.15, col);
    d.line(t, &[[-0.04, 0.15], [-0.36, 0.9]], 0.11, col);
    d.line(t, &[[-0.04, 0.15], [0.22, 0.5], [0.32, 0.9]], 0.11, col);
    d.line(t, &[[0.0, -0.42], [-0.32, 0.05]], 0.09, col);
    d.line(t, &[[0.0, -0.42], [0.32, -0.02]], 0.09, col);
}

/// The glyph of warning sign `class` (18..=31 and 11), in a [-1, 1] box.
fn warning_glyph(d: &mut Design, t: Tf, class: usize) {
    let k = BLACK;
    match class {
        11 => {
            // right of way: thick vertical bar crossed by a thin one
            d.poly(
                t,
                &[[-0.1, -0.9], [0.1, -0.9], [0.22, 0.9], [-0.22, 0.9]],
                k,
            );
            d.line(t, &[[-0.62, -0.12], [0.62, -0.12]], 0.1, k);
        }
        18 => {
            // "!"
            d.poly(
                t,
                &[[-0.19, -0.92], [0.19, -0.92], [0.08, 0.35], [-0.08, 0.35]],
                k,
            );
            d.disc(t, [0.0, 0.7], 0.17, k);
        }
        19 | 20 => {
            let t = t.mirrored(class == 20);
            let p = quad([0.3, 0.9], [0.3, -0.3], [-0.3, -0.45], 10);
            d.arrow(t, &p, 0.13, 0.35, 0.3, k);
        }
        21 => {
            let p = cubic([0.3, 0.92], [-1.0, 0.35], [0.95, -0.1], [-0.2, -0.5], 16);
            d.arrow(t, &p, 0.12, 0.32, 0.28, k);
        }
        22 => {
            d.line(t, &[[-0.9, 0.62], [0.9, 0.62]], 0.09, k);
            for cx in [-0.42, 0.42] {
                d.poly(t, &arc([cx, 0.62], 0.4, PI, 2.0 * PI, 12), k);
            }
        }
        23 => {
            car_rear(d, t.sub([0.0, -0.5], 0.42), k, WHITE);
            for x in [-0.3, 0.3] {
                let p: Vec<P> = (0..=12)
                    .map(|i| {
                        let y = -0.02 + 0.92 * i as f32 / 12.0;
                        [x + 0.16 * (y * 9.0).sin(), y]
                    })
                    .collect();
                d.line(t, &p, 0.07, k);
            }
        }
        24 => {
            d.line(t, &[[-0.45, -0.9], [-0.45, 0.9]], 0.12, k);
            d.line(
                t,
                &[[0.45, 0.9], [0.45, 0.2], [0.1, -0.25], [0.1, -0.9]],
                0.12,
                k,
            );
        }
        25 => {
            // a worker digging next to a pile
            d.disc(t, [-0.2, -0.68], 0.17, k);
            d.line(t, &[[-0.22, -0.45], [-0.05, 0.15]], 0.14, k);
            d.line(t, &[[-0.05, 0.15], [-0.38, 0.9]], 0.1, k);
            d.line(t, &[[-0.05, 0.15], [0.25, 0.5], [0.2, 0.9]], 0.1, k);
            d.line(t, &[[-0.18, -0.35], [0.3, -0.08]], 0.09, k);
            d.line(t, &[[0.0, -0.4], [0.55, 0.5]], 0.05, k);
            d.poly(t, &[[0.42, 0.46], [0.72, 0.46], [0.62, 0.78]], k);
            d.poly(t, &[[0.45, 0.95], [0.75, 0.55], [1.0, 0.95]], k);
        }
        26 => {
            d.rect(t, [-0.34, -0.96], [0.34, 0.96], k);
            d.disc(t, [0.0, -0.56], 0.21, RED);
            d.disc(t, [0.0, 0.0], 0.21, AMBER);
            d.disc(t, [0.0, 0.56], 0.21, GREEN);
        }
        27 => person(d, t, k),
        28 => {
            person(d, t.sub([-0.32, -0.05], 0.9), k);
            person(d, t.sub([0.42, 0.28], 0.62), k);
            d.line(t, &[[-0.05, 0.0], [0.25, 0.18]], 0.06, k);
        }
        29 => {
            for x in [-0.52, 0.52] {
                d.ring(t, [x, 0.38], 0.34, 0.075, k);
            }
            let frame = [[-0.52, 0.38], [-0.1, 0.38], [0.24, -0.16], [-0.32, -0.16]];
            d.line(t, &frame, 0.065, k);
            d.line(t, &[[-0.32, -0.16], [-0.52, 0.38]], 0.065, k);
            d.line(t, &[[0.24, -0.16], [0.52, 0.38]], 0.065, k);
            d.line(t, &[[-0.1, 0.38], [-0.3, -0.34]], 0.06, k);
            d.line(t, &[[-0.44, -0.36], [-0.16, -0.36]], 0.07, k);
            d.line(t, &[[0.24, -0.16], [0.2, -0.42], [0.4, -0.44]], 0.06, k);
        }
        30 => {
            for i in 0..6 {
                let a = FRAC_PI_2 + i as f32 * PI / 3.0;
                let dir = [a.cos(), a.sin()];
                d.line(t, &[[0.0, 0.0], [0.88 * dir[0], 0.88 * dir[1]]], 0.075, k);
                let b = [0.5 * dir[0], 0.5 * dir[1]];
                for side in [-1.0f32, 1.0] {
                    let a2 = a + side * PI / 4.0;
                    d.line(
                        t,
                        &[b, [b[0] + 0.32 * a2.cos(), b[1] + 0.32 * a2.sin()]],
                        0.06,
                        k,
                    );
                }
            }
        }
        31 => {
            // a leaping deer
            d.line(t, &[[-0.45, 0.08], [0.28, -0.14]], 0.21, k);
            d.line(t, &[[0.28, -0.14], [0.5, -0.55]], 0.11, k);
            d.line(t, &[[0.5, -0.55], [0.74, -0.48]], 0.09, k);
            d.line(t, &[[0.46, -0.62], [0.34, -0.92]], 0.05, k);
            d.line(t, &[[0.4, -0.78], [0.2, -0.86]], 0.05, k);
            d.line(t, &[[0.22, -0.04], [0.6, 0.26], [0.86, 0.2]], 0.07, k);
            d.line(t, &[[0.16, -0.02], [0.42, 0.42], [0.64, 0.52]], 0.07, k);
            d.line(t, &[[-0.5, 0.12], [-0.74, 0.5], [-0.92, 0.76]], 0.07, k);
            d.line(t, &[[-0.38, 0.16], [-0.5, 0.56], [-0.7, 0.86]], 0.07, k);
            d.line(t, &[[-0.62, 0.0], [-0.8, -0.12]], 0.06, k);
        }
        _ => unreachable!("class {class} is not a warning sign"),
    }
}

/// The arrows of mandatory sign `class` (33..=40), white, in a [-1, 1] box.
fn mandatory_glyph(d: &mut Design, t: Tf, class: usize) {
    let (hw, hl, hwid) = (0.14, 0.42, 0.38);
    let w = WHITE;
    match class {
        33 | 34 => {
            let t = t.mirrored(class == 34);
            let mut p = vec![[-0.3, 0.82]];
            p.extend(arc([0.05, 0.0], 0.35, PI, 1.5 * PI, 8));
            p.push([0.34, -0.35]);
            d.arrow(t, &p, hw, hl, hwid, w);
        }
        35 => d.arrow(t, &[[0.0, 0.85], [0.0, -0.38]], hw, hl, hwid, w),
        36 | 37 => {
            let t = t.mirrored(class == 37);
            d.arrow(t, &[[-0.22, 0.85], [-0.22, -0.42]], 0.12, 0.38, 0.32, w);
            let mut p = arc([0.1, 0.32], 0.32, PI, 1.5 * PI, 8);
            p.push([0.38, 0.0]);
            d.arrow(t, &p, 0.12, 0.36, 0.3, w);
        }
        38 | 39 => {
            let t = t.mirrored(class == 39);
            d.arrow(t, &[[-0.5, -0.5], [0.2, 0.2]], hw, hl, hwid, w);
        }
        40 => {
            for i in 0..3 {
                let a0 = i as f32 * 2.0 * PI / 3.0 + 0.35;
                let p = arc([0.0, 0.0], 0.58, a0, a0 - 1.15, 10);
                d.arrow(t, &p, 0.12, 0.3, 0.28, w);
            }
        }
        _ => unreachable!("class {class} is not a mandatory sign"),
    }
}

/// The design of class `class` (see [`super::GTSRB_CLASS_NAMES`]).
fn design(class: usize) -> Design {
    let mut d = Design::default();
    let speed = |c: usize| match c {
        0 => Some("20"),
        1 => Some("30"),
        2 => Some("50"),
        3 => Some("60"),
        4 => Some("70"),
        5 => Some("80"),
        7 => Some("100"),
        8 => Some("120"),
        _ => None,
    };
    match class {
        0..=5 | 7 | 8 => {
            let t = plate_prohibitory(&mut d);
            speed_digits(&mut d, t, speed(class).unwrap_or_default(), BLACK);
        }
        6 => {
            let t = plate_end(&mut d);
            speed_digits(&mut d, t, "80", GREY);
            end_stripes(&mut d);
        }
        9 => {
            let t = plate_prohibitory(&mut d);
            car_rear(&mut d, t.sub([-0.5, 0.05], 0.44), RED, WHITE);
            car_rear(&mut d, t.sub([0.5, 0.05], 0.44), BLACK, WHITE);
        }
        10 => {
            let t = plate_prohibitory(&mut d);
            truck_rear(&mut d, t.sub([-0.5, 0.02], 0.46), RED, WHITE);
            car_rear(&mut d, t.sub([0.5, 0.08], 0.42), BLACK, WHITE);
        }
        11 | 18..=31 => {
            let t = plate_warning(&mut d);
            warning_glyph(&mut d, t, class);
        }
        12 => {
            d.regular(Tf::ID, 4, [0.0, 0.0], 1.0, 0.0, 0.03, BLACK);
            d.regular(Tf::ID, 4, [0.0, 0.0], 0.94, 0.0, 0.03, WHITE);
            d.regular(Tf::ID, 4, [0.0, 0.0], 0.6, 0.0, 0.02, YELLOW);
        }
        13 => {
            let c = [0.0, -0.17];
            d.regular(Tf::ID, 3, c, 1.15, FRAC_PI_2, 0.1, RIM);
            d.regular(Tf::ID, 3, c, 1.08, FRAC_PI_2, 0.09, RED);
            d.regular(Tf::ID, 3, c, 0.66, FRAC_PI_2, 0.04, WHITE);
        }
        14 => {
            let r = 1.0 / (PI / 8.0).cos();
            d.regular(Tf::ID, 8, [0.0, 0.0], r, PI / 8.0, 0.02, WHITE);
            d.regular(Tf::ID, 8, [0.0, 0.0], 0.93 * r, PI / 8.0, 0.02, RED);
            let t = Tf {
                c: [0.0, 0.0],
                s: 0.74,
                flip: false,
            };
            text(&mut d, t, "STOP", 0.36, 0.72, 0.13, 0.075, WHITE);
        }
        15 => {
            plate_prohibitory(&mut d);
        }
        16 => {
            let t = plate_prohibitory(&mut d);
            truck_side(&mut d, t.sub([0.0, 0.05], 0.95), BLACK, WHITE);
        }
        17 => {
            d.disc(Tf::ID, [0.0, 0.0], 1.0, RIM);
            d.disc(Tf::ID, [0.0, 0.0], 0.95, RED);
            d.rect(Tf::ID, [-0.64, -0.15], [0.64, 0.15], WHITE);
        }
        32 => {
            plate_end(&mut d);
            end_stripes(&mut d);
        }
        33..=40 => {
            let t = plate_mandatory(&mut d);
            mandatory_glyph(&mut d, t, class);
        }
        41 => {
            let t = plate_end(&mut d);
            car_rear(&mut d, t.sub([-0.5, 0.05], 0.44), GREY, WHITE);
            car_rear(&mut d, t.sub([0.5, 0.05], 0.44), GREY, WHITE);
            end_stripes(&mut d);
        }
        42 => {
            let t = plate_end(&mut d);
            truck_rear(&mut d, t.sub([-0.5, 0.02], 0.46), GREY, WHITE);
            car_rear(&mut d, t.sub([0.5, 0.08], 0.42), GREY, WHITE);
            end_stripes(&mut d);
        }
        _ => unreachable!("class {class} out of range"),
    }
    d
}

// ---------------------------------------------------------------------------------------------
// Textures

/// Half extent of a texture in canonical sign coordinates (the plate fits within 1.0).
const EXTENT: f32 = 1.1;
/// Supersampling per axis when rasterising designs.
const TEX_SS: usize = 4;
/// Supersampling per axis of the sign when rendering frames.
const FRAME_SS: usize = 2;

/// One mip level: premultiplied RGBA texels.
struct Level {
    n: usize,
    texels: Vec<[f32; 4]>,
}

impl Level {
    /// Bilinear sample at texel coordinates (texel centres at `i + 0.5`); transparent
    /// outside.
    #[inline]
    fn sample(&self, tx: f32, ty: f32) -> [f32; 4] {
        let x = tx - 0.5;
        let y = ty - 0.5;
        let (x0, y0) = (fast_floor(x), fast_floor(y));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let n = self.n as isize;
        let get = |i: isize, j: isize| -> [f32; 4] {
            if i < 0 || j < 0 || i >= n || j >= n {
                [0.0; 4]
            } else {
                self.texels[(j * n + i) as usize]
            }
        };
        let (a, b, c, d) = (
            get(x0, y0),
            get(x0 + 1, y0),
            get(x0, y0 + 1),
            get(x0 + 1, y0 + 1),
        );
        let mut out = [0.0; 4];
        for k in 0..4 {
            let top = a[k] + (b[k] - a[k]) * fx;
            let bot = c[k] + (d[k] - c[k]) * fx;
            out[k] = top + (bot - top) * fy;
        }
        out
    }
}

/// A rasterised design with its mip pyramid (level 0 is `n x n`, covering
/// `[-EXTENT, EXTENT]^2`).
struct Texture {
    levels: Vec<Level>,
}

impl Texture {
    fn render(design: &Design, n: usize) -> Texture {
        let step = 2.0 * EXTENT / n as f32;
        let inv = 1.0 / (TEX_SS * TEX_SS) as f32;
        let premul = |c: Option<C>| c.map_or([0.0; 4], |c| [c[0], c[1], c[2], 1.0]);
        // Colours at texel corners: a texel whose corners and centre agree is uniform (every
        // feature of the designs is wider than a texel), the others are supersampled.
        let corners: Vec<Option<C>> = (0..=n)
            .flat_map(|j| {
                (0..=n).map(move |i| {
                    design.color_at([-EXTENT + i as f32 * step, -EXTENT + j as f32 * step])
                })
            })
            .collect();
        let mut texels = vec![[0.0f32; 4]; n * n];
        for (j, row) in texels.chunks_exact_mut(n).enumerate() {
            for (i, texel) in row.iter_mut().enumerate() {
                let (u0, v0) = (-EXTENT + i as f32 * step, -EXTENT + j as f32 * step);
                let c = corners[j * (n + 1) + i];
                if c == corners[j * (n + 1) + i + 1]
                    && c == corners[(j + 1) * (n + 1) + i]
                    && c == corners[(j + 1) * (n + 1) + i + 1]
                    && c == design.color_at([u0 + 0.5 * step, v0 + 0.5 * step])
                {
                    *texel = premul(c);
                    continue;
                }
                let mut acc = [0.0f32; 4];
                for sy in 0..TEX_SS {
                    for sx in 0..TEX_SS {
                        let u = u0 + (sx as f32 + 0.5) / TEX_SS as f32 * step;
                        let v = v0 + (sy as f32 + 0.5) / TEX_SS as f32 * step;
                        let p = premul(design.color_at([u, v]));
                        for k in 0..4 {
                            acc[k] += p[k];
                        }
                    }
                }
                *texel = acc.map(|a| a * inv);
            }
        }
        let mut levels = vec![Level { n, texels }];
        while levels.last().is_some_and(|l| l.n > 4) {
            let prev = levels.last().expect("non-empty");
            let m = prev.n / 2;
            let mut texels = vec![[0.0f32; 4]; m * m];
            for (j, row) in texels.chunks_exact_mut(m).enumerate() {
                for (i, texel) in row.iter_mut().enumerate() {
                    let at = |di: usize, dj: usize| prev.texels[(2 * j + dj) * prev.n + 2 * i + di];
                    let (a, b, c, d) = (at(0, 0), at(1, 0), at(0, 1), at(1, 1));
                    for k in 0..4 {
                        texel[k] = 0.25 * (a[k] + b[k] + c[k] + d[k]);
                    }
                }
            }
            levels.push(Level { n: m, texels });
        }
        Texture { levels }
    }
}

/// Level-0 texture size for images of side `side`: a sign as large as the image still gets
/// at least one texel per frame subsample.
fn texture_size(side: usize) -> usize {
    let need = (2.0 * EXTENT * 0.55 * (side * FRAME_SS) as f32).ceil() as usize;
    need.next_power_of_two().clamp(64, 512)
}

/// Largest level-0 texture size kept in the process-wide cache (about 15 MB for all
/// classes); larger ones are rendered per call.
const MAX_CACHED_TEXTURE: usize = 128;

/// The textures of all classes at level-0 size `n` (rendered once per process for small
/// sizes).
fn textures(n: usize) -> Arc<Vec<Texture>> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<Vec<Texture>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(t) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&n) {
        return t.clone();
    }
    let t: Arc<Vec<Texture>> = Arc::new(
        (0..NUM_CLASSES)
            .into_par_iter()
            .map(|c| Texture::render(&design(c), n))
            .collect(),
    );
    if n > MAX_CACHED_TEXTURE {
        return t;
    }
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(n)
        .or_insert(t)
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Scenes

/// Where the sign is: canonical sign coordinates -> normalised image coordinates ([0, 1]^2).
#[derive(Clone, Copy, Debug)]
struct Pose {
    center: P,
    /// Plate radius as a fraction of the image side.
    radius: f32,
    rot: f32,
    shear: f32,
    /// Horizontal / vertical scale ratio (the sign seen from the side).
    aspect: f32,
    /// Perspective terms: `w = 1 + px u + py v`.
    persp: P,
}

impl Pose {
    fn lerp(&self, o: &Pose, t: f32) -> Pose {
        Pose {
            center: [
                lerp(self.center[0], o.center[0], t),
                lerp(self.center[1], o.center[1], t),
            ],
            radius: lerp(self.radius, o.radius, t),
            rot: lerp(self.rot, o.rot, t),
            shear: lerp(self.shear, o.shear, t),
            aspect: lerp(self.aspect, o.aspect, t),
            persp: [
                lerp(self.persp[0], o.persp[0], t),
                lerp(self.persp[1], o.persp[1], t),
            ],
        }
    }

    /// The homography (row-major 3x3) from sign coordinates to image coordinates.
    fn matrix(&self) -> [f32; 9] {
        let (s, c) = self.rot.sin_cos();
        let k = self.shear;
        let (d0, d1) = (self.radius * self.aspect, self.radius / self.aspect);
        let (a00, a01) = (c * d0, (c * k - s) * d1);
        let (a10, a11) = (s * d0, (s * k + c) * d1);
        let [cx, cy] = self.center;
        let [px, py] = self.persp;
        [
            a00 + cx * px,
            a01 + cx * py,
            cx,
            a10 + cy * px,
            a11 + cy * py,
            cy,
            px,
            py,
            1.0,
        ]
    }
}

fn apply_h(m: &[f32; 9], x: f32, y: f32) -> P {
    let w = m[6] * x + m[7] * y + m[8];
    [
        (m[0] * x + m[1] * y + m[2]) / w,
        (m[3] * x + m[4] * y + m[5]) / w,
    ]
}

fn invert3(m: &[f32; 9]) -> [f32; 9] {
    let m: [f64; 9] = m.map(f64::from);
    let c00 = m[4] * m[8] - m[5] * m[7];
    let c01 = m[5] * m[6] - m[3] * m[8];
    let c02 = m[3] * m[7] - m[4] * m[6];
    let det = m[0] * c00 + m[1] * c01 + m[2] * c02;
    let inv = 1.0 / det;
    [
        c00 * inv,
        (m[2] * m[7] - m[1] * m[8]) * inv,
        (m[1] * m[5] - m[2] * m[4]) * inv,
        c01 * inv,
        (m[0] * m[8] - m[2] * m[6]) * inv,
        (m[2] * m[3] - m[0] * m[5]) * inv,
        c02 * inv,
        (m[1] * m[6] - m[0] * m[7]) * inv,
        (m[0] * m[4] - m[1] * m[3]) * inv,
    ]
    .map(|v| v as f32)
}

/// Value noise on a `g x g` grid over `[-0.5, 1.5]^2`, values in [-1, 1].
struct Noise {
    g: usize,
    v: Vec<f32>,
}

impl Noise {
    fn new(rng: &mut impl Rng, g: usize) -> Noise {
        Noise {
            g,
            v: (0..g * g).map(|_| uni(rng, -1.0, 1.0)).collect(),
        }
    }

    #[inline]
    fn at(&self, x: f32, y: f32) -> f32 {
        let s = (self.g - 1) as f32;
        let fx = ((x + 0.5) * 0.5 * s).clamp(0.0, s - 1e-3);
        let fy = ((y + 0.5) * 0.5 * s).clamp(0.0, s - 1e-3);
        let (i, j) = (fx as usize, fy as usize);
        let (tx, ty) = (fx - i as f32, fy - j as f32);
        let (tx, ty) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
        let g = self.g;
        let a = self.v[j * g + i];
        let b = self.v[j * g + i + 1];
        let c = self.v[(j + 1) * g + i];
        let d = self.v[(j + 1) * g + i + 1];
        lerp(lerp(a, b, tx), lerp(c, d, tx), ty)
    }
}

/// A soft-edged shape in normalised image coordinates (background clutter, occluders).
#[derive(Clone, Copy, Debug)]
enum Soft {
    Disc { c: P, r: f32 },
    Capsule { a: P, b: P, r: f32 },
    Rect { min: P, max: P },
}

impl Soft {
    fn sdf(&self, p: P) -> f32 {
        match *self {
            Soft::Disc { c, r } => ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2)).sqrt() - r,
            Soft::Capsule { a, b, r } => seg_dist2(p, a, b).sqrt() - r,
            Soft::Rect { min, max } => {
                let dx = (min[0] - p[0]).max(p[0] - max[0]);
                let dy = (min[1] - p[1]).max(p[1] - max[1]);
                if dx > 0.0 && dy > 0.0 {
                    (dx * dx + dy * dy).sqrt()
                } else {
                    dx.max(dy)
                }
            }
        }
    }

    fn shifted(&self, d: P) -> Soft {
        let m = |p: P| [p[0] + d[0], p[1] + d[1]];
        match *self {
            Soft::Disc { c, r } => Soft::Disc { c: m(c), r },
            Soft::Capsule { a, b, r } => Soft::Capsule {
                a: m(a),
                b: m(b),
                r,
            },
            Soft::Rect { min, max } => Soft::Rect {
                min: m(min),
                max: m(max),
            },
        }
    }

    /// Coverage of a pixel of width `px` at `p`.
    #[inline]
    fn coverage(&self, p: P, px: f32) -> f32 {
        (0.5 - self.sdf(p) / px).clamp(0.0, 1.0)
    }
}

#[derive(Clone, Copy, Debug)]
enum Region {
    Sky {
        top: C,
        bottom: C,
        clouds: f32,
    },
    Foliage {
        dark: C,
        light: C,
    },
    Building {
        wall: C,
        window: C,
        period: P,
        frac: P,
        phase: P,
    },
    Ground {
        far: C,
        near: C,
    },
    Plain {
        c: C,
    },
}

impl Region {
    fn sample(rng: &mut ChaCha8Rng) -> Region {
        let jit =
            |rng: &mut ChaCha8Rng, c: C, a: f32| c.map(|v| (v + uni(rng, -a, a)).clamp(0.0, 1.0));
        match rng.random_range(0..10) {
            0..=2 => {
                let overcast = rng.random_bool(0.4);
                let top = if overcast {
                    jit(rng, [0.68, 0.7, 0.74], 0.12)
                } else {
                    jit(rng, [0.28, 0.5, 0.84], 0.1)
                };
                let bottom = lerp3(top, [0.9, 0.9, 0.92], uni(rng, 0.2, 0.7));
                Region::Sky {
                    top,
                    bottom,
                    clouds: if overcast { 0.3 } else { uni(rng, 0.0, 0.9) },
                }
            }
            3..=5 => {
                let base = pick(
                    rng,
                    &[
                        [0.16, 0.3, 0.1],
                        [0.3, 0.36, 0.14],
                        [0.1, 0.2, 0.08],
                        [0.42, 0.32, 0.12],
                    ],
                );
                let dark = jit(rng, base.map(|v| v * 0.45), 0.03);
                let light = jit(rng, base.map(|v| (v * 1.7).min(1.0)), 0.06);
                Region::Foliage { dark, light }
            }
            6 | 7 => {
                let wall = pick(
                    rng,
                    &[
                        [0.72, 0.66, 0.56],
                        [0.55, 0.55, 0.56],
                        [0.6, 0.32, 0.24],
                        [0.85, 0.83, 0.78],
                        [0.35, 0.33, 0.32],
                    ],
                );
                let wall = jit(rng, wall, 0.06);
                let window = pick(rng, &[[0.12, 0.14, 0.18], [0.35, 0.45, 0.55]]);
                let window = jit(rng, window, 0.05);
                Region::Building {
                    wall,
                    window,
                    period: [uni(rng, 0.15, 0.45), uni(rng, 0.15, 0.4)],
                    frac: [uni(rng, 0.3, 0.7), uni(rng, 0.3, 0.7)],
                    phase: [rng.random(), rng.random()],
                }
            }
            8 => {
                let grass = rng.random_bool(0.5);
                let far = if grass {
                    jit(rng, [0.3, 0.42, 0.2], 0.06)
                } else {
                    jit(rng, [0.42, 0.42, 0.43], 0.08)
                };
                Region::Ground {
                    far,
                    near: far.map(|v| v * uni(rng, 0.6, 0.9)),
                }
            }
            _ => {
                let g = uni(rng, 0.2, 0.75);
                Region::Plain {
                    c: jit(rng, [g, g, g], 0.06),
                }
            }
        }
    }

    #[inline]
    fn eval(&self, x: f32, y: f32, n1: f32, n2: f32) -> C {
        match *self {
            Region::Sky {
                top,
                bottom,
                clouds,
            } => {
                let base = lerp3(top, bottom, (y * 0.8 + 0.2).clamp(0.0, 1.0));
                let cloud = smoothstep(0.0, 0.7, n1) * clouds;
                lerp3(base, [0.93, 0.93, 0.95], cloud).map(|v| v + 0.015 * n2)
            }
            Region::Foliage { dark, light } => {
                let m = (0.5 + 0.3 * n1 + 0.45 * n2).clamp(0.0, 1.0);
                lerp3(dark, light, m)
            }
            Region::Building {
                wall,
                window,
                period,
                frac,
                phase,
            } => {
                let fx = (x / period[0] + phase[0]).rem_euclid(1.0);
                let fy = (y / period[1] + phase[1]).rem_euclid(1.0);
                let inside = fx < frac[0] && fy < frac[1];
                let base = if inside { window } else { wall };
                base.map(|v| v * (1.0 + 0.1 * n1 + 0.05 * n2))
            }
            Region::Ground { far, near } => {
                lerp3(far, near, y.clamp(0.0, 1.0)).map(|v| v * (1.0 + 0.12 * n2))
            }
            Region::Plain { c } => c.map(|v| v * (1.0 + 0.06 * n1)),
        }
    }
}

/// The scene behind the sign, in world coordinates (normalised image coordinates of the
/// first frame).
struct Background {
    upper: Region,
    lower: Region,
    horizon: f32,
    slope: f32,
    coarse: Noise,
    fine: Noise,
    clutter: Vec<(Soft, C)>,
}

impl Background {
    fn sample(rng: &mut ChaCha8Rng, pose: &Pose) -> Background {
        let upper = Region::sample(rng);
        let lower = Region::sample(rng);
        let horizon = uni(rng, -0.4, 1.4);
        let slope = uni(rng, -0.3, 0.3);
        let coarse = Noise::new(rng, 6);
        let g = rng.random_range(10..20);
        let fine = Noise::new(rng, g);
        let mut clutter = Vec::new();
        if rng.random_bool(0.6) {
            // the sign's own post
            let w = uni(rng, 0.025, 0.05);
            let c = pose.center;
            let grey = uni(rng, 0.35, 0.7);
            clutter.push((
                Soft::Rect {
                    min: [c[0] - w, c[1]],
                    max: [c[0] + w, 2.0],
                },
                [grey, grey, grey * 1.03],
            ));
        }
        for _ in 0..rng.random_range(0..4) {
            let p = [uni(rng, -0.1, 1.1), uni(rng, -0.1, 1.1)];
            let grey = uni(rng, 0.15, 0.7);
            let col = [grey; 3].map(|g| lerp(g, rng.random(), 0.4));
            match rng.random_range(0..5) {
                0 => {
                    // branch or wire
                    let a = uni(rng, 0.0, PI);
                    let l = uni(rng, 0.3, 1.2);
                    let q = [p[0] + l * a.cos(), p[1] + l * a.sin()];
                    let dark = uni(rng, 0.05, 0.3);
                    clutter.push((
                        Soft::Capsule {
                            a: p,
                            b: q,
                            r: uni(rng, 0.004, 0.03),
                        },
                        [dark * 1.1, dark, dark * 0.8],
                    ));
                }
                1 => clutter.push((
                    Soft::Disc {
                        c: p,
                        r: uni(rng, 0.05, 0.3),
                    },
                    col,
                )),
                2 => {
                    let s = [uni(rng, 0.05, 0.5), uni(rng, 0.05, 0.5)];
                    clutter.push((
                        Soft::Rect {
                            min: p,
                            max: [p[0] + s[0], p[1] + s[1]],
                        },
                        col,
                    ));
                }
                3 => {
                    // a neighbouring sign at the edge of the crop
                    let side = rng.random_range(0..4);
                    let along = uni(rng, 0.0, 1.0);
                    let c = match side {
                        0 => [-0.35, along],
                        1 => [1.35, along],
                        2 => [along, -0.35],
                        _ => [along, 1.35],
                    };
                    let r = uni(rng, 0.35, 0.45);
                    let rim = pick(rng, &[RED, BLUE, YELLOW, WHITE]);
                    clutter.push((Soft::Disc { c, r }, rim));
                    clutter.push((Soft::Disc { c, r: r * 0.75 }, WHITE));
                }
                _ => {
                    // leaves
                    let g = uni(rng, 0.1, 0.4);
                    clutter.push((
                        Soft::Disc {
                            c: p,
                            r: uni(rng, 0.04, 0.15),
                        },
                        [g * 0.6, g, g * 0.4],
                    ));
                }
            }
        }
        Background {
            upper,
            lower,
            horizon,
            slope,
            coarse,
            fine,
            clutter,
        }
    }

    /// Colour at world point `p`; `px` is the pixel width in world units.
    #[inline]
    fn eval(&self, p: P, px: f32) -> C {
        let [x, y] = p;
        let n1 = self.coarse.at(x, y);
        let n2 = self.fine.at(x, y);
        let d = y - (self.horizon + self.slope * (x - 0.5) + 0.03 * n1);
        let mut c = if d < -px {
            self.upper.eval(x, y, n1, n2)
        } else if d > px {
            self.lower.eval(x, y, n1, n2)
        } else {
            let t = (d / px * 0.5 + 0.5).clamp(0.0, 1.0);
            lerp3(
                self.upper.eval(x, y, n1, n2),
                self.lower.eval(x, y, n1, n2),
                t,
            )
        };
        for (shape, col) in &self.clutter {
            let a = shape.coverage(p, px);
            if a > 0.0 {
                c = lerp3(c, *col, a);
            }
        }
        c
    }
}

/// Photometry of a track.
struct Look {
    exposure: f32,
    cast: C,
    gamma: f32,
    contrast: f32,
    brightness: f32,
    /// Illumination gradient across the image: direction and strength.
    illum: [f32; 3],
    /// Colour fading of the plate (saturation) and its reflectance gain.
    sign_sat: f32,
    sign_gain: f32,
    /// Highlight / shadow gradient across the plate: direction and strength.
    sign_grad: [f32; 3],
    /// Camera blur (pixels) and the extra blur of the first (distant, upscaled) frames.
    blur: f32,
    far_blur: f32,
    /// Motion blur: length (pixels) and angle.
    motion: Option<(f32, f32)>,
    noise: f32,
}

impl Look {
    fn sample(rng: &mut ChaCha8Rng) -> Look {
        let dark = rng.random_bool(0.1);
        let exposure = if dark {
            uni(rng, 0.35, 0.55)
        } else {
            uni(rng, 0.7, 1.2)
        };
        let cast_k = uni(rng, 0.0, 0.12);
        let cast_a = uni(rng, 0.0, 2.0 * PI);
        let cast = [
            1.0 + cast_k * cast_a.cos(),
            1.0 + cast_k * (cast_a + 2.1).cos(),
            1.0 + cast_k * (cast_a + 4.2).cos(),
        ];
        let ia = uni(rng, 0.0, 2.0 * PI);
        let ga = uni(rng, 0.0, 2.0 * PI);
        Look {
            exposure,
            cast,
            gamma: uni(rng, 0.75, 1.35),
            contrast: uni(rng, 0.75, 1.2),
            brightness: uni(rng, -0.08, 0.08),
            illum: [ia.cos(), ia.sin(), uni(rng, 0.0, 0.35)],
            sign_sat: uni(rng, 0.55, 1.0),
            sign_gain: uni(rng, 0.7, 1.15),
            sign_grad: [ga.cos(), ga.sin(), uni(rng, 0.0, 0.3)],
            blur: uni(rng, 0.0, 0.7),
            far_blur: uni(rng, 0.0, 0.9),
            motion: rng
                .random_bool(0.1)
                .then(|| (uni(rng, 1.5, 4.0), uni(rng, 0.0, PI))),
            noise: uni(rng, 0.004, 0.035),
        }
    }
}

/// Scratch buffers of one track.
struct Scratch {
    img: Vec<f32>,
    tmp: Vec<f32>,
    /// `x^gamma` on `[0, 2]`.
    gamma_lut: Vec<f32>,
}

const LUT_N: usize = 512;
const LUT_MAX: f32 = 2.0;

/// Renders all frames of one track into `out` (`frames` images of `side x side x 3`).
fn render_track(rng: &mut ChaCha8Rng, side: usize, frames: usize, tex: &Texture, out: &mut [u8]) {
    // Pose at the first and last frame: the sign grows and drifts a little.
    let pose0 = Pose {
        center: [0.5 + uni(rng, -0.03, 0.03), 0.5 + uni(rng, -0.03, 0.03)],
        radius: uni(rng, 0.36, 0.44),
        rot: uni(rng, -15.0, 15.0).to_radians(),
        shear: uni(rng, -0.08, 0.08),
        aspect: uni(rng, 0.85, 1.06),
        persp: [uni(rng, -0.1, 0.1), uni(rng, -0.08, 0.08)],
    };
    let growth = uni(rng, 1.0, 1.12);
    let pose1 = Pose {
        center: [
            pose0.center[0] + uni(rng, -0.02, 0.02),
            pose0.center[1] + uni(rng, -0.02, 0.02),
        ],
        radius: (pose0.radius * growth).min(0.48),
        rot: pose0.rot + uni(rng, -3.0, 3.0).to_radians(),
        shear: pose0.shear + uni(rng, -0.03, 0.03),
        aspect: (pose0.aspect + uni(rng, -0.05, 0.05)).min(1.1),
        persp: [
            pose0.persp[0] + uni(rng, -0.03, 0.03),
            pose0.persp[1] + uni(rng, -0.03, 0.03),
        ],
    };
    let bg = Background::sample(rng, &pose0);
    let look = Look::sample(rng);
    let occluder = rng.random_bool(0.12).then(|| {
        let a = uni(rng, 0.0, 2.0 * PI);
        let c = pose0.center;
        let r0 = pose0.radius;
        let edge = [c[0] + r0 * a.cos(), c[1] + r0 * a.sin()];
        let shape = match rng.random_range(0..3) {
            0 => Soft::Disc {
                c: edge,
                r: uni(rng, 0.1, 0.25),
            },
            1 => {
                let b = a + FRAC_PI_2 + uni(rng, -0.5, 0.5);
                let l = uni(rng, 0.3, 0.8);
                Soft::Capsule {
                    a: [edge[0] - l * b.cos(), edge[1] - l * b.sin()],
                    b: [edge[0] + l * b.cos(), edge[1] + l * b.sin()],
                    r: uni(rng, 0.03, 0.09),
                }
            }
            _ => {
                let w = uni(rng, 0.04, 0.1);
                Soft::Rect {
                    min: [edge[0] - w, -1.0],
                    max: [edge[0] + w, 2.0],
                }
            }
        };
        let g = uni(rng, 0.1, 0.5);
        let col = pick(
            rng,
            &[[g * 0.6, g, g * 0.35], [g, g * 0.8, g * 0.6], [g, g, g]],
        );
        let drift = [uni(rng, -0.06, 0.06), uni(rng, -0.06, 0.06)];
        (shape, col, drift)
    });

    let n = side * side * 3;
    let mut s = Scratch {
        img: vec![0.0; n],
        tmp: vec![0.0; n],
        gamma_lut: (0..=LUT_N)
            .map(|i| (i as f32 / LUT_N as f32 * LUT_MAX).powf(look.gamma))
            .collect(),
    };
    for (f, dst) in out.chunks_exact_mut(n).enumerate().take(frames) {
        let t = if frames > 1 {
            f as f32 / (frames - 1) as f32
        } else {
            0.0
        };
        let mut pose = pose0.lerp(&pose1, t);
        pose.center[0] += 0.006 * normal(rng);
        pose.center[1] += 0.006 * normal(rng);
        pose.rot += 0.008 * normal(rng);
        pose.radius *= 1.0 + 0.01 * normal(rng);
        let occ = occluder
            .as_ref()
            .map(|(shape, col, d)| (shape.shifted([d[0] * t, d[1] * t]), *col));
        let exposure = look.exposure * (1.0 + 0.03 * normal(rng));
        let blur = look.blur + look.far_blur * (1.0 - t);
        let motion = look
            .motion
            .map(|(l, a)| (l * uni(rng, 0.8, 1.2), a + 0.1 * normal(rng)));
        let fr = FrameParams {
            pose: &pose,
            zoom: (pose.radius / pose0.radius).powf(0.7),
            center0: pose0.center,
            occ,
            exposure,
            blur,
            motion,
        };
        render_frame(side, tex, &bg, &look, &fr, &mut s, rng, dst);
    }
}

struct FrameParams<'a> {
    pose: &'a Pose,
    /// Background magnification since the first frame (the car approaches).
    zoom: f32,
    center0: P,
    occ: Option<(Soft, C)>,
    exposure: f32,
    blur: f32,
    motion: Option<(f32, f32)>,
}

/// Renders one frame: background, sign (2x2 supersampled), occluder; then camera blur,
/// motion blur, lighting, sensor noise and quantisation into `out`.
#[allow(clippy::too_many_arguments)]
fn render_frame(
    side: usize,
    tex: &Texture,
    bg: &Background,
    look: &Look,
    fr: &FrameParams,
    s: &mut Scratch,
    rng: &mut ChaCha8Rng,
    out: &mut [u8],
) {
    let sf = side as f32;
    let pose = fr.pose;
    let h = pose.matrix();
    let hinv = invert3(&h);

    // Mip level: texels per subsample step at level 0, halved per level.
    let n0 = tex.levels[0].n as f32;
    let texels_per_unit = n0 / (2.0 * EXTENT);
    let sub_per_unit = pose.radius * pose.aspect.min(1.0 / pose.aspect) * sf * FRAME_SS as f32;
    let q = texels_per_unit / sub_per_unit;
    let level = if q > 1.0 {
        (q.log2().floor() as usize).min(tex.levels.len() - 1)
    } else {
        0
    };
    let lv = &tex.levels[level];
    let tscale = lv.n as f32 / (2.0 * EXTENT);

    // Pixel bounding box of the plate.
    let mut bb = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
    for (u, v) in [(-1.05, -1.05), (1.05, -1.05), (-1.05, 1.05), (1.05, 1.05)] {
        let p = apply_h(&h, u, v);
        bb[0] = bb[0].min(p[0] * sf);
        bb[1] = bb[1].min(p[1] * sf);
        bb[2] = bb[2].max(p[0] * sf);
        bb[3] = bb[3].max(p[1] * sf);
    }
    let clampi = |v: f32| (v.max(0.0) as usize).min(side);
    let (bx0, by0) = (clampi(bb[0].floor() - 1.0), clampi(bb[1].floor() - 1.0));
    let (bx1, by1) = (clampi(bb[2].ceil() + 1.0), clampi(bb[3].ceil() + 1.0));

    // Plate colour: fading (saturation) and reflectance.
    let (sat, gain) = (look.sign_sat, look.sign_gain);
    let [gx, gy, gk] = look.sign_grad;
    let px_world = 1.0 / (sf * fr.zoom);
    let inv_ss = 1.0 / (FRAME_SS * FRAME_SS) as f32;

    for y in 0..side {
        for x in 0..side {
            let p = [(x as f32 + 0.5) / sf, (y as f32 + 0.5) / sf];
            let world = [
                fr.center0[0] + (p[0] - pose.center[0]) / fr.zoom,
                fr.center0[1] + (p[1] - pose.center[1]) / fr.zoom,
            ];
            let mut c = bg.eval(world, px_world);
            if x >= bx0 && x < bx1 && y >= by0 && y < by1 {
                let mut acc = [0.0f32; 4];
                let (mut su, mut sv) = (0.0, 0.0);
                for sy in 0..FRAME_SS {
                    for sx in 0..FRAME_SS {
                        let xs = (x as f32 + (sx as f32 + 0.5) / FRAME_SS as f32) / sf;
                        let ys = (y as f32 + (sy as f32 + 0.5) / FRAME_SS as f32) / sf;
                        let [u, v] = apply_h(&hinv, xs, ys);
                        su += u;
                        sv += v;
                        let t = lv.sample((u + EXTENT) * tscale, (v + EXTENT) * tscale);
                        for k in 0..4 {
                            acc[k] += t[k];
                        }
                    }
                }
                let a = acc[3] * inv_ss;
                if a > 0.0 {
                    let (u, v) = (su * inv_ss, sv * inv_ss);
                    let g = gain * (1.0 + gk * (u * gx + v * gy));
                    let rgb = [acc[0] * inv_ss, acc[1] * inv_ss, acc[2] * inv_ss];
                    let lum = (rgb[0] + rgb[1] + rgb[2]) / 3.0;
                    for k in 0..3 {
                        let faded = lum + sat * (rgb[k] - lum);
                        c[k] = faded * g + (1.0 - a) * c[k];
                    }
                }
            }
            if let Some((shape, col)) = &fr.occ {
                let a = shape.coverage(p, 1.0 / sf);
                if a > 0.0 {
                    c = lerp3(c, *col, a);
                }
            }
            let i = (y * side + x) * 3;
            s.img[i..i + 3].copy_from_slice(&c);
        }
    }

    if fr.blur > 0.25 {
        gaussian_blur(&mut s.img, &mut s.tmp, side, fr.blur);
    }
    if let Some((len, angle)) = fr.motion {
        motion_blur(&mut s.img, &mut s.tmp, side, len, angle);
    }

    // Lighting, sensor noise, quantisation.
    let mut noise = FastNormal {
        state: rng.random(),
    };
    let [ix, iy, ik] = look.illum;
    let lut = &s.gamma_lut;
    for y in 0..side {
        for x in 0..side {
            let illum = 1.0 + ik * 2.0 * ((x as f32 / sf - 0.5) * ix + (y as f32 / sf - 0.5) * iy);
            let i = (y * side + x) * 3;
            for k in 0..3 {
                let v = (s.img[i + k] * fr.exposure * look.cast[k] * illum).clamp(0.0, LUT_MAX);
                let fi = v / LUT_MAX * LUT_N as f32;
                let j = (fi as usize).min(LUT_N - 1);
                let g = lerp(lut[j], lut[j + 1], fi - j as f32);
                let v =
                    (g - 0.5) * look.contrast + 0.5 + look.brightness + look.noise * noise.next();
                // round half up; `as` saturates (NaN -> 0)
                out[i + k] = (v * 255.0 + 0.5) as u8;
            }
        }
    }
}

/// Approximately standard normal sensor noise, cheaper than `StandardNormal` per pixel:
/// the sum of four uniform 16-bit draws (Irwin-Hall), rescaled to unit variance.
struct FastNormal {
    state: u64,
}

impl FastNormal {
    #[inline]
    fn next(&mut self) -> f32 {
        let r = splitmix64(&mut self.state);
        let sum = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
        // mean 2 * 65535, variance 4 * (65536^2 - 1) / 12
        (sum as f32 - 131_070.0) * (3.0f32.sqrt() / 65_536.0)
    }
}

/// Separable Gaussian blur with clamped edges (RGB, HWC).
fn gaussian_blur(img: &mut [f32], tmp: &mut [f32], side: usize, sigma: f32) {
    let r = (sigma * 2.5).ceil() as isize;
    let mut k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    k.iter_mut().for_each(|w| *w /= sum);
    let n = side as isize;
    let clamp = |v: isize| v.clamp(0, n - 1) as usize;
    // horizontal: img -> tmp
    for y in 0..side {
        for x in 0..side {
            let mut acc = [0.0f32; 3];
            for (o, w) in (-r..=r).zip(&k) {
                let j = (y * side + clamp(x as isize + o)) * 3;
                for c in 0..3 {
                    acc[c] += w * img[j + c];
                }
            }
            let i = (y * side + x) * 3;
            tmp[i..i + 3].copy_from_slice(&acc);
        }
    }
    // vertical: tmp -> img
    for y in 0..side {
        for x in 0..side {
            let mut acc = [0.0f32; 3];
            for (o, w) in (-r..=r).zip(&k) {
                let j = (clamp(y as isize + o) * side + x) * 3;
                for c in 0..3 {
                    acc[c] += w * tmp[j + c];
                }
            }
            let i = (y * side + x) * 3;
            img[i..i + 3].copy_from_slice(&acc);
        }
    }
}

/// Linear motion blur of length `len` pixels along `angle` (bilinear taps, clamped edges).
fn motion_blur(img: &mut [f32], tmp: &mut [f32], side: usize, len: f32, angle: f32) {
    let taps = (len.ceil() as usize * 2 + 1).max(3);
    let (dx, dy) = (angle.cos(), angle.sin());
    let m = (side - 1) as f32;
    tmp.copy_from_slice(img);
    for y in 0..side {
        for x in 0..side {
            let mut acc = [0.0f32; 3];
            for t in 0..taps {
                let o = (t as f32 / (taps - 1) as f32 - 0.5) * len;
                let sx = (x as f32 + o * dx).clamp(0.0, m);
                let sy = (y as f32 + o * dy).clamp(0.0, m);
                let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(side - 1), (y0 + 1).min(side - 1));
                let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
                for c in 0..3 {
                    let at = |xx: usize, yy: usize| tmp[(yy * side + xx) * 3 + c];
                    let top = lerp(at(x0, y0), at(x1, y0), fx);
                    let bot = lerp(at(x0, y1), at(x1, y1), fx);
                    acc[c] += lerp(top, bot, fy);
                }
            }
            let i = (y * side + x) * 3;
            for c in 0..3 {
                img[i + c] = acc[c] / taps as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn spec(side: usize, tracks: usize, frames: usize, seed: u64) -> SyntheticSpec {
        SyntheticSpec {
            side,
            tracks_per_class: tracks,
            frames_per_track: frames,
            seed,
        }
    }

    fn gen(s: &SyntheticSpec) -> ImageSet {
        generate(s, &()).expect("valid spec")
    }

    fn rms(a: &[f32], b: &[f32]) -> f32 {
        let s: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        (s / a.len() as f32).sqrt()
    }

    fn rms_u8(a: &[u8], b: &[u8]) -> f32 {
        let s: f32 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f32 - y as f32).powi(2))
            .sum();
        (s / a.len() as f32).sqrt()
    }

    fn track_no(set: &ImageSet, i: usize) -> usize {
        set.tracks[i][6..].parse().expect("track number")
    }

    #[test]
    fn same_seed_gives_identical_bytes_regardless_of_threads() {
        let s = spec(24, 2, 3, 7);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool")
            .install(|| gen(&s));
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool")
            .install(|| gen(&s));
        assert_eq!(one, three);
        assert_eq!(one, gen(&s));
    }

    #[test]
    fn different_seed_gives_different_images() {
        let a = gen(&spec(24, 2, 2, 1));
        let b = gen(&spec(24, 2, 2, 2));
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.tracks, b.tracks);
        let same = (0..a.len()).filter(|&i| a.image(i) == b.image(i)).count();
        assert_eq!(same, 0, "{same} images identical across seeds");
    }

    #[test]
    fn counts_labels_tracks_and_files_follow_the_spec() {
        let s = spec(16, 3, 4, 11);
        let counter = Counter::default();
        let set = generate(&s, &counter).expect("valid");
        assert_eq!(set.side, 16);
        assert_eq!(set.len(), NUM_CLASSES * 3 * 4);
        assert_eq!(set.len(), s.num_images());
        assert_eq!(set.pixels.len(), set.len() * 16 * 16 * 3);
        assert_eq!(set.tracks.len(), set.len());
        assert_eq!(set.files.len(), set.len());
        assert_eq!(set.class_histogram(NUM_CLASSES), vec![12; NUM_CLASSES]);
        let mut i = 0;
        for class in 0..NUM_CLASSES {
            for track in 0..3 {
                for frame in 0..4 {
                    assert_eq!(set.labels[i] as usize, class);
                    assert_eq!(set.tracks[i], format!("{class:05}/{track:05}"));
                    assert_eq!(
                        set.files[i],
                        format!("synthetic/{class:05}/{track:05}_{frame:05}")
                    );
                    i += 1;
                }
            }
        }
        assert_eq!(set.tracks[4 * 3 * 4 + 5], "00004/00001");
        assert_eq!(counter.total.load(Ordering::Relaxed), set.len() as u64);
        assert_eq!(counter.done.load(Ordering::Relaxed), set.len() as u64);
    }

    #[derive(Default)]
    struct Counter {
        total: AtomicU64,
        done: AtomicU64,
    }

    impl Progress for Counter {
        fn set_total(&self, total: u64) {
            self.total.store(total, Ordering::Relaxed);
        }
        fn inc(&self, n: u64) {
            self.done.fetch_add(n, Ordering::Relaxed);
        }
    }

    #[test]
    fn invalid_specs_are_rejected_with_a_clear_message() {
        let cases = [
            (spec(7, 1, 1, 0), "side"),
            (spec(0, 1, 1, 0), "side"),
            (spec(MAX_SIDE + 1, 1, 1, 0), "side"),
            (spec(32, 0, 1, 0), "tracks_per_class"),
            (spec(32, 1, 0, 0), "frames_per_track"),
            (spec(32, usize::MAX / 4, 2, 0), "too large"),
        ];
        for (s, what) in cases {
            match generate(&s, &()) {
                Err(DataError::Invalid(msg)) => {
                    assert!(msg.contains(what), "{msg:?} should mention {what}")
                }
                other => panic!("{s:?}: expected Invalid, got {other:?}"),
            }
        }
        assert!(SyntheticSpec::default().validate().is_ok());
        assert!(generate(&spec(MIN_SIDE, 1, 1, 0), &()).is_ok());
    }

    #[test]
    fn class_names_match_gtsrb() {
        let names = class_names();
        assert_eq!(names.len(), NUM_CLASSES);
        assert_eq!(names[0], "Speed limit (20km/h)");
        assert_eq!(names[1], "Speed limit (30km/h)");
        assert_eq!(names[14], "Stop");
        assert_eq!(names[17], "No entry");
        assert_eq!(
            names[42],
            "End of no passing by vehicles over 3.5 metric tons"
        );
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), NUM_CLASSES);
    }

    #[test]
    fn pixel_statistics_are_plausible() {
        let set = gen(&spec(32, 2, 3, 5));
        let n = set.image_len() as f64;
        let mut means = Vec::new();
        for i in 0..set.len() {
            let img = set.image(i);
            let mean = img.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = img.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            assert!(
                var.sqrt() > 8.0,
                "image {i} nearly constant (std {})",
                var.sqrt()
            );
            // colour: the channels differ somewhere
            let chroma = img
                .chunks_exact(3)
                .map(|p| (p[0] as i32 - p[2] as i32).abs())
                .max()
                .unwrap_or(0);
            assert!(chroma > 10, "image {i} is grey");
            means.push(mean);
        }
        let overall = means.iter().sum::<f64>() / means.len() as f64;
        assert!((40.0..200.0).contains(&overall), "overall mean {overall}");
        // both dark and bright images occur, as in GTSRB
        assert!(means.iter().any(|&m| m < 70.0), "no dark images");
        assert!(means.iter().any(|&m| m > 120.0), "no bright images");
        // the full range is used
        let lo = set.pixels.iter().filter(|&&v| v < 16).count();
        let hi = set.pixels.iter().filter(|&&v| v > 240).count();
        assert!(lo > 0 && hi > 0);
    }

    /// The clean designs (no scene) differ clearly for every pair of classes.
    #[test]
    fn clean_designs_are_pairwise_distinct() {
        let tex = textures(texture_size(32));
        // level 2 of 128 = 32 x 32, composited over mid grey
        let imgs: Vec<Vec<f32>> = tex
            .iter()
            .map(|t| {
                let l = &t.levels[2];
                l.texels
                    .iter()
                    .flat_map(|p| (0..3).map(move |k| 255.0 * (p[k] + (1.0 - p[3]) * 0.5)))
                    .collect()
            })
            .collect();
        let mut min = (f32::MAX, 0, 0);
        for a in 0..NUM_CLASSES {
            for b in a + 1..NUM_CLASSES {
                let d = rms(&imgs[a], &imgs[b]);
                if d < min.0 {
                    min = (d, a, b);
                }
            }
        }
        assert!(
            min.0 > 10.0,
            "classes {} and {} are too similar: rms {}",
            min.1,
            min.2,
            min.0
        );
    }

    /// Per-image standardised pixels of the central disc (radius 0.3 side), where the plate
    /// always is.
    fn sign_region(set: &ImageSet, i: usize) -> Vec<f32> {
        let s = set.side;
        let c = s as f32 / 2.0;
        let v: Vec<f32> = set
            .image(i)
            .chunks_exact(3)
            .enumerate()
            .filter(|(k, _)| {
                let (x, y) = ((k % s) as f32 + 0.5 - c, (k / s) as f32 + 0.5 - c);
                x * x + y * y < (0.3 * s as f32).powi(2)
            })
            .flat_map(|(_, p)| p.iter().map(|&v| v as f32))
            .collect();
        let n = v.len() as f32;
        let m = v.iter().sum::<f32>() / n;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / n)
            .sqrt()
            .max(1.0);
        v.iter().map(|x| (x - m) / sd).collect()
    }

    fn means_of(set: &ImageSet, feature: impl Fn(usize) -> Vec<f32>) -> Vec<Vec<f32>> {
        let mut sums: Vec<Vec<f32>> = vec![Vec::new(); NUM_CLASSES];
        let mut counts = vec![0.0f32; NUM_CLASSES];
        for i in 0..set.len() {
            let c = set.labels[i] as usize;
            let f = feature(i);
            if sums[c].is_empty() {
                sums[c] = vec![0.0; f.len()];
            }
            counts[c] += 1.0;
            sums[c].iter_mut().zip(f).for_each(|(s, x)| *s += x);
        }
        for (s, k) in sums.iter_mut().zip(counts) {
            s.iter_mut().for_each(|v| *v /= k);
        }
        sums
    }

    /// `(closest pair distance, pair)` and the classes of `b` whose mean is nearest to
    /// another class's mean of `a`.
    fn compare_means(
        ma: &[Vec<f32>],
        mb: &[Vec<f32>],
    ) -> ((f32, usize, usize), Vec<(usize, usize)>) {
        let mut closest = (f32::MAX, 0, 0);
        for c in 0..NUM_CLASSES {
            for d in c + 1..NUM_CLASSES {
                let dist = rms(&ma[c], &ma[d]);
                if dist < closest.0 {
                    closest = (dist, c, d);
                }
            }
        }
        let confused = (0..NUM_CLASSES)
            .filter_map(|c| {
                let nearest = (0..NUM_CLASSES)
                    .min_by(|&i, &j| rms(&ma[i], &mb[c]).total_cmp(&rms(&ma[j], &mb[c])))
                    .expect("classes");
                (nearest != c).then_some((c, nearest))
            })
            .collect();
        (closest, confused)
    }

    /// Every class is distinct on average: class mean images differ pairwise by more than a
    /// threshold, and the class means (of the sign region) of one seed identify nearly all
    /// classes of another seed, beyond the sampling noise of the scenes. Similar pairs (20 vs
    /// 50, like GTSRB's 30 vs 80) may be confused.
    #[test]
    fn class_means_are_distinct() {
        let a = gen(&spec(32, 60, 1, 100));
        let b = gen(&spec(32, 60, 1, 200));
        let raw =
            |set: &ImageSet| means_of(set, |i| set.image(i).iter().map(|&v| v as f32).collect());
        let (closest, _) = compare_means(&raw(&a), &raw(&b));
        let (closest_sign, confused) = compare_means(
            &means_of(&a, |i| sign_region(&a, i)),
            &means_of(&b, |i| sign_region(&b, i)),
        );
        eprintln!(
            "class means: closest pair {closest:?} (raw, 0..255), sign region {closest_sign:?}; \
             confused across seeds {confused:?}"
        );
        assert!(
            closest.0 > 5.0,
            "classes {closest:?} too similar on average"
        );
        assert!(confused.len() <= 2, "class means confused: {confused:?}");
    }

    /// Nearest-class-mean accuracy on the held-out tracks (`track >= train_tracks`), with
    /// raw pixels or per-image standardised pixels as features.
    fn ncm_accuracy(set: &ImageSet, train_tracks: usize, standardise: bool) -> f32 {
        let feature = |i: usize| -> Vec<f32> {
            let v: Vec<f32> = set.image(i).iter().map(|&v| v as f32).collect();
            if !standardise {
                return v;
            }
            let n = v.len() as f32;
            let m = v.iter().sum::<f32>() / n;
            let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / n).sqrt();
            v.iter().map(|x| (x - m) / sd.max(1.0)).collect()
        };
        let train = |i: usize| track_no(set, i) < train_tracks;
        let mut means = vec![vec![0.0f32; set.image_len()]; NUM_CLASSES];
        let mut counts = vec![0.0f32; NUM_CLASSES];
        for i in (0..set.len()).filter(|&i| train(i)) {
            let c = set.labels[i] as usize;
            counts[c] += 1.0;
            for (m, x) in means[c].iter_mut().zip(feature(i)) {
                *m += x;
            }
        }
        for (m, &k) in means.iter_mut().zip(&counts) {
            m.iter_mut().for_each(|v| *v /= k);
        }
        let test: Vec<usize> = (0..set.len()).filter(|&i| !train(i)).collect();
        let correct = test
            .iter()
            .filter(|&&i| {
                let f = feature(i);
                let pred = (0..NUM_CLASSES)
                    .min_by(|&a, &b| rms(&means[a], &f).total_cmp(&rms(&means[b], &f)))
                    .expect("classes");
                pred == set.labels[i] as usize
            })
            .count();
        correct as f32 / test.len() as f32
    }

    /// Learnable but not trivial: a nearest class mean on (standardised) pixels of held-out
    /// tracks is well above chance (1/43) and far from perfect.
    #[test]
    fn nearest_class_mean_on_held_out_tracks_is_above_chance_but_not_perfect() {
        let set = gen(&spec(32, 12, 3, 3));
        let standardised = ncm_accuracy(&set, 9, true);
        let raw = ncm_accuracy(&set, 9, false);
        eprintln!(
            "nearest class mean on held-out tracks: standardised {standardised:.3}, raw {raw:.3}"
        );
        assert!(
            standardised > 0.2,
            "accuracy {standardised}: classes not learnable"
        );
        assert!(
            standardised < 0.9,
            "accuracy {standardised}: the task is trivial"
        );
        assert!(raw > 0.08, "raw-pixel accuracy {raw} near chance");
        assert!(raw < 0.9, "raw-pixel accuracy {raw}: the task is trivial");
    }

    /// Frames of a track change smoothly: consecutive frames are closer than frames of other
    /// tracks of the same class.
    #[test]
    fn frames_of_a_track_are_similar() {
        let frames = 5;
        let set = gen(&spec(32, 4, frames, 9));
        let (mut within, mut across, mut nw, mut na) = (0.0, 0.0, 0, 0);
        for start in (0..set.len()).step_by(frames) {
            for f in 0..frames - 1 {
                within += rms_u8(set.image(start + f), set.image(start + f + 1));
                nw += 1;
            }
            let other = if start % (4 * frames) == 0 {
                start + frames
            } else {
                start - frames
            };
            across += rms_u8(set.image(start), set.image(other));
            na += 1;
        }
        let (within, across) = (within / nw as f32, across / na as f32);
        assert!(within * 2.5 < across, "within {within} vs across {across}");
        assert!(within > 1.0, "frames of a track are identical");
    }

    #[test]
    fn larger_and_odd_sides_work() {
        for side in [MIN_SIDE, 13, 48, 64] {
            let set = gen(&spec(side, 1, 2, 4));
            assert_eq!(set.pixels.len(), NUM_CLASSES * 2 * side * side * 3);
        }
    }

    #[test]
    fn homography_inverse_round_trips() {
        let pose = Pose {
            center: [0.52, 0.47],
            radius: 0.4,
            rot: 0.2,
            shear: 0.1,
            aspect: 0.9,
            persp: [0.1, -0.08],
        };
        let h = pose.matrix();
        let inv = invert3(&h);
        for (u, v) in [(0.0, 0.0), (1.0, -0.5), (-0.7, 0.9)] {
            let p = apply_h(&h, u, v);
            let q = apply_h(&inv, p[0], p[1]);
            assert!((q[0] - u).abs() < 1e-4 && (q[1] - v).abs() < 1e-4, "{q:?}");
        }
        let c = apply_h(&h, 0.0, 0.0);
        assert!((c[0] - 0.52).abs() < 1e-6 && (c[1] - 0.47).abs() < 1e-6);
    }

    /// Writes preview grids as PPM, to a temporary folder, or to `$SYNTH_PREVIEW` to look
    /// at them: `SYNTH_PREVIEW=/tmp/synth cargo test -p shared --lib write_previews`.
    #[test]
    fn write_previews() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir =
            std::env::var("SYNTH_PREVIEW").unwrap_or_else(|_| tmp.path().display().to_string());
        std::fs::create_dir_all(&dir).expect("preview dir");
        let zoom = 4;
        // 1. clean designs, level 0 over grey, 8 per row
        let tex = textures(texture_size(32));
        let n = tex[0].levels[0].n;
        let clean: Vec<Vec<u8>> = tex
            .iter()
            .map(|t| {
                t.levels[0]
                    .texels
                    .iter()
                    .flat_map(|p| (0..3).map(move |k| (255.0 * (p[k] + (1.0 - p[3]) * 0.5)) as u8))
                    .collect()
            })
            .collect();
        write_grid(&format!("{dir}/designs.ppm"), &clean, n, 8, 1);
        // 2. one frame of 6 tracks per class: a row per class group
        let set = gen(&spec(32, 6, 6, 42));
        let per_class: Vec<Vec<u8>> = (0..NUM_CLASSES)
            .flat_map(|c| (0..6).map(move |t| (c * 6 + t) * 6 + 5))
            .map(|i| set.image(i).to_vec())
            .collect();
        write_grid(&format!("{dir}/classes.ppm"), &per_class, 32, 12, zoom);
        // 3. full tracks: 12 tracks x 6 frames
        let tracks: Vec<Vec<u8>> = (0..12)
            .flat_map(|k| {
                let start = (k * 7 % NUM_CLASSES * 6 + k % 6) * 6;
                (start..start + 6).map(|i| set.image(i).to_vec())
            })
            .collect();
        write_grid(&format!("{dir}/tracks.ppm"), &tracks, 32, 6, zoom);
        // 4. one frame per class at 64x64
        let big = gen(&spec(64, 1, 1, 42));
        let imgs: Vec<Vec<u8>> = (0..big.len()).map(|i| big.image(i).to_vec()).collect();
        write_grid(&format!("{dir}/classes64.ppm"), &imgs, 64, 9, 2);
        // Each grid reads back as a valid PPM of the expected size.
        let grid = crate::data::ppm::read_ppm(std::path::Path::new(&format!("{dir}/classes.ppm")))
            .expect("preview is a valid PPM");
        assert_eq!(grid.width, 12 * (32 * zoom + 2));
        assert_eq!(grid.height, NUM_CLASSES.div_ceil(2) * (32 * zoom + 2));
    }

    fn write_grid(path: &str, imgs: &[Vec<u8>], side: usize, cols: usize, zoom: usize) {
        let rows = imgs.len().div_ceil(cols);
        let cell = side * zoom + 2;
        let (w, h) = (cols * cell, rows * cell);
        let mut buf = vec![255u8; w * h * 3];
        for (k, img) in imgs.iter().enumerate() {
            let (ox, oy) = ((k % cols) * cell + 1, (k / cols) * cell + 1);
            for y in 0..side * zoom {
                for x in 0..side * zoom {
                    let s = ((y / zoom) * side + x / zoom) * 3;
                    let d = ((oy + y) * w + ox + x) * 3;
                    buf[d..d + 3].copy_from_slice(&img[s..s + 3]);
                }
            }
        }
        let mut out = format!("P6\n{w} {h}\n255\n").into_bytes();
        out.extend_from_slice(&buf);
        std::fs::write(path, out).expect("write preview");
    }
}
