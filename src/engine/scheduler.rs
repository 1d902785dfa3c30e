//! The continuous-batching engine core: each `step` schedules every running sequence and admits
//! waiting ones under a token budget and a sequence cap, runs one batched forward for all of them,
//! samples, and streams the new tokens out.
//!
//! As in vLLM's v1 scheduler there are no prefill and decode phases: each sequence has tokens whose KV
//! is computed (`num_computed`) catching up with its token list, so chunked prefill, prefix-cache hits
//! and recompute after preemption are the same rule. When blocks run out, the newest running sequence
//! is preempted (its blocks freed, itself requeued first) instead of failing anything.
use super::block_pool::{BlockHash, BlockId, BlockPool};
use super::generate::FinishReason;
use super::sampler::{token_logprobs, Sampler, SamplingParams, TokenLogprobs};
use inhaus_models::{Batch, KvCache, LogitsWanted, ModelError, SeqChunk, Transformer};
use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use thiserror::Error;

/// Identifies a sequence for its whole life in the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    /// Requests waiting beyond this are refused at once.
    pub max_waiting: usize,
}

/// What a caller asks the engine to generate.
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Stop tokens cannot be drawn before this many tokens are generated.
    pub min_tokens: usize,
    pub stop_ids: Vec<u32>,
    pub ignore_eos: bool,
}

/// What the engine sends back for a sequence, in order: tokens, then exactly one `Finished`.
#[derive(Clone, Debug, PartialEq)]
pub enum SeqEvent {
    Token {
        id: u32,
        logprobs: Option<TokenLogprobs>,
    },
    Finished(FinishReason),
}

#[derive(Debug, Error, PartialEq)]
pub enum AdmissionError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds the context of {limit} tokens")]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        limit: usize,
    },
    #[error("too many requests are waiting; retry later")]
    QueueFull,
}

struct Seq {
    id: SeqId,
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    num_computed: usize,
    table: Vec<BlockId>,
    /// Full blocks registered for prefix reuse, and the hash of the last one.
    registered: usize,
    last_hash: Option<BlockHash>,
    sampler: Sampler,
    max_tokens: usize,
    min_tokens: usize,
    stop_ids: Vec<u32>,
    ignore_eos: bool,
    tx: Sender<SeqEvent>,
}

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// Counters the API exports as metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineStats {
    pub preemptions: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
}

pub struct Engine<'m> {
    model: &'m Transformer,
    cache: KvCache,
    pool: BlockPool,
    cfg: EngineConfig,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    next_id: u64,
    stats: EngineStats,
}

impl<'m> Engine<'m> {
    pub fn new(model: &'m Transformer, cfg: EngineConfig) -> Self {
        let cache = KvCache::new(model.config.kv_shape(cfg.block_size, cfg.num_blocks));
        let pool = BlockPool::new(cfg.num_blocks, cfg.block_size);
        Self {
            model,
            cache,
            pool,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            stats: EngineStats::default(),
        }
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }
    pub fn stats(&self) -> EngineStats {
        self.stats
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Queues a request; its events go to `tx`. Refused at once if it can never fit or the queue is full.
    pub fn add_request(
        &mut self,
        req: GenerationRequest,
        tx: Sender<SeqEvent>,
    ) -> Result<SeqId, AdmissionError> {
        if req.prompt.is_empty() {
            return Err(AdmissionError::EmptyPrompt);
        }
        let pool_tokens = self.cfg.num_blocks * self.cfg.block_size;
        let limit = self.model.config.context_len.min(pool_tokens);
        if req.prompt.len() + req.max_tokens > limit {
            return Err(AdmissionError::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                limit,
            });
        }
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(AdmissionError::QueueFull);
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.stats.prompt_tokens += req.prompt.len() as u64;
        let sampler = Sampler::with_prompt(req.sampling.clone(), &req.prompt);
        self.waiting.push_back(Seq {
            id,
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            num_computed: 0,
            table: Vec::new(),
            registered: 0,
            last_hash: None,
            sampler,
            max_tokens: req.max_tokens,
            min_tokens: req.min_tokens,
            stop_ids: req.stop_ids,
            ignore_eos: req.ignore_eos,
            tx,
        });
        Ok(id)
    }

    /// Frees a sequence's blocks and resets it to be recomputed from its tokens.
    fn release(&mut self, seq: &mut Seq) {
        self.pool.free(&seq.table);
        seq.table.clear();
        seq.num_computed = 0;
        seq.registered = 0;
        seq.last_hash = None;
    }

    /// Grows `seq`'s block table to hold `upto` positions; false when the pool is short.
    fn reserve(pool: &mut BlockPool, seq: &mut Seq, upto: usize) -> bool {
        let need = upto.div_ceil(pool.block_size());
        if need <= seq.table.len() {
            return true;
        }
        match pool.allocate(need - seq.table.len()) {
            Some(b) => {
                seq.table.extend(b);
                true
            }
            None => false,
        }
    }

    /// Decides this step's work: `(index into running, tokens to compute)`.
    fn schedule(&mut self) -> Vec<(usize, usize)> {
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let n = (seq.tokens.len() - seq.num_computed).min(budget);
            let upto = seq.num_computed + n;
            if Self::reserve(&mut self.pool, &mut self.running[i], upto) {
                plan.push((i, n));
                budget -= n;
                i += 1;
                continue;
            }
            // Out of blocks: preempt the newest running sequence (possibly this one) and retry.
            let Some(mut victim) = self.running.pop() else {
                break;
            };
            self.release(&mut victim);
            self.stats.preemptions += 1;
            tracing::debug!(seq = victim.id.0, "preempted");
            self.waiting.push_front(victim);
            plan.retain(|&(j, _)| j < self.running.len());
        }
        // Admit waiting sequences, first come first served.
        while budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            if seq.num_computed == 0 && seq.table.is_empty() {
                // Reuse cached full blocks, keeping at least one token to compute (its logits are needed).
                let (hit, last) = self
                    .pool
                    .take_cached_prefix(&seq.tokens[..seq.tokens.len() - 1]);
                seq.num_computed = hit.len() * self.cfg.block_size;
                seq.registered = hit.len();
                seq.last_hash = last;
                seq.table = hit;
            }
            let n = (seq.tokens.len() - seq.num_computed).min(budget);
            let upto = seq.num_computed + n;
            if !Self::reserve(&mut self.pool, &mut seq, upto) {
                self.release(&mut seq);
                self.waiting.push_front(seq);
                break;
            }
            budget -= n;
            self.running.push(seq);
            plan.push((self.running.len() - 1, n));
        }
        plan
    }

    /// Runs one step. Returns the number of tokens computed (0 when idle).
    pub fn step(&mut self) -> Result<usize, ModelError> {
        let plan = self.schedule();
        if plan.is_empty() {
            return Ok(0);
        }
        let tables: Vec<Vec<u32>> = plan
            .iter()
            .map(|&(i, _)| self.running[i].table.iter().map(|b| b.0).collect())
            .collect();
        let batch = Batch {
            seqs: plan
                .iter()
                .zip(&tables)
                .map(|(&(i, n), table)| {
                    let s = &self.running[i];
                    let last = s.num_computed + n == s.tokens.len();
                    SeqChunk {
                        tokens: &s.tokens[s.num_computed..s.num_computed + n],
                        start_pos: s.num_computed,
                        block_table: table,
                        logits: if last {
                            LogitsWanted::Last
                        } else {
                            LogitsWanted::None
                        },
                    }
                })
                .collect(),
        };
        let computed = batch.num_tokens();
        let logits = self.model.forward(&batch, &mut self.cache)?;
        let bs = self.cfg.block_size;
        let mut finished = Vec::new();
        for (k, &(i, n)) in plan.iter().enumerate() {
            let seq = &mut self.running[i];
            seq.num_computed += n;
            while seq.registered < seq.num_computed / bs {
                let r = seq.registered;
                seq.last_hash = Some(self.pool.register_full(
                    seq.table[r],
                    seq.last_hash,
                    &seq.tokens[r * bs..(r + 1) * bs],
                ));
                seq.registered += 1;
            }
            let Some(row) = logits.last(k) else { continue };
            let banned: &[u32] = if seq.generated() < seq.min_tokens {
                &seq.stop_ids
            } else {
                &[]
            };
            let tok = seq.sampler.sample_with(row, banned);
            seq.sampler.observe(tok);
            let logprobs = seq
                .sampler
                .params()
                .logprobs
                .map(|k| token_logprobs(row, tok, k));
            seq.tokens.push(tok);
            self.stats.generation_tokens += 1;
            let reason = if seq.tx.send(SeqEvent::Token { id: tok, logprobs }).is_err() {
                Some(FinishReason::Cancelled)
            } else if !seq.ignore_eos && seq.stop_ids.contains(&tok) {
                Some(FinishReason::Stop)
            } else if seq.generated() >= seq.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(r) = reason {
                finished.push((i, r));
            }
        }
        // Remove finished sequences, highest index first so the others keep their places.
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let mut seq = self.running.remove(i);
            let _ = seq.tx.send(SeqEvent::Finished(reason));
            self.release(&mut seq);
        }
        Ok(computed)
    }

    /// Ends every request with an error and frees everything (after a failed step).
    pub fn abort_all(&mut self) {
        let mut all: Vec<Seq> = self.running.drain(..).collect();
        all.extend(self.waiting.drain(..));
        for mut seq in all {
            let _ = seq.tx.send(SeqEvent::Finished(FinishReason::Error));
            self.release(&mut seq);
        }
    }

    /// Steps until no request is left (for tests and batch jobs).
    pub fn run_to_completion(&mut self) -> Result<(), ModelError> {
        while self.has_work() {
            if self.step()? == 0 && self.running.is_empty() && !self.waiting.is_empty() {
                // Nothing fits even alone: cannot happen for admitted requests (checked at admission).
                return Err(ModelError::InvalidBatch(
                    "a waiting request can never be scheduled".into(),
                ));
            }
        }
        Ok(())
    }
}
