//! CPU feature detection, done once at run time so one binary picks the fastest SIMD path.
//!
//! Code compiled with `#[target_feature]` may only run on a CPU that has those features, so the SIMD
//! kernels are reached only through token types ([`Avx2`], [`Avx512Vnni`]) whose sole constructors
//! detect the features at run time: holding a token proves the CPU has them. [`simd_level`] and the
//! capped accessors [`avx2`] and [`avx512_vnni`] also honour `INHAUS_SIMD` (`scalar` or `avx2`), which
//! lowers the level used, never raises it.
use std::sync::OnceLock;

/// The SIMD level the kernels use on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Scalar,
    Avx2,
    /// AVX2 plus AVX-512 VNNI (with VL and BW): `vpdpbusd` on 256-bit vectors.
    Avx512Vnni,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512Vnni => "avx512vnni",
        }
    }
}

/// Proof that this CPU has AVX2, FMA and F16C: only [`Avx2::detect`] (or [`Avx512Vnni::avx2`]) makes one.
///
/// ```compile_fail
/// let forged = inhaus_kernels::cpu::Avx2(());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

impl Avx2 {
    /// The token, if the CPU reports AVX2, FMA and F16C (regardless of `INHAUS_SIMD`).
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Some(Avx2(()));
        }
        None
    }
}

/// Proof that this CPU has everything [`Avx2`] proves plus AVX-512 F, BW, VL and VNNI: only
/// [`Avx512Vnni::detect`] makes one.
///
/// ```compile_fail
/// let forged = inhaus_kernels::cpu::Avx512Vnni(());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Avx512Vnni(());

impl Avx512Vnni {
    /// The token, if the CPU reports AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI (regardless of
    /// `INHAUS_SIMD`).
    pub fn detect() -> Option<Self> {
        let _avx2 = Avx2::detect()?;
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
        {
            return Some(Avx512Vnni(()));
        }
        None
    }

    /// The AVX2 token this one implies.
    pub fn avx2(self) -> Avx2 {
        Avx2(())
    }
}

/// What the kernels use: tokens for the levels detected and allowed by `INHAUS_SIMD`.
#[derive(Clone, Copy, Debug)]
struct Selected {
    level: SimdLevel,
    avx2: Option<Avx2>,
    vnni: Option<Avx512Vnni>,
}

static SELECTED: OnceLock<Selected> = OnceLock::new();

/// The highest level `INHAUS_SIMD` allows (unset or unknown values allow all).
fn cap() -> SimdLevel {
    match std::env::var("INHAUS_SIMD").ok().as_deref() {
        Some("scalar") => SimdLevel::Scalar,
        Some("avx2") => SimdLevel::Avx2,
        _ => SimdLevel::Avx512Vnni,
    }
}

fn select() -> Selected {
    let cap = cap();
    let avx2 = if cap >= SimdLevel::Avx2 {
        Avx2::detect()
    } else {
        None
    };
    let vnni = if cap >= SimdLevel::Avx512Vnni {
        Avx512Vnni::detect()
    } else {
        None
    };
    let level = match (vnni, avx2) {
        (Some(_), _) => SimdLevel::Avx512Vnni,
        (None, Some(_)) => SimdLevel::Avx2,
        (None, None) => SimdLevel::Scalar,
    };
    Selected { level, avx2, vnni }
}

fn selected() -> &'static Selected {
    SELECTED.get_or_init(select)
}

/// The detected SIMD level (`INHAUS_SIMD=scalar` or `avx2` caps it, for tests and comparisons).
pub fn simd_level() -> SimdLevel {
    selected().level
}

/// The AVX2 token when the kernels use AVX2 or better here (detected and not capped away).
#[inline]
pub fn avx2() -> Option<Avx2> {
    selected().avx2
}

/// The AVX-512 VNNI token when the kernels use it here (detected and not capped away).
#[inline]
pub fn avx512_vnni() -> Option<Avx512Vnni> {
    selected().vnni
}
