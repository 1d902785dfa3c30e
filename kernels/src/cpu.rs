//! CPU feature detection, done once at run time so one binary picks the fastest SIMD path.
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

static LEVEL: OnceLock<SimdLevel> = OnceLock::new();

fn detect() -> SimdLevel {
    let cap = std::env::var("INHAUS_SIMD").ok();
    if cap.as_deref() == Some("scalar") {
        return SimdLevel::Scalar;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            let vnni = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
            if vnni && cap.as_deref() != Some("avx2") {
                return SimdLevel::Avx512Vnni;
            }
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Scalar
}

/// The detected SIMD level (`INHAUS_SIMD=scalar` or `avx2` caps it, for tests and comparisons).
pub fn simd_level() -> SimdLevel {
    *LEVEL.get_or_init(detect)
}
