//! The candle decoder's weights, read from Hugging Face safetensors (one file or an indexed set of
//! shards, memory-mapped while they are read) into tensors of the chosen dtype on the chosen device.
//! Q/K/V and gate/up projections are fused into one matrix each, so a layer runs two input
//! matmuls instead of five.
use super::spec::DecoderSpec;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor};
use inhaus_kernels::dense::PackedLinear;
use inhaus_kernels::dense_bf16::PackedBf16;
use std::path::Path;
use std::sync::Arc;

/// A weight matrix applied as `x · Wᵀ (+ b)`. On the CPU, f32 and bf16 weights run through inhaus's
/// own packed GEMMs (AVX-512/AVX2, AVX512-BF16 for bf16; every thread streaming its share of the
/// weights also for a single row) on f32 activations; anything else through candle.
pub enum Proj {
    Candle(candle_nn::Linear),
    Packed(PackedLinear),
    PackedBf16(PackedBf16),
    /// A GGUF matrix kept quantized (candle's quantized matmul), plus its f32 bias.
    Quant {
        w: QMatMul,
        b: Option<Tensor>,
    },
    /// Several projections of the same input, their outputs side by side (a GGUF file's Q, K and V,
    /// which may be of different quantizations).
    Stacked(Vec<Proj>),
}

/// Whether weights of `dtype` on `device` run through inhaus's packed GEMMs (with f32 activations).
pub fn packed_on(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && matches!(dtype, DType::F32 | DType::BF16)
}

impl Proj {
    pub fn new(w: Tensor, b: Option<Tensor>) -> candle_core::Result<Self> {
        if !packed_on(w.device(), w.dtype()) {
            return Ok(Self::Candle(candle_nn::Linear::new(w, b)));
        }
        let (n, k) = w.dims2()?;
        let bv = match b {
            Some(b) => b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; n],
        };
        let bad = || candle_core::Error::Msg(format!("a {n}x{k} weight with {} biases", bv.len()));
        if w.dtype() == DType::BF16 {
            let wv: Vec<u16> = w
                .flatten_all()?
                .to_vec1::<half::bf16>()?
                .into_iter()
                .map(half::bf16::to_bits)
                .collect();
            drop(w);
            return PackedBf16::new(&wv, &bv, n, k)
                .map(Self::PackedBf16)
                .ok_or_else(bad);
        }
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        drop(w);
        PackedLinear::new(&wv, &bv, n, k)
            .map(Self::Packed)
            .ok_or_else(bad)
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Candle(l) => {
                let d = l.weight().dims();
                [
                    d.first().copied().unwrap_or(0),
                    d.get(1).copied().unwrap_or(0),
                ]
            }
            Self::Packed(p) => [p.out_features(), p.in_features()],
            Self::PackedBf16(p) => [p.out_features(), p.in_features()],
            Self::Quant { w, .. } => {
                let d = match w {
                    QMatMul::QTensor(q) => q.shape().dims(),
                    QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dims(),
                };
                [
                    d.first().copied().unwrap_or(0),
                    d.get(1).copied().unwrap_or(0),
                ]
            }
            Self::Stacked(parts) => [
                parts.iter().map(|p| p.dims()[0]).sum(),
                parts.first().map_or(0, |p| p.dims()[1]),
            ],
        }
    }

    /// `x · Wᵀ (+ b)` for rows of f32 in host memory; only the packed GEMMs take them.
    pub fn forward_host(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        let mut out = Vec::new();
        self.forward_host_into(x, &mut out)?;
        Ok(out)
    }

    /// [`Self::forward_host`] into `out` (resized to fit; its capacity is reused across calls).
    pub fn forward_host_into(&self, x: &[f32], out: &mut Vec<f32>) -> candle_core::Result<()> {
        let [n, k] = self.dims();
        if k == 0 || !x.len().is_multiple_of(k) {
            candle_core::bail!("a {k}-wide weight applied to {} values", x.len());
        }
        out.clear();
        out.resize(x.len() / k * n, 0.0);
        match self {
            Self::Packed(p) => inhaus_kernels::dense::linear_wide(x, p, out),
            Self::PackedBf16(p) => inhaus_kernels::dense_bf16::linear_bf16(x, p, out),
            _ => candle_core::bail!("a projection that is not packed on the host"),
        }
        Ok(())
    }

    /// `x · Wᵀ (+ b)`; the packed GEMMs take and give f32.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let [n, k] = match self {
            Self::Candle(l) => return l.forward(x),
            Self::Quant { w, b } => {
                let y = w.forward(&x.to_dtype(DType::F32)?)?;
                return match b {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                };
            }
            Self::Stacked(parts) => {
                let outs = parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                return Tensor::cat(&outs, candle_core::D::Minus1);
            }
            _ => self.dims(),
        };
        let mut shape = x.dims().to_vec();
        if shape.last() != Some(&k) {
            candle_core::bail!("a {k}-wide weight applied to {shape:?}");
        }
        let xv = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let out = self.forward_host(&xv)?;
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        Tensor::from_vec(out, shape, x.device())
    }
}

/// The token embeddings: a tensor, or the rows of the (tied) output head where that is packed, so
/// that the matrix is held once.
pub enum Embed {
    Tensor(Tensor),
    HeadRows,
    /// A GGUF file's quantized embeddings, rows dequantized on lookup.
    Quant(Arc<QTensor>),
}

pub struct LayerWeights {
    pub attn_norm: Tensor,
    /// Q, K and V stacked: `[(heads + 2·kv_heads)·head_dim, hidden]`.
    pub qkv: Proj,
    pub o: Proj,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub post_attn_norm: Option<Tensor>,
    pub ffn_norm: Tensor,
    /// Gate and up stacked: `[2·ffn, hidden]`.
    pub gate_up: Proj,
    pub down: Proj,
    pub post_ffn_norm: Option<Tensor>,
}

/// Reads row `j` of a packed matrix into a buffer.
type RowReader<'a> = dyn Fn(usize, &mut [f32]) + 'a;

pub struct DecoderWeights {
    pub embed: Embed,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Tensor,
    pub lm_head: Proj,
}

impl DecoderWeights {
    /// The embeddings of `ids` (`[ids.len(), hidden]`), in the weights' dtype, or f32 where they are
    /// the rows of a packed head.
    pub fn embed(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        let (k, n, row): (usize, usize, &RowReader) = match (&self.embed, &self.lm_head) {
            (Embed::Tensor(t), _) => return t.index_select(&Tensor::new(ids, device)?, 0),
            (Embed::Quant(q), _) => {
                if let Some(&id) = ids.iter().find(|&&id| id as usize >= q.shape().dims()[0]) {
                    candle_core::bail!("token id {id} outside the embeddings");
                }
                return q.embedding(&Tensor::new(ids, device)?);
            }
            (Embed::HeadRows, Proj::Candle(l)) => {
                return l.weight().index_select(&Tensor::new(ids, device)?, 0)
            }
            (Embed::HeadRows, Proj::Quant { .. } | Proj::Stacked(_)) => {
                candle_core::bail!("the output head holds no embedding rows")
            }
            (Embed::HeadRows, Proj::Packed(p)) => (p.in_features(), p.out_features(), &|j, out| {
                p.weight_row(j, out)
            }),
            (Embed::HeadRows, Proj::PackedBf16(p)) => {
                (p.in_features(), p.out_features(), &|j, out| {
                    p.weight_row(j, out)
                })
            }
        };
        let mut out = vec![0f32; ids.len() * k];
        for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(k)) {
            if id as usize >= n {
                candle_core::bail!("token id {id} outside the embeddings");
            }
            row(id as usize, dst);
        }
        Tensor::from_vec(out, (ids.len(), k), device)
    }
}

/// The safetensors files of a Hugging Face folder: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` names.
pub fn safetensors_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|e| {
        format!(
            "{}: neither model.safetensors nor model.safetensors.index.json ({e})",
            dir.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("{}: no weight_map", index.display()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    let paths: Vec<_> = files.iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
        return Err(format!("shard {} is missing", missing.display()));
    }
    Ok(paths)
}

/// Tensors of one checkpoint, by Hugging Face name.
pub struct SafetensorsSource {
    st: MmapedSafetensors,
    dtype: DType,
    device: Device,
}

impl SafetensorsSource {
    pub fn open(
        files: &[std::path::PathBuf],
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        // SAFETY: the files are mapped read-only for the duration of loading, and every tensor is
        // copied out of the mapping before it is dropped; as for every memory-mapped model file,
        // the files must not be truncated or rewritten while the server starts.
        let st = unsafe { MmapedSafetensors::multi(files)? };
        Ok(Self {
            st,
            dtype,
            device: device.clone(),
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    /// The tensor `name` in the model's dtype, on its device.
    pub fn get(&self, name: &str) -> candle_core::Result<Tensor> {
        self.st.load(name, &self.device)?.to_dtype(self.dtype)
    }

    /// A norm weight in f32 (norms run in f32), plus `offset` (Gemma's `1 + w`).
    fn norm(&self, name: &str, offset: f64) -> candle_core::Result<Tensor> {
        let w = self.st.load(name, &self.device)?.to_dtype(DType::F32)?;
        if offset == 0.0 {
            Ok(w)
        } else {
            w.affine(1.0, offset)
        }
    }

    fn opt_norm(&self, name: &str, offset: f64) -> candle_core::Result<Option<Tensor>> {
        if self.has(name) {
            self.norm(name, offset).map(Some)
        } else {
            Ok(None)
        }
    }

    fn opt(&self, name: &str) -> candle_core::Result<Option<Tensor>> {
        if self.has(name) {
            self.get(name).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Checks a tensor's shape.
fn expect(t: &Tensor, dims: &[usize], name: &str) -> candle_core::Result<()> {
    if t.dims() != dims {
        candle_core::bail!("{name} has shape {:?}, expected {dims:?}", t.dims());
    }
    Ok(())
}

/// Checks a projection's `[out, in]` shape.
fn expect_proj(p: &Proj, dims: &[usize], name: &str) -> candle_core::Result<()> {
    let got = p.dims();
    if got[..] != *dims {
        candle_core::bail!("{name} has shape {got:?}, expected {dims:?}");
    }
    Ok(())
}

/// Stacks matrices (and their biases, zeros where one has none) along the output dimension.
fn stacked(src: &SafetensorsSource, names: &[String], rows: &[usize]) -> candle_core::Result<Proj> {
    let mut ws = Vec::with_capacity(names.len());
    let mut bs = Vec::with_capacity(names.len());
    for n in names {
        ws.push(src.get(&format!("{n}.weight"))?);
        bs.push(src.opt(&format!("{n}.bias"))?);
    }
    let w = Tensor::cat(&ws, 0)?;
    let b = if bs.iter().any(Option::is_some) {
        let parts = bs
            .into_iter()
            .zip(rows)
            .map(|(b, &r)| match b {
                Some(b) => Ok(b),
                None => Tensor::zeros(r, src.dtype, &src.device),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Some(Tensor::cat(&parts, 0)?)
    } else {
        None
    };
    Proj::new(w, b)
}

fn single(src: &SafetensorsSource, name: &str) -> candle_core::Result<Proj> {
    let w = src.get(&format!("{name}.weight"))?;
    let b = src.opt(&format!("{name}.bias"))?;
    Proj::new(w, b)
}

/// Loads every weight of a decoder with `spec` from Hugging Face tensor names.
pub fn load_hf(src: &SafetensorsSource, spec: &DecoderSpec) -> candle_core::Result<DecoderWeights> {
    let c = spec;
    let (qd, kvd) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let off = c.norm_offset;
    let gemma = c.architecture == "gemma3";
    let embed = src.get("model.embed_tokens.weight")?;
    expect(&embed, &[c.vocab, c.hidden], "model.embed_tokens.weight")?;
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        let qkv = if src.has(&p("self_attn.qkv_proj.weight")) {
            single(src, &p("self_attn.qkv_proj"))?
        } else {
            stacked(
                src,
                &[
                    p("self_attn.q_proj"),
                    p("self_attn.k_proj"),
                    p("self_attn.v_proj"),
                ],
                &[qd, kvd, kvd],
            )?
        };
        let gate_up = if src.has(&p("mlp.gate_up_proj.weight")) {
            single(src, &p("mlp.gate_up_proj"))?
        } else {
            stacked(
                src,
                &[p("mlp.gate_proj"), p("mlp.up_proj")],
                &[c.ffn, c.ffn],
            )?
        };
        let (post_attn_norm, ffn_norm, post_ffn_norm) = if gemma {
            (
                Some(src.norm(&p("post_attention_layernorm.weight"), off)?),
                src.norm(&p("pre_feedforward_layernorm.weight"), off)?,
                Some(src.norm(&p("post_feedforward_layernorm.weight"), off)?),
            )
        } else {
            (
                None,
                src.norm(&p("post_attention_layernorm.weight"), off)?,
                None,
            )
        };
        let l = LayerWeights {
            attn_norm: src.norm(&p("input_layernorm.weight"), off)?,
            qkv,
            o: single(src, &p("self_attn.o_proj"))?,
            q_norm: src.opt_norm(&p("self_attn.q_norm.weight"), off)?,
            k_norm: src.opt_norm(&p("self_attn.k_norm.weight"), off)?,
            post_attn_norm,
            ffn_norm,
            gate_up,
            down: single(src, &p("mlp.down_proj"))?,
            post_ffn_norm,
        };
        expect_proj(&l.qkv, &[qd + 2 * kvd, c.hidden], &p("qkv"))?;
        expect_proj(&l.o, &[c.hidden, qd], &p("self_attn.o_proj.weight"))?;
        expect_proj(&l.gate_up, &[2 * c.ffn, c.hidden], &p("gate/up"))?;
        expect_proj(&l.down, &[c.hidden, c.ffn], &p("mlp.down_proj.weight"))?;
        for (n, t) in [("q_norm", &l.q_norm), ("k_norm", &l.k_norm)] {
            if let Some(t) = t {
                expect(t, &[c.head_dim], &p(n))?;
            }
        }
        layers.push(l);
    }
    let final_norm = src.norm("model.norm.weight", off)?;
    let (embed, lm_head) = if c.tied_embeddings || !src.has("lm_head.weight") {
        (Embed::HeadRows, Proj::new(embed, None)?)
    } else {
        let h = src.get("lm_head.weight")?;
        expect(&h, &[c.vocab, c.hidden], "lm_head.weight")?;
        (Embed::Tensor(embed), Proj::new(h, None)?)
    };
    Ok(DecoderWeights {
        embed,
        layers,
        final_norm,
        lm_head,
    })
}
