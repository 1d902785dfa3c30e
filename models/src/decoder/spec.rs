//! What the candle decoder needs to know about an architecture: shapes, numerics and per-layer
//! attention (RoPE table and sliding window). Filled from a Hugging Face `config.json`
//! ([`super::hf_config`]) or from GGUF metadata; which optional tensors a layer has (biases, q/k norms,
//! post-norms) is read from the weights themselves.

/// The MLP's gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// Exact GELU (`gelu`).
    GeluErf,
}

impl Act {
    /// The activation named as in Hugging Face configs.
    pub fn from_hf(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Self::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Self::GeluTanh,
            "gelu" => Self::GeluErf,
            _ => return None,
        })
    }
}

/// One RoPE table: inverse frequencies of the rotated dimension pairs and the factor cos/sin are
/// scaled by (LongRoPE's attention factor; 1 otherwise).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub inv_freq: Vec<f32>,
    pub attention_factor: f32,
}

/// Attention settings of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerAttn {
    /// Index into [`DecoderSpec::ropes`].
    pub rope: usize,
    /// Sliding window: a query at position p sees keys at positions > p - window.
    pub window: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct DecoderSpec {
    /// Short family name (`llama`, `mistral`, `qwen2`, `qwen3`, `gemma3`, `phi3`).
    pub architecture: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context_len: usize,
    pub rms_eps: f64,
    /// Added to every RMSNorm weight at load time (Gemma's norms scale by `1 + w`).
    pub norm_offset: f64,
    /// Embeddings are multiplied by this (Gemma: √hidden).
    pub embed_scale: Option<f64>,
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub act: Act,
    /// RoPE over adjacent pairs (GGUF's Llama layout) instead of halves (Hugging Face's layout).
    pub rope_interleaved: bool,
    /// Leading dimensions of each head that RoPE rotates (the rest pass through).
    pub rotary_dims: usize,
    pub ropes: Vec<RopeSpec>,
    pub layers: Vec<LayerAttn>,
    pub tied_embeddings: bool,
}

impl DecoderSpec {
    /// Checks the shape fields against each other.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |m: String| Err(m);
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return bad(format!(
                "{} query heads over {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.hidden == 0 || self.head_dim == 0 || self.vocab == 0 || self.ffn == 0 {
            return bad("a zero dimension".into());
        }
        if self.rotary_dims == 0
            || self.rotary_dims > self.head_dim
            || !self.rotary_dims.is_multiple_of(2)
        {
            return bad(format!(
                "{} rotary dimensions of a {}-wide head",
                self.rotary_dims, self.head_dim
            ));
        }
        if self.layers.len() != self.n_layers {
            return bad("per-layer settings do not match the layer count".into());
        }
        for l in &self.layers {
            match self.ropes.get(l.rope) {
                Some(r) if r.inv_freq.len() == self.rotary_dims / 2 => {}
                _ => return bad("a layer's RoPE table does not fit the rotary dimensions".into()),
            }
            if l.window == Some(0) {
                return bad("a sliding window of 0".into());
            }
        }
        if self.context_len == 0 {
            return bad("a context length of 0".into());
        }
        Ok(())
    }
}
