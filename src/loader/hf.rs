//! A Hugging Face model folder: `config.json` and safetensors into the candle decoder on the chosen
//! device, the tokenizer from `tokenizer.json` / `tokenizer_config.json`, the chat template
//! (`chat_template.jinja` or `tokenizer_config.json`'s `chat_template`), and eos ids and sampling
//! defaults from `generation_config.json`.
use super::hub::Snapshot;
use super::{
    weights_sha256, DeviceChoice, DtypeChoice, GenerationDefaults, LoadError, LoadOptions,
    LoadedModel, ModelSource,
};
use crate::catalog::ResolvedModel;
use crate::chat_template::{builtin_template, ChatTemplate};
use crate::tokenizer::hf_tokenizer::{read_json, special_text};
use crate::tokenizer::ModelTokenizer;
use candle_core::{DType, Device};
use inhaus_models::decoder::weights::safetensors_files;
use inhaus_models::{CandleDecoder, Forward, ModelError};
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// Whether the folder's `config.json` names a causal language model.
pub fn is_decoder(dir: &Path) -> bool {
    let Ok(Value::Object(c)) = read_json(&dir.join("config.json")) else {
        return false;
    };
    let by_class = c
        .get("architectures")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|n| n.ends_with("ForCausalLM") || n.ends_with("LMHeadModel"))
        });
    by_class
        || c.get("model_type")
            .and_then(Value::as_str)
            .is_some_and(|t| {
                matches!(
                    t,
                    "llama" | "mistral" | "qwen2" | "qwen3" | "gemma3_text" | "phi3"
                )
            })
}

pub(super) fn device(choice: DeviceChoice) -> Result<Device, LoadError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => Device::new_cuda(n).map_err(|e| {
            LoadError::Options(format!(
                "--device cuda:{n}: {e} (CUDA needs a build with `--features cuda` and a GPU)"
            ))
        }),
    }
}

/// The dtype to run in: the choice, or for `auto` the checkpoint's own (`dtype`, or the older
/// `torch_dtype`, in `config.json`; bf16 when it names none) where the device computes it fast: on a
/// GPU always; on the CPU bf16 only where it multiplies bf16 natively (AVX512-BF16), and f32
/// otherwise (f16, and bf16 without native support, run slower than f32 there).
fn dtype(choice: DtypeChoice, device: &Device, config: &Value) -> DType {
    match choice {
        DtypeChoice::F32 => DType::F32,
        DtypeChoice::F16 => DType::F16,
        DtypeChoice::Bf16 => DType::BF16,
        DtypeChoice::Auto => {
            let declared = config
                .get("dtype")
                .or_else(|| config.get("torch_dtype"))
                .and_then(Value::as_str);
            let own = match declared {
                Some("float32") => DType::F32,
                Some("float16") => DType::F16,
                _ => DType::BF16,
            };
            match own {
                DType::BF16 if device.is_cpu() && !inhaus_kernels::dense_bf16::native_bf16() => {
                    DType::F32
                }
                DType::F16 if device.is_cpu() => DType::F32,
                d => d,
            }
        }
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

/// The chat template: `chat_template.jinja`, else `tokenizer_config.json`'s (a string, or a list
/// of named templates of which `default` is used), else a built-in one for the family.
fn template_source(dir: &Path, config: &Value, arch: &str) -> Result<Option<String>, LoadError> {
    let file = dir.join("chat_template.jinja");
    if file.is_file() {
        return std::fs::read_to_string(&file).map(Some).map_err(|source| {
            LoadError::Model(ModelError::Io {
                path: file.display().to_string(),
                source,
            })
        });
    }
    Ok(match config.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or(list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => builtin_template(arch).map(str::to_string),
    })
}

fn generation_defaults(g: &Value) -> GenerationDefaults {
    let f = |k: &str| g.get(k).and_then(Value::as_f64).map(|v| v as f32);
    GenerationDefaults {
        temperature: f("temperature"),
        top_p: f("top_p"),
        top_k: g.get("top_k").and_then(Value::as_u64).map(|k| k as u32),
    }
}

/// Loads the folder `dir`, served as `name`; `snapshot` when it was resolved from a repo id.
pub fn load(
    dir: &Path,
    name: &str,
    snapshot: Option<Snapshot>,
    opts: &LoadOptions,
) -> Result<LoadedModel, LoadError> {
    let start = Instant::now();
    let config = read_json(&dir.join("config.json"))?;
    if config.is_null() {
        return Err(LoadError::Options(format!(
            "{} is not a model folder: it has no config.json",
            dir.display()
        )));
    }
    let device = device(opts.device)?;
    let dtype = dtype(opts.dtype, &device, &config);
    tracing::info!(model = %name, path = %dir.display(), dtype = dtype_name(dtype),
        device = %opts.device, "loading model");
    let decoder = CandleDecoder::load_hf(dir, dtype, &device)?;
    let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
    let generation = read_json(&dir.join("generation_config.json"))?;
    let tokenizer = ModelTokenizer::from_hf(dir, &tokenizer_config, &generation)?;
    let chat_template = match template_source(dir, &tokenizer_config, &decoder.spec.architecture)? {
        Some(src) => Some(ChatTemplate::new(
            &src,
            &special_text(&tokenizer_config, "bos_token").unwrap_or_default(),
            &special_text(&tokenizer_config, "eos_token").unwrap_or_default(),
        )?),
        None => None,
    };
    let served_name = match &snapshot {
        Some(_) => name.to_string(),
        None => dir
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_string()),
    };
    let resolved = ResolvedModel {
        name: served_name.clone(),
        path: dir.to_path_buf(),
        entry: None,
    };
    let files = safetensors_files(dir).map_err(ModelError::Unsupported)?;
    let source = ModelSource {
        kind: if snapshot.is_some() { "repo" } else { "folder" },
        location: match &snapshot {
            Some(_) => name.to_string(),
            None => dir.display().to_string(),
        },
        revision: snapshot.map(|s| s.commit),
        format: "safetensors",
        dtype: dtype_name(dtype).into(),
        device: opts.device.to_string(),
    };
    let model = Forward::Candle(decoder);
    tracing::info!(
        model = %served_name,
        arch = %model.architecture(),
        layers = model.n_layers(),
        vocab = model.vocab(),
        secs = format!("{:.2}", start.elapsed().as_secs_f64()),
        "model loaded"
    );
    Ok(LoadedModel {
        name: served_name,
        weights_sha256: weights_sha256(&resolved, files),
        resolved,
        source,
        generation_defaults: generation_defaults(&generation),
        model,
        tokenizer,
        chat_template,
        quantization: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_runs_the_checkpoints_dtype_where_the_cpu_computes_it_fast() {
        let cpu = Device::Cpu;
        let conf = |d: &str| serde_json::json!({ "torch_dtype": d });
        let auto = |c: &Value| dtype(DtypeChoice::Auto, &cpu, c);
        let bf16 = if inhaus_kernels::dense_bf16::native_bf16() {
            DType::BF16
        } else {
            DType::F32
        };
        assert_eq!(auto(&conf("bfloat16")), bf16);
        assert_eq!(auto(&serde_json::json!({ "dtype": "bfloat16" })), bf16);
        assert_eq!(auto(&serde_json::json!({})), bf16);
        assert_eq!(auto(&conf("float32")), DType::F32);
        assert_eq!(auto(&conf("float16")), DType::F32);
        // An explicit choice is kept whatever the checkpoint says.
        assert_eq!(dtype(DtypeChoice::F16, &cpu, &conf("float32")), DType::F16);
    }
}
