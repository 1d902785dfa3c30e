//! The continuous-batching engine core: each `step` schedules every running sequence and admits
//! waiting ones under a token budget and a sequence cap, runs one batched forward for all of them,
//! samples, and streams the new tokens out.
//!
//! As in vLLM's v1 scheduler there are no prefill and decode phases: each sequence has tokens whose KV
//! is computed (`num_computed`) catching up with its token list, so chunked prefill, prefix-cache hits
//! and recompute after preemption are the same rule. When blocks run out, the newest running sequence
//! is preempted (its blocks freed, itself requeued first) instead of failing anything.
use super::block_pool::{BlockId, BlockPool, PrefixCacheStats};
use super::constraint::SeqConstraint;
use super::draw;
use super::fair_share::{Candidate, FairShare, Seats};
use super::metrics::EngineMetrics;
pub use super::request::{
    AdmissionError, CancelHandle, FinishReason, GenerationRequest, SeqEvent, SeqId,
};
use super::seq::{choice_sampler, request_params, RequestClock, Seq};
use super::speculate::{SpecConfig, SpecState};
use super::step_model::StepModel;
use inhaus_models::{Batch, Forward, LogitsWanted, ModelError, SeqChunk};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    /// Requests waiting beyond this are refused at once.
    pub max_waiting: usize,
    /// Speculative decoding, if on (see `speculate`).
    pub speculative: Option<SpecConfig>,
}

/// Counters the API exports as metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineStats {
    pub preemptions: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    /// Speculative decoding: guessed tokens verified, and those accepted.
    pub spec_draft_tokens: u64,
    pub spec_accepted_tokens: u64,
}

/// One step's work: `(index into running, tokens to compute)`, and the `(source, copy)` blocks to
/// copy before the forward (copy-on-write).
#[derive(Clone)]
struct StepPlan {
    plan: Vec<(usize, usize)>,
    copies: Vec<(BlockId, BlockId)>,
}

/// The most choices one request may ask for.
pub const MAX_CHOICES: usize = 128;

pub struct Engine<'m, M: StepModel = Forward> {
    model: &'m M,
    cache: M::Cache,
    pool: BlockPool,
    cfg: EngineConfig,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    next_id: u64,
    metrics: EngineMetrics,
    /// Prefix-cache counters already added to `metrics`.
    synced_prefix: PrefixCacheStats,
    fair: FairShare,
}

impl<'m, M: StepModel> Engine<'m, M> {
    /// An engine over `model` with a new KV cache of `cfg`'s size.
    ///
    /// # Panics
    /// When the cache cannot be allocated (test and benchmark set-ups; servers use [`Self::try_new`]).
    pub fn new(model: &'m M, cfg: EngineConfig) -> Self {
        match Self::try_new(model, cfg) {
            Ok(e) => e,
            Err(e) => panic!("allocating the KV cache: {e}"),
        }
    }

    /// An engine over `model`, or the error of allocating its KV cache.
    pub fn try_new(model: &'m M, cfg: EngineConfig) -> Result<Self, ModelError> {
        let cache = model.new_cache(cfg.block_size, cfg.num_blocks)?;
        let pool = BlockPool::new(cfg.num_blocks, cfg.block_size);
        Ok(Self {
            model,
            cache,
            pool,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            metrics: EngineMetrics::default(),
            synced_prefix: PrefixCacheStats::default(),
            fair: FairShare::default(),
        })
    }

    /// Reports into `metrics` (shared with the API's registry) from now on.
    pub fn with_metrics(mut self, metrics: EngineMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }
    /// The engine's counters, read from its metrics (the one place they are kept).
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            preemptions: self.metrics.preemptions.get(),
            prompt_tokens: self.metrics.prompt_tokens.get(),
            generation_tokens: self.metrics.generation_tokens.get(),
            spec_draft_tokens: self.metrics.spec_draft_tokens.get(),
            spec_accepted_tokens: self.metrics.spec_accepted_tokens.get(),
        }
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

    /// Queues a request; its events go to `tx`, and `cancel` (made for `req.n` choices) stops it from
    /// any thread. Refused at once if it can never fit or the queue is full.
    pub fn add_request(
        &mut self,
        req: GenerationRequest,
        tx: Sender<SeqEvent>,
        cancel: CancelHandle,
    ) -> Result<SeqId, AdmissionError> {
        if req.prompt.is_empty() {
            return Err(AdmissionError::EmptyPrompt);
        }
        let max_n = MAX_CHOICES.min(self.cfg.max_num_seqs);
        if req.n == 0 || req.n > max_n {
            return Err(AdmissionError::BadChoiceCount { max: max_n });
        }
        let pool_tokens = self.cfg.num_blocks * self.cfg.block_size;
        let limit = self.model.context_len().min(pool_tokens);
        if req.prompt.len() + req.max_tokens > limit {
            return Err(AdmissionError::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                limit,
            });
        }
        // A full queue refuses a tenant that already waits; one that does not is still let in
        // (up to twice the bound), so one key cannot fill the queue against all others.
        let full = self.waiting.len() >= self.cfg.max_waiting;
        if full
            && (self.waiting.len() >= 2 * self.cfg.max_waiting
                || self.waiting.iter().any(|s| s.tenant == req.tenant))
        {
            return Err(AdmissionError::QueueFull);
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.metrics.prompt_tokens.inc_by(req.prompt.len() as u64);
        let sampler = choice_sampler(&req.sampling, &req.prompt, 0);
        self.waiting.push_back(Seq {
            id,
            choice: 0,
            forks: (1..req.n).collect(),
            cancel,
            clock: Arc::new(RequestClock::new(req.n)),
            last_token_at: None,
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
            constraint: req.constraint.map(SeqConstraint::new),
            prefix_looked_up: false,
            tenant: req.tenant,
            tx,
            spec: SpecState::default(),
            draft: Vec::new(),
        });
        self.metrics.waiting.set(self.waiting.len() as i64);
        Ok(id)
    }

    /// Frees a sequence's blocks and resets it to be recomputed from its tokens.
    fn release(&mut self, seq: &mut Seq) {
        self.pool.free(&seq.table);
        seq.table.clear();
        seq.num_computed = 0;
        seq.registered = 0;
        seq.last_hash = None;
        seq.draft.clear();
    }

    /// Grows `seq`'s block table to hold `upto` positions and makes the block that the next position
    /// writes into private (copy-on-write after a fork), queueing the copy. False when the pool is short.
    fn reserve(
        pool: &mut BlockPool,
        seq: &mut Seq,
        upto: usize,
        copies: &mut Vec<(BlockId, BlockId)>,
    ) -> bool {
        let bs = pool.block_size();
        let first = seq.num_computed / bs;
        if !seq.num_computed.is_multiple_of(bs) && first < seq.table.len() {
            match pool.make_writable(&mut seq.table, first) {
                Some(Some(copy)) => copies.push(copy),
                Some(None) => {}
                None => return false,
            }
        }
        let need = upto.div_ceil(bs);
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

    /// Drops cancelled sequences (running and waiting), freeing their blocks. A sequence that still
    /// has choices to fork hands its place to the first of them that is not cancelled.
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].cancelled() {
                let mut seq = self.running.remove(i);
                self.finish(&mut seq, FinishReason::Cancelled);
            } else {
                Self::promote_fork(&mut self.running[i]);
                i += 1;
            }
        }
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        while let Some(mut seq) = self.waiting.pop_front() {
            if seq.cancelled() {
                self.finish(&mut seq, FinishReason::Cancelled);
            } else {
                Self::promote_fork(&mut seq);
                kept.push_back(seq);
            }
        }
        self.waiting = kept;
    }

    /// If `seq`'s own choice was cancelled before it forked, it becomes a choice still wanted.
    fn promote_fork(seq: &mut Seq) {
        if !seq.cancel.is_cancelled(seq.choice) || seq.forks.is_empty() {
            return;
        }
        let before = seq.forks.len();
        seq.forks.retain(|&c| !seq.cancel.is_cancelled(c));
        // Choices dropped here end without an event, and so does this one when a fork replaces it.
        let mut dropped = before - seq.forks.len();
        if !seq.forks.is_empty() {
            dropped += 1;
        }
        let open = seq.clock.open.load(Ordering::Relaxed);
        seq.clock
            .open
            .store(open.saturating_sub(dropped), Ordering::Relaxed);
        if seq.forks.is_empty() {
            return;
        }
        let next = seq.forks.remove(0);
        let params = request_params(seq);
        seq.sampler = choice_sampler(&params, &seq.tokens[..seq.prompt_len], next);
        seq.choice = next;
    }

    /// Sends a sequence's end (and records its latency) and frees its blocks.
    fn finish(&mut self, seq: &mut Seq, reason: FinishReason) {
        for choice in std::iter::once(seq.choice).chain(std::mem::take(&mut seq.forks)) {
            // The request's end-to-end latency: when its last choice ends (not when cancelled).
            // Recorded before the end is sent: a client that reads /metrics right after its answer
            // must find it.
            let left = seq.clock.open.fetch_sub(1, Ordering::Relaxed);
            if left == 1 && reason != FinishReason::Cancelled {
                self.metrics
                    .e2e
                    .observe(seq.clock.arrival.elapsed().as_secs_f64());
            }
            let _ = seq.tx.send(SeqEvent::Finished { choice, reason });
        }
        self.release(seq);
    }

    /// Decides this step's work: `(index into running, tokens to compute)`, and the blocks to copy
    /// before the forward.
    fn schedule(&mut self) -> StepPlan {
        self.drop_cancelled();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut copies = Vec::new();
        // Guesses only while few sequences run (a bigger batch is bound by compute).
        let speculate = self
            .cfg
            .speculative
            .clone()
            .filter(|c| self.running.len() <= c.max_seqs);
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &mut self.running[i];
            let n = (seq.tokens.len() - seq.num_computed).min(budget);
            let guesses = match &speculate {
                Some(c) if n == 1 && seq.tokens.len() - seq.num_computed == 1 => {
                    Self::propose(c, seq, budget - 1)
                }
                _ => 0,
            };
            let upto = seq.num_computed + n + guesses;
            let mut fits = Self::reserve(&mut self.pool, &mut self.running[i], upto, &mut copies);
            if !fits && guesses > 0 {
                // No room for the guesses: the step goes on without them (never preempt for them).
                self.running[i].draft.clear();
                fits = Self::reserve(
                    &mut self.pool,
                    &mut self.running[i],
                    upto - guesses,
                    &mut copies,
                );
            }
            if fits {
                plan.push((i, n));
                budget -= n + self.running[i].draft.len();
                i += 1;
                continue;
            }
            // Out of blocks: preempt the newest running sequence (possibly this one) and retry.
            let Some(mut victim) = self.running.pop() else {
                break;
            };
            // A copy queued for the victim's block is moot: the block is freed with the rest.
            copies.retain(|&(_, dst)| !victim.table.contains(&dst));
            self.release(&mut victim);
            self.metrics.preemptions.inc();
            tracing::debug!(seq = victim.id.0, "preempted");
            self.waiting.push_front(victim);
            plan.retain(|&(j, _)| j < self.running.len());
        }
        // Admit waiting sequences, fairly across tenants (see `fair_share`). A sequence that will
        // fork takes a seat for each of its choices.
        let mut seats: usize = self.running.iter().map(|s| 1 + s.forks.len()).sum();
        let mut held = Seats::default();
        for s in &self.running {
            held.add(&s.tenant, 1 + s.forks.len());
        }
        while budget > 0 {
            let candidates = self.waiting.iter().map(|s| Candidate {
                tenant: &s.tenant,
                resumed: s.prefix_looked_up,
            });
            let Some(at) = self.fair.next_to_admit(candidates, &held) else {
                break;
            };
            let Some(want) = self.waiting.get(at).map(|s| 1 + s.forks.len()) else {
                break;
            };
            if seats + want > self.cfg.max_num_seqs {
                break;
            }
            let Some(mut seq) = self.waiting.remove(at) else {
                break;
            };
            if seq.num_computed == 0 && seq.table.is_empty() {
                // Reuse cached full blocks, keeping at least one token to compute (its logits are needed).
                let (hit, last) = self
                    .pool
                    .take_cached_prefix(&seq.tokens[..seq.tokens.len() - 1], !seq.prefix_looked_up);
                seq.prefix_looked_up = true;
                seq.num_computed = hit.len() * self.cfg.block_size;
                seq.registered = hit.len();
                seq.last_hash = last;
                seq.table = hit;
            }
            let n = (seq.tokens.len() - seq.num_computed).min(budget);
            let upto = seq.num_computed + n;
            if !Self::reserve(&mut self.pool, &mut seq, upto, &mut copies) {
                self.release(&mut seq);
                self.waiting.push_front(seq);
                break;
            }
            budget -= n;
            seats += want;
            held.add(&seq.tenant, want);
            self.fair.admitted(&seq.tenant);
            self.running.push(seq);
            plan.push((self.running.len() - 1, n));
        }
        StepPlan { plan, copies }
    }

    /// Makes `seq`'s guesses for this step (at most `room`, none past its `max_tokens`), cut where
    /// its grammar would refuse them; returns how many.
    fn propose(spec: &SpecConfig, seq: &mut Seq, room: usize) -> usize {
        seq.draft.clear();
        // A sequence that still forks samples its choices' first tokens from its last prompt
        // row: no guesses may follow that token.
        if !seq.forks.is_empty() {
            return 0;
        }
        // Tokens this step may still emit beyond the one sampled from the last token's row.
        let left = seq.max_tokens.saturating_sub(seq.generated() + 1);
        let k = left.min(room);
        if k == 0 {
            return 0;
        }
        let k = seq.spec.budget(spec.max_tokens).min(k);
        let guess = spec.propose(&seq.tokens, k);
        let keep = match seq.constraint.as_mut() {
            Some(c) => c.valid_prefix(guess),
            None => guess.len(),
        };
        seq.draft.extend_from_slice(&guess[..keep]);
        keep
    }

    /// Registers `seq`'s blocks that are now full (their tokens computed) for prefix reuse.
    fn register_full_blocks(pool: &mut BlockPool, seq: &mut Seq, bs: usize) {
        while seq.registered < seq.num_computed / bs {
            let r = seq.registered;
            let parent = seq.last_hash.zip(r.checked_sub(1).map(|p| seq.table[p]));
            seq.last_hash =
                Some(pool.register_full(seq.table[r], parent, &seq.tokens[r * bs..(r + 1) * bs]));
            seq.registered += 1;
        }
    }

    /// Forks the choices `seq` still owes, now that its prompt is computed: each child shares the
    /// prompt's blocks (the partly filled last one is copied on its first write).
    fn fork_children(&mut self, seq_idx: usize) -> Vec<Seq> {
        let forks = std::mem::take(&mut self.running[seq_idx].forks);
        let mut children = Vec::with_capacity(forks.len());
        for choice in forks {
            let parent = &self.running[seq_idx];
            self.pool.share(&parent.table);
            let prompt = &parent.tokens[..parent.prompt_len];
            children.push(Seq {
                id: SeqId(self.next_id),
                choice,
                forks: Vec::new(),
                cancel: parent.cancel.clone(),
                clock: parent.clock.clone(),
                last_token_at: None,
                tokens: prompt.to_vec(),
                prompt_len: parent.prompt_len,
                num_computed: parent.num_computed,
                table: parent.table.clone(),
                registered: parent.registered,
                last_hash: parent.last_hash,
                sampler: choice_sampler(&request_params(parent), prompt, choice),
                max_tokens: parent.max_tokens,
                min_tokens: parent.min_tokens,
                stop_ids: parent.stop_ids.clone(),
                ignore_eos: parent.ignore_eos,
                constraint: parent.constraint.clone(),
                prefix_looked_up: true,
                tenant: parent.tenant.clone(),
                tx: parent.tx.clone(),
                spec: SpecState::default(),
                draft: Vec::new(),
            });
            self.next_id += 1;
        }
        children
    }

    /// Runs one step. Returns the number of tokens computed (0 when idle).
    /// A failed forward does not fail every request: each sequence of the step is retried alone,
    /// and only those that fail alone end with an error.
    pub fn step(&mut self) -> Result<usize, ModelError> {
        let StepPlan { plan, copies } = self.schedule();
        self.update_gauges();
        if plan.is_empty() {
            return Ok(0);
        }
        for &(src, dst) in &copies {
            M::copy_block(&mut self.cache, src.0, dst.0)?;
        }
        match self.execute(plan.clone()) {
            Ok(n) => Ok(n),
            Err(e) => {
                tracing::warn!("a batched step failed ({e}); retrying its sequences one by one");
                Ok(self.retry_alone(plan))
            }
        }
    }

    /// Runs each planned sequence in a forward of its own (highest index first, so removals do
    /// not move the ones still to run); a sequence that fails alone ends with an error.
    fn retry_alone(&mut self, mut plan: Vec<(usize, usize)>) -> usize {
        plan.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        let mut computed = 0;
        for (i, n) in plan {
            match self.execute(vec![(i, n)]) {
                Ok(c) => computed += c,
                Err(e) => {
                    let mut seq = self.running.remove(i);
                    tracing::error!(seq = seq.id.0, "a sequence failed alone: {e}");
                    self.finish(&mut seq, FinishReason::Error);
                }
            }
        }
        self.update_gauges();
        computed
    }

    /// The forward for `plan` (indices into `running`, tokens to compute), then sampling and
    /// streaming. On a failed forward nothing has changed but the KV slots of the planned tokens
    /// (rewritten when they are computed again).
    fn execute(&mut self, plan: Vec<(usize, usize)>) -> Result<usize, ModelError> {
        let tables: Vec<Vec<u32>> = plan
            .iter()
            .map(|&(i, _)| self.running[i].table.iter().map(|b| b.0).collect())
            .collect();
        // The grammar masks for this step's samples are computed on a side thread while the
        // forward runs, so constrained decoding costs no time on the critical path.
        let mut pending: Vec<(usize, SeqConstraint)> = Vec::new();
        for &(i, n) in &plan {
            let s = &mut self.running[i];
            let sampled = s.num_computed + n == s.tokens.len();
            if sampled && s.constraint.as_ref().is_some_and(SeqConstraint::is_active) {
                if let Some(c) = s.constraint.take() {
                    pending.push((i, c));
                }
            }
        }
        // A sequence's guesses go into the forward after its last token (its token list holds them
        // for the forward only), with a logits row for every position to verify them.
        let guessed: Vec<usize> = plan
            .iter()
            .map(|&(i, _)| {
                let s = &mut self.running[i];
                s.tokens.extend_from_slice(&s.draft);
                s.draft.len()
            })
            .collect();
        let batch = Batch {
            seqs: plan
                .iter()
                .zip(&tables)
                .zip(&guessed)
                .map(|((&(i, n), table), &g)| {
                    let s = &self.running[i];
                    let last = s.num_computed + n + g == s.tokens.len();
                    SeqChunk {
                        tokens: &s.tokens[s.num_computed..s.num_computed + n + g],
                        start_pos: s.num_computed,
                        block_table: table,
                        logits: match (last, g) {
                            (false, _) => LogitsWanted::None,
                            (true, 0) => LogitsWanted::Last,
                            (true, _) => LogitsWanted::All,
                        },
                    }
                })
                .collect(),
        };
        let computed = batch.num_tokens();
        let model = self.model;
        let cache = &mut self.cache;
        let (logits, prepared) = std::thread::scope(|scope| {
            let masks = (!pending.is_empty()).then(|| {
                scope.spawn(move || {
                    for (_, c) in pending.iter_mut() {
                        // An error is reported again (and handled) when the token is sampled; a
                        // panic in the grammar engine poisons only its own sequence.
                        let prepared =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.prepare()));
                        if prepared.is_err() {
                            c.poison("the grammar engine panicked");
                        }
                    }
                    pending
                })
            });
            let logits = model.forward(&batch, cache);
            (logits, masks.map(|h| h.join()))
        });
        drop(batch);
        for (&(i, _), &g) in plan.iter().zip(&guessed) {
            let s = &mut self.running[i];
            s.tokens.truncate(s.tokens.len() - g);
        }
        match prepared {
            None => {}
            Some(Ok(list)) => {
                for (i, c) in list {
                    self.running[i].constraint = Some(c);
                }
            }
            Some(Err(_)) => {
                // The constraints are lost with the thread: fail the step (every request errors).
                return Err(ModelError::InvalidBatch(
                    "the grammar thread panicked".into(),
                ));
            }
        }
        let logits = logits?;
        let bs = self.cfg.block_size;
        // Which logits row each running sequence samples from, and the choices forked this step
        // (each samples from its parent's row).
        let mut rows: Vec<Option<usize>> = vec![None; self.running.len()];
        let mut children: Vec<(Seq, usize)> = Vec::new();
        for (k, &(i, n)) in plan.iter().enumerate() {
            let seq = &mut self.running[i];
            seq.num_computed += n;
            Self::register_full_blocks(&mut self.pool, seq, bs);
            if logits.last(k).is_none() {
                continue;
            }
            rows[i] = Some(k);
            if !seq.forks.is_empty() {
                children.extend(self.fork_children(i).into_iter().map(|c| (c, k)));
            }
        }
        let drawn = draw::draw_all(
            &mut self.running,
            &rows,
            &mut children,
            &logits,
            &self.metrics,
        );
        let mut drawn = drawn.into_iter();
        let mut finished: Vec<(usize, FinishReason)> = Vec::new();
        let mut forked: Vec<Seq> = Vec::new();
        for (mut child, _) in children {
            let Some(d) = drawn.next() else { break };
            match d.end {
                Some(r) => self.finish(&mut child, r),
                None => forked.push(child),
            }
        }
        let max_k = self.cfg.speculative.as_ref().map_or(0, |c| c.max_tokens);
        for (i, seq) in self.running.iter_mut().enumerate() {
            if rows[i].is_none() {
                continue;
            }
            let Some(d) = drawn.next() else { break };
            let guessed = seq.draft.len();
            seq.draft.clear();
            if guessed > 0 {
                // The accepted guesses' keys and values were computed in this forward; the rest
                // are dropped (their slots are written again when those positions are computed),
                // and so are blocks that held only rejected guesses.
                seq.num_computed += d.accepted;
                Self::register_full_blocks(&mut self.pool, seq, bs);
                let need = (seq.num_computed + 1).div_ceil(bs);
                if seq.table.len() > need {
                    self.pool.free(&seq.table[need..]);
                    seq.table.truncate(need);
                }
                self.metrics.speculated(guessed, d.accepted);
                seq.spec.record(guessed, d.accepted, max_k);
            }
            if let Some(r) = d.end {
                finished.push((i, r));
            }
        }
        // Remove finished sequences, highest index first so the others keep their places.
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let mut seq = self.running.remove(i);
            self.finish(&mut seq, reason);
        }
        self.running.extend(forked);
        self.sync_prefix_metrics();
        self.update_gauges();
        Ok(computed)
    }

    fn update_gauges(&self) {
        self.metrics.running.set(self.running.len() as i64);
        self.metrics.waiting.set(self.waiting.len() as i64);
        self.metrics.kv_usage.set(self.pool.usage());
    }

    fn sync_prefix_metrics(&mut self) {
        let now = self.pool.stats();
        let bs = self.cfg.block_size as u64;
        self.metrics
            .prefix_queries
            .inc_by((now.queries - self.synced_prefix.queries) * bs);
        self.metrics
            .prefix_hits
            .inc_by((now.hits - self.synced_prefix.hits) * bs);
        self.synced_prefix = now;
    }

    /// Ends every request with an error and frees everything (after a failed step).
    pub fn abort_all(&mut self) {
        let mut all: Vec<Seq> = self.running.drain(..).collect();
        all.extend(self.waiting.drain(..));
        for mut seq in all {
            self.finish(&mut seq, FinishReason::Error);
        }
        self.update_gauges();
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
