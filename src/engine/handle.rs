//! The engine on its own thread: callers (the HTTP layer, tests) submit requests through a bounded
//! channel and receive each sequence's events on their own channel. The thread steps while there is
//! work and blocks on the channel when idle, so an idle server uses no CPU.
use super::metrics::EngineMetrics;
use super::scheduler::{
    AdmissionError, CancelHandle, Engine, EngineConfig, GenerationRequest, SeqEvent, SeqId,
};
use crate::loader::LoadedModel;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use thiserror::Error;

enum Command {
    Add(
        Box<GenerationRequest>,
        Sender<SeqEvent>,
        CancelHandle,
        Sender<Result<SeqId, AdmissionError>>,
    ),
    /// End every request (with an error) and stop.
    Shutdown,
}

/// A submitted request: its events (every choice's tokens, then its end) and a way to cancel
/// choices. Dropping it cancels whatever is still running.
pub struct RequestStream {
    pub id: SeqId,
    pub events: Receiver<SeqEvent>,
    pub cancel: CancelHandle,
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.cancel.cancel_all();
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum SubmitError {
    #[error(transparent)]
    Refused(#[from] AdmissionError),
    #[error("the engine has stopped")]
    Stopped,
}

/// A running engine thread for one model.
pub struct EngineHandle {
    tx: Option<SyncSender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    pub fn spawn(
        model: Arc<LoadedModel>,
        cfg: EngineConfig,
        metrics: EngineMetrics,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Command>(1024);
        let (warm_tx, warm_rx) = mpsc::channel::<Result<(), String>>();
        let name = format!("inhaus-engine-{}", model.name);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(&model, cfg, metrics, rx, warm_tx))?;
        // The engine is ready once its cache is allocated and one forward has run (or it failed).
        if let Ok(Err(e)) = warm_rx.recv() {
            let _ = thread.join();
            return Err(std::io::Error::other(format!(
                "allocating the KV cache: {e}"
            )));
        }
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Whether the engine thread still runs (it only ends on shutdown, or by a bug).
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Queues a request; its tokens and its end arrive on the returned stream.
    pub fn submit(&self, req: GenerationRequest) -> Result<RequestStream, SubmitError> {
        let tx = self.tx.as_ref().ok_or(SubmitError::Stopped)?;
        let (ev_tx, ev_rx) = mpsc::channel();
        let (reply_tx, reply_rx) = mpsc::channel();
        let cancel = CancelHandle::new(req.n);
        tx.send(Command::Add(Box::new(req), ev_tx, cancel.clone(), reply_tx))
            .map_err(|_| SubmitError::Stopped)?;
        let id = reply_rx.recv().map_err(|_| SubmitError::Stopped)??;
        Ok(RequestStream {
            id,
            events: ev_rx,
            cancel,
        })
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        // Whoever could still read results is gone with the handle: end what runs, then join.
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Command::Shutdown);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a request shaped like a busy step through a new engine (a full token budget of prompt,
/// then a few choices decoding together), so that the first users after a start do not pay for
/// first-touch costs: the largest activation buffers, the compute pool's threads, mapped weights.
fn warm_up(engine: &mut Engine, model: &LoadedModel, cfg: &EngineConfig) {
    let text = "Warm-up: the quick brown fox jumps over the lazy dog. ".repeat(64);
    let Ok(mut prompt) = model.tokenizer.encode(&text, true) else {
        return;
    };
    let budget = cfg
        .max_num_batched_tokens
        .min(model.model.context_len() / 2)
        .max(1);
    prompt.truncate(budget);
    // As many choices as a busy server decodes at once (16 streams is the load the README
    // measures), for a few steps: the per-step buffers reach the size a burst of users needs.
    let mut req = GenerationRequest::new(prompt, 4);
    req.ignore_eos = true;
    req.n = cfg.max_num_seqs.clamp(1, 16);
    let (tx, _rx) = mpsc::channel();
    let cancel = CancelHandle::new(req.n);
    if engine.add_request(req, tx, cancel).is_ok() {
        if let Err(e) = engine.run_to_completion() {
            tracing::warn!(model = %model.name, "warm-up forward failed: {e}");
            engine.abort_all();
        }
    }
}

fn run(
    model: &LoadedModel,
    cfg: EngineConfig,
    metrics: EngineMetrics,
    rx: Receiver<Command>,
    warm: Sender<Result<(), String>>,
) {
    let mut engine = match Engine::try_new(&model.model, cfg.clone()) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(model = %model.name, "allocating the KV cache: {e}");
            let _ = warm.send(Err(e.to_string()));
            return;
        }
    };
    let started = std::time::Instant::now();
    warm_up(&mut engine, model, &cfg);
    metrics.warmup.set(started.elapsed().as_secs_f64());
    // What loading the weights freed (read buffers, conversions) goes back to the system.
    super::heap::release_free_memory();
    // Counters start after the warm-up: it is not a user's request.
    let mut engine = engine.with_metrics(metrics);
    let _ = warm.send(Ok(()));
    let mut open = true;
    loop {
        // Take every queued command; block only when there is nothing to compute.
        loop {
            let cmd = if engine.has_work() || !open {
                match rx.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            } else {
                match rx.recv() {
                    Ok(c) => c,
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            };
            match cmd {
                Command::Add(req, events, cancel, reply) => {
                    let _ = reply.send(engine.add_request(*req, events, cancel));
                }
                Command::Shutdown => {
                    engine.abort_all();
                    return;
                }
            }
        }
        if !engine.has_work() {
            if !open {
                return;
            }
            continue;
        }
        if let Err(e) = engine.step() {
            // A forward error is a bug or a broken model file: fail every request rather than hang them.
            tracing::error!("engine step failed: {e}");
            engine.abort_all();
        }
        if !engine.has_work() {
            // The last request just ended: the steps' freed buffers go back to the system.
            super::heap::release_free_memory();
        }
    }
}
