//! What the operator sees of each request: an `X-Request-Id` on every response (the client's own when
//! it sends a fit one, else a new one), one log line per request with that id (at error level with
//! the cause for a 500), and `/metrics` in Prometheus text format: the engines' `inhaus:` metrics plus
//! HTTP requests counted by route, method and status. Every label comes from a fixed set, never
//! from what a caller typed: the route is the matched template (`unmatched` for unknown paths) and
//! the method one of the standard verbs or `other`.
use super::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;
use tracing::Instrument;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

pub type HttpRequests = Family<HttpLabels, Counter>;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, also in the request's extensions for handlers that want to name it.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Why a response is a server error; set on 5xx responses so the request's log line can say it.
#[derive(Clone, Debug)]
pub struct ErrorCause(pub String);

/// The longest client-given request id kept; longer ones are replaced.
const MAX_ID_LEN: usize = 128;

/// The client's `X-Request-Id` when it is printable ASCII of a sane length, else a new random one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_ID_LEN && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

/// The method as a label: a standard verb or `other`, so no caller can add label values.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The route template the router matched; `unmatched` for any path no route has.
fn route_label(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into())
}

/// Tags the request with its id, runs it inside a span carrying that id, then logs and counts it.
pub async fn observe_requests(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = request_id(req.headers());
    let route = route_label(&req);
    let method = method_label(req.method());
    req.extensions_mut().insert(RequestId(id.clone()));
    let start = std::time::Instant::now();
    let span = tracing::info_span!("request", id = %id);
    // An audit record for every API request (not for health checks and metrics scrapes).
    let audited = !matches!(route.as_str(), "/health" | "/ready" | "/metrics");
    let audit = state.audit.as_ref().filter(|_| audited).map(|log| {
        let client = req
            .extensions()
            .get::<super::audit_trail::ClientAddr>()
            .map(|c| c.0.to_string());
        let mut fields = serde_json::Map::new();
        fields.insert("request_id".into(), serde_json::json!(id));
        fields.insert("client".into(), serde_json::json!(client));
        fields.insert("endpoint".into(), serde_json::json!(route));
        fields.insert("method".into(), serde_json::json!(method));
        fields.insert("key".into(), serde_json::json!(null));
        // Whose content this is (for `--audit-content`): taken by the writer, never written.
        if let Some(subject) = req
            .headers()
            .get("x-inhaus-subject")
            .and_then(|v| v.to_str().ok())
        {
            fields.insert("subject".into(), serde_json::json!(subject));
        }
        super::audit_trail::AuditHandle::new(log.clone(), fields)
    });
    if let Some(a) = &audit {
        req.extensions_mut().insert(a.clone());
    }
    let refuse = state
        .audit
        .as_ref()
        .is_some_and(|log| audited && !log.accepting());
    let mut resp = if refuse {
        // Fail closed: no request runs unlogged.
        super::errors::ApiError {
            status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
            message: "The audit log cannot be written; requests are refused until it can.".into(),
            kind: "server_error",
            param: None,
            code: Some("audit_log_unavailable"),
        }
        .into_response()
    } else {
        next.run(req).instrument(span).await
    };
    if let Some(a) = audit {
        a.set("status", serde_json::json!(resp.status().as_u16()));
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID.clone(), v);
    }
    let status = resp.status().as_u16();
    // For streams this is the time to the response head; the body may run on.
    let ms = format!("{:.1}", start.elapsed().as_secs_f64() * 1e3);
    match resp.extensions().get::<ErrorCause>() {
        Some(cause) if status == 500 => tracing::error!(
            target: "inhaus::http",
            request_id = %id,
            %method,
            %route,
            status,
            %ms,
            cause = %cause.0,
            "request failed"
        ),
        _ => tracing::info!(
            target: "inhaus::http",
            request_id = %id,
            %method,
            %route,
            status,
            %ms,
            "request"
        ),
    }
    state
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method: method.to_string(),
            status,
        })
        .inc();
    resp
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        return super::errors::ApiError::internal(e.to_string()).into_response();
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::errors::ApiError;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use std::io::Write;
    use std::sync::Mutex;
    use tower::ServiceExt;

    /// A log sink the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_500_is_logged_with_its_request_id_and_cause() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let state = Arc::new(AppState::new(Vec::new(), None, 1024, 1, None));
        let app = Router::new()
            .route(
                "/boom",
                get(|| async { ApiError::internal("the disk is on fire") }),
            )
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                observe_requests,
            ))
            .with_state(state);
        let req = Request::builder()
            .uri("/boom")
            .header("x-request-id", "trace-me-7")
            .body(Body::empty())
            .unwrap_or_default();
        let resp = app.oneshot(req).await.unwrap_or_else(|e| match e {});
        assert_eq!(resp.status(), 500);
        assert_eq!(
            resp.headers().get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"trace-me-7"[..])
        );
        let log =
            String::from_utf8_lossy(&sink.0.lock().unwrap_or_else(|e| e.into_inner())).to_string();
        let line = log
            .lines()
            .find(|l| l.contains("trace-me-7"))
            .unwrap_or_default();
        assert!(
            line.contains("ERROR") && line.contains("the disk is on fire"),
            "{log}"
        );
    }
}
