//! Builds a Hugging Face `tokenizers::Tokenizer` from a GGUF file's `tokenizer.ggml.*` metadata so that it
//! tokenizes exactly as llama.cpp does:
//! - `llama` (SentencePiece BPE): spaces become `▁`, merges derived from the token scores (a pair merges
//!   when the joined piece is in the vocabulary, higher score first), byte fallback to `<0xXX>` tokens.
//! - `gpt2` (byte-level BPE): the file's merges, and the pre-tokenizer regex llama.cpp uses for the
//!   declared `tokenizer.ggml.pre` (`qwen2`, `smollm`, `llama-bpe`, default GPT-2).
//!
//! Control and user-defined tokens are added tokens, so `<start_of_turn>` written in text is one token.
use inhaus_models::GgufFile;
use std::collections::HashMap;
use thiserror::Error;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, SplitDelimiterBehavior, Tokenizer};

#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("GGUF tokenizer metadata `{0}` is missing or malformed")]
    Metadata(String),
    #[error("unsupported tokenizer model `{0}`")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizers(String),
}

fn tk<E: std::fmt::Display>(e: E) -> TokenizerError {
    TokenizerError::Tokenizers(e.to_string())
}

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// What a tokenizer source (GGUF metadata, Hugging Face files) provides.
pub(super) struct TokenizerParts {
    pub tokenizer: Tokenizer,
    /// Token text by id.
    pub tokens: Vec<String>,
    /// Added tokens: their text is literal.
    pub literal: Vec<bool>,
    /// Control tokens: markup, skipped when decoding for display.
    pub control: Vec<bool>,
    pub kind: TokenizerKind,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub stop_ids: Vec<u32>,
    pub add_bos: bool,
}

/// A model's tokenizer plus the ids and flags generation needs.
pub struct ModelTokenizer {
    /// Shared (the grammar engine's vocabulary holds it too): a large vocabulary's tokenizer takes
    /// tens of MB.
    pub tokenizer: std::sync::Arc<Tokenizer>,
    /// The same tokenizer with special tokens in the text encoded as plain text (for what users
    /// wrote: a `<|im_start|>` typed in a message must not become a control token). Made on first
    /// need: text without any special token's text encodes the same with either, and a second copy
    /// of a large vocabulary costs tens of MB.
    plain: std::sync::OnceLock<Tokenizer>,
    /// The texts of the special added tokens (`None` when one matches after normalization: then
    /// every text goes through `plain`).
    special_texts: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Token ids that end a generation: eos, and the end-of-turn token of the chat format.
    pub stop_ids: Vec<u32>,
    pub add_bos: bool,
    pub vocab_size: usize,
    /// Token text by id (as stored in the file), e.g. for chat template variables.
    pub tokens: Vec<String>,
    pub kind: TokenizerKind,
    /// Control and user-defined tokens: their text is literal, not encoded bytes.
    literal: Vec<bool>,
    /// Control tokens (turn markers, eos): markup, never text a grammar could spell.
    control: Vec<bool>,
    /// The ids of the control tokens (a few dozen), for checking user text for their markup.
    control_ids: Vec<u32>,
    /// The most bytes of text one token stands for: a text of `b` bytes is at least
    /// `b / max_token_bytes` tokens, which bounds a prompt's length before tokenizing it.
    pub max_token_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// SentencePiece (`▁` for spaces, `<0xNN>` byte fallback).
    SentencePiece,
    /// GPT-2 style byte-level BPE (bytes mapped to printable characters).
    ByteLevelBpe,
}

/// The byte a GPT-2 byte-level character stands for (the inverse of its bytes-to-unicode table).
fn byte_level_char_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    if c < 256 && printable(c) {
        return Some(c as u8);
    }
    // The other bytes, in order, are mapped to 256, 257, ...
    let mut next = 256;
    for b in 0u32..256 {
        if !printable(b) {
            if next == c {
                return Some(b as u8);
            }
            next += 1;
        }
    }
    None
}

/// The post-processor that puts `bos` (whose text is `bos_text`) before every encoded text.
pub(super) fn bos_post_processor(
    bos_text: String,
    bos: u32,
) -> Result<TemplateProcessing, TokenizerError> {
    TemplateProcessing::builder()
        .try_single(format!("{bos_text}:0 $A:0"))
        .and_then(|b| b.try_pair(format!("{bos_text}:0 $A:0 $B:1")))
        .map_err(tk)?
        .special_tokens(vec![(bos_text, bos)])
        .build()
        .map_err(tk)
}

/// Appends the ids of `more` that `ids` does not hold yet, in order.
pub(super) fn push_new(ids: &mut Vec<u32>, more: impl IntoIterator<Item = u32>) {
    for id in more {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}

/// Token texts llama.cpp treats as end-of-generation, and as control tokens even where the file
/// marks them normal (so `</s>` written in text is one token for Qwen, as llama.cpp parses it).
pub(super) const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle separators llama.cpp also ends generation on.
const FIM_EOG_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<fim_pad>",
    "<repo_name>",
    "<file_sep>",
];

/// Byte-level BPE split regexes, as llama.cpp uses them for each `tokenizer.ggml.pre`.
const REGEX_GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn string_array(file: &GgufFile, key: &str) -> Result<Vec<String>, TokenizerError> {
    let v = file
        .get(key)
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| TokenizerError::Metadata(key.into()))?;
    v.iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|_| TokenizerError::Metadata(key.into()))
        })
        .collect()
}

fn number_array(file: &GgufFile, key: &str) -> Result<Vec<f64>, TokenizerError> {
    use candle_core::quantized::gguf_file::Value;
    let bad = || TokenizerError::Metadata(key.into());
    let v = file
        .get(key)
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(bad)?;
    v.iter()
        .map(|x| match x {
            Value::U8(x) => Ok(*x as f64),
            Value::I8(x) => Ok(*x as f64),
            Value::U16(x) => Ok(*x as f64),
            Value::I16(x) => Ok(*x as f64),
            Value::U32(x) => Ok(*x as f64),
            Value::I32(x) => Ok(*x as f64),
            Value::U64(x) => Ok(*x as f64),
            Value::I64(x) => Ok(*x as f64),
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            _ => Err(bad()),
        })
        .collect()
}

fn opt_id(file: &GgufFile, key: &str) -> Option<u32> {
    file.get_usize(key).ok().map(|v| v as u32)
}

impl ModelTokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let model = file
            .get_str("tokenizer.ggml.model")
            .map_err(|_| TokenizerError::Metadata("tokenizer.ggml.model".into()))?;
        let tokens = string_array(file, "tokenizer.ggml.tokens")?;
        let mut types: Vec<i32> = match number_array(file, "tokenizer.ggml.token_type") {
            Ok(t) => t.into_iter().map(|x| x as i32).collect(),
            Err(_) => vec![TYPE_NORMAL; tokens.len()],
        };
        let mut eog_ids: Vec<u32> = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            if EOG_TEXTS.contains(&t.as_str()) {
                if let Some(ty) = types.get_mut(i) {
                    *ty = TYPE_CONTROL;
                }
                eog_ids.push(i as u32);
            } else if FIM_EOG_TEXTS.contains(&t.as_str()) && types.get(i) == Some(&TYPE_CONTROL) {
                eog_ids.push(i as u32);
            }
        }
        if types.len() != tokens.len() {
            return Err(TokenizerError::Metadata("tokenizer.ggml.token_type".into()));
        }
        let bos_id = opt_id(file, "tokenizer.ggml.bos_token_id");
        let eos_id = opt_id(file, "tokenizer.ggml.eos_token_id");
        let (mut tokenizer, default_add_bos, kind) = match model {
            "llama" => (
                build_spm(file, &tokens, &types)?,
                true,
                TokenizerKind::SentencePiece,
            ),
            "gpt2" => (
                build_bpe(file, &tokens, &types)?,
                false,
                TokenizerKind::ByteLevelBpe,
            ),
            other => return Err(TokenizerError::Unsupported(other.into())),
        };
        let add_bos = file
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(default_add_bos);

        // Control tokens are special (skipped when decoding for display); user-defined ones are plain
        // added tokens. Both are matched in text before the model splits it.
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == TYPE_CONTROL)
            .map(|(s, _)| AddedToken::from(s.clone(), true).normalized(false))
            .collect();
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == TYPE_USER_DEFINED)
            .map(|(s, _)| AddedToken::from(s.clone(), false).normalized(false))
            .collect();
        tokenizer.add_special_tokens(&special);
        tokenizer.add_tokens(&user);

        if add_bos {
            if let Some(bos) = bos_id {
                let bos_text = tokens.get(bos as usize).cloned().unwrap_or_default();
                tokenizer.with_post_processor(Some(bos_post_processor(bos_text, bos)?));
            }
        }

        let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
        if let Some(eot) = opt_id(file, "tokenizer.ggml.eot_token_id") {
            stop_ids.push(eot);
        }
        // Like llama.cpp: end-of-turn markers of known chat formats stop generation too.
        for marker in [
            "<end_of_turn>",
            "<|im_end|>",
            "<|eot_id|>",
            "<|end|>",
            "<|endoftext|>",
        ] {
            if let Some(id) = tokens.iter().position(|t| t == marker) {
                let id = id as u32;
                if types.get(id as usize) == Some(&TYPE_CONTROL) && !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        push_new(&mut stop_ids, eog_ids);
        let literal = types
            .iter()
            .map(|&t| t == TYPE_CONTROL || t == TYPE_USER_DEFINED)
            .collect();
        let control: Vec<bool> = types.iter().map(|&t| t == TYPE_CONTROL).collect();
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

    /// The tokenizer with its derived tables (plain-text twin, control ids, longest token).
    pub(super) fn assemble(p: TokenizerParts) -> Self {
        let control_ids = (0..p.control.len() as u32)
            .filter(|&i| p.control[i as usize])
            .collect();
        let added = p.tokenizer.get_added_tokens_decoder();
        let special = added.values().filter(|t| t.special);
        let normalized =
            p.tokenizer.get_normalizer().is_some() && special.clone().any(|t| t.normalized);
        let special_texts = (!normalized).then(|| special.map(|t| t.content.clone()).collect());
        let mut this = Self {
            plain: std::sync::OnceLock::new(),
            special_texts,
            kind: p.kind,
            literal: p.literal,
            control: p.control,
            control_ids,
            tokenizer: std::sync::Arc::new(p.tokenizer),
            bos_id: p.bos_id,
            eos_id: p.eos_id,
            stop_ids: p.stop_ids,
            add_bos: p.add_bos,
            vocab_size: p.tokens.len(),
            tokens: p.tokens,
            max_token_bytes: 1,
        };
        this.max_token_bytes = (0..this.vocab_size as u32)
            .map(|id| this.token_bytes(id).len())
            .max()
            .unwrap_or(1)
            .max(1);
        this
    }

    /// Whether a text of `bytes` bytes is certainly more than `limit` tokens (without tokenizing).
    pub fn surely_longer_than(&self, bytes: usize, limit: usize) -> bool {
        bytes / self.max_token_bytes > limit
    }

    /// Token ids of `text`: special tokens in the text are parsed; bos is added when `add_bos` and the
    /// model asks for it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .tokenizer
            .encode_fast(text, add_bos && self.add_bos)
            .map_err(tk)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` as plain text: control tokens written in it are split like any text.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let twin_needed = self
            .special_texts
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| text.contains(s.as_str())));
        let tok: &Tokenizer = if twin_needed {
            self.plain.get_or_init(|| {
                let mut plain = (*self.tokenizer).clone();
                plain.set_encode_special_tokens(true);
                plain
            })
        } else {
            &self.tokenizer
        };
        let enc = tok.encode_fast(text, false).map_err(tk)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Whether `text` contains the text of a control token (which `encode` would turn into it).
    pub fn mentions_control_token(&self, text: &str) -> bool {
        text.contains('<')
            && self.control_ids.iter().any(|&id| {
                self.token_text(id)
                    .is_some_and(|t| !t.is_empty() && text.contains(t))
            })
    }

    /// Text of `ids`; with `skip_special` control tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.tokenizer.decode(ids, skip_special).map_err(tk)
    }

    /// Whether `id` is a control token (chat markup, eos), as opposed to text.
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|s| s.as_str())
    }

    /// The raw bytes token `id` stands for (a token may be part of a UTF-8 character); the
    /// literal text for control tokens. Empty for an unknown id.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if self.literal.get(id as usize).copied().unwrap_or(false) {
            return text.as_bytes().to_vec();
        }
        match self.kind {
            TokenizerKind::ByteLevelBpe => {
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match byte_level_char_to_byte(c) {
                        Some(b) => out.push(b),
                        None => out.extend_from_slice(c.to_string().as_bytes()),
                    }
                }
                out
            }
            TokenizerKind::SentencePiece => {
                let hex = text
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => vec![b],
                    None => text.replace('\u{2581}', " ").into_bytes(),
                }
            }
        }
    }
}

/// SentencePiece BPE: merges derived from scores, spaces as `▁`, byte fallback.
fn build_spm(
    file: &GgufFile,
    tokens: &[String],
    types: &[i32],
) -> Result<Tokenizer, TokenizerError> {
    let scores = number_array(file, "tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(TokenizerError::Metadata("tokenizer.ggml.scores".into()));
    }
    let mut vocab: ahash::AHashMap<String, u32> = ahash::AHashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    // Normal tokens that can result from merging two other normal tokens, best score first.
    let normal: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] == TYPE_NORMAL)
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let mut merges: Vec<(f64, u32, usize, String, String)> = Vec::new();
    for (&piece, &id) in &normal {
        let mut split_points = piece.char_indices().map(|(i, _)| i).skip(1).peekable();
        if split_points.peek().is_none() {
            continue;
        }
        for at in split_points {
            let (l, r) = piece.split_at(at);
            if normal.contains_key(l) && normal.contains_key(r) {
                merges.push((scores[id as usize], id, at, l.to_string(), r.to_string()));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = merges.into_iter().map(|(_, _, _, l, r)| (l, r)).collect();
    let unk = opt_id(file, "tokenizer.ggml.unknown_token_id")
        .and_then(|id| tokens.get(id as usize).cloned())
        .unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(tk)?;
    let mut tokenizer = Tokenizer::new(bpe);
    let space_prefix = file
        .get_bool("tokenizer.ggml.add_space_prefix")
        .unwrap_or(true);
    let replace: NormalizerWrapper = Replace::new(" ", "▁").map_err(tk)?.into();
    let normalizer: NormalizerWrapper = if space_prefix {
        NormalizerSequence::new(vec![Prepend::new("▁".into()).into(), replace]).into()
    } else {
        replace
    };
    tokenizer.with_normalizer(Some(normalizer));
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(tk)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        decoders.push(tokenizers::decoders::strip::Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// Byte-level BPE with the file's merges and the declared pre-tokenizer.
fn build_bpe(
    file: &GgufFile,
    tokens: &[String],
    _types: &[i32],
) -> Result<Tokenizer, TokenizerError> {
    let merges_raw = string_array(file, "tokenizer.ggml.merges")?;
    let merges: Vec<(String, String)> = merges_raw
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError::Metadata("tokenizer.ggml.merges".into()))
        })
        .collect::<Result<_, _>>()?;
    let mut vocab: ahash::AHashMap<String, u32> = ahash::AHashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(matches!(pre, "llama-bpe" | "llama3" | "llama-v3"))
        .build()
        .map_err(tk)?;
    let mut tokenizer = Tokenizer::new(bpe);
    let split = |re: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
        Ok(Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tk)?
        .into())
    };
    let byte_level_only: PreTokenizerWrapper = ByteLevel::new(false, false, false).into();
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "qwen2" | "deepseek-r1-qwen" => {
            PreSequence::new(vec![split(REGEX_QWEN2)?, byte_level_only]).into()
        }
        "llama-bpe" | "llama3" | "llama-v3" => {
            PreSequence::new(vec![split(REGEX_LLAMA3)?, byte_level_only]).into()
        }
        "smollm" | "starcoder" | "refact" | "codeshell" => PreSequence::new(vec![
            Digits::new(true).into(),
            split(REGEX_GPT2)?,
            byte_level_only,
        ])
        .into(),
        _ => PreSequence::new(vec![split(REGEX_GPT2)?, byte_level_only]).into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}
