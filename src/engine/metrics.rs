//! The engine's Prometheus metrics, named like vLLM's under the `inhaus:` prefix and labelled by
//! `model_name`, so several engines share one registry. prometheus-client (the Prometheus project's
//! Rust client) holds them; handles are cheap clones of shared atomics, updated by the engine thread
//! and read by the `/metrics` route.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model_name: String,
}

type Hist = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// A model and a guess's position (0 = the first token guessed after the sequence's last).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpecPositionLabel {
    pub model_name: String,
    pub position: String,
}

/// The labels of `vllm:cache_config_info` (what an inference gateway reads of the KV cache).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheConfigLabels {
    pub model_name: String,
    pub block_size: String,
    pub num_gpu_blocks: String,
    pub cache_dtype: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        20.0, 40.0, 80.0, 160.0,
    ])
}

/// Every engine metric family, registered once per server.
#[derive(Clone)]
pub struct EngineMetricFamilies {
    running: Family<ModelLabel, Gauge>,
    waiting: Family<ModelLabel, Gauge>,
    kv_usage: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    prefix_queries: Family<ModelLabel, Counter>,
    prefix_hits: Family<ModelLabel, Counter>,
    preemptions: Family<ModelLabel, Counter>,
    prompt_tokens: Family<ModelLabel, Counter>,
    generation_tokens: Family<ModelLabel, Counter>,
    ttft: Hist,
    itl: Hist,
    e2e: Hist,
    warmup: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    cache_config: Family<CacheConfigLabels, Gauge>,
    spec_drafts: Family<ModelLabel, Counter>,
    spec_draft_tokens: Family<ModelLabel, Counter>,
    spec_accepted_tokens: Family<ModelLabel, Counter>,
    spec_accepted_per_pos: Family<SpecPositionLabel, Counter>,
}

impl EngineMetricFamilies {
    pub fn register(reg: &mut Registry) -> Self {
        let f = Self {
            running: Family::default(),
            waiting: Family::default(),
            kv_usage: Family::default(),
            prefix_queries: Family::default(),
            prefix_hits: Family::default(),
            preemptions: Family::default(),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            ttft: Family::new_with_constructor(latency_histogram),
            itl: Family::new_with_constructor(latency_histogram),
            e2e: Family::new_with_constructor(latency_histogram),
            warmup: Family::default(),
            cache_config: Family::default(),
            spec_drafts: Family::default(),
            spec_draft_tokens: Family::default(),
            spec_accepted_tokens: Family::default(),
            spec_accepted_per_pos: Family::default(),
        };
        reg.register(
            "inhaus:num_requests_running",
            "Sequences in the running batch",
            f.running.clone(),
        );
        reg.register(
            "inhaus:num_requests_waiting",
            "Sequences waiting to be scheduled",
            f.waiting.clone(),
        );
        reg.register(
            "inhaus:kv_cache_usage_perc",
            "Fraction of KV blocks held by live sequences (1 = full)",
            f.kv_usage.clone(),
        );
        // Counters get the `_total` suffix from the encoder.
        reg.register(
            "inhaus:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            f.prefix_queries.clone(),
        );
        reg.register(
            "inhaus:prefix_cache_hits",
            "Prompt tokens found in the prefix cache",
            f.prefix_hits.clone(),
        );
        reg.register(
            "inhaus:num_preemptions",
            "Sequences preempted for lack of KV blocks",
            f.preemptions.clone(),
        );
        reg.register(
            "inhaus:prompt_tokens",
            "Prompt tokens of admitted requests",
            f.prompt_tokens.clone(),
        );
        reg.register(
            "inhaus:generation_tokens",
            "Generated tokens",
            f.generation_tokens.clone(),
        );
        reg.register(
            "inhaus:time_to_first_token_seconds",
            "Time from arrival to the first generated token",
            f.ttft.clone(),
        );
        reg.register(
            "inhaus:inter_token_latency_seconds",
            "Time between consecutive generated tokens of a sequence",
            f.itl.clone(),
        );
        reg.register(
            "inhaus:e2e_request_latency_seconds",
            "Time from arrival to the end of a sequence",
            f.e2e.clone(),
        );
        reg.register(
            "inhaus:warmup_seconds",
            "Seconds the engine's warm-up forward took before the model was reported ready",
            f.warmup.clone(),
        );
        // Speculative decoding, as vLLM names it: acceptance rate = accepted / draft tokens.
        reg.register(
            "inhaus:spec_decode_num_drafts",
            "Speculation steps: sequence-steps that verified at least one guessed token",
            f.spec_drafts.clone(),
        );
        reg.register(
            "inhaus:spec_decode_num_draft_tokens",
            "Guessed tokens verified by the model",
            f.spec_draft_tokens.clone(),
        );
        reg.register(
            "inhaus:spec_decode_num_accepted_tokens",
            "Guessed tokens the model accepted",
            f.spec_accepted_tokens.clone(),
        );
        reg.register(
            "inhaus:spec_decode_num_accepted_tokens_per_pos",
            "Guessed tokens accepted, by position in the guess (0 = first)",
            f.spec_accepted_per_pos.clone(),
        );
        f
    }

    /// The same gauges under vLLM's names as well (`vllm:num_requests_waiting`, `..._running`,
    /// `vllm:kv_cache_usage_perc`, `vllm:cache_config_info`), which Kubernetes' inference gateway and
    /// dashboards made for vLLM read. The families are shared: both names show the same values.
    pub fn register_vllm_names(&self, reg: &mut Registry) {
        reg.register(
            "vllm:num_requests_running",
            "Sequences in the running batch (inhaus:num_requests_running)",
            self.running.clone(),
        );
        reg.register(
            "vllm:num_requests_waiting",
            "Sequences waiting to be scheduled (inhaus:num_requests_waiting)",
            self.waiting.clone(),
        );
        reg.register(
            "vllm:kv_cache_usage_perc",
            "Fraction of KV blocks held by live sequences (inhaus:kv_cache_usage_perc)",
            self.kv_usage.clone(),
        );
        reg.register(
            "vllm:cache_config_info",
            "Information of the KV cache (value 1)",
            self.cache_config.clone(),
        );
    }

    /// Records a model's KV cache configuration (`vllm:cache_config_info`).
    pub fn cache_config(&self, model: &str, block_size: usize, num_blocks: usize) {
        self.cache_config
            .get_or_create(&CacheConfigLabels {
                model_name: model.to_string(),
                block_size: block_size.to_string(),
                num_gpu_blocks: num_blocks.to_string(),
                cache_dtype: "auto".to_string(),
            })
            .set(1);
    }

    /// The handles for one model's engine.
    pub fn for_model(&self, model: &str) -> EngineMetrics {
        let l = ModelLabel {
            model_name: model.to_string(),
        };
        EngineMetrics {
            running: self.running.get_or_create(&l).clone(),
            waiting: self.waiting.get_or_create(&l).clone(),
            kv_usage: self.kv_usage.get_or_create(&l).clone(),
            prefix_queries: self.prefix_queries.get_or_create(&l).clone(),
            prefix_hits: self.prefix_hits.get_or_create(&l).clone(),
            preemptions: self.preemptions.get_or_create(&l).clone(),
            prompt_tokens: self.prompt_tokens.get_or_create(&l).clone(),
            generation_tokens: self.generation_tokens.get_or_create(&l).clone(),
            ttft: self.ttft.get_or_create(&l).clone(),
            itl: self.itl.get_or_create(&l).clone(),
            e2e: self.e2e.get_or_create(&l).clone(),
            warmup: self.warmup.get_or_create(&l).clone(),
            spec_drafts: self.spec_drafts.get_or_create(&l).clone(),
            spec_draft_tokens: self.spec_draft_tokens.get_or_create(&l).clone(),
            spec_accepted_tokens: self.spec_accepted_tokens.get_or_create(&l).clone(),
            spec_accepted_per_pos: self.spec_accepted_per_pos.clone(),
            model_name: model.to_string(),
        }
    }
}

/// One engine's metric handles. `Default` gives unregistered handles (tests, benches, the CLI).
#[derive(Clone)]
pub struct EngineMetrics {
    pub running: Gauge,
    pub waiting: Gauge,
    pub kv_usage: Gauge<f64, AtomicU64>,
    pub prefix_queries: Counter,
    pub prefix_hits: Counter,
    pub preemptions: Counter,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    /// Seconds the warm-up took (0 until it ran).
    pub warmup: Gauge<f64, AtomicU64>,
    pub spec_drafts: Counter,
    pub spec_draft_tokens: Counter,
    pub spec_accepted_tokens: Counter,
    spec_accepted_per_pos: Family<SpecPositionLabel, Counter>,
    model_name: String,
}

impl EngineMetrics {
    /// Records one sequence-step's speculation: `guessed` tokens verified, the first `accepted`
    /// of them accepted.
    pub fn speculated(&self, guessed: usize, accepted: usize) {
        if guessed == 0 {
            return;
        }
        self.spec_drafts.inc();
        self.spec_draft_tokens.inc_by(guessed as u64);
        self.spec_accepted_tokens.inc_by(accepted as u64);
        for pos in 0..guessed {
            // Every verified position gets a series (zero when never accepted), as vLLM's.
            let c = self
                .spec_accepted_per_pos
                .get_or_create(&SpecPositionLabel {
                    model_name: self.model_name.clone(),
                    position: pos.to_string(),
                });
            if pos < accepted {
                c.inc();
            }
        }
    }
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            running: Gauge::default(),
            waiting: Gauge::default(),
            kv_usage: Gauge::default(),
            prefix_queries: Counter::default(),
            prefix_hits: Counter::default(),
            preemptions: Counter::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            ttft: latency_histogram(),
            itl: latency_histogram(),
            e2e: latency_histogram(),
            warmup: Gauge::default(),
            spec_drafts: Counter::default(),
            spec_draft_tokens: Counter::default(),
            spec_accepted_tokens: Counter::default(),
            spec_accepted_per_pos: Family::default(),
            model_name: String::new(),
        }
    }
}
