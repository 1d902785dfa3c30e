//! The figures of one sweep point from its requests' outcomes, with vLLM's definitions: TTFT, TPOT
//! = (e2e - TTFT) / (output tokens - 1) per request, ITL over all gaps of all requests, e2e latency;
//! throughput over the point's duration; goodput = requests meeting every SLO per second.
use super::client::Outcome;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
#[error("SLO {0:?}: expected ttft=2s,tpot=100ms,itl=..,e2e=.. (a bare number is milliseconds)")]
pub struct SloError(String);

/// Service-level objectives, in milliseconds; a request meets them if it is within every one given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpot_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub itl_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_ms: Option<f64>,
}

/// A time in seconds from `500ms`, `2s`, `2m`, `1h`, or a bare number in units of `bare` seconds.
pub fn parse_seconds(v: &str, bare: f64) -> Option<f64> {
    let v = v.trim();
    let units = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];
    let (num, scale) = units
        .iter()
        .find_map(|&(u, scale)| v.strip_suffix(u).map(|n| (n, scale)))
        .unwrap_or((v, bare));
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x > 0.0)
        .map(|x| x * scale)
}

impl std::str::FromStr for Slo {
    type Err = SloError;
    fn from_str(s: &str) -> Result<Slo, SloError> {
        let bad = || SloError(s.to_string());
        let mut slo = Slo::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            let ms = parse_seconds(v, 0.001).ok_or_else(bad)? * 1000.0;
            match k.trim() {
                "ttft" => slo.ttft_ms = Some(ms),
                "tpot" => slo.tpot_ms = Some(ms),
                "itl" => slo.itl_ms = Some(ms),
                "e2e" | "e2el" => slo.e2e_ms = Some(ms),
                _ => return Err(bad()),
            }
        }
        if slo == Slo::default() {
            return Err(bad());
        }
        Ok(slo)
    }
}

impl Slo {
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("ttft", self.ttft_ms),
            ("tpot", self.tpot_ms),
            ("itl", self.itl_ms),
            ("e2e", self.e2e_ms),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}ms")))
        .collect();
        parts.join(",")
    }
}

/// Mean and percentiles of one figure, in milliseconds (0 when there is nothing to measure).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// Percentile with linear interpolation between closest ranks (numpy's default, which vLLM uses).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Summary of values given in seconds, reported in milliseconds.
pub fn summarize(values: &[f64]) -> Summary {
    if values.is_empty() {
        return Summary::default();
    }
    let mut v: Vec<f64> = values.iter().map(|x| x * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    Summary {
        mean: v.iter().sum::<f64>() / v.len() as f64,
        p50: percentile(&v, 50.0),
        p90: percentile(&v, 90.0),
        p99: percentile(&v, 99.0),
    }
}

/// The figures of one sweep point.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PointStats {
    /// Requests sent (and counted: warm-up excluded).
    pub requests: usize,
    pub completed: usize,
    pub failed: usize,
    /// Failed requests by kind (`http_500`, `connection`, `timeout`, `stream`, `short_output`).
    pub errors: BTreeMap<String, usize>,
    /// The first message seen for each error kind.
    pub error_examples: BTreeMap<String, String>,
    /// From the first request sent to the last one ended, seconds.
    pub duration_s: f64,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_throughput: f64,
    pub input_tokens: usize,
    pub output_tokens: usize,
    pub ttft_ms: Summary,
    pub tpot_ms: Summary,
    pub itl_ms: Summary,
    pub e2e_ms: Summary,
    /// Requests per second that met every SLO (only with `--slo`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goodput: Option<f64>,
    /// Requests sent per second, measured from the send times ((n - 1) / (last - first)).
    pub send_rate: f64,
    /// Completed requests whose server sent no usage (tokens counted as content deltas).
    pub usage_missing: usize,
}

/// TPOT of one request in seconds (None for a single output token).
fn tpot(ttft: f64, e2e: f64, tokens: usize) -> Option<f64> {
    (tokens > 1).then(|| (e2e - ttft) / (tokens - 1) as f64)
}

/// The figures of a point from its outcomes. Its duration runs from the first request sent to the
/// last one ended, or to `until` (seconds from the point's start) if that is later: an interrupted
/// point passes the time of the interruption.
pub fn point_stats(outcomes: &[Outcome], slo: Option<&Slo>, until: f64) -> PointStats {
    let mut s = PointStats {
        requests: outcomes.len(),
        ..PointStats::default()
    };
    let (mut ttft, mut tpots, mut itl, mut e2e) = (vec![], vec![], vec![], vec![]);
    let mut good = 0usize;
    for o in outcomes {
        match &o.result {
            Ok(t) => {
                s.completed += 1;
                s.output_tokens += t.output_tokens;
                s.input_tokens += t.prompt_tokens;
                s.usage_missing += t.usage_missing as usize;
                ttft.push(t.ttft);
                e2e.push(t.e2e);
                itl.extend_from_slice(&t.itl);
                let tp = tpot(t.ttft, t.e2e, t.output_tokens);
                if let Some(tp) = tp {
                    tpots.push(tp);
                }
                if let Some(slo) = slo {
                    let within = |v: Option<f64>, limit: Option<f64>| match (v, limit) {
                        (_, None) => true,
                        (Some(v), Some(l)) => v * 1000.0 <= l,
                        (None, Some(_)) => true,
                    };
                    let worst_itl = t.itl.iter().copied().reduce(f64::max);
                    if within(Some(t.ttft), slo.ttft_ms)
                        && within(tp, slo.tpot_ms)
                        && within(worst_itl, slo.itl_ms)
                        && within(Some(t.e2e), slo.e2e_ms)
                    {
                        good += 1;
                    }
                }
            }
            Err((kind, msg)) => {
                s.failed += 1;
                *s.errors.entry(kind.key()).or_insert(0) += 1;
                s.error_examples
                    .entry(kind.key())
                    .or_insert_with(|| msg.clone());
            }
        }
    }
    let first = outcomes
        .iter()
        .map(|o| o.sent)
        .fold(f64::INFINITY, f64::min);
    let last_end = outcomes.iter().map(|o| o.ended).fold(0.0, f64::max);
    let first = if first.is_finite() { first } else { 0.0 };
    s.duration_s = (last_end.max(until) - first).max(0.0);
    if s.duration_s > 0.0 {
        let d = s.duration_s;
        s.request_throughput = s.completed as f64 / d;
        s.output_throughput = s.output_tokens as f64 / d;
        s.total_throughput = (s.input_tokens + s.output_tokens) as f64 / d;
        s.goodput = slo.map(|_| good as f64 / d);
    }
    let mut sends: Vec<f64> = outcomes.iter().map(|o| o.sent).collect();
    sends.sort_by(f64::total_cmp);
    if sends.len() > 1 {
        let span = sends[sends.len() - 1] - sends[0];
        if span > 0.0 {
            s.send_rate = (sends.len() - 1) as f64 / span;
        }
    }
    s.ttft_ms = summarize(&ttft);
    s.tpot_ms = summarize(&tpots);
    s.itl_ms = summarize(&itl);
    s.e2e_ms = summarize(&e2e);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 90.0) - 3.7).abs() < 1e-9);
    }

    #[test]
    fn slo_parses() {
        let s: Slo = "ttft=2s,tpot=100ms".parse().unwrap_or_default();
        assert_eq!(s.ttft_ms, Some(2000.0));
        assert_eq!(s.tpot_ms, Some(100.0));
        assert!("ttft".parse::<Slo>().is_err());
        assert!("foo=1s".parse::<Slo>().is_err());
    }
}
