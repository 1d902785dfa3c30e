//! A request's CPU work before the engine sees it (rendering the chat template, tokenizing,
//! compiling a grammar) runs on a bounded pool, never on the async workers that keep `/health`
//! and every open stream answering: at most `slots` jobs run at once, the rest wait their turn
//! (as TGI's validation workers do). Prompts that cannot fit the context are refused before
//! they are tokenized, from their length alone.
use super::errors::ApiError;
use super::{AppState, ServedModel};
use std::sync::Arc;

/// Runs `f` with the served model `model` on the bounded preparation pool.
pub async fn run<T: Send + 'static>(
    state: &Arc<AppState>,
    model: &str,
    f: impl FnOnce(&ServedModel) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let model = model.to_string();
    let st = state.clone();
    run_plain(state, move || f(st.generative(&model)?)).await
}

/// Runs `f` on the bounded preparation pool.
pub async fn run_plain<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let _slot = state
        .prepare_slots
        .acquire()
        .await
        .map_err(|_| ApiError::internal("the server is shutting down"))?;
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(ApiError::internal("request preparation failed")))
}

/// A 400 (`context_length_exceeded`) when `bytes` of prompt text are certainly more tokens than
/// the model's context holds; checked before tokenizing.
pub fn check_prompt_bytes(served: &ServedModel, bytes: usize) -> Result<(), ApiError> {
    let ctx = served.loaded.model.context_len();
    if served.loaded.tokenizer.surely_longer_than(bytes, ctx) {
        return Err(ApiError::context_too_long(format!(
            "This model's maximum context length is {ctx} tokens; the prompt's {bytes} bytes of text are more than that many tokens. Please shorten the prompt."
        )));
    }
    Ok(())
}
