//! Which vector instruction set the kernels use: the widest the CPU has, capped by
//! `EDGECP_INFER_ISA` (read once per process) so that the narrower paths can be measured,
//! or picked, on a CPU that has wider ones (some Intel CPUs lower their clock while
//! 512-bit instructions run). Values: on x86_64 `avx512`, `avx2` or `baseline`; on
//! aarch64 `neon` or `baseline` (the generic lane-array code, which the compiler
//! vectorises for NEON on its own); a value of the other architecture is ignored.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the kernels are compiled for. Within one architecture the order is
/// from narrowest to widest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// What the build targets (x86_64: SSE2; aarch64: NEON through the compiler's
    /// autovectorisation; armv7: scalar VFP).
    Baseline,
    /// aarch64 Advanced SIMD through the hand-written `std::arch::aarch64` kernels.
    Neon,
    /// x86_64 AVX2 + FMA.
    Avx2,
    /// x86_64 AVX-512F.
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "baseline" | "none" | "sse2" | "generic" => Some(Isa::Baseline),
            "neon" | "asimd" => Some(Isa::Neon),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx512f" | "avx-512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// Whether this build has kernels for `self` (its architecture's sets).
    fn of_this_arch(self) -> bool {
        match self {
            Isa::Baseline => true,
            Isa::Neon => cfg!(target_arch = "aarch64"),
            Isa::Avx2 | Isa::Avx512 => cfg!(target_arch = "x86_64"),
        }
    }

    /// The choice for a CPU that has `cpu` and a wish `wanted` (`EDGECP_INFER_ISA`):
    /// never above what the CPU has, and a set of another architecture is ignored.
    fn capped(wanted: Option<Isa>, cpu: Isa) -> Isa {
        match wanted {
            Some(w) if w.of_this_arch() => w.min(cpu),
            _ => cpu,
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
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Isa::Neon;
        }
    }
    Isa::Baseline
}

/// Cached choice: 0 = not read yet, else `Isa as u8 + 1`.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// The instruction set the kernels use: [`detected`], lowered by `EDGECP_INFER_ISA` (a
/// value above what the CPU has, of another architecture, or not understood is ignored).
#[inline]
pub fn isa() -> Isa {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Isa::Baseline,
        2 => Isa::Neon,
        3 => Isa::Avx2,
        4 => Isa::Avx512,
        _ => {
            let wanted = std::env::var("EDGECP_INFER_ISA")
                .ok()
                .and_then(|s| Isa::parse(&s));
            let chosen = Isa::capped(wanted, detected());
            CHOSEN.store(chosen as u8 + 1, Ordering::Relaxed);
            chosen
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_is_capped_by_the_cpu_and_the_architecture() {
        assert_eq!(Isa::parse(" NEON "), Some(Isa::Neon));
        assert_eq!(Isa::parse("avx-512"), Some(Isa::Avx512));
        assert_eq!(Isa::parse("sve"), None);
        assert_eq!(Isa::capped(None, Isa::Baseline), Isa::Baseline);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Isa::capped(Some(Isa::Avx2), Isa::Avx512), Isa::Avx2);
            assert_eq!(Isa::capped(Some(Isa::Avx512), Isa::Avx2), Isa::Avx2);
            // aarch64's set means nothing here
            assert_eq!(Isa::capped(Some(Isa::Neon), Isa::Avx512), Isa::Avx512);
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(Isa::capped(Some(Isa::Baseline), Isa::Neon), Isa::Baseline);
            assert_eq!(Isa::capped(Some(Isa::Avx512), Isa::Neon), Isa::Neon);
            assert_eq!(Isa::capped(Some(Isa::Neon), Isa::Neon), Isa::Neon);
        }
        if cfg!(target_arch = "arm") {
            // 32-bit ARM: the scalar (VFP) build, whatever is asked
            assert_eq!(Isa::capped(Some(Isa::Neon), Isa::Baseline), Isa::Baseline);
        }
    }

    /// Every aarch64 CPU has Advanced SIMD: the NEON kernels are what runs (under qemu
    /// with QEMU_CPU=cortex-a53 too), unless `EDGECP_INFER_ISA` asks for the generic code.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn aarch64_runs_the_neon_kernels() {
        assert_eq!(detected(), Isa::Neon);
        let wanted = std::env::var("EDGECP_INFER_ISA").ok();
        match wanted.as_deref().and_then(Isa::parse) {
            Some(Isa::Baseline) => assert_eq!(isa(), Isa::Baseline),
            _ => assert_eq!(isa(), Isa::Neon),
        }
    }
}
