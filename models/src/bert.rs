//! The BERT encoder behind sentence-embedding models (all-MiniLM-L6-v2 and its kin): word + position +
//! token-type embeddings, LayerNorm, then post-LN layers of bidirectional self-attention and a GELU
//! feed-forward. Weights come from a Hugging Face `model.safetensors` (optionally under a `bert.` prefix),
//! the shape from its `config.json`. One batched forward: inputs padded to the longest, with an attention
//! mask so that padding never changes a real token's state. Pooling is the caller's (see the root crate's
//! `embeddings`). The math runs on candle tensors (f32).
use candle_core::{DType, Device, Tensor, D};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
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

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::GeluErf => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
        }
    }
}

/// `y = x Wᵀ + b` with the PyTorch `[out, in]` weight, kept as a transposed view.
struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    /// `x`: `[batch, seq, in]`, multiplied as one `[batch * seq, in]` matrix.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, i) = x.dims3()?;
        let out = self.weight_t.dim(1)?;
        x.reshape((b * s, i))?
            .matmul(&self.weight_t)?
            .broadcast_add(&self.bias)?
            .reshape((b, s, out))
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Normalizes over the last dimension (biased variance, as `torch.nn.LayerNorm`).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        centered
            .broadcast_mul(&inv)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// Tensors of the file by name, with the shape checks the loader does.
struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    fn get(&self, name: &str, shape: &[usize]) -> BertResult<Tensor> {
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
        Ok(t.to_dtype(DType::F32)?)
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> BertResult<Linear> {
        Ok(Linear {
            weight_t: self.get(&format!("{name}.weight"), &[out, inp])?.t()?,
            bias: self.get(&format!("{name}.bias"), &[out])?,
        })
    }

    fn layer_norm(&self, name: &str, dim: usize, eps: f64) -> BertResult<LayerNorm> {
        Ok(LayerNorm {
            weight: self.get(&format!("{name}.weight"), &[dim])?,
            bias: self.get(&format!("{name}.bias"), &[dim])?,
            eps,
        })
    }
}

/// The token states of one batched forward.
pub struct BertOutput {
    /// `[batch, padded_len, hidden]`; rows past an input's length are padding (defined but meaningless).
    pub hidden: Tensor,
    /// `[batch, padded_len]`, 1.0 on real tokens and 0.0 on padding.
    pub mask: Tensor,
    /// Each input's token count.
    pub lengths: Vec<usize>,
}

impl BertOutput {
    /// The `[len, hidden]` states of input `i`, padding cut off.
    pub fn token_states(&self, i: usize) -> BertResult<Tensor> {
        let len = *self
            .lengths
            .get(i)
            .ok_or_else(|| BertError::InvalidInput(format!("no input {i} in this batch")))?;
        Ok(self.hidden.get(i)?.narrow(0, 0, len)?)
    }
}

pub struct BertModel {
    pub config: BertConfig,
    device: Device,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    act: Activation,
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

    /// Builds the model from named tensors (as [`candle_core::safetensors::load`] gives them).
    pub fn from_tensors(
        config: BertConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> BertResult<Self> {
        config.validate()?;
        let act = Activation::parse(&config.hidden_act)?;
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
        let token_type_embeddings = w.get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let embed_norm = w.layer_norm("embeddings.LayerNorm", h, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let ff = config.intermediate_size;
            layers.push(Layer {
                query: w.linear(&format!("{p}.attention.self.query"), h, h)?,
                key: w.linear(&format!("{p}.attention.self.key"), h, h)?,
                value: w.linear(&format!("{p}.attention.self.value"), h, h)?,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), ff, h)?,
                output: w.linear(&format!("{p}.output.dense"), h, ff)?,
                out_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Self {
            config,
            device: device.clone(),
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embed_norm,
            layers,
            act,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The most tokens one input may have (the position table's size).
    pub fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Encodes several token sequences at once (token type 0, positions from 0), padded to the longest with
    /// id 0 and masked so that padding is invisible to the real tokens.
    pub fn forward(&self, inputs: &[&[u32]]) -> BertResult<BertOutput> {
        let lengths: Vec<usize> = inputs.iter().map(|t| t.len()).collect();
        let batch = inputs.len();
        let seq = lengths.iter().copied().max().unwrap_or(0);
        if batch == 0 || seq == 0 {
            return Err(BertError::InvalidInput("empty batch or empty input".into()));
        }
        if seq > self.config.max_position_embeddings {
            return Err(BertError::InvalidInput(format!(
                "{seq} tokens, more than the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let vocab = self.config.vocab_size;
        let mut ids = vec![0u32; batch * seq];
        let mut mask = vec![0f32; batch * seq];
        for (b, toks) in inputs.iter().enumerate() {
            for (i, &t) in toks.iter().enumerate() {
                if t as usize >= vocab {
                    return Err(BertError::InvalidInput(format!(
                        "token id {t} is outside the vocabulary of {vocab}"
                    )));
                }
                ids[b * seq + i] = t;
                mask[b * seq + i] = 1.0;
            }
        }
        let dev = &self.device;
        let ids = Tensor::from_vec(ids, (batch * seq,), dev)?;
        let mask = Tensor::from_vec(mask, (batch, seq), dev)?;

        // Embeddings: word + position + token type 0.
        let h = self.config.hidden_size;
        let words = self
            .word_embeddings
            .index_select(&ids, 0)?
            .reshape((batch, seq, h))?;
        let positions = self.position_embeddings.narrow(0, 0, seq)?;
        let token_type = self.token_type_embeddings.narrow(0, 0, 1)?;
        let x = words
            .broadcast_add(&positions)?
            .broadcast_add(&token_type)?;
        let mut x = self.embed_norm.forward(&x)?;

        // Additive key mask [batch, 1, 1, seq]: 0 on real tokens, a large negative on padding, whose
        // softmax weight is then exactly 0.
        let bias = ((mask.ones_like()? - &mask)? * (f32::MIN as f64 / 2.0))?
            .reshape((batch, 1, 1, seq))?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, &bias)?;
        }
        Ok(BertOutput {
            hidden: x,
            mask,
            lengths,
        })
    }

    fn layer_forward(&self, l: &Layer, x: &Tensor, bias: &Tensor) -> BertResult<Tensor> {
        let (batch, seq, h) = x.dims3()?;
        let heads = self.config.num_attention_heads;
        let hd = self.config.head_dim();
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, seq, heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(l.query.forward(x)?)?;
        let k = split(l.key.forward(x)?)?;
        let v = split(l.value.forward(x)?)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(bias)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let e = scores.broadcast_sub(&max)?.exp()?;
        let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, seq, h))?;
        let attn = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + x)?)?;
        let ff = self.act.apply(&l.intermediate.forward(&attn)?)?;
        Ok(l.out_norm.forward(&(l.output.forward(&ff)? + &attn)?)?)
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

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .expect("sub")
            .abs()
            .expect("abs")
            .flatten_all()
            .expect("flat")
            .max(0)
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar")
    }

    #[test]
    fn padding_does_not_change_token_states() {
        let c = tiny_config();
        let m =
            BertModel::from_tensors(c.clone(), tiny_tensors(&c, ""), &Device::Cpu).expect("model");
        let a: &[u32] = &[1, 5, 7, 2];
        let b: &[u32] = &[1, 3, 2];
        let alone_b = m
            .forward(&[b])
            .expect("forward")
            .token_states(0)
            .expect("b");
        let both = m.forward(&[a, b]).expect("forward");
        assert_eq!(both.hidden.dims(), &[2, 4, 8]);
        let batched_b = both.token_states(1).expect("b");
        assert_eq!(batched_b.dims(), &[3, 8]);
        assert!(max_abs_diff(&alone_b, &batched_b) < 1e-5);
        // And the states do depend on the input (the check above is not vacuous).
        let other = m
            .forward(&[&[1, 4, 2]])
            .expect("forward")
            .token_states(0)
            .expect("o");
        assert!(max_abs_diff(&alone_b, &other) > 1e-3);
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
