//! Which vector instruction set the kernels use: the widest the CPU has, capped by
//! `EDGECP_INFER_ISA` (`avx512`, `avx2` or `baseline`; read once per process) so that
//! the AVX2 paths can be measured, or picked, on a CPU that also has AVX-512 (some Intel
//! CPUs lower their clock while 512-bit instructions run).

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// What the build targets (x86_64: SSE2; aarch64: NEON).
    Baseline,
    /// x86_64 AVX2 + FMA.
    Avx2,
    /// x86_64 AVX-512F.
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "baseline" | "none" | "sse2" | "neon" => Some(Isa::Baseline),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx512f" | "avx-512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

/// The widest instruction set this CPU runs.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// Cached choice: 0 = not read yet, else `Isa as u8 + 1`.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// The instruction set the kernels use: [`detected`], lowered by `EDGECP_INFER_ISA` (a
/// value above what the CPU has, or one not understood, is ignored).
#[inline]
pub fn isa() -> Isa {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Isa::Baseline,
        2 => Isa::Avx2,
        3 => Isa::Avx512,
        _ => {
            let cpu = detected();
            let chosen = std::env::var("EDGECP_INFER_ISA")
                .ok()
                .and_then(|s| Isa::parse(&s))
                .map_or(cpu, |wanted| wanted.min(cpu));
            CHOSEN.store(chosen as u8 + 1, Ordering::Relaxed);
            chosen
        }
    }
}
