//! Sampling a step's tokens and streaming them: each sequence draws from its logits rows (under its
//! grammar, with its penalties), its guesses are verified row by row (see `speculate`), and every
//! token goes out as it is accepted. Each sequence's draws touch only that sequence, so a step's
//! draws run side by side on the compute pool.
use super::constraint::{Advance, SeqConstraint};
use super::metrics::EngineMetrics;
use super::request::{FinishReason, SeqEvent};
use super::sampler::{token_logprobs, TokenLogprobs};
use super::seq::Seq;
use inhaus_models::StepLogits;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

/// A sequence's sampled token with its log-probabilities, or why the sequence ends instead.
type Pick = Result<(u32, Option<TokenLogprobs>), FinishReason>;

/// One sequence's draws on the compute pool: the sequence, its logits rows, and the outcome.
type SampleTask<'a> = Mutex<(&'a mut Seq, Vec<&'a [f32]>, Option<Drawn>)>;

/// What sampling did to a sequence in a step: why it ended, if it did, and how many of its
/// guesses the model accepted.
#[derive(Clone, Copy, Debug)]
pub(super) struct Drawn {
    pub(super) end: Option<FinishReason>,
    pub(super) accepted: usize,
}

/// Samples `seq`'s next token from `row` (within its grammar, if it has one), with its
/// log-probabilities when asked. Touches only `seq`: the step runs it for every sequence at once
/// on the compute pool.
pub(super) fn pick_token(seq: &mut Seq, row: &[f32]) -> Pick {
    let banned: &[u32] = if seq.generated() < seq.min_tokens {
        &seq.stop_ids
    } else {
        &[]
    };
    let tok = match seq.constraint.as_mut().map(SeqConstraint::mask) {
        None | Some(Ok(None)) => seq.sampler.sample_with(row, banned, None),
        Some(Ok(Some(mask))) => seq.sampler.sample_with(row, banned, Some(mask)),
        Some(Err(e)) => {
            tracing::error!(seq = seq.id.0, "grammar failed: {e}");
            return Err(FinishReason::Error);
        }
    };
    let logprobs = seq
        .sampler
        .params()
        .logprobs
        .map(|k| token_logprobs(row, tok, k));
    Ok((tok, logprobs))
}

/// Streams `seq`'s picked token and says whether the sequence is done.
pub(super) fn emit_token(
    seq: &mut Seq,
    pick: Pick,
    metrics: &EngineMetrics,
) -> Option<FinishReason> {
    let (tok, logprobs) = match pick {
        Ok(p) => p,
        Err(reason) => return Some(reason),
    };
    seq.sampler.observe(tok);
    seq.tokens.push(tok);
    metrics.generation_tokens.inc();
    let now = Instant::now();
    match seq.last_token_at {
        // Time to first token: once per request, at its first token of any choice.
        None if !seq.clock.first_token.swap(true, Ordering::Relaxed) => metrics
            .ttft
            .observe(now.duration_since(seq.clock.arrival).as_secs_f64()),
        None => {}
        Some(t) => metrics.itl.observe(now.duration_since(t).as_secs_f64()),
    }
    seq.last_token_at = Some(now);
    let is_stop = seq.stop_ids.contains(&tok);
    let grammar = seq
        .constraint
        .as_mut()
        .map(|c| c.advance(tok, is_stop))
        .unwrap_or(Advance::Continue);
    let event = SeqEvent::Token {
        choice: seq.choice,
        id: tok,
        logprobs,
    };
    if seq.tx.send(event).is_err() {
        Some(FinishReason::Cancelled)
    } else if let Advance::Failed(e) = grammar {
        tracing::error!(seq = seq.id.0, "grammar rejected token {tok}: {e}");
        Some(FinishReason::Error)
    } else if (is_stop && !seq.ignore_eos) || grammar == Advance::Complete {
        // A stop token ends the sequence (unless ignored), and so does a complete grammar.
        Some(FinishReason::Stop)
    } else if seq.generated() >= seq.max_tokens {
        Some(FinishReason::Length)
    } else {
        None
    }
}

/// Samples and streams `seq`'s tokens from its logits `rows`: row 0 follows its last token, row
/// `i` its `i`-th guess. Each row's token is drawn as without speculation; the next row counts
/// only while the drawn token equals the guess (see `speculate`).
pub(super) fn draw_and_emit(seq: &mut Seq, rows: &[&[f32]], metrics: &EngineMetrics) -> Drawn {
    let mut accepted = 0;
    for (i, row) in rows.iter().enumerate() {
        let pick = pick_token(seq, row);
        let matched = matches!((&pick, seq.draft.get(i)), (Ok((t, _)), Some(g)) if t == g);
        accepted += usize::from(matched);
        if let Some(end) = emit_token(seq, pick, metrics) {
            return Drawn {
                end: Some(end),
                accepted,
            };
        }
        if !matched {
            break;
        }
    }
    Drawn {
        end: None,
        accepted,
    }
}

/// Samples and streams every sequence of the step (the forked children first, then the running
/// ones that have rows), spread over the compute pool: each task reads its own rows and touches
/// only its own sequence. The outcomes come back in that order.
pub(super) fn draw_all(
    running: &mut [Seq],
    rows: &[Option<usize>],
    children: &mut [(Seq, usize)],
    logits: &StepLogits,
    metrics: &EngineMetrics,
) -> Vec<Drawn> {
    let mut work: Vec<(&mut Seq, Vec<&[f32]>)> = Vec::with_capacity(running.len() + children.len());
    for (child, k) in children.iter_mut() {
        if let Some(row) = logits.last(*k) {
            work.push((child, vec![row]));
        }
    }
    for (seq, k) in running.iter_mut().zip(rows) {
        let Some(k) = *k else { continue };
        let (_, n) = logits.seq_rows[k];
        // A sequence with guesses has a row per position; any other only its last.
        let wanted = if seq.draft.is_empty() {
            logits.last(k).into_iter().collect()
        } else {
            (0..n).map(|r| logits.row(k, r)).collect()
        };
        work.push((seq, wanted));
    }
    if work.len() < 2 || inhaus_kernels::pool::threads() < 2 {
        return work
            .into_iter()
            .map(|(seq, rows)| draw_and_emit(seq, &rows, metrics))
            .collect();
    }
    // One lock per task, never contended: it only hands each task its own sequence.
    let tasks: Vec<SampleTask> = work
        .into_iter()
        .map(|(seq, rows)| Mutex::new((seq, rows, None)))
        .collect();
    inhaus_kernels::pool::parallel_for(tasks.len(), |t| {
        let mut task = tasks[t].lock().unwrap_or_else(|e| e.into_inner());
        let (seq, rows, drawn) = &mut *task;
        *drawn = Some(draw_and_emit(seq, rows, metrics));
    });
    tasks
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .2
                .unwrap_or(Drawn {
                    end: Some(FinishReason::Error),
                    accepted: 0,
                })
        })
        .collect()
}
