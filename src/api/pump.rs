//! From engine events to text: one blocking thread per submitted request reads its choices' tokens,
//! detokenizes each choice incrementally, applies stop strings (holding back text that could be the
//! start of one; a matched stop string is never emitted and stops only its own choice), attaches
//! log-probabilities, and forwards `Piece`s to the async side. The client going away (the receiver
//! dropped) or the deadline passing cancels what is still running. Every token generated counts
//! against the request's key (its `TokenMeter`), sent or not.
use super::errors::ApiError;
use super::key_usage::TokenMeter;
use crate::engine::generate::FinishReason;
use crate::engine::handle::RequestStream;
use crate::engine::sampler::TokenLogprobs;
use crate::engine::scheduler::SeqEvent;
use crate::loader::LoadedModel;
use crate::tokenizer::{IncrementalDecoder, ModelTokenizer};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Sender;

/// One token's log-probability with its text and bytes, and the best alternatives.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// What the async side receives for a choice (`index` counts across all prompts and choices).
pub enum Piece {
    Delta {
        index: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    End {
        index: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
        reason: &'static str,
        completion_tokens: usize,
        /// The stop string that ended the choice, if one did.
        stop_sequence: Option<String>,
    },
    Failed(ApiError),
}

fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
        FinishReason::Error => "error",
    }
}

fn logprob_entry(tok: &ModelTokenizer, id: u32, lp: &TokenLogprobs) -> TokenLogprob {
    let text = |id: u32| {
        let b = tok.token_bytes(id);
        (String::from_utf8_lossy(&b).into_owned(), b)
    };
    let (token, bytes) = text(id);
    TokenLogprob {
        token,
        bytes,
        logprob: lp.logprob,
        top: lp
            .top
            .iter()
            .map(|&(t, l)| {
                let (s, b) = text(t);
                (s, b, l)
            })
            .collect(),
    }
}

impl ChoiceState {
    /// The choice's last piece: the text still held, with its log-probabilities.
    fn end(&mut self, index: usize, reason: &'static str, stop: Option<&str>) -> Piece {
        Piece::End {
            index,
            text: std::mem::take(&mut self.pending),
            logprobs: std::mem::take(&mut self.logprobs),
            reason,
            completion_tokens: self.tokens,
            stop_sequence: stop.map(str::to_string),
        }
    }
}

struct ChoiceState {
    decoder: IncrementalDecoder,
    pending: String,
    logprobs: Vec<TokenLogprob>,
    /// Where each of `logprobs`' tokens starts in `pending` (to drop those a stop string cuts).
    lp_starts: Vec<usize>,
    tokens: usize,
    done: bool,
}

/// The tokens a pump has seen, counted against its key when the pump ends, however it ends.
struct Metered(Option<TokenMeter>, usize);

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.completion(self.1);
        }
    }
}

/// Reads `stream` until every choice has ended; choice `c` is sent as index `index_base + c`.
#[allow(clippy::too_many_arguments)]
pub fn pump(
    model: Arc<LoadedModel>,
    stream: RequestStream,
    n: usize,
    index_base: usize,
    stops: Vec<String>,
    deadline: Option<(Instant, u64)>,
    meter: Option<TokenMeter>,
    out: Sender<Piece>,
) {
    let mut metered = Metered(meter, 0);
    let tok = &model.tokenizer;
    let hold = stops
        .iter()
        .map(|s| s.len())
        .max()
        .unwrap_or(0)
        .saturating_sub(1);
    let mut choices: Vec<ChoiceState> = (0..n)
        .map(|_| ChoiceState {
            decoder: IncrementalDecoder::new(true),
            pending: String::new(),
            logprobs: Vec::new(),
            lp_starts: Vec::new(),
            tokens: 0,
            done: false,
        })
        .collect();
    let mut open = n;
    while open > 0 {
        let ev = match deadline {
            None => stream
                .events
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
            Some((at, _)) => stream.events.recv_timeout(
                at.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ),
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => {
                // Past the request's deadline: every open choice ends cleanly with what it has,
                // as if max_tokens were reached (a 408 would make clients retry from the start).
                let secs = deadline.map(|d| d.1).unwrap_or(0);
                tracing::warn!("generation stopped at the request timeout ({secs} s)");
                for (c, st) in choices.iter_mut().enumerate().filter(|(_, st)| !st.done) {
                    st.done = true;
                    if let Ok(t) = st.decoder.finish(tok) {
                        st.pending.push_str(&t);
                    }
                    let end = st.end(index_base + c, "length", None);
                    if out.blocking_send(end).is_err() {
                        return;
                    }
                }
                return; // dropping the stream cancels what still runs
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.blocking_send(Piece::Failed(ApiError::internal(
                    "the engine stopped while generating",
                )));
                return;
            }
        };
        match ev {
            SeqEvent::Token {
                choice,
                id,
                logprobs,
            } => {
                metered.1 += 1;
                let Some(st) = choices.get_mut(choice) else {
                    continue;
                };
                if st.done {
                    continue; // tokens generated before a stop-string cancel took effect
                }
                st.tokens += 1;
                if let Some(lp) = &logprobs {
                    st.logprobs.push(logprob_entry(tok, id, lp));
                    st.lp_starts.push(st.pending.len());
                }
                if !tok.stop_ids.contains(&id) {
                    match st.decoder.push(tok, id) {
                        Ok(t) => st.pending.push_str(&t),
                        Err(e) => {
                            let _ =
                                out.blocking_send(Piece::Failed(ApiError::internal(e.to_string())));
                            return;
                        }
                    }
                }
                if let Some((pos, stop)) = stops
                    .iter()
                    .filter_map(|s| st.pending.find(s.as_str()).map(|p| (p, s)))
                    .min_by_key(|&(p, _)| p)
                {
                    st.pending.truncate(pos);
                    // The log-probabilities go with the text: tokens wholly inside the stop
                    // string (or after it) are cut with it.
                    let keep = st.lp_starts.iter().take_while(|&&s| s < pos).count();
                    st.logprobs.truncate(keep);
                    st.lp_starts.clear();
                    st.done = true;
                    open -= 1;
                    stream.cancel.cancel(choice);
                    let end = st.end(index_base + choice, "stop", Some(stop));
                    if out.blocking_send(end).is_err() {
                        return;
                    }
                    continue;
                }
                let mut cut = st.pending.len().saturating_sub(hold);
                while !st.pending.is_char_boundary(cut) {
                    cut -= 1;
                }
                if cut > 0 {
                    let rest = st.pending.split_off(cut);
                    let delta = Piece::Delta {
                        index: index_base + choice,
                        text: std::mem::replace(&mut st.pending, rest),
                        logprobs: std::mem::take(&mut st.logprobs),
                    };
                    st.lp_starts.clear();
                    if out.blocking_send(delta).is_err() {
                        return;
                    }
                }
            }
            SeqEvent::Finished { choice, reason } => {
                let Some(st) = choices.get_mut(choice) else {
                    continue;
                };
                if st.done {
                    continue;
                }
                st.done = true;
                open -= 1;
                if reason == FinishReason::Error {
                    let _ = out.blocking_send(Piece::Failed(ApiError::internal(
                        "the engine failed while generating",
                    )));
                    return;
                }
                if let Ok(t) = st.decoder.finish(tok) {
                    st.pending.push_str(&t);
                }
                let end = st.end(index_base + choice, finish_name(reason), None);
                if out.blocking_send(end).is_err() {
                    return;
                }
            }
        }
    }
}
