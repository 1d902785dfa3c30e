//! The model's vocabulary as llguidance sees it: every token id with the bytes it stands for, built
//! from the GGUF tokenizer inhaus already has. Control tokens (turn markers, eos) get llguidance's
//! special-token marker so no grammar can spell them as text; user-defined tokens such as Qwen's
//! `<tool_call>` stay text, so a grammar's `"<tool_call>"` literal matches them. Ids past the
//! tokenizer's vocabulary (padding rows of the output layer) are special and never allowed.
//!
//! toktrie_hf_tokenizers would do this over a `tokenizers` 0.21 tokenizer; inhaus uses 0.22, and
//! its token bytes are already known exactly (the ones logprobs report), so the env is built here.
use crate::tokenizer::ModelTokenizer;
use toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

pub struct VocabEnv {
    trie: TokTrie,
    tokenizer: std::sync::Arc<tokenizers::Tokenizer>,
}

impl VocabEnv {
    /// The env for `tok` over `n_vocab` logits (at least the tokenizer's vocabulary); `stop_ids`
    /// are the tokens that end a generation (all count as eos for the grammar).
    pub fn new(tok: &ModelTokenizer, n_vocab: usize) -> Self {
        let n_vocab = n_vocab.max(tok.vocab_size);
        let special = |name: &str| {
            let mut b = Vec::with_capacity(name.len() + 1);
            b.push(TokTrie::SPECIAL_TOKEN_MARKER);
            b.extend_from_slice(name.as_bytes());
            b
        };
        let words: Vec<Vec<u8>> = (0..n_vocab as u32)
            .map(|id| match tok.token_text(id) {
                Some(text) if tok.is_control(id) => special(text),
                Some(_) => tok.token_bytes(id),
                None => special(&format!("<[{id}]>")),
            })
            .collect();
        let eos = tok
            .eos_id
            .or_else(|| tok.stop_ids.first().copied())
            .unwrap_or(0);
        let mut info = TokRxInfo::new(n_vocab as u32, eos);
        info.tok_bos = tok.bos_id;
        let mut trie = TokTrie::from(&info, &words);
        if !tok.stop_ids.is_empty() {
            trie = trie.with_eos_tokens(&tok.stop_ids);
        }
        Self {
            trie,
            tokenizer: tok.tokenizer.clone(),
        }
    }
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            match self.tokenizer.encode_fast(text, false) {
                Ok(enc) => enc.get_ids().to_vec(),
                // Cannot happen for valid UTF-8; llguidance then falls back to the trie's greedy split.
                Err(_) => self.trie.greedy_tokenize(text.as_bytes()),
            }
        })
    }
}
