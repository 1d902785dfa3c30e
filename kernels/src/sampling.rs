//! The vocabulary-wide passes of sampling, vectorized for the CPU at hand: the largest logit, and
//! softmax weights `exp((l - max) / t)` with the sums of fixed-size blocks of them (so a draw finds
//! its block first and scans only that one). Over 150k-262k tokens per sequence per step these
//! passes are what a temperature request costs beyond greedy decoding.
use crate::cpu;
use crate::dense::exp_f32;

/// The largest value of `x` (-inf for an empty slice; NaNs are ignored).
pub fn max_f32(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = cpu::avx512_vnni() {
        let _ = t;
        // SAFETY: the token proves AVX-512 F/BW/VL were detected on this CPU.
        return unsafe { max_avx512(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = cpu::avx2() {
        let _ = t;
        // SAFETY: the token proves AVX2 and FMA were detected on this CPU.
        return unsafe { max_avx2(x) };
    }
    max_body(x)
}

/// Fills `weights` with `exp((logits[i] - max) * inv_t)` (exactly 0 where the logit is -inf, so a
/// masked token can never be drawn) and `blocks` with the sum of each `block` weights.
pub fn softmax_weights(
    logits: &[f32],
    max: f32,
    inv_t: f32,
    block: usize,
    weights: &mut Vec<f32>,
    blocks: &mut Vec<f32>,
) {
    let block = block.max(1);
    weights.clear();
    weights.resize(logits.len(), 0.0);
    blocks.clear();
    blocks.reserve(logits.len().div_ceil(block));
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = cpu::avx512_vnni() {
        let _ = t;
        // SAFETY: the token proves AVX-512 F/BW/VL were detected on this CPU.
        return unsafe { weights_avx512(logits, max, inv_t, block, weights, blocks) };
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = cpu::avx2() {
        let _ = t;
        // SAFETY: the token proves AVX2 and FMA were detected on this CPU.
        return unsafe { weights_avx2(logits, max, inv_t, block, weights, blocks) };
    }
    weights_body(logits, max, inv_t, block, weights, blocks)
}

#[inline(always)]
fn max_body(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(chunks.remainder()) {
        m = if v > m { v } else { m };
    }
    m
}

#[inline(always)]
fn weights_body(
    logits: &[f32],
    max: f32,
    inv_t: f32,
    block: usize,
    weights: &mut [f32],
    blocks: &mut Vec<f32>,
) {
    for (w, l) in weights.chunks_mut(block).zip(logits.chunks(block)) {
        for (w, &l) in w.iter_mut().zip(l) {
            let e = exp_f32((l - max) * inv_t);
            *w = if l == f32::NEG_INFINITY { 0.0 } else { e };
        }
        // Sixteen partial sums keep the addition vectorized.
        let mut acc = [0.0f32; 16];
        let mut chunks = w.chunks_exact(16);
        for c in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += x;
            }
        }
        blocks.push(acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>());
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn max_avx2(x: &[f32]) -> f32 {
    max_body(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn max_avx512(x: &[f32]) -> f32 {
    max_body(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weights_avx2(
    logits: &[f32],
    max: f32,
    inv_t: f32,
    block: usize,
    weights: &mut [f32],
    blocks: &mut Vec<f32>,
) {
    weights_body(logits, max, inv_t, block, weights, blocks)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn weights_avx512(
    logits: &[f32],
    max: f32,
    inv_t: f32,
    block: usize,
    weights: &mut [f32],
    blocks: &mut Vec<f32>,
) {
    weights_body(logits, max, inv_t, block, weights, blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_match_plain_math_on_every_level() {
        let logits: Vec<f32> = (0..5003)
            .map(|i| {
                if i % 97 == 0 {
                    f32::NEG_INFINITY
                } else {
                    ((i * 7919) % 1013) as f32 * 0.013 - 6.0
                }
            })
            .collect();
        let want_max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max_f32(&logits), want_max);
        assert_eq!(max_body(&logits), want_max);
        assert_eq!(max_f32(&[]), f32::NEG_INFINITY);
        let (mut w, mut b) = (Vec::new(), Vec::new());
        softmax_weights(&logits, want_max, 1.0 / 0.8, 1000, &mut w, &mut b);
        assert_eq!(b.len(), 6);
        for (i, (&l, &got)) in logits.iter().zip(&w).enumerate() {
            let want = if l == f32::NEG_INFINITY {
                0.0
            } else {
                (((l - want_max) / 0.8) as f64).exp()
            };
            assert!(
                (got as f64 - want).abs() <= 1e-5 * want.max(1e-30),
                "{i}: {got} vs {want}"
            );
        }
        for (k, &s) in b.iter().enumerate() {
            let want: f64 = w[k * 1000..((k + 1) * 1000).min(w.len())]
                .iter()
                .map(|&x| x as f64)
                .sum();
            assert!((s as f64 - want).abs() < 1e-4 * want.max(1.0), "block {k}");
        }
    }
}
