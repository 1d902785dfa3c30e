//! The candle decoder's step on the CPU when every projection runs through inhaus's packed GEMMs
//! (f32 or bf16 weights, f32 activations): the same computation as [`super::CandleDecoder`]'s tensor
//! forward, on plain buffers, with the element-wise work (RMSNorm, RoPE, the gated activation,
//! residuals) split over the kernels' compute pool instead of allocating a tensor per op and
//! running it on a second thread pool. Numerics follow Hugging Face's (f32 RMSNorm, RoPE from the
//! checkpoint's inverse frequencies, exact SiLU, tanh- or erf-GELU), so the fixtures' tolerances hold.
use super::paged_kv::PagedKv;
use super::spec::{Act, DecoderSpec};
use super::weights::{DecoderWeights, Proj};
use crate::batch::{Batch, StepLogits};
use candle_core::{DType, Device, Tensor};
use inhaus_kernels::attention::try_paged_attention;
use inhaus_kernels::dense::{gated_into, Gate};
use inhaus_kernels::ops::{rope_apply, RopeStyle};
use inhaus_kernels::pool::parallel_for;
use std::sync::Mutex;

/// Rows of the feed-forward block computed together (see [`forward`]): one GEMM row block, which
/// keeps the gate/up buffer small (64 × 2·ffn f32: 2.5 MB for a 0.5B model) at no cost in speed.
const FFN_ROWS: usize = 64;

/// A layer's vectors as host buffers (norm weights, already offset).
pub struct HostLayer {
    attn_norm: Vec<f32>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    post_ffn_norm: Option<Vec<f32>>,
}

/// The host copies of a decoder's vectors, made at load when every projection is packed.
pub struct HostWeights {
    layers: Vec<HostLayer>,
    final_norm: Vec<f32>,
    /// The step's buffers, kept from step to step (see [`Scratch`]).
    scratch: Mutex<Scratch>,
}

/// A step's intermediate buffers. They are reused from step to step (each grows to the largest
/// step seen and stays): fresh buffers every step, whose sizes change with the batch, leave the
/// allocator's heap fragmented, and a long serving run's resident set then grows well past the
/// weights and the KV cache.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
    rows: Vec<f32>,
}

/// `buf` as `len` zeros, keeping its capacity.
fn zeroed(buf: &mut Vec<f32>, len: usize) -> &mut Vec<f32> {
    buf.clear();
    buf.resize(len, 0.0);
    buf
}

/// A tensor's values as f32 on the host.
fn host(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

fn host_opt(t: &Option<Tensor>) -> candle_core::Result<Option<Vec<f32>>> {
    t.as_ref().map(host).transpose()
}

impl HostWeights {
    /// `Some` when every projection of `w` is packed (so the whole step can run on host buffers).
    pub fn new(w: &DecoderWeights) -> candle_core::Result<Option<Self>> {
        let packed = |p: &Proj| matches!(p, Proj::Packed(_) | Proj::PackedBf16(_));
        let all = packed(&w.lm_head)
            && w.layers
                .iter()
                .all(|l| packed(&l.qkv) && packed(&l.o) && packed(&l.gate_up) && packed(&l.down));
        if !all {
            return Ok(None);
        }
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(HostLayer {
                    attn_norm: host(&l.attn_norm)?,
                    q_norm: host_opt(&l.q_norm)?,
                    k_norm: host_opt(&l.k_norm)?,
                    post_attn_norm: host_opt(&l.post_attn_norm)?,
                    ffn_norm: host(&l.ffn_norm)?,
                    post_ffn_norm: host_opt(&l.post_ffn_norm)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Some(Self {
            layers,
            final_norm: host(&w.final_norm)?,
            scratch: Mutex::new(Scratch::default()),
        }))
    }
}

/// Runs `f(row_index, row)` over the `width`-wide rows of `x` on the compute pool.
fn par_rows(x: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    // A few rows per task: enough to split a prefill over the threads, one task for a decode.
    const ROWS: usize = 16;
    let tasks: Vec<Mutex<&mut [f32]>> = x.chunks_mut(width * ROWS).map(Mutex::new).collect();
    parallel_for(tasks.len(), |t| {
        let mut chunk = tasks[t].lock().unwrap_or_else(|e| e.into_inner());
        for (i, row) in chunk.chunks_exact_mut(width).enumerate() {
            f(t * ROWS + i, row);
        }
    });
}

/// `x += y`, row by row on the compute pool.
fn add_rows(x: &mut [f32], y: &[f32], width: usize) {
    par_rows(x, width, |r, row| {
        for (a, b) in row.iter_mut().zip(&y[r * width..(r + 1) * width]) {
            *a += b;
        }
    });
}

/// `1 / sqrt(mean(row²) + eps)` in f32, as Hugging Face's RMSNorm computes it.
fn rms_scale(row: &[f32], eps: f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for i in 0..16 {
            lanes[i] += c[i] * c[i];
        }
    }
    let mean = (lanes.iter().sum::<f32>() + rest) / row.len() as f32;
    1.0 / (mean + eps).sqrt()
}

/// RMSNorm of one row into `out`.
fn rms_row(row: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let inv = rms_scale(row, eps);
    for ((o, v), g) in out.iter_mut().zip(row).zip(w) {
        *o = v * inv * g;
    }
}

/// RMSNorm of each `w.len()`-wide row of `x` in place.
fn rms_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    par_rows(x, w.len(), |_, row| {
        let inv = rms_scale(row, eps);
        for (v, g) in row.iter_mut().zip(w) {
            *v *= inv * g;
        }
    });
}

/// The step, with `weights`' projections and `hw`'s vectors, the cache in host memory.
pub fn forward(
    spec: &DecoderSpec,
    weights: &DecoderWeights,
    hw: &HostWeights,
    embed_scale: Option<f32>,
    batch: &Batch,
    cache: &PagedKv,
) -> candle_core::Result<StepLogits> {
    let s = spec;
    let n = batch.num_tokens();
    let (hd, nh, nkv) = (s.head_dim, s.n_heads, s.n_kv_heads);
    let (qd, kvd, hid) = (nh * hd, nkv * hd, s.hidden);
    let eps = s.rms_eps as f32;
    let dev = Device::Cpu;

    let ids: Vec<u32> = batch.seqs.iter().flat_map(|c| c.tokens).copied().collect();
    let positions = batch.positions();
    let seqs = batch.attn_seqs();
    let slots = Tensor::from_vec(batch.slots(cache.block_size), n, &dev)?;
    // cos/sin of every RoPE table at every position, scaled by the table's attention factor.
    let angles: Vec<Vec<(f32, f32)>> = s
        .ropes
        .iter()
        .map(|r| {
            let f = r.attention_factor;
            positions
                .iter()
                .flat_map(|&p| {
                    r.inv_freq.iter().map(move |&inv| {
                        let t = p as f32 * inv;
                        (t.cos() * f, t.sin() * f)
                    })
                })
                .collect()
        })
        .collect();
    let style = if s.rope_interleaved {
        RopeStyle::Interleaved
    } else {
        RopeStyle::Neox
    };
    let half = s.rotary_dims / 2;

    // A poisoned lock only means an earlier step panicked: the buffers are overwritten anyway.
    let mut guard = hw.scratch.lock().unwrap_or_else(|e| e.into_inner());
    let Scratch {
        x,
        h,
        qkv,
        q,
        k,
        v,
        attn,
        o,
        gu,
        act,
        rows,
    } = &mut *guard;
    let embedded = weights
        .embed(&ids, &dev)?
        .flatten_all()?
        .to_dtype(DType::F32)?;
    x.clear();
    x.extend_from_slice(&embedded.to_vec1::<f32>()?);
    drop(embedded);
    if let Some(scale) = embed_scale {
        x.iter_mut().for_each(|v| *v *= scale);
    }
    zeroed(h, n * hid);
    for (li, (lw, hl)) in weights.layers.iter().zip(&hw.layers).enumerate() {
        let la = &s.layers[li];
        par_rows(h, hid, |r, out| {
            rms_row(&x[r * hid..(r + 1) * hid], &hl.attn_norm, eps, out)
        });
        lw.qkv.forward_host_into(h, qkv)?;
        let w3 = qd + 2 * kvd;
        let (q, k, v) = (zeroed(q, n * qd), zeroed(k, n * kvd), zeroed(v, n * kvd));
        for (t, row) in qkv.chunks_exact(w3).enumerate() {
            q[t * qd..(t + 1) * qd].copy_from_slice(&row[..qd]);
            k[t * kvd..(t + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
            v[t * kvd..(t + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
        }
        if let Some(w) = &hl.q_norm {
            rms_inplace(q, w, eps);
        }
        if let Some(w) = &hl.k_norm {
            rms_inplace(k, w, eps);
        }
        let table = &angles[la.rope];
        par_rows(q, qd, |t, row| {
            rope_apply(row, hd, &table[t * half..(t + 1) * half], style)
        });
        par_rows(k, kvd, |t, row| {
            rope_apply(row, hd, &table[t * half..(t + 1) * half], style)
        });
        let kt = Tensor::from_slice(k, (n, nkv, hd), &dev)?;
        let vt = Tensor::from_slice(v, (n, nkv, hd), &dev)?;
        cache.write(li, &slots, &kt, &vt)?;
        drop((kt, vt));
        let params = inhaus_kernels::attention::AttnParams {
            n_heads: nh,
            scale: s.attn_scale as f32,
            window: la.window,
            softcap: s.attn_softcap.map(|c| c as f32),
        };
        let attn = zeroed(attn, n * qd);
        let done =
            cache.with_host_layer(li, |kv| try_paged_attention(q, attn, &seqs, kv, &params))?;
        match done {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(candle_core::Error::Msg(e.to_string())),
            None => candle_core::bail!("the host step needs an f32 KV cache in host memory"),
        }
        lw.o.forward_host_into(attn, o)?;
        if let Some(w) = &hl.post_attn_norm {
            rms_inplace(o, w, eps);
        }
        add_rows(x, o, hid);

        par_rows(h, hid, |r, out| {
            rms_row(&x[r * hid..(r + 1) * hid], &hl.ffn_norm, eps, out)
        });
        // The feed-forward block [`FFN_ROWS`] rows at a time: a long prefill's gate/up outputs
        // (rows × 2·ffn f32: 80 MB for 2,048 tokens of a 0.5B model) would otherwise be the step's
        // largest buffer. Rows are independent, so the result is the same.
        let ffn = s.ffn;
        for r0 in (0..n).step_by(FFN_ROWS) {
            let r1 = (r0 + FFN_ROWS).min(n);
            lw.gate_up.forward_host_into(&h[r0 * hid..r1 * hid], gu)?;
            let act = zeroed(act, (r1 - r0) * ffn);
            par_rows(act, ffn, |r, out| {
                let row = &gu[r * 2 * ffn..(r + 1) * 2 * ffn];
                let (gate, up) = row.split_at(ffn);
                gated(s.act, gate, up, out);
            });
            lw.down.forward_host_into(act, o)?;
            if let Some(w) = &hl.post_ffn_norm {
                rms_inplace(o, w, eps);
            }
            add_rows(&mut x[r0 * hid..r1 * hid], o, hid);
        }
    }

    let (seq_rows, wanted) = batch.wanted_rows();
    let mut values = Vec::new();
    if !wanted.is_empty() {
        let hw_rows = zeroed(rows, wanted.len() * hid);
        for (dst, &src) in hw_rows.chunks_exact_mut(hid).zip(&wanted) {
            rms_row(&x[src * hid..(src + 1) * hid], &hw.final_norm, eps, dst);
        }
        values = weights.lm_head.forward_host(hw_rows)?;
        if let Some(cap) = s.final_softcap {
            let cap = cap as f32;
            values.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
        }
    }
    Ok(StepLogits {
        vocab: s.vocab,
        values,
        seq_rows,
    })
}

/// `out = act(gate) * up`, element by element.
fn gated(act: Act, gate: &[f32], up: &[f32], out: &mut [f32]) {
    let g = match act {
        Act::Silu => Gate::Silu,
        Act::GeluTanh => Gate::GeluTanh,
        Act::GeluErf => Gate::GeluErf,
    };
    gated_into(gate, up, out, g);
}
