//! Loading a model for serving or generation: resolve the name, map the GGUF file, build the forward,
//! the tokenizer and the chat template.
use crate::catalog::{self, CatalogError, ResolvedModel};
use crate::chat_template::{builtin_template, ChatTemplate, ChatTemplateError};
use crate::tokenizer::{ModelTokenizer, TokenizerError};
use inhaus_models::{arch, GgufFile, ModelError, Transformer};
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] ChatTemplateError),
}

/// A model ready to run: weights, tokenizer and chat template.
pub struct LoadedModel {
    pub name: String,
    pub resolved: ResolvedModel,
    pub model: Transformer,
    pub tokenizer: ModelTokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// The weights' quantization (llama.cpp's file-type name, e.g. `Q4_K_M`), when the file says.
    pub quantization: Option<String>,
    /// The hex sha256 of the weights file: the catalog's (checked when fetched) or computed on a
    /// background thread after loading (empty until then).
    pub weights_sha256: Arc<OnceLock<String>>,
}

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

/// The weights' sha256: the catalog's, or hashed on a background thread.
fn weights_sha256(resolved: &ResolvedModel) -> Arc<OnceLock<String>> {
    let cell = Arc::new(OnceLock::new());
    if let Some(e) = resolved.entry.filter(|e| !e.sha256.is_empty()) {
        let _ = cell.set(e.sha256.clone());
        return cell;
    }
    let (path, out) = (resolved.path.clone(), cell.clone());
    let spawned = std::thread::Builder::new()
        .name("weights-sha256".into())
        .spawn(move || match std::fs::File::open(&path) {
            Ok(mut f) => {
                let mut h = Sha256::new();
                if std::io::copy(&mut f, &mut h).is_ok() {
                    let _ = out.set(crate::digest::hex(&h.finalize()));
                }
            }
            Err(e) => tracing::warn!(path = %path.display(), "hashing the weights: {e}"),
        });
    if let Err(e) = spawned {
        tracing::warn!("hashing the weights: {e}");
    }
    cell
}

pub fn load(name: &str) -> Result<LoadedModel, LoadError> {
    let start = Instant::now();
    let resolved = catalog::resolve(name)?;
    tracing::info!(model = %resolved.name, path = %resolved.path.display(), "loading model");
    let file = GgufFile::open(&resolved.path)?;
    let model = arch::load_gguf(&file)?;
    let tokenizer = ModelTokenizer::from_gguf(&file)?;
    let source = match file.get_str("tokenizer.chat_template") {
        Ok(t) => Some(t.to_string()),
        Err(_) => builtin_template(&model.config.architecture).map(str::to_string),
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
        arch = %model.config.architecture,
        layers = model.config.n_layers,
        vocab = model.config.vocab,
        secs = format!("{:.2}", start.elapsed().as_secs_f64()),
        "model loaded"
    );
    let quantization = file
        .get_usize("general.file_type")
        .ok()
        .and_then(file_type_name)
        .map(str::to_string);
    let weights_sha256 = weights_sha256(&resolved);
    Ok(LoadedModel {
        name: resolved.name.clone(),
        resolved,
        model,
        tokenizer,
        chat_template,
        quantization,
        weights_sha256,
    })
}
