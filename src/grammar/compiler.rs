//! Compiling grammar specs into matchers, once per distinct spec: a bounded cache per model keeps
//! the compiled matcher in its start state (its first mask already computed, which also proves the
//! grammar usable), and each request gets a clone that shares the compiled lexer.
use super::spec::GrammarSpec;
use super::vocab::VocabEnv;
use llguidance::{Matcher, ParserFactory};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use thiserror::Error;
use toktrie::TokEnv;

#[derive(Debug, Error)]
pub enum GrammarError {
    /// The spec is not a usable grammar (an invalid or unsupported schema, a bad regex, ...).
    #[error("{0}")]
    Invalid(String),
    #[error("grammar support could not be set up for this model: {0}")]
    Setup(String),
}

/// How many compiled grammars a model keeps.
const CACHE_CAPACITY: usize = 128;

struct Cached {
    matcher: Matcher,
    last_used: u64,
}

pub struct GrammarCompiler {
    factory: ParserFactory,
    cache: Mutex<(HashMap<String, Cached>, u64)>,
}

impl GrammarCompiler {
    pub fn new(env: VocabEnv) -> Result<Self, GrammarError> {
        let env: TokEnv = Arc::new(env);
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError::Setup(e.to_string()))?;
        factory.quiet();
        Ok(Self {
            factory,
            cache: Mutex::new((HashMap::new(), 0)),
        })
    }

    /// A matcher for `spec` in its start state: from the cache, or compiled (then cached).
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Matcher, GrammarError> {
        let key = spec.cache_key();
        if let Some(m) = self.lookup(&key) {
            return Ok(m);
        }
        let parser = self
            .factory
            .create_parser(spec.to_grammar())
            .map_err(|e| GrammarError::Invalid(clean(&e.to_string())))?;
        let mut matcher = Matcher::new(Ok(parser));
        let first = matcher
            .compute_mask()
            .map_err(|e| GrammarError::Invalid(clean(&e.to_string())))?;
        if first.is_zero() {
            return Err(GrammarError::Invalid(
                "the grammar admits no output at all".into(),
            ));
        }
        self.insert(key, matcher.clone());
        Ok(matcher)
    }

    /// Whether `spec` is compiled and cached (for tests and metrics).
    pub fn is_cached(&self, spec: &GrammarSpec) -> bool {
        self.cache
            .lock()
            .map(|c| c.0.contains_key(&spec.cache_key()))
            .unwrap_or(false)
    }

    fn lookup(&self, key: &str) -> Option<Matcher> {
        let mut guard = self.cache.lock().ok()?;
        let (map, clock) = &mut *guard;
        *clock += 1;
        let entry = map.get_mut(key)?;
        entry.last_used = *clock;
        Some(entry.matcher.clone())
    }

    fn insert(&self, key: String, matcher: Matcher) {
        let Ok(mut guard) = self.cache.lock() else {
            return;
        };
        let (map, clock) = &mut *guard;
        *clock += 1;
        if map.len() >= CACHE_CAPACITY {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            key,
            Cached {
                matcher,
                last_used: *clock,
            },
        );
    }
}

/// llguidance's messages, without its internal backtrace noise, trimmed to a readable length.
fn clean(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg).trim();
    let mut s: String = first.chars().take(500).collect();
    if first.chars().count() > 500 {
        s.push('…');
    }
    s
}
