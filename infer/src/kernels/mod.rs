//! Compute kernels on NHWC images (one image at a time, or a band of its output rows):
//! [`im2col`] convolution for any kernel, [`winograd`] F(2x2, 3x3) for 3x3 kernels with
//! stride 1 and padding 1, [`pool`] max-pooling, and the [`matmul`] they share.
//!
//! The element-wise passes are written over fixed-width lane arrays so that the compiler
//! vectorises them; [`dispatch!`] compiles each such pass a second time with AVX-512 or
//! AVX2 enabled and picks the widest the CPU has at run time ([`isa`]).

pub mod im2col;
pub mod isa;
pub mod matmul;
pub mod pool;
pub mod winograd;

/// Calls `$generic(args)` compiled for the instruction set [`isa::isa`] picks: on x86_64
/// AVX-512F or AVX2+FMA through a `#[target_feature]` copy, elsewhere as is (aarch64
/// always has NEON, which the baseline build already uses).
macro_rules! dispatch {
    ($generic:ident $(::<$($g:tt),*>)? ( $($arg:expr),* $(,)? )) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<'a>(f: impl FnOnce() + 'a) { f() }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<'a>(f: impl FnOnce() + 'a) { f() }
            match $crate::kernels::isa::isa() {
                // SAFETY: isa() reports only what the CPU has.
                $crate::kernels::isa::Isa::Avx512 => unsafe {
                    avx512(#[inline(always)] || $generic$(::<$($g),*>)?($($arg),*))
                },
                // SAFETY: as above.
                $crate::kernels::isa::Isa::Avx2 => unsafe {
                    avx2(#[inline(always)] || $generic$(::<$($g),*>)?($($arg),*))
                },
                $crate::kernels::isa::Isa::Baseline => $generic$(::<$($g),*>)?($($arg),*),
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
