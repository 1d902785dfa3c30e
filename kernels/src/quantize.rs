//! Activation quantization: f32 rows to Q8_0 / Q8_1 / Q8_K, done once per matmul, rounding as
//! llama.cpp's x86 path does (round half to even), so dot products see the same integers.
use crate::quant::{as_blocks_mut, BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType, QK, QK_K};
use half::f16;

/// A growable byte buffer aligned to 8 bytes, reused across calls for quantized activations.
#[derive(Default)]
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    pub fn resize(&mut self, len: usize) {
        self.words.resize(len.div_ceil(8), 0);
        self.len = len;
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `words` holds `len.div_ceil(8) * 8 >= len` initialized bytes (`resize` zero-fills),
        // u8 needs no alignment, and the result borrows `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; the exclusive borrow of `self` moves to the result, and any bytes
        // written are valid `u64` bits.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.len) }
    }
}

/// Round half to even for |x| < 2^22, without a libm call (`rintf` is not inlined in a generic
/// x86-64 build): adding 1.5 · 2^23 leaves the rounded integer in the low mantissa bits.
#[inline(always)]
pub fn round_even(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        b.d = f16::from_f32(d);
        for (q, v) in b.qs.iter_mut().zip(xs) {
            *q = round_even(v * id) as i8;
        }
    }
}

pub fn quantize_row_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in b.qs.iter_mut().zip(xs) {
            let qi = round_even(v * id);
            *q = qi as i8;
            sum += qi;
        }
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(sum as f32 * d);
    }
}

pub fn quantize_row_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            b.d = 0.0;
            b.qs = [0; QK_K];
            b.bsums = [0; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, v) in b.qs.iter_mut().zip(xs) {
            *q = round_even(iscale * v).min(127) as i8;
        }
        for (j, s) in b.bsums.iter_mut().enumerate() {
            *s = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
// SAFETY: tasks write disjoint, in-bounds rows, and the job ends before the buffer's borrow does.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for SendPtr {}

/// Quantizes `m` rows of `k` f32 values to `partner` format into `buf` (row after row).
pub fn quantize_rows(partner: GgmlType, x: &[f32], m: usize, k: usize, buf: &mut AlignedBytes) {
    let row_bytes = partner.row_bytes(k);
    assert!(
        m.checked_mul(k).is_some_and(|n| n <= x.len()),
        "quantize_rows: {m} rows of {k} need more than {} values",
        x.len()
    );
    let total = row_bytes
        .checked_mul(m)
        .unwrap_or_else(|| panic!("quantize_rows: {m} rows of {row_bytes} bytes overflow"));
    buf.resize(total);
    let bytes = buf.as_mut_slice();
    let run = |(xr, br): (&[f32], &mut [u8])| match partner {
        GgmlType::Q8_0 => quantize_row_q8_0(xr, as_blocks_mut(br)),
        GgmlType::Q8_1 => quantize_row_q8_1(xr, as_blocks_mut(br)),
        GgmlType::Q8K => quantize_row_q8_k(xr, as_blocks_mut(br)),
        other => unreachable!("{other:?} is not an activation format"),
    };
    if m >= 8 {
        let ptr = SendPtr(bytes.as_mut_ptr());
        crate::pool::parallel_for(m, |i| {
            let p = ptr;
            // SAFETY: i < m, so bytes i * row_bytes .. (i + 1) * row_bytes lie inside `buf` (resized
            // to m * row_bytes above), and row i is written by task i only.
            let out = unsafe { std::slice::from_raw_parts_mut(p.0.add(i * row_bytes), row_bytes) };
            run((&x[i * k..(i + 1) * k], out));
        });
    } else {
        x[..m * k]
            .chunks_exact(k)
            .zip(bytes.chunks_exact_mut(row_bytes))
            .for_each(run);
    }
}
