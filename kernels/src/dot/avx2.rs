//! AVX2 + FMA + F16C dot products (x86-64), used when the CPU reports those features at run time.
//! Integer products use `maddubs` (u8 × i8 → i16 pairs) then `madd` (→ i32), one 32-byte vector per
//! 32 weights; the scale of each block is applied in f32 with one FMA.
//!
//! Every `#[target_feature]` function here is private; the public entry points take a
//! [`crate::cpu`] token, which only run-time detection creates, so safe code cannot reach an
//! instruction the CPU lacks. The kernels read whole blocks through `as_blocks` (which checks length
//! and alignment) and never load past a block's fields.
use super::DotFn;
use crate::cpu::{Avx2, Avx512Vnni};
use crate::quant::*;
use std::arch::x86_64::*;

/// A safe [`DotFn`] calling the `unsafe` kernel `$k`, whose CPU features the caller's token proves.
macro_rules! wrap {
    ($k:path, $features:literal) => {
        |w: &[u8], a: &[u8]| -> f32 {
            // SAFETY: this closure is only returned by a function that received the token proving
            // the kernel's features (`$features`) on this CPU; the kernel's memory accesses stay
            // inside the blocks its slices view.
            unsafe { $k(w, a) }
        }
    };
}

/// The AVX2 kernels (`None` where only a scalar one exists). The token argument proves the CPU has
/// the features; without one the table cannot be had:
/// ```compile_fail
/// let _ = inhaus_kernels::dot::avx2::dot_fn(inhaus_kernels::GgmlType::Q4_0);
/// ```
pub fn dot_fn(_proof: Avx2, weight: GgmlType) -> Option<DotFn> {
    Some(match weight {
        GgmlType::Q4_0 => wrap!(plain::q4_0_q8_0, "avx2,fma,f16c"),
        GgmlType::Q4_1 => wrap!(plain::q4_1_q8_1, "avx2,fma,f16c"),
        GgmlType::Q5_0 => wrap!(plain::q5_0_q8_0, "avx2,fma,f16c"),
        GgmlType::Q8_0 => wrap!(plain::q8_0_q8_0, "avx2,fma,f16c"),
        GgmlType::Q4K => wrap!(q4k_q8k, "avx2,fma,f16c"),
        GgmlType::Q6K => wrap!(q6k_q8k, "avx2,fma,f16c"),
        _ => return None,
    })
}

/// The AVX-512 VNNI kernels where they differ from AVX2; `None` falls back to [`dot_fn`].
pub fn dot_fn_vnni(_proof: Avx512Vnni, weight: GgmlType) -> Option<DotFn> {
    Some(match weight {
        GgmlType::Q4_0 => wrap!(vnni::q4_0_q8_0, "avx512 vnni"),
        GgmlType::Q4_1 => wrap!(vnni::q4_1_q8_1, "avx512 vnni"),
        GgmlType::Q5_0 => wrap!(vnni::q5_0_q8_0, "avx512 vnni"),
        GgmlType::Q8_0 => wrap!(vnni::q8_0_q8_0, "avx512 vnni"),
        _ => return None,
    })
}

/// f32 · f32 over the common length of `a` and `b`.
pub fn dot_f32(_proof: Avx2, a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the token proves AVX2 and FMA; `dot_f32_imp` reads only inside both slices.
    unsafe { dot_f32_imp(a, b) }
}

/// `y += alpha * x` over the common length.
pub fn axpy_f32(_proof: Avx2, y: &mut [f32], alpha: f32, x: &[f32]) {
    // SAFETY: the token proves AVX2 and FMA; `axpy_f32_imp` stays inside both slices.
    unsafe { axpy_f32_imp(y, alpha, x) }
}

/// f16 → f32 over the common length.
pub fn f16_to_f32(_proof: Avx2, x: &[half::f16], out: &mut [f32]) {
    // SAFETY: the token proves AVX2 and F16C; `f16_to_f32_imp` stays inside both slices.
    unsafe { f16_to_f32_imp(x, out) }
}

/// f16 → f32 with the F16C instruction (the `half` crate dispatches at run time on every call).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn h2f(h: half::f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of products of signed bytes, as 8 i32 lanes converted to f32.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn mul_sum_i8(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

/// Sum of products of unsigned × signed bytes, as 8 i32 lanes converted to f32.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn mul_sum_u8_i8(x: __m256i, y: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(x, y);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

/// 16 bytes of nibbles → 32 bytes: low nibbles first (elements 0..16), then high (16..32).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn nibbles_32(qs: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(qs as *const __m128i);
    let hi = _mm_srli_epi16(tmp, 4);
    _mm256_and_si256(_mm256_set_m128i(hi, tmp), _mm256_set1_epi8(0x0F))
}

/// 32 bits → 32 bytes, 0xFF where the bit is set.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn bits_to_bytes(bits: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    let bit_mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
    let bytes = _mm256_or_si256(bytes, bit_mask);
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// The kernels of the 32-element block formats, generated once per integer-product flavour.
macro_rules! block32_kernels {
    ($feat:literal, $mul_i8:path, $mul_u8:path) => {
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn q8_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
            let (w, a) = (as_blocks::<BlockQ8_0>(w), as_blocks::<BlockQ8_0>(a));
            let mut acc = _mm256_setzero_ps();
            for (x, y) in w.iter().zip(a) {
                let d = _mm256_set1_ps(h2f(x.d) * h2f(y.d));
                let qx = _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i);
                let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
                acc = _mm256_fmadd_ps(d, $mul_i8(qx, qy), acc);
            }
            hsum_ps(acc)
        }

        #[target_feature(enable = $feat)]
        pub(super) unsafe fn q4_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
            let (w, a) = (as_blocks::<BlockQ4_0>(w), as_blocks::<BlockQ8_0>(a));
            let mut acc = _mm256_setzero_ps();
            let off = _mm256_set1_epi8(8);
            for (x, y) in w.iter().zip(a) {
                let d = _mm256_set1_ps(h2f(x.d) * h2f(y.d));
                let qx = _mm256_sub_epi8(nibbles_32(x.qs.as_ptr()), off);
                let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
                acc = _mm256_fmadd_ps(d, $mul_i8(qx, qy), acc);
            }
            hsum_ps(acc)
        }

        #[target_feature(enable = $feat)]
        pub(super) unsafe fn q4_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
            let (w, a) = (as_blocks::<BlockQ4_1>(w), as_blocks::<BlockQ8_1>(a));
            let mut acc = _mm256_setzero_ps();
            let mut offset = 0f32;
            for (x, y) in w.iter().zip(a) {
                offset += h2f(x.m) * h2f(y.s);
                let d = _mm256_set1_ps(h2f(x.d) * h2f(y.d));
                let qx = nibbles_32(x.qs.as_ptr());
                let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
                acc = _mm256_fmadd_ps(d, $mul_u8(qx, qy), acc);
            }
            hsum_ps(acc) + offset
        }

        #[target_feature(enable = $feat)]
        pub(super) unsafe fn q5_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
            let (w, a) = (as_blocks::<BlockQ5_0>(w), as_blocks::<BlockQ8_0>(a));
            let mut acc = _mm256_setzero_ps();
            let high_off = _mm256_set1_epi8(0xF0u8 as i8);
            for (x, y) in w.iter().zip(a) {
                let d = _mm256_set1_ps(h2f(x.d) * h2f(y.d));
                let lo = nibbles_32(x.qs.as_ptr());
                // value = (nibble | hbit<<4) - 16: where the high bit is clear that is nibble - 16 = nibble | 0xF0
                // as a signed byte; where it is set it is the nibble itself.
                let hbits = bits_to_bytes(u32::from_le_bytes(x.qh));
                let qx = _mm256_or_si256(lo, _mm256_andnot_si256(hbits, high_off));
                let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
                acc = _mm256_fmadd_ps(d, $mul_i8(qx, qy), acc);
            }
            hsum_ps(acc)
        }
    };
}

/// AVX2 flavour: `maddubs` + `madd`. Callers must hold the [`Avx2`] token.
mod plain {
    use super::*;
    block32_kernels!("avx2,fma,f16c", mul_sum_i8, mul_sum_u8_i8);
}

/// AVX-512 VNNI flavour (256-bit, EVEX): one `vpdpbusd` per 32 products, no 16-bit intermediate.
/// Callers must hold the [`Avx512Vnni`] token.
mod vnni {
    use super::*;
    block32_kernels!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        mul_sum_i8_vnni,
        mul_sum_u8_i8_vnni
    );
}

/// Sum of products of signed bytes with VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn mul_sum_i8_vnni(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy))
}

/// Sum of products of unsigned × signed bytes with VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn mul_sum_u8_i8_vnni(x: __m256i, y: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y))
}

/// Needs AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_q8k(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (as_blocks::<BlockQ4K>(w), as_blocks::<BlockQ8K>(a));
    let mut acc = _mm256_setzero_ps();
    let mut mins_total = 0f32;
    let m4 = _mm256_set1_epi8(0x0F);
    for (x, y) in w.iter().zip(a) {
        let mut sc = [0u8; 8];
        let mut mn = [0u8; 8];
        for j in 0..8 {
            let (s, m) = scale_min_k4(j, &x.scales);
            sc[j] = s;
            mn[j] = m;
        }
        let mut summ = 0i32;
        for j in 0..8 {
            summ += mn[j] as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
        }
        mins_total += y.d * h2f(x.dmin) * summ as f32;
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let q4 = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c) as *const __m256i);
            let q4l = _mm256_and_si256(q4, m4);
            let q4h = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            let q8l = _mm256_loadu_si256(y.qs.as_ptr().add(64 * c) as *const __m256i);
            let q8h = _mm256_loadu_si256(y.qs.as_ptr().add(64 * c + 32) as *const __m256i);
            let pl = _mm256_madd_epi16(
                _mm256_maddubs_epi16(q4l, q8l),
                _mm256_set1_epi16(sc[2 * c] as i16),
            );
            let ph = _mm256_madd_epi16(
                _mm256_maddubs_epi16(q4h, q8h),
                _mm256_set1_epi16(sc[2 * c + 1] as i16),
            );
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        let d = _mm256_set1_ps(y.d * h2f(x.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - mins_total
}

/// Needs AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_q8k(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (as_blocks::<BlockQ6K>(w), as_blocks::<BlockQ8K>(a));
    let mut acc = _mm256_setzero_ps();
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let m32 = _mm256_set1_epi8(32);
    for (x, y) in w.iter().zip(a) {
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let ql = x.ql.as_ptr().add(64 * half);
            let qh = _mm256_loadu_si256(x.qh.as_ptr().add(32 * half) as *const __m256i);
            let sc = &x.scales[8 * half..8 * half + 8];
            let q8 = y.qs.as_ptr().add(128 * half);
            let ql1 = _mm256_loadu_si256(ql as *const __m256i);
            let ql2 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
            let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4);
            let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4);
            let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4);
            let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4);
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql1, m4), h0),
                _mm256_or_si256(_mm256_and_si256(ql2, m4), h1),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql2, 4), m4), h3),
            ];
            for (g, qg) in q.iter().enumerate() {
                let a8 = _mm256_loadu_si256(q8.add(32 * g) as *const __m256i);
                let p =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(*qg, a8), _mm256_maddubs_epi16(m32, a8));
                let scales = _mm256_set_m128i(
                    _mm_set1_epi16(sc[2 * g + 1] as i16),
                    _mm_set1_epi16(sc[2 * g] as i16),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scales));
            }
        }
        let d = _mm256_set1_ps(y.d * h2f(x.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_imp(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i)),
            _mm256_loadu_ps(b.as_ptr().add(i)),
            acc0,
        );
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i + 8)),
            _mm256_loadu_ps(b.as_ptr().add(i + 8)),
            acc1,
        );
        i += 16;
    }
    let mut s = hsum_ps(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_f32_imp(y: &mut [f32], alpha: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let av = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + 8 <= n {
        let yv = _mm256_loadu_ps(y.as_ptr().add(i));
        let xv = _mm256_loadu_ps(x.as_ptr().add(i));
        _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_fmadd_ps(av, xv, yv));
        i += 8;
    }
    while i < n {
        y[i] += alpha * x[i];
        i += 1;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_to_f32_imp(x: &[half::f16], out: &mut [f32]) {
    let n = out.len().min(x.len());
    let xp = x.as_ptr() as *const u16;
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(xp.add(i) as *const __m128i));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
        i += 8;
    }
    while i < n {
        out[i] = x[i].to_f32();
        i += 1;
    }
}
