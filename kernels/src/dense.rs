//! Dense f32 routines of the BERT encoder (sentence embeddings): a GEMM against weights packed once into
//! 32-column panels, with a per-row-block epilogue (bias is folded into the accumulator start), fused
//! element-wise passes (GELU, residual + LayerNorm) and attention over packed (unpadded) sequences.
//!
//! Everything runs on [`crate::pool`]; the inner loops are plain Rust instantiated under AVX-512 or
//! AVX2+FMA target features (chosen at run time), with an AVX-512 intrinsic micro-kernel for the GEMM.
use crate::pool::parallel_for;

/// Columns per packed weight panel.
pub const NR: usize = 32;
/// Rows per GEMM micro-tile.
pub const MR: usize = 8;
/// Rows per GEMM task (one task = these rows × every column, then the epilogue on them).
const MB: usize = 64;
/// Depth of one pass over a panel (a `KC × NR` slice of a panel stays in L1 across the row tiles).
const KC: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Level {
    Scalar,
    Avx2,
    Avx512,
}

pub(crate) fn level() -> Level {
    static L: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *L.get_or_init(|| {
        let cap = std::env::var("INHAUS_SIMD").ok();
        if cap.as_deref() == Some("scalar") {
            return Level::Scalar;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                if is_x86_feature_detected!("avx512f") && cap.as_deref() != Some("avx2") {
                    return Level::Avx512;
                }
                return Level::Avx2;
            }
        }
        Level::Scalar
    })
}

/// Runs `$body` (an expression using only `#[inline(always)]` code) compiled for the best SIMD level, with
/// a constant `FMA` in scope: whether `mul_add` is a hardware instruction there (see [`madd`]).
macro_rules! dispatch {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            match $crate::dense::level() {
                $crate::dense::Level::Avx512 => {
                    #[allow(dead_code)]
                    const FMA: bool = true;
                    // SAFETY: `level()` returns `Avx512` only after detecting AVX-512F, AVX2 and FMA
                    // on this CPU.
                    unsafe { run_avx512(|| $body) }
                }
                $crate::dense::Level::Avx2 => {
                    #[allow(dead_code)]
                    const FMA: bool = true;
                    // SAFETY: `level()` returns `Avx2` only after detecting AVX2 and FMA.
                    unsafe { run_avx2(|| $body) }
                }
                $crate::dense::Level::Scalar => {
                    #[allow(dead_code)]
                    const FMA: bool = false;
                    $body
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            #[allow(dead_code)]
            const FMA: bool = true;
            $body
        }
    }};
}

pub(crate) use dispatch;

/// `a * b + c`, fused where the instruction exists (`FMA`), else a multiply and an add (a software `fmaf`
/// would be far slower).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// A linear layer `y = x Wᵀ + b`, the weight re-laid as panels of [`NR`] output columns, each panel
/// `k`-major (`panel[kk * NR + j]` = `W[p * NR + j][kk]`), zero past `n`.
pub struct PackedLinear {
    k: usize,
    n: usize,
    panels: Vec<f32>,
    /// `n` rounded up to whole panels, zero past `n`.
    bias: Vec<f32>,
}

impl PackedLinear {
    /// `weight`: the PyTorch `[n, k]` (out × in) matrix, row-major; `bias`: `n` values. Returns `None`
    /// when the lengths do not match.
    pub fn new(weight: &[f32], bias: &[f32], n: usize, k: usize) -> Option<Self> {
        if weight.len() != n * k || bias.len() != n || n == 0 || k == 0 {
            return None;
        }
        let np = n.div_ceil(NR);
        let mut panels = vec![0f32; np * k * NR];
        for col in 0..n {
            let (p, j) = (col / NR, col % NR);
            let row = &weight[col * k..(col + 1) * k];
            let panel = &mut panels[p * k * NR..(p + 1) * k * NR];
            for (kk, &w) in row.iter().enumerate() {
                panel[kk * NR + j] = w;
            }
        }
        let mut b = vec![0f32; np * NR];
        b[..n].copy_from_slice(bias);
        Some(Self {
            k,
            n,
            panels,
            bias: b,
        })
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }
}

#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: every task writes a disjoint, in-bounds region through it (see each use), and each job
// ends before the `&mut` borrow the pointer came from does.
unsafe impl Sync for SyncPtr {}
// SAFETY: as for `Sync`.
unsafe impl Send for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper, not its field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[rows, n] = x[rows, k] · Wᵀ + b` with `rows = x.len() / k`, then `epilogue(first_row, block)` on each
/// finished block of whole rows (`block.len()` is a multiple of `n`), on the thread that computed it.
pub fn linear(
    x: &[f32],
    w: &PackedLinear,
    out: &mut [f32],
    epilogue: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let (k, n) = (w.k, w.n);
    let rows = x.len() / k;
    assert!(
        rows.checked_mul(n).is_some_and(|len| len <= out.len()),
        "linear: output too small"
    );
    let tasks = rows.div_ceil(MB);
    let optr = SyncPtr(out.as_mut_ptr());
    let lvl = level();
    parallel_for(tasks, |t| {
        let r0 = t * MB;
        let mb = MB.min(rows - r0);
        // SAFETY: task `t` alone owns rows `r0 .. r0 + mb` of `out`, which lie inside it (checked above).
        let block = unsafe { std::slice::from_raw_parts_mut(optr.get().add(r0 * n), mb * n) };
        let a = &x[r0 * k..(r0 + mb) * k];
        gemm_block(a, mb, w, block, lvl);
        epilogue(r0, block);
    });
}

fn gemm_block(a: &[f32], mb: usize, w: &PackedLinear, c: &mut [f32], lvl: Level) {
    gemm_panels(a, mb, w, 0..w.n.div_ceil(NR), c, w.n, lvl);
}

/// `c[mb, cols] = a[mb, k] · Wᵀ + b` over the output columns of `panels` (`c`'s column 0 is the first
/// panel's first column; its row stride is `ldc`).
fn gemm_panels(
    a: &[f32],
    mb: usize,
    w: &PackedLinear,
    panels: std::ops::Range<usize>,
    c: &mut [f32],
    ldc: usize,
    lvl: Level,
) {
    let (k, n) = (w.k, w.n);
    let col0 = panels.start * NR;
    // Each panel runs its k-chunks in turn over all row tiles: the panel's output tiles stay in L1
    // from one chunk to the next (chunks outermost sent a wide output block through L3 per chunk).
    for p in panels.clone() {
        let ncols = NR.min(n - p * NR);
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            let b = &w.panels[p * k * NR + k0 * NR..p * k * NR + (k0 + kc) * NR];
            let bias = (k0 == 0).then(|| &w.bias[p * NR..(p + 1) * NR]);
            let mut r = 0;
            while r < mb {
                let mr = MR.min(mb - r);
                tile(
                    &a[r * k + k0..],
                    k,
                    b,
                    NR,
                    kc,
                    &mut c[r * ldc + p * NR - col0..],
                    ldc,
                    mr,
                    ncols,
                    bias,
                    lvl,
                );
                r += mr;
            }
            k0 += kc;
        }
    }
}

/// `out[rows, n] = x[rows, k] · Wᵀ + b` with `rows = x.len() / k`, split over blocks of rows and, where
/// there are fewer row blocks than threads (decode: a row or a few), over groups of weight panels too,
/// so that every thread streams its share of the weights.
pub fn linear_wide(x: &[f32], w: &PackedLinear, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    let rows = x.len() / k;
    assert!(rows * k == x.len(), "linear_wide: input size");
    let lvl = level();
    split_wide(rows, n, out, &|r0, mb, panels, c, ldc| {
        gemm_panels(&x[r0 * k..(r0 + mb) * k], mb, w, panels, c, ldc, lvl)
    });
}

/// A GEMM over some rows and panels: `gemm(r0, mb, panels, c, ldc)` writes rows `r0 .. r0 + mb` of the
/// output columns of `panels` into `c` (column 0 = the first panel's first column, row stride `ldc`).
pub(crate) type PanelGemm<'a> =
    dyn Fn(usize, usize, std::ops::Range<usize>, &mut [f32], usize) + Sync + 'a;

/// Runs `gemm` over `out[rows, n]` (panels of [`NR`] columns) on the pool: blocks of [`MB`] rows and,
/// where there are fewer row blocks than threads (decode: a row or a few), groups of panels too, so
/// that every thread streams its share of the weights.
pub(crate) fn split_wide(rows: usize, n: usize, out: &mut [f32], gemm: &PanelGemm) {
    assert!(
        rows.checked_mul(n).is_some_and(|len| len <= out.len()),
        "linear_wide: output size"
    );
    if rows == 0 || n == 0 {
        return;
    }
    let np = n.div_ceil(NR);
    let row_tasks = rows.div_ceil(MB);
    let threads = crate::pool::threads().max(1);
    let groups = if row_tasks >= 2 * threads {
        1
    } else {
        (4 * threads).div_ceil(row_tasks).min(np)
    };
    let per = np.div_ceil(groups);
    let groups = np.div_ceil(per);
    let optr = SyncPtr(out.as_mut_ptr());
    parallel_for(row_tasks * groups, |t| {
        let (rt, g) = (t / groups, t % groups);
        let r0 = rt * MB;
        let mb = MB.min(rows - r0);
        if groups == 1 {
            // SAFETY: task `t` alone owns rows `r0 .. r0 + mb` of `out`, which lie inside it
            // (checked above).
            let block = unsafe { std::slice::from_raw_parts_mut(optr.get().add(r0 * n), mb * n) };
            gemm(r0, mb, 0..np, block, n);
            return;
        }
        let (p0, p1) = (g * per, ((g + 1) * per).min(np));
        let (c0, c1) = (p0 * NR, (p1 * NR).min(n));
        let width = c1 - c0;
        let mut tmp = vec![0f32; mb * width];
        gemm(r0, mb, p0..p1, &mut tmp, width);
        for r in 0..mb {
            // SAFETY: task `t` alone writes columns `c0 .. c1` (inside `0 .. n`) of rows
            // `r0 .. r0 + mb` (inside `out`, checked above); `tmp` is its own buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    tmp.as_ptr().add(r * width),
                    optr.get().add((r0 + r) * n + c0),
                    width,
                )
            };
        }
    });
}

impl PackedLinear {
    /// Row `j` of the original weight (`W[j][..]`, `k` values) into `out`: an embedding lookup in a
    /// matrix that is also the output head.
    pub fn weight_row(&self, j: usize, out: &mut [f32]) {
        assert!(
            j < self.n && out.len() >= self.k,
            "weight_row: index or output size"
        );
        let (p, c) = (j / NR, j % NR);
        let panel = &self.panels[p * self.k * NR..(p + 1) * self.k * NR];
        for (kk, o) in out[..self.k].iter_mut().enumerate() {
            *o = panel[kk * NR + c];
        }
    }
}

/// One micro-tile: `c[mr, ncols] (+)= a[mr, kc] · b[kc, NR]` (strides `lda`, `ldc`; `mr <= MR`,
/// `ncols <= NR`), starting from the bias (when given) instead of `c`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn tile(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    kc: usize,
    c: &mut [f32],
    ldc: usize,
    mr: usize,
    ncols: usize,
    bias: Option<&[f32]>,
    lvl: Level,
) {
    assert!((1..=MR).contains(&mr) && (1..=NR).contains(&ncols) && ldb >= NR && kc >= 1);
    assert!(b.len() >= (kc - 1) * ldb + NR);
    assert!(a.len() >= (mr - 1) * lda + kc && c.len() >= (mr - 1) * ldc + ncols);
    assert!(bias.is_none_or(|b| b.len() >= NR));
    #[cfg(target_arch = "x86_64")]
    if lvl == Level::Avx512 {
        // SAFETY: `Level::Avx512` comes only from `level()`, which detected AVX-512F; the kernel's
        // unmasked accesses stay inside the extents checked above (masked lanes are not accessed).
        // One row (decode) gets a kernel of its own: the 8-row one would do 8x the FMAs.
        unsafe {
            if mr == 1 {
                kernel_avx512::<1>(a, lda, b, ldb, kc, c, ldc, mr, ncols, bias)
            } else {
                kernel_avx512::<MR>(a, lda, b, ldb, kc, c, ldc, mr, ncols, bias)
            }
        };
        return;
    }
    let _ = lvl;
    dispatch!(kernel_generic::<FMA>(
        a, lda, b, ldb, kc, c, ldc, mr, ncols, bias
    ))
}

/// `c[mr, ncols] (+)= a[mr, kc] · b[kc, NR]`, starting from the bias (when given) instead of `c`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn kernel_generic<const FMA: bool>(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    kc: usize,
    c: &mut [f32],
    ldc: usize,
    mr: usize,
    ncols: usize,
    bias: Option<&[f32]>,
) {
    let mut acc = [[0f32; NR]; MR];
    for r in 0..mr {
        match bias {
            Some(bias) => acc[r].copy_from_slice(&bias[..NR]),
            None => acc[r][..ncols].copy_from_slice(&c[r * ldc..r * ldc + ncols]),
        }
    }
    for kk in 0..kc {
        let bk = &b[kk * ldb..kk * ldb + NR];
        for r in 0..mr {
            let av = a[r * lda + kk];
            for j in 0..NR {
                acc[r][j] = madd::<FMA>(av, bk[j], acc[r][j]);
            }
        }
    }
    for r in 0..mr {
        c[r * ldc..r * ldc + ncols].copy_from_slice(&acc[r][..ncols]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512<const R: usize>(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    kc: usize,
    c: &mut [f32],
    ldc: usize,
    mr: usize,
    ncols: usize,
    bias: Option<&[f32]>,
) {
    use std::arch::x86_64::*;
    debug_assert!((1..=MR).contains(&mr) && R <= MR && (R == MR || mr <= R));
    debug_assert!(a.len() >= (mr - 1) * lda + kc && b.len() >= (kc - 1) * ldb + NR);
    debug_assert!(c.len() >= (mr - 1) * ldc + ncols);
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
    match bias {
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
    // Rows past `mr` recompute the last real row (in bounds) and are not stored.
    let mut rows = [a.as_ptr(); MR];
    for (r, p) in rows.iter_mut().enumerate() {
        *p = a.as_ptr().add(r.min(mr - 1) * lda);
    }
    let bp = b.as_ptr();
    for kk in 0..kc {
        let b0 = _mm512_loadu_ps(bp.add(kk * ldb));
        let b1 = _mm512_loadu_ps(bp.add(kk * ldb + 16));
        for r in 0..R {
            let av = _mm512_set1_ps(*rows[r].add(kk));
            acc[2 * r] = _mm512_fmadd_ps(av, b0, acc[2 * r]);
            acc[2 * r + 1] = _mm512_fmadd_ps(av, b1, acc[2 * r + 1]);
        }
    }
    for r in 0..mr {
        _mm512_mask_storeu_ps(cp.add(r * ldc), m0, acc[2 * r]);
        _mm512_mask_storeu_ps(cp.wrapping_add(r * ldc + 16), m1, acc[2 * r + 1]);
    }
}

/// `e^x` in f32 (Cephes' polynomial, about 1 ulp on [-87, 88]; clamped outside), branch-free so that it
/// vectorizes.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer kept in the low bits.
    let x = x.clamp(-87.3, 88.3);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from the integer in t's low mantissa bits (n + 127 in [0, 255] by the clamp).
    let bits = (t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127)) << 23;
    e * f32::from_bits(bits)
}

/// `erf(x)` in f32: Eigen's rational approximation (odd degree-13 / even degree-8), clamped to ±4.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_600_1e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329_4e-3;
    q = q * x2 + -1.426_473_9e-2;
    x * p / q
}

/// Exact GELU `x Φ(x) = x (1 + erf(x / √2)) / 2`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU with the tanh approximation (`gelu_new`).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    let y = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    // tanh(y) = 1 - 2 / (e^{2y} + 1)
    let t = 1.0 - 2.0 / (exp_f32(2.0 * y) + 1.0);
    0.5 * x * (1.0 + t)
}

/// The gate activations of a gated MLP ([`gated_into`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// `x · sigmoid(x)`.
    Silu,
    GeluTanh,
    GeluErf,
}

/// `out = gate_act(gate) * up`, element by element (vectorized; exp to about 1 ulp).
pub fn gated_into(gate: &[f32], up: &[f32], out: &mut [f32], act: Gate) {
    let it = out.iter_mut().zip(gate).zip(up);
    dispatch!(match act {
        Gate::Silu => it.for_each(|((o, &g), &u)| *o = g / (1.0 + exp_f32(-g)) * u),
        Gate::GeluTanh => it.for_each(|((o, &g), &u)| *o = gelu_tanh(g) * u),
        Gate::GeluErf => it.for_each(|((o, &g), &u)| *o = gelu_erf(g) * u),
    })
}

/// The element-wise activations [`apply_activation`] knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    GeluErf,
    GeluTanh,
    Relu,
}

/// `x = act(x)` in place.
pub fn apply_activation(x: &mut [f32], act: Act) {
    dispatch!(match act {
        Act::GeluErf => x.iter_mut().for_each(|v| *v = gelu_erf(*v)),
        Act::GeluTanh => x.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
        Act::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
    })
}

/// Sum with 16 independent lanes (so that it vectorizes), then the lanes.
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter()
        .chain(rest)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

#[inline(always)]
fn layer_norm_row(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = sum_lanes(x) / n;
    let mut sq = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            let d = c[i] - mean;
            sq[i] += d * d;
        }
    }
    let var =
        (sq.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in x.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// Each `gamma.len()`-wide row of `x` becomes `LayerNorm(x + residual)` (biased variance, as PyTorch).
pub fn residual_layer_norm(x: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let h = gamma.len();
    dispatch!(
        for (row, res) in x.chunks_exact_mut(h).zip(residual.chunks_exact(h)) {
            for (v, r) in row.iter_mut().zip(res) {
                *v += r;
            }
            layer_norm_row(row, gamma, beta, eps);
        }
    )
}

/// Each `gamma.len()`-wide row of `x` becomes `LayerNorm(x)`.
pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let h = gamma.len();
    dispatch!(for row in x.chunks_exact_mut(h) {
        layer_norm_row(row, gamma, beta, eps);
    })
}

/// Bidirectional self-attention over packed sequences. `qkv` holds rows `[q | k | v]` of `3 * heads *
/// head_dim` values (q already scaled by `1/√head_dim`); sequence `(start, len)` is rows `start .. start +
/// len`. Writes each token's context (`heads * head_dim` values, head-major) into the same row of `out`;
/// rows outside every sequence are left as they are. Parallel over sequences × heads.
pub fn attention(
    qkv: &[f32],
    seqs: &[(usize, usize)],
    heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    let hidden = heads * head_dim;
    assert!(hidden > 0, "attention: heads and head_dim must be positive");
    let rows = qkv.len() / (3 * hidden);
    assert!(
        out.len() >= rows * hidden
            && seqs
                .iter()
                .all(|&(s, l)| s.checked_add(l).is_some_and(|end| end <= rows)),
        "attention: sequences outside the buffers"
    );
    // Tasks write their sequences' rows through a shared pointer: two sequences sharing a row would
    // race.
    let mut ranges: Vec<(usize, usize)> = seqs.iter().copied().filter(|&(_, l)| l > 0).collect();
    ranges.sort_unstable();
    assert!(
        ranges.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
        "attention: sequences overlap"
    );
    let optr = SyncPtr(out.as_mut_ptr());
    let lvl = level();
    parallel_for(seqs.len() * heads, |t| {
        let (start, len) = seqs[t / heads];
        let h = t % heads;
        attend(qkv, start, len, h, head_dim, hidden, optr, lvl)
    });
}

/// One (sequence, head): `S = Q Kᵀ` and `ctx = softmax(S) V` as micro-tile GEMMs, `Kᵀ` packed into
/// [`NR`]-key panels (`[head_dim][NR keys]` each); `V` is read in place from `qkv` when `head_dim` is a
/// multiple of [`NR`], else packed into `[len][NR dims]` panels. The softmax's `1/Σ` is applied on output.
#[allow(clippy::too_many_arguments)]
fn attend(
    qkv: &[f32],
    start: usize,
    len: usize,
    h: usize,
    hd: usize,
    hidden: usize,
    out: SyncPtr,
    lvl: Level,
) {
    if len == 0 {
        return;
    }
    let kp = len.div_ceil(NR);
    let vp = hd.div_ceil(NR);
    let ls = kp * NR;
    let ldc = vp * NR;
    let pack_v = !hd.is_multiple_of(NR);
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let v_size = if pack_v { vp * len * NR } else { 0 };
        let sizes = [kp * hd * NR, v_size, len * ls, len * ldc, len];
        scratch.clear();
        scratch.resize(sizes.iter().sum(), 0.0);
        let (kt, rest) = scratch.split_at_mut(sizes[0]);
        let (v, rest) = rest.split_at_mut(sizes[1]);
        let (s, rest) = rest.split_at_mut(sizes[2]);
        let (ctx, inv) = rest.split_at_mut(sizes[3]);
        let bufs = AttnScratch {
            kt,
            v: pack_v.then_some(v),
            s,
            ctx,
            inv,
        };
        attend_in(qkv, start, len, h, hd, hidden, out, lvl, bufs);
    })
}

/// One attention task's buffers (zeroed): packed `Kᵀ`, packed `V` (when needed), scores, context,
/// each row's `1/Σ`.
struct AttnScratch<'a> {
    kt: &'a mut [f32],
    v: Option<&'a mut [f32]>,
    s: &'a mut [f32],
    ctx: &'a mut [f32],
    inv: &'a mut [f32],
}

#[allow(clippy::too_many_arguments)]
fn attend_in(
    qkv: &[f32],
    start: usize,
    len: usize,
    h: usize,
    hd: usize,
    hidden: usize,
    out: SyncPtr,
    lvl: Level,
    bufs: AttnScratch,
) {
    let AttnScratch {
        kt,
        mut v,
        s,
        ctx,
        inv,
    } = bufs;
    let stride = 3 * hidden;
    let kp = len.div_ceil(NR);
    let vp = hd.div_ceil(NR);
    let ls = kp * NR;
    let ldc = vp * NR;
    for j in 0..len {
        let row = &qkv[(start + j) * stride..(start + j + 1) * stride];
        let kr = &row[hidden + h * hd..hidden + (h + 1) * hd];
        let panel = &mut kt[(j / NR) * hd * NR..(j / NR + 1) * hd * NR];
        for (d, &x) in kr.iter().enumerate() {
            panel[d * NR + j % NR] = x;
        }
        if let Some(v) = v.as_deref_mut() {
            let vr = &row[2 * hidden + h * hd..2 * hidden + (h + 1) * hd];
            for (p, chunk) in vr.chunks(NR).enumerate() {
                v[p * len * NR + j * NR..p * len * NR + j * NR + chunk.len()]
                    .copy_from_slice(chunk);
            }
        }
    }
    let q = &qkv[start * stride + h * hd..];
    let mut i = 0;
    while i < len {
        let mr = MR.min(len - i);
        for p in 0..kp {
            let b = &kt[p * hd * NR..(p + 1) * hd * NR];
            let ncols = NR.min(len - p * NR);
            tile(
                &q[i * stride..],
                stride,
                b,
                NR,
                hd,
                &mut s[i * ls + p * NR..],
                ls,
                mr,
                ncols,
                None,
                lvl,
            );
        }
        i += mr;
    }
    // Softmax over the real keys (unnormalized; `inv` keeps each row's 1/Σ).
    dispatch!(
        for (row, inv) in s.chunks_exact_mut(ls).zip(inv.iter_mut()) {
            let row = &mut row[..len];
            let max = max_lanes(row);
            row.iter_mut().for_each(|x| *x = exp_f32(*x - max));
            *inv = 1.0 / sum_lanes(row);
        }
    );
    let v_in_place = &qkv[start * stride + 2 * hidden + h * hd..];
    let mut i = 0;
    while i < len {
        let mr = MR.min(len - i);
        for p in 0..vp {
            let (b, ldb) = match v.as_deref() {
                Some(v) => (&v[p * len * NR..(p + 1) * len * NR], NR),
                None => (&v_in_place[p * NR..], stride),
            };
            tile(
                &s[i * ls..],
                ls,
                b,
                ldb,
                len,
                &mut ctx[i * ldc + p * NR..],
                ldc,
                mr,
                NR,
                None,
                lvl,
            );
        }
        i += mr;
    }
    for (i, (c, &inv)) in ctx.chunks_exact(ldc).zip(inv.iter()).enumerate() {
        // SAFETY: this (sequence, head) task alone writes its head's columns of its own rows, which lie
        // inside `out` (checked by `attention`).
        let dst = unsafe {
            std::slice::from_raw_parts_mut(out.get().add((start + i) * hidden + h * hd), hd)
        };
        for (o, &x) in dst.iter_mut().zip(c) {
            *o = x * inv;
        }
    }
}

/// `n` pseudo-random values in [-1, 1) from `seed` (a 64-bit LCG), for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_rnd(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

/// The process's CPU seconds (user + system, from /proc), for the kernels' speed probes: on a machine
/// shared with other work, a probe run under `taskset -c N` (one compute thread) counts only its own
/// work this way, where wall time also counts the other work's time slices.
#[cfg(test)]
pub(crate) fn test_cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Runs `pass` five times; the median wall seconds and the median CPU seconds
/// ([`test_cpu_seconds`]) of a pass, for the kernels' speed probes.
#[cfg(test)]
pub(crate) fn test_time_passes(mut pass: impl FnMut()) -> (f64, f64) {
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (t, c) = (std::time::Instant::now(), test_cpu_seconds());
        pass();
        cpus.push(test_cpu_seconds() - c);
        walls.push(t.elapsed().as_secs_f64());
    }
    walls.sort_by(f64::total_cmp);
    cpus.sort_by(f64::total_cmp);
    (walls[2], cpus[2])
}

#[cfg(test)]
mod tests {
    use super::test_rnd as rnd;
    use super::*;

    #[test]
    #[cfg_attr(
        miri,
        ignore = "millions of scalar float ops, too slow to interpret; no unsafe code"
    )]
    fn exp_and_erf_are_accurate() {
        let mut worst_exp = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        // erf against its Taylor series (|x| <= 2) and erfc's asymptotic tail.
        let erf64 = |x: f64| -> f64 {
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        let mut worst = 0f64;
        let mut x = -3.0f32;
        while x <= 3.0 {
            worst = worst.max((erf_f32(x) as f64 - erf64(x as f64)).abs());
            x += 0.001;
        }
        assert!(worst < 1e-6, "erf absolute error {worst}");
        assert!((erf_f32(10.0) - 1.0).abs() < 1e-6);
        assert_eq!(gelu_erf(0.0), 0.0);
    }

    fn reference(x: &[f32], w: &[f32], b: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let mut s = b[c] as f64;
                for kk in 0..k {
                    s += x[r * k + kk] as f64 * w[c * k + kk] as f64;
                }
                out[r * n + c] = s as f32;
            }
        }
        out
    }

    #[test]
    fn linear_and_linear_wide_match_reference_for_odd_shapes() {
        let mut seed = 7;
        // Partial row tiles, partial panels and several KC passes; one row (decode) and a few rows,
        // which `linear_wide` splits over panel groups, and many rows, which it splits over row
        // blocks only. Miri (scripts/miri-kernels.sh) interprets every op: small shapes.
        let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(3, 5, 7), (9, 40, 260), (1, 40, 7), (3, 70, 9)]
        } else {
            &[
                (3, 5, 7),
                (8, 32, 16),
                (77, 40, 300),
                (130, 96, 513),
                (1, 5, 7),
                (1, 1000, 300),
                (2, 97, 513),
                (9, 64, 16),
                (130, 96, 260),
                (300, 33, 64),
            ]
        };
        for &(rows, n, k) in shapes {
            let x = rnd(rows * k, &mut seed);
            let w = rnd(n * k, &mut seed);
            let b = rnd(n, &mut seed);
            let pw = PackedLinear::new(&w, &b, n, k).expect("shapes");
            let want = reference(&x, &w, &b, rows, n, k);
            let mut got = vec![0f32; rows * n];
            linear(&x, &pw, &mut got, &|_, _| {});
            let mut wide = vec![f32::NAN; rows * n];
            linear_wide(&x, &pw, &mut wide);
            for (i, ((g, gw), w)) in got.iter().zip(&wide).zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-4,
                    "linear {rows}x{n}x{k} [{i}]: {g} vs {w}"
                );
                assert!(
                    (gw - w).abs() < 1e-4,
                    "linear_wide {rows}x{n}x{k} [{i}]: {gw} vs {w}"
                );
            }
            // Embedding rows read back from the panels are the weight's rows.
            let mut row = vec![0f32; k];
            for j in [0, n / 2, n - 1] {
                pw.weight_row(j, &mut row);
                assert_eq!(row, w[j * k..(j + 1) * k], "weight row {j}");
            }
        }
    }

    #[test]
    fn attention_matches_reference() {
        // head_dim 32 and 64 read V in place; 8 and 40 pack it.
        let cases: &[(usize, usize)] = if cfg!(miri) {
            &[(1, 8), (1, 32)]
        } else {
            &[(3, 8), (2, 32), (1, 64), (2, 40)]
        };
        for &(heads, hd) in cases {
            attention_case(heads, hd);
        }
    }

    fn attention_case(heads: usize, hd: usize) {
        let hidden = heads * hd;
        let (seqs, rows): (&[(usize, usize)], usize) = if cfg!(miri) {
            (&[(0, 5), (5, 1), (6, 9)], 15)
        } else {
            (&[(0, 5), (5, 1), (6, 19), (25, 40)], 65)
        };
        let mut seed = 3;
        let qkv = rnd(rows * 3 * hidden, &mut seed);
        let mut out = vec![0f32; rows * hidden];
        attention(&qkv, seqs, heads, hd, &mut out);
        for &(start, len) in seqs {
            for h in 0..heads {
                for i in 0..len {
                    let q = &qkv[(start + i) * 3 * hidden + h * hd..][..hd];
                    let scores: Vec<f64> = (0..len)
                        .map(|j| {
                            let k = &qkv[(start + j) * 3 * hidden + hidden + h * hd..][..hd];
                            q.iter().zip(k).map(|(a, b)| (a * b) as f64).sum()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..hd {
                        let want: f64 = (0..len)
                            .map(|j| {
                                e[j] / sum
                                    * qkv[(start + j) * 3 * hidden + 2 * hidden + h * hd + d] as f64
                            })
                            .sum();
                        let got = out[(start + i) * hidden + h * hd + d] as f64;
                        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                    }
                }
            }
        }
    }
}
#[cfg(test)]
mod speed {
    #[test]
    #[ignore]
    fn gemm_speed() {
        for &(m, n, k) in &[
            (3200usize, 1536usize, 384usize),
            (3200, 384, 1536),
            (3200, 1152, 384),
        ] {
            let x = vec![0.5f32; m * k];
            let w = vec![0.25f32; n * k];
            let b = vec![0f32; n];
            let pw = super::PackedLinear::new(&w, &b, n, k).expect("p");
            let mut out = vec![0f32; m * n];
            super::linear(&x, &pw, &mut out, &|_, _| {});
            let t = std::time::Instant::now();
            for _ in 0..10 {
                super::linear(&x, &pw, &mut out, &|_, _| {});
            }
            let s = t.elapsed().as_secs_f64() / 10.0;
            println!(
                "{m}x{n}x{k}: {:.2} ms {:.1} GFLOP/s",
                s * 1e3,
                2.0 * (m * n * k) as f64 / s / 1e9
            );
        }
    }
}
