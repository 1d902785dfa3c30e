//! The BERT encoder behind sentence-embedding models (all-MiniLM-L6-v2 and its kin): word + position +
//! token-type embeddings, LayerNorm, then post-LN layers of bidirectional self-attention and a GELU
//! feed-forward. Weights come from a Hugging Face `model.safetensors` (optionally under a `bert.` prefix),
//! the shape from its `config.json`. One batched forward packs the inputs' tokens one after another (no
//! padding): the dense layers run on real tokens only and attention stays inside each input. Pooling is the
//! caller's (see the root crate's `embeddings`). The math is f32 on the CPU ([`inhaus_kernels::dense`]:
//! packed-weight GEMM, fused bias/GELU and residual/LayerNorm, per-(input, head) attention).
use candle_core::{DType, Device, Tensor};
use inhaus_kernels::dense::{self, Act, PackedLinear};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BertError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid BERT config: {0}")]
    Config(String),
    #[error("tensor `{0}` is missing from the model file")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("unsupported BERT model: {0}")]
    Unsupported(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type BertResult<T> = std::result::Result<T, BertError>;

fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}
fn default_type_vocab_size() -> usize {
    2
}

/// The fields of a Hugging Face BERT `config.json` the forward needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl BertConfig {
    pub fn from_json(text: &str) -> BertResult<Self> {
        let c: BertConfig =
            serde_json::from_str(text).map_err(|e| BertError::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn from_file(path: &Path) -> BertResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| BertError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    fn validate(&self) -> BertResult<()> {
        if let Some(t) = &self.model_type {
            if t != "bert" {
                return Err(BertError::Unsupported(format!("model_type `{t}`")));
            }
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(BertError::Config(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.position_embedding_type != "absolute" {
            return Err(BertError::Unsupported(format!(
                "position_embedding_type `{}`",
                self.position_embedding_type
            )));
        }
        Activation::parse(&self.hidden_act)?;
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    /// Exact GELU, `x * Φ(x)` with erf (Hugging Face's `gelu`).
    GeluErf,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> BertResult<Self> {
        match name {
            "gelu" => Ok(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            other => Err(BertError::Unsupported(format!("hidden_act `{other}`"))),
        }
    }

    fn kernel(self) -> Act {
        match self {
            Self::GeluErf => Act::GeluErf,
            Self::GeluTanh => Act::GeluTanh,
            Self::Relu => Act::Relu,
        }
    }
}

/// LayerNorm parameters over the hidden size.
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

struct Layer {
    /// Query, key and value in one `[3 * hidden, hidden]` projection; the query rows (weight and bias) are
    /// pre-scaled by `1/√head_dim`.
    qkv: PackedLinear,
    attn_out: PackedLinear,
    attn_norm: Norm,
    intermediate: PackedLinear,
    output: PackedLinear,
    out_norm: Norm,
}

/// Tensors of the file by name, with the shape checks the loader does.
struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    fn get(&self, name: &str, shape: &[usize]) -> BertResult<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .tensors
            .get(&full)
            .ok_or_else(|| BertError::MissingTensor(full.clone()))?;
        if t.dims() != shape {
            return Err(BertError::Shape {
                name: full,
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The `[out, in]` weight and `out` bias of a PyTorch `Linear`.
    fn linear_parts(&self, name: &str, out: usize, inp: usize) -> BertResult<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.get(&format!("{name}.weight"), &[out, inp])?,
            self.get(&format!("{name}.bias"), &[out])?,
        ))
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> BertResult<PackedLinear> {
        let (w, b) = self.linear_parts(name, out, inp)?;
        pack(&w, &b, out, inp)
    }

    fn layer_norm(&self, name: &str, dim: usize, eps: f64) -> BertResult<Norm> {
        Ok(Norm {
            weight: self.get(&format!("{name}.weight"), &[dim])?,
            bias: self.get(&format!("{name}.bias"), &[dim])?,
            eps: eps as f32,
        })
    }
}

fn pack(w: &[f32], b: &[f32], out: usize, inp: usize) -> BertResult<PackedLinear> {
    PackedLinear::new(w, b, out, inp)
        .ok_or_else(|| BertError::Config(format!("cannot pack a {out}x{inp} linear layer")))
}

/// The token states of one forward, packed: the inputs' tokens one after another, no padding.
pub struct BertOutput {
    /// `[total_tokens, hidden]`, row-major; input `i` is rows `offsets[i] .. offsets[i] + lengths[i]`.
    pub hidden: Vec<f32>,
    pub hidden_size: usize,
    /// Each input's first row.
    pub offsets: Vec<usize>,
    /// Each input's token count.
    pub lengths: Vec<usize>,
}

impl BertOutput {
    /// The `[len * hidden]` states of input `i`, row-major.
    pub fn token_states(&self, i: usize) -> BertResult<&[f32]> {
        match (self.offsets.get(i), self.lengths.get(i)) {
            (Some(&o), Some(&l)) => {
                Ok(&self.hidden[o * self.hidden_size..(o + l) * self.hidden_size])
            }
            _ => Err(BertError::InvalidInput(format!(
                "no input {i} in this batch"
            ))),
        }
    }
}

pub struct BertModel {
    pub config: BertConfig,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    /// Token type 0's row.
    token_type0: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
    act: Act,
    /// Activation buffers kept between forwards (no page faults and zeroing per call); a concurrent
    /// forward that finds them taken allocates its own.
    scratch: Mutex<Scratch>,
}

#[derive(Default)]
struct Scratch {
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    attn: Vec<f32>,
    inter: Vec<f32>,
}

impl BertModel {
    /// Loads `model.safetensors`-style weights with Hugging Face BERT names (`embeddings.*`, `encoder.layer.N.*`),
    /// with or without a `bert.` prefix.
    pub fn load(config: BertConfig, weights_path: &Path, device: &Device) -> BertResult<Self> {
        let bytes = std::fs::read(weights_path).map_err(|source| BertError::Io {
            path: weights_path.display().to_string(),
            source,
        })?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
        Self::from_tensors(config, tensors, device)
    }

    /// Builds the model from named tensors (as [`candle_core::safetensors::load`] gives them). The forward
    /// runs on the CPU whatever the tensors' device.
    pub fn from_tensors(
        config: BertConfig,
        tensors: HashMap<String, Tensor>,
        _device: &Device,
    ) -> BertResult<Self> {
        config.validate()?;
        let act = Activation::parse(&config.hidden_act)?.kernel();
        let prefix = if tensors.contains_key("embeddings.word_embeddings.weight") {
            ""
        } else if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            return Err(BertError::MissingTensor(
                "embeddings.word_embeddings.weight".into(),
            ));
        };
        let w = Weights { tensors, prefix };
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let word_embeddings =
            w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position_embeddings = w.get(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let token_type = w.get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let token_type0 = token_type
            .get(..h)
            .ok_or_else(|| BertError::Config("type_vocab_size is 0".into()))?
            .to_vec();
        let embed_norm = w.layer_norm("embeddings.LayerNorm", h, eps)?;
        let scale = 1.0 / (config.head_dim() as f32).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let ff = config.intermediate_size;
            let (mut qw, mut qb) = w.linear_parts(&format!("{p}.attention.self.query"), h, h)?;
            qw.iter_mut().for_each(|v| *v *= scale);
            qb.iter_mut().for_each(|v| *v *= scale);
            let (kw, kb) = w.linear_parts(&format!("{p}.attention.self.key"), h, h)?;
            let (vw, vb) = w.linear_parts(&format!("{p}.attention.self.value"), h, h)?;
            let qkv_w = [qw, kw, vw].concat();
            let qkv_b = [qb, kb, vb].concat();
            layers.push(Layer {
                qkv: pack(&qkv_w, &qkv_b, 3 * h, h)?,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), ff, h)?,
                output: w.linear(&format!("{p}.output.dense"), h, ff)?,
                out_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Self {
            config,
            word_embeddings,
            position_embeddings,
            token_type0,
            embed_norm,
            layers,
            act,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The most tokens one input may have (the position table's size).
    pub fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Encodes several token sequences at once (token type 0, positions from 0). The sequences are packed
    /// one after another without padding: the dense layers see only real tokens and attention stays within
    /// each sequence, so an input's states do not depend on what it is batched with.
    pub fn forward(&self, inputs: &[&[u32]]) -> BertResult<BertOutput> {
        let lengths: Vec<usize> = inputs.iter().map(|t| t.len()).collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        if longest == 0 {
            return Err(BertError::InvalidInput("empty batch or empty input".into()));
        }
        if longest > self.config.max_position_embeddings {
            return Err(BertError::InvalidInput(format!(
                "{longest} tokens, more than the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let vocab = self.config.vocab_size;
        if let Some(&t) = inputs
            .iter()
            .flat_map(|t| t.iter())
            .find(|&&t| t as usize >= vocab)
        {
            return Err(BertError::InvalidInput(format!(
                "token id {t} is outside the vocabulary of {vocab}"
            )));
        }
        let mut offsets = Vec::with_capacity(inputs.len());
        let mut total = 0;
        for &l in &lengths {
            offsets.push(total);
            total += l;
        }
        let seqs: Vec<(usize, usize)> = offsets
            .iter()
            .copied()
            .zip(lengths.iter().copied())
            .collect();
        let h = self.config.hidden_size;
        let ff = self.config.intermediate_size;
        let heads = self.config.num_attention_heads;

        // Embeddings: word + position + token type 0, then LayerNorm.
        let mut x = vec![0f32; total * h];
        for (toks, &(start, _)) in inputs.iter().zip(&seqs) {
            for (pos, &t) in toks.iter().enumerate() {
                let row = &mut x[(start + pos) * h..(start + pos + 1) * h];
                let word = &self.word_embeddings[t as usize * h..(t as usize + 1) * h];
                let position = &self.position_embeddings[pos * h..(pos + 1) * h];
                for (((o, w), p), y) in row
                    .iter_mut()
                    .zip(word)
                    .zip(position)
                    .zip(&self.token_type0)
                {
                    *o = w + p + y;
                }
            }
        }
        let n = &self.embed_norm;
        dense::layer_norm(&mut x, &n.weight, &n.bias, n.eps);

        // Every buffer below is fully written before it is read (each row is in some sequence).
        let mut fresh = Scratch::default();
        let mut guard = self.scratch.try_lock().ok();
        let Scratch {
            qkv,
            ctx,
            attn,
            inter,
        } = guard.as_deref_mut().unwrap_or(&mut fresh);
        qkv.resize(total * 3 * h, 0.0);
        ctx.resize(total * h, 0.0);
        attn.resize(total * h, 0.0);
        inter.resize(total * ff, 0.0);
        let (qkv, ctx, attn, inter) = (
            &mut qkv[..total * 3 * h],
            &mut ctx[..total * h],
            &mut attn[..total * h],
            &mut inter[..total * ff],
        );
        for l in &self.layers {
            dense::linear(&x, &l.qkv, qkv, &|_, _| {});
            dense::attention(qkv, &seqs, heads, self.config.head_dim(), ctx);
            let x_ref = &x;
            let an = &l.attn_norm;
            dense::linear(ctx, &l.attn_out, attn, &|r0, block| {
                let res = &x_ref[r0 * h..r0 * h + block.len()];
                dense::residual_layer_norm(block, res, &an.weight, &an.bias, an.eps);
            });
            let act = self.act;
            dense::linear(attn, &l.intermediate, inter, &|_, block| {
                dense::apply_activation(block, act)
            });
            let attn_ref = &*attn;
            let on = &l.out_norm;
            dense::linear(inter, &l.output, &mut x, &|r0, block| {
                let res = &attn_ref[r0 * h..r0 * h + block.len()];
                dense::residual_layer_norm(block, res, &on.weight, &on.bias, on.eps);
            });
        }
        Ok(BertOutput {
            hidden: x,
            hidden_size: h,
            offsets,
            lengths,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> BertConfig {
        BertConfig::from_json(
            r#"{"vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 16, "max_position_embeddings": 6, "model_type": "bert"}"#,
        )
        .expect("config")
    }

    /// Deterministic pseudo-random weights with BERT's names and shapes.
    fn tiny_tensors(c: &BertConfig, prefix: &str) -> HashMap<String, Tensor> {
        let mut seed = 1u64;
        let mut rnd = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
                })
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
        };
        let (h, ff) = (c.hidden_size, c.intermediate_size);
        let mut m = HashMap::new();
        let mut put = |name: String, shape: &[usize]| {
            m.insert(format!("{prefix}{name}"), rnd(shape));
        };
        put(
            "embeddings.word_embeddings.weight".into(),
            &[c.vocab_size, h],
        );
        put(
            "embeddings.position_embeddings.weight".into(),
            &[c.max_position_embeddings, h],
        );
        put("embeddings.token_type_embeddings.weight".into(), &[2, h]);
        put("embeddings.LayerNorm.weight".into(), &[h]);
        put("embeddings.LayerNorm.bias".into(), &[h]);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            for n in ["query", "key", "value"] {
                put(format!("{p}.attention.self.{n}.weight"), &[h, h]);
                put(format!("{p}.attention.self.{n}.bias"), &[h]);
            }
            put(format!("{p}.attention.output.dense.weight"), &[h, h]);
            put(format!("{p}.attention.output.dense.bias"), &[h]);
            put(format!("{p}.attention.output.LayerNorm.weight"), &[h]);
            put(format!("{p}.attention.output.LayerNorm.bias"), &[h]);
            put(format!("{p}.intermediate.dense.weight"), &[ff, h]);
            put(format!("{p}.intermediate.dense.bias"), &[ff]);
            put(format!("{p}.output.dense.weight"), &[h, ff]);
            put(format!("{p}.output.dense.bias"), &[h]);
            put(format!("{p}.output.LayerNorm.weight"), &[h]);
            put(format!("{p}.output.LayerNorm.bias"), &[h]);
        }
        m
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn padding_does_not_change_token_states() {
        let c = tiny_config();
        let m =
            BertModel::from_tensors(c.clone(), tiny_tensors(&c, ""), &Device::Cpu).expect("model");
        let a: &[u32] = &[1, 5, 7, 2];
        let b: &[u32] = &[1, 3, 2];
        let alone = m.forward(&[b]).expect("forward");
        let alone_b = alone.token_states(0).expect("b");
        let both = m.forward(&[a, b]).expect("forward");
        assert_eq!(both.hidden.len(), 7 * 8);
        let batched_b = both.token_states(1).expect("b");
        assert_eq!(batched_b.len(), 3 * 8);
        assert!(max_abs_diff(alone_b, batched_b) < 1e-5);
        // And the states do depend on the input (the check above is not vacuous).
        let other = m.forward(&[&[1, 4, 2]]).expect("forward");
        assert!(max_abs_diff(alone_b, other.token_states(0).expect("o")) > 1e-3);
    }

    #[test]
    fn bert_prefix_and_errors() {
        let c = tiny_config();
        let m = BertModel::from_tensors(c.clone(), tiny_tensors(&c, "bert."), &Device::Cpu)
            .expect("prefixed model");
        assert!(matches!(
            m.forward(&[&[1, 2, 3, 4, 5, 6, 7]]),
            Err(BertError::InvalidInput(_))
        ));
        assert!(matches!(
            m.forward(&[&[1, 11]]),
            Err(BertError::InvalidInput(_))
        ));
        assert!(matches!(m.forward(&[]), Err(BertError::InvalidInput(_))));
        let mut t = tiny_tensors(&c, "");
        t.remove("encoder.layer.1.output.dense.bias");
        assert!(matches!(
            BertModel::from_tensors(c.clone(), t, &Device::Cpu),
            Err(BertError::MissingTensor(n)) if n == "encoder.layer.1.output.dense.bias"
        ));
        assert!(matches!(
            BertConfig::from_json(
                r#"{"vocab_size": 1, "hidden_size": 9, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 4, "max_position_embeddings": 4}"#
            ),
            Err(BertError::Config(_))
        ));
    }
}
