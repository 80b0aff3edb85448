//! Runtime CPU-feature dispatch for the auto-vectorised inner loops.
//!
//! The workspace is compiled for the baseline x86-64 target (SSE2). The numeric loops of
//! this module tree are written as plain Rust over fixed-width lane arrays and marked
//! `#[inline(always)]`; [`dispatch`] runs a closure inside a function compiled with AVX-512
//! or AVX2+FMA when the CPU has them, so that LLVM vectorises the inlined loops with the
//! wide registers. On other architectures the closure runs as is.

/// Runs `f` with the widest vector instruction set this CPU supports.
///
/// `f` and everything it calls in its hot loop must be `#[inline(always)]` for the
/// target features to apply to them.
#[inline(always)]
pub(crate) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected at run time.
            return unsafe { run_avx512(f) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            return unsafe { run_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi1,bmi2,popcnt")]
unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,popcnt")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Lanes used by the hand-unrolled reductions (one AVX-512 register of f32).
pub(crate) const LANES: usize = 16;

/// True when every value is finite (no NaN, no infinity): the largest exponent field must
/// be below all-ones. (An integer max-reduction, which LLVM vectorises directly.)
#[inline(always)]
pub(crate) fn all_finite(x: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    x.iter().fold(0u32, |m, v| m.max(v.to_bits() & EXP)) < EXP
}

/// Squared norm of every row, accumulated in f64 and rounded once to f32.
pub(crate) fn row_squared_norms(x: &[f32], dim: usize) -> Vec<f32> {
    x.chunks_exact(dim)
        .map(|r| r.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() as f32)
        .collect()
}

/// Class blocks of the transposed centroid layout (one AVX-512 register of f32).
pub(crate) const CLASS_BLOCK: usize = 16;

/// Squared distances from `x` to every centroid, with the centroids transposed:
/// `ct[t * cpad + c]` is coordinate t of centroid c, `cpad` a multiple of
/// [`CLASS_BLOCK`] (padding columns are ignored garbage). Writes `out[..cpad]`.
///
/// Classes lie across the vector lanes, so there is no horizontal reduction; four
/// partial sums over interleaved coordinates break the dependency chains.
#[inline(always)]
pub(crate) fn centroid_squared_distances(x: &[f32], ct: &[f32], cpad: usize, out: &mut [f32]) {
    assert!(cpad.is_multiple_of(CLASS_BLOCK) && ct.len() == x.len() * cpad && out.len() >= cpad);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: feature detected; the bounds are asserted above.
            unsafe { x86::centroids_avx512(x, ct, cpad, out) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            unsafe { x86::centroids_avx2(x, ct, cpad, out) };
            return;
        }
    }
    centroids_generic(x, ct, cpad, out);
}

/// Portable version of [`centroid_squared_distances`].
#[inline(always)]
fn centroids_generic(x: &[f32], ct: &[f32], cpad: usize, out: &mut [f32]) {
    let out = &mut out[..cpad];
    out.fill(0.0);
    for (row, &xt) in ct.chunks_exact(cpad).zip(x) {
        for (o, &c) in out.iter_mut().zip(row) {
            let d = xt - c;
            *o += d * d;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// SAFETY: needs AVX-512F; `ct.len() == x.len() * cpad`, `cpad % 16 == 0`,
    /// `out.len() >= cpad`.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn centroids_avx512(x: &[f32], ct: &[f32], cpad: usize, out: &mut [f32]) {
        let dim = x.len();
        let (xp, cp, op) = (x.as_ptr(), ct.as_ptr(), out.as_mut_ptr());
        let mut cb = 0;
        while cb < cpad {
            let mut a = [_mm512_setzero_ps(); 4];
            let mut t = 0;
            while t + 4 <= dim {
                for (j, acc) in a.iter_mut().enumerate() {
                    let xt = _mm512_set1_ps(*xp.add(t + j));
                    let d = _mm512_sub_ps(xt, _mm512_loadu_ps(cp.add((t + j) * cpad + cb)));
                    *acc = _mm512_fmadd_ps(d, d, *acc);
                }
                t += 4;
            }
            while t < dim {
                let xt = _mm512_set1_ps(*xp.add(t));
                let d = _mm512_sub_ps(xt, _mm512_loadu_ps(cp.add(t * cpad + cb)));
                a[0] = _mm512_fmadd_ps(d, d, a[0]);
                t += 1;
            }
            let s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            _mm512_storeu_ps(op.add(cb), s);
            cb += 16;
        }
    }

    /// SAFETY: needs AVX2 and FMA; same bounds as [`centroids_avx512`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn centroids_avx2(x: &[f32], ct: &[f32], cpad: usize, out: &mut [f32]) {
        let dim = x.len();
        let (xp, cp, op) = (x.as_ptr(), ct.as_ptr(), out.as_mut_ptr());
        let mut cb = 0;
        while cb < cpad {
            // two 8-lane halves x four interleaved partial sums
            let mut lo = [_mm256_setzero_ps(); 4];
            let mut hi = [_mm256_setzero_ps(); 4];
            let mut t = 0;
            while t + 4 <= dim {
                for j in 0..4 {
                    let xt = _mm256_set1_ps(*xp.add(t + j));
                    let row = cp.add((t + j) * cpad + cb);
                    let d0 = _mm256_sub_ps(xt, _mm256_loadu_ps(row));
                    let d1 = _mm256_sub_ps(xt, _mm256_loadu_ps(row.add(8)));
                    lo[j] = _mm256_fmadd_ps(d0, d0, lo[j]);
                    hi[j] = _mm256_fmadd_ps(d1, d1, hi[j]);
                }
                t += 4;
            }
            while t < dim {
                let xt = _mm256_set1_ps(*xp.add(t));
                let row = cp.add(t * cpad + cb);
                let d0 = _mm256_sub_ps(xt, _mm256_loadu_ps(row));
                let d1 = _mm256_sub_ps(xt, _mm256_loadu_ps(row.add(8)));
                lo[0] = _mm256_fmadd_ps(d0, d0, lo[0]);
                hi[0] = _mm256_fmadd_ps(d1, d1, hi[0]);
                t += 1;
            }
            let s0 = _mm256_add_ps(_mm256_add_ps(lo[0], lo[1]), _mm256_add_ps(lo[2], lo[3]));
            let s1 = _mm256_add_ps(_mm256_add_ps(hi[0], hi[1]), _mm256_add_ps(hi[2], hi[3]));
            _mm256_storeu_ps(op.add(cb), s0);
            _mm256_storeu_ps(op.add(cb + 8), s1);
            cb += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel variant this CPU can run gives the same squared distances: exactly on
    /// small-integer data, to f32 rounding on general data.
    #[test]
    fn icp_centroid_kernels_agree() {
        let (dim, c) = (37usize, 21usize); // odd sizes: tails in both directions
        let cpad = c.div_ceil(CLASS_BLOCK) * CLASS_BLOCK;
        let mut state = 99u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for integer in [true, false] {
            let mut v = |scale: f32| {
                let r = rnd() * scale;
                if integer {
                    r.round()
                } else {
                    r
                }
            };
            let x: Vec<f32> = (0..dim).map(|_| v(8.0)).collect();
            let ct: Vec<f32> = (0..dim * cpad).map(|_| v(8.0)).collect();
            let mut want = vec![0.0f32; cpad];
            for (cl, w) in want.iter_mut().enumerate() {
                let exact: f64 = (0..dim)
                    .map(|t| f64::from(x[t] - ct[t * cpad + cl]).powi(2))
                    .sum();
                *w = exact as f32;
            }
            let mut variants: Vec<(&str, Vec<f32>)> = Vec::new();
            let mut out = vec![0.0f32; cpad];
            centroids_generic(&x, &ct, cpad, &mut out);
            variants.push(("generic", out.clone()));
            centroid_squared_distances(&x, &ct, cpad, &mut out);
            variants.push(("dispatched", out.clone()));
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    unsafe { x86::centroids_avx512(&x, &ct, cpad, &mut out) };
                    variants.push(("avx512", out.clone()));
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    unsafe { x86::centroids_avx2(&x, &ct, cpad, &mut out) };
                    variants.push(("avx2", out.clone()));
                }
            }
            for (name, got) in &variants {
                for (g, w) in got.iter().zip(&want) {
                    if integer {
                        assert_eq!(g, w, "{name}");
                    } else {
                        assert!((g - w).abs() <= 1e-5 * w.max(1.0), "{name}: {g} vs {w}");
                    }
                }
            }
        }
        assert!(all_finite(&[0.0, 1.0, -3.5, f32::MAX]));
        assert!(!all_finite(&[0.0, f32::INFINITY]));
        assert!(!all_finite(&[f32::NAN; 40]));
    }
}
