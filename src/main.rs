//! The `inhaus` command line: parses arguments and dispatches; the work lives in the library.
use anyhow::{bail, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
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
    Serve(ServeArgs),
    /// Fetch catalog models into the model folder ($INHAUS_MODELS): the default ones, named
    /// aliases, or `all`; checks sha256; does nothing for models already there.
    Fetch { aliases: Vec<String> },
    /// Generate text from a prompt; only the generated text goes to stdout.
    Generate {
        /// Catalog alias, .gguf file, Hugging Face folder or repo id (org/name[@revision]).
        #[arg(long, env = "INHAUS_MODEL")]
        model: Option<String>,
        #[command(flatten)]
        load: LoadArgs,
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
        #[command(flatten)]
        load: LoadArgs,
        text: String,
    },
    /// Keys: `inhaus keys signing-key new --out FILE` makes the Ed25519 key that signs provenance.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit trail: `inhaus audit verify DIR` checks its hash chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Provenance of saved responses: `inhaus provenance verify RESPONSE.json --public-key KEY`.
    Provenance {
        #[command(subcommand)]
        command: ProvenanceCommand,
    },
    /// Print the system card (models with source, license, sha256, quantization and context; the
    /// configuration in force, without secrets; version and build) of the server these serve flags
    /// describe: the models are loaded as `serve` would, nothing is served.
    Card {
        #[command(flatten)]
        serve: ServeArgs,
        /// `markdown` or `json`.
        #[arg(long, default_value = "markdown", value_parser = ["markdown", "json"])]
        format: String,
    },
    /// Benchmarks: `bench model` (one model's prefill and decode speed, in-process), `bench serve`
    /// (an OpenAI-compatible server under load), `bench plot` (saved serve runs in one chart).
    /// `inhaus bench --model M ...` is the old form of `bench model`.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        command: Option<BenchCommand>,
        #[command(flatten)]
        model: BenchModelArgs,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Measure one model's prefill and decode speed in-process (one sequence, as llama-bench
    /// does); prints one JSON line.
    Model(BenchModelArgs),
    /// Load-test an OpenAI-compatible server (inhaus, llama.cpp, vLLM, ...): throughput, TTFT,
    /// TPOT, ITL, latency and goodput per concurrency or request rate; table, JSON, chart.
    Serve(Box<inhaus::bench::serve::cli::ServeArgs>),
    /// Draw several `bench serve --json` results in one chart.
    Plot(inhaus::bench::serve::cli::PlotArgs),
}

/// `inhaus bench model`.
#[derive(clap::Args)]
struct BenchModelArgs {
    #[arg(long, env = "INHAUS_MODEL")]
    model: Option<String>,
    #[command(flatten)]
    load: LoadArgs,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

/// How a model is loaded, for the commands that load one outside `serve`.
#[derive(clap::Args)]
struct LoadArgs {
    /// Weights' dtype for Hugging Face checkpoints: auto, f32, f16 or bf16.
    #[arg(long, env = "INHAUS_DTYPE", default_value = "auto")]
    dtype: inhaus::loader::DtypeChoice,
    /// Where the model runs: cpu, cuda or cuda:N.
    #[arg(long, env = "INHAUS_DEVICE", default_value = "cpu")]
    device: inhaus::loader::DeviceChoice,
    /// Which forward runs a GGUF file: auto (own kernels on the CPU, candle on a GPU), native or
    /// candle.
    #[arg(long, env = "INHAUS_BACKEND", default_value = "auto")]
    backend: inhaus::loader::BackendChoice,
}

impl LoadArgs {
    fn options(&self) -> inhaus::loader::LoadOptions {
        inhaus::loader::LoadOptions {
            dtype: self.dtype,
            device: self.device,
            backend: self.backend,
        }
    }
}

/// A key's rights and limits on the command line.
#[derive(clap::Args)]
struct KeyLimitArgs {
    /// The models the key may use (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Requests per minute at most.
    #[arg(long)]
    rpm: Option<u32>,
    /// Requests running at once at most.
    #[arg(long)]
    max_concurrent: Option<u32>,
    /// Tokens (prompt and completion) per minute at most.
    #[arg(long)]
    tpm: Option<u64>,
    /// Tokens (prompt and completion) per UTC day at most.
    #[arg(long)]
    tokens_per_day: Option<u64>,
}

impl From<KeyLimitArgs> for inhaus::keys::KeyLimits {
    fn from(a: KeyLimitArgs) -> Self {
        Self {
            models: a.models,
            rpm: a.rpm,
            max_concurrent: a.max_concurrent,
            tpm: a.tpm,
            tokens_per_day: a.tokens_per_day,
        }
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Makes a named key in the store (created if missing) and prints it, once: only its sha256
    /// is kept.
    Create {
        #[arg(long)]
        store: std::path::PathBuf,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        limits: KeyLimitArgs,
    },
    /// Lists the keys (names, rights, limits; never a key).
    List {
        #[arg(long)]
        store: std::path::PathBuf,
    },
    /// Revokes a key: a running server refuses it within a second or two.
    Revoke {
        #[arg(long)]
        store: std::path::PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Gives a key a new secret and prints it, once: the old one stops working; name, rights,
    /// limits and usage stay.
    Rotate {
        #[arg(long)]
        store: std::path::PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Changes a key's rights or limits (only those given).
    Update {
        #[arg(long)]
        store: std::path::PathBuf,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        limits: KeyLimitArgs,
    },
    /// The Ed25519 key that signs the provenance of generated output (`serve --signing-key`).
    SigningKey {
        #[command(subcommand)]
        command: SigningKeyCommand,
    },
}

#[derive(Subcommand)]
enum SigningKeyCommand {
    /// Writes a new key to FILE (readable by its owner only) and its public key to FILE.pub, and
    /// prints the public key.
    New {
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks the chain of every record in DIR: exits non-zero and names the file, line and record
    /// where it breaks (an edited, removed or inserted record). A record cut short by a crash at the
    /// end of a file is reported as a torn tail, which is not tampering.
    Verify { dir: std::path::PathBuf },
    /// Prints every record, its content decrypted where its subject's key still exists
    /// (`"content": "erased"` where it was forgotten).
    Read { dir: std::path::PathBuf },
    /// Erases a subject's content everywhere (deletes its key; the records and the chain stay).
    Forget {
        dir: std::path::PathBuf,
        subject: String,
    },
}

#[derive(Subcommand)]
enum ProvenanceCommand {
    /// Checks a saved (non-streamed) response: its content against the provenance's digest, and
    /// the signature. Exits non-zero, saying why, when either fails.
    Verify {
        /// The response as the server returned it (JSON).
        response: std::path::PathBuf,
        /// The public key: a FILE.pub written by `keys signing-key new`, or its base64 text.
        #[arg(long)]
        public_key: String,
    },
}

/// Writes `text` to a new file readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML file with any of these settings (keys as the flags, with underscores); flags and
    /// INHAUS_* variables override it.
    #[arg(long, env = "INHAUS_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[arg(long, env = "INHAUS_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "INHAUS_PORT", default_value_t = 8080)]
    port: u16,
    /// A catalog alias, a .gguf path, a Hugging Face model folder or repo id (`org/name[@revision]`,
    /// from the Hugging Face cache), a sentence-transformers folder (embeddings), or NAME=PATH; repeat
    /// to serve several. Default: the catalog's default models (chat and embeddings), fetched if
    /// missing.
    #[arg(long = "model", env = "INHAUS_MODELS_SERVED", value_delimiter = ',')]
    models: Vec<String>,
    /// KV cache memory per model, e.g. 2GiB or 512MiB (default: a quarter of the available memory).
    #[arg(long, env = "INHAUS_KV_CACHE_MEMORY", value_parser = parse_size)]
    kv_cache_memory: Option<usize>,
    /// Weights' dtype for Hugging Face checkpoints: auto (the checkpoint's own; on the CPU bf16 only
    /// where it has AVX512-BF16, else f32), f32, f16 or bf16. GGUF models keep their quantization.
    #[arg(long, env = "INHAUS_DTYPE", default_value = "auto")]
    dtype: inhaus::loader::DtypeChoice,
    /// Where the models run: cpu, cuda or cuda:N (CUDA needs `--features cuda`).
    #[arg(long, env = "INHAUS_DEVICE", default_value = "cpu")]
    device: inhaus::loader::DeviceChoice,
    /// Which forward runs a GGUF file: auto (own kernels on the CPU, candle on a GPU), native or
    /// candle (its quantized matmuls).
    #[arg(long, env = "INHAUS_BACKEND", default_value = "auto")]
    backend: inhaus::loader::BackendChoice,
    /// Sequences in the running batch at most.
    #[arg(long, env = "INHAUS_MAX_NUM_SEQS", default_value_t = 64)]
    max_num_seqs: usize,
    /// Tokens computed per step at most (prefill chunks + decodes): smaller bounds the other
    /// streams' inter-token latency while a long prompt is prefilled.
    #[arg(long, env = "INHAUS_MAX_NUM_BATCHED_TOKENS", default_value_t = 256)]
    max_num_batched_tokens: usize,
    /// Requests waiting beyond this are refused with 429 (at least 1: every request waits in the
    /// queue until the engine's next step takes it).
    #[arg(long, env = "INHAUS_MAX_WAITING", default_value_t = 256)]
    max_waiting: usize,
    /// Speculative decoding: `ngram` (prompt lookup: guesses copied from where the text's last
    /// tokens occurred before, verified in the same step; the output does not change) or `off`.
    #[arg(long, env = "INHAUS_SPECULATIVE", default_value = "off", value_parser = ["off", "ngram"])]
    speculative: String,
    /// The most tokens guessed per sequence and step (fewer while guesses fail). On a CPU a step
    /// that verifies guesses costs more than a decode step, so few guesses pay best (3 measured
    /// 1.41x against 5's 1.28x on copy-heavy prompts, 2-core EPYC).
    #[arg(long, env = "INHAUS_NUM_SPECULATIVE_TOKENS", default_value_t = 3)]
    num_speculative_tokens: usize,
    /// Prompt lookup's shortest and longest n-gram (tokens) matched against the text so far.
    #[arg(long, env = "INHAUS_NGRAM_PROMPT_LOOKUP_MIN", default_value_t = 1)]
    ngram_prompt_lookup_min: usize,
    #[arg(long, env = "INHAUS_NGRAM_PROMPT_LOOKUP_MAX", default_value_t = 3)]
    ngram_prompt_lookup_max: usize,
    /// Guesses are made only while at most this many sequences run (a bigger batch is bound by
    /// compute, and verifying guesses would slow it).
    #[arg(long, env = "INHAUS_SPECULATIVE_MAX_SEQS", default_value_t = 4)]
    speculative_max_seqs: usize,
    /// Require `Authorization: Bearer KEY` on the API (repeatable; comma-separated in the env).
    #[arg(
        long = "api-key",
        env = "INHAUS_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// A file with one API key per line (blank lines and # comments ignored).
    #[arg(long, env = "INHAUS_API_KEY_FILE")]
    api_key_file: Option<std::path::PathBuf>,
    /// Requests running longer are ended with a 408 error (0: no limit).
    #[arg(long, env = "INHAUS_REQUEST_TIMEOUT_SECS", default_value_t = 600)]
    request_timeout_secs: u64,
    /// The largest request body accepted (413 beyond), e.g. 16MiB.
    #[arg(long, env = "INHAUS_MAX_BODY", value_parser = parse_size, default_value = "16MiB")]
    max_body: usize,
    /// After SIGTERM/SIGINT, how long running requests may take to finish.
    #[arg(long, env = "INHAUS_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    shutdown_timeout_secs: u64,
    /// Connections open at once at most; beyond it new connections wait until one closes.
    #[arg(long, env = "INHAUS_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// A connection is closed when a request's headers take longer than this to arrive, or when it
    /// is kept alive this long without a new request.
    #[arg(long, env = "INHAUS_HEADER_READ_TIMEOUT_SECS", default_value_t = 30)]
    header_read_timeout_secs: u64,
    /// Threads answering HTTP (0: one per core, at least 2). Heavy request work (templates,
    /// tokenizing, grammars) runs beside them on a pool of as many threads.
    #[arg(long, env = "INHAUS_HTTP_WORKERS", default_value_t = 0)]
    http_workers: usize,
    /// Keep Responses API responses (and their input) in memory for `previous_response_id` and
    /// `GET /v1/responses/{id}`: `on` or `off`. Nothing stored ever leaves the machine.
    #[arg(long, env = "INHAUS_RESPONSES_STORE", default_value = "on", value_parser = ["on", "off"])]
    responses_store: String,
    /// The most memory stored responses take together (oldest leave first), e.g. 256MiB.
    #[arg(long, env = "INHAUS_RESPONSES_STORE_MEMORY", value_parser = parse_size, default_value = "256MiB")]
    responses_store_memory: usize,
    /// How long a stored response is kept, in seconds (default 30 days).
    #[arg(long, env = "INHAUS_RESPONSES_STORE_MAX_AGE_SECS", default_value_t = 30 * 24 * 3600)]
    responses_store_max_age_secs: u64,
    /// An Ed25519 key file (`inhaus keys signing-key new`): the provenance of every generated
    /// response is signed with it.
    #[arg(long, env = "INHAUS_SIGNING_KEY")]
    signing_key: Option<std::path::PathBuf>,
    /// Also export the engine's gauges under vLLM's names (`vllm:num_requests_waiting`, ...), which
    /// Kubernetes' inference gateway reads: `vllm` or `none`.
    #[arg(long, env = "INHAUS_METRICS_COMPAT", default_value = "vllm", value_parser = ["vllm", "none"])]
    metrics_compat: String,
    /// The names clients use for the models, in the order of `--model` (as vLLM's flag; the same as
    /// `--model NAME=MODEL`).
    #[arg(long, env = "INHAUS_SERVED_MODEL_NAME", value_delimiter = ',')]
    served_model_name: Vec<String>,
    /// Serve HTTPS: the certificate chain (PEM). Read again when the file changes.
    #[arg(long, env = "INHAUS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "INHAUS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// A browser origin allowed to call the API (CORS), e.g. https://intranet.example.com
    /// (repeatable; comma-separated in the env). None by default.
    #[arg(
        long = "cors-origin",
        env = "INHAUS_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// Write the AI Act audit trail (one hash-chained JSON Lines record per request, no prompt or
    /// output text) into this folder; check it with `inhaus audit verify DIR`.
    #[arg(long, env = "INHAUS_AUDIT_LOG")]
    audit_log: Option<std::path::PathBuf>,
    /// An audit file is closed and a new one begun past this size (and every day).
    #[arg(long, env = "INHAUS_AUDIT_MAX_FILE", value_parser = parse_size, default_value = "64MiB")]
    audit_max_file: usize,
    /// When the audit log cannot be written, serve on unlogged (default: refuse with 503).
    #[arg(long, env = "INHAUS_AUDIT_FAIL_OPEN")]
    audit_fail_open: bool,
    /// Keep each request's body and output in its audit record, encrypted per subject (the
    /// `X-Inhaus-Subject` header, else the key's name); `inhaus audit forget DIR SUBJECT` erases them.
    #[arg(long, env = "INHAUS_AUDIT_CONTENT")]
    audit_content: bool,
    /// Named API keys with rights and limits (`inhaus keys create --store FILE ...`); read again
    /// when the file changes. Works beside `--api-key`.
    #[arg(long, env = "INHAUS_KEY_STORE")]
    key_store: Option<std::path::PathBuf>,
}

/// The serve settings a TOML file may hold (`inhaus serve --config inhaus.toml`).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    host: Option<String>,
    port: Option<u16>,
    models: Option<Vec<String>>,
    kv_cache_memory: Option<String>,
    dtype: Option<String>,
    device: Option<String>,
    backend: Option<String>,
    max_num_seqs: Option<usize>,
    max_num_batched_tokens: Option<usize>,
    max_waiting: Option<usize>,
    speculative: Option<String>,
    num_speculative_tokens: Option<usize>,
    ngram_prompt_lookup_min: Option<usize>,
    ngram_prompt_lookup_max: Option<usize>,
    speculative_max_seqs: Option<usize>,
    api_keys: Option<Vec<String>>,
    api_key_file: Option<std::path::PathBuf>,
    request_timeout_secs: Option<u64>,
    max_body: Option<String>,
    shutdown_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    http_workers: Option<usize>,
    responses_store: Option<String>,
    responses_store_memory: Option<String>,
    responses_store_max_age_secs: Option<u64>,
    signing_key: Option<std::path::PathBuf>,
    metrics_compat: Option<String>,
    served_model_name: Option<Vec<String>>,
    tls_cert: Option<std::path::PathBuf>,
    tls_key: Option<std::path::PathBuf>,
    cors_origins: Option<Vec<String>>,
    audit_log: Option<std::path::PathBuf>,
    audit_max_file: Option<String>,
    audit_fail_open: Option<bool>,
    audit_content: Option<bool>,
    key_store: Option<std::path::PathBuf>,
}

/// Fills the settings that neither a flag nor an environment variable gave from the config file.
fn apply_config_file(args: &mut ServeArgs, m: &ArgMatches) -> Result<()> {
    let Some(path) = &args.config else {
        return Ok(());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the config file {}: {e}", path.display()))?;
    let f: ServeFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    let unset = |id: &str| {
        !matches!(
            m.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let size = |v: &str| parse_size(v).map_err(|e| anyhow::anyhow!("config file: {e}"));
    if let (Some(v), true) = (f.host, unset("host")) {
        args.host = v;
    }
    if let (Some(v), true) = (f.port, unset("port")) {
        args.port = v;
    }
    if let (Some(v), true) = (f.models, unset("models")) {
        args.models = v;
    }
    if let (Some(v), true) = (f.kv_cache_memory, unset("kv_cache_memory")) {
        args.kv_cache_memory = Some(size(&v)?);
    }
    if let (Some(v), true) = (f.dtype, unset("dtype")) {
        args.dtype = v.parse().map_err(|e| anyhow::anyhow!("config file: {e}"))?;
    }
    if let (Some(v), true) = (f.device, unset("device")) {
        args.device = v.parse().map_err(|e| anyhow::anyhow!("config file: {e}"))?;
    }
    if let (Some(v), true) = (f.backend, unset("backend")) {
        args.backend = v.parse().map_err(|e| anyhow::anyhow!("config file: {e}"))?;
    }
    if let (Some(v), true) = (f.max_num_seqs, unset("max_num_seqs")) {
        args.max_num_seqs = v;
    }
    if let (Some(v), true) = (f.max_num_batched_tokens, unset("max_num_batched_tokens")) {
        args.max_num_batched_tokens = v;
    }
    if let (Some(v), true) = (f.max_waiting, unset("max_waiting")) {
        args.max_waiting = v;
    }
    if let (Some(v), true) = (f.speculative, unset("speculative")) {
        if v != "off" && v != "ngram" {
            bail!("config file: speculative must be \"off\" or \"ngram\"; got {v:?}");
        }
        args.speculative = v;
    }
    if let (Some(v), true) = (f.num_speculative_tokens, unset("num_speculative_tokens")) {
        args.num_speculative_tokens = v;
    }
    if let (Some(v), true) = (f.ngram_prompt_lookup_min, unset("ngram_prompt_lookup_min")) {
        args.ngram_prompt_lookup_min = v;
    }
    if let (Some(v), true) = (f.ngram_prompt_lookup_max, unset("ngram_prompt_lookup_max")) {
        args.ngram_prompt_lookup_max = v;
    }
    if let (Some(v), true) = (f.speculative_max_seqs, unset("speculative_max_seqs")) {
        args.speculative_max_seqs = v;
    }
    if let (Some(v), true) = (f.api_keys, unset("api_keys")) {
        args.api_keys = v;
    }
    if let (Some(v), true) = (f.api_key_file, unset("api_key_file")) {
        args.api_key_file = Some(v);
    }
    if let (Some(v), true) = (f.request_timeout_secs, unset("request_timeout_secs")) {
        args.request_timeout_secs = v;
    }
    if let (Some(v), true) = (f.max_body, unset("max_body")) {
        args.max_body = size(&v)?;
    }
    if let (Some(v), true) = (f.shutdown_timeout_secs, unset("shutdown_timeout_secs")) {
        args.shutdown_timeout_secs = v;
    }
    if let (Some(v), true) = (f.max_connections, unset("max_connections")) {
        args.max_connections = v;
    }
    if let (Some(v), true) = (
        f.header_read_timeout_secs,
        unset("header_read_timeout_secs"),
    ) {
        args.header_read_timeout_secs = v;
    }
    if let (Some(v), true) = (f.http_workers, unset("http_workers")) {
        args.http_workers = v;
    }
    if let (Some(v), true) = (f.responses_store, unset("responses_store")) {
        if v != "on" && v != "off" {
            bail!("config file: responses_store must be \"on\" or \"off\"; got {v:?}");
        }
        args.responses_store = v;
    }
    if let (Some(v), true) = (f.responses_store_memory, unset("responses_store_memory")) {
        args.responses_store_memory = size(&v)?;
    }
    if let (Some(v), true) = (
        f.responses_store_max_age_secs,
        unset("responses_store_max_age_secs"),
    ) {
        args.responses_store_max_age_secs = v;
    }
    if let (Some(v), true) = (f.signing_key, unset("signing_key")) {
        args.signing_key = Some(v);
    }
    if let (Some(v), true) = (f.metrics_compat, unset("metrics_compat")) {
        if v != "vllm" && v != "none" {
            bail!("config file: metrics_compat must be \"vllm\" or \"none\"; got {v:?}");
        }
        args.metrics_compat = v;
    }
    if let (Some(v), true) = (f.served_model_name, unset("served_model_name")) {
        args.served_model_name = v;
    }
    if let (Some(v), true) = (f.tls_cert, unset("tls_cert")) {
        args.tls_cert = Some(v);
    }
    if let (Some(v), true) = (f.tls_key, unset("tls_key")) {
        args.tls_key = Some(v);
    }
    if let (Some(v), true) = (f.cors_origins, unset("cors_origins")) {
        args.cors_origins = v;
    }
    if let (Some(v), true) = (f.audit_log, unset("audit_log")) {
        args.audit_log = Some(v);
    }
    if let (Some(v), true) = (f.audit_max_file, unset("audit_max_file")) {
        args.audit_max_file = size(&v)?;
    }
    if let (Some(v), true) = (f.audit_fail_open, unset("audit_fail_open")) {
        args.audit_fail_open = v;
    }
    if let (Some(v), true) = (f.audit_content, unset("audit_content")) {
        args.audit_content = v;
    }
    if let (Some(v), true) = (f.key_store, unset("key_store")) {
        args.key_store = Some(v);
    }
    Ok(())
}

/// The speculation settings from the flags (`None` when off); refuses sizes that make no sense.
fn speculative_config(args: &ServeArgs) -> Result<Option<inhaus::engine::speculate::SpecConfig>> {
    use inhaus::engine::speculate::{SpecConfig, SpecMethod};
    if args.speculative == "off" {
        return Ok(None);
    }
    let (min_n, max_n) = (args.ngram_prompt_lookup_min, args.ngram_prompt_lookup_max);
    if min_n == 0 || min_n > max_n {
        bail!("--ngram-prompt-lookup-min ({min_n}) must be at least 1 and at most --ngram-prompt-lookup-max ({max_n})");
    }
    if !(1..=32).contains(&args.num_speculative_tokens) {
        bail!(
            "--num-speculative-tokens must be between 1 and 32; got {}",
            args.num_speculative_tokens
        );
    }
    Ok(Some(SpecConfig {
        method: SpecMethod::Ngram { min_n, max_n },
        max_tokens: args.num_speculative_tokens,
        max_seqs: args.speculative_max_seqs,
    }))
}

/// Applies `--served-model-name`: the i-th name is what clients call the i-th model (`NAME=MODEL`).
fn served_names(models: Vec<String>, names: &[String]) -> Result<Vec<String>> {
    if names.len() > models.len() {
        bail!(
            "--served-model-name gives {} names for {} models",
            names.len(),
            models.len()
        );
    }
    Ok(models
        .into_iter()
        .enumerate()
        .map(|(i, m)| match names.get(i) {
            // NAME=PATH already names it: the served name replaces that name.
            Some(n) => format!("{n}={}", m.split_once('=').map_or(m.as_str(), |(_, p)| p)),
            None => m,
        })
        .collect())
}

/// The server's configuration from its flags (after the config file was applied); also the number
/// of HTTP worker threads.
fn serve_config(args: &ServeArgs) -> Result<(inhaus::api::ServeConfig, usize)> {
    check_serve_args(args)?;
    let http_workers = match args.http_workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2),
        n => n,
    };
    let models = if args.models.is_empty() {
        inhaus::catalog::default_serve_aliases()
    } else {
        args.models.clone()
    };
    let models = served_names(models, &args.served_model_name)?;
    let cfg = inhaus::api::ServeConfig {
        host: args.host.clone(),
        port: args.port,
        models,
        engine: inhaus::engine::scheduler::EngineConfig {
            max_num_seqs: args.max_num_seqs.max(1),
            max_num_batched_tokens: args.max_num_batched_tokens.max(1),
            block_size: 16,
            num_blocks: 0,
            max_waiting: args.max_waiting,
            speculative: speculative_config(args)?,
        },
        kv_cache_bytes: args.kv_cache_memory,
        load: inhaus::loader::LoadOptions {
            dtype: args.dtype,
            device: args.device,
            backend: args.backend,
        },
        api_keys: api_keys(args)?,
        request_timeout: (args.request_timeout_secs > 0)
            .then(|| std::time::Duration::from_secs(args.request_timeout_secs)),
        max_body_bytes: args.max_body,
        shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout_secs),
        conn_limits: inhaus::api::listen::ConnLimits {
            header_read_timeout: std::time::Duration::from_secs(args.header_read_timeout_secs),
            max_connections: args.max_connections,
        },
        prepare_workers: http_workers,
        responses_store: (args.responses_store == "on").then(|| {
            inhaus::api::responses::store::StoreLimits {
                max_bytes: args.responses_store_memory,
                max_age: std::time::Duration::from_secs(args.responses_store_max_age_secs),
            }
        }),
        signing_key: args.signing_key.clone(),
        vllm_metrics: args.metrics_compat == "vllm",
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(inhaus::api::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        },
        cors_origins: args.cors_origins.clone(),
        audit: args
            .audit_log
            .clone()
            .map(|dir| inhaus::audit::writer::AuditOptions {
                dir,
                max_file_bytes: args.audit_max_file as u64,
                fail_open: args.audit_fail_open,
                content: args.audit_content,
            }),
        key_store: args.key_store.clone(),
    };
    Ok((cfg, http_workers))
}

/// Refuses settings that would make a server that cannot serve.
fn check_serve_args(args: &ServeArgs) -> Result<()> {
    if args.max_waiting == 0 {
        bail!("--max-waiting must be at least 1: every request waits in the queue until the engine's next step takes it, so 0 would refuse them all");
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    if args.header_read_timeout_secs == 0 {
        bail!("--header-read-timeout-secs must be at least 1");
    }
    Ok(())
}

/// Parses sizes like `2GiB`, `512MiB`, `64KiB`, `1G`, `100M` or plain bytes.
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 2GiB or 512MiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("unknown size unit in `{s}` (use KiB, MiB, GiB)")),
    };
    let bytes = value * mult;
    if !(1.0..=(1u64 << 50) as f64).contains(&bytes) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(bytes as usize)
}

fn api_keys(args: &ServeArgs) -> Result<Vec<String>> {
    let mut keys: Vec<String> = args
        .api_keys
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the API key file {}: {e}", path.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    Ok(keys)
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

/// `inhaus bench model`: prefill and decode speed of one sequence, one JSON line.
fn bench_model(args: BenchModelArgs, threads: usize) -> Result<()> {
    let BenchModelArgs {
        model,
        load,
        prompt_tokens,
        gen_tokens,
        repeats,
    } = args;
    let m = loader::load_with(&model_name(model), &load.options())?;
    // The weights' sha256 is hashed on a background thread after loading; let it finish
    // first, so that it does not take a core from the timed runs.
    let t = std::time::Instant::now();
    while m.weights_sha256.get().is_none() && t.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let report = inhaus::bench::speed(&m.model, prompt_tokens, gen_tokens, repeats.max(1))?;
    println!(
        "{}",
        serde_json::json!({
            "model": m.name,
            "format": m.source.format,
            "dtype": m.source.dtype,
            "device": m.source.device,
            "backend": m.model.backend(),
            "threads": threads,
            "simd": inhaus_kernels::cpu::simd_level().name(),
            "prompt_tokens": prompt_tokens,
            "gen_tokens": gen_tokens,
            "repeats": repeats,
            "prefill_tok_s": report.prefill_tok_s,
            "decode_tok_s": report.decode_tok_s,
        })
    );
    Ok(())
}

fn main() -> Result<()> {
    use std::io::IsTerminal;
    inhaus::engine::heap::limit_arenas();
    // By default: warnings, fetch progress, and one line per HTTP request.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INHAUS_LOG")
                .unwrap_or_else(|_| "warn,inhaus::fetch=info,inhaus::http=info".into()),
        )
        .init();
    // A panic (an engine thread's, say) goes to the log with its thread, like any other error.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), "panic: {info}");
    }));
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let threads = init_threads(cli.threads)?;
    match cli.command {
        Command::Fetch { aliases } => {
            let entries: Vec<&inhaus::catalog::CatalogEntry> = match aliases.as_slice() {
                [] => inhaus::catalog::entries()
                    .iter()
                    .filter(|e| e.default)
                    .collect(),
                [all] if all == "all" => inhaus::catalog::entries().iter().collect(),
                names => {
                    let mut v = Vec::new();
                    for n in names {
                        match inhaus::catalog::find(n) {
                            Some(e) => v.push(e),
                            None => bail!(
                                "unknown model alias `{n}`; known: {}",
                                inhaus::catalog::entries()
                                    .iter()
                                    .map(|e| e.alias.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        }
                    }
                    v
                }
            };
            for path in inhaus::fetch::ensure_all(&entries)? {
                println!("{}", path.display());
            }
        }
        Command::Serve(mut args) => {
            if let Some(m) = matches.subcommand_matches("serve") {
                apply_config_file(&mut args, m)?;
            }
            let (cfg, http_workers) = serve_config(&args)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(http_workers)
                .enable_all()
                .build()?;
            let result = rt.block_on(inhaus::api::serve(cfg));
            // Blocking readers still waiting on an engine must not hold the exit.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            result?;
        }
        Command::Generate {
            model,
            load,
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
            let m = loader::load_with(&model_name(model), &load.options())?;
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
                speculative: None,
            };
            let mut decoder = IncrementalDecoder::new(true);
            let stdout = std::io::stdout();
            let mut err = None;
            let (_, stats) = generate(&m.model, &ids, &opts, |id| {
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
        Command::Card {
            serve: mut args,
            format,
        } => {
            if let Some(m) = matches.subcommand_matches("card") {
                apply_config_file(&mut args, m)?;
            }
            let (cfg, _) = serve_config(&args)?;
            println!("{}", inhaus::api::system_card(&cfg, format == "markdown")?);
        }
        Command::Audit {
            command: AuditCommand::Verify { dir },
        } => {
            let v = inhaus::audit::verify(&dir)?;
            for f in &v.torn_tails {
                println!("torn tail: the last record of {f} was cut short (a crash while writing it); not tampering");
            }
            println!(
                "ok: {} records in {} files, chain intact (last hash {})",
                v.records, v.files, v.last_hash
            );
        }
        Command::Audit {
            command: AuditCommand::Read { dir },
        } => {
            let keys = inhaus::audit::content::SubjectKeys::new(&dir);
            for f in inhaus::audit::files(&dir)? {
                for line in std::fs::read_to_string(&f)?.lines() {
                    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(line) else {
                        continue;
                    };
                    if let Some(sealed) = v.get("content").cloned() {
                        v["content"] = keys
                            .open(&sealed)
                            .unwrap_or_else(|| serde_json::json!("erased"));
                    }
                    println!("{v}");
                }
            }
        }
        Command::Audit {
            command: AuditCommand::Forget { dir, subject },
        } => {
            let keys = inhaus::audit::content::SubjectKeys::new(&dir);
            if keys.forget(&subject)? {
                println!("erased: the content of subject {subject:?} can no longer be read");
            } else {
                bail!(
                    "no content is kept for subject {subject:?} in {}",
                    dir.display()
                );
            }
        }
        Command::Keys {
            command:
                KeysCommand::Create {
                    store,
                    name,
                    limits,
                },
        } => {
            let mut ks = inhaus::keys::KeyStore::load(&store)?;
            let secret = ks.create(&name, limits.into())?;
            ks.save(&store)?;
            println!("{secret}");
            eprintln!(
                "inhaus: key `{name}` added to {}; it is shown only now",
                store.display()
            );
        }
        Command::Keys {
            command: KeysCommand::List { store },
        } => {
            let ks = inhaus::keys::KeyStore::load(&store)?;
            for k in &ks.keys {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": k.name, "revoked": k.revoked, "created": k.created,
                        "models": k.limits.models, "rpm": k.limits.rpm,
                        "tpm": k.limits.tpm, "tokens_per_day": k.limits.tokens_per_day,
                        "max_concurrent": k.limits.max_concurrent,
                    })
                );
            }
        }
        Command::Keys {
            command: KeysCommand::Revoke { store, name },
        } => {
            let mut ks = inhaus::keys::KeyStore::load(&store)?;
            ks.entry_mut(&name)?.revoked = true;
            ks.save(&store)?;
            eprintln!("inhaus: key `{name}` revoked");
        }
        Command::Keys {
            command: KeysCommand::Rotate { store, name },
        } => {
            let mut ks = inhaus::keys::KeyStore::load(&store)?;
            let secret = ks.rotate(&name)?;
            ks.save(&store)?;
            println!("{secret}");
            eprintln!("inhaus: key `{name}` has a new secret, shown only now; the old one no longer works");
        }
        Command::Keys {
            command:
                KeysCommand::Update {
                    store,
                    name,
                    limits,
                },
        } => {
            let mut ks = inhaus::keys::KeyStore::load(&store)?;
            ks.entry_mut(&name)?.limits.merge(limits.into());
            ks.save(&store)?;
            eprintln!("inhaus: key `{name}` updated");
        }
        Command::Keys {
            command:
                KeysCommand::SigningKey {
                    command: SigningKeyCommand::New { out },
                },
        } => {
            let signer = inhaus::provenance::ProvenanceSigner::generate();
            write_private(&out, &format!("{}\n", signer.seed_base64()))?;
            let public = signer.public_base64();
            let mut pub_path = out.clone().into_os_string();
            pub_path.push(".pub");
            std::fs::write(&pub_path, format!("{public}\n"))
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", pub_path.to_string_lossy()))?;
            println!("{public}");
            eprintln!(
                "inhaus: signing key written to {} (keep it secret), public key to {} (key id {})",
                out.display(),
                pub_path.to_string_lossy(),
                signer.key_id
            );
        }
        Command::Provenance {
            command:
                ProvenanceCommand::Verify {
                    response,
                    public_key,
                },
        } => {
            let key_text = match std::fs::read_to_string(&public_key) {
                Ok(t) => t,
                Err(_) => public_key.clone(),
            };
            let key = inhaus::provenance::public_key(&key_text)?;
            let text = std::fs::read_to_string(&response)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", response.display()))?;
            let body: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", response.display()))?;
            inhaus::provenance::verify(&body, &key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", response.display()))?;
            println!(
                "ok: {} was generated by {} and is signed by key {}",
                response.display(),
                body.pointer("/provenance/model")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?"),
                body.pointer("/provenance/signature/key_id")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
            );
        }
        Command::Tokenize { model, load, text } => {
            let m = loader::load_with(&model_name(model), &load.options())?;
            let ids = m.tokenizer.encode(&text, false)?;
            println!("{}", serde_json::json!({ "ids": ids }));
        }
        Command::Bench { command, model } => match command {
            None => bench_model(model, threads)?,
            Some(BenchCommand::Model(args)) => bench_model(args, threads)?,
            Some(BenchCommand::Serve(args)) => {
                let argv: Vec<String> = std::env::args().collect();
                inhaus::bench::serve::cli::serve_main(&args, argv.join(" "))?;
            }
            Some(BenchCommand::Plot(args)) => inhaus::bench::serve::cli::plot_main(&args)?,
        },
    }
    Ok(())
}
