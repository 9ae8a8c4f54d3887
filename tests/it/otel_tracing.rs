//! OpenTelemetry tracing (docs/operations.md, "Tracing"): the real binary exports over OTLP to a
//! receiver in the test, whose requests are decoded with the published OpenTelemetry protobuf
//! definitions (`opentelemetry-proto`). One webhook is one trace: its server span continues the
//! caller's `traceparent`, its stages are children of it, and every delivery attempt, after a
//! retry or in another process after a crash, is a client span in that trace whose context the
//! agent receives.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message as _;
use serde_json::json;
use tokio::io::AsyncBufReadExt as _;

use crate::delivery::*;
use crate::receiver::*;
use crate::signed::*;
use crate::stream_client::*;
use crate::support::*;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// One exported span, decoded.
#[derive(Debug, Clone)]
struct Exported {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    status: i32,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn map(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
            (kv.key.clone(), text(v))
        })
        .collect()
}

/// Every span the collector has received, decoded from the OTLP/HTTP protobuf requests.
fn exported(collector: &TestReceiver) -> Vec<Exported> {
    let mut out = Vec::new();
    for request in collector.received("/v1/traces") {
        assert_eq!(
            request.header("content-type"),
            Some("application/x-protobuf")
        );
        let export = ExportTraceServiceRequest::decode(request.body.as_ref())
            .expect("an OTLP trace export in protobuf");
        for rs in export.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| map(&r.attributes))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Exported {
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent: hex::encode(&s.parent_span_id),
                        name: s.name.clone(),
                        kind: s.kind,
                        status: s.status.as_ref().map_or(0, |st| st.code),
                        attributes: map(&s.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Waits until the collector holds spans that `done` accepts; those spans.
async fn spans_until(
    collector: &TestReceiver,
    what: &str,
    done: impl Fn(&[Exported]) -> bool,
) -> Vec<Exported> {
    poll(Duration::from_secs(20), what, || {
        let spans = exported(collector);
        let result = if done(&spans) {
            Ok(spans)
        } else {
            Err(json!(
                spans.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
            ))
        };
        async move { result }
    })
    .await
}

fn named<'a>(spans: &'a [Exported], name: &str) -> Vec<&'a Exported> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [Exported], name: &str) -> &'a Exported {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one `{name}` span: {spans:#?}");
    found[0]
}

/// (trace id, parent span id, flags) of a `traceparent` value.
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {value}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// The environment that makes the binary export to `collector` over OTLP/HTTP, promptly.
fn otel_env(collector: &TestReceiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url("")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ("OTEL_SERVICE_NAME", "router-under-test".into()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test".into(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
    ]
}

async fn start(dir: &std::path::Path, env: &[(&'static str, String)]) -> ChildServer {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ChildServer::start(dir, &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_one_trace_from_the_caller_to_each_attempt_at_the_agent() {
    let collector = TestReceiver::start().await;
    let agent_rx = TestReceiver::start().await;
    // The first attempt fails: the retry is a second attempt span in the same trace.
    agent_rx.script("/a", [Reply::Status(500)]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &otel_env(&collector)).await;
    let admin = Admin::at(&server.base);
    admin
        .create_agent(agent("a", &agent_rx.url("/a"), json!({})))
        .await;
    admin
        .create_route(route("r", &["a"], policy(3, "fixed", 50, 50), json!({})))
        .await;
    let addr = server.base.trim_start_matches("http://").parse().unwrap();
    let mut stream = match open_at(addr, Transport::Sse, &StreamRequest::new("a", AGENT_KEY)).await
    {
        Ok(s) => s,
        Err(r) => panic!("stream refused: {}", r.status),
    };

    let client = reqwest::Client::new();
    let accepted = Webhook::github("push", gh_body(1))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "caller=1")
        .send_to(&client, &server.base)
        .await
        .accepted();
    let event_id = accepted.id.to_string();

    // The agent: two attempts, each with its own span of the caller's trace.
    let got = agent_rx.wait_for("/a", 2, Duration::from_secs(20)).await;
    let at_agent: Vec<(String, String, String)> = got
        .iter()
        .map(|r| traceparent(r.header("traceparent").expect("a traceparent")))
        .collect();
    for (trace, _, flags) in &at_agent {
        assert_eq!(trace, CALLER_TRACE);
        assert_eq!(flags, "01", "sampled");
    }
    assert_ne!(at_agent[0].1, at_agent[1].1, "one span per attempt");
    assert_eq!(got[0].header("tracestate"), Some("caller=1"));

    // The stream message carries the trace context beside the event.
    let (_, message) = stream.next_message().await;
    assert_eq!(message["type"], "event");
    assert_eq!(message["data"]["id"], event_id.as_str());
    let (trace, publish_span, _) = traceparent(message["traceparent"].as_str().unwrap());
    assert_eq!(trace, CALLER_TRACE);
    assert_eq!(message["tracestate"], "caller=1");

    let spans = spans_until(&collector, "the webhook's spans", |s| {
        named(s, "POST").len() >= 2
            && !named(s, "POST /webhook/{source}").is_empty()
            && !named(s, "publish streams").is_empty()
    })
    .await;
    assert!(
        spans.iter().all(|s| s.trace_id == CALLER_TRACE),
        "{spans:#?}"
    );
    let server_span = one(&spans, "POST /webhook/{source}");
    assert_eq!(
        server_span.parent, CALLER_SPAN,
        "the caller's trace is continued"
    );
    assert_eq!(server_span.kind, SpanKind::Server as i32);
    assert_eq!(server_span.attr("http.request.method"), Some("POST"));
    assert_eq!(server_span.attr("http.route"), Some("/webhook/{source}"));
    assert_eq!(server_span.attr("url.path"), Some("/webhook/github"));
    assert_eq!(server_span.attr("http.response.status_code"), Some("200"));
    assert_eq!(server_span.attr("event.id"), Some(event_id.as_str()));
    assert_eq!(server_span.attr("event.source"), Some("github"));
    assert_eq!(server_span.attr("event.type"), Some("push"));
    assert_eq!(
        server_span.resource.get("service.name").map(String::as_str),
        Some("router-under-test")
    );
    assert_eq!(
        server_span
            .resource
            .get("deployment.environment")
            .map(String::as_str),
        Some("test")
    );
    for stage in ["verify", "route", "commit", "publish streams"] {
        assert_eq!(
            one(&spans, stage).parent,
            server_span.span_id,
            "`{stage}` is a child of the webhook's span"
        );
    }
    let publish = one(&spans, "publish streams");
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(
        publish.span_id, publish_span,
        "the message names its publication"
    );
    assert_eq!(
        publish.attr("messaging.message.id"),
        Some(event_id.as_str())
    );

    let mut attempts = named(&spans, "POST");
    attempts.sort_by_key(|s| s.attr("delivery.attempt").map(str::to_string));
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    for (n, (span, (_, sent_span, _))) in attempts.iter().zip(&at_agent).enumerate() {
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(
            span.parent, server_span.span_id,
            "attempt {n} in the webhook's trace"
        );
        assert_eq!(
            &span.span_id, sent_span,
            "the agent got the attempt's own span"
        );
        assert_eq!(span.attr("event.id"), Some(event_id.as_str()));
        assert_eq!(span.attr("agent.id"), Some("a"));
        assert_eq!(span.attr("url.full"), Some(agent_rx.url("/a").as_str()));
    }
    assert_eq!(attempts[0].attr("http.response.status_code"), Some("500"));
    assert_eq!(attempts[0].status, StatusCode::Error as i32);
    assert_eq!(attempts[1].attr("http.response.status_code"), Some("200"));
    assert_eq!(attempts[1].attr("http.request.resend_count"), Some("1"));
    assert_ne!(attempts[1].status, StatusCode::Error as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_in_a_new_process_after_a_crash_joins_the_webhooks_trace() {
    let collector = TestReceiver::start().await;
    let agent_rx = TestReceiver::start().await;
    // The first attempt is held until the process that made it is gone.
    let gate = Gate::default();
    agent_rx.script("/a", [Reply::Held(gate.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let env = otel_env(&collector);
    let mut server = start(dir.path(), &env).await;
    let admin = Admin::at(&server.base);
    admin
        .create_agent(agent("a", &agent_rx.url("/a"), json!({})))
        .await;
    admin
        .create_route(route("r", &["a"], policy(3, "fixed", 50, 50), json!({})))
        .await;
    let client = reqwest::Client::new();
    let event_id = Webhook::github("push", gh_body(2))
        .send_to(&client, &server.base)
        .await
        .accepted()
        .id
        .to_string();
    let first = agent_rx.wait_for("/a", 1, Duration::from_secs(20)).await;
    let (trace, _, _) = traceparent(first[0].header("traceparent").unwrap());
    // The webhook's span is exported before the crash (its attempt's span never will be).
    let spans = spans_until(&collector, "the webhook's span", |s| {
        s.iter()
            .any(|s| s.name == "POST /webhook/{source}" && s.trace_id == trace)
    })
    .await;
    let server_span = spans
        .iter()
        .find(|s| s.name == "POST /webhook/{source}" && s.trace_id == trace)
        .unwrap()
        .clone();
    assert_eq!(server_span.attr("event.id"), Some(event_id.as_str()));
    server.child.start_kill().unwrap();
    let _ = server.child.wait().await;
    gate.open();

    // Another process on the same store takes the delivery over: its attempt continues the
    // trace stored with the delivery.
    let _server = start(dir.path(), &env).await;
    let got = agent_rx.wait_for("/a", 2, Duration::from_secs(20)).await;
    let (again, attempt_span, _) = traceparent(got[1].header("traceparent").unwrap());
    assert_eq!(again, trace, "the same trace after the restart");
    let spans = spans_until(&collector, "the attempt after the restart", |s| {
        s.iter().any(|s| s.span_id == attempt_span)
    })
    .await;
    let attempt = spans.iter().find(|s| s.span_id == attempt_span).unwrap();
    assert_eq!(attempt.name, "POST");
    assert_eq!(attempt.trace_id, trace);
    assert_eq!(attempt.parent, server_span.span_id);
    assert_eq!(attempt.attr("event.id"), Some(event_id.as_str()));
    assert_eq!(attempt.attr("http.response.status_code"), Some("200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sampling_off_nothing_is_exported_and_the_context_still_travels() {
    let collector = TestReceiver::start().await;
    let agent_rx = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = otel_env(&collector);
    env.push(("OTEL_TRACES_SAMPLER", "always_off".into()));
    let mut server = start(dir.path(), &env).await;
    let admin = Admin::at(&server.base);
    admin
        .create_agent(agent("a", &agent_rx.url("/a"), json!({})))
        .await;
    admin
        .create_route(route("r", &["a"], policy(3, "fixed", 50, 50), json!({})))
        .await;
    let client = reqwest::Client::new();
    Webhook::github("push", gh_body(3))
        .send_to(&client, &server.base)
        .await
        .accepted();
    let got = agent_rx.wait_for("/a", 1, Duration::from_secs(20)).await;
    let (_, _, flags) = traceparent(got[0].header("traceparent").unwrap());
    assert_eq!(flags, "00", "not sampled, as the agent is told");
    // A graceful stop flushes whatever was buffered: after it, nothing more can come.
    let pid = server.child.id().unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(exported(&collector).is_empty(), "no span is exported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_name_their_trace_and_span() {
    let collector = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = otel_env(&collector);
    env.push(("LOG_FORMAT", "json".into()));
    // The router's own debug lines (the refusal is one), not its libraries': a database
    // driver's debug output would fill the pipe before the test starts reading it.
    env.push(("LOG_LEVEL", "warn,event_router=debug".into()));
    let mut server = start(dir.path(), &env).await;
    // The log, read to its end (a pipe left unread would stall the server once full).
    let mut stderr = tokio::io::BufReader::new(server.child.stderr.take().unwrap()).lines();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = lines_tx.send(v);
            }
        }
    });
    // A refused webhook is logged inside its span.
    let client = reqwest::Client::new();
    let answer = Webhook::github_with("not-the-secret", "push", gh_body(4))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .send_to(&client, &server.base)
        .await;
    assert_eq!(answer.status, 401);
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let v = lines.recv().await.expect("the log goes on");
            if v["message"] == "webhook refused" {
                return v;
            }
        }
    })
    .await
    .expect("the refusal is logged");
    assert_eq!(line["trace_id"], CALLER_TRACE, "{line}");
    let span_id = line["span_id"].as_str().expect("a span id");
    assert_eq!(span_id.len(), 16);
    assert_ne!(span_id, CALLER_SPAN, "the router's own span");
    let spans = spans_until(&collector, "the refused webhook's span", |s| {
        s.iter().any(|s| s.span_id == span_id)
    })
    .await;
    let span = spans.iter().find(|s| s.span_id == span_id).unwrap();
    assert_eq!(span.name, "POST /webhook/{source}");
    assert_eq!(span.attr("http.response.status_code"), Some("401"));
    assert_ne!(
        span.status,
        StatusCode::Error as i32,
        "a refusal is the caller's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exports_over_http2_to_the_endpoint() {
    // A collector's port: what arrives first is an HTTP/2 connection preface, i.e. the gRPC
    // exporter was chosen and is sending (the spans themselves are decoded in the tests above).
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let agent_rx = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_string()),
    ];
    let server = start(dir.path(), &env).await;
    let admin = Admin::at(&server.base);
    admin
        .create_agent(agent("a", &agent_rx.url("/a"), json!({})))
        .await;
    admin
        .create_route(route("r", &["a"], policy(3, "fixed", 50, 50), json!({})))
        .await;
    Webhook::github("push", gh_body(5))
        .send_to(&reqwest::Client::new(), &server.base)
        .await
        .accepted();
    let got = agent_rx.wait_for("/a", 1, Duration::from_secs(20)).await;
    traceparent(got[0].header("traceparent").expect("a traceparent"));
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(20), collector.accept())
        .await
        .expect("the exporter connects")
        .unwrap();
    let mut preface = [0u8; 24];
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_exact(&mut conn, &mut preface),
    )
    .await
    .expect("the exporter sends")
    .unwrap();
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_consumer_gets_the_webhooks_trace_with_each_lease() {
    let collector = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &otel_env(&collector)).await;
    let admin = Admin::at(&server.base);
    admin
        .create_agent(json!({ "id": "p", "name": "puller", "mode": "pull" }))
        .await;
    admin
        .create_route(route("r", &["p"], policy(3, "fixed", 50, 50), json!({})))
        .await;
    let client = reqwest::Client::new();
    Webhook::github("push", gh_body(1))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "caller=1")
        .send_to(&client, &server.base)
        .await
        .accepted();
    let v: serde_json::Value = client
        .get(format!("{}/agents/p/deliveries?waitMs=5000", server.base))
        .bearer_auth(AGENT_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let item = &v["items"][0];
    let (trace, _, flags) = traceparent(item["traceparent"].as_str().expect("a traceparent"));
    assert_eq!(trace, CALLER_TRACE, "{v}");
    assert_eq!(flags, "01");
    assert_eq!(item["tracestate"], "caller=1", "{v}");
}
