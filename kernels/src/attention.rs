//! Attention over a paged KV cache (CPU).
//!
//! Keys and values of one layer live in fixed-size blocks: slot `b * block_size + i` holds position
//! `block_size * j + i` of a sequence whose block table has `b` at index `j`. Each slot stores
//! `n_kv_heads * head_dim` f16 values. Work is split over (query token, KV head); the query heads of a
//! group share one pass over the keys and values. No reduction depends on the batch, so a sequence's
//! result is the same whoever shares the step with it.
//!
//! Tasks write their heads of the output through a shared raw pointer, so [`paged_attention`] first
//! checks every length, index and block id it will use, and that the sequences' query tokens do not
//! overlap (two tasks writing one row would race); arguments that fail panic with the reason
//! ([`try_paged_attention`] returns it instead).
use crate::dot::{axpy_f32, dot_f32, f16_to_f32};
use crate::flash_attention::{flash_tile, FlashBufs, QT};
use crate::ops::softmax_inplace;
use crate::pool::parallel_for;
use half::f16;

/// An element type of a KV cache: f16 (the own-kernel GGUF path, as llama.cpp keeps it) or f32
/// (the candle decoder's CPU cache).
pub trait KvElem: Copy + Send + Sync + 'static {
    /// `src` widened into `dst` (same length).
    fn to_f32(src: &[Self], dst: &mut [f32]);
}

impl KvElem for f16 {
    fn to_f32(src: &[Self], dst: &mut [f32]) {
        f16_to_f32(src, dst)
    }
}

impl KvElem for f32 {
    fn to_f32(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
}

/// One layer's K and V storage, borrowed.
#[derive(Clone, Copy)]
pub struct KvLayer<'a, T = f16> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// The query tokens of one sequence in this step.
#[derive(Clone, Copy, Debug)]
pub struct AttnSeq<'a> {
    /// Index of the sequence's first query token among the step's tokens.
    pub token_start: usize,
    /// Number of query tokens (prefill chunk length, or 1 when decoding).
    pub n_tokens: usize,
    /// Position of the first query token; the others follow consecutively.
    pub first_pos: usize,
    /// Cache blocks of the sequence, covering positions `0..=first_pos + n_tokens - 1`.
    pub block_table: &'a [u32],
}

/// Attention parameters of a layer.
#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    pub n_heads: usize,
    pub scale: f32,
    /// Sliding window: a query at position p sees keys at positions > p - window.
    pub window: Option<usize>,
    /// Logit soft-capping (`cap * tanh(s / cap)`), used by some architectures.
    pub softcap: Option<f32>,
}

/// Writes each token's K and V rows (`n_kv_heads * head_dim` f32) into the cache slots given.
pub fn write_kv(
    k_cache: &mut [f16],
    v_cache: &mut [f16],
    slots: &[usize],
    k: &[f32],
    v: &[f32],
    kv_dim: usize,
) {
    for (t, &slot) in slots.iter().enumerate() {
        let dst = slot * kv_dim..(slot + 1) * kv_dim;
        for (d, s) in k_cache[dst.clone()]
            .iter_mut()
            .zip(&k[t * kv_dim..(t + 1) * kv_dim])
        {
            *d = f16::from_f32(*s);
        }
        for (d, s) in v_cache[dst]
            .iter_mut()
            .zip(&v[t * kv_dim..(t + 1) * kv_dim])
        {
            *d = f16::from_f32(*s);
        }
    }
}

thread_local! {
    /// Per-thread scores and converted K/V row, reused across calls.
    static SCRATCH: std::cell::Cell<(Vec<f32>, Vec<f32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
    /// Per-thread buffers of the blocked (flash) tiles.
    static FLASH: std::cell::RefCell<FlashBufs> = std::cell::RefCell::new(FlashBufs::default());
}

/// The output pointer shared by the tasks of one call.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: each task writes the heads of its own (token tile, KV head) group only, inside the output
// (checked by `check_args` before the job starts), and the job ends before the `&mut` borrow does.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: shared only to write disjoint, in-bounds regions.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Why [`paged_attention`]'s arguments cannot be used (a caller's programming error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttnArgsError(String);

impl std::fmt::Display for AttnArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "paged_attention: {}", self.0)
    }
}

impl std::error::Error for AttnArgsError {}

fn bad(msg: String) -> AttnArgsError {
    AttnArgsError(msg)
}

/// `a * b`, or an error naming `what` when it overflows.
fn mul(a: usize, b: usize, what: &str) -> Result<usize, AttnArgsError> {
    a.checked_mul(b)
        .ok_or_else(|| bad(format!("{what} overflows ({a} × {b})")))
}

/// Checks everything the kernel's unchecked writes and per-task indexing rely on.
fn check_args<T>(
    q: &[f32],
    out: &[f32],
    seqs: &[AttnSeq],
    kv: &KvLayer<T>,
    p: &AttnParams,
) -> Result<(), AttnArgsError> {
    if kv.n_kv_heads == 0 || kv.block_size == 0 || p.n_heads == 0 {
        return Err(bad(format!(
            "n_kv_heads ({}), block_size ({}) and n_heads ({}) must be positive",
            kv.n_kv_heads, kv.block_size, p.n_heads
        )));
    }
    if !p.n_heads.is_multiple_of(kv.n_kv_heads) {
        return Err(bad(format!(
            "n_heads ({}) is not a multiple of n_kv_heads ({})",
            p.n_heads, kv.n_kv_heads
        )));
    }
    let q_stride = mul(p.n_heads, kv.head_dim, "query row")?;
    let kv_dim = mul(kv.n_kv_heads, kv.head_dim, "KV row")?;
    let block_elems = mul(kv.block_size, kv_dim, "KV block")?;
    let mut ranges = Vec::with_capacity(seqs.len());
    for (s, seq) in seqs.iter().enumerate() {
        if seq.n_tokens == 0 {
            continue;
        }
        let end = seq
            .token_start
            .checked_add(seq.n_tokens)
            .ok_or_else(|| bad(format!("sequence {s}: token range overflows")))?;
        let rows = mul(end, q_stride, "query rows")?;
        if rows > q.len() || rows > out.len() {
            return Err(bad(format!(
                "sequence {s}: tokens {}..{end} need {rows} values, q has {} and out {}",
                seq.token_start,
                q.len(),
                out.len()
            )));
        }
        let last = seq
            .first_pos
            .checked_add(seq.n_tokens - 1)
            .ok_or_else(|| bad(format!("sequence {s}: positions overflow")))?;
        let blocks = seq
            .block_table
            .get(..=last / kv.block_size)
            .ok_or_else(|| {
                bad(format!(
                    "sequence {s}: {} blocks do not cover position {last}",
                    seq.block_table.len()
                ))
            })?;
        for &b in blocks {
            let end = mul(b as usize + 1, block_elems, "KV block end")?;
            if end > kv.k.len() || end > kv.v.len() {
                return Err(bad(format!(
                    "sequence {s}: block {b} lies outside the KV cache ({} K and {} V values)",
                    kv.k.len(),
                    kv.v.len()
                )));
            }
        }
        ranges.push((seq.token_start, end, s));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let ((_, end_a, a), (start_b, _, b)) = (w[0], w[1]);
        if start_b < end_a {
            return Err(bad(format!(
                "sequences {a} and {b} share query tokens (from {start_b})"
            )));
        }
    }
    Ok(())
}

/// Query tokens of one sequence handled together: each cached K/V row is converted to f32 once and
/// used by every token and query head of the tile.
const TOKEN_TILE: usize = 8;
/// Chunks of at least this many tokens (prefill) run in blocked tiles of [`QT`] tokens
/// ([`crate::flash_attention`]).
const FLASH_MIN: usize = 32;

/// `out` (tokens × n_heads × head_dim) = softmax(q·kᵀ · scale) · v over each sequence's cached positions.
///
/// Panics when the arguments do not fit together (see [`try_paged_attention`]).
pub fn paged_attention<T: KvElem>(
    q: &[f32],
    out: &mut [f32],
    seqs: &[AttnSeq],
    kv: &KvLayer<T>,
    p: &AttnParams,
) {
    if let Err(e) = try_paged_attention(q, out, seqs, kv, p) {
        panic!("{e}");
    }
}

/// [`paged_attention`], or an error when the arguments do not fit together: `q` or `out` too short
/// for a sequence's tokens, sequences sharing query tokens, a block table too short for its positions
/// or naming a block outside the cache, `n_heads` not a multiple of `n_kv_heads`, or a zero size.
/// Nothing is written then.
pub fn try_paged_attention<T: KvElem>(
    q: &[f32],
    out: &mut [f32],
    seqs: &[AttnSeq],
    kv: &KvLayer<T>,
    p: &AttnParams,
) -> Result<(), AttnArgsError> {
    check_args(q, out, seqs, kv, p)?;
    let hd = kv.head_dim;
    let group = p.n_heads / kv.n_kv_heads;
    let q_stride = p.n_heads * hd;
    let kv_dim = kv.n_kv_heads * hd;
    let mut items = Vec::new();
    for (s, seq) in seqs.iter().enumerate() {
        let flash = seq.n_tokens >= FLASH_MIN;
        let tile = if flash { QT } else { TOKEN_TILE };
        for t0 in (0..seq.n_tokens).step_by(tile) {
            for h in 0..kv.n_kv_heads {
                items.push((s, t0, h, flash));
            }
        }
    }
    let out_ptr = SendPtr(out.as_mut_ptr());
    parallel_for(items.len(), |item| {
        let (s, t0, kvh, flash) = items[item];
        let seq = &seqs[s];
        let tile = if flash { QT } else { TOKEN_TILE };
        let t1 = (t0 + tile).min(seq.n_tokens);
        if flash {
            FLASH.with(|b| {
                let b = &mut *b.borrow_mut();
                flash_tile(q, seq, t0, t1, kvh, kv, p, b);
                for (r, src) in b.o.chunks_exact(hd).enumerate() {
                    let qrow = seq.token_start + t0 + r / group;
                    let h = kvh * group + r % group;
                    // SAFETY: `(qrow + 1) * q_stride <= out.len()` and token ranges are disjoint
                    // (`check_args`), and head h < n_heads of token `qrow` belongs to this (tile,
                    // KV head) item only, so this is the only live reference to these `hd` values.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(
                            out_ptr.get().add(qrow * q_stride + h * hd),
                            hd,
                        )
                    };
                    o.copy_from_slice(src);
                }
            });
            return;
        }
        let window_lo = |pos: usize| match p.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        // Keys any token of the tile sees; token t sees window_lo(pos_t)..=pos_t.
        let lo = window_lo(seq.first_pos + t0);
        let hi = seq.first_pos + t1 - 1;
        let n_keys = hi + 1 - lo;
        let slot_of = |j: usize| {
            seq.block_table[j / kv.block_size] as usize * kv.block_size + j % kv.block_size
        };
        let mut bufs = SCRATCH.with(|c| c.take());
        let (scores, row) = {
            let (a, b) = &mut bufs;
            a.clear();
            a.resize((t1 - t0) * group * n_keys, f32::NEG_INFINITY);
            b.clear();
            b.resize(hd, 0.0);
            (a, b)
        };
        for j in lo..=hi {
            let base = slot_of(j) * kv_dim + kvh * hd;
            T::to_f32(&kv.k[base..base + hd], row);
            for t in t0..t1 {
                let pos = seq.first_pos + t;
                if j > pos || j < window_lo(pos) {
                    continue;
                }
                let qrow = seq.token_start + t;
                for g in 0..group {
                    let h = kvh * group + g;
                    let qh = &q[qrow * q_stride + h * hd..qrow * q_stride + (h + 1) * hd];
                    let mut sc = dot_f32(qh, row) * p.scale;
                    if let Some(cap) = p.softcap {
                        sc = cap * (sc / cap).tanh();
                    }
                    scores[((t - t0) * group + g) * n_keys + (j - lo)] = sc;
                }
            }
        }
        for t in t0..t1 {
            let pos = seq.first_pos + t;
            let (a, b) = (window_lo(pos) - lo, pos - lo);
            for g in 0..group {
                let r = ((t - t0) * group + g) * n_keys;
                softmax_inplace(&mut scores[r + a..=r + b]);
            }
        }
        let p_out = out_ptr;
        for t in t0..t1 {
            let qrow = seq.token_start + t;
            for g in 0..group {
                let h = kvh * group + g;
                // SAFETY: `(qrow + 1) * q_stride <= out.len()` and token ranges are disjoint
                // (`check_args`), and head h < n_heads of token `qrow` belongs to this (tile, KV head)
                // item only, so this is the only live reference to these `hd` values.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(p_out.0.add(qrow * q_stride + h * hd), hd)
                };
                o.fill(0.0);
            }
        }
        for j in lo..=hi {
            let base = slot_of(j) * kv_dim + kvh * hd;
            T::to_f32(&kv.v[base..base + hd], row);
            for t in t0..t1 {
                let pos = seq.first_pos + t;
                if j > pos || j < window_lo(pos) {
                    continue;
                }
                let qrow = seq.token_start + t;
                for g in 0..group {
                    let h = kvh * group + g;
                    let w = scores[((t - t0) * group + g) * n_keys + (j - lo)];
                    // SAFETY: as above: in bounds, and this item's own head of its own token.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(p_out.0.add(qrow * q_stride + h * hd), hd)
                    };
                    axpy_f32(o, w, row);
                }
            }
        }
        SCRATCH.with(|c| c.set(bufs));
    });
    Ok(())
}
