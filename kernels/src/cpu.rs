//! CPU feature detection, done once at run time so one binary picks the fastest SIMD path.
use std::sync::OnceLock;

/// The SIMD level the kernels use on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Scalar,
    Avx2,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
        }
    }
}

static LEVEL: OnceLock<SimdLevel> = OnceLock::new();

fn detect() -> SimdLevel {
    if std::env::var("INHAUS_SIMD").map(|v| v == "scalar").unwrap_or(false) {
        return SimdLevel::Scalar;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Scalar
}

/// The detected SIMD level (`INHAUS_SIMD=scalar` forces the portable path).
pub fn simd_level() -> SimdLevel {
    *LEVEL.get_or_init(detect)
}
