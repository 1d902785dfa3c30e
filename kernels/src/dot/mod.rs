//! Dot products of one quantized weight row with one quantized activation row.
//!
//! `dot_fn(weight_type)` returns the fastest implementation this CPU supports (chosen at run time);
//! the scalar versions in [`scalar`] are the portable reference the SIMD ones are tested against.
use crate::cpu::{simd_level, SimdLevel};
use crate::quant::GgmlType;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod scalar;

/// A dot product of one weight row (raw block bytes) and one activation row of the partner format.
pub type DotFn = fn(&[u8], &[u8]) -> f32;

/// The dot product for `weight` against its activation partner at the given SIMD level.
pub fn dot_fn_at(weight: GgmlType, level: SimdLevel) -> Option<DotFn> {
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx512Vnni {
        if let Some(f) = avx2::dot_fn_vnni(weight) {
            return Some(f);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 {
        if let Some(f) = avx2::dot_fn(weight) {
            return Some(f);
        }
    }
    let _ = level;
    scalar::dot_fn(weight)
}

/// The dot product for `weight` on this machine.
pub fn dot_fn(weight: GgmlType) -> Option<DotFn> {
    dot_fn_at(weight, simd_level())
}

/// f32 · f32, used for float weights and attention.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd_level() >= SimdLevel::Avx2 {
        // SAFETY: AVX2/FMA presence checked at run time.
        return unsafe { avx2::dot_f32(a, b) };
    }
    scalar::dot_f32(a, b)
}

/// f32 · f16 (KV cache keys), accumulated in f32.
pub fn dot_f32_f16(a: &[f32], b: &[half::f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd_level() >= SimdLevel::Avx2 {
        // SAFETY: AVX2/FMA/F16C presence checked at run time.
        return unsafe { avx2::dot_f32_f16(a, b) };
    }
    scalar::dot_f32_f16(a, b)
}

/// y += alpha * x where x is f16 (KV cache values).
pub fn axpy_f16(y: &mut [f32], alpha: f32, x: &[half::f16]) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() >= SimdLevel::Avx2 {
        // SAFETY: AVX2/FMA/F16C presence checked at run time.
        return unsafe { avx2::axpy_f16(y, alpha, x) };
    }
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv.to_f32();
    }
}
