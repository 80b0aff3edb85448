//! Bounds-checked strided views over `f32` slices and the one matrix product the kernels
//! need, on the `gemm` crate (the same gemm candle uses for its matmul).

use ::gemm::Parallelism;

/// Index one past the last element a `rows x cols` view with these strides touches.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// A read-only strided matrix: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows x cols` matrix at the start of `data`.
    ///
    /// # Panics
    /// If `data` is too short (a bug in the caller's shape arithmetic, not bad input).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(
            span(rows, cols, cols, 1) <= data.len(),
            "matrix view out of bounds"
        );
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// A mutable dense matrix, row-major or column-major.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatMut<'a> {
    /// # Panics
    /// If `data` is too short.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert!(rows * cols <= data.len(), "matrix view out of bounds");
        MatMut {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// Element (i, j) at `data[i + j * rows]`: the transpose of a row-major `cols x rows`.
    ///
    /// # Panics
    /// If `data` is too short.
    pub fn col_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert!(rows * cols <= data.len(), "matrix view out of bounds");
        MatMut {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }
}

/// `dst = src^T` for a row-major `rows x cols` `src` (`dst` is `cols x rows`), in tiles
/// that stay in L1.
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 16;
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// `dst = a x b`, or `dst += a x b` when `accumulate`; `threads > 1` lets gemm split the
/// product itself (used when there are fewer images than threads, e.g. batch 1).
///
/// # Panics
/// If the shapes do not chain.
pub fn matmul(dst: MatMut<'_>, a: Mat<'_>, b: Mat<'_>, accumulate: bool, threads: usize) {
    assert_eq!(a.rows, dst.rows, "matmul: rows of a and dst differ");
    assert_eq!(b.cols, dst.cols, "matmul: columns of b and dst differ");
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.data[..m * n].fill(0.0);
        }
        return;
    }
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the constructors checked that every element each view addresses lies inside
    // its slice; `dst` is borrowed mutably, so it aliases neither `a` nor `b`.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn products_with_transposed_views_and_accumulation() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![1f32; m * n];
        matmul(
            MatMut::row_major(&mut c, m, n),
            Mat::row_major(&a, m, k),
            Mat::row_major(&b, k, n),
            false,
            1,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        // b stored transposed ([n, k]) and read through a transposed view, accumulated.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        matmul(
            MatMut::row_major(&mut c, m, n),
            Mat::row_major(&a, m, k),
            Mat::row_major(&bt, n, k).t(),
            true,
            2,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - 2.0 * y).abs() < 1e-5);
        }
        // a column-major destination holds the transposed product
        let mut ct = vec![f32::NAN; m * n];
        matmul(
            MatMut::col_major(&mut ct, m, n),
            Mat::row_major(&a, m, k),
            Mat::row_major(&b, k, n),
            false,
            1,
        );
        let mut back = vec![0f32; m * n];
        transpose(&ct, n, m, &mut back);
        for (x, y) in back.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
    }
}
