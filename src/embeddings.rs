//! Sentence embeddings: a sentence-transformers folder model (BERT encoder + mean pooling + L2 normalization,
//! e.g. all-MiniLM-L6-v2) computing the same vectors as sentence-transformers does.
//!
//! Inputs are texts or token arrays (ids without `[CLS]`/`[SEP]`, as an OpenAI `input` of integers holds).
//! Like sentence-transformers, an input longer than the model's `max_seq_length` (sentence_bert_config.json,
//! 256 for all-MiniLM-L6-v2) is cut to its first `max_seq_length - 2` tokens plus `[CLS]`/`[SEP]`; an input
//! longer than the model's position table ([`Embedder::max_input_tokens`], 512) is refused with
//! [`EmbedError::InputTooLong`] (an invalid request, not a server fault). Inputs are batched internally,
//! sorted by length, with padding masked, so a vector does not depend on what it was batched with.
use crate::catalog::{self, CatalogError};
use candle_core::Device;
use inhaus_models::{BertConfig, BertError, BertModel};
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokenizers::Tokenizer;

/// Inputs encoded together in one forward.
const BATCH: usize = 32;

#[derive(Debug, Error)]
pub enum EmbedError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {path}: {message}")]
    Config { path: String, message: String },
    #[error("unsupported embedding model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("input {index} has {tokens} tokens, more than the {max} this model accepts")]
    InputTooLong {
        index: usize,
        tokens: usize,
        max: usize,
    },
    #[error("input {index} holds token id {token}, outside the vocabulary of {vocab}")]
    InvalidToken {
        index: usize,
        token: u32,
        vocab: usize,
    },
    #[error(transparent)]
    Model(#[from] BertError),
}

impl EmbedError {
    /// Whether the request's input is at fault (HTTP 400) rather than the server (500).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            EmbedError::InputTooLong { .. } | EmbedError::InvalidToken { .. }
        )
    }
}

/// A loaded sentence-embedding model.
pub struct Embedder {
    name: String,
    model: BertModel,
    tokenizer: Tokenizer,
    cls: u32,
    sep: u32,
    max_seq_length: usize,
    do_lower_case: bool,
    normalize: bool,
}

fn read_json(path: &Path) -> Result<serde_json::Value, EmbedError> {
    let text = std::fs::read_to_string(path).map_err(|source| EmbedError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| EmbedError::Config {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn config_error(path: &Path, message: impl Into<String>) -> EmbedError {
    EmbedError::Config {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// What modules.json and the Pooling config say; only mean pooling (+ optional Normalize) is supported.
struct Pipeline {
    normalize: bool,
}

fn read_pipeline(dir: &Path, hidden: usize) -> Result<Pipeline, EmbedError> {
    let path = dir.join("modules.json");
    let modules = read_json(&path)?;
    let modules = modules
        .as_array()
        .ok_or_else(|| config_error(&path, "not a list of modules"))?;
    let mut kinds = Vec::new();
    let mut pooling_dir = None;
    for m in modules {
        let ty = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let kind = ty.rsplit('.').next().unwrap_or(ty).to_string();
        let sub = m.get("path").and_then(|p| p.as_str()).unwrap_or("");
        match kind.as_str() {
            "Transformer" if !sub.is_empty() => {
                return Err(EmbedError::Unsupported(format!(
                    "Transformer module in sub-folder `{sub}`"
                )))
            }
            "Pooling" => pooling_dir = Some(dir.join(sub)),
            "Transformer" | "Normalize" => {}
            _ => {
                return Err(EmbedError::Unsupported(format!(
                    "sentence-transformers module `{ty}`"
                )))
            }
        }
        kinds.push(kind);
    }
    let normalize = match kinds
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["Transformer", "Pooling"] => false,
        ["Transformer", "Pooling", "Normalize"] => true,
        other => {
            return Err(EmbedError::Unsupported(format!(
                "module pipeline {other:?} (expected Transformer, Pooling[, Normalize])"
            )))
        }
    };
    let pooling_path = pooling_dir
        .unwrap_or_else(|| dir.join("1_Pooling"))
        .join("config.json");
    let pooling = read_json(&pooling_path)?;
    let pooling = pooling
        .as_object()
        .ok_or_else(|| config_error(&pooling_path, "not an object"))?;
    for (key, value) in pooling {
        if key.starts_with("pooling_mode_") {
            let on = value.as_bool().unwrap_or(false);
            if on != (key == "pooling_mode_mean_tokens") {
                return Err(EmbedError::Unsupported(format!(
                    "pooling `{key}: {value}` (only mean pooling is supported)"
                )));
            }
        }
    }
    if pooling
        .get("pooling_mode_mean_tokens")
        .and_then(|v| v.as_bool())
        != Some(true)
    {
        return Err(EmbedError::Unsupported(
            "pooling without pooling_mode_mean_tokens".into(),
        ));
    }
    if let Some(dim) = pooling
        .get("word_embedding_dimension")
        .and_then(|v| v.as_u64())
    {
        if dim as usize != hidden {
            return Err(config_error(
                &pooling_path,
                format!("word_embedding_dimension {dim} != the model's hidden size {hidden}"),
            ));
        }
    }
    Ok(Pipeline { normalize })
}

impl Embedder {
    /// Loads a catalog alias (its folder under the models directory), a model folder, or a file inside one.
    pub fn load(model: &str) -> Result<Self, EmbedError> {
        if catalog::find(model).is_some() {
            let resolved = catalog::resolve(model)?;
            let dir = resolved
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            return Self::from_dir(&dir, &resolved.name);
        }
        let path = PathBuf::from(model);
        let dir = if path.is_dir() {
            path.clone()
        } else if path.is_file() {
            path.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        } else {
            let aliases: Vec<&str> = catalog::entries()
                .iter()
                .map(|e| e.alias.as_str())
                .collect();
            return Err(CatalogError::Unknown(model.into(), aliases.join(", ")).into());
        };
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| model.to_string());
        Self::from_dir(&dir, &name)
    }

    /// Loads a sentence-transformers folder: config.json, model.safetensors, tokenizer.json, modules.json,
    /// the Pooling config and (optional) sentence_bert_config.json.
    pub fn from_dir(dir: &Path, name: &str) -> Result<Self, EmbedError> {
        let start = std::time::Instant::now();
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let pipeline = read_pipeline(dir, config.hidden_size)?;

        let st_path = dir.join("sentence_bert_config.json");
        let (mut max_seq_length, do_lower_case) = if st_path.is_file() {
            let st = read_json(&st_path)?;
            (
                st.get("max_seq_length")
                    .and_then(|v| v.as_u64())
                    .map(|v| v as usize)
                    .unwrap_or(config.max_position_embeddings),
                st.get("do_lower_case")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
            )
        } else {
            (config.max_position_embeddings, false)
        };
        max_seq_length = max_seq_length.min(config.max_position_embeddings);
        if max_seq_length < 2 {
            return Err(config_error(&st_path, "max_seq_length below 2"));
        }

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        // tokenizer.json may carry fixed padding/truncation (128 for all-MiniLM-L6-v2); sentence-transformers
        // overrides both per call, and so does this module.
        tokenizer
            .with_truncation(None)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let encode = |text: &str, special: bool| -> Result<Vec<u32>, EmbedError> {
            tokenizer
                .encode_fast(text, special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| EmbedError::Tokenizer(e.to_string()))
        };
        let (cls, sep) = match encode("", true)?.as_slice() {
            [cls, sep] => (*cls, *sep),
            other => {
                return Err(EmbedError::Unsupported(format!(
                    "tokenizer post-processor adds {other:?} to an empty text, not [CLS] [SEP]"
                )))
            }
        };
        let probe = "Hello, world";
        let mut expect = vec![cls];
        expect.extend(encode(probe, false)?);
        expect.push(sep);
        if encode(probe, true)? != expect {
            return Err(EmbedError::Unsupported(
                "tokenizer post-processor is not `[CLS] $A [SEP]`".into(),
            ));
        }

        let model = BertModel::load(config, &dir.join("model.safetensors"), &Device::Cpu)?;
        tracing::info!(
            model = name,
            dims = model.hidden_size(),
            layers = model.config.num_hidden_layers,
            max_seq_length,
            normalize = pipeline.normalize,
            secs = format!("{:.2}", start.elapsed().as_secs_f64()),
            "embedding model loaded"
        );
        Ok(Self {
            name: name.to_string(),
            model,
            tokenizer,
            cls,
            sep,
            max_seq_length,
            do_lower_case,
            normalize: pipeline.normalize,
        })
    }

    /// The name the model is served under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The length of every vector (384 for all-MiniLM-L6-v2).
    pub fn dimensions(&self) -> usize {
        self.model.hidden_size()
    }

    /// The most tokens (with `[CLS]`/`[SEP]`, as [`Embedder::count_tokens`] counts) an input may have; longer
    /// inputs are refused with [`EmbedError::InputTooLong`]. The model's position table: 512.
    pub fn max_input_tokens(&self) -> usize {
        self.model.max_positions()
    }

    /// The tokens (with `[CLS]`/`[SEP]`) the model actually sees of one input; longer inputs are truncated
    /// to this, as sentence-transformers does (its `max_seq_length`, 256 for all-MiniLM-L6-v2).
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Token ids of `text` without `[CLS]`/`[SEP]`: the token-array form of the text.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        let lowered;
        let text = if self.do_lower_case {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))
    }

    /// The tokens of `text` with `[CLS]`/`[SEP]`, before any truncation (what usage reports and
    /// [`Embedder::max_input_tokens`] limits).
    pub fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
        Ok(self.tokenize(text)?.len() + 2)
    }

    /// The ids the encoder sees for a token array: `[CLS]`, the first `max_seq_length - 2` ids, `[SEP]`.
    pub fn model_input_ids(&self, ids: &[u32]) -> Vec<u32> {
        let keep = ids.len().min(self.max_seq_length - 2);
        let mut out = Vec::with_capacity(keep + 2);
        out.push(self.cls);
        out.extend_from_slice(&ids[..keep]);
        out.push(self.sep);
        out
    }

    /// One vector per text, in order.
    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let ids = texts
            .iter()
            .map(|t| self.tokenize(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        self.embed_tokens(&ids)
    }

    /// One vector per token array (ids without `[CLS]`/`[SEP]`), in order.
    pub fn embed_tokens(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let max = self.max_input_tokens();
        let vocab = self.model.config.vocab_size;
        let mut model_inputs = Vec::with_capacity(inputs.len());
        for (index, ids) in inputs.iter().enumerate() {
            let tokens = ids.len() + 2;
            if tokens > max {
                return Err(EmbedError::InputTooLong { index, tokens, max });
            }
            if let Some(&token) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(EmbedError::InvalidToken {
                    index,
                    token,
                    vocab,
                });
            }
            model_inputs.push(self.model_input_ids(ids));
        }
        // Longest first, so that each batch pads little.
        let mut order: Vec<usize> = (0..model_inputs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(model_inputs[i].len()));
        let mut out = vec![Vec::new(); model_inputs.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| model_inputs[i].as_slice()).collect();
            let vectors = self.embed_batch(&batch)?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Mean pooling over the real tokens, then (when the model has a Normalize module) L2 normalization, as
    /// sentence-transformers: `sum / max(count, 1e-9)`, then `v / max(|v|, 1e-12)`.
    fn embed_batch(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let output = self.model.forward(batch)?;
        let h = output.hidden_size;
        let mut vectors = Vec::with_capacity(batch.len());
        for (i, &len) in output.lengths.iter().enumerate() {
            let mut sum = vec![0f64; h];
            for row in output.token_states(i)?.chunks_exact(h) {
                for (s, &x) in sum.iter_mut().zip(row) {
                    *s += x as f64;
                }
            }
            let count = (len as f64).max(1e-9);
            let mut v: Vec<f64> = sum.into_iter().map(|s| s / count).collect();
            if self.normalize {
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
            }
            vectors.push(v.into_iter().map(|x| x as f32).collect());
        }
        Ok(vectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_input_errors_are_client_errors() {
        let e = EmbedError::InputTooLong {
            index: 3,
            tokens: 600,
            max: 512,
        };
        assert!(e.is_invalid_input());
        assert_eq!(
            e.to_string(),
            "input 3 has 600 tokens, more than the 512 this model accepts"
        );
        assert!(!EmbedError::Unsupported("x".into()).is_invalid_input());
    }
}
