//! Max-pooling of one NHWC image (no padding, floor rounding: ONNX MaxPool's defaults).

use super::dispatch;
use super::isa::{self, Isa};

/// Pooling window and stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub kernel: usize,
    pub stride: usize,
}

impl PoolShape {
    /// Output side for an input side (`None` when the window does not fit).
    pub fn out(&self, side: usize) -> Option<usize> {
        (side >= self.kernel && self.stride > 0).then(|| (side - self.kernel) / self.stride + 1)
    }
}

#[inline(always)]
fn max_pool_generic(p: PoolShape, x: &[f32], h: usize, w: usize, c: usize, out: &mut [f32]) {
    let (Some(oh), Some(ow)) = (p.out(h), p.out(w)) else {
        return;
    };
    for oy in 0..oh {
        for ox in 0..ow {
            let dst = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
            dst.fill(f32::NEG_INFINITY);
            for ky in 0..p.kernel {
                for kx in 0..p.kernel {
                    let (y, xx) = (oy * p.stride + ky, ox * p.stride + kx);
                    let src = &x[(y * w + xx) * c..(y * w + xx + 1) * c];
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d = d.max(*v);
                    }
                }
            }
        }
    }
}

/// Max-pools `x` (`h x w x c`) into `out` (`out_h x out_w x c`).
pub fn max_pool(p: PoolShape, x: &[f32], h: usize, w: usize, c: usize, out: &mut [f32]) {
    max_pool_with(isa::isa(), p, x, h, w, c, out)
}

/// [`max_pool`] with the kernels of `isa` (the NEON one, or the generic code compiled for
/// the x86 set [`isa::isa`] picks).
pub(crate) fn max_pool_with(
    isa: Isa,
    p: PoolShape,
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        return super::neon::max_pool(p, x, h, w, c, out);
    }
    let _ = isa;
    dispatch!(max_pool_generic(p, x, h, w, c, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_each_channel_separately() {
        // 4x4 image, 2 channels: channel 0 = index, channel 1 = -index
        let x: Vec<f32> = (0..16).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let mut out = vec![0.0; 2 * 2 * 2];
        max_pool(
            PoolShape {
                kernel: 2,
                stride: 2,
            },
            &x,
            4,
            4,
            2,
            &mut out,
        );
        assert_eq!(out, vec![5.0, -0.0, 7.0, -2.0, 13.0, -8.0, 15.0, -10.0]);
    }

    #[test]
    fn odd_sides_floor() {
        let p = PoolShape {
            kernel: 2,
            stride: 2,
        };
        assert_eq!(p.out(5), Some(2));
        assert_eq!(p.out(1), None);
    }
}
