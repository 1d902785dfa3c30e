//! A Hugging Face `config.json` read into a [`DecoderSpec`], for the architectures the candle decoder
//! runs: Llama (incl. Llama 3 RoPE scaling), Mistral (sliding window), Qwen 2/2.5 (qkv bias), Qwen 3
//! (q/k norm), Gemma 3 (text; sliding/global layers, `1 + w` norms) and Phi-3 (fused projections).
//!
//! Both ways transformers writes RoPE settings are read: `rope_theta` + `rope_scaling` (+ Gemma's
//! `rope_local_base_freq`), and transformers 5's `rope_parameters` (one table, or one per layer type).
use super::rope::{rope_spec, RopeScaling};
use super::spec::{Act, DecoderSpec, LayerAttn};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    rope_local_base_freq: Option<f64>,
    partial_rotary_factor: Option<f64>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    sliding_window_pattern: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

/// The architecture families by their `architectures` / `model_type` names.
fn family(raw: &RawConfig) -> Option<&'static str> {
    let by_class = raw.architectures.iter().find_map(|a| {
        Some(match a.as_str() {
            "LlamaForCausalLM" => "llama",
            "MistralForCausalLM" => "mistral",
            "Qwen2ForCausalLM" => "qwen2",
            "Qwen3ForCausalLM" => "qwen3",
            "Gemma3ForCausalLM" => "gemma3",
            "Phi3ForCausalLM" => "phi3",
            _ => return None,
        })
    });
    by_class.or_else(|| match raw.model_type.as_deref()? {
        "llama" => Some("llama"),
        "mistral" => Some("mistral"),
        "qwen2" => Some("qwen2"),
        "qwen3" => Some("qwen3"),
        "gemma3_text" => Some("gemma3"),
        "phi3" => Some("phi3"),
        _ => None,
    })
}

/// The architectures this module reads, for error messages.
pub const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, \
Qwen3ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM";

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// A RoPE-parameters object (`rope_scaling`, or one table of `rope_parameters`) as a base (when it
/// has one) and a scaling.
fn parse_rope(
    v: Option<&Value>,
    max_pos: usize,
    raw: &RawConfig,
) -> Result<(Option<f64>, RopeScaling), String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok((None, RopeScaling::None));
    };
    let base = num(v, "rope_theta");
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let need =
        |key: &str| num(v, key).ok_or_else(|| format!("rope scaling `{kind}` without `{key}`"));
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        "longrope" | "su" => {
            let short_factor: Vec<f64> = v
                .get("short_factor")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .ok_or("LongRoPE without `short_factor`")?;
            let original = num(v, "original_max_position_embeddings")
                .or(raw.original_max_position_embeddings.map(|o| o as f64))
                .unwrap_or(max_pos as f64);
            let factor = num(v, "factor").unwrap_or(max_pos as f64 / original);
            let attention_factor = match num(v, "attention_factor") {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / original.ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor,
                attention_factor,
            }
        }
        other => return Err(format!("RoPE scaling `{other}` is not supported")),
    };
    Ok((base, scaling))
}

/// Reads `config.json`'s text into the decoder's description. `has_lm_head`: whether the weights
/// hold a separate output head (else the embeddings are tied).
pub fn spec_from_hf_config(text: &str, has_lm_head: bool) -> Result<DecoderSpec, String> {
    let raw: RawConfig = serde_json::from_str(text).map_err(|e| format!("config.json: {e}"))?;
    let arch = family(&raw).ok_or_else(|| {
        format!(
            "architecture {:?} (model_type {:?}) is not supported; supported: {SUPPORTED}",
            raw.architectures, raw.model_type
        )
    })?;
    let gemma = arch == "gemma3";
    let n_heads = raw.num_attention_heads;
    let n_kv_heads = raw.num_key_value_heads.unwrap_or(n_heads);
    let head_dim = raw
        .head_dim
        .unwrap_or(raw.hidden_size.checked_div(n_heads).unwrap_or(0));
    let max_pos = raw.max_position_embeddings.unwrap_or(4096);
    let rotary_dims = match raw.partial_rotary_factor {
        Some(f) => ((head_dim as f64 * f) as usize) & !1,
        None => head_dim,
    };

    // Which layers slide, and over how many positions.
    let n = raw.num_hidden_layers;
    let sliding: Vec<bool> = match (&raw.layer_types, arch) {
        (Some(t), _) => {
            if t.len() != n {
                return Err(format!(
                    "layer_types has {} entries for {n} layers",
                    t.len()
                ));
            }
            t.iter().map(|s| s == "sliding_attention").collect()
        }
        (None, "gemma3") => {
            let p = raw.sliding_window_pattern.unwrap_or(6).max(1);
            (0..n).map(|i| (i + 1) % p != 0).collect()
        }
        (None, "qwen2" | "qwen3") => {
            let from = raw.max_window_layers.unwrap_or(n);
            (0..n)
                .map(|i| raw.use_sliding_window == Some(true) && i >= from)
                .collect()
        }
        (None, _) => vec![raw.sliding_window.is_some(); n],
    };
    if sliding.iter().any(|&s| s) && raw.sliding_window.is_none() {
        return Err("sliding-window layers without `sliding_window`".into());
    }

    // RoPE: one table for full-attention layers and (Gemma) one for sliding layers.
    let (full_base, full_scaling, local_base, local_scaling) = match &raw.rope_parameters {
        Some(p) if p.get("full_attention").is_some() || p.get("sliding_attention").is_some() => {
            let (fb, fs) = parse_rope(p.get("full_attention"), max_pos, &raw)?;
            let (lb, ls) = parse_rope(p.get("sliding_attention"), max_pos, &raw)?;
            (fb, fs, lb, Some(ls))
        }
        Some(p) => {
            let (b, s) = parse_rope(Some(p), max_pos, &raw)?;
            (b, s, None, None)
        }
        None => {
            let (b, s) = parse_rope(raw.rope_scaling.as_ref(), max_pos, &raw)?;
            (b, s, None, None)
        }
    };
    let full_base = full_base.or(raw.rope_theta).unwrap_or(10_000.0);
    let mut ropes = vec![rope_spec(full_base, rotary_dims, &full_scaling)?];
    let local = if gemma {
        // Gemma's sliding layers: their own base, unscaled.
        let base = local_base.or(raw.rope_local_base_freq).unwrap_or(10_000.0);
        ropes.push(rope_spec(
            base,
            rotary_dims,
            &local_scaling.unwrap_or(RopeScaling::None),
        )?);
        1
    } else {
        0
    };
    let context_len = match &full_scaling {
        // Only the short factors are implemented: serve the context they are for.
        RopeScaling::LongRope { .. } => raw.original_max_position_embeddings.unwrap_or(max_pos),
        _ => max_pos,
    };

    let layers = sliding
        .iter()
        .map(|&s| LayerAttn {
            rope: if s { local } else { 0 },
            window: if s { raw.sliding_window } else { None },
        })
        .collect();
    let act_name = raw
        .hidden_activation
        .as_deref()
        .or(raw.hidden_act.as_deref())
        .unwrap_or(if gemma { "gelu_pytorch_tanh" } else { "silu" });
    let act = Act::from_hf(act_name).ok_or_else(|| format!("activation `{act_name}`"))?;
    let tied_default = matches!(arch, "gemma3");
    let spec = DecoderSpec {
        architecture: arch.to_string(),
        n_layers: n,
        hidden: raw.hidden_size,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn: raw.intermediate_size,
        vocab: raw.vocab_size,
        context_len,
        rms_eps: raw.rms_norm_eps.unwrap_or(1e-6),
        norm_offset: if gemma { 1.0 } else { 0.0 },
        embed_scale: gemma.then(|| (raw.hidden_size as f64).sqrt()),
        attn_scale: match (gemma, raw.query_pre_attn_scalar) {
            (true, Some(s)) => 1.0 / s.sqrt(),
            _ => 1.0 / (head_dim as f64).sqrt(),
        },
        attn_softcap: raw.attn_logit_softcapping.filter(|_| gemma),
        final_softcap: raw.final_logit_softcapping.filter(|_| gemma),
        act,
        rope_interleaved: false,
        rotary_dims,
        ropes,
        layers,
        tied_embeddings: raw.tie_word_embeddings.unwrap_or(tied_default) || !has_lm_head,
    };
    spec.validate()?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN: &str = r#"{"architectures":["Qwen2ForCausalLM"],"hidden_size":896,
        "intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,
        "num_key_value_heads":2,"vocab_size":151936,"max_position_embeddings":32768,
        "rms_norm_eps":1e-6,"rope_theta":1000000.0,"sliding_window":32768,
        "use_sliding_window":false,"max_window_layers":21,"tie_word_embeddings":true,
        "hidden_act":"silu"}"#;

    #[test]
    fn qwen2_reads_heads_rope_and_no_window() {
        let s = spec_from_hf_config(QWEN, false).unwrap();
        assert_eq!((s.n_heads, s.n_kv_heads, s.head_dim), (14, 2, 64));
        assert!(s.layers.iter().all(|l| l.window.is_none()));
        assert!(s.tied_embeddings);
        // inv_freq is f32: compared within its precision.
        assert!((s.ropes[0].inv_freq[1] as f64 - 1e6f64.powf(-2.0 / 64.0)).abs() < 1e-7);
    }

    #[test]
    fn gemma3_layer_types_pick_the_local_table_and_window() {
        let text = r#"{"architectures":["Gemma3ForCausalLM"],"model_type":"gemma3_text",
            "hidden_size":64,"intermediate_size":128,"num_hidden_layers":3,"num_attention_heads":4,
            "num_key_value_heads":2,"head_dim":16,"vocab_size":100,"sliding_window":8,
            "layer_types":["sliding_attention","sliding_attention","full_attention"],
            "rope_parameters":{"full_attention":{"rope_type":"default","rope_theta":1000000.0},
                               "sliding_attention":{"rope_type":"default","rope_theta":10000.0}},
            "query_pre_attn_scalar":16}"#;
        let s = spec_from_hf_config(text, false).unwrap();
        assert_eq!(
            s.layers[0],
            LayerAttn {
                rope: 1,
                window: Some(8)
            }
        );
        assert_eq!(
            s.layers[2],
            LayerAttn {
                rope: 0,
                window: None
            }
        );
        assert_eq!(s.norm_offset, 1.0);
        assert_eq!(s.embed_scale, Some(8.0));
        assert_eq!(s.attn_scale, 0.25);
    }

    #[test]
    fn unknown_architectures_and_scalings_are_errors() {
        let e = spec_from_hf_config(&QWEN.replace("Qwen2ForCausalLM", "GPT2LMHeadModel"), true)
            .unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let yarn = QWEN.replace(
            "\"hidden_act\"",
            "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0},\"hidden_act\"",
        );
        assert!(spec_from_hf_config(&yarn, true)
            .unwrap_err()
            .contains("yarn"));
    }
}
