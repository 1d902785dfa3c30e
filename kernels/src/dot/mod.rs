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

/// y += alpha * x.
pub fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() >= SimdLevel::Avx2 {
        // SAFETY: AVX2/FMA presence checked at run time.
        return unsafe { avx2::axpy_f32(y, alpha, x) };
    }
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}

/// Converts f16 values (KV cache rows) to f32.
pub fn f16_to_f32(x: &[half::f16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() >= SimdLevel::Avx2 {
        // SAFETY: AVX2/F16C presence checked at run time.
        return unsafe { avx2::f16_to_f32(x, out) };
    }
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.to_f32();
    }
}
