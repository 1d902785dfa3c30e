//! Embedding speed of all-MiniLM-L6-v2: one request of 32 texts of about 100 tokens each (one internal
//! batch), median of a few runs. Skipped when the model is not fetched (scripts/fetch-models.sh all-minilm-l6-v2).
//! Run: cargo bench --bench embeddings
//! With INHAUS_BENCH_TEXTS=FILE set, the 32 texts are also written there (a JSON list), so that another
//! implementation can time the same inputs (scripts/bench-embeddings.sh).
use inhaus::embeddings::Embedder;
use std::time::Instant;

fn main() {
    let alias = "all-minilm-l6-v2";
    let e = match Embedder::load(alias) {
        Ok(e) => e,
        Err(err) => {
            println!("{alias}: skipped ({err})");
            return;
        }
    };
    let words =
        "on premises inference keeps every prompt and every document inside the company network \
                 while the server answers requests in the format clients already speak";
    // 32 distinct texts of 98 ids + [CLS]/[SEP] = 100 tokens.
    let texts: Vec<String> = (0..32)
        .map(|i| {
            let mut t = format!("document {i}:");
            while e.count_tokens(&t).unwrap_or(usize::MAX) < 100 {
                t.push(' ');
                t.push_str(words.split(' ').nth(t.len() % 24).unwrap_or("a"));
            }
            t
        })
        .collect();
    let tokens: usize = texts.iter().filter_map(|t| e.count_tokens(t).ok()).sum();
    if let Ok(path) = std::env::var("INHAUS_BENCH_TEXTS") {
        let json = serde_json::to_string(&texts).unwrap_or_default();
        if let Err(err) = std::fs::write(&path, json) {
            println!("cannot write {path}: {err}");
            return;
        }
    }
    let mut times = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        match e.embed_texts(&texts) {
            Ok(v) => assert_eq!(v.len(), 32),
            Err(err) => {
                println!("embedding failed: {err}");
                return;
            }
        }
        times.push(start.elapsed().as_secs_f64());
    }
    let samples: Vec<String> = times.iter().map(|t| format!("{:.1}", t * 1e3)).collect();
    println!("samples_ms {}", samples.join(" "));
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{alias}: 32 texts, {tokens} tokens: median {:.1} ms ({:.0} tokens/s), best {:.1} ms, {} threads",
        median * 1e3,
        tokens as f64 / median,
        times[0] * 1e3,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
}
