//! Compute kernels on NHWC images (one image at a time, or a band of its output rows):
//! [`im2col`] convolution for any kernel, [`winograd`] F(2x2, 3x3) for 3x3 kernels with
//! stride 1 and padding 1, [`pool`] max-pooling, and the [`matmul`] they share.
//!
//! The element-wise passes are written over fixed-width lane arrays so that the compiler
//! vectorises them; [`dispatch!`] compiles each such pass a second time with AVX-512 or
//! AVX2 enabled and picks the widest the CPU has at run time.

pub mod im2col;
pub mod matmul;
pub mod pool;
pub mod winograd;

/// Calls `$generic(args)` compiled for the best instruction set the CPU offers: on
/// x86_64 with AVX-512F or AVX2+FMA through a `#[target_feature]` copy, elsewhere as is
/// (aarch64 always has NEON, which the baseline build already uses).
macro_rules! dispatch {
    ($generic:ident $(::<$($g:tt),*>)? ( $($arg:expr),* $(,)? )) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<'a>(f: impl FnOnce() + 'a) { f() }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<'a>(f: impl FnOnce() + 'a) { f() }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                unsafe { avx512(#[inline(always)] || $generic$(::<$($g),*>)?($($arg),*)) }
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                unsafe { avx2(#[inline(always)] || $generic$(::<$($g),*>)?($($arg),*)) }
            } else {
                $generic$(::<$($g),*>)?($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $generic$(::<$($g),*>)?($($arg),*)
        }
    }};
}
pub(crate) use dispatch;

/// Adds `bias` to every pixel (rows of `bias.len()` channels) of `x`, then clamps at zero
/// when `relu`.
#[inline(always)]
pub fn bias_relu(x: &mut [f32], bias: &[f32], relu: bool) {
    for px in x.chunks_exact_mut(bias.len()) {
        for (v, b) in px.iter_mut().zip(bias) {
            let y = *v + b;
            *v = if relu { y.max(0.0) } else { y };
        }
    }
}

#[cfg(test)]
mod tests;
