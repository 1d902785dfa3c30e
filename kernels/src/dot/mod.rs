//! Dot products of one quantized weight row with one quantized activation row.
//!
//! `dot_fn(weight_type)` returns the fastest implementation this CPU supports (chosen at run time, and
//! only through a [`crate::cpu`] token that proves the features a SIMD kernel needs);
//! the scalar versions in [`scalar`] are the portable reference the SIMD ones are tested against.
use crate::cpu::{self, Avx2, Avx512Vnni, SimdLevel};
use crate::quant::GgmlType;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod scalar;

/// A dot product of one weight row (raw block bytes) and one activation row of the partner format.
pub type DotFn = fn(&[u8], &[u8]) -> f32;

/// The fastest kernel the tokens allow: a SIMD one is chosen only with the token that proves its CPU
/// features.
fn select(weight: GgmlType, vnni_t: Option<Avx512Vnni>, avx2_t: Option<Avx2>) -> Option<DotFn> {
    #[cfg(target_arch = "x86_64")]
    if let Some(f) = vnni_t.and_then(|t| avx2::dot_fn_vnni(t, weight)) {
        return Some(f);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(f) = avx2_t.and_then(|t| avx2::dot_fn(t, weight)) {
        return Some(f);
    }
    let _ = (vnni_t, avx2_t);
    scalar::dot_fn(weight)
}

/// The dot product for `weight` at `level`, or at the highest level below it that this CPU has (a
/// level the CPU lacks is never used, whatever is asked). Ignores `INHAUS_SIMD`.
pub fn dot_fn_at(weight: GgmlType, level: SimdLevel) -> Option<DotFn> {
    let vnni = (level >= SimdLevel::Avx512Vnni)
        .then(Avx512Vnni::detect)
        .flatten();
    let avx2 = (level >= SimdLevel::Avx2).then(Avx2::detect).flatten();
    select(weight, vnni, avx2)
}

/// The dot product for `weight` on this machine (capped by `INHAUS_SIMD`).
pub fn dot_fn(weight: GgmlType) -> Option<DotFn> {
    select(weight, cpu::avx512_vnni(), cpu::avx2())
}

/// f32 · f32, used for float weights and attention.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = cpu::avx2() {
        return avx2::dot_f32(t, a, b);
    }
    scalar::dot_f32(a, b)
}

/// y += alpha * x.
pub fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = cpu::avx2() {
        return avx2::axpy_f32(t, y, alpha, x);
    }
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}

/// Converts f16 values (KV cache rows) to f32.
pub fn f16_to_f32(x: &[half::f16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = cpu::avx2() {
        return avx2::f16_to_f32(t, x, out);
    }
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.to_f32();
    }
}
