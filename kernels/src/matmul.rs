//! Quantized matrix × batch of activation rows.
//!
//! `W` has `rows` output features of `cols` inputs, stored as GGUF blocks; `x` holds `m` activation rows
//! (all tokens of a step). Activations are quantized once to the weight's partner format, then threads
//! claim chunks of weight rows and compute every token's output for them, so each weight row is read
//! from memory once per call whatever the batch size.
use crate::cpu;
use crate::dot::{dot_f32, dot_fn};
use crate::packed::{group_dot_scalar, quantize_row_q8a, BlockQ8A, PackedMatrix, GROUP};
use crate::packed_k::PackedKMatrix;
use crate::pool::{parallel_for, threads};
use crate::quant::{as_blocks, as_blocks_mut, dequantize_row, BlockQ8K, GgmlType, QK};
use crate::quantize::{quantize_rows, AlignedBytes};

/// The most tokens a packed kernel processes per pass over a weight group.
pub const MAX_TILE: usize = 8;
/// Tokens per pass of the 32-element block kernels (their unpacked weights are cheaper to redo).
const BLOCK32_TILE: usize = 4;

/// A borrowed weight matrix in GGUF layout: `rows` rows of `cols` elements of `dtype`.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols)
    }
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
    /// Dequantizes row `r` into `out` (`cols` values), e.g. for an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.dtype, self.row(r), &mut out[..self.cols]);
    }
}

/// The output pointer shared by a parallel job's tasks.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every task writes a disjoint set of in-bounds output elements (see each use), and the job
// ends before the `&mut` output borrow it came from does.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: shared only to write disjoint elements.
unsafe impl Sync for SendPtr {}

/// Whether a buffer of `len` values holds `m` rows of `n` (without overflow: the kernels write
/// through raw pointers up to that extent).
fn holds(len: usize, m: usize, n: usize) -> bool {
    m.checked_mul(n).is_some_and(|need| need <= len)
}

/// Rows of weights one task takes: enough tasks to balance the threads, few enough to keep the
/// scheduling overhead small.
fn chunk_rows(rows: usize) -> usize {
    let threads = threads().max(1);
    let target_tasks = threads * 8;
    (rows.div_ceil(target_tasks)).clamp(8, 512)
}

/// `out[i * w.rows + r] = W[r] · x[i]` for `i < m`, `r < w.rows`.
pub fn matmul(w: &QMatrix, x: &[f32], m: usize, out: &mut [f32], scratch: &mut AlignedBytes) {
    let (rows, cols) = (w.rows, w.cols);
    assert!(holds(x.len(), m, cols), "activation rows too short");
    assert!(holds(out.len(), m, rows), "output too short");
    let out_ptr = SendPtr(out.as_mut_ptr());
    let chunk = chunk_rows(rows);
    let n_chunks = rows.div_ceil(chunk);
    match (w.dtype.activation_partner(), dot_fn(w.dtype)) {
        (Some(partner), Some(dot)) => {
            quantize_rows(partner, x, m, cols, scratch);
            let act = scratch.as_slice();
            let arb = partner.row_bytes(cols);
            let wrb = w.row_bytes();
            parallel_for(n_chunks, |c| {
                let p = out_ptr;
                for r in c * chunk..((c + 1) * chunk).min(rows) {
                    let wr = &w.data[r * wrb..(r + 1) * wrb];
                    for i in 0..m {
                        let v = dot(wr, &act[i * arb..(i + 1) * arb]);
                        // SAFETY: i * rows + r < m * rows <= out.len() (asserted above), and
                        // element (i, r) is written by this task only (its chunk of rows).
                        unsafe { *p.0.add(i * rows + r) = v };
                    }
                }
            });
        }
        // Float weights (and any format without a quantized dot product): dequantize each row.
        _ => {
            parallel_for(n_chunks, |c| {
                let p = out_ptr;
                let mut wf = vec![0f32; cols];
                for r in c * chunk..((c + 1) * chunk).min(rows) {
                    dequantize_row(w.dtype, w.row(r), &mut wf);
                    for i in 0..m {
                        let v = dot_f32(&wf, &x[i * cols..(i + 1) * cols]);
                        // SAFETY: as in the quantized branch: in bounds, and this task's rows only.
                        unsafe { *p.0.add(i * rows + r) = v };
                    }
                }
            });
        }
    }
}

/// Runs `tile(g, acts, out_tile)` for every 8-row group and every tile of up to 4 tokens, in parallel
/// over chunks of groups, and scatters the tiles into `out` (`m` rows of `rows`).
fn run_packed_groups<A: Sync>(
    rows: usize,
    acts: &[&[A]],
    out: &mut [f32],
    tile_tokens: usize,
    tile: impl Fn(usize, &[&[A]], &mut [[f32; GROUP]; MAX_TILE]) + Sync,
) {
    let m = acts.len();
    assert!(holds(out.len(), m, rows), "output too short");
    let groups = rows / GROUP;
    let chunk = chunk_rows(groups).clamp(1, 64);
    let n_chunks = groups.div_ceil(chunk);
    let out_ptr = SendPtr(out.as_mut_ptr());
    parallel_for(n_chunks, |c| {
        let p = out_ptr;
        let mut vals = [[0f32; GROUP]; MAX_TILE];
        for g in c * chunk..((c + 1) * chunk).min(groups) {
            for t0 in (0..m).step_by(tile_tokens) {
                let n_tok = tile_tokens.min(m - t0);
                tile(g, &acts[t0..t0 + n_tok], &mut vals);
                for (t, v) in vals.iter().enumerate().take(n_tok) {
                    // SAFETY: `(t0 + t) * rows + g * GROUP + GROUP <= m * rows <= out.len()` (g <
                    // rows / GROUP, t0 + t < m; callers assert the output length), and rows
                    // 8g..8g+8 of token t0 + t belong to this task only (chunks are disjoint).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            v.as_ptr(),
                            p.0.add((t0 + t) * rows + g * GROUP),
                            GROUP,
                        )
                    };
                }
            }
        }
    });
}

/// `out[i * w.rows() + r] = W[r] · x[i]` for a packed 32-element-block matrix (see [`crate::packed`]).
pub fn matmul_packed(
    w: &PackedMatrix,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    scratch: &mut AlignedBytes,
) {
    let (rows, cols) = (w.rows(), w.cols());
    assert!(holds(x.len(), m, cols), "activation rows too short");
    assert!(holds(out.len(), m, rows), "output too short");
    let act_row = cols / QK * std::mem::size_of::<BlockQ8A>();
    scratch.resize(m * act_row);
    for (xr, ar) in x[..m * cols]
        .chunks_exact(cols)
        .zip(scratch.as_mut_slice().chunks_exact_mut(act_row))
    {
        quantize_row_q8a(xr, as_blocks_mut(ar));
    }
    let acts: Vec<&[BlockQ8A]> = scratch
        .as_slice()
        .chunks_exact(act_row)
        .map(as_blocks::<BlockQ8A>)
        .collect();
    let vnni = cpu::avx512_vnni();
    run_packed_groups(rows, &acts, out, BLOCK32_TILE, |g, tile_acts, vals| {
        #[cfg(target_arch = "x86_64")]
        if let Some(proof) = vnni {
            crate::packed::vnni::group_tile(proof, w, g, tile_acts, vals);
            return;
        }
        let _ = vnni;
        for (t, a) in tile_acts.iter().enumerate() {
            group_dot_scalar(w, g, a, &mut vals[t]);
        }
    });
}

/// `out[i * w.rows() + r] = W[r] · x[i]` for a packed K-quant matrix (see [`crate::packed_k`]); such
/// matrices only exist where the CPU has AVX-512 VNNI (panics elsewhere, or where `INHAUS_SIMD`
/// disables it).
#[cfg(target_arch = "x86_64")]
pub fn matmul_packed_k(
    w: &PackedKMatrix,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    scratch: &mut AlignedBytes,
) {
    let (rows, cols) = (w.rows(), w.cols());
    assert!(holds(x.len(), m, cols), "activation rows too short");
    assert!(holds(out.len(), m, rows), "output too short");
    let Some(proof) = cpu::avx512_vnni() else {
        panic!("packed K-quant matrices need AVX-512 VNNI");
    };
    quantize_rows(GgmlType::Q8K, x, m, cols, scratch);
    match w.dtype() {
        GgmlType::Q4K => {
            crate::packed_k::pair_q4k_activations(as_blocks_mut(scratch.as_mut_slice()))
        }
        _ => crate::packed_k::pair_q6k_activations(as_blocks_mut(scratch.as_mut_slice())),
    }
    let act_row = GgmlType::Q8K.row_bytes(cols);
    let acts: Vec<&[BlockQ8K]> = scratch
        .as_slice()
        .chunks_exact(act_row)
        .map(as_blocks::<BlockQ8K>)
        .collect();
    run_packed_groups(rows, &acts, out, MAX_TILE, |g, tile_acts, vals| {
        crate::packed_k::vnni::group_tile(proof, w, g, tile_acts, vals);
    });
}
