//! GGUF files on the candle decoder: the quantized matrices stay quantized as candle `QTensor`s (its
//! quantized matmuls run on the CPU and on CUDA), norms and biases are dequantized to f32. This is
//! how a GGUF model runs on a GPU; on the CPU the own-kernel [`crate::Transformer`] is the fast path.
//!
//! The architecture is read from the metadata by the same code as the own-kernel path
//! ([`crate::arch::config_from_gguf`]) and translated into a [`DecoderSpec`]. Tensor names are
//! llama.cpp's (`blk.N.attn_q.weight`, ...). Two of the converter's conventions carry over: Llama's
//! q/k rows are permuted for RoPE over adjacent pairs (so the spec rotates interleaved pairs), and
//! Gemma's norm weights already hold `1 + w` (so no offset is added).
use super::backend;
use super::rope::{rope_spec, RopeScaling};
use super::spec::{Act, DecoderSpec, LayerAttn};
use super::weights::{DecoderWeights, Embed, LayerWeights, Proj};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::transformer::{Activation, ModelConfig};
use crate::Result;
use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use inhaus_kernels::ops::RopeStyle;
use std::path::Path;
use std::sync::Arc;

/// The candle decoder's description of the architecture in `config` (read from GGUF metadata).
pub fn spec_from_config(c: &ModelConfig, tied_embeddings: bool) -> Result<DecoderSpec> {
    let mut bases: Vec<f32> = Vec::new();
    let mut layers = Vec::with_capacity(c.layers.len());
    for l in &c.layers {
        let rope = match bases.iter().position(|&b| b == l.rope_base) {
            Some(i) => i,
            None => {
                bases.push(l.rope_base);
                bases.len() - 1
            }
        };
        layers.push(LayerAttn {
            rope,
            window: l.window,
        });
    }
    let scaling = if c.rope_freq_scale == 1.0 {
        RopeScaling::None
    } else {
        RopeScaling::Linear {
            factor: 1.0 / c.rope_freq_scale as f64,
        }
    };
    let ropes = bases
        .iter()
        .map(|&b| rope_spec(b as f64, c.rope_dims, &scaling))
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(ModelError::Unsupported)?;
    let spec = DecoderSpec {
        architecture: c.architecture.clone(),
        n_layers: c.n_layers,
        hidden: c.hidden,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        ffn: c.ffn,
        vocab: c.vocab,
        context_len: c.context_len,
        rms_eps: c.rms_eps as f64,
        norm_offset: 0.0,
        embed_scale: c.embed_scale.map(f64::from),
        attn_scale: c.attn_scale as f64,
        attn_softcap: c.attn_softcap.map(f64::from),
        final_softcap: c.final_softcap.map(f64::from),
        act: match c.activation {
            Activation::Silu => Act::Silu,
            Activation::GeluTanh => Act::GeluTanh,
        },
        rope_interleaved: c.rope_style == RopeStyle::Interleaved,
        rotary_dims: c.rope_dims,
        ropes,
        layers,
        tied_embeddings,
    };
    spec.validate().map_err(ModelError::Unsupported)?;
    Ok(spec)
}

/// Tensors of one GGUF file, by llama.cpp name, read onto `device`.
struct GgufSource {
    content: gguf_file::Content,
    file: std::fs::File,
    device: Device,
    path: String,
}

impl GgufSource {
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn qtensor(&mut self, name: &str) -> candle_core::Result<QTensor> {
        self.content.tensor(&mut self.file, name, &self.device)
    }

    /// A 1-D tensor (norm weight, bias) as f32.
    fn vector(&mut self, name: &str, len: usize) -> candle_core::Result<Tensor> {
        let t = self.qtensor(name)?.dequantize(&self.device)?;
        if t.dims() != [len] {
            candle_core::bail!("{name} has shape {:?}, expected [{len}]", t.dims());
        }
        t.to_dtype(DType::F32)
    }

    fn opt_vector(&mut self, name: &str, len: usize) -> candle_core::Result<Option<Tensor>> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A `[rows, cols]` matrix (plus its bias where the file has one) as a quantized projection.
    fn proj(&mut self, name: &str, rows: usize, cols: usize) -> candle_core::Result<Proj> {
        let q = self.qtensor(&format!("{name}.weight"))?;
        if q.shape().dims() != [rows, cols] {
            candle_core::bail!(
                "{name}.weight has shape {:?}, expected [{rows}, {cols}]",
                q.shape().dims()
            );
        }
        let b = self.opt_vector(&format!("{name}.bias"), rows)?;
        Ok(Proj::Quant {
            w: QMatMul::from_qtensor(q)?,
            b,
        })
    }
}

/// Loads the GGUF file at `path` (whose metadata `meta` has read) onto `device` (activations in
/// f32).
pub fn load(
    meta: &GgufFile,
    path: &Path,
    device: &Device,
) -> Result<(DecoderSpec, DecoderWeights)> {
    let shown = path.display().to_string();
    let config = crate::arch::config_from_gguf(meta)?;
    let spec = spec_from_config(&config, !meta.has_tensor("output.weight"))?;
    let mut file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: shown.clone(),
        source,
    })?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| ModelError::Gguf(format!("{shown}: {e}")))?;
    let mut src = GgufSource {
        content,
        file,
        device: device.clone(),
        path: shown,
    };
    let weights = load_weights(&mut src, &spec)
        .map_err(|e| ModelError::Gguf(format!("{}: {}", src.path, backend(e))))?;
    Ok((spec, weights))
}

fn load_weights(src: &mut GgufSource, c: &DecoderSpec) -> candle_core::Result<DecoderWeights> {
    let (qd, kvd, h) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.hidden);
    let embd = Arc::new(src.qtensor("token_embd.weight")?);
    if embd.shape().dims() != [c.vocab, h] {
        candle_core::bail!(
            "token_embd.weight has shape {:?}, expected [{}, {h}]",
            embd.shape().dims(),
            c.vocab
        );
    }
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let p = |n: &str| format!("blk.{i}.{n}");
        let qkv = Proj::Stacked(vec![
            src.proj(&p("attn_q"), qd, h)?,
            src.proj(&p("attn_k"), kvd, h)?,
            src.proj(&p("attn_v"), kvd, h)?,
        ]);
        let gate_up = Proj::Stacked(vec![
            src.proj(&p("ffn_gate"), c.ffn, h)?,
            src.proj(&p("ffn_up"), c.ffn, h)?,
        ]);
        layers.push(LayerWeights {
            attn_norm: src.vector(&p("attn_norm.weight"), h)?,
            qkv,
            o: src.proj(&p("attn_output"), h, qd)?,
            q_norm: src.opt_vector(&p("attn_q_norm.weight"), c.head_dim)?,
            k_norm: src.opt_vector(&p("attn_k_norm.weight"), c.head_dim)?,
            post_attn_norm: src.opt_vector(&p("post_attention_norm.weight"), h)?,
            ffn_norm: src.vector(&p("ffn_norm.weight"), h)?,
            gate_up,
            down: src.proj(&p("ffn_down"), h, c.ffn)?,
            post_ffn_norm: src.opt_vector(&p("post_ffw_norm.weight"), h)?,
        });
    }
    let final_norm = src.vector("output_norm.weight", h)?;
    let lm_head = if c.tied_embeddings {
        Proj::Quant {
            w: QMatMul::from_arc(embd.clone())?,
            b: None,
        }
    } else {
        src.proj("output", c.vocab, h)?
    };
    Ok(DecoderWeights {
        embed: Embed::Quant(embd),
        layers,
        final_norm,
        lm_head,
    })
}
