//! Attention of one sequence's new tokens over its context in the paged cache (GQA, causal and
//! sliding-window masks, optional soft-capping), computed in f32 on the model's device.
use super::paged_kv::PagedKv;
use candle_core::{DType, Device, Tensor};

/// One sequence's part of a step.
pub struct SeqAttn<'a> {
    /// Row of its first token in the step's token rows.
    pub row: usize,
    pub n_tokens: usize,
    pub start_pos: usize,
    pub block_table: &'a [u32],
}

pub struct AttnParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
    pub softcap: Option<f64>,
    pub window: Option<usize>,
}

/// The first context position any token of the chunk sees.
fn first_key(s: &SeqAttn, window: Option<usize>) -> usize {
    match window {
        Some(w) => (s.start_pos + 1).saturating_sub(w),
        None => 0,
    }
}

/// The additive mask of a chunk's queries over keys `lo..=last`: 0 where a query sees the key,
/// -inf elsewhere; `None` when every query sees every key (a single token).
fn mask(
    s: &SeqAttn,
    lo: usize,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    if s.n_tokens == 1 {
        return Ok(None);
    }
    let n_keys = s.start_pos + s.n_tokens - lo;
    let mut m = vec![0f32; s.n_tokens * n_keys];
    for i in 0..s.n_tokens {
        let pos = s.start_pos + i;
        let from = match window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        for (j, v) in m[i * n_keys..(i + 1) * n_keys].iter_mut().enumerate() {
            let key = lo + j;
            if key > pos || key < from {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(m, (s.n_tokens, n_keys), device).map(Some)
}

/// The cache slots of positions `lo..end` of a sequence.
fn context_slots(
    s: &SeqAttn,
    lo: usize,
    block_size: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let end = s.start_pos + s.n_tokens;
    let slots: Vec<u32> = (lo..end)
        .map(|p| s.block_table[p / block_size] * block_size as u32 + (p % block_size) as u32)
        .collect();
    Tensor::from_vec(slots, end - lo, device)
}

/// Attention output `[n_tokens, heads·head_dim]` (f32) of one sequence, given its queries
/// `q` (`[n_tokens, heads, head_dim]`, RoPE applied) and the cache of `layer` (with the chunk's own
/// keys and values already written).
pub fn seq_attention(
    q: &Tensor,
    s: &SeqAttn,
    cache: &PagedKv,
    layer: usize,
    p: &AttnParams,
) -> candle_core::Result<Tensor> {
    let device = q.device();
    let lo = first_key(s, p.window);
    let slots = context_slots(s, lo, cache.block_size, device)?;
    let (k, v) = cache.gather(layer, &slots)?;
    let n_keys = slots.dim(0)?;
    let (t, g) = (s.n_tokens, p.n_heads / p.n_kv_heads);
    // [kv_heads, keys, head_dim]
    let k = k.to_dtype(DType::F32)?.transpose(0, 1)?.contiguous()?;
    let v = v.to_dtype(DType::F32)?.transpose(0, 1)?.contiguous()?;
    // Heads sharing a KV head are consecutive: [kv_heads, group·tokens, head_dim].
    let q = q
        .to_dtype(DType::F32)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((p.n_kv_heads, g * t, p.head_dim))?;
    let mut scores = (q.matmul(&k.t()?)? * p.scale)?;
    if let Some(cap) = p.softcap {
        scores = ((scores / cap)?.tanh()? * cap)?;
    }
    if let Some(m) = mask(s, lo, p.window, device)? {
        scores = scores
            .reshape((p.n_kv_heads, g, t, n_keys))?
            .broadcast_add(&m)?
            .reshape((p.n_kv_heads, g * t, n_keys))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs
        .matmul(&v)?
        .reshape((p.n_heads, t, p.head_dim))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((t, p.n_heads * p.head_dim))
}
