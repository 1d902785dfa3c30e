//! The candle decoder's paged KV cache: for every layer, keys and values as tensors of
//! `num_blocks * block_size` token slots × KV heads × head dim, on the model's device and in its
//! dtype. New tokens are scattered into their slots; a sequence's context is gathered through its
//! block table.
use candle_core::{DType, Device, Storage, Tensor};
use inhaus_kernels::attention::KvLayer;

pub struct PagedKv {
    pub block_size: usize,
    pub num_blocks: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    layers: Vec<(Tensor, Tensor)>,
}

impl PagedKv {
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        num_blocks: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let shape = (num_blocks * block_size, n_kv_heads, head_dim);
        let layers = (0..n_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dtype, device)?,
                    Tensor::zeros(shape, dtype, device)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            block_size,
            num_blocks,
            n_kv_heads,
            head_dim,
            layers,
        })
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Bytes one block takes across `n_layers` layers, K and V.
    pub fn bytes_per_block(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        dtype: DType,
    ) -> usize {
        n_layers * 2 * block_size * n_kv_heads * head_dim * dtype.size_in_bytes()
    }

    /// Writes `k` and `v` (`[tokens, kv_heads, head_dim]`, the cache's dtype) of layer `layer`
    /// into `slots` (a u32 tensor of one slot per token).
    pub fn write(
        &self,
        layer: usize,
        slots: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<()> {
        let (ck, cv) = &self.layers[layer];
        let (n, h, d) = k.dims3()?;
        let idx = slots
            .reshape((n, 1, 1))?
            .broadcast_as((n, h, d))?
            .contiguous()?;
        ck.scatter_set(&idx, &k.contiguous()?, 0)?;
        cv.scatter_set(&idx, &v.contiguous()?, 0)?;
        Ok(())
    }

    /// Keys and values of layer `layer` at `slots`: two `[slots, kv_heads, head_dim]` tensors.
    pub fn gather(&self, layer: usize, slots: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (ck, cv) = &self.layers[layer];
        Ok((ck.index_select(slots, 0)?, cv.index_select(slots, 0)?))
    }

    /// Runs `f` on layer `layer`'s keys and values as host memory, where the cache lives there in
    /// f32 (the CPU path, for inhaus's own attention kernel); `None` elsewhere.
    pub fn with_host_layer<R>(
        &self,
        layer: usize,
        f: impl FnOnce(&KvLayer<'_, f32>) -> R,
    ) -> candle_core::Result<Option<R>> {
        let (ck, cv) = &self.layers[layer];
        let (ks, kl) = ck.storage_and_layout();
        let (vs, vl) = cv.storage_and_layout();
        let (Storage::Cpu(k), Storage::Cpu(v)) = (&*ks, &*vs) else {
            return Ok(None);
        };
        if ck.dtype() != DType::F32 || !kl.is_contiguous() || !vl.is_contiguous() {
            return Ok(None);
        }
        let n = ck.elem_count();
        let k = &k.as_slice::<f32>()?[kl.start_offset()..kl.start_offset() + n];
        let v = &v.as_slice::<f32>()?[vl.start_offset()..vl.start_offset() + n];
        Ok(Some(f(&KvLayer {
            k,
            v,
            block_size: self.block_size,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        })))
    }

    /// Copies block `src` into block `dst` in every layer (copy-on-write of a shared block).
    pub fn copy_block(&mut self, src: u32, dst: u32) -> candle_core::Result<()> {
        let bs = self.block_size;
        for (k, v) in &self.layers {
            for t in [k, v] {
                let block = t.narrow(0, src as usize * bs, bs)?.force_contiguous()?;
                t.slice_set(&block, 0, dst as usize * bs)?;
            }
        }
        Ok(())
    }
}
