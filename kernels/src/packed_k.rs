//! Q4_K and Q6_K weights re-laid at load time in groups of 8 rows for AVX-512 VNNI GEMV/GEMM, the
//! K-quant counterpart of [`crate::packed`].
//!
//! One record per (group of 8 rows, super-block of 256 columns). Quants are unsigned bytes arranged
//! so that one 32-byte vector holds 4 consecutive columns of each of the 8 rows (two such vectors
//! share a 32-byte load as low and high nibbles); `vpdpbusd` with a broadcast of 4 activation bytes
//! advances 8 rows at once. Sub-block scales are kept per row as bytes and applied in 32-bit integers.
//! - Q4_K (1184 bytes, 8 × 144 + 32): d[8], dmin[8] (f16); scales[8 sub-blocks][8 rows], mins[8][8]
//!   (u8, unpacked from the 6-bit fields; mins as [sub-block pair][row][2] for `vpmaddwd`); nibbles: pair (c, q) for sub-block pair c = 0..4 and quad
//!   q = 0..8 holds columns 64c + 4q + t (low) and 64c + 32 + 4q + t (high).
//! - Q6_K (1680 bytes, exactly 8 × 210): d[8] (f16); scales[16 groups][8 rows] (i8); low nibbles:
//!   vector p = 0..32 holds quad p (low) and quad p + 32 (high); high bits: vector h = 0..16 holds
//!   bits 2s..2s+1 = the top two bits of quad 4h + s. Values are stored +32 (unsigned) and corrected
//!   with the activation's 16-element sums.
use crate::quant::{as_blocks, scale_min_k4, BlockQ4K, BlockQ6K, BlockQ8K, GgmlType, QK_K};
use crate::quantize::AlignedBytes;

/// Rows per packed group.
pub const GROUP: usize = 8;

pub struct PackedKMatrix {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
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
        let mut data = AlignedBytes::default();
        data.resize(rows / GROUP * nb * rec);
        let out = data.as_mut_slice();
        for g in 0..rows / GROUP {
            for b in 0..nb {
                let r0 = (g * nb + b) * rec;
                let record = &mut out[r0..r0 + rec];
                let mut quants = [[0u8; QK_K]; GROUP];
                for (r, qr) in quants.iter_mut().enumerate() {
                    let row = &raw[(g * GROUP + r) * row_bytes..(g * GROUP + r + 1) * row_bytes];
                    match dtype {
                        GgmlType::Q4K => {
                            let blk = &as_blocks::<BlockQ4K>(row)[b];
                            let (q, sc, mn) = q4k_values(blk);
                            *qr = q;
                            record[2 * r..2 * r + 2].copy_from_slice(&blk.d.to_le_bytes());
                            record[16 + 2 * r..18 + 2 * r].copy_from_slice(&blk.dmin.to_le_bytes());
                            for j in 0..8 {
                                record[32 + 8 * j + r] = sc[j];
                                record[96 + 16 * (j / 2) + 2 * r + j % 2] = mn[j];
                            }
                        }
                        _ => {
                            let blk = &as_blocks::<BlockQ6K>(row)[b];
                            *qr = q6k_values(blk);
                            record[2 * r..2 * r + 2].copy_from_slice(&blk.d.to_le_bytes());
                            for g16 in 0..16 {
                                record[16 + 8 * g16 + r] = blk.scales[g16] as u8;
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
            }
        }
        Some(Self {
            dtype,
            rows,
            cols,
            data,
        })
    }

    pub fn record(&self) -> usize {
        record_bytes(self.dtype).unwrap_or(0)
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }
}

#[cfg(target_arch = "x86_64")]
pub mod vnni {
    //! AVX-512 VNNI kernels over packed K-quant groups; up to `TILE` activation rows per pass.
    use super::{BlockQ8K, PackedKMatrix, GROUP};
    use crate::quant::{GgmlType, QK_K};
    use std::arch::x86_64::*;

    pub const TILE: usize = crate::matmul::MAX_TILE;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn bcast(p: *const i8) -> __m256i {
        _mm256_set1_epi32((p as *const i32).read_unaligned())
    }

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
        let m4 = _mm256_set1_epi8(0x0F);
        for b in 0..nb {
            let r = base.add(b * rec);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(r as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(r.add(16) as *const __m128i));
            let mut sumi = [_mm256_setzero_si256(); N];
            let mins: [__m256i; 4] = std::array::from_fn(|p| {
                _mm256_cvtepu8_epi16(_mm_loadu_si128(r.add(96 + 16 * p) as *const __m128i))
            });
            for c in 0..4 {
                let mut lo = [_mm256_setzero_si256(); 8];
                let mut hi = [_mm256_setzero_si256(); 8];
                for q in 0..8 {
                    let v = _mm256_loadu_si256(r.add(160 + (8 * c + q) * 32) as *const __m256i);
                    lo[q] = _mm256_and_si256(v, m4);
                    hi[q] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                }
                let sc_lo =
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(r.add(32 + 16 * c) as *const __m128i));
                let sc_hi =
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(r.add(40 + 16 * c) as *const __m128i));
                for t in 0..N {
                    let a = &*a_ptr[t].add(b);
                    let aq = a.qs.as_ptr().add(64 * c);
                    let (mut d0, mut d1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                    let (mut e0, mut e1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                    for q in (0..8).step_by(2) {
                        d0 = _mm256_dpbusd_epi32(d0, lo[q], bcast(aq.add(4 * q)));
                        d1 = _mm256_dpbusd_epi32(d1, lo[q + 1], bcast(aq.add(4 * q + 4)));
                        e0 = _mm256_dpbusd_epi32(e0, hi[q], bcast(aq.add(32 + 4 * q)));
                        e1 = _mm256_dpbusd_epi32(e1, hi[q + 1], bcast(aq.add(32 + 4 * q + 4)));
                    }
                    let dl = _mm256_add_epi32(d0, d1);
                    let dh = _mm256_add_epi32(e0, e1);
                    sumi[t] = _mm256_add_epi32(
                        sumi[t],
                        _mm256_add_epi32(
                            _mm256_mullo_epi32(dl, sc_lo),
                            _mm256_mullo_epi32(dh, sc_hi),
                        ),
                    );
                }
            }
            for t in 0..N {
                let a = &*a_ptr[t].add(b);
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
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, ad), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
                acc[t] =
                    _mm256_fnmadd_ps(_mm256_mul_ps(dmin, ad), _mm256_cvtepi32_ps(summ), acc[t]);
            }
        }
        for t in 0..N {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

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
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        for b in 0..nb {
            let r = base.add(b * rec);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(r as *const __m128i));
            let mut sumf = [_mm256_setzero_ps(); N];
            for h in 0..8 {
                let hia = _mm256_loadu_si256(r.add(1168 + 32 * h) as *const __m256i);
                let hib = _mm256_loadu_si256(r.add(1168 + 32 * (h + 8)) as *const __m256i);
                let top = |hv: __m256i, s: usize| -> __m256i {
                    match s {
                        0 => _mm256_and_si256(_mm256_slli_epi16(hv, 4), m30),
                        1 => _mm256_and_si256(_mm256_slli_epi16(hv, 2), m30),
                        2 => _mm256_and_si256(hv, m30),
                        _ => _mm256_and_si256(_mm256_srli_epi16(hv, 2), m30),
                    }
                };
                let mut wa = [_mm256_setzero_si256(); 4];
                let mut wb = [_mm256_setzero_si256(); 4];
                for s in 0..4 {
                    let v = _mm256_loadu_si256(r.add(144 + 32 * (4 * h + s)) as *const __m256i);
                    wa[s] = _mm256_or_si256(_mm256_and_si256(v, m4), top(hia, s));
                    wb[s] =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), top(hib, s));
                }
                let scale = |g: usize| {
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        r.add(16 + 8 * g) as *const __m128i
                    )))
                };
                let (sca, scb) = (scale(h), scale(h + 8));
                for t in 0..N {
                    let a = &*a_ptr[t].add(b);
                    let qa = a.qs.as_ptr().add(16 * h);
                    let qb = a.qs.as_ptr().add(16 * (h + 8));
                    let mut da = _mm256_set1_epi32(-32 * a.bsums[h] as i32);
                    let mut db = _mm256_set1_epi32(-32 * a.bsums[h + 8] as i32);
                    for s in 0..4 {
                        da = _mm256_dpbusd_epi32(da, wa[s], bcast(qa.add(4 * s)));
                        db = _mm256_dpbusd_epi32(db, wb[s], bcast(qb.add(4 * s)));
                    }
                    sumf[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(da), sca, sumf[t]);
                    sumf[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(db), scb, sumf[t]);
                }
            }
            for t in 0..N {
                let ad = _mm256_set1_ps((*a_ptr[t].add(b)).d);
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, ad), sumf[t], acc[t]);
            }
        }
        for t in 0..N {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    /// `out[t][8 rows]` for up to `TILE` activation rows (Q8_K blocks), group `g`.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI; each of `acts` must hold
    /// `m.cols / 256` blocks and `g` must be a group of `m`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn group_tile(
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
            _ => {
                // Q6_K keeps more vectors live per token: at most 4 tokens per pass.
                let mut part = [[0f32; GROUP]; TILE];
                for (i, chunk) in acts.chunks(4).enumerate() {
                    match chunk.len() {
                        1 => tile_q6k::<1>(base, nb, chunk, &mut part),
                        2 => tile_q6k::<2>(base, nb, chunk, &mut part),
                        3 => tile_q6k::<3>(base, nb, chunk, &mut part),
                        _ => tile_q6k::<4>(base, nb, chunk, &mut part),
                    }
                    out[4 * i..4 * i + chunk.len()].copy_from_slice(&part[..chunk.len()]);
                }
            }
        }
    }
}
