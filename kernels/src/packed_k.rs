//! Q4_K and Q6_K weights re-laid at load time in groups of 8 rows for AVX-512 VNNI GEMV/GEMM, the
//! K-quant counterpart of [`crate::packed`].
//!
//! One record per (group of 8 rows, super-block of 256 columns). Quants are unsigned bytes arranged
//! so that one 32-byte vector holds 4 consecutive columns of each of the 8 rows (two such vectors
//! share a 32-byte load as low and high nibbles); `vpdpbusd` with a broadcast of 4 activation bytes
//! advances 8 rows at once. Sub-block scales are kept per row as bytes and applied in 32-bit integers.
//! - Q4_K (1184 bytes, 8 × 144 + 32): d[8], dmin[8] (f16); scales and mins as [sub-block pair][row][2]
//!   (u8, unpacked from the 6-bit fields); nibbles: pair (c, q) for sub-block pair c = 0..4 and quad
//!   q = 0..8 holds columns 64c + 4q + t (low) and 64c + 32 + 4q + t (high).
//! - Q6_K (1680 bytes, exactly 8 × 210): d[8] (f16); scales as [group h < 8][row][h, h + 8] (i8); low nibbles:
//!   vector p = 0..32 holds quad p (low) and quad p + 32 (high); high bits: vector h = 0..16 holds
//!   bits 2s..2s+1 = the top two bits of quad 4h + s. Values are stored +32 (unsigned) and corrected
//!   with the activation's 16-element sums.
use crate::packed::build_records;
use crate::quant::{as_blocks, scale_min_k4, BlockQ4K, BlockQ6K, BlockQ8K, GgmlType, QK_K};
use crate::quantize::AlignedBytes;

/// Rows per packed group.
pub const GROUP: usize = 8;

/// A K-quant weight matrix in the packed layout. Its fields are private so that its shape always
/// matches its data (the VNNI kernels read records through raw pointers).
pub struct PackedKMatrix {
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    data: AlignedBytes,
}

pub fn record_bytes(dtype: GgmlType) -> Option<usize> {
    match dtype {
        GgmlType::Q4K => Some(1184),
        GgmlType::Q6K => Some(1680),
        _ => None,
    }
}

/// The 256 quants of one Q4_K super-block (0..15) and its 8 scales and mins.
fn q4k_values(b: &BlockQ4K) -> ([u8; QK_K], [u8; 8], [u8; 8]) {
    let mut q = [0u8; QK_K];
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], mn[j]) = scale_min_k4(j, &b.scales);
    }
    for c in 0..4 {
        for l in 0..32 {
            q[64 * c + l] = b.qs[32 * c + l] & 0xF;
            q[64 * c + 32 + l] = b.qs[32 * c + l] >> 4;
        }
    }
    (q, sc, mn)
}

/// The 256 quants of one Q6_K super-block as unsigned 0..63 (value + 32).
fn q6k_values(b: &BlockQ6K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for half in 0..2 {
        let ql = &b.ql[64 * half..];
        let qh = &b.qh[32 * half..];
        let y = &mut q[128 * half..];
        for l in 0..32 {
            y[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
            y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    q
}

impl PackedKMatrix {
    pub fn supports(dtype: GgmlType, rows: usize) -> bool {
        record_bytes(dtype).is_some() && rows.is_multiple_of(GROUP)
    }

    pub fn pack(dtype: GgmlType, rows: usize, cols: usize, raw: &[u8]) -> Option<Self> {
        let rec = record_bytes(dtype)?;
        if !rows.is_multiple_of(GROUP) || !cols.is_multiple_of(QK_K) {
            return None;
        }
        let nb = cols / QK_K;
        let row_bytes = dtype.row_bytes(cols);
        let data = build_records(rows, nb, rec, row_bytes, raw, |record, group_rows, b| {
            let mut quants = [[0u8; QK_K]; GROUP];
            for (r, qr) in quants.iter_mut().enumerate() {
                let row = group_rows[r];
                match dtype {
                    GgmlType::Q4K => {
                        let blk = &as_blocks::<BlockQ4K>(row)[b];
                        let (q, sc, mn) = q4k_values(blk);
                        *qr = q;
                        record[2 * r..2 * r + 2].copy_from_slice(&blk.d.to_le_bytes());
                        record[16 + 2 * r..18 + 2 * r].copy_from_slice(&blk.dmin.to_le_bytes());
                        for j in 0..8 {
                            record[32 + 16 * (j / 2) + 2 * r + j % 2] = sc[j];
                            record[96 + 16 * (j / 2) + 2 * r + j % 2] = mn[j];
                        }
                    }
                    _ => {
                        let blk = &as_blocks::<BlockQ6K>(row)[b];
                        *qr = q6k_values(blk);
                        record[2 * r..2 * r + 2].copy_from_slice(&blk.d.to_le_bytes());
                        for g16 in 0..16 {
                            record[16 + 16 * (g16 % 8) + 2 * r + g16 / 8] = blk.scales[g16] as u8;
                        }
                    }
                }
            }
            match dtype {
                GgmlType::Q4K => {
                    for c in 0..4 {
                        for q in 0..8 {
                            let v = 160 + (8 * c + q) * 32;
                            for (r, qr) in quants.iter().enumerate() {
                                for t in 0..4 {
                                    let lo = qr[64 * c + 4 * q + t];
                                    let hi = qr[64 * c + 32 + 4 * q + t];
                                    record[v + 4 * r + t] = lo | (hi << 4);
                                }
                            }
                        }
                    }
                }
                _ => {
                    for p in 0..32 {
                        for (r, qr) in quants.iter().enumerate() {
                            for t in 0..4 {
                                let lo = qr[4 * p + t] & 0xF;
                                let hi = qr[4 * (p + 32) + t] & 0xF;
                                record[144 + 32 * p + 4 * r + t] = lo | (hi << 4);
                            }
                        }
                    }
                    for h in 0..16 {
                        for (r, qr) in quants.iter().enumerate() {
                            for t in 0..4 {
                                let mut bits = 0u8;
                                for s in 0..4 {
                                    bits |= (qr[16 * h + 4 * s + t] >> 4) << (2 * s);
                                }
                                record[1168 + 32 * h + 4 * r + t] = bits;
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
}

/// Re-orders each Q8_K block's quants for the packed Q4_K kernel: for sub-block pair c and quad q,
/// the 4 quants of the low sub-block then the 4 of the high one (sums are unchanged).
pub fn pair_q4k_activations(blocks: &mut [BlockQ8K]) {
    for blk in blocks {
        let src = blk.qs;
        for c in 0..4 {
            for q in 0..8 {
                let dst = 64 * c + 8 * q;
                blk.qs[dst..dst + 4].copy_from_slice(&src[64 * c + 4 * q..64 * c + 4 * q + 4]);
                blk.qs[dst + 4..dst + 8]
                    .copy_from_slice(&src[64 * c + 32 + 4 * q..64 * c + 32 + 4 * q + 4]);
            }
        }
    }
}

/// Re-orders each Q8_K block's quants for the packed Q6_K kernel: for group h < 8 and quad s, the 4
/// quants of group h then the 4 of group h + 8 (sums are unchanged).
pub fn pair_q6k_activations(blocks: &mut [BlockQ8K]) {
    for blk in blocks {
        let src = blk.qs;
        for h in 0..8 {
            for s in 0..4 {
                let dst = 32 * h + 8 * s;
                blk.qs[dst..dst + 4].copy_from_slice(&src[16 * h + 4 * s..16 * h + 4 * s + 4]);
                blk.qs[dst + 4..dst + 8]
                    .copy_from_slice(&src[16 * (h + 8) + 4 * s..16 * (h + 8) + 4 * s + 4]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod vnni {
    //! AVX-512 VNNI kernels over packed K-quant groups; up to `TILE` activation rows per pass.
    use super::{BlockQ8K, PackedKMatrix, GROUP};
    use crate::cpu::Avx512Vnni;
    use crate::quant::{GgmlType, QK_K};
    use std::arch::x86_64::*;

    pub const TILE: usize = crate::matmul::MAX_TILE;

    /// Q4_K on 512-bit vectors: lane 2r holds row r's quad of the low sub-block of a pair, lane 2r + 1
    /// the same quad of the high sub-block, so one `vpdpbusd` covers both; the activations must be
    /// arranged by [`pair_q4k_activations`] (8 bytes per quad: low sub-block, then high).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile_q4k<const N: usize>(
        base: *const u8,
        nb: usize,
        acts: &[&[BlockQ8K]],
        out: &mut [[f32; GROUP]; TILE],
    ) {
        let rec = 1184;
        let a_ptr: [*const BlockQ8K; N] = std::array::from_fn(|t| acts[t].as_ptr());
        let mut acc = [_mm256_setzero_ps(); N];
        let m_lo = _mm512_set1_epi64(0x0000_0000_0F0F_0F0F);
        let m_hi = _mm512_set1_epi64(0x0F0F_0F0F_0000_0000);
        for b in 0..nb {
            let r = base.add(b * rec);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(r as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(r.add(16) as *const __m128i));
            let mut sumi = [_mm512_setzero_si512(); N];
            let mins: [__m256i; 4] = std::array::from_fn(|p| {
                _mm256_cvtepu8_epi16(_mm_loadu_si128(r.add(96 + 16 * p) as *const __m128i))
            });
            for c in 0..4 {
                let mut w = [_mm512_setzero_si512(); 8];
                for (q, wq) in w.iter_mut().enumerate() {
                    let v = _mm256_loadu_si256(r.add(160 + (8 * c + q) * 32) as *const __m256i);
                    let x = _mm512_cvtepu32_epi64(v);
                    *wq = _mm512_or_si512(
                        _mm512_and_si512(x, m_lo),
                        _mm512_and_si512(_mm512_slli_epi64(x, 28), m_hi),
                    );
                }
                let sc =
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(r.add(32 + 16 * c) as *const __m128i));
                for t in 0..N {
                    let aq = (*a_ptr[t].add(b)).qs.as_ptr().add(64 * c) as *const i64;
                    let (mut d0, mut d1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    for q in (0..8).step_by(2) {
                        d0 = _mm512_dpbusd_epi32(
                            d0,
                            w[q],
                            _mm512_set1_epi64(aq.add(q).read_unaligned()),
                        );
                        d1 = _mm512_dpbusd_epi32(
                            d1,
                            w[q + 1],
                            _mm512_set1_epi64(aq.add(q + 1).read_unaligned()),
                        );
                    }
                    sumi[t] =
                        _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(_mm512_add_epi32(d0, d1), sc));
                }
            }
            for t in 0..N {
                let a = &*a_ptr[t].add(b);
                // Row r's two sub-block sums sit in lanes 2r and 2r + 1.
                let pair = _mm512_add_epi32(sumi[t], _mm512_srli_epi64(sumi[t], 32));
                let rows = _mm512_cvtepi64_epi32(pair);
                // Σ_j min_j · (sum of the sub-block's activation quants), two sub-blocks per vpmaddwd.
                let mut summ = _mm256_setzero_si256();
                for (p, mp) in mins.iter().enumerate() {
                    let s0 = (a.bsums[4 * p] as i32 + a.bsums[4 * p + 1] as i32) as u16 as u32;
                    let s1 = (a.bsums[4 * p + 2] as i32 + a.bsums[4 * p + 3] as i32) as u16 as u32;
                    summ = _mm256_add_epi32(
                        summ,
                        _mm256_madd_epi16(*mp, _mm256_set1_epi32((s0 | (s1 << 16)) as i32)),
                    );
                }
                let ad = _mm256_set1_ps(a.d);
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, ad), _mm256_cvtepi32_ps(rows), acc[t]);
                acc[t] =
                    _mm256_fnmadd_ps(_mm256_mul_ps(dmin, ad), _mm256_cvtepi32_ps(summ), acc[t]);
            }
        }
        for t in 0..N {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    /// Q6_K on 512-bit vectors: lane 2r holds row r's quad of 16-column group h, lane 2r + 1 the same
    /// quad of group h + 8 (which share a nibble vector); activations arranged by
    /// [`pair_q6k_activations`].
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile_q6k<const N: usize>(
        base: *const u8,
        nb: usize,
        acts: &[&[BlockQ8K]],
        out: &mut [[f32; GROUP]; TILE],
    ) {
        let rec = 1680;
        let a_ptr: [*const BlockQ8K; N] = std::array::from_fn(|t| acts[t].as_ptr());
        let mut acc = [_mm256_setzero_ps(); N];
        let m_lo = _mm512_set1_epi64(0x0000_0000_0F0F_0F0F);
        let m_hi = _mm512_set1_epi64(0x0F0F_0F0F_0000_0000);
        let m30 = _mm512_set1_epi8(0x30);
        for b in 0..nb {
            let r = base.add(b * rec);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(r as *const __m128i));
            let mut sumf = [_mm512_setzero_ps(); N];
            for h in 0..8 {
                let hia = _mm512_cvtepu32_epi64(_mm256_loadu_si256(
                    r.add(1168 + 32 * h) as *const __m256i
                ));
                let hib = _mm512_cvtepu32_epi64(_mm256_loadu_si256(
                    r.add(1168 + 32 * (h + 8)) as *const __m256i
                ));
                let th = _mm512_or_si512(hia, _mm512_slli_epi64(hib, 32));
                let top = [
                    _mm512_and_si512(_mm512_slli_epi16(th, 4), m30),
                    _mm512_and_si512(_mm512_slli_epi16(th, 2), m30),
                    _mm512_and_si512(th, m30),
                    _mm512_and_si512(_mm512_srli_epi16(th, 2), m30),
                ];
                let mut w = [_mm512_setzero_si512(); 4];
                for (s, ws) in w.iter_mut().enumerate() {
                    let v = _mm256_loadu_si256(r.add(144 + 32 * (4 * h + s)) as *const __m256i);
                    let x = _mm512_cvtepu32_epi64(v);
                    let nib = _mm512_or_si512(
                        _mm512_and_si512(x, m_lo),
                        _mm512_and_si512(_mm512_slli_epi64(x, 28), m_hi),
                    );
                    *ws = _mm512_or_si512(nib, top[s]);
                }
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                    r.add(16 + 16 * h) as *const __m128i,
                )));
                for t in 0..N {
                    let a = &*a_ptr[t].add(b);
                    let aq = a.qs.as_ptr().add(32 * h) as *const i64;
                    let off_a = (-32 * a.bsums[h] as i32) as u32 as u64;
                    let off_b = (-32 * a.bsums[h + 8] as i32) as u32 as u64;
                    let mut dot = _mm512_set1_epi64((off_a | (off_b << 32)) as i64);
                    for (s, ws) in w.iter().enumerate() {
                        dot = _mm512_dpbusd_epi32(
                            dot,
                            *ws,
                            _mm512_set1_epi64(aq.add(s).read_unaligned()),
                        );
                    }
                    sumf[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, sumf[t]);
                }
            }
            for t in 0..N {
                // Row r's two groups sit in lanes 2r and 2r + 1.
                let bits = _mm512_castps_si512(sumf[t]);
                let pair = _mm512_add_ps(sumf[t], _mm512_castsi512_ps(_mm512_srli_epi64(bits, 32)));
                let rows = _mm256_castsi256_ps(_mm512_cvtepi64_epi32(_mm512_castps_si512(pair)));
                let ad = _mm256_set1_ps((*a_ptr[t].add(b)).d);
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, ad), rows, acc[t]);
            }
        }
        for t in 0..N {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    /// `out[t][8 rows]` for the `acts.len() ≤ TILE` activation rows `acts` (Q8_K blocks arranged by
    /// [`super::pair_q4k_activations`] or [`super::pair_q6k_activations`]), group `g` of `m`.
    ///
    /// Panics unless `g` is a group of `m`, `1 ≤ acts.len() ≤ TILE` and each of `acts` holds at least
    /// `m.cols() / 256` blocks (the kernels read them through raw pointers).
    pub fn group_tile(
        _proof: Avx512Vnni,
        m: &PackedKMatrix,
        g: usize,
        acts: &[&[BlockQ8K]],
        out: &mut [[f32; GROUP]; TILE],
    ) {
        let nb = m.cols / QK_K;
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
        // SAFETY: the token proves the kernels' CPU features; `g` is a group of `m`, so its `nb`
        // records lie inside `m.bytes()` (a packed matrix holds exactly `rows / GROUP * nb` records,
        // and its fields are private); each activation row holds `nb` blocks (checked above).
        unsafe { group_tile_imp(m, g, acts, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn group_tile_imp(
        m: &PackedKMatrix,
        g: usize,
        acts: &[&[BlockQ8K]],
        out: &mut [[f32; GROUP]; TILE],
    ) {
        let nb = m.cols / QK_K;
        let base = m.bytes().as_ptr().add(g * nb * m.record());
        macro_rules! by_tokens {
            ($f:ident) => {
                match acts.len() {
                    1 => $f::<1>(base, nb, acts, out),
                    2 => $f::<2>(base, nb, acts, out),
                    3 => $f::<3>(base, nb, acts, out),
                    4 => $f::<4>(base, nb, acts, out),
                    5 => $f::<5>(base, nb, acts, out),
                    6 => $f::<6>(base, nb, acts, out),
                    7 => $f::<7>(base, nb, acts, out),
                    _ => $f::<8>(base, nb, acts, out),
                }
            };
        }
        match m.dtype {
            GgmlType::Q4K => by_tokens!(tile_q4k),
            _ => by_tokens!(tile_q6k),
        }
    }
}
