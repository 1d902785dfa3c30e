//! The `inhaus` command line: parses arguments and dispatches; the work lives in the library.
use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use inhaus::chat_template::ChatMessage;
use inhaus::engine::generate::{generate, GenerateOptions};
use inhaus::engine::sampler::SamplingParams;
use inhaus::loader;
use inhaus::tokenizer::IncrementalDecoder;
use std::io::Write;

#[derive(Parser)]
#[command(
    name = "inhaus",
    version,
    about = "On-premises inference server for open-weight language models"
)]
struct Cli {
    /// Compute threads (default: all cores).
    #[arg(long, global = true, env = "INHAUS_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve models over the OpenAI-compatible HTTP API.
    Serve {
        #[arg(long, env = "INHAUS_HOST", default_value = "127.0.0.1")]
        host: String,
        #[arg(long, env = "INHAUS_PORT", default_value_t = 8080)]
        port: u16,
        /// Catalog alias or .gguf path; repeat to serve several (default: the default chat model).
        #[arg(long = "model")]
        models: Vec<String>,
        /// KV cache memory per model, in MiB.
        #[arg(long, env = "INHAUS_KV_CACHE_MIB", default_value_t = 1024)]
        kv_cache_mib: usize,
        #[arg(long, default_value_t = 64)]
        max_num_seqs: usize,
        #[arg(long, default_value_t = 512)]
        max_num_batched_tokens: usize,
        /// Requests waiting beyond this are refused with 429.
        #[arg(long, default_value_t = 256)]
        max_waiting: usize,
    },
    /// Generate text from a prompt; only the generated text goes to stdout.
    Generate {
        /// Catalog alias or path to a .gguf file.
        #[arg(long, env = "INHAUS_MODEL")]
        model: Option<String>,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        ignore_eos: bool,
        /// Apply the model's chat template to the prompt (as one user message).
        #[arg(long)]
        chat: bool,
        /// A system message (with --chat).
        #[arg(long)]
        system: Option<String>,
    },
    /// Print the token ids of TEXT as JSON (no bos added; special tokens in the text are parsed).
    Tokenize {
        #[arg(long, env = "INHAUS_MODEL")]
        model: Option<String>,
        text: String,
    },
    /// Measure prefill and decode speed; prints one JSON line.
    Bench {
        #[arg(long, env = "INHAUS_MODEL")]
        model: Option<String>,
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 128)]
        gen_tokens: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

fn init_threads(threads: Option<usize>) -> Result<usize> {
    let n = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    inhaus_kernels::pool::init(n);
    Ok(n)
}

fn model_name(m: Option<String>) -> String {
    m.unwrap_or_else(|| inhaus::catalog::default_chat_alias().to_string())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INHAUS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let threads = init_threads(cli.threads)?;
    match cli.command {
        Command::Serve {
            host,
            port,
            models,
            kv_cache_mib,
            max_num_seqs,
            max_num_batched_tokens,
            max_waiting,
        } => {
            let models = if models.is_empty() {
                vec![inhaus::catalog::default_chat_alias().to_string()]
            } else {
                models
            };
            let cfg = inhaus::api::ServeConfig {
                host,
                port,
                models,
                engine: inhaus::engine::scheduler::EngineConfig {
                    max_num_seqs: max_num_seqs.max(1),
                    max_num_batched_tokens: max_num_batched_tokens.max(1),
                    block_size: 16,
                    num_blocks: 0,
                    max_waiting,
                },
                kv_cache_bytes: kv_cache_mib.max(1) << 20,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(inhaus::api::serve(cfg))?;
        }
        Command::Generate {
            model,
            prompt,
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            ignore_eos,
            chat,
            system,
        } => {
            let m = loader::load(&model_name(model))?;
            let ids = if chat {
                let Some(t) = &m.chat_template else {
                    bail!("model {} has no chat template", m.name)
                };
                let mut msgs = Vec::new();
                if let Some(s) = system {
                    msgs.push(ChatMessage::new("system", &s));
                }
                msgs.push(ChatMessage::new("user", &prompt));
                let text = t.render(&msgs, true)?;
                let mut ids = m.tokenizer.encode(&text, false)?;
                if let (true, Some(bos)) = (m.tokenizer.add_bos, m.tokenizer.bos_id) {
                    if ids.first() != Some(&bos) {
                        ids.insert(0, bos);
                    }
                }
                ids
            } else {
                m.tokenizer.encode(&prompt, true)?
            };
            let opts = GenerateOptions {
                max_tokens,
                sampling: SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    seed,
                    ..Default::default()
                },
                ignore_eos,
                stop_ids: m.tokenizer.stop_ids.clone(),
                prefill_chunk: 512,
            };
            let mut decoder = IncrementalDecoder::new(true);
            let stdout = std::io::stdout();
            let mut err = None;
            let (_, stats) = generate(&m.model, &ids, &opts, |id, _| {
                match decoder.push(&m.tokenizer, id) {
                    Ok(piece) => {
                        let mut out = stdout.lock();
                        let _ = out.write_all(piece.as_bytes());
                        let _ = out.flush();
                        true
                    }
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            })?;
            if let Some(e) = err {
                return Err(e.into());
            }
            let tail = decoder.finish(&m.tokenizer)?;
            print!("{tail}");
            println!();
            let ps = stats.prompt_time.as_secs_f64();
            let ds = stats.decode_time.as_secs_f64();
            eprintln!(
                "prompt: {} tokens in {:.2} s ({:.1} tok/s); decode: {} tokens in {:.2} s ({:.1} tok/s)",
                stats.prompt_tokens,
                ps,
                stats.prompt_tokens as f64 / ps.max(1e-9),
                stats.generated_tokens,
                ds,
                stats.generated_tokens as f64 / ds.max(1e-9),
            );
        }
        Command::Tokenize { model, text } => {
            let m = loader::load(&model_name(model))?;
            let ids = m.tokenizer.encode(&text, false)?;
            println!("{}", serde_json::json!({ "ids": ids }));
        }
        Command::Bench {
            model,
            prompt_tokens,
            gen_tokens,
            repeats,
        } => {
            let m = loader::load(&model_name(model))?;
            let report = inhaus::bench::speed(&m.model, prompt_tokens, gen_tokens, repeats.max(1))?;
            println!(
                "{}",
                serde_json::json!({
                    "model": m.name,
                    "threads": threads,
                    "simd": inhaus_kernels::cpu::simd_level().name(),
                    "prompt_tokens": prompt_tokens,
                    "gen_tokens": gen_tokens,
                    "repeats": repeats,
                    "prefill_tok_s": report.prefill_tok_s,
                    "decode_tok_s": report.decode_tok_s,
                })
            );
        }
    }
    Ok(())
}
