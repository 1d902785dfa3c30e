//! A GGUF model (catalog alias or `.gguf` file): the mapped file, the own-kernel forward (or the
//! candle decoder on a chosen device), the tokenizer and chat template from its metadata.
use super::{weights_sha256, DeviceChoice, LoadError, LoadedModel, ModelSource};
use crate::catalog::ResolvedModel;
use crate::chat_template::{builtin_template, ChatTemplate};
use crate::tokenizer::ModelTokenizer;
use inhaus_models::{arch, CandleDecoder, Forward, GgufFile};
use std::time::Instant;

/// llama.cpp's names of `general.file_type`.
fn file_type_name(t: usize) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

/// Loads `resolved` on the own kernels, or with `candle` on the candle decoder on that device.
pub fn load(
    resolved: ResolvedModel,
    candle: Option<DeviceChoice>,
) -> Result<LoadedModel, LoadError> {
    let start = Instant::now();
    let backend = if candle.is_some() { "candle" } else { "native" };
    tracing::info!(model = %resolved.name, path = %resolved.path.display(), backend, "loading model");
    let file = GgufFile::open(&resolved.path)?;
    let model = match candle {
        None => Forward::Native(arch::load_gguf(&file)?),
        Some(choice) => {
            let device = super::hf::device(choice)?;
            Forward::Candle(CandleDecoder::load_gguf(&file, &resolved.path, &device)?)
        }
    };
    let tokenizer = ModelTokenizer::from_gguf(&file)?;
    let source = match file.get_str("tokenizer.chat_template") {
        Ok(t) => Some(t.to_string()),
        Err(_) => builtin_template(model.architecture()).map(str::to_string),
    };
    let text_of = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_text(i))
            .unwrap_or("")
            .to_string()
    };
    let chat_template = match source {
        Some(s) => Some(ChatTemplate::new(
            &s,
            &text_of(tokenizer.bos_id),
            &text_of(tokenizer.eos_id),
        )?),
        None => None,
    };
    tracing::info!(
        model = %resolved.name,
        arch = %model.architecture(),
        layers = model.n_layers(),
        vocab = model.vocab(),
        secs = format!("{:.2}", start.elapsed().as_secs_f64()),
        "model loaded"
    );
    let quantization = file
        .get_usize("general.file_type")
        .ok()
        .and_then(file_type_name)
        .map(str::to_string);
    let weights_sha256 = weights_sha256(&resolved, vec![resolved.path.clone()]);
    let source = ModelSource {
        kind: "file",
        location: resolved.path.display().to_string(),
        revision: None,
        format: "gguf",
        dtype: quantization.clone().unwrap_or_else(|| "unknown".into()),
        device: candle.unwrap_or_default().to_string(),
    };
    Ok(LoadedModel {
        name: resolved.name.clone(),
        resolved,
        source,
        generation_defaults: Default::default(),
        model,
        tokenizer,
        chat_template,
        quantization,
        weights_sha256,
    })
}
