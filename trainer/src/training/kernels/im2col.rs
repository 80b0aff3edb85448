//! im2col / col2im for one image: a convolution becomes one matrix product with the
//! weights viewed as `[O, C*K*K]`, and its input gradient one product plus a scatter-add.

/// Geometry of a square-kernel 2-D convolution over one `C x H x W` image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub pad: usize,
    pub stride: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvGeom {
    /// `None` when the kernel does not fit the padded input or the stride is 0.
    pub fn new(c: usize, h: usize, w: usize, k: usize, pad: usize, stride: usize) -> Option<Self> {
        if stride == 0 || k == 0 || h + 2 * pad < k || w + 2 * pad < k {
            return None;
        }
        Some(ConvGeom {
            c,
            h,
            w,
            k,
            pad,
            stride,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (w + 2 * pad - k) / stride + 1,
        })
    }

    /// Rows of the column matrix: `C * K * K`, ordered like the weight's (c, ky, kx).
    pub fn rows(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Columns of the column matrix: one per output pixel.
    pub fn cols(&self) -> usize {
        self.ho * self.wo
    }

    /// For kernel column `kx`: the output columns `[lo, hi)` whose input column
    /// `ox * stride + kx - pad` lies inside the image.
    fn valid_ox(&self, kx: usize) -> (usize, usize) {
        let s = self.stride;
        // ox * s + kx >= pad
        let lo = self.pad.saturating_sub(kx).div_ceil(s);
        // ox * s + kx - pad <= w - 1  <=>  ox * s <= w - 1 + pad - kx
        let hi = if self.w + self.pad > kx {
            ((self.w - 1 + self.pad - kx) / s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// The input row of output row `oy` and kernel row `ky`, if inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.pad)
            .filter(|&iy| iy < self.h)
    }
}

/// `cols[(c*K + ky)*K + kx][oy*Wo + ox] = x[c][oy*s + ky - p][ox*s + kx - p]`, 0 outside.
/// `x` is one image (`C*H*W`), `cols` is `rows() * cols()`.
pub fn im2col(g: &ConvGeom, x: &[f32], cols: &mut [f32]) {
    let (n, plane) = (g.cols(), g.h * g.w);
    debug_assert!(x.len() >= g.c * plane && cols.len() >= g.rows() * n);
    for c in 0..g.c {
        let xc = &x[c * plane..(c + 1) * plane];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let r = (c * g.k + ky) * g.k + kx;
                let row = &mut cols[r * n..(r + 1) * n];
                let (lo, hi) = g.valid_ox(kx);
                for oy in 0..g.ho {
                    let out = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    let Some(iy) = g.input_row(oy, ky) else {
                        out.fill(0.0);
                        continue;
                    };
                    let src = &xc[iy * g.w..(iy + 1) * g.w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    if g.stride == 1 && hi > lo {
                        let start = lo + kx - g.pad;
                        out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    } else if g.stride > 1 {
                        for (ox, o) in out.iter_mut().enumerate().take(hi).skip(lo) {
                            *o = src[ox * g.stride + kx - g.pad];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the input pixel it was
/// read from. `dx` (one image, `C*H*W`) is accumulated into, not overwritten.
pub fn col2im(g: &ConvGeom, cols: &[f32], dx: &mut [f32]) {
    let (n, plane) = (g.cols(), g.h * g.w);
    debug_assert!(dx.len() >= g.c * plane && cols.len() >= g.rows() * n);
    for c in 0..g.c {
        let dxc = &mut dx[c * plane..(c + 1) * plane];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let r = (c * g.k + ky) * g.k + kx;
                let row = &cols[r * n..(r + 1) * n];
                let (lo, hi) = g.valid_ox(kx);
                for oy in 0..g.ho {
                    let Some(iy) = g.input_row(oy, ky) else {
                        continue;
                    };
                    let src = &row[oy * g.wo..(oy + 1) * g.wo];
                    let dst = &mut dxc[iy * g.w..(iy + 1) * g.w];
                    if g.stride == 1 {
                        if hi <= lo {
                            continue;
                        }
                        let start = lo + kx - g.pad;
                        for (d, s) in dst[start..start + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d += s;
                        }
                    } else {
                        for (ox, s) in src.iter().enumerate().take(hi).skip(lo) {
                            dst[ox * g.stride + kx - g.pad] += s;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// <im2col(x), y> == <x, col2im(y)> for every geometry: col2im is im2col's adjoint,
    /// which is exactly what the input gradient needs.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for &(c, h, w, k, pad, stride) in &[
            (1, 5, 5, 3, 1, 1),
            (2, 7, 6, 3, 0, 2),
            (3, 9, 8, 5, 2, 1),
            (2, 4, 5, 3, 2, 3),
            (1, 3, 3, 3, 0, 1),
        ] {
            let g = ConvGeom::new(c, h, w, k, pad, stride).unwrap();
            let x: Vec<f32> = (0..c * h * w).map(|i| (i as f32 * 0.7).sin()).collect();
            let y: Vec<f32> = (0..g.rows() * g.cols())
                .map(|i| (i as f32 * 0.3).cos())
                .collect();
            let mut cols = vec![f32::NAN; g.rows() * g.cols()];
            im2col(&g, &x, &mut cols);
            let mut dx = vec![0f32; c * h * w];
            col2im(&g, &y, &mut dx);
            let lhs: f64 = cols.iter().zip(&y).map(|(a, b)| f64::from(a * b)).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| f64::from(a * b)).sum();
            assert!((lhs - rhs).abs() < 1e-3, "{g:?}: {lhs} vs {rhs}");
            // and every entry is either an input pixel or a padding zero
            for r in 0..g.rows() {
                let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        let want = if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            0.0
                        } else {
                            x[ci * h * w + iy as usize * w + ix as usize]
                        };
                        assert_eq!(cols[r * g.cols() + oy * g.wo + ox], want, "{g:?}");
                    }
                }
            }
        }
    }
}
