//! The paged KV cache: for every layer, keys and values in fixed-size blocks of token slots.
//!
//! The cache only stores; which blocks belong to which sequence is the caller's business (the engine's
//! block manager), passed to each forward as block tables.
use half::f16;
use inhaus_kernels::attention::KvLayer;

/// Dimensions of a cache, derived from the model and the memory budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheShape {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub num_blocks: usize,
}

impl KvCacheShape {
    /// f16 values one token slot takes in one layer, for K or V.
    pub fn slot_elems(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// Bytes one block takes across all layers, K and V.
    pub fn bytes_per_block(&self) -> usize {
        self.n_layers * 2 * self.block_size * self.slot_elems() * std::mem::size_of::<f16>()
    }
}

pub struct LayerKv {
    pub k: Vec<f16>,
    pub v: Vec<f16>,
}

pub struct KvCache {
    pub shape: KvCacheShape,
    pub layers: Vec<LayerKv>,
}

impl KvCache {
    pub fn new(shape: KvCacheShape) -> Self {
        let n = shape.num_blocks * shape.block_size * shape.slot_elems();
        let layers = (0..shape.n_layers)
            .map(|_| LayerKv {
                k: vec![f16::ZERO; n],
                v: vec![f16::ZERO; n],
            })
            .collect();
        Self { shape, layers }
    }

    pub fn layer(&self, i: usize) -> KvLayer<'_> {
        let l = &self.layers[i];
        KvLayer {
            k: &l.k,
            v: &l.v,
            block_size: self.shape.block_size,
            n_kv_heads: self.shape.n_kv_heads,
            head_dim: self.shape.head_dim,
        }
    }

    /// Copies block `src` into block `dst` in every layer (copy-on-write of a shared block).
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        let n = self.shape.block_size * self.shape.slot_elems();
        let (s, d) = (src as usize * n, dst as usize * n);
        for l in &mut self.layers {
            l.k.copy_within(s..s + n, d);
            l.v.copy_within(s..s + n, d);
        }
    }
}
