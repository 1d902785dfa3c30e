//! Starting a generation, shared by every wire API: check the request against the deadline and the
//! queue's limits, build one engine request per prompt, submit them off the async workers, and
//! start one pump per request. What comes back is a channel of `Piece`s for every choice and a
//! guard that cancels the engine work when the answer is dropped (the client went away).
use super::errors::ApiError;
use super::origin::Origin;
use super::params::GenSpec;
use super::pump::{pump, Piece};
use super::AppState;
use crate::engine::handle::SubmitError;
use crate::engine::scheduler::{AdmissionError, CancelHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::Receiver;

/// Seconds since the Unix epoch (the `created` of API objects).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh object id with this prefix, unique in this process: `chatcmpl` gives `chatcmpl-…`; a
/// prefix ending in `_` (`resp_`, `msg_`) is used as it is.
pub fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let sep = if prefix.ends_with('_') { "" } else { "-" };
    format!(
        "{prefix}{sep}{:x}{:06x}",
        now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Cancels every submitted request when dropped (the handler or stream task went away).
pub struct CancelGuard(Vec<CancelHandle>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        for c in &self.0 {
            c.cancel_all();
        }
    }
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Refused(AdmissionError::QueueFull) => ApiError::overloaded(),
        SubmitError::Refused(e @ AdmissionError::TooLong { .. }) => {
            ApiError::context_too_long(e.to_string())
        }
        SubmitError::Refused(e @ AdmissionError::BadChoiceCount { .. }) => {
            ApiError::invalid(e.to_string(), Some("n"))
        }
        SubmitError::Refused(e) => ApiError::invalid(e.to_string(), Some("prompt")),
        SubmitError::Stopped => ApiError::internal("the engine has stopped"),
    }
}

/// A running generation: the pieces of all its choices (choice `i` of prompt `p` is index
/// `p * n + i`), and the guard that cancels it when dropped.
pub struct Generation {
    pub pieces: Receiver<Piece>,
    pub guard: CancelGuard,
    /// Choices in all (prompts × n).
    pub choices: usize,
    pub prompt_tokens: usize,
}

/// Submits one engine request per prompt to `model`'s engine, each with `spec.n` choices, on
/// behalf of `origin` (its tenant, and its key's token meter).
pub async fn start(
    state: &Arc<AppState>,
    model: &str,
    spec: &GenSpec,
    prompts: Vec<Vec<u32>>,
    origin: &Origin,
) -> Result<Generation, ApiError> {
    let served = state.generative(model)?;
    // One deadline for the whole request, from its arrival: reading the body and preparing the
    // prompt count against it too. Past it before generation starts: 408 (nothing was done).
    let deadline = state
        .request_timeout
        .map(|d| (origin.arrived + d, d.as_secs()));
    if let Some((at, secs)) = deadline {
        if std::time::Instant::now() >= at {
            return Err(ApiError::timeout(secs));
        }
    }
    // Each prompt is one engine request, and all wait in the queue at once: more than it holds
    // could never succeed, however long the client retries.
    if prompts.len() > served.limits.max_waiting {
        return Err(ApiError::invalid(
            format!(
                "At most {} prompts fit in one request on this server (--max-waiting); got {}.",
                served.limits.max_waiting,
                prompts.len()
            ),
            Some("prompt"),
        ));
    }
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let requests = prompts
        .into_iter()
        .map(|p| {
            spec.request(served, p).map(|mut r| {
                r.tenant = origin.tenant.clone();
                r
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Submitting waits for the engine thread to take the request (up to one step): off the async workers.
    let submitted = {
        let state = state.clone();
        let model = model.to_string();
        tokio::task::spawn_blocking(move || {
            let served = state.generative(&model).map_err(|_| SubmitError::Stopped)?;
            let mut streams = Vec::with_capacity(requests.len());
            for r in requests {
                streams.push(served.engine.submit(r)?);
            }
            Ok::<_, SubmitError>(streams)
        })
        .await
    };
    let streams = submitted
        .unwrap_or(Err(SubmitError::Stopped))
        .map_err(submit_error)?;
    let meter = origin
        .store_key
        .as_ref()
        .and_then(|k| state.keys.as_ref().map(|s| s.meter(k)));
    if let Some(m) = &meter {
        m.prompt(prompt_tokens);
    }
    let n = spec.n;
    let choices = n * streams.len();
    let guard = CancelGuard(streams.iter().map(|s| s.cancel.clone()).collect());
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(256);
    for (p, stream) in streams.into_iter().enumerate() {
        let loaded = served.loaded.clone();
        let stops = spec.stops.clone();
        let tx = tx.clone();
        let meter = meter.clone();
        tokio::task::spawn_blocking(move || {
            pump(loaded, stream, n, p * n, stops, deadline, meter, tx)
        });
    }
    Ok(Generation {
        pieces: rx,
        guard,
        choices,
        prompt_tokens,
    })
}
