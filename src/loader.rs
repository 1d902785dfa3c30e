//! Loading a model for serving or generation: resolve the name, map the GGUF file, build the forward,
//! the tokenizer and the chat template.
use crate::catalog::{self, CatalogError, ResolvedModel};
use crate::chat_template::{builtin_template, ChatTemplate, ChatTemplateError};
use crate::tokenizer::{ModelTokenizer, TokenizerError};
use inhaus_models::{arch, GgufFile, ModelError, Transformer};
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
    Ok(LoadedModel {
        name: resolved.name.clone(),
        resolved,
        model,
        tokenizer,
        chat_template,
    })
}
