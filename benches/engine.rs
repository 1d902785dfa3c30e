//! Aggregate output tok/s of the continuous-batching engine, in process (no HTTP), for 1/4/16/64
//! concurrent streams of ~150-token prompts and 128 output tokens (ignore_eos), with time to first
//! token percentiles. The HTTP-level comparison with llama-server belongs to the API's load script.
//! Run: cargo bench --bench engine [-- ALIAS]
use inhaus::engine::scheduler::{CancelHandle, Engine, EngineConfig, GenerationRequest, SeqEvent};
use std::sync::mpsc::channel;
use std::time::Instant;

fn main() {
    let alias = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "gemma-3-270m".into());
    let m = match inhaus::loader::load(&alias) {
        Ok(m) => m,
        Err(e) => {
            println!("{alias}: skipped ({e})");
            return;
        }
    };
    let base = "In a quiet town by the sea, the old lighthouse keeper kept a journal of every ship that passed. ";
    println!(
        "{alias}: simd {}, threads {}",
        inhaus_kernels::cpu::simd_level().name(),
        inhaus_kernels::pool::threads()
    );
    for streams in [1usize, 4, 16, 64] {
        let cfg = EngineConfig {
            max_num_seqs: 64,
            max_num_batched_tokens: 512,
            block_size: 16,
            num_blocks: 64 * 20,
            max_waiting: 256,
            speculative: None,
        };
        let mut e = Engine::new(&m.model, cfg);
        let mut rxs = Vec::new();
        let start = Instant::now();
        for i in 0..streams {
            // Distinct prompts (no prefix-cache sharing beyond the first words), ~150 tokens.
            let text = format!("Story {i}: {}", base.repeat(7));
            let mut prompt = m.tokenizer.encode(&text, true).expect("encode");
            prompt.truncate(150);
            let (tx, rx) = channel();
            let mut req = GenerationRequest::new(prompt, 128);
            req.ignore_eos = true;
            e.add_request(req, tx, CancelHandle::new(1))
                .expect("admitted");
            rxs.push(rx);
        }
        let mut first: Vec<Option<f64>> = vec![None; streams];
        let mut total = 0usize;
        while e.has_work() {
            e.step().expect("step");
            for (i, rx) in rxs.iter().enumerate() {
                for ev in rx.try_iter() {
                    if let SeqEvent::Token { .. } = ev {
                        total += 1;
                        first[i].get_or_insert(start.elapsed().as_secs_f64());
                    }
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let mut ttft: Vec<f64> = first.into_iter().flatten().collect();
        ttft.sort_by(f64::total_cmp);
        println!(
            "streams {streams:3}: {:7.1} output tok/s, TTFT p50 {:.2} s, p90 {:.2} s, total {:.1} s",
            total as f64 / secs,
            ttft[ttft.len() / 2],
            ttft[(ttft.len() * 9 / 10).min(ttft.len() - 1)],
            secs
        );
    }
}
