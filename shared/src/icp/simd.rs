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

/// Squared Euclidean distance, f32 lanes.
#[inline(always)]
pub(crate) fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let (ca, ta) = a.as_chunks::<LANES>();
    let (cb, tb) = b.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..LANES {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    let mut t = 0.0f32;
    for (x, y) in ta.iter().zip(tb) {
        let d = x - y;
        t += d * d;
    }
    // a plain sequential reduction: a pairwise tree here makes LLVM's SLP vectoriser
    // split the lane loop above into 128-bit pieces
    acc.iter().sum::<f32>() + t
}

/// Squared norm of every row, accumulated in f64 and rounded once to f32.
pub(crate) fn row_squared_norms(x: &[f32], dim: usize) -> Vec<f32> {
    x.chunks_exact(dim)
        .map(|r| r.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() as f32)
        .collect()
}
