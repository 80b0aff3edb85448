//! Compute kernels on NHWC images (one image at a time, or a band of its output rows):
//! [`im2col`] convolution for any kernel, [`winograd`] F(2x2, 3x3) for 3x3 kernels with
//! stride 1 and padding 1, [`pool`] max-pooling, and the [`matmul`] they share.
//!
//! The element-wise passes are written over fixed-width lane arrays so that the compiler
//! vectorises them; [`dispatch!`] compiles each such pass a second time with AVX-512 or
//! AVX2 enabled and picks the widest the CPU has at run time ([`isa`]). On aarch64 the
//! same passes have hand-written NEON versions ([`neon`]), picked the same way (the
//! generic code stays the fallback, `EDGECP_INFER_ISA=baseline`). 32-bit ARM runs the
//! generic code (scalar VFP: the armv7 targets do not assume NEON).

pub mod im2col;
pub mod isa;
pub mod matmul;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
pub mod pool;
pub mod winograd;

/// Calls `$generic(args)` compiled for the instruction set [`isa::isa`] picks: on x86_64
/// AVX-512F or AVX2+FMA through a `#[target_feature]` copy, elsewhere as is (aarch64
/// always has NEON, which the baseline build already uses; the call sites pick the
/// [`neon`] kernels themselves when [`isa::isa`] is `Neon`).
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
                $crate::kernels::isa::Isa::Baseline | $crate::kernels::isa::Isa::Neon => {
                    $generic$(::<$($g),*>)?($($arg),*)
                }
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
/// when `relu`, with the kernels of [`isa::isa`].
pub fn bias_relu(x: &mut [f32], bias: &[f32], relu: bool) {
    bias_relu_with(isa::isa(), x, bias, relu)
}

/// [`bias_relu`] with the kernels of `isa` (the NEON one, or the generic code compiled
/// for the x86 set [`isa::isa`] picks).
pub(crate) fn bias_relu_with(isa: isa::Isa, x: &mut [f32], bias: &[f32], relu: bool) {
    #[cfg(target_arch = "aarch64")]
    if isa == isa::Isa::Neon {
        return neon::bias_relu(x, bias, relu);
    }
    let _ = isa;
    dispatch!(bias_relu_generic(x, bias, relu))
}

#[inline(always)]
fn bias_relu_generic(x: &mut [f32], bias: &[f32], relu: bool) {
    for px in x.chunks_exact_mut(bias.len()) {
        for (v, b) in px.iter_mut().zip(bias) {
            let y = *v + b;
            *v = if relu { y.max(0.0) } else { y };
        }
    }
}

#[cfg(test)]
mod tests;
