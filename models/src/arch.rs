//! Per-architecture differences, read from GGUF metadata into a [`ModelConfig`]:
//! Gemma 3 (scaled embeddings, q/k norms, post-norms, GELU, 5:1 sliding-window/global layers),
//! Qwen 2 (q/k/v biases, NeoX RoPE, SiLU) and Llama (interleaved RoPE, SiLU).
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::transformer::{Activation, LayerSpec, ModelConfig, Transformer};
use crate::Result;
use inhaus_kernels::ops::RopeStyle;

/// Shape fields every architecture stores under `<arch>.*`.
fn common(file: &GgufFile, arch: &str) -> Result<ModelConfig> {
    let k = |name: &str| format!("{arch}.{name}");
    let hidden = file.get_usize(&k("embedding_length"))?;
    let n_heads = file.get_usize(&k("attention.head_count"))?;
    let n_kv_heads = file
        .get_usize(&k("attention.head_count_kv"))
        .unwrap_or(n_heads);
    let head_dim = file
        .get_usize(&k("attention.key_length"))
        .unwrap_or(hidden / n_heads);
    let n_layers = file.get_usize(&k("block_count"))?;
    let vocab = match file
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
    {
        Some(t) => t.len(),
        None => file.tensor("token_embd.weight")?.dims[0],
    };
    let rope_base = file.get_f32(&k("rope.freq_base")).unwrap_or(10_000.0);
    let rope_freq_scale = match file.get_str(&k("rope.scaling.type")) {
        Ok("linear") => 1.0 / file.get_f32(&k("rope.scaling.factor")).unwrap_or(1.0),
        _ => 1.0,
    };
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(ModelError::Unsupported(format!(
            "{n_heads} query heads over {n_kv_heads} KV heads"
        )));
    }
    Ok(ModelConfig {
        architecture: arch.to_string(),
        n_layers,
        hidden,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn: file.get_usize(&k("feed_forward_length"))?,
        vocab,
        context_len: file.get_usize(&k("context_length")).unwrap_or(4096),
        rms_eps: file
            .get_f32(&k("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-6),
        embed_scale: None,
        rope_style: RopeStyle::Neox,
        rope_dims: file
            .get_usize(&k("rope.dimension_count"))
            .unwrap_or(head_dim),
        rope_freq_scale,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        attn_softcap: None,
        final_softcap: None,
        activation: Activation::Silu,
        layers: vec![
            LayerSpec {
                rope_base,
                window: None
            };
            n_layers
        ],
    })
}

fn gemma3(file: &GgufFile) -> Result<ModelConfig> {
    let mut c = common(file, "gemma3")?;
    c.embed_scale = Some((c.hidden as f32).sqrt());
    c.activation = Activation::GeluTanh;
    c.attn_scale = match file.get_f32("gemma3.attention.query_pre_attn_scalar") {
        Ok(s) => 1.0 / s.sqrt(),
        Err(_) => 1.0 / (c.head_dim as f32).sqrt(),
    };
    let window = file.get_usize("gemma3.attention.sliding_window")?;
    let global_base = c.layers[0].rope_base;
    // Five sliding-window layers (RoPE base 10 000) then one global layer, repeating.
    for (i, l) in c.layers.iter_mut().enumerate() {
        *l = if i % 6 < 5 {
            LayerSpec {
                rope_base: 10_000.0,
                window: Some(window),
            }
        } else {
            LayerSpec {
                rope_base: global_base,
                window: None,
            }
        };
    }
    Ok(c)
}

fn qwen2(file: &GgufFile) -> Result<ModelConfig> {
    common(file, "qwen2")
}

fn llama(file: &GgufFile) -> Result<ModelConfig> {
    let mut c = common(file, "llama")?;
    c.rope_style = RopeStyle::Interleaved;
    Ok(c)
}

/// Reads the architecture's configuration from the file's metadata.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    match file.architecture()? {
        "gemma3" => gemma3(file),
        "qwen2" => qwen2(file),
        "llama" => llama(file),
        other => Err(ModelError::Unsupported(format!("architecture `{other}`"))),
    }
}

/// Loads a model of any supported architecture from a GGUF file.
pub fn load_gguf(file: &GgufFile) -> Result<Transformer> {
    let config = config_from_gguf(file)?;
    Transformer::load(file, config)
}
