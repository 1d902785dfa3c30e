//! The candle decoder's weights, read from Hugging Face safetensors (one file or an indexed set of
//! shards, memory-mapped while they are read) into tensors of the chosen dtype on the chosen device.
//! Q/K/V and gate/up projections are fused into one matrix each, so a layer runs two input
//! matmuls instead of five.
use super::spec::DecoderSpec;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor};
use std::path::Path;

/// A weight matrix applied as `x · Wᵀ (+ b)`.
pub struct Proj(candle_nn::Linear);

impl Proj {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(x)
    }
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

pub struct DecoderWeights {
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Tensor,
    pub lm_head: Tensor,
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
    Ok(Proj(candle_nn::Linear::new(w, b)))
}

fn single(src: &SafetensorsSource, name: &str) -> candle_core::Result<Proj> {
    let w = src.get(&format!("{name}.weight"))?;
    let b = src.opt(&format!("{name}.bias"))?;
    Ok(Proj(candle_nn::Linear::new(w, b)))
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
        expect(l.qkv.0.weight(), &[qd + 2 * kvd, c.hidden], &p("qkv"))?;
        expect(
            l.o.0.weight(),
            &[c.hidden, qd],
            &p("self_attn.o_proj.weight"),
        )?;
        expect(l.gate_up.0.weight(), &[2 * c.ffn, c.hidden], &p("gate/up"))?;
        expect(
            l.down.0.weight(),
            &[c.hidden, c.ffn],
            &p("mlp.down_proj.weight"),
        )?;
        for (n, t) in [("q_norm", &l.q_norm), ("k_norm", &l.k_norm)] {
            if let Some(t) = t {
                expect(t, &[c.head_dim], &p(n))?;
            }
        }
        layers.push(l);
    }
    let final_norm = src.norm("model.norm.weight", off)?;
    let lm_head = if c.tied_embeddings || !src.has("lm_head.weight") {
        embed.clone()
    } else {
        let h = src.get("lm_head.weight")?;
        expect(&h, &[c.vocab, c.hidden], "lm_head.weight")?;
        h
    };
    Ok(DecoderWeights {
        embed,
        layers,
        final_norm,
        lm_head,
    })
}
