//! A GGUF model file: header and metadata parsed with candle's reader, tensor data memory-mapped so
//! weights are used in place without copying.
use crate::error::ModelError;
use crate::Result;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use inhaus_kernels::GgmlType;
use memmap2::Mmap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where one tensor's data lies in the mapped file.
#[derive(Clone, Debug)]
pub struct TensorLocation {
    pub dtype: GgmlType,
    /// Dimensions outermost first (a weight matrix is `[rows, cols]`).
    pub dims: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    pub mmap: Arc<Mmap>,
}

fn map_dtype(d: GgmlDType) -> Option<GgmlType> {
    Some(match d {
        GgmlDType::F32 => GgmlType::F32,
        GgmlDType::F16 => GgmlType::F16,
        GgmlDType::Q4_0 => GgmlType::Q4_0,
        GgmlDType::Q4_1 => GgmlType::Q4_1,
        GgmlDType::Q5_0 => GgmlType::Q5_0,
        GgmlDType::Q5_1 => GgmlType::Q5_1,
        GgmlDType::Q8_0 => GgmlType::Q8_0,
        GgmlDType::Q4K => GgmlType::Q4K,
        GgmlDType::Q5K => GgmlType::Q5K,
        GgmlDType::Q6K => GgmlType::Q6K,
        _ => return None,
    })
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ModelError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let content = Content::read(&mut file).map_err(|e| ModelError::Gguf(e.to_string()))?;
        // SAFETY: the file is opened read-only and not modified while mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(Self {
            path,
            content,
            mmap: Arc::new(mmap),
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str())
            .ok_or_else(|| ModelError::Metadata(key.into()))
    }

    /// An integer of any GGUF integer type.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self
            .get(key)
            .ok_or_else(|| ModelError::Metadata(key.into()))?;
        let n = match v {
            Value::U8(x) => *x as i64,
            Value::I8(x) => *x as i64,
            Value::U16(x) => *x as i64,
            Value::I16(x) => *x as i64,
            Value::U32(x) => *x as i64,
            Value::I32(x) => *x as i64,
            Value::U64(x) => *x as i64,
            Value::I64(x) => *x,
            _ => return Err(ModelError::Metadata(key.into())),
        };
        usize::try_from(n).map_err(|_| ModelError::Metadata(key.into()))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.get(key) {
            Some(Value::F32(x)) => Ok(*x),
            Some(Value::F64(x)) => Ok(*x as f32),
            _ => Err(ModelError::Metadata(key.into())),
        }
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.to_bool().ok())
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor(&self, name: &str) -> Result<TensorLocation> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        let dtype = map_dtype(info.ggml_dtype).ok_or_else(|| {
            ModelError::Unsupported(format!("tensor {name} has type {:?}", info.ggml_dtype))
        })?;
        let dims = info.shape.dims().to_vec();
        let elems: usize = dims.iter().product();
        let inner = *dims.last().unwrap_or(&1);
        if inner % dtype.block_elems() != 0 {
            return Err(ModelError::Gguf(format!(
                "tensor {name}: row of {inner} is not whole blocks"
            )));
        }
        let len = elems / dtype.block_elems() * dtype.block_bytes();
        let offset = self.content.tensor_data_offset as usize + info.offset as usize;
        if offset + len > self.mmap.len() {
            return Err(ModelError::Gguf(format!(
                "tensor {name} extends past the end of the file"
            )));
        }
        Ok(TensorLocation {
            dtype,
            dims,
            offset,
            len,
        })
    }
}
