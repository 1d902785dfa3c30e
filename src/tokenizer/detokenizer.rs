//! Incremental detokenization for streaming: emits text as tokens arrive, never half a UTF-8 character,
//! and the pieces always concatenate to the full decode of all tokens.
use super::ModelTokenizer;

pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Text already emitted is `decode(ids[..read])`; decoding restarts from `prefix` for context, so
    /// that tokenizers which depend on the previous token (leading spaces) stay right.
    prefix: usize,
    read: usize,
    skip_special: bool,
}

impl IncrementalDecoder {
    pub fn new(skip_special: bool) -> Self {
        Self {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            skip_special,
        }
    }

    /// Adds a token and returns the new text it completes (possibly empty).
    pub fn push(&mut self, tok: &ModelTokenizer, id: u32) -> Result<String, super::TokenizerError> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let after = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        let fresh = after
            .get(before.len()..)
            .filter(|_| after.len() > before.len());
        if let Some(new) = fresh.filter(|_| !after.ends_with('\u{FFFD}')) {
            let new = new.to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever text remains undelivered once the sequence has ended (e.g. an incomplete UTF-8 tail,
    /// shown as U+FFFD as a full decode would).
    pub fn finish(&mut self, tok: &ModelTokenizer) -> Result<String, super::TokenizerError> {
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let after = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(after.get(before.len()..).unwrap_or("").to_string())
    }
}
