//! Weights of the 32-element block formats (Q4_0, Q4_1, Q5_0, Q8_0) re-laid at load time for 8-row
//! GEMV/GEMM with `vpdpbusd` (AVX-512 VNNI), keeping their exact size in bytes.
//!
//! Rows are taken in groups of 8. For each group and block of 32 columns one record holds the 8 rows'
//! f16 scales (and Q4_1 mins), then the quants as unsigned bytes arranged so that one 32-byte vector
//! holds 4 consecutive columns of each of the 8 rows: a broadcast of 4 activation bytes and one
//! `vpdpbusd` then advance 8 dot products at once, with no horizontal sums. Signed formats are stored
//! with an offset (`q + off`, unsigned), corrected exactly in integers with the activation block's sum:
//! `Σ w·a = d_w·d_a·(Σ q_u·a_q − off·Σ a_q)` (plus `m_w·d_a·Σ a_q` for Q4_1's min).
//! Nibble formats keep two columns per byte; Q5_0's fifth bits are one 32-byte bit plane.
use crate::quant::{as_blocks, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0, GgmlType, QK};
use crate::quantize::AlignedBytes;
use half::f16;

/// Rows per packed group.
pub const GROUP: usize = 8;

crate::quant::pod_struct! {
    /// An activation block for packed matmuls: scale, the sum of the quants (exact, for the offset
    /// correction), scale × sum rounded through f16 (Q4_1's min term, as llama.cpp's Q8_1), and the
    /// quants.
    pub struct BlockQ8A {
        pub d: f32,
        pub s: f32,
        pub sum: i32,
        pub qs: [i8; QK],
    }
}

/// Quantizes one activation row to [`BlockQ8A`] blocks, with the same integers and (f16-rounded) scale
/// as llama.cpp's Q8_0 activations.
pub fn quantize_row_q8a(x: &[f32], out: &mut [BlockQ8A]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d_raw = amax / 127.0;
        let d = f16::from_f32(d_raw).to_f32();
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in b.qs.iter_mut().zip(xs) {
            let qi = crate::quantize::round_even(v * id);
            *q = qi as i8;
            sum += qi;
        }
        b.d = d;
        b.sum = sum;
        b.s = f16::from_f32(d_raw * sum as f32).to_f32();
    }
}

/// A weight matrix in the packed layout. Its fields are private so that its shape always matches its
/// data (the VNNI kernel reads records through raw pointers):
/// ```compile_fail
/// # use inhaus_kernels::{packed::PackedMatrix, GgmlType};
/// # let raw = vec![0u8; 8 * 34];
/// if let Some(mut p) = PackedMatrix::pack(GgmlType::Q8_0, 8, 32, &raw) {
///     p.cols = 1 << 20;
/// }
/// ```
pub struct PackedMatrix {
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    data: AlignedBytes,
}

/// Bytes of one (group, block) record.
pub fn record_bytes(dtype: GgmlType) -> Option<usize> {
    Some(match dtype {
        GgmlType::Q8_0 => 16 + 256,
        GgmlType::Q4_0 => 16 + 128,
        GgmlType::Q4_1 => 32 + 128,
        GgmlType::Q5_0 => 16 + 128 + 32,
        _ => return None,
    })
}

/// Offset added to the quants to make them unsigned.
fn quant_offset(dtype: GgmlType) -> i32 {
    match dtype {
        GgmlType::Q8_0 => 128,
        GgmlType::Q4_0 => 8,
        GgmlType::Q5_0 => 16,
        _ => 0,
    }
}

/// The 32 quants of one block as unsigned values (with the format's offset), and scale / min.
fn unpack_block(dtype: GgmlType, raw: &[u8], b: usize) -> ([u8; 32], f16, f16) {
    let mut q = [0u8; 32];
    match dtype {
        GgmlType::Q8_0 => {
            let x = &as_blocks::<BlockQ8_0>(raw)[b];
            for k in 0..32 {
                q[k] = (x.qs[k] as i16 + 128) as u8;
            }
            (q, x.d, f16::ZERO)
        }
        GgmlType::Q4_0 => {
            let x = &as_blocks::<BlockQ4_0>(raw)[b];
            for k in 0..16 {
                q[k] = x.qs[k] & 0xF;
                q[k + 16] = x.qs[k] >> 4;
            }
            (q, x.d, f16::ZERO)
        }
        GgmlType::Q4_1 => {
            let x = &as_blocks::<BlockQ4_1>(raw)[b];
            for k in 0..16 {
                q[k] = x.qs[k] & 0xF;
                q[k + 16] = x.qs[k] >> 4;
            }
            (q, x.d, x.m)
        }
        GgmlType::Q5_0 => {
            let x = &as_blocks::<BlockQ5_0>(raw)[b];
            let qh = u32::from_le_bytes(x.qh);
            for k in 0..16 {
                q[k] = (x.qs[k] & 0xF) | ((((qh >> k) & 1) as u8) << 4);
                q[k + 16] = (x.qs[k] >> 4) | ((((qh >> (k + 16)) & 1) as u8) << 4);
            }
            (q, x.d, f16::ZERO)
        }
        _ => unreachable!("not a packable format"),
    }
}

/// Lays out `rows / GROUP × nb` records of `rec` bytes, calling `fill(record, group_rows, b)` for each
/// group and block, where `group_rows[r]` is GGUF row `GROUP · g + r`.
pub(crate) fn build_records(
    rows: usize,
    nb: usize,
    rec: usize,
    row_bytes: usize,
    raw: &[u8],
    mut fill: impl FnMut(&mut [u8], [&[u8]; GROUP], usize),
) -> AlignedBytes {
    let mut data = AlignedBytes::default();
    data.resize(rows / GROUP * nb * rec);
    let out = data.as_mut_slice();
    for g in 0..rows / GROUP {
        let group_rows: [&[u8]; GROUP] = std::array::from_fn(|r| {
            &raw[(g * GROUP + r) * row_bytes..(g * GROUP + r + 1) * row_bytes]
        });
        for b in 0..nb {
            let r0 = (g * nb + b) * rec;
            fill(&mut out[r0..r0 + rec], group_rows, b);
        }
    }
    data
}

impl PackedMatrix {
    /// Whether `dtype` with this many rows can be packed.
    pub fn supports(dtype: GgmlType, rows: usize) -> bool {
        record_bytes(dtype).is_some() && rows.is_multiple_of(GROUP)
    }

    /// Re-lays a GGUF matrix (`rows` × `cols`, raw blocks) into the packed layout.
    pub fn pack(dtype: GgmlType, rows: usize, cols: usize, raw: &[u8]) -> Option<Self> {
        let rec = record_bytes(dtype)?;
        if !rows.is_multiple_of(GROUP) || !cols.is_multiple_of(QK) {
            return None;
        }
        let nb = cols / QK;
        let row_bytes = dtype.row_bytes(cols);
        let data = build_records(rows, nb, rec, row_bytes, raw, |record, group_rows, b| {
            let mut quants = [[0u8; 32]; GROUP];
            for (r, qr) in quants.iter_mut().enumerate() {
                let row = group_rows[r];
                let (q, d, m) = unpack_block(dtype, row, b);
                *qr = q;
                record[2 * r..2 * r + 2].copy_from_slice(&d.to_le_bytes());
                if dtype == GgmlType::Q4_1 {
                    record[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&m.to_le_bytes());
                }
            }
            let qstart = if dtype == GgmlType::Q4_1 { 32 } else { 16 };
            match dtype {
                GgmlType::Q8_0 => {
                    // Vector j: byte 4r + t = row r, column 4j + t.
                    for j in 0..8 {
                        for (r, qr) in quants.iter().enumerate() {
                            for t in 0..4 {
                                record[qstart + 32 * j + 4 * r + t] = qr[4 * j + t];
                            }
                        }
                    }
                }
                _ => {
                    // Vector pair p: low nibble column 4p + t, high nibble column 4(p + 4) + t.
                    for p in 0..4 {
                        for (r, qr) in quants.iter().enumerate() {
                            for t in 0..4 {
                                let lo = qr[4 * p + t] & 0xF;
                                let hi = qr[4 * (p + 4) + t] & 0xF;
                                record[qstart + 32 * p + 4 * r + t] = lo | (hi << 4);
                            }
                        }
                    }
                    if dtype == GgmlType::Q5_0 {
                        // Bit j of byte 4r + t: fifth bit of row r, column 4j + t.
                        let hb = qstart + 128;
                        for (r, qr) in quants.iter().enumerate() {
                            for t in 0..4 {
                                let mut bits = 0u8;
                                for j in 0..8 {
                                    bits |= ((qr[4 * j + t] >> 4) & 1) << j;
                                }
                                record[hb + 4 * r + t] = bits;
                            }
                        }
                    }
                }
            }
        });
        Some(Self {
            dtype,
            rows,
            cols,
            data,
        })
    }

    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn record(&self) -> usize {
        record_bytes(self.dtype).unwrap_or(0)
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    pub fn offset(&self) -> i32 {
        quant_offset(self.dtype)
    }
}

/// Portable reference of one group × one activation row (used by tests and non-VNNI fallbacks).
pub fn group_dot_scalar(m: &PackedMatrix, g: usize, act: &[BlockQ8A], out: &mut [f32; GROUP]) {
    let rec = m.record();
    let nb = m.cols / QK;
    let off = m.offset();
    let bytes = m.bytes();
    *out = [0.0; GROUP];
    for (b, a) in act.iter().enumerate().take(nb) {
        let r = &bytes[(g * nb + b) * rec..(g * nb + b + 1) * rec];
        let qstart = if m.dtype == GgmlType::Q4_1 { 32 } else { 16 };
        for row in 0..GROUP {
            let d = f16::from_le_bytes([r[2 * row], r[2 * row + 1]]).to_f32();
            let min = if m.dtype == GgmlType::Q4_1 {
                f16::from_le_bytes([r[16 + 2 * row], r[17 + 2 * row]]).to_f32()
            } else {
                0.0
            };
            let mut dot = -off * a.sum;
            for k in 0..32 {
                let (j, t) = (k / 4, k % 4);
                let q = match m.dtype {
                    GgmlType::Q8_0 => r[qstart + 32 * j + 4 * row + t],
                    _ => {
                        let byte = r[qstart + 32 * (j % 4) + 4 * row + t];
                        let nib = if j < 4 { byte & 0xF } else { byte >> 4 };
                        let high = if m.dtype == GgmlType::Q5_0 {
                            ((r[qstart + 128 + 4 * row + t] >> j) & 1) << 4
                        } else {
                            0
                        };
                        nib | high
                    }
                };
                dot += q as i32 * a.qs[k] as i32;
            }
            out[row] += d * a.d * dot as f32 + min * a.s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod vnni {
    //! The AVX-512 VNNI kernel over packed groups: up to 4 activation rows share each unpacked block.
    use super::{BlockQ8A, PackedMatrix, GROUP};
    use crate::cpu::Avx512Vnni;
    use crate::quant::{GgmlType, QK};
    use std::arch::x86_64::*;

    /// Tokens that share one unpacked weight block.
    pub const TILE: usize = 4;
    /// The output tile the shared driver passes (room for the K-quant kernels' 8 tokens).
    type Out = [[f32; GROUP]; crate::matmul::MAX_TILE];

    const Q8_0: u8 = 0;
    const Q4_0: u8 = 1;
    const Q4_1: u8 = 2;
    const Q5_0: u8 = 3;

    /// Unpacks one record's quants into 8 vectors of unsigned bytes (vector j = columns 4j..4j+4).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn unpack<const F: u8>(q: *const u8, w: &mut [__m256i; 8]) {
        if F == Q8_0 {
            for (j, wj) in w.iter_mut().enumerate() {
                *wj = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
            }
            return;
        }
        let m4 = _mm256_set1_epi8(0x0F);
        for p in 0..4 {
            let v = _mm256_loadu_si256(q.add(32 * p) as *const __m256i);
            w[p] = _mm256_and_si256(v, m4);
            w[p + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        }
        if F == Q5_0 {
            let h = _mm256_loadu_si256(q.add(128) as *const __m256i);
            let bit4 = _mm256_set1_epi8(0x10);
            // Bit j of each byte moved to bit 4 of the byte.
            w[0] = _mm256_or_si256(w[0], _mm256_and_si256(_mm256_slli_epi16(h, 4), bit4));
            w[1] = _mm256_or_si256(w[1], _mm256_and_si256(_mm256_slli_epi16(h, 3), bit4));
            w[2] = _mm256_or_si256(w[2], _mm256_and_si256(_mm256_slli_epi16(h, 2), bit4));
            w[3] = _mm256_or_si256(w[3], _mm256_and_si256(_mm256_slli_epi16(h, 1), bit4));
            w[4] = _mm256_or_si256(w[4], _mm256_and_si256(h, bit4));
            w[5] = _mm256_or_si256(w[5], _mm256_and_si256(_mm256_srli_epi16(h, 1), bit4));
            w[6] = _mm256_or_si256(w[6], _mm256_and_si256(_mm256_srli_epi16(h, 2), bit4));
            w[7] = _mm256_or_si256(w[7], _mm256_and_si256(_mm256_srli_epi16(h, 3), bit4));
        }
    }

    /// One group × `N` activation rows, for weight format `F`: everything unrolled so the
    /// accumulators stay in registers.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const F: u8, const N: usize>(
        base: *const u8,
        rec: usize,
        nb: usize,
        off: i32,
        acts: &[&[BlockQ8A]],
        out: &mut Out,
    ) {
        let qstart = if F == Q4_1 { 32 } else { 16 };
        let a_ptr: [*const BlockQ8A; N] = std::array::from_fn(|t| acts[t].as_ptr());
        let mut acc = [_mm256_setzero_ps(); N];
        let mut w = [_mm256_setzero_si256(); 8];
        for b in 0..nb {
            let r = base.add(b * rec);
            // Prefetches may point past the matrix's end (the last records of the last group):
            // `wrapping_add` keeps that address arithmetic defined, and a prefetch never faults.
            let ahead = r.wrapping_add(4 * rec);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(128) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(192) as *const i8);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(r as *const __m128i));
            unpack::<F>(r.add(qstart), &mut w);
            for t in 0..N {
                let a = &*a_ptr[t].add(b);
                let aq = a.qs.as_ptr() as *const i32;
                let mut dot0 = _mm256_set1_epi32(-off * a.sum);
                let mut dot1 = _mm256_setzero_si256();
                for j in (0..8).step_by(2) {
                    dot0 = _mm256_dpbusd_epi32(
                        dot0,
                        w[j],
                        _mm256_set1_epi32(aq.add(j).read_unaligned()),
                    );
                    dot1 = _mm256_dpbusd_epi32(
                        dot1,
                        w[j + 1],
                        _mm256_set1_epi32(aq.add(j + 1).read_unaligned()),
                    );
                }
                let dot = _mm256_cvtepi32_ps(_mm256_add_epi32(dot0, dot1));
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(a.d)), dot, acc[t]);
                if F == Q4_1 {
                    let min = _mm256_cvtph_ps(_mm_loadu_si128(r.add(16) as *const __m128i));
                    acc[t] = _mm256_fmadd_ps(min, _mm256_set1_ps(a.s), acc[t]);
                }
            }
        }
        for t in 0..N {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    /// `out[t][8 rows]` for the `acts.len() ≤ TILE` activation rows `acts`, group `g` of `m`.
    ///
    /// Panics unless `g` is a group of `m`, `1 ≤ acts.len() ≤ TILE` and each of `acts` holds at least
    /// `m.cols() / 32` blocks (the kernel reads them through raw pointers).
    pub fn group_tile(
        _proof: Avx512Vnni,
        m: &PackedMatrix,
        g: usize,
        acts: &[&[BlockQ8A]],
        out: &mut Out,
    ) {
        let nb = m.cols / QK;
        assert!(g < m.rows / GROUP, "group_tile: group {g} out of range");
        assert!(
            (1..=TILE).contains(&acts.len()),
            "group_tile: {} activation rows (1..={TILE})",
            acts.len()
        );
        assert!(
            acts.iter().all(|a| a.len() >= nb),
            "group_tile: an activation row is shorter than {nb} blocks"
        );
        // SAFETY: the token proves the kernel's CPU features; `g` is a group of `m`, so its `nb`
        // records lie inside `m.bytes()` (a packed matrix holds exactly `rows / GROUP * nb` records,
        // and its fields are private); each activation row holds `nb` blocks (checked above).
        unsafe { group_tile_imp(m, g, acts, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn group_tile_imp(m: &PackedMatrix, g: usize, acts: &[&[BlockQ8A]], out: &mut Out) {
        let rec = m.record();
        let nb = m.cols / QK;
        let off = m.offset();
        let base = m.bytes().as_ptr().add(g * nb * rec);
        macro_rules! by_tokens {
            ($f:expr) => {
                match acts.len() {
                    1 => tile::<{ $f }, 1>(base, rec, nb, off, acts, out),
                    2 => tile::<{ $f }, 2>(base, rec, nb, off, acts, out),
                    3 => tile::<{ $f }, 3>(base, rec, nb, off, acts, out),
                    _ => tile::<{ $f }, 4>(base, rec, nb, off, acts, out),
                }
            };
        }
        match m.dtype {
            GgmlType::Q8_0 => by_tokens!(Q8_0),
            GgmlType::Q4_0 => by_tokens!(Q4_0),
            GgmlType::Q4_1 => by_tokens!(Q4_1),
            _ => by_tokens!(Q5_0),
        }
    }
}
