//! The shared decoder-only transformer: token embedding, N blocks of (RMSNorm → attention with GQA and
//! RoPE over the paged cache → optional post-norm → residual; RMSNorm → gated MLP → optional post-norm
//! → residual), final RMSNorm and output head. Architectures differ only in the [`ModelConfig`] and the
//! optional tensors they carry (see [`crate::arch`]).
use crate::batch::{Batch, StepLogits};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::kv_cache::{KvCache, KvCacheShape};
use crate::weights::{load_vector, Matrix};
use crate::Result;
use inhaus_kernels::attention::{paged_attention, write_kv, AttnParams};
use inhaus_kernels::ops::{
    add_bias_rows, add_inplace, gelu_tanh_mul, rms_norm, rms_norm_inplace, rope_angles, rope_apply,
    silu_mul, RopeStyle,
};
use inhaus_kernels::quantize::AlignedBytes;
use std::sync::Mutex;

/// The gate activation of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    GeluTanh,
    Silu,
}

/// Per-layer attention settings (Gemma 3 interleaves sliding-window and global layers).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerSpec {
    pub rope_base: f32,
    pub window: Option<usize>,
}

/// Everything about an architecture's shape and numerics that the forward needs.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context_len: usize,
    pub rms_eps: f32,
    /// Embeddings are multiplied by this (Gemma: √hidden).
    pub embed_scale: Option<f32>,
    pub rope_style: RopeStyle,
    pub rope_dims: usize,
    pub rope_freq_scale: f32,
    pub attn_scale: f32,
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
    pub activation: Activation,
    pub layers: Vec<LayerSpec>,
}

impl ModelConfig {
    /// The KV cache shape for this model with `num_blocks` blocks of `block_size` tokens.
    pub fn kv_shape(&self, block_size: usize, num_blocks: usize) -> KvCacheShape {
        KvCacheShape {
            n_layers: self.n_layers,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            block_size,
            num_blocks,
        }
    }
}

struct LayerWeights {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: Matrix,
    w_up: Matrix,
    w_down: Matrix,
    post_ffn_norm: Option<Vec<f32>>,
}

/// Reusable buffers of one forward (kept between steps to avoid re-allocating).
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: AlignedBytes,
}

fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..n]
}

/// A loaded decoder model. `forward` is `&self`: the weights are shared, the KV cache is the caller's.
pub struct Transformer {
    pub config: ModelConfig,
    tok_embd: Matrix,
    layers: Vec<LayerWeights>,
    output_norm: Vec<f32>,
    output: Matrix,
    scratch: Mutex<Scratch>,
}

fn optional_vector(file: &GgufFile, name: &str) -> Result<Option<Vec<f32>>> {
    if file.has_tensor(name) {
        load_vector(file, name).map(Some)
    } else {
        Ok(None)
    }
}

impl Transformer {
    /// Loads the weights named as llama.cpp names them (`blk.N.attn_q.weight`, ...).
    pub fn load(file: &GgufFile, config: ModelConfig) -> Result<Self> {
        let tok_embd = Matrix::load(file, "token_embd.weight")?;
        let output = if file.has_tensor("output.weight") {
            Matrix::load(file, "output.weight")?
        } else {
            tok_embd.clone()
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let t = |n: &str| format!("blk.{i}.{n}");
            layers.push(LayerWeights {
                attn_norm: load_vector(file, &t("attn_norm.weight"))?,
                wq: Matrix::load(file, &t("attn_q.weight"))?,
                wk: Matrix::load(file, &t("attn_k.weight"))?,
                wv: Matrix::load(file, &t("attn_v.weight"))?,
                wo: Matrix::load(file, &t("attn_output.weight"))?,
                bq: optional_vector(file, &t("attn_q.bias"))?,
                bk: optional_vector(file, &t("attn_k.bias"))?,
                bv: optional_vector(file, &t("attn_v.bias"))?,
                q_norm: optional_vector(file, &t("attn_q_norm.weight"))?,
                k_norm: optional_vector(file, &t("attn_k_norm.weight"))?,
                post_attn_norm: optional_vector(file, &t("post_attention_norm.weight"))?,
                ffn_norm: load_vector(file, &t("ffn_norm.weight"))?,
                w_gate: Matrix::load(file, &t("ffn_gate.weight"))?,
                w_up: Matrix::load(file, &t("ffn_up.weight"))?,
                w_down: Matrix::load(file, &t("ffn_down.weight"))?,
                post_ffn_norm: optional_vector(file, &t("post_ffw_norm.weight"))?,
            });
        }
        let output_norm = load_vector(file, "output_norm.weight")?;
        let c = &config;
        let expect = |m: &Matrix, rows: usize, cols: usize, name: &str| {
            if m.rows != rows || m.cols != cols {
                return Err(ModelError::Gguf(format!(
                    "{name} is {}x{}, expected {rows}x{cols}",
                    m.rows, m.cols
                )));
            }
            Ok(())
        };
        expect(&tok_embd, c.vocab, c.hidden, "token_embd")?;
        expect(&output, c.vocab, c.hidden, "output")?;
        for l in &layers {
            expect(&l.wq, c.n_heads * c.head_dim, c.hidden, "attn_q")?;
            expect(&l.wk, c.n_kv_heads * c.head_dim, c.hidden, "attn_k")?;
            expect(&l.wv, c.n_kv_heads * c.head_dim, c.hidden, "attn_v")?;
            expect(&l.wo, c.hidden, c.n_heads * c.head_dim, "attn_output")?;
            expect(&l.w_gate, c.ffn, c.hidden, "ffn_gate")?;
            expect(&l.w_up, c.ffn, c.hidden, "ffn_up")?;
            expect(&l.w_down, c.hidden, c.ffn, "ffn_down")?;
        }
        Ok(Self {
            config,
            tok_embd,
            layers,
            output_norm,
            output,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    fn validate(&self, batch: &Batch, cache: &KvCache) -> Result<()> {
        let c = &self.config;
        let shape = cache.shape;
        if shape.n_layers != c.n_layers
            || shape.n_kv_heads != c.n_kv_heads
            || shape.head_dim != c.head_dim
        {
            return Err(ModelError::InvalidBatch(
                "KV cache shape does not fit the model".into(),
            ));
        }
        batch.validate(c.vocab, shape.block_size, shape.num_blocks)
    }

    /// Runs one step: writes every new token's K/V into its cache slot and returns the wanted logits.
    pub fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<StepLogits> {
        self.validate(batch, cache)?;
        let c = &self.config;
        let n = batch.num_tokens();
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let bs = cache.shape.block_size;

        // Positions, cache slots and attention metadata of every token.
        let positions = batch.positions();
        let slots: Vec<usize> = batch.slots(bs).into_iter().map(|s| s as usize).collect();
        let attn_seqs = batch.attn_seqs();

        // RoPE angles per distinct base, per token.
        let mut bases: Vec<f32> = Vec::new();
        for l in &c.layers {
            if !bases.contains(&l.rope_base) {
                bases.push(l.rope_base);
            }
        }
        let mut tmp = Vec::new();
        let rope_tables: Vec<Vec<(f32, f32)>> = bases
            .iter()
            .map(|&base| {
                let mut table = Vec::with_capacity(n * c.rope_dims / 2);
                for &p in &positions {
                    rope_angles(p, c.rope_dims, base, c.rope_freq_scale, &mut tmp);
                    table.extend_from_slice(&tmp);
                }
                table
            })
            .collect();

        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let sc = &mut *guard;
        let x = sized(&mut sc.x, n * c.hidden);
        let tokens = batch.seqs.iter().flat_map(|s| s.tokens.iter());
        for (row, &t) in x.chunks_exact_mut(c.hidden).zip(tokens) {
            self.tok_embd.as_qmatrix().dequantize_row(t as usize, row);
            if let Some(s) = c.embed_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }

        for (li, (lw, spec)) in self.layers.iter().zip(&c.layers).enumerate() {
            let h = sized(&mut sc.h, n * c.hidden);
            rms_norm(x, &lw.attn_norm, c.rms_eps, h);
            let q = sized(&mut sc.q, n * qd);
            let k = sized(&mut sc.k, n * kvd);
            let v = sized(&mut sc.v, n * kvd);
            lw.wq.matmul(h, n, q, &mut sc.act);
            lw.wk.matmul(h, n, k, &mut sc.act);
            lw.wv.matmul(h, n, v, &mut sc.act);
            if let Some(b) = &lw.bq {
                add_bias_rows(q, b);
            }
            if let Some(b) = &lw.bk {
                add_bias_rows(k, b);
            }
            if let Some(b) = &lw.bv {
                add_bias_rows(v, b);
            }
            if let Some(w) = &lw.q_norm {
                rms_norm_inplace(q, w, c.rms_eps);
            }
            if let Some(w) = &lw.k_norm {
                rms_norm_inplace(k, w, c.rms_eps);
            }
            let table = &rope_tables[bases.iter().position(|&b| b == spec.rope_base).unwrap_or(0)];
            let half = c.rope_dims / 2;
            for t in 0..n {
                let angles = &table[t * half..(t + 1) * half];
                rope_apply(&mut q[t * qd..(t + 1) * qd], hd, angles, c.rope_style);
                rope_apply(&mut k[t * kvd..(t + 1) * kvd], hd, angles, c.rope_style);
            }
            {
                let layer = &mut cache.layers[li];
                write_kv(&mut layer.k, &mut layer.v, &slots, k, v, kvd);
            }
            let attn = sized(&mut sc.attn, n * qd);
            let params = AttnParams {
                n_heads: nh,
                scale: c.attn_scale,
                window: spec.window,
                softcap: c.attn_softcap,
            };
            paged_attention(q, attn, &attn_seqs, &cache.layer(li), &params);
            let o = sized(&mut sc.o, n * c.hidden);
            lw.wo.matmul(attn, n, o, &mut sc.act);
            if let Some(w) = &lw.post_attn_norm {
                rms_norm_inplace(o, w, c.rms_eps);
            }
            add_inplace(x, o);

            let h = sized(&mut sc.h, n * c.hidden);
            rms_norm(x, &lw.ffn_norm, c.rms_eps, h);
            let gate = sized(&mut sc.gate, n * c.ffn);
            let up = sized(&mut sc.up, n * c.ffn);
            lw.w_gate.matmul(h, n, gate, &mut sc.act);
            lw.w_up.matmul(h, n, up, &mut sc.act);
            match c.activation {
                Activation::GeluTanh => gelu_tanh_mul(gate, up),
                Activation::Silu => silu_mul(gate, up),
            }
            let o = sized(&mut sc.o, n * c.hidden);
            lw.w_down.matmul(gate, n, o, &mut sc.act);
            if let Some(w) = &lw.post_ffn_norm {
                rms_norm_inplace(o, w, c.rms_eps);
            }
            add_inplace(x, o);
        }

        // Final norm and output head, only for the rows the caller wants.
        let (seq_rows, wanted) = batch.wanted_rows();
        let r = wanted.len();
        let h = sized(&mut sc.h, r * c.hidden);
        for (dst, &src) in h.chunks_exact_mut(c.hidden).zip(&wanted) {
            dst.copy_from_slice(&x[src * c.hidden..(src + 1) * c.hidden]);
        }
        rms_norm_inplace(h, &self.output_norm, c.rms_eps);
        let mut values = vec![0f32; r * c.vocab];
        if r > 0 {
            self.output.matmul(h, r, &mut values, &mut sc.act);
        }
        if let Some(cap) = c.final_softcap {
            values.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        Ok(StepLogits {
            vocab: c.vocab,
            values,
            seq_rows,
        })
    }
}
