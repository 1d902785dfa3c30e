//! A forward that fails for one sequence must not fail its neighbours: the engine retries each
//! sequence of a failed step alone and ends only the one that still fails, with an error. The
//! model here is a tiny test double whose forward refuses a poison token.
use inhaus::engine::generate::FinishReason;
use inhaus::engine::scheduler::{CancelHandle, Engine, EngineConfig, GenerationRequest, SeqEvent};
use inhaus::engine::step_model::StepModel;
use inhaus_models::{Batch, LogitsWanted, ModelError, StepLogits};
use std::sync::mpsc::channel;

const VOCAB: usize = 8;
const POISON: u32 = 7;

/// Next token = (last token + 1) mod 7; a batch holding the poison token fails.
struct PoisonModel;

impl StepModel for PoisonModel {
    type Cache = ();
    fn context_len(&self) -> usize {
        256
    }
    fn new_cache(&self, _block_size: usize, _num_blocks: usize) -> Result<(), ModelError> {
        Ok(())
    }
    fn forward(&self, batch: &Batch, _cache: &mut ()) -> Result<StepLogits, ModelError> {
        let mut values = Vec::new();
        let mut seq_rows = Vec::new();
        for chunk in &batch.seqs {
            if chunk.tokens.contains(&POISON) {
                return Err(ModelError::InvalidBatch("poison token".into()));
            }
            let rows = match chunk.logits {
                LogitsWanted::None => 0,
                _ => 1,
            };
            seq_rows.push((values.len() / VOCAB, rows));
            if rows == 1 {
                let last = *chunk.tokens.last().unwrap_or(&0);
                let mut row = vec![0.0f32; VOCAB];
                row[((last + 1) % POISON) as usize] = 10.0;
                values.extend(row);
            }
        }
        Ok(StepLogits {
            vocab: VOCAB,
            values,
            seq_rows,
        })
    }
    fn copy_block(_cache: &mut (), _src: u32, _dst: u32) -> Result<(), ModelError> {
        Ok(())
    }
}

#[test]
fn a_failing_sequence_fails_alone_and_its_neighbours_finish() {
    let model = PoisonModel;
    let mut e = Engine::new(
        &model,
        EngineConfig {
            max_num_seqs: 8,
            max_num_batched_tokens: 64,
            block_size: 4,
            num_blocks: 32,
            max_waiting: 8,
            speculative: None,
        },
    );
    let mut rxs = Vec::new();
    for prompt in [vec![1, 2, 3], vec![2, POISON, 4], vec![5]] {
        let (tx, rx) = channel();
        e.add_request(GenerationRequest::new(prompt, 4), tx, CancelHandle::new(1))
            .expect("admitted");
        rxs.push(rx);
    }
    e.run_to_completion().expect("the engine keeps going");
    let results: Vec<(Vec<u32>, Vec<FinishReason>)> = rxs
        .iter()
        .map(|rx| {
            let mut toks = Vec::new();
            let mut fin = Vec::new();
            for ev in rx.try_iter() {
                match ev {
                    SeqEvent::Token { id, .. } => toks.push(id),
                    SeqEvent::Finished { reason, .. } => fin.push(reason),
                }
            }
            (toks, fin)
        })
        .collect();
    assert_eq!(results[0], (vec![4, 5, 6, 0], vec![FinishReason::Length]));
    assert_eq!(results[1], (vec![], vec![FinishReason::Error]));
    assert_eq!(results[2], (vec![6, 0, 1, 2], vec![FinishReason::Length]));
    assert_eq!(e.pool().num_free(), e.pool().num_blocks(), "blocks leaked");
}
