//! Traces and logs: spans for each RPC and each store call reach an OTLP/gRPC collector (a
//! small receiver in the test) inside the caller's W3C trace; `--log-format` chooses JSON or
//! text lines while audit lines stay JSON.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use portcullis_client::pb;
use portcullis_tests::auth::AuthApi;
use portcullis_tests::harness::{PortcullisProcess, portcullis_binary};
use portcullis_tests::server::{ADMIN_TOKEN, unique};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// How long spans may take to reach the collector (the batch delay is 100 ms here).
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(10);
/// A password that meets the default ("guide") policy.
const PASSWORD: &str = "Vq7#mLx2!pRz9w";

/// One received span with the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Received {
    service_name: String,
    span: Span,
}

/// An OTLP/gRPC trace receiver that keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push(Received {
                        service_name: service_name.clone(),
                        span,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves on 127.0.0.1:0 in the background; returns the collector and its `http://` URL.
    async fn start() -> (Collector, String) {
        Self::serve(Server::builder(), "http").await
    }

    /// Serves over TLS with `identity`, requiring a client certificate signed by `client_ca`;
    /// returns the collector and its `https://localhost:PORT` URL.
    async fn start_tls(identity: Identity, client_ca: Certificate) -> (Collector, String) {
        let tls = ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(client_ca);
        Self::serve(Server::builder().tls_config(tls).unwrap(), "https").await
    }

    async fn serve(mut server: Server, scheme: &str) -> (Collector, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "{scheme}://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            server
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        (collector, url)
    }

    /// The spans of `trace_id` once `done` says they are all there; panics with what did
    /// arrive after [`ARRIVAL_TIMEOUT`].
    async fn wait_for_trace(
        &self,
        trace_id: &[u8],
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + ARRIVAL_TIMEOUT;
        loop {
            let trace: Vec<Received> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.span.trace_id == trace_id)
                .cloned()
                .collect();
            if done(&trace) {
                return trace;
            }
            if Instant::now() >= deadline {
                let all: Vec<String> = self
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|r| format!("{} trace {}", r.span.name, hex(&r.span.trace_id)))
                    .collect();
                panic!(
                    "the spans of trace {} did not arrive in {ARRIVAL_TIMEOUT:?}; of it: {:?}; all: {all:?}",
                    hex(trace_id),
                    trace.iter().map(|r| &r.span.name).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string_attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attr(attributes, key)? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key)? {
        Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// A caller's span: trace id and span id as hex, and its `traceparent` (sampled).
struct CallerSpan {
    trace_id: &'static str,
    span_id: &'static str,
}

impl CallerSpan {
    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }

    /// `message` in a request carrying this span's `traceparent` and a `tracestate`.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert("traceparent", self.traceparent().parse().unwrap());
        metadata.insert("tracestate", "caller=1".parse().unwrap());
        request
    }
}

/// A `Check` taking one unit from a tenant no other test uses.
fn fresh_check(prefix: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        tenant_id: unique(prefix),
        resource: String::new(),
        key: String::new(),
        cost: 1,
    }
}

/// Sends `request` over a connection of its own to `endpoint`, closed again on return.
async fn check(endpoint: String, request: Request<pb::CheckRequest>) -> pb::CheckResponse {
    pb::rate_limit_service_client::RateLimitServiceClient::connect(endpoint)
        .await
        .unwrap()
        .check(request)
        .await
        .unwrap()
        .into_inner()
}

/// The server span of `rpc` ("package.Service/Method") in `trace`, checked to be a child of
/// the caller's span with the RPC attributes and status OK.
fn rpc_span<'a>(trace: &'a [Received], caller: &CallerSpan, rpc: &str) -> &'a Span {
    let span = &trace
        .iter()
        .find(|r| r.span.name == rpc)
        .unwrap_or_else(|| panic!("no {rpc} span in {trace:?}"))
        .span;
    let (service, method) = rpc.split_once('/').unwrap();
    assert_eq!(hex(&span.parent_span_id), caller.span_id, "parent of {rpc}");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(
        string_attr(&span.attributes, "rpc.system").as_deref(),
        Some("grpc")
    );
    assert_eq!(
        string_attr(&span.attributes, "rpc.service").as_deref(),
        Some(service)
    );
    assert_eq!(
        string_attr(&span.attributes, "rpc.method").as_deref(),
        Some(method)
    );
    assert_eq!(int_attr(&span.attributes, "rpc.grpc.status_code"), Some(0));
    span
}

/// True when `span` descends from the span with id `ancestor` within `trace`.
fn descends_from(trace: &[Received], span: &Span, ancestor: &[u8]) -> bool {
    let mut parent = span.parent_span_id.clone();
    for _ in 0..trace.len() {
        if parent == ancestor {
            return true;
        }
        match trace.iter().find(|r| r.span.span_id == parent) {
            Some(r) => parent = r.span.parent_span_id.clone(),
            None => return false,
        }
    }
    false
}

/// The `store.*` spans under `rpc` in `trace`.
fn store_spans_under<'a>(trace: &'a [Received], rpc: &Span) -> Vec<&'a Span> {
    trace
        .iter()
        .map(|r| &r.span)
        .filter(|s| s.name.starts_with("store.") && descends_from(trace, s, &rpc.span_id))
        .collect()
}

fn has_store_span(trace: &[Received]) -> bool {
    trace.iter().any(|r| r.span.name.starts_with("store."))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_and_store_spans_join_the_callers_trace() {
    let (collector, url) = Collector::start().await;
    let server = PortcullisProcess::spawn(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", ""),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
            ("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );

    // Check: the RPC span is the caller's child and the store decision its child.
    let check_caller = CallerSpan {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
        span_id: "00f067aa0ba902b7",
    };
    let answer = check(
        server.endpoint(),
        check_caller.request(fresh_check("traced")),
    )
    .await;
    assert!(answer.allowed);
    let check_rpc = "portcullis.v1.RateLimitService/Check";
    let trace = collector
        .wait_for_trace(&unhex(check_caller.trace_id), |t| {
            t.iter().any(|r| r.span.name == check_rpc) && has_store_span(t)
        })
        .await;
    let rpc = rpc_span(&trace, &check_caller, check_rpc);
    let stores = store_spans_under(&trace, rpc);
    assert!(
        stores.iter().any(|s| s.name == "store.decide"),
        "a store.decide span under Check: {trace:?}"
    );
    for store in &stores {
        assert_eq!(
            string_attr(&store.attributes, "db.system.name").as_deref(),
            Some("memory")
        );
        assert_eq!(store.kind, SpanKind::Client as i32);
    }
    assert!(
        trace.iter().all(|r| r.service_name == "portcullis"),
        "default service.name: {trace:?}"
    );

    // Login, after the admin API created the user: its store reads join the caller's trace.
    let api = AuthApi::connect(&server.endpoint()).await;
    api.create_user("alice", PASSWORD, &["reader"], Some(false))
        .await;
    let login_caller = CallerSpan {
        trace_id: "0af7651916cd43dd8448eb211c80319c",
        span_id: "b7ad6b7169203331",
    };
    let login = api
        .auth()
        .login(login_caller.request(api.login_request("alice", PASSWORD, "203.0.113.9")))
        .await
        .unwrap()
        .into_inner();
    assert!(!login.access_token.is_empty());
    let login_rpc = "portcullis.v1.AuthService/Login";
    let trace = collector
        .wait_for_trace(&unhex(login_caller.trace_id), |t| {
            t.iter().any(|r| r.span.name == login_rpc) && has_store_span(t)
        })
        .await;
    let rpc = rpc_span(&trace, &login_caller, login_rpc);
    assert!(
        !store_spans_under(&trace, rpc).is_empty(),
        "store spans under Login: {trace:?}"
    );
    // The caller's trace carries no other RPC (CreateUser had no traceparent).
    assert!(
        trace
            .iter()
            .all(|r| !r.span.name.contains("CreateUser") && r.service_name == "portcullis"),
        "{trace:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_traceparent_starts_a_new_trace() {
    let (collector, url) = Collector::start().await;
    let server = PortcullisProcess::spawn(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "portcullis-under-test"),
        ],
    );
    let mut request = Request::new(fresh_check("untraced"));
    request
        .metadata_mut()
        .insert("traceparent", "00-not-a-trace-01".parse().unwrap());
    check(server.endpoint(), request).await;

    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    let rpc = loop {
        let found = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.span.name == "portcullis.v1.RateLimitService/Check")
            .cloned();
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no Check span arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(rpc.span.parent_span_id.is_empty(), "a root span");
    assert_eq!(rpc.span.trace_id.len(), 16);
    assert_eq!(rpc.service_name, "portcullis-under-test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_spans_are_flushed_at_exit() {
    let (collector, url) = Collector::start().await;
    // A batch delay far beyond the test: only the flush at exit can deliver the spans.
    let mut server = PortcullisProcess::spawn(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    let caller = CallerSpan {
        trace_id: "7d1c2a4f0e9b83a65c4d2e1f0a9b8c7d",
        span_id: "1a2b3c4d5e6f7081",
    };
    check(server.endpoint(), caller.request(fresh_check("flushed"))).await;
    server.child().signal_term();
    let status = server.child().wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        server.log()
    );
    let check_rpc = "portcullis.v1.RateLimitService/Check";
    let trace = collector
        .wait_for_trace(&unhex(caller.trace_id), |t| {
            t.iter().any(|r| r.span.name == check_rpc) && has_store_span(t)
        })
        .await;
    rpc_span(&trace, &caller, check_rpc);
}

/// Starts a server with `--log-format <format>` and debug logs, makes a few calls (one of them
/// audited), and returns its non-empty log lines.
async fn log_lines(format: &str) -> Vec<String> {
    let server = PortcullisProcess::spawn(
        &["--log-format", format],
        &[
            ("RUST_LOG", "debug"),
            ("PORTCULLIS_LOG_FORMAT", ""),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
        ],
    );
    check(server.endpoint(), Request::new(fresh_check("logged"))).await;
    // An unknown user's failed login is an audit event.
    let api = AuthApi::connect(&server.endpoint()).await;
    let failed = api.login("nobody", PASSWORD).await;
    assert!(failed.is_err());
    // Audit lines are written before the answer; give stderr a moment anyway.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .log()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_json_object(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object())
}

fn is_audit_line(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line)
        .is_ok_and(|v| v.get("target").and_then(|t| t.as_str()) == Some("audit"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_only_json_lines() {
    let lines = log_lines("json").await;
    assert!(lines.len() > 3, "{lines:?}");
    for line in &lines {
        assert!(is_json_object(line), "not a JSON object: {line}");
    }
    assert!(lines.iter().any(|l| is_audit_line(l)), "{lines:?}");
    // Operational lines carry level, target and message as fields.
    let serving = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["message"] == "serving gRPC")
        .unwrap_or_else(|| panic!("no 'serving gRPC' line: {lines:?}"));
    assert_eq!(serving["level"], "INFO");
    assert!(serving["target"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_text_writes_text_but_audit_stays_json() {
    let lines = log_lines("text").await;
    let text: Vec<&String> = lines.iter().filter(|l| !is_json_object(l)).collect();
    assert!(text.iter().any(|l| l.contains("serving gRPC")), "{lines:?}");
    assert!(
        lines.iter().any(|l| is_audit_line(l)),
        "audit lines stay JSON: {lines:?}"
    );
    assert!(
        !text.iter().any(|l| l.contains(" audit: ")),
        "an audit line as text: {text:?}"
    );
}

/// A certificate and key in PEM signed by `ca` for `purpose` (server: localhost).
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    purpose: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names = match purpose {
        ExtendedKeyUsagePurpose::ServerAuth => vec!["localhost".to_owned()],
        _ => Vec::new(),
    };
    let mut params = CertificateParams::new(names).unwrap();
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_over_mutual_tls() {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let (server_cert, server_key) = leaf(&ca, ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(&ca, ExtendedKeyUsagePurpose::ClientAuth);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca_file = write("ca.pem", &ca.pem());
    let cert_file = write("client.pem", &client_cert);
    let key_file = write("client.key", &client_key);

    let (collector, url) = Collector::start_tls(
        Identity::from_pem(server_cert, server_key),
        Certificate::from_pem(ca.pem()),
    )
    .await;
    let server = PortcullisProcess::spawn(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.as_str()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert_file.as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key_file.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let caller = CallerSpan {
        trace_id: "5b8efff798038103d269b633813fc60c",
        span_id: "eee19b7ec3c1b174",
    };
    check(server.endpoint(), caller.request(fresh_check("tls"))).await;
    let check_rpc = "portcullis.v1.RateLimitService/Check";
    let trace = collector
        .wait_for_trace(&unhex(caller.trace_id), |t| {
            t.iter().any(|r| r.span.name == check_rpc)
        })
        .await;
    rpc_span(&trace, &caller, check_rpc);
}

#[test]
fn unsupported_otel_settings_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    for (variable, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
    ] {
        let output = std::process::Command::new(portcullis_binary())
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .current_dir(dir.path())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://localhost:4317")
            .env(variable, value)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{variable}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{variable}: {stderr}");
    }
}
