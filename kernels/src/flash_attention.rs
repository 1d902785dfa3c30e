//! Prefill attention in blocks, as flash attention computes it: a tile of query tokens (all query
//! heads that share one KV head) against the context in blocks of [`KB`] keys, each block's scores a
//! small GEMM (queries × transposed keys, vectorized over the keys), an online softmax (running max
//! and sum per query row, earlier output rescaled), and the weighted values added row by row. Every
//! cached key and value is converted to f32 once per tile instead of once per query token, and no
//! score row is reduced horizontally, which is what makes long prompts fast.
//!
//! [`crate::attention::try_paged_attention`] runs it for the tiles of long chunks; it has checked the
//! arguments, and copies the tile's output into place.
use crate::attention::{AttnParams, AttnSeq, KvElem, KvLayer};
use crate::dense::{dispatch, exp_f32, madd};

/// Query tokens per tile.
pub(crate) const QT: usize = 16;
/// Keys per block.
const KB: usize = 64;

/// Per-thread buffers of one tile, kept between calls.
#[derive(Default)]
pub(crate) struct FlashBufs {
    /// Queries `[rows, hd]`, pre-scaled.
    q: Vec<f32>,
    /// A key block transposed: `[hd, KB]`.
    kt: Vec<f32>,
    /// A value block `[KB, hd]`.
    v: Vec<f32>,
    /// Scores, then weights: `[rows, KB]`.
    s: Vec<f32>,
    /// The tile's output `[rows, hd]` (row `r` = token `t0 + r / group`, head `kvh * group + r % group`).
    pub(crate) o: Vec<f32>,
    /// Running max and sum of each row.
    m: Vec<f32>,
    l: Vec<f32>,
    row: Vec<f32>,
}

/// The first context position a query at `pos` sees.
fn window_lo(window: Option<usize>, pos: usize) -> usize {
    match window {
        Some(w) => (pos + 1).saturating_sub(w),
        None => 0,
    }
}

/// Attention of tokens `t0 .. t1` of `seq` for the query heads of KV head `kvh`, into `b.o`
/// (normalized). The arguments must have passed `check_args` (block table covers every position,
/// blocks inside the cache, `q` long enough).
#[allow(clippy::too_many_arguments)]
pub(crate) fn flash_tile<T: KvElem>(
    q: &[f32],
    seq: &AttnSeq,
    t0: usize,
    t1: usize,
    kvh: usize,
    kv: &KvLayer<T>,
    p: &AttnParams,
    b: &mut FlashBufs,
) {
    let hd = kv.head_dim;
    let group = p.n_heads / kv.n_kv_heads;
    let q_stride = p.n_heads * hd;
    let kv_dim = kv.n_kv_heads * hd;
    let rows = (t1 - t0) * group;
    let lo = window_lo(p.window, seq.first_pos + t0);
    let hi = seq.first_pos + t1 - 1;

    b.q.clear();
    for t in t0..t1 {
        let qrow = seq.token_start + t;
        for g in 0..group {
            let h = kvh * group + g;
            let src = &q[qrow * q_stride + h * hd..qrow * q_stride + (h + 1) * hd];
            b.q.extend(src.iter().map(|v| v * p.scale));
        }
    }
    b.o.clear();
    b.o.resize(rows * hd, 0.0);
    b.m.clear();
    b.m.resize(rows, f32::NEG_INFINITY);
    b.l.clear();
    b.l.resize(rows, 0.0);
    b.kt.resize(hd * KB, 0.0);
    b.v.resize(KB * hd, 0.0);
    b.s.resize(rows * KB, 0.0);
    b.row.resize(hd, 0.0);

    let slot_of =
        |j: usize| seq.block_table[j / kv.block_size] as usize * kv.block_size + j % kv.block_size;
    let mut j0 = lo;
    while j0 <= hi {
        let n = KB.min(hi + 1 - j0);
        for jj in 0..KB {
            if jj < n {
                let base = slot_of(j0 + jj) * kv_dim + kvh * hd;
                T::to_f32(&kv.k[base..base + hd], &mut b.row);
                T::to_f32(&kv.v[base..base + hd], &mut b.v[jj * hd..(jj + 1) * hd]);
            } else {
                b.row.fill(0.0);
                b.v[jj * hd..(jj + 1) * hd].fill(0.0);
            }
            for (kk, &x) in b.row.iter().enumerate() {
                b.kt[kk * KB + jj] = x;
            }
        }
        let block = Block {
            j0,
            n,
            t0,
            group,
            hd,
            first_pos: seq.first_pos,
            window: p.window,
            softcap: p.softcap,
        };
        dispatch!(block.run::<FMA>(b));
        j0 += KB;
    }
    for (o, &l) in b.o.chunks_exact_mut(hd).zip(&b.l) {
        let inv = 1.0 / l;
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

/// `o += Σ_j w[j] · v[j]` (`v`: rows of `HD`), the sum kept in registers across the rows.
/// Query rows scored together by [`scores`].
const SR: usize = 4;

/// `s[R, KB] = q[R, hd] · kt[hd, KB]` (`kt`: the block's keys transposed).
#[inline(always)]
fn scores<const FMA: bool, const R: usize>(q: &[f32], kt: &[f32], hd: usize, s: &mut [f32]) {
    let mut acc = [[0f32; KB]; R];
    for (kk, krow) in kt.chunks_exact(KB).enumerate().take(hd) {
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = q[r * hd + kk];
            for jj in 0..KB {
                acc[jj] = madd::<FMA>(a, krow[jj], acc[jj]);
            }
        }
    }
    for (dst, acc) in s.chunks_exact_mut(KB).zip(&acc) {
        dst.copy_from_slice(acc);
    }
}

/// `o[r] += s[r][a..e] · v` for every row `r` (`o` rows of `HD`, `s` rows of [`KB`] weights, `v`
/// the values of keys `a..e`), `R` rows at a time so that each value row loaded serves `R` sums.
#[inline(always)]
fn add_weighted_rows<const FMA: bool, const HD: usize, const R: usize>(
    o: &mut [f32],
    s: &[f32],
    v: &[f32],
    a: usize,
    e: usize,
) {
    let rows = o.len() / HD;
    let whole = rows - rows % R;
    for (or, sr) in o[..whole * HD]
        .chunks_exact_mut(R * HD)
        .zip(s.chunks_exact(R * KB))
    {
        add_weighted::<FMA, HD, R>(or, sr, v, a, e);
    }
    for (or, sr) in o[whole * HD..]
        .chunks_exact_mut(HD)
        .zip(s[whole * KB..].chunks_exact(KB))
    {
        add_weighted::<FMA, HD, 1>(or, sr, v, a, e);
    }
}

/// [`add_weighted_rows`] for `R` rows.
#[inline(always)]
fn add_weighted<const FMA: bool, const HD: usize, const R: usize>(
    o: &mut [f32],
    s: &[f32],
    v: &[f32],
    a: usize,
    e: usize,
) {
    let mut acc = [[0f32; HD]; R];
    for (j, vrow) in (a..e).zip(v.chunks_exact(HD)) {
        for (r, acc) in acc.iter_mut().enumerate() {
            let w = s[r * KB + j];
            for d in 0..HD {
                acc[d] = madd::<FMA>(w, vrow[d], acc[d]);
            }
        }
    }
    for (or, acc) in o.chunks_exact_mut(HD).zip(&acc) {
        for (ov, a) in or.iter_mut().zip(acc) {
            *ov += a;
        }
    }
}

struct Block {
    j0: usize,
    /// Keys in the block (the rest of [`KB`] is zero padding).
    n: usize,
    t0: usize,
    group: usize,
    hd: usize,
    first_pos: usize,
    window: Option<usize>,
    softcap: Option<f32>,
}

impl Block {
    #[inline(always)]
    fn run<const FMA: bool>(&self, b: &mut FlashBufs) {
        let hd = self.hd;
        let rows = b.m.len();
        // Scores: s[r, :] = q[r] · ktᵀ, SR query rows at a time so that each key column loaded
        // serves all of them.
        let whole = rows - rows % SR;
        for (qr, sr) in b.q[..whole * hd]
            .chunks_exact(SR * hd)
            .zip(b.s.chunks_exact_mut(SR * KB))
        {
            scores::<FMA, SR>(qr, &b.kt, hd, sr);
        }
        for (qr, sr) in b.q[whole * hd..]
            .chunks_exact(hd)
            .zip(b.s[whole * KB..].chunks_exact_mut(KB))
        {
            scores::<FMA, 1>(qr, &b.kt, hd, sr);
        }
        // Each row's weights over the block: exp(s - m) on the keys it sees, 0 on the others, so
        // that rows can share the weighted sum of values below. `span` covers every row's keys.
        let mut span = (self.n, 0);
        for r in 0..rows {
            let pos = self.first_pos + self.t0 + r / self.group;
            // Keys of this block the row sees: [a, e).
            let a = window_lo(self.window, pos)
                .saturating_sub(self.j0)
                .min(self.n);
            let e = (pos + 1).saturating_sub(self.j0).min(self.n);
            let full = &mut b.s[r * KB..(r + 1) * KB];
            if a >= e {
                full.fill(0.0);
                continue;
            }
            full[..a].fill(0.0);
            full[e..].fill(0.0);
            span = (span.0.min(a), span.1.max(e));
            let sr = &mut full[a..e];
            if let Some(cap) = self.softcap {
                sr.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
            }
            let bmax = sr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let m_new = b.m[r].max(bmax);
            let corr = exp_f32(b.m[r] - m_new);
            sr.iter_mut().for_each(|v| *v = exp_f32(*v - m_new));
            let mut lanes = [0f32; 16];
            let chunks = sr.chunks_exact(16);
            let rest: f32 = chunks.remainder().iter().sum();
            for c in chunks {
                for i in 0..16 {
                    lanes[i] += c[i];
                }
            }
            b.l[r] = b.l[r] * corr + lanes.iter().sum::<f32>() + rest;
            b.m[r] = m_new;
            if corr != 1.0 {
                b.o[r * hd..(r + 1) * hd]
                    .iter_mut()
                    .for_each(|v| *v *= corr);
            }
        }
        let (a, e) = span;
        if a >= e {
            return;
        }
        // o += weights · v, as many rows at a time as keep their sums in registers.
        let (o, s, v) = (&mut b.o[..], &b.s[..], &b.v[a * hd..e * hd]);
        match hd {
            64 => add_weighted_rows::<FMA, 64, 4>(o, s, v, a, e),
            128 => add_weighted_rows::<FMA, 128, 2>(o, s, v, a, e),
            256 => add_weighted_rows::<FMA, 256, 1>(o, s, v, a, e),
            _ => {
                for (or, sr) in o.chunks_exact_mut(hd).zip(s.chunks_exact(KB)) {
                    for (&w, vrow) in sr[a..e].iter().zip(v.chunks_exact(hd)) {
                        for (ov, &vv) in or.iter_mut().zip(vrow) {
                            *ov = madd::<FMA>(w, vv, *ov);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::attention::{try_paged_attention, AttnParams, AttnSeq, KvElem, KvLayer};
    use crate::dense::test_rnd as rnd;
    use half::f16;

    /// softmax(q·kᵀ·scale, capped, causal, windowed) · v in f64 over the cache as stored.
    #[allow(clippy::too_many_arguments)]
    fn reference<T: KvElem>(
        q: &[f32],
        seq: &AttnSeq,
        kv: &KvLayer<T>,
        p: &AttnParams,
        t: usize,
        h: usize,
    ) -> Vec<f64> {
        let hd = kv.head_dim;
        let kvh = h / (p.n_heads / kv.n_kv_heads);
        let kv_dim = kv.n_kv_heads * hd;
        let pos = seq.first_pos + t;
        let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let row = |c: &[T], j: usize| {
            let slot =
                seq.block_table[j / kv.block_size] as usize * kv.block_size + j % kv.block_size;
            let mut r = vec![0f32; hd];
            T::to_f32(
                &c[slot * kv_dim + kvh * hd..slot * kv_dim + (kvh + 1) * hd],
                &mut r,
            );
            r
        };
        let qh = &q[(seq.token_start + t) * p.n_heads * hd + h * hd..][..hd];
        let scores: Vec<f64> = (lo..=pos)
            .map(|j| {
                let s: f64 = qh
                    .iter()
                    .zip(row(kv.k, j))
                    .map(|(a, b)| *a as f64 * b as f64)
                    .sum::<f64>()
                    * p.scale as f64;
                match p.softcap {
                    Some(c) => c as f64 * (s / c as f64).tanh(),
                    None => s,
                }
            })
            .collect();
        let max = scores.iter().copied().fold(f64::MIN, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let mut out = vec![0f64; hd];
        for (w, j) in e.iter().zip(lo..=pos) {
            for (o, v) in out.iter_mut().zip(row(kv.v, j)) {
                *o += w / sum * v as f64;
            }
        }
        out
    }

    fn check<T: KvElem>(hd: usize, conv: impl Fn(f32) -> T) {
        let mut seed = 17;
        let (n_heads, n_kv, bs) = (6, 2, 16);
        let kv_dim = n_kv * hd;
        let table: Vec<u32> = (0..10u32).rev().collect();
        let k: Vec<T> = rnd(10 * bs * kv_dim, &mut seed)
            .into_iter()
            .map(&conv)
            .collect();
        let v: Vec<T> = rnd(10 * bs * kv_dim, &mut seed)
            .into_iter()
            .map(&conv)
            .collect();
        let kv = KvLayer {
            k: &k,
            v: &v,
            block_size: bs,
            n_kv_heads: n_kv,
            head_dim: hd,
        };
        // A 100-token chunk after 37 cached positions (tiles across key blocks), after a 3-token
        // chunk of another sequence that takes the other path.
        let short_table = [9u32];
        let seqs = [
            AttnSeq {
                token_start: 0,
                n_tokens: 3,
                first_pos: 5,
                block_table: &short_table,
            },
            AttnSeq {
                token_start: 3,
                n_tokens: 100,
                first_pos: 37,
                block_table: &table,
            },
        ];
        let q = rnd(103 * n_heads * hd, &mut seed);
        for (window, softcap) in [(None, None), (Some(20), None), (Some(70), Some(3.0))] {
            let p = AttnParams {
                n_heads,
                scale: 0.3,
                window,
                softcap,
            };
            let mut out = vec![f32::NAN; q.len()];
            try_paged_attention(&q, &mut out, &seqs, &kv, &p).expect("arguments");
            for seq in &seqs {
                for t in 0..seq.n_tokens {
                    for h in 0..n_heads {
                        let want = reference(&q, seq, &kv, &p, t, h);
                        let got = &out[(seq.token_start + t) * n_heads * hd + h * hd..][..hd];
                        for (d, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (*g as f64 - w).abs() < 1e-5,
                                "{window:?} {softcap:?} token {t} head {h} [{d}]: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn blocked_tiles_match_a_reference_with_f32_and_f16_caches() {
        // 40: the generic value pass; 64 and 128: the register-held ones.
        for hd in [40, 64, 128] {
            check::<f32>(hd, |x| x);
            check::<f16>(hd, f16::from_f32);
        }
    }
}

#[cfg(test)]
mod speed {
    use crate::attention::{try_paged_attention, AttnParams, AttnSeq, KvLayer};
    use crate::dense::{test_rnd as rnd, test_time_passes};

    /// A 512-token prefill's attention through 24 Qwen2.5-0.5B-shaped layers (14 heads, 2 KV heads,
    /// head size 64, f32 cache): median wall time of 5 passes.
    #[test]
    #[ignore]
    fn prefill_attention_speed() {
        let (n, nh, nkv, hd, bs) = (512usize, 14usize, 2usize, 64usize, 16usize);
        let mut seed = 5;
        let k = rnd(n * nkv * hd, &mut seed);
        let v = rnd(n * nkv * hd, &mut seed);
        let q = rnd(n * nh * hd, &mut seed);
        let table: Vec<u32> = (0..(n / bs) as u32).collect();
        let kv = KvLayer {
            k: &k,
            v: &v,
            block_size: bs,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        let seqs = [AttnSeq {
            token_start: 0,
            n_tokens: n,
            first_pos: 0,
            block_table: &table,
        }];
        let p = AttnParams {
            n_heads: nh,
            scale: 0.125,
            window: None,
            softcap: None,
        };
        let mut out = vec![0f32; q.len()];
        let (wall, cpu) = test_time_passes(|| {
            for _ in 0..24 {
                try_paged_attention(&q, &mut out, &seqs, &kv, &p).expect("args");
            }
        });
        // Causal: half of the n² scores, each a dot product and a weighted sum of head size.
        let flops = 24.0 * (nh * n * n * hd) as f64 * 2.0;
        println!(
            "attention, 24 layers x 512 tokens: {:.1} ms, {:.1} GFLOP/s; {:.3} CPU s, {:.1} GFLOP/CPU-s",
            wall * 1e3,
            flops / wall / 1e9,
            cpu,
            flops / cpu / 1e9
        );
    }
}
