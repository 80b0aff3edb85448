//! Convolution of one NHWC image as im2col + one matrix product per band of output rows:
//! each output pixel's receptive field (ky, kx, c order) becomes a row of `cols`, and
//! `cols · W` (W is `[k*k*C, O]`) is the NHWC output directly.

use super::bias_relu;
use super::matmul::matmul;

/// Geometry of a convolution on one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub in_h: usize,
    pub in_w: usize,
    pub in_c: usize,
    pub out_c: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn out_h(&self) -> usize {
        (self.in_h + 2 * self.pad - self.kernel) / self.stride + 1
    }

    pub fn out_w(&self) -> usize {
        (self.in_w + 2 * self.pad - self.kernel) / self.stride + 1
    }

    /// Length of one im2col row.
    pub fn patch(&self) -> usize {
        self.kernel * self.kernel * self.in_c
    }
}

/// Output rows per matrix product: bands keep `cols` near 64k values (L2-sized).
pub fn band_rows(s: &ConvShape) -> usize {
    (65_536 / (s.out_w() * s.patch()).max(1)).clamp(1, s.out_h().max(1))
}

/// Rearranges ONNX weights `[O, C, k, k]` into the `[k*k*C, O]` matrix im2col multiplies.
pub fn pack_weights(s: &ConvShape, w: &[f32]) -> Vec<f32> {
    let (o_n, c_n, k) = (s.out_c, s.in_c, s.kernel);
    let mut out = vec![0.0; s.patch() * o_n];
    for o in 0..o_n {
        for c in 0..c_n {
            for ky in 0..k {
                for kx in 0..k {
                    out[((ky * k + kx) * c_n + c) * o_n + o] = w[((o * c_n + c) * k + ky) * k + kx];
                }
            }
        }
    }
    out
}

/// Writes the im2col rows of output rows `y0..y1` into `cols`.
fn fill_cols(s: &ConvShape, x: &[f32], y0: usize, y1: usize, cols: &mut [f32]) {
    let (c, k, ow) = (s.in_c, s.kernel, s.out_w());
    let patch = s.patch();
    for (r, row) in cols.chunks_exact_mut(patch).enumerate() {
        let (y, xo) = (y0 + r / ow, r % ow);
        if y >= y1 {
            break;
        }
        for ky in 0..k {
            let dst = &mut row[ky * k * c..(ky + 1) * k * c];
            let iy = (y * s.stride + ky) as isize - s.pad as isize;
            if iy < 0 || iy >= s.in_h as isize {
                dst.fill(0.0);
                continue;
            }
            let line = &x[iy as usize * s.in_w * c..(iy as usize + 1) * s.in_w * c];
            let ix0 = (xo * s.stride) as isize - s.pad as isize;
            if ix0 >= 0 && ix0 as usize + k <= s.in_w {
                // the whole kernel row is inside the image: one contiguous copy
                dst.copy_from_slice(&line[ix0 as usize * c..(ix0 as usize + k) * c]);
            } else {
                for kx in 0..k {
                    let ix = ix0 + kx as isize;
                    let d = &mut dst[kx * c..(kx + 1) * c];
                    if ix < 0 || ix >= s.in_w as isize {
                        d.fill(0.0);
                    } else {
                        d.copy_from_slice(&line[ix as usize * c..(ix as usize + 1) * c]);
                    }
                }
            }
        }
    }
}

/// Output rows `y0..y1` of the convolution of image `x` (NHWC) with packed weights `w`
/// ([`pack_weights`]), plus `bias`, then ReLU when `relu`, into `out` (those rows, NHWC).
/// `cols` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn conv_rows(
    s: &ConvShape,
    w: &[f32],
    bias: &[f32],
    relu: bool,
    x: &[f32],
    y0: usize,
    y1: usize,
    cols: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (ow, o_n, patch) = (s.out_w(), s.out_c, s.patch());
    let band = band_rows(s);
    let mut y = y0;
    while y < y1 {
        let yb = (y + band).min(y1);
        let px = (yb - y) * ow;
        super::winograd::grow(cols, px * patch);
        let cols = &mut cols[..px * patch];
        fill_cols(s, x, y, yb, cols);
        let dst = &mut out[(y - y0) * ow * o_n..(yb - y0) * ow * o_n];
        matmul(px, o_n, patch, cols, patch, w, o_n, dst, o_n);
        bias_relu(dst, bias, relu);
        y = yb;
    }
}
