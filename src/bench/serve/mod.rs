//! `inhaus bench serve`: a serving benchmark for any OpenAI-compatible server. It sweeps load points
//! (concurrencies or request rates), sends a workload of streaming requests at each, and reports
//! vLLM-style figures (throughput, TTFT, TPOT, ITL, e2e latency, goodput, errors by kind) as a
//! table, JSON and a chart.
pub mod chart;
pub mod cli;
pub mod client;
mod dataset;
pub mod report;
pub mod runner;
pub mod stats;
mod words;
pub mod workload;

pub use report::{Load, PointResult, Report};
pub use stats::Slo;
pub use workload::{Endpoint, LenRange, WorkloadKind, WorkloadSpec};

use client::{Client, ErrorKind};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use runner::{Budget, Sink};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workload::Workload;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Workload(#[from] workload::WorkloadError),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("{0}")]
    Config(String),
    #[error("warm-up failed, is the server at {url} up and serving {model:?}? {kind}: {message}")]
    Warmup {
        url: String,
        model: String,
        kind: String,
        message: String,
    },
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub label: String,
    pub loads: Vec<Load>,
    /// Requests per point (default: max(16, 4 x concurrency) closed-loop, 64 open-loop, or the
    /// workload's natural size), unless `duration` ends the point first.
    pub requests: Option<usize>,
    pub duration: Option<Duration>,
    /// Requests sent before the sweep and not counted.
    pub warmup: usize,
    pub timeout: Duration,
    pub seed: u64,
    pub workload: WorkloadSpec,
    pub slo: Option<Slo>,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Stop at Ctrl-C and report what was measured (the CLI); tests leave it off.
    pub handle_ctrl_c: bool,
    /// The command line, kept in the report.
    pub command: String,
}

/// A label for a server when none is given: `model@host:port`.
pub fn default_label(url: &str, model: &str) -> String {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or(url);
    format!("{model}@{host}")
}

impl ServeConfig {
    fn budget(&self, load: Load, natural: Option<usize>) -> Budget {
        let auto = match (self.duration, natural, load) {
            (Some(_), _, _) => None,
            (None, Some(n), _) => Some(n),
            (None, None, Load::Concurrency(c)) => Some((4 * c).max(16)),
            (None, None, Load::Rate(_)) => Some(64),
        };
        Budget {
            requests: self.requests.or(auto),
            duration: self.duration,
        }
    }

    fn check(&self) -> Result<(), ServeError> {
        if self.loads.is_empty() {
            return Err(ServeError::Config("no load points".into()));
        }
        if self.requests == Some(0) {
            return Err(ServeError::Config("--requests must be at least 1".into()));
        }
        let unbounded_inf = self.requests.is_none()
            && self.duration.is_some()
            && self
                .loads
                .iter()
                .any(|l| matches!(l, Load::Rate(r) if r.is_infinite()));
        if unbounded_inf {
            return Err(ServeError::Config(
                "--request-rate inf sends everything at once: give --requests, not only --duration"
                    .into(),
            ));
        }
        Ok(())
    }
}

fn progress_bar(enabled: bool, len: Option<usize>, prefix: String) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if len.is_some() {
        "{prefix:>10} [{bar:30}] {pos}/{len} requests {elapsed}"
    } else {
        "{prefix:>10} {spinner} {pos} requests {elapsed}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix);
    bar
}

async fn interrupted(enabled: bool) {
    if enabled && tokio::signal::ctrl_c().await.is_ok() {
        return;
    }
    std::future::pending::<()>().await
}

/// Runs the sweep and returns its report; with `handle_ctrl_c`, Ctrl-C ends it early with what was
/// measured so far (`interrupted` set).
pub async fn run(cfg: &ServeConfig) -> Result<Report, ServeError> {
    cfg.check()?;
    let workload = Arc::new(Workload::new(cfg.workload.clone(), cfg.seed)?);
    let client = Client::new(
        &cfg.url,
        &cfg.model,
        cfg.api_key.clone(),
        cfg.workload.endpoint,
        cfg.workload.temperature,
        cfg.timeout,
    )?;
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut report = Report {
        label: cfg.label.clone(),
        url: client.url().to_string(),
        model: cfg.model.clone(),
        endpoint: format!("{:?}", cfg.workload.endpoint).to_lowercase(),
        workload: cfg.workload.describe(),
        slo: cfg.slo.clone(),
        started_unix,
        command: cfg.command.clone(),
        interrupted: false,
        points: Vec::new(),
    };
    if cfg.warmup > 0 {
        let sink: Sink = Arc::new(Mutex::new(Vec::new()));
        let bar = progress_bar(cfg.progress, Some(cfg.warmup), "warm-up".into());
        let budget = Budget {
            requests: Some(cfg.warmup),
            duration: None,
        };
        // Warm-up prompts come from a point index no sweep point uses.
        let warm = runner::run_point(
            client.clone(),
            workload.clone(),
            usize::MAX / 2,
            Load::Concurrency(cfg.warmup),
            budget,
            cfg.seed,
            Instant::now(),
            sink.clone(),
            bar.clone(),
        );
        tokio::select! {
            _ = warm => {}
            _ = interrupted(cfg.handle_ctrl_c) => {
                report.interrupted = true;
                return Ok(report);
            }
        }
        bar.finish_and_clear();
        let outcomes = sink.lock().map(|l| l.clone()).unwrap_or_default();
        if !outcomes.is_empty() && outcomes.iter().all(|o| o.result.is_err()) {
            if let Some(Err((kind, message))) = outcomes.first().map(|o| &o.result) {
                if !matches!(kind, ErrorKind::ShortOutput) {
                    return Err(ServeError::Warmup {
                        url: client.url().to_string(),
                        model: cfg.model.clone(),
                        kind: kind.key(),
                        message: message.clone(),
                    });
                }
            }
        }
    }
    for (point, &load) in cfg.loads.iter().enumerate() {
        let budget = cfg.budget(load, workload.natural_size());
        let sink: Sink = Arc::new(Mutex::new(Vec::new()));
        let bar = progress_bar(cfg.progress, budget.requests, load.to_string());
        let origin = Instant::now();
        let run = runner::run_point(
            client.clone(),
            workload.clone(),
            point,
            load,
            budget,
            cfg.seed,
            origin,
            sink.clone(),
            bar.clone(),
        );
        let stopped = tokio::select! {
            _ = run => false,
            _ = interrupted(cfg.handle_ctrl_c) => true,
        };
        bar.finish_and_clear();
        let until = if stopped {
            origin.elapsed().as_secs_f64()
        } else {
            0.0
        };
        let outcomes = sink.lock().map(|l| l.clone()).unwrap_or_default();
        let stats = stats::point_stats(&outcomes, cfg.slo.as_ref(), until);
        report.points.push(PointResult { load, stats });
        if stopped {
            report.interrupted = true;
            break;
        }
    }
    Ok(report)
}

/// Parses `1,4,16` into concurrency points.
pub fn parse_concurrencies(s: &str) -> Result<Vec<Load>, ServeError> {
    s.split(',')
        .map(|c| {
            c.trim()
                .parse::<usize>()
                .ok()
                .filter(|&c| c > 0)
                .map(Load::Concurrency)
                .ok_or_else(|| {
                    ServeError::Config(format!("--concurrency {s:?}: expected positive integers"))
                })
        })
        .collect()
}

/// Parses `2,4,inf` into request-rate points.
pub fn parse_rates(s: &str) -> Result<Vec<Load>, ServeError> {
    s.split(',')
        .map(|r| {
            report::parse_rate(r).map(Load::Rate).ok_or_else(|| {
                ServeError::Config(format!(
                    "--request-rate {s:?}: expected positive numbers or inf"
                ))
            })
        })
        .collect()
}

/// `30s`, `2m`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ServeError> {
    stats::parse_seconds(s, 1.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| ServeError::Config(format!("duration {s:?}: expected e.g. 30s, 2m, 500ms")))
}
