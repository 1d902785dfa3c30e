//! The flags of `inhaus bench serve` and `inhaus bench plot`, and the two commands' top level: run
//! the sweep, print the table, write the JSON and chart.
use super::chart::{self, ChartError};
use super::report::{Report, ReportError};
use super::{
    default_label, parse_concurrencies, parse_duration, parse_rates, run, Endpoint, LenRange,
    ServeConfig, ServeError, Slo, WorkloadKind, WorkloadSpec,
};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Chart(#[from] ChartError),
    #[error("async runtime: {0}")]
    Runtime(std::io::Error),
}

/// `inhaus bench serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// The server's base URL (`http://host:port`, `.../v1` or a full endpoint URL).
    #[arg(long)]
    pub url: String,
    /// The model name sent in each request.
    #[arg(long)]
    pub model: String,
    /// Bearer token for the server.
    #[arg(long, env = "INHAUS_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The server's name in tables and charts (default: model@host:port).
    #[arg(long)]
    pub label: Option<String>,
    /// Closed loop: this many requests in flight at all times, one sweep point per value.
    #[arg(long, default_value = "1,4,16,64", conflicts_with = "request_rate")]
    pub concurrency: String,
    /// Open loop: Poisson arrivals at these rates (requests/s; `inf` = all at once).
    #[arg(long)]
    pub request_rate: Option<String>,
    /// Requests per point (default: max(16, 4 x concurrency), 64 per rate, or the dataset's or
    /// shared-prefix workload's size).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Send requests for this long per point (e.g. 30s, 2m); with --requests, whichever ends first.
    #[arg(long)]
    pub duration: Option<String>,
    /// Requests sent before the sweep, not counted.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// A request that has not ended after this long counts as a timeout.
    #[arg(long, default_value = "10m")]
    pub timeout: String,
    /// Seed of prompts, lengths and arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// chat (/v1/chat/completions) or completions (/v1/completions).
    #[arg(long, value_enum, default_value = "chat")]
    pub endpoint: Endpoint,
    /// Sampling temperature sent with every request, or `default` to send none (the server's
    /// default sampling, as the OpenAI SDKs leave it). 0 (greedy) is vLLM's bench default.
    #[arg(long, default_value = "0")]
    pub temperature: String,
    /// What to send (a --dataset replaces the synthetic prompts).
    #[arg(long, value_enum, default_value = "synthetic")]
    pub workload: WorkloadKind,
    /// Prompt tokens (about; N or MIN:MAX). In the shared-prefix workload: the question's.
    #[arg(long, default_value = "128")]
    pub input_len: String,
    /// Output tokens (N or MIN:MAX), generated with ignore_eos and checked against usage.
    #[arg(long, default_value = "128")]
    pub output_len: String,
    /// JSONL of {"prompt": ...}, {"messages": [...]} (several user turns: a conversation, each
    /// turn sent with the history so far) or ShareGPT {"conversations": [...]}; optional
    /// "max_tokens".
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Shared-prefix workload: number of system prompts.
    #[arg(long, default_value_t = 4)]
    pub prefix_systems: usize,
    /// Shared-prefix workload: questions per system prompt.
    #[arg(long, default_value_t = 8)]
    pub prefix_questions: usize,
    /// Shared-prefix workload: system prompt tokens (about).
    #[arg(long, default_value_t = 512)]
    pub prefix_len: usize,
    /// Goodput counts requests meeting all of these, e.g. ttft=2s,tpot=100ms (also itl, e2e).
    #[arg(long)]
    pub slo: Option<String>,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput against p50/p99 latency (.svg or .png).
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `inhaus bench plot`.
#[derive(clap::Args, Clone, Debug)]
pub struct PlotArgs {
    /// `inhaus bench serve --json` files; each becomes one series (its label in the legend).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The chart file (.svg or .png).
    #[arg(long)]
    pub chart: PathBuf,
}

impl ServeArgs {
    /// The run's configuration; `command` is kept in the report.
    pub fn config(&self, command: String) -> Result<ServeConfig, ServeError> {
        let loads = match &self.request_rate {
            Some(r) => parse_rates(r)?,
            None => parse_concurrencies(&self.concurrency)?,
        };
        let len = |s: &str| s.parse::<LenRange>();
        Ok(ServeConfig {
            url: self.url.clone(),
            model: self.model.clone(),
            api_key: self.api_key.clone(),
            label: self
                .label
                .clone()
                .unwrap_or_else(|| default_label(&self.url, &self.model)),
            loads,
            requests: self.requests,
            duration: self.duration.as_deref().map(parse_duration).transpose()?,
            warmup: self.warmup,
            timeout: parse_duration(&self.timeout)?,
            seed: self.seed,
            workload: WorkloadSpec {
                kind: self.workload,
                dataset: self.dataset.clone(),
                input_len: len(&self.input_len)?,
                output_len: len(&self.output_len)?,
                prefix_systems: self.prefix_systems.max(1),
                prefix_questions: self.prefix_questions.max(1),
                prefix_len: self.prefix_len,
                endpoint: self.endpoint,
                temperature: match self.temperature.as_str() {
                    "default" => None,
                    t => Some(
                        t.parse::<f64>()
                            .ok()
                            .filter(|t| (0.0..=2.0).contains(t))
                            .ok_or_else(|| {
                                ServeError::Config(format!(
                            "--temperature {t}: expected a number from 0 to 2, or `default`"
                        ))
                            })?,
                    ),
                },
            },
            slo: self
                .slo
                .as_deref()
                .map(str::parse::<Slo>)
                .transpose()
                .map_err(|e| ServeError::Config(e.to_string()))?,
            progress: !self.quiet,
            handle_ctrl_c: true,
            command,
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// Runs `inhaus bench serve`: the sweep, then the table on stdout and the files asked for (also
/// after Ctrl-C, with what was measured).
pub fn serve_main(args: &ServeArgs, command: String) -> Result<Report, CliError> {
    let cfg = args.config(command)?;
    let report = runtime()?.block_on(run(&cfg))?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if let Some(path) = &args.chart {
        chart::draw(std::slice::from_ref(&report), path)?;
    }
    Ok(report)
}

/// Runs `inhaus bench plot`.
pub fn plot_main(args: &PlotArgs) -> Result<(), CliError> {
    let reports = args
        .files
        .iter()
        .map(|f| Report::read_json(f))
        .collect::<Result<Vec<_>, _>>()?;
    chart::draw(&reports, &args.chart)?;
    Ok(())
}
