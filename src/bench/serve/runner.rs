//! Drives one sweep point: a closed loop (N workers, each sending its next request as soon as the
//! last one ended) or an open loop (requests started at Poisson arrival times, whatever is still in
//! flight). Outcomes go to a shared list as they come, so an interrupted point keeps what it has.
use super::client::{Client, Outcome};
use super::report::Load;
use super::workload::{Chain, Workload};
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How many requests a point sends, or for how long it sends them (whichever ends first).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub requests: Option<usize>,
    pub duration: Option<Duration>,
}

impl Budget {
    fn allows(&self, i: usize, start: Instant) -> bool {
        self.requests.is_none_or(|n| i < n) && self.duration.is_none_or(|d| start.elapsed() < d)
    }
}

pub type Sink = Arc<Mutex<Vec<Outcome>>>;

/// The chain's turns one after the other (a failed turn ends the conversation).
async fn run_chain(client: &Client, chain: Chain, origin: Instant, sink: &Sink) {
    for turn in &chain {
        let outcome = client.send(turn, origin).await;
        let failed = outcome.result.is_err();
        if let Ok(mut list) = sink.lock() {
            list.push(outcome);
        }
        if failed {
            break;
        }
    }
}

/// Runs one point; `point` selects its prompts. Dropping the future aborts the requests in flight.
#[allow(clippy::too_many_arguments)]
pub async fn run_point(
    client: Client,
    workload: Arc<Workload>,
    point: usize,
    load: Load,
    budget: Budget,
    seed: u64,
    origin: Instant,
    sink: Sink,
    progress: ProgressBar,
) {
    let mut tasks = JoinSet::new();
    match load {
        Load::Concurrency(c) => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..c.max(1) {
                let (client, workload, next, sink, progress) = (
                    client.clone(),
                    workload.clone(),
                    next.clone(),
                    sink.clone(),
                    progress.clone(),
                );
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if !budget.allows(i, origin) {
                            break;
                        }
                        run_chain(&client, workload.chain(point, i), origin, &sink).await;
                        progress.inc(1);
                    }
                });
            }
        }
        Load::Rate(rate) => {
            let mut rng = StdRng::seed_from_u64(seed ^ (point as u64).wrapping_mul(0x2545_F491));
            let mut at = 0.0f64;
            let mut i = 0usize;
            while budget.allows(i, origin) {
                if rate.is_finite() {
                    // Exponential inter-arrival times: a Poisson process of `rate` per second.
                    let u: f64 = rng.random_range(f64::EPSILON..1.0);
                    at += -u.ln() / rate;
                    tokio::time::sleep_until((origin + Duration::from_secs_f64(at)).into()).await;
                    if !budget.allows(i, origin) {
                        break;
                    }
                }
                let (client, chain, sink, progress) = (
                    client.clone(),
                    workload.chain(point, i),
                    sink.clone(),
                    progress.clone(),
                );
                tasks.spawn(async move {
                    run_chain(&client, chain, origin, &sink).await;
                    progress.inc(1);
                });
                i += 1;
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}
