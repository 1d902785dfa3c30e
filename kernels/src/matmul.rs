//! Quantized matrix × batch of activation rows.
//!
//! `W` has `rows` output features of `cols` inputs, stored as GGUF blocks; `x` holds `m` activation rows
//! (all tokens of a step). Activations are quantized once to the weight's partner format, then threads
//! claim chunks of weight rows and compute every token's output for them, so each weight row is read
//! from memory once per call whatever the batch size.
use crate::dot::{dot_f32, dot_fn};
use crate::quant::{dequantize_row, GgmlType};
use crate::quantize::{quantize_rows, AlignedBytes};
use rayon::prelude::*;

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

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every task writes a disjoint set of output elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Rows of weights one task takes: enough tasks to balance the threads, few enough to keep the
/// scheduling overhead small.
fn chunk_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let target_tasks = threads * 8;
    (rows.div_ceil(target_tasks)).clamp(8, 512)
}

/// `out[i * w.rows + r] = W[r] · x[i]` for `i < m`, `r < w.rows`.
pub fn matmul(w: &QMatrix, x: &[f32], m: usize, out: &mut [f32], scratch: &mut AlignedBytes) {
    let (rows, cols) = (w.rows, w.cols);
    assert!(x.len() >= m * cols, "activation rows too short");
    assert!(out.len() >= m * rows, "output too short");
    let out_ptr = SendPtr(out.as_mut_ptr());
    let chunk = chunk_rows(rows);
    let n_chunks = rows.div_ceil(chunk);
    match w.dtype.activation_partner() {
        Some(partner) => {
            let dot = dot_fn(w.dtype).expect("every quantized weight type has a dot product");
            quantize_rows(partner, x, m, cols, scratch);
            let act = scratch.as_slice();
            let arb = partner.row_bytes(cols);
            let wrb = w.row_bytes();
            (0..n_chunks).into_par_iter().for_each(|c| {
                let p = out_ptr;
                for r in c * chunk..((c + 1) * chunk).min(rows) {
                    let wr = &w.data[r * wrb..(r + 1) * wrb];
                    for i in 0..m {
                        let v = dot(wr, &act[i * arb..(i + 1) * arb]);
                        // SAFETY: (i, r) is written by this task only; bounds asserted above.
                        unsafe { *p.0.add(i * rows + r) = v };
                    }
                }
            });
        }
        None => {
            (0..n_chunks).into_par_iter().for_each(|c| {
                let p = out_ptr;
                let mut wf = vec![0f32; cols];
                for r in c * chunk..((c + 1) * chunk).min(rows) {
                    dequantize_row(w.dtype, w.row(r), &mut wf);
                    for i in 0..m {
                        let v = dot_f32(&wf, &x[i * cols..(i + 1) * cols]);
                        // SAFETY: as above.
                        unsafe { *p.0.add(i * rows + r) = v };
                    }
                }
            });
        }
    }
}
