//! The device-generic decoder on candle tensors: the second model backend, for Hugging Face
//! safetensors checkpoints (and, through the same code, any device candle runs on). One batched
//! forward over the engine's [`Batch`] — mixed prefill and decode of several sequences — with the KV
//! cache paged in device tensors ([`PagedKv`]).
//!
//! - [`spec`]: the architecture description; [`hf_config`]: `config.json` into it.
//! - [`rope`]: RoPE frequencies and their scalings.
//! - [`weights`]: safetensors into (fused) device tensors; [`gguf`]: GGUF files, kept quantized.
//! - [`paged_kv`]: the cache; [`attention`]: one sequence's attention over it.
//! - [`host`]: the same step on host buffers, where every projection runs through a packed CPU GEMM.
pub mod attention;
pub mod gguf;
pub mod hf_config;
pub mod host;
pub mod paged_kv;
pub mod rope;
pub mod spec;
pub mod weights;

use crate::batch::{Batch, StepLogits};
use crate::error::ModelError;
use crate::Result;
use attention::{seq_attention, AttnParams, SeqAttn};
use candle_core::{DType, Device, Tensor, D};
use inhaus_kernels::attention::{try_paged_attention, AttnSeq};
pub use paged_kv::PagedKv;
pub use spec::{Act, DecoderSpec};
use std::path::Path;
use weights::{load_hf, safetensors_files, DecoderWeights, SafetensorsSource};

fn backend(e: candle_core::Error) -> ModelError {
    ModelError::Backend(e.to_string())
}

/// A loaded candle decoder. `forward` is `&self`: the weights are shared, the cache is the caller's.
pub struct CandleDecoder {
    pub spec: DecoderSpec,
    /// The weights' dtype.
    pub dtype: DType,
    /// The activations' (and KV cache's) dtype: f32 where the projections run through inhaus's
    /// packed CPU GEMMs (bf16 weights included), else the weights' dtype.
    pub act: DType,
    pub device: Device,
    weights: DecoderWeights,
    /// Host copies of the vectors, where every projection is packed: the step then runs on host
    /// buffers ([`host`]).
    host: Option<host::HostWeights>,
}

/// RMSNorm in f32 over the last dimension, back in `dtype`.
fn norm(x: &Tensor, w: &Tensor, eps: f64, dtype: DType) -> candle_core::Result<Tensor> {
    candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?, w, eps as f32)?.to_dtype(dtype)
}

/// `scale` as the dtype stores it (Hugging Face multiplies by a scalar tensor of the model's dtype).
fn in_dtype(scale: f64, dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => half::bf16::from_f64(scale).to_f64(),
        DType::F16 => half::f16::from_f64(scale).to_f64(),
        _ => scale,
    }
}

/// Attention of every sequence of the step through inhaus's own kernel, where the cache is host
/// memory in f32 (the CPU path): `[tokens, heads·head_dim]`; `None` elsewhere.
fn host_attention(
    q: &Tensor,
    seqs: &[SeqAttn],
    cache: &PagedKv,
    layer: usize,
    p: &AttnParams,
) -> candle_core::Result<Option<Tensor>> {
    let (n, nh, hd) = q.dims3()?;
    if !q.device().is_cpu() || q.dtype() != DType::F32 {
        return Ok(None);
    }
    let qv = q.flatten_all()?.to_vec1::<f32>()?;
    let attn_seqs: Vec<AttnSeq> = seqs
        .iter()
        .map(|s| AttnSeq {
            token_start: s.row,
            n_tokens: s.n_tokens,
            first_pos: s.start_pos,
            block_table: s.block_table,
        })
        .collect();
    let params = inhaus_kernels::attention::AttnParams {
        n_heads: p.n_heads,
        scale: p.scale as f32,
        window: p.window,
        softcap: p.softcap.map(|c| c as f32),
    };
    let mut out = vec![0f32; n * nh * hd];
    let done = cache.with_host_layer(layer, |kv| {
        try_paged_attention(&qv, &mut out, &attn_seqs, kv, &params)
    })?;
    match done {
        None => Ok(None),
        Some(Err(e)) => Err(candle_core::Error::Msg(e.to_string())),
        Some(Ok(())) => Tensor::from_vec(out, (n, nh * hd), q.device()).map(Some),
    }
}

impl CandleDecoder {
    /// Loads a Hugging Face folder (`config.json` and safetensors) in `dtype` onto `device`.
    pub fn load_hf(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = dir.join("config.json");
        let text = std::fs::read_to_string(&config).map_err(|source| ModelError::Io {
            path: config.display().to_string(),
            source,
        })?;
        let files = safetensors_files(dir).map_err(ModelError::Unsupported)?;
        let src = SafetensorsSource::open(&files, dtype, device).map_err(backend)?;
        let spec = hf_config::spec_from_hf_config(&text, src.has("lm_head.weight"))
            .map_err(ModelError::Unsupported)?;
        let weights = load_hf(&src, &spec).map_err(backend)?;
        let host = host::HostWeights::new(&weights).map_err(backend)?;
        let act = if weights::packed_on(device, dtype) {
            DType::F32
        } else {
            dtype
        };
        Ok(Self {
            spec,
            dtype,
            act,
            device: device.clone(),
            weights,
            host,
        })
    }

    /// Loads the GGUF file at `path` (its metadata read into `meta`) onto `device`: quantized
    /// matrices through candle's quantized matmul, activations in f32.
    pub fn load_gguf(meta: &crate::GgufFile, path: &Path, device: &Device) -> Result<Self> {
        let (spec, weights) = gguf::load(meta, path, device)?;
        Ok(Self {
            spec,
            dtype: DType::F32,
            act: DType::F32,
            device: device.clone(),
            weights,
            host: None,
        })
    }

    /// Bytes one KV block of `block_size` tokens takes across all layers.
    pub fn kv_bytes_per_block(&self, block_size: usize) -> usize {
        let s = &self.spec;
        PagedKv::bytes_per_block(s.n_layers, s.n_kv_heads, s.head_dim, block_size, self.act)
    }

    pub fn new_cache(&self, block_size: usize, num_blocks: usize) -> Result<PagedKv> {
        let s = &self.spec;
        PagedKv::new(
            s.n_layers,
            s.n_kv_heads,
            s.head_dim,
            block_size,
            num_blocks,
            self.act,
            &self.device,
        )
        .map_err(backend)
    }

    /// cos and sin (`[tokens, rotary_dims / 2]`, the activations' dtype) of every RoPE table.
    fn rope_tables(&self, positions: &Tensor) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        self.spec
            .ropes
            .iter()
            .map(|r| {
                let n = r.inv_freq.len();
                let inv = Tensor::from_slice(&r.inv_freq, (1, n), &self.device)?;
                let freqs = positions.broadcast_mul(&inv)?;
                let f = r.attention_factor as f64;
                let cos = (freqs.cos()? * f)?.to_dtype(self.act)?;
                let sin = (freqs.sin()? * f)?.to_dtype(self.act)?;
                Ok((cos, sin))
            })
            .collect()
    }

    /// RoPE on `x` (`[tokens, heads, head_dim]`).
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let s = &self.spec;
        let rot = |x: &Tensor| -> candle_core::Result<Tensor> {
            if s.rope_interleaved {
                let x = x.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
                candle_nn::rotary_emb::rope_i(&x, cos, sin)?
                    .squeeze(0)?
                    .transpose(0, 1)
            } else {
                candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?.contiguous()?, cos, sin)?
                    .squeeze(0)
            }
        };
        if s.rotary_dims == s.head_dim {
            rot(x)?.contiguous()
        } else {
            let head = rot(&x.narrow(D::Minus1, 0, s.rotary_dims)?)?;
            let tail = x.narrow(D::Minus1, s.rotary_dims, s.head_dim - s.rotary_dims)?;
            Tensor::cat(&[&head, &tail], D::Minus1)?.contiguous()
        }
    }

    /// Runs one step: writes every new token's K/V into its cache slot and returns the wanted logits.
    pub fn forward(&self, batch: &Batch, cache: &mut PagedKv) -> Result<StepLogits> {
        let s = &self.spec;
        if cache.n_layers() != s.n_layers
            || cache.n_kv_heads != s.n_kv_heads
            || cache.head_dim != s.head_dim
        {
            return Err(ModelError::InvalidBatch(
                "KV cache shape does not fit the model".into(),
            ));
        }
        batch.validate(s.vocab, cache.block_size, cache.num_blocks)?;
        self.forward_checked(batch, cache).map_err(backend)
    }

    fn forward_checked(&self, batch: &Batch, cache: &PagedKv) -> candle_core::Result<StepLogits> {
        if let (Some(hw), false) = (&self.host, batch.seqs.is_empty()) {
            let scale = self
                .spec
                .embed_scale
                .map(|s| in_dtype(s, self.dtype) as f32);
            return host::forward(&self.spec, &self.weights, hw, scale, batch, cache);
        }
        let s = &self.spec;
        let dev = &self.device;
        let n = batch.num_tokens();
        let (hd, nh, nkv) = (s.head_dim, s.n_heads, s.n_kv_heads);
        let (qd, kvd) = (nh * hd, nkv * hd);
        if n == 0 {
            return Ok(StepLogits {
                vocab: s.vocab,
                values: Vec::new(),
                seq_rows: vec![(0, 0); batch.seqs.len()],
            });
        }

        let mut ids = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        let mut seqs = Vec::with_capacity(batch.seqs.len());
        for c in &batch.seqs {
            seqs.push(SeqAttn {
                row: ids.len(),
                n_tokens: c.tokens.len(),
                start_pos: c.start_pos,
                block_table: c.block_table,
            });
            ids.extend_from_slice(c.tokens);
            positions.extend((c.start_pos..c.start_pos + c.tokens.len()).map(|p| p as f32));
        }
        let slots = Tensor::from_vec(batch.slots(cache.block_size), n, dev)?;
        let positions = Tensor::from_vec(positions, (n, 1), dev)?;
        let ropes = self.rope_tables(&positions)?;
        let w = &self.weights;
        let mut x = w.embed(&ids, dev)?.to_dtype(self.act)?;
        if let Some(scale) = s.embed_scale {
            x = (x * in_dtype(scale, self.dtype))?;
        }
        for (li, (lw, la)) in w.layers.iter().zip(&s.layers).enumerate() {
            let h = norm(&x, &lw.attn_norm, s.rms_eps, self.act)?;
            let qkv = lw.qkv.forward(&h)?;
            let mut q = qkv.narrow(1, 0, qd)?.contiguous()?.reshape((n, nh, hd))?;
            let mut k = qkv
                .narrow(1, qd, kvd)?
                .contiguous()?
                .reshape((n, nkv, hd))?;
            let v = qkv
                .narrow(1, qd + kvd, kvd)?
                .contiguous()?
                .reshape((n, nkv, hd))?;
            if let Some(wn) = &lw.q_norm {
                q = norm(&q, wn, s.rms_eps, self.act)?;
            }
            if let Some(wn) = &lw.k_norm {
                k = norm(&k, wn, s.rms_eps, self.act)?;
            }
            let (cos, sin) = &ropes[la.rope];
            let q = self.rope(&q, cos, sin)?;
            let k = self.rope(&k, cos, sin)?;
            cache.write(li, &slots, &k, &v)?;
            let params = AttnParams {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                scale: s.attn_scale,
                softcap: s.attn_softcap,
                window: la.window,
            };
            let attn = match host_attention(&q, &seqs, cache, li, &params)? {
                Some(a) => a,
                None => {
                    let outs = seqs
                        .iter()
                        .map(|sq| {
                            let qs = q.narrow(0, sq.row, sq.n_tokens)?;
                            seq_attention(&qs, sq, cache, li, &params)
                        })
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    Tensor::cat(&outs, 0)?.to_dtype(self.act)?
                }
            };
            let mut o = lw.o.forward(&attn)?;
            if let Some(wn) = &lw.post_attn_norm {
                o = norm(&o, wn, s.rms_eps, self.act)?;
            }
            x = (x + o)?;

            let h = norm(&x, &lw.ffn_norm, s.rms_eps, self.act)?;
            let gu = lw.gate_up.forward(&h)?;
            let gate = gu.narrow(1, 0, s.ffn)?;
            let up = gu.narrow(1, s.ffn, s.ffn)?;
            let gate = match s.act {
                Act::Silu => gate.silu()?,
                Act::GeluTanh => gate.gelu()?,
                Act::GeluErf => gate.gelu_erf()?,
            };
            let mut o = lw.down.forward(&(gate * up)?)?;
            if let Some(wn) = &lw.post_ffn_norm {
                o = norm(&o, wn, s.rms_eps, self.act)?;
            }
            x = (x + o)?;
        }

        // Final norm and output head, only for the rows the caller wants.
        let (seq_rows, wanted) = batch.wanted_rows();
        let mut values = Vec::new();
        if !wanted.is_empty() {
            let rows: Vec<u32> = wanted.iter().map(|&r| r as u32).collect();
            let rows = Tensor::from_vec(rows, wanted.len(), dev)?;
            let h = norm(
                &x.index_select(&rows, 0)?,
                &w.final_norm,
                s.rms_eps,
                self.act,
            )?;
            let mut logits = w.lm_head.forward(&h)?.to_dtype(DType::F32)?;
            if let Some(cap) = s.final_softcap {
                logits = ((logits / cap)?.tanh()? * cap)?;
            }
            values = logits.flatten_all()?.to_vec1::<f32>()?;
        }
        Ok(StepLogits {
            vocab: s.vocab,
            values,
            seq_rows,
        })
    }
}
