//! Row-major matrix products. Where the output width is a whole number of vector
//! registers (16 floats with AVX-512, 8 with AVX2+FMA, 4 with aarch64 NEON) our own
//! register-blocked kernels run
//! them straight from the operands: the Winograd and im2col weights are already laid out
//! as `[K, N]` rows, which is the packed form such a kernel reads, so nothing is copied
//! or allocated per call (the `gemm` crate repacks both operands into a fresh buffer on
//! every call: at batch 1 that was a fifth of the engine's instructions). Other shapes
//! and CPUs go through `gemm` (AVX-512 / AVX2 / NEON / scalar microkernels, chosen at run
//! time).

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::isa::{self, Isa};

/// `c = a · b` with `a` m x k (row stride `lda`), `b` k x n (row stride `ldb`) and `c` m x n
/// (row stride `ldc`), all row-major. Single-threaded: the engine parallelises above it.
///
/// # Panics
/// When a slice is too short for its shape (a bug in the caller, never data-dependent: the
/// engine checks every shape when it builds its plan).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    assert!(
        lda >= k && ldb >= n && ldc >= n,
        "matmul: row strides too small"
    );
    assert!(a.len() >= (m - 1) * lda + k, "matmul: a is too short");
    assert!(b.len() >= (k - 1) * ldb + n, "matmul: b is too short");
    assert!(c.len() >= (m - 1) * ldc + n, "matmul: c is too short");
    #[cfg(target_arch = "x86_64")]
    match isa::isa() {
        // SAFETY: the asserts above keep every element the kernels touch inside the three
        // slices (`c` is borrowed mutably, so it aliases neither input); the CPU has the
        // instruction set (isa() never reports more than it detected); n is a multiple of
        // the vector width.
        Isa::Avx512 if n.is_multiple_of(16) => unsafe {
            return x86::matmul_avx512(
                m,
                n,
                k,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                c.as_mut_ptr(),
                ldc,
            );
        },
        Isa::Avx2 if n.is_multiple_of(8) => unsafe {
            return x86::matmul_avx2(
                m,
                n,
                k,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                c.as_mut_ptr(),
                ldc,
            );
        },
        _ => {}
    }
    #[cfg(target_arch = "aarch64")]
    if isa::isa() == Isa::Neon && n.is_multiple_of(4) {
        // SAFETY: as for x86 above; every aarch64 CPU has NEON (isa() reports Neon only
        // where it was detected, and Baseline when EDGECP_INFER_ISA asks for the generic
        // path); n is a multiple of 4.
        unsafe {
            return arm::matmul_neon(
                m,
                n,
                k,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                c.as_mut_ptr(),
                ldc,
            );
        }
    }
    // SAFETY: the asserts above keep every element gemm touches inside the three slices;
    // `c` is borrowed mutably, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            false,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            1,
            ldb as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Register-blocked kernels: an `MR x (NV vectors)` block of `c` is held in registers
/// while the whole depth `k` streams through, one row of `b` (NV vector loads) and one
/// broadcast value of each of the MR rows of `a` per step. Columns go in blocks of NV
/// vectors (outer loop: the block of `b`, `k x NV` vectors, stays in L1 while every row
/// of `a` passes), rows in blocks of MR, then 4, 2, 1 for the rest.
///
/// `kernels!` defines `$tile::<MR, NV>` (one block of c) and `$rows::<NV>` (all rows of a
/// column block) for one vector type; used by x86_64 and aarch64 (none on other targets).
#[allow(unused_macros)]
macro_rules! kernels {
    ($feat:literal, $v:ty, $w:expr, $zero:ident, $load:ident, $set1:ident, $fma:ident, $store:ident, $tile:ident, $rows:ident) => {
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $tile<const MR: usize, const NV: usize>(
            k: usize,
            a: *const f32,
            lda: usize,
            b: *const f32,
            ldb: usize,
            c: *mut f32,
            ldc: usize,
        ) {
            let mut acc = [[$zero(); NV]; MR];
            let mut bp = b;
            for p in 0..k {
                let mut bv = [$zero(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = $load(bp.add(v * $w));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = $set1(*a.add(r * lda + p));
                    for (x, bx) in row.iter_mut().zip(&bv) {
                        *x = $fma(av, *bx, *x);
                    }
                }
                bp = bp.add(ldb);
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, x) in row.iter().enumerate() {
                    $store(c.add(r * ldc + v * $w), *x);
                }
            }
        }

        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $rows<const MR: usize, const NV: usize>(
            m: usize,
            k: usize,
            a: *const f32,
            lda: usize,
            b: *const f32,
            ldb: usize,
            c: *mut f32,
            ldc: usize,
        ) {
            let mut i = 0;
            while i + MR <= m {
                $tile::<MR, NV>(k, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc);
                i += MR;
            }
            while i + 4 <= m {
                $tile::<4, NV>(k, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc);
                i += 4;
            }
            while i + 2 <= m {
                $tile::<2, NV>(k, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc);
                i += 2;
            }
            if i < m {
                $tile::<1, NV>(k, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc);
            }
        }
    };
}

/// `matmul32!` defines the column loop of an instruction set with 32 vector registers
/// (AVX-512, aarch64 NEON) over the `$rows` kernels of `kernels!`: blocks of 6 rows x 4
/// vectors (24 accumulators, 4 of b, 1 broadcast), or 12 rows x 2, or 8 rows x 1. Each
/// element's sum runs over k in order whatever the blocking.
#[allow(unused_macros)]
macro_rules! matmul32 {
    ($(#[$doc:meta])* $feat:literal, $w:literal, $rows:ident, $name:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU has the instruction set; the pointers cover the shapes (as `matmul`
        /// asserts).
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $name(
            m: usize,
            n: usize,
            k: usize,
            a: *const f32,
            lda: usize,
            b: *const f32,
            ldb: usize,
            c: *mut f32,
            ldc: usize,
        ) {
            let mut j = 0;
            while j < n {
                let (bj, cj) = (b.add(j), c.add(j));
                match (n - j) / $w {
                    1 => {
                        $rows::<8, 1>(m, k, a, lda, bj, ldb, cj, ldc);
                        j += $w;
                    }
                    2 | 3 => {
                        $rows::<12, 2>(m, k, a, lda, bj, ldb, cj, ldc);
                        j += 2 * $w;
                    }
                    _ => {
                        $rows::<6, 4>(m, k, a, lda, bj, ldb, cj, ldc);
                        j += 4 * $w;
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    kernels!(
        "avx512f",
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps,
        tile512,
        rows512
    );
    kernels!(
        "avx2,fma",
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps,
        tile256,
        rows256
    );

    matmul32!(
        /// [`super::matmul`] with AVX-512F; `n` a multiple of 16.
        "avx512f",
        16,
        rows512,
        matmul_avx512
    );

    /// [`super::matmul`] with AVX2 + FMA; `n` a multiple of 8. 16 registers: 6 rows x 2
    /// vectors (12 accumulators, 2 of b, 1 broadcast), or 8 rows x 1.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the pointers cover the shapes (as `matmul` asserts).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul_avx2(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut j = 0;
        while j < n {
            let (bj, cj) = (b.add(j), c.add(j));
            if n - j >= 16 {
                rows256::<6, 2>(m, k, a, lda, bj, ldb, cj, ldc);
                j += 16;
            } else {
                rows256::<8, 1>(m, k, a, lda, bj, ldb, cj, ldc);
                j += 8;
            }
        }
    }
}

/// The same kernels on aarch64 Advanced SIMD: 4 floats per register, 32 registers.
#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    // the macro's operations, in x86's argument order
    #[inline(always)]
    unsafe fn zero() -> float32x4_t {
        vdupq_n_f32(0.0)
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // a * b + c, one rounding (as _mm256_fmadd_ps)
        vfmaq_f32(c, a, b)
    }

    kernels!(
        "neon",
        float32x4_t,
        4,
        zero,
        vld1q_f32,
        vdupq_n_f32,
        fma,
        vst1q_f32,
        tile128,
        rows128
    );

    matmul32!(
        /// [`super::matmul`] with NEON; `n` a multiple of 4.
        "neon",
        4,
        rows128,
        matmul_neon
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product_with_strides() {
        let (m, n, k) = (5, 7, 3);
        let (lda, ldb, ldc) = (4, 9, 8);
        let a: Vec<f32> = (0..m * lda).map(|i| (i % 5) as f32 - 2.0).collect();
        let b: Vec<f32> = (0..k * ldb).map(|i| (i % 3) as f32 * 0.5).collect();
        let mut c = vec![f32::NAN; m * ldc];
        matmul(m, n, k, &a, lda, &b, ldb, &mut c, ldc);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[i * lda + p] * b[p * ldb + j]).sum();
                assert!((c[i * ldc + j] - want).abs() < 1e-5, "({i},{j})");
            }
            // the padding between rows is left alone
            assert!(c[i * ldc + n].is_nan());
        }
    }

    #[test]
    fn zero_depth_gives_zeros() {
        let mut c = vec![1.0; 6];
        matmul(2, 3, 0, &[], 0, &[], 3, &mut c, 3);
        assert_eq!(c, vec![0.0; 6]);
    }

    /// Our register-blocked kernels (every instruction set this CPU has, called directly)
    /// against a product in f64, over every row and column blocking they use, with row
    /// strides wider than the rows: within a few roundings, padding untouched.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn register_kernels_match_f64_products() {
        type Kernel =
            unsafe fn(usize, usize, usize, *const f32, usize, *const f32, usize, *mut f32, usize);
        let mut kernels: Vec<(&str, usize, Kernel)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if isa::detected() >= Isa::Avx512 {
                kernels.push(("avx512", 16, x86::matmul_avx512));
            }
            if isa::detected() >= Isa::Avx2 {
                kernels.push(("avx2", 8, x86::matmul_avx2));
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            assert_eq!(isa::detected(), Isa::Neon);
            kernels.push(("neon", 4, arm::matmul_neon));
        }
        let mut seed = 1u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for (name, w, kernel) in kernels {
            for n in [w, 2 * w, 3 * w, 4 * w, 5 * w, 8 * w] {
                for m in [1, 2, 3, 5, 6, 7, 11, 12, 13, 64] {
                    for k in [1, 3, 32, 75] {
                        let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
                        let a: Vec<f32> = (0..m * lda).map(|_| rnd()).collect();
                        let b: Vec<f32> = (0..k * ldb).map(|_| rnd()).collect();
                        let mut c = vec![f32::NAN; m * ldc];
                        // SAFETY: the CPU has the instruction set (checked above); the
                        // buffers cover the shapes.
                        unsafe {
                            kernel(
                                m,
                                n,
                                k,
                                a.as_ptr(),
                                lda,
                                b.as_ptr(),
                                ldb,
                                c.as_mut_ptr(),
                                ldc,
                            )
                        };
                        for i in 0..m {
                            for j in 0..n {
                                let want: f64 = (0..k)
                                    .map(|p| f64::from(a[i * lda + p]) * f64::from(b[p * ldb + j]))
                                    .sum();
                                let got = f64::from(c[i * ldc + j]);
                                assert!(
                                    (got - want).abs() <= 1e-5 * (k as f64).sqrt(),
                                    "{name} m {m} n {n} k {k} ({i},{j}): {got} vs {want}"
                                );
                            }
                            assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
                        }
                    }
                }
            }
        }
    }
}
