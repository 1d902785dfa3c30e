//! A run's results: the JSON file (`--json`, read back by `inhaus bench plot`) and the table printed
//! on the terminal.
use super::stats::{PointStats, Slo, Summary};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a bench serve result: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("load {0:?}: expected c=N (concurrent streams) or rate=R|rate=inf (requests/s)")]
    BadLoad(String),
}

/// One sweep point's load: N requests in flight at all times (closed loop), or requests arriving
/// as a Poisson process of R per second (open loop; infinite = all at once).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Load {
    Concurrency(usize),
    Rate(f64),
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Concurrency(c) => write!(f, "c={c}"),
            Load::Rate(r) if r.is_infinite() => write!(f, "rate=inf"),
            Load::Rate(r) => write!(f, "rate={r}"),
        }
    }
}

impl From<Load> for String {
    fn from(l: Load) -> String {
        l.to_string()
    }
}

impl TryFrom<String> for Load {
    type Error = ReportError;
    fn try_from(s: String) -> Result<Load, ReportError> {
        let bad = || ReportError::BadLoad(s.clone());
        if let Some(c) = s.strip_prefix("c=") {
            return c
                .parse()
                .ok()
                .filter(|&c| c > 0)
                .map(Load::Concurrency)
                .ok_or_else(bad);
        }
        let r = s.strip_prefix("rate=").ok_or_else(bad)?;
        parse_rate(r).map(Load::Rate).ok_or_else(bad)
    }
}

/// A request rate: a positive number or `inf`.
pub fn parse_rate(r: &str) -> Option<f64> {
    match r.trim() {
        "inf" | "infinity" => Some(f64::INFINITY),
        r => r.parse::<f64>().ok().filter(|x| *x > 0.0),
    }
}

/// One point of the sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    pub load: Load,
    #[serde(flatten)]
    pub stats: PointStats,
}

/// A whole run, as written by `--json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The server's name in charts and tables.
    pub label: String,
    pub url: String,
    pub model: String,
    pub endpoint: String,
    pub workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
    /// Unix time (seconds) of the start of the run.
    pub started_unix: u64,
    /// The command line that produced it.
    pub command: String,
    /// Ctrl-C stopped the run: the last point holds what was measured until then.
    pub interrupted: bool,
    pub points: Vec<PointResult>,
}

impl Report {
    pub fn write_json(&self, path: &Path) -> Result<(), ReportError> {
        let text = serde_json::to_string_pretty(self).map_err(|source| ReportError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text + "\n").map_err(|source| ReportError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn read_json(path: &Path) -> Result<Report, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ReportError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The table printed on the terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} — {} at {} ({})\n{}{}\n",
            self.label,
            self.model,
            self.url,
            self.workload,
            if self.interrupted {
                "interrupted (Ctrl-C): the last point is partial\n"
            } else {
                ""
            },
            self.slo
                .as_ref()
                .map(|s| format!("SLO {}", s.describe()))
                .unwrap_or_default()
        );
        let head = format!(
            "{:<10} {:>8} {:>6} {:>7} {:>9} {:>9} {:>15} {:>13} {:>13} {:>15}{}",
            "load",
            "ok/sent",
            "errors",
            "req/s",
            "out tok/s",
            "tot tok/s",
            "TTFT p50/p99ms",
            "TPOT p50/p99",
            "ITL p50/p99",
            "E2E p50/p99ms",
            if self.slo.is_some() { "  goodput" } else { "" }
        );
        out.push_str(&head);
        out.push('\n');
        let pair = |s: &Summary| format!("{:.0}/{:.0}", s.p50, s.p99);
        let pair1 = |s: &Summary| format!("{:.1}/{:.1}", s.p50, s.p99);
        for p in &self.points {
            let s = &p.stats;
            out.push_str(&format!(
                "{:<10} {:>8} {:>6} {:>7.2} {:>9.1} {:>9.1} {:>15} {:>13} {:>13} {:>15}{}\n",
                p.load.to_string(),
                format!("{}/{}", s.completed, s.requests),
                s.failed,
                s.request_throughput,
                s.output_throughput,
                s.total_throughput,
                pair(&s.ttft_ms),
                pair1(&s.tpot_ms),
                pair1(&s.itl_ms),
                pair(&s.e2e_ms),
                s.goodput.map(|g| format!(" {g:>8.2}")).unwrap_or_default()
            ));
        }
        for p in &self.points {
            for (kind, n) in &p.stats.errors {
                let example = p
                    .stats
                    .error_examples
                    .get(kind)
                    .map(String::as_str)
                    .unwrap_or("");
                out.push_str(&format!("  {}: {n} x {kind}: {example}\n", p.load));
            }
            if p.stats.usage_missing > 0 {
                out.push_str(&format!(
                    "  {}: {} responses without usage (tokens counted as content deltas)\n",
                    p.load, p.stats.usage_missing
                ));
            }
        }
        out
    }
}
