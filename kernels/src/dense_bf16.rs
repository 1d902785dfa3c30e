//! bf16 weights for the dense GEMM: a linear layer whose weight is kept in bfloat16 (half the bytes of
//! f32, so decode, which streams the weights, runs about twice as fast) and whose input rows are rounded
//! to bfloat16 once per call, as PyTorch computes a bf16 model. Products of the bf16 pairs are summed in
//! f32: with AVX512-BF16 by `vdpbf16ps` (two multiply-adds per lane and instruction), elsewhere by
//! widening both sides to f32.
//!
//! The weight is re-laid as panels of [`NR`] output columns, each panel a run of `k`-pairs: one `u32`
//! holds `W[col][2q]` (low half) and `W[col][2q + 1]` (high half), the pairing `vdpbf16ps` multiplies.
use crate::dense::{dispatch, level, madd, split_wide, Level, MR, NR};

/// `k`-pairs per pass over a panel: a `KC2 × NR` slice (64 KiB) stays in L2 across the row tiles,
/// and a tile runs 16 × KC2 `vdpbf16ps` between loading and storing its outputs. Measured with
/// `prefill_layers_speed_bf16` on Zen 4: 512 ≥ 256 ≥ 128 by 1-2% each, 64 4% slower.
const KC2: usize = 512;

/// `f32` to bfloat16 bits, rounded to nearest even (as PyTorch's `.to(torch.bfloat16)`).
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// bfloat16 bits to `f32` (exact).
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A linear layer `y = x Wᵀ + b` with `W` in bfloat16 (see the module's text for the layout).
pub struct PackedBf16 {
    k: usize,
    n: usize,
    /// `k.div_ceil(2)`: pairs per column (an odd `k` is padded with a zero).
    pairs: usize,
    panels: Vec<u32>,
    /// `n` rounded up to whole panels, zero past `n`.
    bias: Vec<f32>,
}

impl PackedBf16 {
    /// `weight`: the PyTorch `[n, k]` (out × in) matrix as bfloat16 bits, row-major; `bias`: `n`
    /// values. Returns `None` when the lengths do not match.
    pub fn new(weight: &[u16], bias: &[f32], n: usize, k: usize) -> Option<Self> {
        if weight.len() != n.checked_mul(k)? || bias.len() != n || n == 0 || k == 0 {
            return None;
        }
        let pairs = k.div_ceil(2);
        let np = n.div_ceil(NR);
        let mut panels = vec![0u32; np * pairs * NR];
        for col in 0..n {
            let (p, j) = (col / NR, col % NR);
            let row = &weight[col * k..(col + 1) * k];
            let panel = &mut panels[p * pairs * NR..(p + 1) * pairs * NR];
            for (q, two) in row.chunks(2).enumerate() {
                let lo = two[0] as u32;
                let hi = two.get(1).copied().unwrap_or(0) as u32;
                panel[q * NR + j] = lo | (hi << 16);
            }
        }
        let mut b = vec![0f32; np * NR];
        b[..n].copy_from_slice(bias);
        Some(Self {
            k,
            n,
            pairs,
            panels,
            bias: b,
        })
    }

    /// As [`Self::new`] from an f32 weight, each value rounded to bfloat16.
    pub fn from_f32(weight: &[f32], bias: &[f32], n: usize, k: usize) -> Option<Self> {
        let bits: Vec<u16> = weight.iter().map(|&w| bf16_bits(w)).collect();
        Self::new(&bits, bias, n, k)
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Row `j` of the weight (`W[j][..]`, `k` values, widened to f32) into `out`: an embedding lookup
    /// in a matrix that is also the output head.
    pub fn weight_row(&self, j: usize, out: &mut [f32]) {
        assert!(
            j < self.n && out.len() >= self.k,
            "weight_row: index or output size"
        );
        let (p, c) = (j / NR, j % NR);
        let panel = &self.panels[p * self.pairs * NR..(p + 1) * self.pairs * NR];
        for (kk, o) in out[..self.k].iter_mut().enumerate() {
            let pair = panel[(kk / 2) * NR + c];
            *o = bf16_to_f32((pair >> (16 * (kk % 2))) as u16);
        }
    }
}

/// Rows of `k` f32 values as rows of `k.div_ceil(2)` bfloat16 pairs (rounded to nearest even) in
/// `out` (resized to fit).
fn to_pairs_into(x: &[f32], k: usize, kern: Kernel, out: &mut Vec<u32>) {
    let pairs = k.div_ceil(2);
    out.clear();
    out.resize(x.len() / k * pairs, 0);
    for (row, dst) in x.chunks_exact(k).zip(out.chunks_exact_mut(pairs)) {
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if kern == Kernel::Dpbf16 {
            // SAFETY: `Kernel::Dpbf16` comes only from `kernel_kind()`, which detected AVX-512F and
            // AVX512-BF16.
            done = unsafe { pairs_dpbf16(row, dst) };
        }
        let _ = kern;
        for (q, d) in dst.iter_mut().enumerate().skip(done / 2) {
            let lo = bf16_bits(row[2 * q]) as u32;
            let hi = row.get(2 * q + 1).map_or(0, |&v| bf16_bits(v)) as u32;
            *d = lo | (hi << 16);
        }
    }
}

/// The leading whole 32-value chunks of `row` as pairs into `dst` (`vcvtne2ps2bf16`, round to
/// nearest even); returns how many values it converted.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pairs_dpbf16(row: &[f32], dst: &mut [u32]) -> usize {
    use std::arch::x86_64::*;
    let chunks = row.len() / 32;
    assert!(dst.len() * 2 >= chunks * 32);
    for c in 0..chunks {
        let lo = _mm512_loadu_ps(row.as_ptr().add(32 * c));
        let hi = _mm512_loadu_ps(row.as_ptr().add(32 * c + 16));
        // Words 0..16 from `lo`, 16..32 from `hi`: values 2q and 2q + 1 share pair q.
        let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.as_mut_ptr().add(16 * c).cast(), packed);
    }
    chunks * 32
}

/// `out[rows, n] = bf16(x)[rows, k] · Wᵀ + b` with `rows = x.len() / k`, split over the pool as
/// [`crate::dense::linear_wide`] splits it.
pub fn linear_bf16(x: &[f32], w: &PackedBf16, out: &mut [f32]) {
    let k = w.k;
    let rows = x.len() / k;
    assert!(rows * k == x.len(), "linear_bf16: input size");
    let kern = kernel_kind();
    let pairs = w.pairs;
    let mut run = |a: &mut Vec<u32>| {
        to_pairs_into(x, k, kern, a);
        split_wide(rows, w.n, out, &|r0, mb, panels, c, ldc| {
            gemm_panels(
                &a[r0 * pairs..(r0 + mb) * pairs],
                mb,
                w,
                panels,
                c,
                ldc,
                kern,
            )
        });
    };
    // The rounded input is kept per thread and reused: a step's inputs change size from call to
    // call, and a fresh buffer each time leaves the allocator's heap fragmented. A nested call on
    // the same thread (none today) gets a buffer of its own.
    PAIRS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut a) => run(&mut a),
        Err(_) => run(&mut Vec::new()),
    });
}

thread_local! {
    /// [`linear_bf16`]'s rounded input, reused across calls.
    static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// `vdpbf16ps` (AVX512-BF16).
    Dpbf16,
    /// Widened to f32 on whatever [`level`] allows.
    Widen(Level),
}

/// Whether this CPU multiplies bfloat16 natively (AVX512-BF16, within the `INHAUS_SIMD` cap): then a
/// bf16 checkpoint runs fastest as bf16, elsewhere as f32.
pub fn native_bf16() -> bool {
    kernel_kind() == Kernel::Dpbf16
}

fn kernel_kind() -> Kernel {
    let lvl = level();
    #[cfg(target_arch = "x86_64")]
    if lvl == Level::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16") {
        return Kernel::Dpbf16;
    }
    Kernel::Widen(lvl)
}

/// `c[mb, cols] = a[mb, pairs] · Wᵀ + b` over the output columns of `panels` (`c`'s column 0 is the
/// first panel's first column; its row stride is `ldc`).
///
/// The rows are packed once (see below); then each panel runs its [`KC2`]-pair chunks in turn over
/// all row tiles, so a chunk's weight slice is read from memory once and then from L2 by every tile,
/// and the panel's output tiles stay in L1 from one chunk to the next.
fn gemm_panels(
    a: &[u32],
    mb: usize,
    w: &PackedBf16,
    panels: std::ops::Range<usize>,
    c: &mut [f32],
    ldc: usize,
    kern: Kernel,
) {
    let (pairs, n) = (w.pairs, w.n);
    let col0 = panels.start * NR;
    let tiles = mb.div_ceil(MR);
    // `a` re-laid chunk by chunk, each chunk tile by tile as `[q][MR rows]`, so that a step of the
    // micro-kernel reads its rows' pairs from one half cache line (rows past `mb` repeat the last).
    // Chunk `q0`'s tile `t` starts at `q0 * tiles * MR + t * kc * MR`. One row (decode) is read in
    // place.
    let mut packed = Vec::new();
    if mb > 1 {
        packed = vec![0u32; tiles * MR * pairs];
        for q0 in (0..pairs).step_by(KC2) {
            let kc = KC2.min(pairs - q0);
            for t in 0..tiles {
                let base = q0 * tiles * MR + t * kc * MR;
                let tile = &mut packed[base..base + kc * MR];
                let src: [&[u32]; MR] = std::array::from_fn(|r| {
                    let row = (t * MR + r).min(mb - 1);
                    &a[row * pairs + q0..row * pairs + q0 + kc]
                });
                for (q, dst) in tile.chunks_exact_mut(MR).enumerate() {
                    for (d, s) in dst.iter_mut().zip(&src) {
                        *d = s[q];
                    }
                }
            }
        }
    }
    for p in panels.clone() {
        let ncols = NR.min(n - p * NR);
        for q0 in (0..pairs).step_by(KC2) {
            let kc = KC2.min(pairs - q0);
            let at = (p * pairs + q0) * NR;
            let b = &w.panels[at..at + kc * NR];
            // The weights stored next (the next chunk's, or the next panel's first), fetched into
            // the cache while the last tile runs on this chunk.
            let next = w.panels.get(at + kc * NR..at + 2 * kc * NR).unwrap_or(b);
            let bias = (q0 == 0).then(|| &w.bias[p * NR..(p + 1) * NR]);
            for t in 0..tiles {
                let r = t * MR;
                let (a, step) = if mb == 1 {
                    (&a[q0..q0 + kc], 1)
                } else {
                    let base = q0 * tiles * MR + t * kc * MR;
                    (&packed[base..base + kc * MR], MR)
                };
                let tile = Tile {
                    a,
                    step,
                    b,
                    prefetch: if t + 1 == tiles { next } else { b },
                    kc,
                    mr: MR.min(mb - r),
                    ncols,
                    bias,
                };
                tile.run(&mut c[r * ldc + p * NR - col0..], ldc, kern);
            }
        }
    }
}

/// One micro-tile: `c[mr, ncols] (+)= a[mr, kc] · b[kc, NR]` over `kc` pairs (row `r` of step `q`
/// at `a[q * step + r]`: `step` is `MR` for a packed tile, 1 for a single row; `b` is `kc × NR`
/// pairs), starting from the bias (when given) instead of `c`.
struct Tile<'a> {
    a: &'a [u32],
    step: usize,
    b: &'a [u32],
    /// A slice of `b`'s length to fetch into the cache meanwhile (the next panel's, or `b`).
    prefetch: &'a [u32],
    kc: usize,
    mr: usize,
    ncols: usize,
    bias: Option<&'a [f32]>,
}

impl Tile<'_> {
    #[inline]
    fn run(&self, c: &mut [f32], ldc: usize, kern: Kernel) {
        let (mr, kc, ncols) = (self.mr, self.kc, self.ncols);
        assert!((1..=MR).contains(&mr) && (1..=NR).contains(&ncols) && kc >= 1);
        assert!(self.b.len() >= kc * NR && self.prefetch.len() >= kc * NR);
        assert!(self.step == MR || (self.step == 1 && mr == 1));
        // A packed tile holds all `MR` rows of every step (the kernel reads them all).
        let rows_read = if self.step == MR { MR } else { 1 };
        assert!(self.a.len() >= (kc - 1) * self.step + rows_read);
        assert!(c.len() >= (mr - 1) * ldc + ncols);
        assert!(self.bias.is_none_or(|b| b.len() >= NR));
        match kern {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Dpbf16` comes only from `kernel_kind()`, which detected AVX-512F and
            // AVX512-BF16; the kernel's unmasked accesses stay inside the extents checked above
            // (masked lanes are not accessed).
            Kernel::Dpbf16 => unsafe {
                if mr == 1 {
                    kernel_dpbf16::<1>(self, c, ldc)
                } else {
                    kernel_dpbf16::<MR>(self, c, ldc)
                }
            },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Dpbf16 => kernel_widen::<true>(self, c, ldc),
            Kernel::Widen(lvl) => {
                let _ = lvl;
                dispatch!(kernel_widen::<FMA>(self, c, ldc))
            }
        }
    }
}

/// The portable kernel: both sides widened to f32, each pair's two products added in order.
#[inline(always)]
fn kernel_widen<const FMA: bool>(t: &Tile, c: &mut [f32], ldc: usize) {
    let mut acc = [[0f32; NR]; MR];
    for r in 0..t.mr {
        match t.bias {
            Some(bias) => acc[r].copy_from_slice(&bias[..NR]),
            None => acc[r][..t.ncols].copy_from_slice(&c[r * ldc..r * ldc + t.ncols]),
        }
    }
    let mut lo = [0f32; NR];
    let mut hi = [0f32; NR];
    for q in 0..t.kc {
        let bq = &t.b[q * NR..(q + 1) * NR];
        for j in 0..NR {
            lo[j] = bf16_to_f32(bq[j] as u16);
            hi[j] = bf16_to_f32((bq[j] >> 16) as u16);
        }
        for r in 0..t.mr {
            let pair = t.a[q * t.step + r];
            let (a0, a1) = (bf16_to_f32(pair as u16), bf16_to_f32((pair >> 16) as u16));
            for j in 0..NR {
                acc[r][j] = madd::<FMA>(a1, hi[j], madd::<FMA>(a0, lo[j], acc[r][j]));
            }
        }
    }
    for r in 0..t.mr {
        c[r * ldc..r * ldc + t.ncols].copy_from_slice(&acc[r][..t.ncols]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel_dpbf16<const R: usize>(t: &Tile, c: &mut [f32], ldc: usize) {
    use std::arch::x86_64::*;
    let (mr, ncols) = (t.mr, t.ncols);
    debug_assert!(R <= MR && (R == MR || mr <= R));
    let m0: __mmask16 = if ncols >= 16 {
        0xFFFF
    } else {
        ((1u32 << ncols) - 1) as u16
    };
    let m1: __mmask16 = if ncols >= 32 {
        0xFFFF
    } else if ncols <= 16 {
        0
    } else {
        ((1u32 << (ncols - 16)) - 1) as u16
    };
    let cp = c.as_mut_ptr();
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    match t.bias {
        Some(bias) => {
            let b0 = _mm512_loadu_ps(bias.as_ptr());
            let b1 = _mm512_loadu_ps(bias.as_ptr().add(16));
            for r in 0..R {
                acc[2 * r] = b0;
                acc[2 * r + 1] = b1;
            }
        }
        None => {
            for r in 0..mr {
                // Masked-off lanes are not accessed; the second half's address may lie past `c`'s
                // end when `ncols <= 16` (mask 0), hence `wrapping_add`.
                acc[2 * r] = _mm512_maskz_loadu_ps(m0, cp.add(r * ldc));
                acc[2 * r + 1] = _mm512_maskz_loadu_ps(m1, cp.wrapping_add(r * ldc + 16));
            }
        }
    }
    // Rows past `mr` hold a copy of the last real row (see `gemm_panels`) and are not stored.
    let ap = t.a.as_ptr();
    let bp = t.b.as_ptr();
    let pf = t.prefetch.as_ptr();
    for q in 0..t.kc {
        _mm_prefetch::<_MM_HINT_T0>(pf.add(q * NR).cast());
        _mm_prefetch::<_MM_HINT_T0>(pf.add(q * NR + 16).cast());
        // SAFETY (transmutes): `__m512i` and `__m512bh` are both 64 plain bytes.
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(q * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(q * NR + 16).cast()));
        for r in 0..R {
            let av: __m512bh =
                std::mem::transmute(_mm512_set1_epi32(*ap.add(q * t.step + r) as i32));
            acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], av, b0);
            acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], av, b1);
        }
    }
    for r in 0..mr {
        _mm512_mask_storeu_ps(cp.add(r * ldc), m0, acc[2 * r]);
        _mm512_mask_storeu_ps(cp.wrapping_add(r * ldc + 16), m1, acc[2 * r + 1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::test_rnd as rnd;

    /// f64 sums of the bf16-rounded inputs and weights: what the kernels must match up to f32
    /// accumulation.
    fn reference(x: &[f32], w: &[f32], b: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
        let r = |v: f32| bf16_to_f32(bf16_bits(v)) as f64;
        let mut out = vec![0f32; rows * n];
        for i in 0..rows {
            for j in 0..n {
                let mut s = b[j] as f64;
                for kk in 0..k {
                    s += r(x[i * k + kk]) * r(w[j * k + kk]);
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn linear_bf16_matches_reference_for_odd_shapes() {
        let mut seed = 5;
        // Odd k (a padded pair), partial panels and row tiles, several KC2 passes, one row (decode,
        // split over panel groups) and many rows (split over row blocks).
        let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(1, 5, 7), (9, 33, 261)]
        } else {
            &[
                (1, 5, 7),
                (3, 40, 9),
                (1, 1000, 300),
                (9, 33, 261),
                (77, 96, 513),
                (130, 70, 300),
                // Three k-chunks, the last one short.
                (20, 40, 2101),
            ]
        };
        for &(rows, n, k) in shapes {
            let x = rnd(rows * k, &mut seed);
            let w = rnd(n * k, &mut seed);
            let b = rnd(n, &mut seed);
            let pw = PackedBf16::from_f32(&w, &b, n, k).expect("shapes");
            let want = reference(&x, &w, &b, rows, n, k);
            let mut got = vec![f32::NAN; rows * n];
            linear_bf16(&x, &pw, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-4 * (1.0 + w.abs()),
                    "{rows}x{n}x{k} [{i}]: {g} vs {w}"
                );
            }
            let mut row = vec![0f32; k];
            for j in [0, n / 2, n - 1] {
                pw.weight_row(j, &mut row);
                for (kk, v) in row.iter().enumerate() {
                    assert_eq!(*v, bf16_to_f32(bf16_bits(w[j * k + kk])), "row {j} [{kk}]");
                }
            }
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values: to even (1.0); just above it rounds up.
        assert_eq!(bf16_to_f32(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(
            bf16_to_f32(bf16_bits(1.0 + 1.0 / 256.0 + 1.0 / 4096.0)),
            1.0 + 1.0 / 128.0
        );
        assert!(bf16_to_f32(bf16_bits(f32::NAN)).is_nan());
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert!(PackedBf16::new(&[0; 5], &[0.0; 2], 2, 3).is_none());
        assert!(PackedBf16::new(&[0; 6], &[0.0; 1], 2, 3).is_none());
        assert!(PackedBf16::new(&[], &[], 0, 3).is_none());
    }
}

/// `cargo test --release -p inhaus-kernels gemm_speed_bf16 -- --ignored --nocapture`: f32 and bf16
/// GEMMs side by side at Qwen2.5-0.5B's shapes (prefill rows and one decode row).
#[cfg(test)]
mod speed {
    /// The GEMMs of a 512-token prefill through 24 Qwen2.5-0.5B-shaped layers, each with its own
    /// weights (716 MB in bf16, 1.4 GB in f32, so they come from memory as in a model step), bf16
    /// then f32: medians of 5 passes, wall time and CPU time.
    #[test]
    #[ignore]
    fn prefill_layers_speed_bf16() {
        let m = 512;
        let shapes = [(1152usize, 896usize), (896, 896), (9728, 896), (896, 4864)];
        let weight = |l: usize, n: usize, k: usize| -> Vec<f32> {
            (0..n * k)
                .map(|i| ((i * 7 + l) % 13) as f32 * 0.01 - 0.06)
                .collect()
        };
        let x: Vec<Vec<f32>> = shapes.iter().map(|&(_, k)| vec![0.5f32; m * k]).collect();
        let flops: f64 = 24.0
            * shapes
                .iter()
                .map(|&(n, k)| 2.0 * (m * n * k) as f64)
                .sum::<f64>();
        type Pass<'a> = dyn Fn(&[Vec<f32>], &mut [Vec<f32>]) + 'a;
        let measure = |name: &str, pass: &Pass| {
            let mut outs: Vec<Vec<f32>> = shapes.iter().map(|&(n, _)| vec![0f32; m * n]).collect();
            let (wall, cpu) = crate::dense::test_time_passes(|| pass(&x, &mut outs));
            println!(
                "{name} prefill GEMMs, 24 layers x 512 rows: {:.1} ms, {:.1} GFLOP/s; {:.3} CPU s, {:.1} GFLOP/CPU-s",
                wall * 1e3,
                flops / wall / 1e9,
                cpu,
                flops / cpu / 1e9
            );
        };
        let bf16: Vec<Vec<super::PackedBf16>> = (0..24)
            .map(|l| {
                let packed = |&(n, k): &(usize, usize)| {
                    super::PackedBf16::from_f32(&weight(l, n, k), &vec![0f32; n], n, k)
                };
                shapes.iter().map(packed).collect::<Option<_>>().expect("p")
            })
            .collect();
        measure("bf16", &|x, outs| {
            for layer in &bf16 {
                for ((w, x), o) in layer.iter().zip(x).zip(outs.iter_mut()) {
                    super::linear_bf16(x, w, o);
                }
            }
        });
        drop(bf16);
        let f32s: Vec<Vec<crate::dense::PackedLinear>> = (0..24)
            .map(|l| {
                let packed = |&(n, k): &(usize, usize)| {
                    crate::dense::PackedLinear::new(&weight(l, n, k), &vec![0f32; n], n, k)
                };
                shapes.iter().map(packed).collect::<Option<_>>().expect("p")
            })
            .collect();
        measure("f32", &|x, outs| {
            for layer in &f32s {
                for ((w, x), o) in layer.iter().zip(x).zip(outs.iter_mut()) {
                    crate::dense::linear_wide(x, w, o);
                }
            }
        });
    }

    #[test]
    #[ignore]
    fn gemm_speed_bf16() {
        for &(m, n, k) in &[
            (512usize, 9728usize, 896usize),
            (512, 896, 4864),
            (1, 9728, 896),
            (1, 896, 4864),
        ] {
            let x = vec![0.5f32; m * k];
            let w = vec![0.25f32; n * k];
            let b = vec![0f32; n];
            let p32 = crate::dense::PackedLinear::new(&w, &b, n, k).expect("p");
            let p16 = super::PackedBf16::from_f32(&w, &b, n, k).expect("p");
            let mut out = vec![0f32; m * n];
            let reps = if m == 1 { 200 } else { 10 };
            // The fastest of `reps` runs: the machine is shared and noisy.
            let time = |f: &dyn Fn(&mut [f32])| {
                let mut out = vec![0f32; m * n];
                f(&mut out);
                (0..reps)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        f(&mut out);
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let s32 = time(&|o| crate::dense::linear_wide(&x, &p32, o));
            let s16 = time(&|o| super::linear_bf16(&x, &p16, o));
            super::linear_bf16(&x, &p16, &mut out);
            let gf = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
            println!(
                "{m}x{n}x{k}: f32 {:.3} ms {:.1} GFLOP/s, bf16 {:.3} ms {:.1} GFLOP/s",
                s32 * 1e3,
                gf(s32),
                s16 * 1e3,
                gf(s16)
            );
        }
    }
}
