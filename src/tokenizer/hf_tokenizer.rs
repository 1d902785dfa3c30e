//! A model's tokenizer from Hugging Face files: `tokenizer.json` as the `tokenizers` crate reads it,
//! with bos/eos from `tokenizer_config.json` and the end-of-generation ids of
//! `generation_config.json`. Added tokens are literal; special ones are control tokens.
use super::gguf_tokenizer::{
    bos_post_processor, push_new, ModelTokenizer, TokenizerError, TokenizerKind, TokenizerParts,
    EOG_TEXTS,
};
use serde_json::Value;
use std::path::Path;
use tokenizers::{DecoderWrapper, Tokenizer};

/// A special token's text in `tokenizer_config.json`: a string or an `AddedToken` object.
pub fn special_text(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Token ids of `generation_config.json`'s `eos_token_id` (a number or a list).
pub fn generation_eos_ids(generation: &Value) -> Vec<u32> {
    match generation.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads an optional JSON file (absent: `Null`).
pub fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map_err(|e| TokenizerError::Tokenizers(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Null),
        Err(e) => Err(TokenizerError::Tokenizers(format!(
            "{}: {e}",
            path.display()
        ))),
    }
}

impl ModelTokenizer {
    /// The tokenizer of a Hugging Face model folder. `config` is its `tokenizer_config.json`,
    /// `generation` its `generation_config.json` (either may be `Null`).
    pub fn from_hf(dir: &Path, config: &Value, generation: &Value) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| TokenizerError::Tokenizers(format!("{}: {e}", path.display())))?;
        let n = tokenizer.get_vocab_size(true);
        let mut tokens = vec![String::new(); n];
        for (text, id) in tokenizer.get_vocab(true) {
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = text;
            }
        }
        let mut literal = vec![false; n];
        let mut control = vec![false; n];
        for (&id, t) in tokenizer.get_added_tokens_decoder().iter() {
            if let Some(l) = literal.get_mut(id as usize) {
                *l = true;
                control[id as usize] = t.special;
            }
        }
        let kind = match tokenizer.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => TokenizerKind::ByteLevelBpe,
            _ => TokenizerKind::SentencePiece,
        };
        let id_of = |key: &str| special_text(config, key).and_then(|t| tokenizer.token_to_id(&t));
        let bos_id = id_of("bos_token");
        let gen_eos = generation_eos_ids(generation);
        let eos_id = id_of("eos_token").or(gen_eos.first().copied());

        // BOS: where tokenizer.json's post-processor adds it, or tokenizer_config asks for it.
        let adds_bos = |t: &Tokenizer| {
            t.encode_fast("a", true)
                .map(|e| bos_id.is_some() && e.get_ids().first().copied() == bos_id)
                .unwrap_or(false)
        };
        let mut add_bos = adds_bos(&tokenizer);
        let asks_bos = config.get("add_bos_token").and_then(Value::as_bool) == Some(true);
        if !add_bos && asks_bos {
            if let Some(bos) = bos_id {
                let text = tokens[bos as usize].clone();
                tokenizer.with_post_processor(Some(bos_post_processor(text, bos)?));
                add_bos = true;
            }
        }

        // Stops: eos, generation_config's eos ids, and the end-of-turn markers of known chat
        // formats where they are special tokens.
        let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
        push_new(&mut stop_ids, gen_eos);
        let markers = tokens
            .iter()
            .enumerate()
            .filter(|(id, t)| control[*id] && EOG_TEXTS.contains(&t.as_str()))
            .map(|(id, _)| id as u32);
        push_new(&mut stop_ids, markers);
        Ok(Self::assemble(TokenizerParts {
            tokenizer,
            tokens,
            literal,
            control,
            kind,
            bos_id,
            eos_id,
            stop_ids,
            add_bos,
        }))
    }
}
