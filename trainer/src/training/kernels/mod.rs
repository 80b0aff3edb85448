//! Fast CPU kernels for training the embedding network, plugged into candle as custom ops
//! (`CustomOp3` with a backward pass) so that the rest of the training code stays plain
//! candle.
//!
//! - [`im2col`]: the column matrix of one image and its adjoint (col2im);
//! - [`matmul`]: bounds-checked strided views and one product on the `gemm` crate;
//! - [`block`]: the fused block conv + bias [+ batch norm] + ReLU [+ max-pool 2x2], its
//!   forward pass and every gradient (no input gradient for the first layer).

pub mod block;
pub mod im2col;
pub mod matmul;

#[cfg(test)]
mod tests;

pub use block::{BlockSpec, ConvBlock};

use candle_core::{Result, Tensor};

/// Max-pool `k x k`, stride `k` (floor: trailing rows and columns are dropped), from
/// candle's reshape and max ops, for the `Candle` kernel and as the reference in tests.
///
/// candle 0.11.1's own `max_pool2d` has a wrong gradient: its backward multiplies the
/// gradient by (maxima in the window) / k^2 instead of passing it to the maximum, so a
/// 2x2 pool passes a quarter of the gradient (and it fails on odd sizes). A `max` over
/// reshaped windows differentiates correctly.
pub fn max_pool2d_exact(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (hp, wp) = (h / k, w / k);
    x.narrow(2, 0, hp * k)?
        .narrow(3, 0, wp * k)?
        .reshape((b, c, hp, k, wp, k))?
        .max(5)?
        .max(3)
}
