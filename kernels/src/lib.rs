//! inhaus kernels: the hot compute routines of the CPU path.
//!
//! - [`quant`]: GGUF block formats (weights) and their dequantization.
//! - [`quantize`]: activations quantized once per matmul to the weight format's 8-bit partner.
//! - [`dot`]: one dot product per block format pair, scalar and SIMD, chosen at run time.
//! - [`matmul`]: quantized matrix × batch of activation rows, each weight row read once per call.
//! - [`packed`], [`packed_k`]: weights re-laid in 8-row groups for VNNI GEMV/GEMM.
//! - [`attention`]: attention over a paged KV cache, parallel over tokens × KV heads;
//!   [`flash_attention`]: its blocked tiles for long (prefill) chunks.
//! - [`dense`]: f32 GEMM on packed weights, LayerNorm, GELU and packed-sequence attention (BERT encoders).
//! - [`dense_bf16`]: the same GEMM with bfloat16 weights (AVX512-BF16 `vdpbf16ps` where the CPU has it).
//! - [`pool`]: the spinning compute thread pool every parallel kernel runs on.
//! - [`ops`]: small fused element-wise ops (RMSNorm, RoPE, gated activations, softmax).
// Block kernels index several arrays in lockstep, mirroring the GGUF format definitions.
#![allow(clippy::needless_range_loop)]

pub mod attention;
pub mod cpu;
pub mod dense;
pub mod dense_bf16;
pub mod dot;
pub mod flash_attention;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod packed_k;
pub mod pool;
pub mod quant;
pub mod quantize;
pub mod sampling;

pub use quant::GgmlType;
