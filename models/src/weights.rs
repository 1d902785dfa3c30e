//! Weights borrowed from the mapped model file: quantized matrices and f32 vectors (norms, biases).
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::Result;
use inhaus_kernels::cpu::{simd_level, SimdLevel};
use inhaus_kernels::matmul::{matmul, matmul_packed, QMatrix};
use inhaus_kernels::packed::PackedMatrix;
use inhaus_kernels::packed_k::PackedKMatrix;
use inhaus_kernels::quant::dequantize_row;
use inhaus_kernels::quantize::AlignedBytes;
use memmap2::Mmap;
use std::sync::Arc;

/// A weight matrix of `rows` × `cols` in its file format, kept in the mapped file, plus (where the CPU
/// has AVX-512 VNNI and the format allows) a copy re-laid for the packed GEMV/GEMM kernels.
#[derive(Clone)]
pub struct Matrix {
    pub dtype: inhaus_kernels::GgmlType,
    pub rows: usize,
    pub cols: usize,
    mmap: Arc<Mmap>,
    offset: usize,
    len: usize,
    packed: Option<Arc<Packed>>,
}

/// A matrix re-laid for the VNNI kernels.
enum Packed {
    Block32(PackedMatrix),
    KQuant(PackedKMatrix),
}

impl Matrix {
    pub fn load(file: &GgufFile, name: &str) -> Result<Self> {
        let loc = file.tensor(name)?;
        let (rows, cols) = match loc.dims.as_slice() {
            [r, c] => (*r, *c),
            other => {
                return Err(ModelError::Gguf(format!(
                    "tensor {name} has shape {other:?}, expected 2-D"
                )))
            }
        };
        let align = std::mem::align_of::<f32>();
        if !(file.mmap.as_ptr() as usize + loc.offset).is_multiple_of(align) {
            return Err(ModelError::Gguf(format!("tensor {name} is not aligned")));
        }
        let mut m = Self {
            dtype: loc.dtype,
            rows,
            cols,
            mmap: file.mmap.clone(),
            offset: loc.offset,
            len: loc.len,
            packed: None,
        };
        if simd_level() >= SimdLevel::Avx512Vnni {
            let data = m.data();
            m.packed = if PackedMatrix::supports(m.dtype, rows) {
                PackedMatrix::pack(m.dtype, rows, cols, data).map(Packed::Block32)
            } else if cfg!(target_arch = "x86_64") && PackedKMatrix::supports(m.dtype, rows) {
                PackedKMatrix::pack(m.dtype, rows, cols, data).map(Packed::KQuant)
            } else {
                None
            }
            .map(Arc::new);
        }
        Ok(m)
    }

    /// `out[i * rows + r] = self[r] · x[i]` for the `m` rows of `x`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32], scratch: &mut AlignedBytes) {
        match self.packed.as_deref() {
            Some(Packed::Block32(p)) => matmul_packed(p, x, m, out, scratch),
            #[cfg(target_arch = "x86_64")]
            Some(Packed::KQuant(p)) => {
                inhaus_kernels::matmul::matmul_packed_k(p, x, m, out, scratch)
            }
            _ => matmul(&self.as_qmatrix(), x, m, out, scratch),
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.mmap[self.offset..self.offset + self.len]
    }

    pub fn as_qmatrix(&self) -> QMatrix<'_> {
        QMatrix {
            dtype: self.dtype,
            rows: self.rows,
            cols: self.cols,
            data: self.data(),
        }
    }
}

/// A 1-D tensor (norm weight, bias) dequantized to f32.
pub fn load_vector(file: &GgufFile, name: &str) -> Result<Vec<f32>> {
    let loc = file.tensor(name)?;
    if loc.dims.len() != 1 {
        return Err(ModelError::Gguf(format!(
            "tensor {name} has shape {:?}, expected 1-D",
            loc.dims
        )));
    }
    let mut out = vec![0f32; loc.dims[0]];
    dequantize_row(
        loc.dtype,
        &file.mmap[loc.offset..loc.offset + loc.len],
        &mut out,
    );
    Ok(out)
}
