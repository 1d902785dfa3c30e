//! A sequence's output constraint inside the engine: the grammar matcher that decides which tokens
//! may come next. A constraint either holds from the first generated token (`Whole`: JSON schemas,
//! regexes, forced tool calls) or wakes up when the model emits a trigger token and holds until
//! its grammar is complete (`Triggered`: the rest of a tool call once the model opens one, with
//! free text around it). A whole constraint that is complete ends its sequence.
use crate::grammar::{Matcher, TokenMask};

/// What a request hands the engine: a matcher in its start state and when it applies.
#[derive(Clone)]
pub struct Constraint {
    pub matcher: Matcher,
    pub mode: ConstraintMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConstraintMode {
    /// From the first generated token to the end.
    Whole,
    /// After each `trigger` token, until the grammar is complete; free text otherwise.
    Triggered { trigger: u32 },
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// What consuming a token did to the constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Advance {
    Continue,
    /// The grammar is complete: a `Whole` constraint's sequence ends here.
    Complete,
    /// The matcher rejected the token (cannot happen for tokens its mask allowed).
    Failed(String),
}

/// One sequence's constraint state (cloned with the sequence when `n` choices fork).
#[derive(Clone)]
pub struct SeqConstraint {
    start: Matcher,
    mode: ConstraintMode,
    /// The live matcher; `None` while a triggered constraint waits for its trigger.
    active: Option<Matcher>,
    /// The allowed tokens for the next sample, computed ahead (during the forward).
    mask: Option<TokenMask>,
    /// Set when the grammar engine failed beyond recovery: the sequence must end with an error.
    poisoned: Option<String>,
}

impl SeqConstraint {
    pub fn new(c: Constraint) -> Self {
        let active = match c.mode {
            ConstraintMode::Whole => Some(c.matcher.clone()),
            ConstraintMode::Triggered { .. } => None,
        };
        Self {
            start: c.matcher,
            mode: c.mode,
            active,
            mask: None,
            poisoned: None,
        }
    }

    /// Marks the constraint unusable (its sequence then fails instead of running unconstrained).
    pub fn poison(&mut self, why: &str) {
        self.poisoned = Some(why.to_string());
        self.mask = None;
    }

    /// Whether the next token is constrained (a mask must be computed before sampling it).
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Computes the mask for the next token (no-op when inactive or already computed). An error
    /// leaves the mask empty, which `mask()` reports.
    pub fn prepare(&mut self) -> Result<(), String> {
        if let Some(why) = &self.poisoned {
            return Err(why.clone());
        }
        if self.mask.is_some() {
            return Ok(());
        }
        let Some(m) = self.active.as_mut() else {
            return Ok(());
        };
        let mask = m.compute_mask().map_err(|e| e.to_string())?;
        self.mask = Some(mask);
        Ok(())
    }

    /// The allowed tokens for the next sample, computing them now if they were not prepared.
    pub fn mask(&mut self) -> Result<Option<&TokenMask>, String> {
        self.prepare()?;
        Ok(self.mask.as_ref())
    }

    /// How many of `tokens` (guesses for the next positions) the grammar accepts in a row; all of
    /// them when the constraint is not active (the guesses are still checked token by token when
    /// they are drawn: a trigger among them wakes the grammar up then).
    pub fn valid_prefix(&mut self, tokens: &[u32]) -> usize {
        if self.poisoned.is_some() {
            return 0;
        }
        match self.active.as_mut() {
            None => tokens.len(),
            // An error (a matcher that cannot tell) keeps no guesses: they only save time.
            Some(m) => m.validate_tokens(tokens).unwrap_or(0),
        }
    }

    /// Moves the constraint past a sampled token (`is_stop`: a token that ends the sequence).
    pub fn advance(&mut self, tok: u32, is_stop: bool) -> Advance {
        self.mask = None;
        match (&mut self.active, self.mode) {
            (None, ConstraintMode::Triggered { trigger }) => {
                if tok == trigger {
                    self.active = Some(self.start.clone());
                }
                Advance::Continue
            }
            (None, ConstraintMode::Whole) => Advance::Complete,
            (Some(_), _) if is_stop => Advance::Complete,
            (Some(m), mode) => {
                if let Err(e) = m.consume_token(tok) {
                    return Advance::Failed(e.to_string());
                }
                if !m.is_stopped() {
                    return Advance::Continue;
                }
                match mode {
                    ConstraintMode::Whole => Advance::Complete,
                    ConstraintMode::Triggered { .. } => {
                        self.active = None;
                        Advance::Continue
                    }
                }
            }
        }
    }
}
