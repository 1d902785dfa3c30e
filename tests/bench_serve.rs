//! `inhaus bench serve` against a stub OpenAI-compatible streaming server started in the test, whose
//! token timings the test sets and the stub records itself: the reported TTFT, ITL, TPOT, e2e
//! latency and throughput agree within 5% with what the stub did; open-loop arrivals come at the
//! asked rate, Poisson-spaced; errors are counted by kind (HTTP status, cut stream, stall past the
//! timeout, short output, no server) and the run still ends; goodput follows the SLOs; structured,
//! tool-call and multi-turn requests carry their fields and history; the binary's JSON round-trips,
//! its chart is written, and Ctrl-C prints what was measured.
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use inhaus::bench::serve::{
    run, Endpoint, LenRange, Load, Report, ServeConfig, Slo, WorkloadKind, WorkloadSpec,
};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;

/// The timing tests run one at a time: on a 2-core machine they would disturb each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the stub does with one request.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Streams `max_tokens` tokens: the first after `ttft`, then one every `itl`.
    Ok { ttft_ms: u64, itl_ms: u64 },
    /// Answers with this HTTP status.
    Status(u16),
    /// Sends two tokens, then breaks the connection.
    Cut,
    /// Sends one token, then nothing for a minute.
    Stall,
    /// Streams half the tokens asked for and says so in usage.
    Short,
}

/// What the stub saw and did for one request, by its own clock.
#[derive(Clone, Debug)]
struct Record {
    arrived: Instant,
    tokens: Vec<Instant>,
    ended: Option<Instant>,
    body: Value,
}

struct Stub {
    modes: Vec<Mode>,
    next: Mutex<usize>,
    records: Mutex<Vec<Record>>,
}

type StubState = Arc<Stub>;

fn chunk(v: Value) -> Result<Bytes, std::io::Error> {
    Ok(Bytes::from(format!("data: {v}\n\n")))
}

async fn completions(
    State(stub): State<StubState>,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let arrived = Instant::now();
    let n = {
        let mut next = stub.next.lock().unwrap_or_else(|e| e.into_inner());
        *next += 1;
        *next - 1
    };
    let mode = stub.modes[n % stub.modes.len()];
    let idx = {
        let mut r = stub.records.lock().unwrap_or_else(|e| e.into_inner());
        r.push(Record {
            arrived,
            tokens: vec![],
            ended: None,
            body: body.clone(),
        });
        r.len() - 1
    };
    if let Mode::Status(code) = mode {
        return axum::response::Response::builder()
            .status(code)
            .body(Body::from(r#"{"error":{"message":"stub error"}}"#))
            .unwrap_or_default();
    }
    let chat = body.get("messages").is_some();
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        let token = |i: usize| {
            if chat {
                json!({"choices": [{"index": 0, "delta": {"content": format!("t{i} ")}}]})
            } else {
                json!({"choices": [{"index": 0, "text": format!("t{i} ")}]})
            }
        };
        let record = |t: Instant| {
            let mut r = stub.records.lock().unwrap_or_else(|e| e.into_inner());
            r[idx].tokens.push(t);
        };
        if chat {
            let role =
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]});
            if tx.send(chunk(role)).await.is_err() {
                return;
            }
        }
        let (ttft, itl, produce) = match mode {
            Mode::Ok { ttft_ms, itl_ms } => (ttft_ms, itl_ms, max_tokens),
            Mode::Cut => (20, 10, 2),
            Mode::Stall => (20, 10, 1),
            Mode::Short => (20, 5, max_tokens / 2),
            Mode::Status(_) => return,
        };
        tokio::time::sleep(Duration::from_millis(ttft)).await;
        for i in 0..produce {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(itl)).await;
            }
            let sent = tx.send(chunk(token(i))).await;
            record(Instant::now());
            if sent.is_err() {
                return;
            }
        }
        match mode {
            Mode::Cut => {
                let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                return;
            }
            Mode::Stall => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
            _ => {}
        }
        let usage = json!({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": produce, "total_tokens": 10 + produce}});
        let _ = tx.send(chunk(usage)).await;
        let _ = tx.send(Ok(Bytes::from("data: [DONE]\n\n"))).await;
        let mut r = stub.records.lock().unwrap_or_else(|e| e.into_inner());
        r[idx].ended = Some(Instant::now());
    });
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap_or_default()
}

/// Starts a stub on a free loopback port; returns its base URL and state.
async fn start_stub(modes: Vec<Mode>) -> (String, StubState) {
    let stub = Arc::new(Stub {
        modes,
        next: Mutex::new(0),
        records: Mutex::new(vec![]),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/v1/completions", post(completions))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), stub)
}

fn records(stub: &StubState) -> Vec<Record> {
    stub.records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// A stub answer: the first token after `ttft_ms`, then one every `itl_ms`.
fn ok(ttft_ms: u64, itl_ms: u64) -> Mode {
    Mode::Ok { ttft_ms, itl_ms }
}

/// `requests` synthetic chat requests per point, output lengths drawn from `output` (min, max).
fn config(url: &str, loads: Vec<Load>, requests: usize, output: (usize, usize)) -> ServeConfig {
    ServeConfig {
        url: url.to_string(),
        model: "stub".into(),
        api_key: None,
        label: "stub".into(),
        loads,
        requests: Some(requests),
        duration: None,
        warmup: 0,
        timeout: Duration::from_secs(10),
        seed: 7,
        workload: WorkloadSpec {
            kind: WorkloadKind::Synthetic,
            dataset: None,
            input_len: LenRange { min: 20, max: 20 },
            output_len: LenRange {
                min: output.0,
                max: output.1,
            },
            prefix_systems: 2,
            prefix_questions: 2,
            prefix_len: 50,
            endpoint: Endpoint::Chat,
            temperature: Some(0.0),
        },
        slo: None,
        progress: false,
        handle_ctrl_c: false,
        command: "test".into(),
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn assert_close(what: &str, reported: f64, truth: f64, tol: f64) {
    let rel = (reported - truth).abs() / truth.abs().max(1e-12);
    assert!(
        rel <= tol,
        "{what}: reported {reported:.3}, the stub's own clock says {truth:.3} ({:.1}% apart, {:.0}% allowed)",
        rel * 100.0,
        tol * 100.0
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the sweep; it must end within 20 s.
async fn sweep(cfg: &ServeConfig) -> Report {
    tokio::time::timeout(Duration::from_secs(20), run(cfg))
        .await
        .expect("the run ended in time")
        .expect("the run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_figures_agree_with_the_stub() {
    let _g = SERIAL.lock().await;
    let (url, stub) = start_stub(vec![ok(100, 15)]).await;
    let cfg = config(&url, vec![Load::Concurrency(4)], 12, (8, 24));
    let report = sweep(&cfg).await;
    let s = &report.points[0].stats;
    assert_eq!((s.requests, s.completed, s.failed), (12, 12, 0), "{s:?}");

    let recs = records(&stub);
    assert_eq!(recs.len(), 12);
    for r in &recs {
        assert_eq!(r.body["stream"], true);
        assert_eq!(r.body["ignore_eos"], true);
        assert_eq!(r.body["stream_options"]["include_usage"], true);
    }
    let ttft: Vec<f64> = recs.iter().map(|r| ms(r.tokens[0] - r.arrived)).collect();
    let itl: Vec<f64> = recs
        .iter()
        .flat_map(|r| r.tokens.windows(2).map(|w| ms(w[1] - w[0])))
        .collect();
    let tpot: Vec<f64> = recs
        .iter()
        .map(|r| ms(r.tokens[r.tokens.len() - 1] - r.tokens[0]) / (r.tokens.len() - 1) as f64)
        .collect();
    let ends: Vec<Instant> = recs.iter().map(|r| r.ended.expect("ended")).collect();
    let e2e: Vec<f64> = recs
        .iter()
        .zip(&ends)
        .map(|(r, e)| ms(*e - r.arrived))
        .collect();
    let tokens: usize = recs.iter().map(|r| r.tokens.len()).sum();
    let first = recs.iter().map(|r| r.arrived).min().expect("requests");
    let last = ends.iter().max().expect("ends");
    let span = (*last - first).as_secs_f64();

    assert_eq!(s.output_tokens, tokens, "output tokens come from usage");
    assert_eq!(s.input_tokens, 12 * 10);
    assert_close("mean TTFT", s.ttft_ms.mean, mean(&ttft), 0.05);
    assert_close("mean ITL", s.itl_ms.mean, mean(&itl), 0.05);
    assert_close(
        "median ITL",
        s.itl_ms.p50,
        {
            let mut v = itl.clone();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        },
        0.05,
    );
    assert_close("mean TPOT", s.tpot_ms.mean, mean(&tpot), 0.05);
    assert_close("mean e2e", s.e2e_ms.mean, mean(&e2e), 0.05);
    assert_close(
        "request throughput",
        s.request_throughput,
        12.0 / span,
        0.05,
    );
    assert_close(
        "output throughput",
        s.output_throughput,
        tokens as f64 / span,
        0.05,
    );
    assert_close(
        "total throughput",
        s.total_throughput,
        (tokens + 120) as f64 / span,
        0.05,
    );
    // Closed loop: never more than 4 requests in flight at the stub.
    for r in &recs {
        let in_flight = recs
            .iter()
            .zip(&ends)
            .filter(|(o, e)| o.arrived <= r.arrived && **e > r.arrived)
            .count();
        assert!(in_flight <= 4, "{in_flight} requests in flight");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_endpoint_and_shared_prefix_workload() {
    let _g = SERIAL.lock().await;
    let (url, stub) = start_stub(vec![ok(5, 2)]).await;
    let mut cfg = config(&url, vec![Load::Concurrency(2)], 4, (4, 4));
    cfg.workload.kind = WorkloadKind::SharedPrefix;
    let report = sweep(&cfg).await;
    assert_eq!(report.points[0].stats.completed, 4);
    let recs = records(&stub);
    let systems: std::collections::BTreeSet<String> = recs
        .iter()
        .map(|r| {
            r.body["messages"][0]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(systems.len(), 2, "2 system prompts shared by 4 requests");
    assert!(recs
        .iter()
        .all(|r| r.body["messages"][0]["role"] == "system"));

    cfg.workload.kind = WorkloadKind::Synthetic;
    cfg.workload.endpoint = Endpoint::Completions;
    let report = sweep(&cfg).await;
    assert_eq!(
        report.points[0].stats.completed, 4,
        "{:?}",
        report.points[0].stats
    );
    let recs = records(&stub);
    assert!(recs[4..].iter().all(|r| r.body["prompt"].is_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_arrivals_follow_the_rate() {
    let _g = SERIAL.lock().await;
    let (url, stub) = start_stub(vec![ok(10, 5)]).await;
    let cfg = config(&url, vec![Load::Rate(40.0)], 80, (4, 4));
    let report = sweep(&cfg).await;
    let s = &report.points[0].stats;
    assert_eq!(s.completed, 80);
    let mut arrivals: Vec<Instant> = records(&stub).iter().map(|r| r.arrived).collect();
    arrivals.sort();
    let gaps: Vec<f64> = arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let stub_rate = gaps.len() as f64 / gaps.iter().sum::<f64>();
    assert_close(
        "send rate vs the stub's arrivals",
        s.send_rate,
        stub_rate,
        0.05,
    );
    // A Poisson process of 40/s: over 79 gaps the rate is within 30% and the gaps are as spread as
    // an exponential's (coefficient of variation about 1; evenly spaced sends would give 0).
    assert_close("arrival rate", stub_rate, 40.0, 0.3);
    let m = mean(&gaps);
    let sd = (gaps.iter().map(|g| (g - m).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
    assert!(
        (0.6..1.4).contains(&(sd / m)),
        "coefficient of variation {}",
        sd / m
    );
    // Open loop: requests overlap when arrivals bunch up (a closed loop of 1 never would).
    assert!(s.e2e_ms.mean > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_kind_and_the_run_ends() {
    let _g = SERIAL.lock().await;
    let (url, _stub) = start_stub(vec![
        ok(10, 5),
        Mode::Status(500),
        Mode::Cut,
        Mode::Stall,
        Mode::Short,
        Mode::Status(429),
    ])
    .await;
    let mut cfg = config(
        &url,
        vec![Load::Concurrency(6), Load::Concurrency(1)],
        12,
        (8, 8),
    );
    cfg.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let report = sweep(&cfg).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stalls end at the timeout"
    );
    for p in &report.points {
        let s = &p.stats;
        assert_eq!((s.requests, s.completed, s.failed), (12, 2, 10), "{s:?}");
        let errors: Vec<(&str, usize)> = s.errors.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            errors,
            vec![
                ("http_429", 2),
                ("http_500", 2),
                ("short_output", 2),
                ("stream", 2),
                ("timeout", 2)
            ],
            "{s:?}"
        );
        assert_eq!(s.output_tokens, 16, "only completed requests count");
    }
    assert!(report.table().contains("2 x timeout"));

    // Nothing listening: connection errors, and still a report.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cfg = config(
        &format!("http://127.0.0.1:{port}"),
        vec![Load::Concurrency(2)],
        3,
        (4, 4),
    );
    let report = sweep(&cfg).await;
    assert_eq!(report.points[0].stats.errors.get("connection"), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodput_counts_requests_within_the_slos() {
    let _g = SERIAL.lock().await;
    let (url, _stub) = start_stub(vec![ok(20, 5), ok(250, 5), ok(20, 40), ok(20, 5)]).await;
    let mut cfg = config(&url, vec![Load::Concurrency(4)], 8, (6, 6));
    cfg.slo = Some("ttft=150ms,tpot=20ms".parse::<Slo>().expect("slo"));
    let report = sweep(&cfg).await;
    let s = &report.points[0].stats;
    assert_eq!(s.completed, 8);
    let goodput = s.goodput.expect("goodput with --slo");
    assert_close("goodput share", goodput / s.request_throughput, 0.5, 1e-9);

    cfg.slo = Some("ttft=150ms".parse::<Slo>().expect("slo"));
    let report = sweep(&cfg).await;
    let s = &report.points[0].stats;
    assert_close(
        "goodput share",
        s.goodput.unwrap_or(0.0) / s.request_throughput,
        0.75,
        1e-9,
    );
}

/// Runs the built binary; returns (exit status success, stdout, stderr).
fn inhaus(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_inhaus"))
        .args(args)
        .output()
        .expect("run inhaus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_json_that_round_trips_and_charts() {
    let _g = SERIAL.lock().await;
    let (url, _stub) = start_stub(vec![ok(10, 3)]).await;
    let dir = std::env::temp_dir().join(format!("inhaus-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let (a, b, svg, png, plot) = (
        path("a.json"),
        path("b.json"),
        path("a.svg"),
        path("a.png"),
        path("plot.svg"),
    );
    let runs = tokio::task::spawn_blocking(move || {
        let common = [
            "bench",
            "serve",
            "--url",
            &url,
            "--model",
            "stub",
            "--concurrency",
            "1,2",
            "--requests",
            "4",
            "--output-len",
            "6",
            "--input-len",
            "10:20",
            "--quiet",
            "--slo",
            "ttft=1s",
        ];
        let mut first: Vec<&str> = common.to_vec();
        first.extend(["--label", "server-one", "--json", &a, "--chart", &svg]);
        let one = inhaus(&first);
        let mut second: Vec<&str> = common.to_vec();
        second.extend(["--label", "server-two", "--json", &b, "--chart", &png]);
        let two = inhaus(&second);
        let three = inhaus(&["bench", "plot", &a, &b, "--chart", &plot]);
        let bad = inhaus(&["bench", "plot", &a, "--chart", "x.gif"]);
        (one, two, three, bad)
    })
    .await
    .expect("join");
    let (one, two, three, bad) = runs;
    assert!(one.0, "{}", one.2);
    assert!(two.0, "{}", two.2);
    assert!(three.0, "{}", three.2);
    assert!(!bad.0 && bad.2.contains(".svg or .png"), "{}", bad.2);
    assert!(
        one.1.contains("c=1") && one.1.contains("c=2") && one.1.contains("TTFT"),
        "{}",
        one.1
    );

    let text = std::fs::read_to_string(dir.join("a.json")).expect("json written");
    let report = Report::read_json(&dir.join("a.json")).expect("json parses as a report");
    assert_eq!(report.label, "server-one");
    assert_eq!(report.points.len(), 2);
    assert_eq!(report.points[1].load, Load::Concurrency(2));
    assert_eq!(report.points[0].stats.completed, 4);
    assert!(report.points[0].stats.goodput.is_some());
    let again: Value = serde_json::to_value(&report).expect("serialize");
    let original: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(again, original, "JSON -> report -> JSON is unchanged");

    let svg_text = std::fs::read_to_string(dir.join("a.svg")).expect("svg written");
    assert!(svg_text.starts_with("<svg") && svg_text.contains("server-one: p50 solid"));
    let png_bytes = std::fs::read(dir.join("a.png")).expect("png written");
    assert!(png_bytes.starts_with(b"\x89PNG") && png_bytes.len() > 10_000);
    let plot_text = std::fs::read_to_string(dir.join("plot.svg")).expect("plot written");
    assert!(plot_text.contains("server-one: p50") && plot_text.contains("server-two: p50"));
    assert!(plot_text.contains("TTFT") && plot_text.contains("c=2"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_prints_what_was_measured() {
    let _g = SERIAL.lock().await;
    let (url, _stub) = start_stub(vec![ok(20, 20)]).await;
    let json_path =
        std::env::temp_dir().join(format!("inhaus-bench-int-{}.json", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_inhaus"))
        .args([
            "bench",
            "serve",
            "--url",
            &url,
            "--model",
            "stub",
            "--concurrency",
            "2,4",
        ])
        .args([
            "--requests",
            "400",
            "--output-len",
            "10",
            "--warmup",
            "0",
            "--quiet",
            "--json",
        ])
        .arg(&json_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start inhaus");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(started.elapsed() < Duration::from_secs(5), "stops promptly");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("interrupted"), "{stdout}");
    let report = Report::read_json(&json_path).expect("json written after Ctrl-C");
    let _ = std::fs::remove_file(&json_path);
    assert!(report.interrupted);
    assert_eq!(report.points.len(), 1, "stopped in the first point");
    let s = &report.points[0].stats;
    assert!(s.completed > 5 && s.completed < 400, "{s:?}");
    assert!(
        s.duration_s > 1.0,
        "the partial point's duration runs to the interruption"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_tool_and_conversation_requests() {
    let _g = SERIAL.lock().await;
    let (url, stub) = start_stub(vec![ok(5, 2)]).await;
    let mut cfg = config(&url, vec![Load::Concurrency(2)], 2, (4, 4));
    cfg.workload.kind = WorkloadKind::Structured;
    assert_eq!(sweep(&cfg).await.points[0].stats.completed, 2);
    cfg.workload.kind = WorkloadKind::Tools;
    assert_eq!(sweep(&cfg).await.points[0].stats.completed, 2);
    // Server-default sampling: no temperature sent.
    cfg.workload.kind = WorkloadKind::Synthetic;
    cfg.workload.temperature = None;
    assert_eq!(sweep(&cfg).await.points[0].stats.completed, 2);
    cfg.workload.temperature = Some(0.0);
    let recs = records(&stub);
    assert!(recs[..4].iter().all(|r| r.body["temperature"] == 0.0));
    assert!(recs[4..6]
        .iter()
        .all(|r| r.body.get("temperature").is_none()));
    for r in &recs[..2] {
        assert_eq!(r.body["response_format"]["type"], "json_schema");
        assert!(
            r.body.get("ignore_eos").is_none(),
            "the JSON ends the output"
        );
    }
    for r in &recs[2..4] {
        assert_eq!(r.body["tool_choice"], "required");
        assert_eq!(r.body["tools"][0]["function"]["name"], "get_weather");
    }

    // A conversation of three user turns: each turn carries the history and is sent after the
    // previous answer ended.
    let path = std::env::temp_dir().join(format!("inhaus-bench-conv-{}.jsonl", std::process::id()));
    let conv = json!({"messages": [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "a"},
        {"role": "user", "content": "two"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "three"}]});
    std::fs::write(&path, format!("{conv}\n{}\n", json!({"prompt": "single"}))).expect("write");
    cfg.workload.kind = WorkloadKind::Synthetic;
    cfg.workload.dataset = Some(path.clone());
    cfg.requests = Some(1);
    cfg.loads = vec![Load::Concurrency(1)];
    let report = sweep(&cfg).await;
    let _ = std::fs::remove_file(&path);
    assert_eq!(report.points[0].stats.completed, 3, "three turns");
    let turns = &records(&stub)[6..];
    let lens: Vec<usize> = turns
        .iter()
        .map(|r| r.body["messages"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(lens, vec![1, 3, 5]);
    assert_eq!(turns[2].body["messages"][3]["content"], "b");
    for w in turns.windows(2) {
        assert!(
            w[1].arrived >= w[0].ended.expect("ended"),
            "sent after the previous turn"
        );
    }
}
