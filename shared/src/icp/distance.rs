//! Blocked squared-Euclidean distances between query and reference embeddings.
//!
//! `||q - r||^2 = ||q||^2 + ||r||^2 - 2 q.r`: the dot products of a block of queries with a
//! tile of references come from one f32 `gemm` call; the selection (the k smallest per
//! query, or the smallest per class) is fused with the sweep over the tile, so the full
//! queries x references matrix never exists. Within a query row the ranking key is
//! `||r||^2 - 2 q.r` (the query's own norm is the same for every reference and is added
//! only where an actual distance is needed).

use super::simd::LANES;

/// Queries scored together against one reference tile (rows of the gemm output).
pub(crate) const QUERY_BLOCK: usize = 128;
/// References per tile (columns of the gemm output).
pub(crate) const REF_TILE: usize = 512;

/// `out[i * n + j] = a_i . b_j` for the rows of `a` (m x dim) and `b` (n x dim), with gemm.
pub(crate) fn gram(a: &[f32], b: &[f32], dim: usize, out: &mut [f32]) {
    let m = a.len() / dim;
    let n = b.len() / dim;
    assert!(a.len() == m * dim && b.len() == n * dim && out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the pointers cover m x dim, n x dim and m x n elements (checked above);
    // dst is row-major m x n, lhs row-major m x dim, rhs is b transposed (dim x n).
    unsafe {
        gemm::gemm(
            m,
            n,
            dim,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            dim as isize,
            b.as_ptr(),
            dim as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The k nearest references of one query so far: ascending keys, ties in sweep order.
pub(crate) struct TopK<'a> {
    pub keys: &'a mut [f32],
    pub idx: &'a mut [u32],
    pub len: &'a mut usize,
}

impl TopK<'_> {
    /// Current admission threshold: a key must be strictly smaller to enter. References are
    /// swept in increasing index order, so the strict test keeps the lower index on ties.
    #[inline(always)]
    fn threshold(&self) -> f32 {
        if *self.len == self.keys.len() {
            self.keys[self.keys.len() - 1]
        } else {
            f32::INFINITY
        }
    }

    #[inline(always)]
    fn insert(&mut self, key: f32, index: u32) {
        let k = self.keys.len();
        let len = *self.len;
        // First position whose key is greater than `key` (stable: after equal keys).
        let mut pos = len;
        while pos > 0 && self.keys[pos - 1] > key {
            pos -= 1;
        }
        let end = if len < k { len } else { k - 1 };
        let mut p = end;
        while p > pos {
            self.keys[p] = self.keys[p - 1];
            self.idx[p] = self.idx[p - 1];
            p -= 1;
        }
        self.keys[pos] = key;
        self.idx[pos] = index;
        if len < k {
            *self.len = len + 1;
        }
    }

    /// Offers the references of one tile row: `dots[j] = q.r_j`, `norms[j] = ||r_j||^2`,
    /// global index of column j = `first + j`.
    #[inline(always)]
    pub fn scan(&mut self, dots: &[f32], norms: &[f32], first: u32) {
        debug_assert_eq!(norms.len(), dots.len());
        let mut thr = self.threshold();
        let (cd, td) = dots.as_chunks::<LANES>();
        let (cn, tn) = norms.as_chunks::<LANES>();
        let mut vals = [0.0f32; LANES];
        for (ci, (d, r)) in cd.iter().zip(cn).enumerate() {
            let mut any = false;
            for l in 0..LANES {
                let v = r[l] - 2.0 * d[l];
                vals[l] = v;
                any |= v < thr;
            }
            if any {
                for (l, &v) in vals.iter().enumerate() {
                    if v < thr {
                        self.insert(v, first + (ci * LANES + l) as u32);
                        thr = self.threshold();
                    }
                }
            }
        }
        let j0 = cd.len() * LANES;
        for (j, (&d, &r)) in td.iter().zip(tn).enumerate() {
            let v = r - 2.0 * d;
            if v < thr {
                self.insert(v, first + (j0 + j) as u32);
                thr = self.threshold();
            }
        }
    }
}

/// Minimum of `norms[j] - 2 dots[j]` over a slice (f32 lanes, +inf for an empty slice).
#[inline(always)]
pub(crate) fn min_key(dots: &[f32], norms: &[f32]) -> f32 {
    let mut acc = [f32::INFINITY; LANES];
    let (cd, td) = dots.as_chunks::<LANES>();
    let (cn, tn) = norms.as_chunks::<LANES>();
    for (d, r) in cd.iter().zip(cn) {
        for l in 0..LANES {
            let v = r[l] - 2.0 * d[l];
            acc[l] = if v < acc[l] { v } else { acc[l] };
        }
    }
    for (d, r) in td.iter().zip(tn) {
        let v = r - 2.0 * d;
        acc[0] = if v < acc[0] { v } else { acc[0] };
    }
    let mut m = acc[0];
    for &v in &acc[1..] {
        m = if v < m { v } else { m };
    }
    m
}
