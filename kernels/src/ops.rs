//! Small element-wise and row-wise ops of a transformer forward: RMSNorm, RoPE, gated activations.
//! Written as plain loops the compiler vectorizes; numerics follow llama.cpp's CPU backend where that
//! matters for agreement (f64 sum of squares in RMSNorm, RoPE angles by repeated multiplication).

/// RMSNorm of each `dim`-sized row of `x` in place, scaled by `weight`.
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    for row in x.chunks_exact_mut(dim) {
        let scale = rms_scale(row, eps);
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

/// RMSNorm of each row of `x` into `out`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let scale = rms_scale(row, eps);
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

#[inline]
fn rms_scale(row: &[f32], eps: f32) -> f32 {
    let sum: f64 = row.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / row.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (i, i + d/2): GPT-NeoX, Qwen 2, Gemma.
    Neox,
    /// Pairs (2i, 2i + 1): Llama in GGUF (the converter permuted q/k to it).
    Interleaved,
}

/// Cos/sin table of one position: `rot_dims / 2` angles `pos * freq_scale * base^(-2i/rot_dims)`.
pub fn rope_angles(
    pos: usize,
    rot_dims: usize,
    base: f32,
    freq_scale: f32,
    out: &mut Vec<(f32, f32)>,
) {
    out.clear();
    let theta_scale = base.powf(-2.0 / rot_dims as f32);
    let mut theta = pos as f32;
    for _ in 0..rot_dims / 2 {
        let t = theta * freq_scale;
        out.push((t.cos(), t.sin()));
        theta *= theta_scale;
    }
}

/// Rotates every head of one token (`x` = n_heads × head_dim) by the angles of its position.
pub fn rope_apply(x: &mut [f32], head_dim: usize, angles: &[(f32, f32)], style: RopeStyle) {
    let half = angles.len();
    for head in x.chunks_exact_mut(head_dim) {
        match style {
            RopeStyle::Neox => {
                for (i, &(c, s)) in angles.iter().enumerate() {
                    let (x0, x1) = (head[i], head[i + half]);
                    head[i] = x0 * c - x1 * s;
                    head[i + half] = x0 * s + x1 * c;
                }
            }
            RopeStyle::Interleaved => {
                for (i, &(c, s)) in angles.iter().enumerate() {
                    let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = x0 * c - x1 * s;
                    head[2 * i + 1] = x0 * s + x1 * c;
                }
            }
        }
    }
}

/// GELU with the tanh approximation, in f32.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh())
}

/// GELU of every f16 value, rounded to f16 (as llama.cpp tabulates it), stored as f32.
fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                half::f16::from_f32(gelu_tanh(half::f16::from_bits(bits).to_f32())).to_f32()
            })
            .collect()
    })
}

/// GELU (tanh approximation) of `gate`, times `up`, written into `gate`. Like llama.cpp, the GELU is
/// looked up by the input rounded to f16 (exact outside ±10: 0 and x), which is both fast and the
/// reference's numerics.
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    #[cfg(target_arch = "x86_64")]
    if let Some(_proof) = crate::cpu::avx2() {
        // SAFETY: the token proves AVX2, FMA and F16C; the gather indexes the table (65536 entries,
        // one per u16) with 16-bit values, and the loads and stores stay below both slices' common
        // length.
        unsafe { gelu_mul_avx2(gate, up, table) };
        return;
    }
    for (g, u) in gate.iter_mut().zip(up) {
        *g = gelu_lookup(*g, table) * u;
    }
}

#[inline]
fn gelu_lookup(x: f32, table: &[f32]) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table[half::f16::from_f32(x).to_bits() as usize]
    }
}

/// Needs AVX2, FMA and F16C, and `table` must hold 65536 entries.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gelu_mul_avx2(gate: &mut [f32], up: &[f32], table: &[f32]) {
    use std::arch::x86_64::*;
    debug_assert!(table.len() > u16::MAX as usize);
    let n = gate.len().min(up.len());
    let lo = _mm256_set1_ps(-10.0);
    let hi = _mm256_set1_ps(10.0);
    let mut i = 0;
    while i + 8 <= n {
        let x = _mm256_loadu_ps(gate.as_ptr().add(i));
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
        let idx = _mm256_cvtepu16_epi32(h);
        let y = _mm256_i32gather_ps::<4>(table.as_ptr(), idx);
        let y = _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_GE_OQ>(x, hi));
        let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LE_OQ>(x, lo));
        _mm256_storeu_ps(
            gate.as_mut_ptr().add(i),
            _mm256_mul_ps(y, _mm256_loadu_ps(up.as_ptr().add(i))),
        );
        i += 8;
    }
    while i < n {
        gate[i] = gelu_lookup(gate[i], table) * up[i];
        i += 1;
    }
}

/// SiLU of `gate`, times `up`, written into `gate`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + (-x).exp()) * u;
    }
}

/// `x += y` element-wise.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `x += bias` for each `bias.len()`-sized row of `x`.
pub fn add_bias_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_inplace(row, bias);
    }
}

/// `x *= s` element-wise.
pub fn scale_inplace(x: &mut [f32], s: f32) {
    for v in x.iter_mut() {
        *v *= s;
    }
}

/// Numerically stable softmax in place.
pub fn softmax_inplace(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}
