//! Prefill (512 tokens) and decode (128 tokens) speed on the real models, as `inhaus bench` measures
//! them. Models that are not fetched are skipped (fetch with scripts/fetch-models.sh ALIAS).
//! For the ratio against llama.cpp on the same machine, run scripts/bench-llamacpp.sh ALIAS.
//! Run: cargo bench --bench model [-- ALIAS...]
fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let aliases: Vec<String> = if args.is_empty() {
        [
            "gemma-3-270m",
            "smollm2-135m-instruct",
            "qwen2.5-coder-0.5b-instruct",
        ]
        .map(String::from)
        .to_vec()
    } else {
        args
    };
    println!(
        "simd: {}, threads: {}",
        inhaus_kernels::cpu::simd_level().name(),
        inhaus_kernels::pool::threads()
    );
    for alias in aliases {
        let m = match inhaus::loader::load(&alias) {
            Ok(m) => m,
            Err(e) => {
                println!("{alias}: skipped ({e})");
                continue;
            }
        };
        match inhaus::bench::speed(&m.model, 512, 128, 3) {
            Ok(r) => println!(
                "{alias:32} prefill pp512 {:8.1} tok/s   decode tg128 {:6.1} tok/s",
                r.prefill_tok_s, r.decode_tok_s
            ),
            Err(e) => println!("{alias}: failed ({e})"),
        }
    }
}
