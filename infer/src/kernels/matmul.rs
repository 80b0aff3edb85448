//! Row-major matrix products over the `gemm` crate (its microkernels are chosen at run
//! time: AVX-512, AVX2+FMA, NEON, scalar).

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
}
