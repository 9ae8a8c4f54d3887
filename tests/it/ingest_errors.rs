//! Every refusal of API.md section 3's table (but 429 and queue_full), each in the contract's
//! error form and storing nothing, and malformed input of every kind.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use event_router::providers::{github, linear, slack};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::signed::*;
use crate::support::*;

const GITHUB_PR: &[u8] = include_bytes!("../../examples/github-pull_request.json");
const LINEAR_ISSUE: &[u8] = include_bytes!("../../examples/linear-issue.json");
const SLACK_MESSAGE: &[u8] = include_bytes!("../../examples/slack-message.json");
const INTERNAL_BUILD: &[u8] = include_bytes!("../../examples/internal-build.json");
const FORM: &str = "application/x-www-form-urlencoded";

/// An object nested `depth` containers deep: `{"a":{"a":{}}}` is 3.
fn nested_objects(depth: usize) -> Vec<u8> {
    format!(
        "{}{{}}{}",
        "{\"a\":".repeat(depth - 1),
        "}".repeat(depth - 1)
    )
    .into_bytes()
}

/// An object holding arrays, `depth` containers deep in all: `{"a":[[]]}` is 3.
fn nested_arrays(depth: usize) -> Vec<u8> {
    format!(
        "{{\"a\":{}{}}}",
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
    .into_bytes()
}

#[tokio::test]
async fn bodies_that_are_not_a_json_object_are_invalid_body() {
    let app = TestApp::spawn().await;
    let json = "application/json";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"hello, world".to_vec(), json),
        (
            "truncated JSON",
            GITHUB_PR[..GITHUB_PR.len() / 2].to_vec(),
            json,
        ),
        ("trailing garbage", b"{\"a\":1} x".to_vec(), json),
        ("an array", b"[1,2,3]".to_vec(), json),
        ("a string", b"\"text\"".to_vec(), json),
        ("a number", b"42".to_vec(), json),
        ("null", b"null".to_vec(), json),
        ("empty", Vec::new(), json),
        ("whitespace only", b" \r\n\t ".to_vec(), json),
        (
            "invalid UTF-8 in a string",
            b"{\"a\":\"\xff\xfe\"}".to_vec(),
            json,
        ),
        (
            "invalid UTF-8 at the start",
            b"\xef\xbb{\"a\":1}".to_vec(),
            json,
        ),
        (
            "form: payload not JSON",
            b"payload=%7Bnot+json".to_vec(),
            FORM,
        ),
        ("form: payload an array", b"payload=%5B1%5D".to_vec(), FORM),
        ("form: empty", Vec::new(), FORM),
        ("form: invalid UTF-8", b"payload=\xff\xfe".to_vec(), FORM),
        ("wrong content type", GITHUB_PR.to_vec(), "text/plain"),
        ("xml content type", b"<a/>".to_vec(), "application/xml"),
        (
            "multipart",
            GITHUB_PR.to_vec(),
            "multipart/form-data; boundary=x",
        ),
        ("object 129 deep", nested_objects(129), json),
        ("arrays 129 deep", nested_arrays(129), json),
    ];
    for (what, body, content_type) in cases {
        let a = Webhook::github("push", body)
            .header("content-type", content_type)
            .send(&app)
            .await;
        assert_eq!(
            a.status,
            400,
            "{what}: {}",
            String::from_utf8_lossy(&a.bytes)
        );
        a.refused(400, "invalid_body");
    }
    assert_archive_empty(&app).await;
    app.stop().await;
}

/// GitHub's form bodies carry the JSON in a `payload` field; a form without one is not a GitHub
/// webhook, however well signed (plain form fields are Slack slash commands' alone).
#[tokio::test]
async fn a_github_form_body_without_payload_is_invalid_body() {
    let app = TestApp::spawn().await;
    for body in [
        &b"zen=Keep+it+logically+awesome.&hook_id=1"[..],
        b"action=opened&number=1",
        b"payloads=%7B%7D",
        b"Payload=%7B%22action%22%3A%22opened%22%7D",
    ] {
        let a = Webhook::github("push", body)
            .header("content-type", FORM)
            .send(&app)
            .await;
        a.refused(400, "invalid_body");
        assert_eq!(
            a.json()["error"],
            "the form body has no payload field",
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    assert_archive_empty(&app).await;
    // The same JSON in a `payload` field is accepted, other fields beside it ignored.
    let ok = Webhook::github(
        "push",
        &b"hook_id=1&payload=%7B%22action%22%3A%22opened%22%7D"[..],
    )
    .header("content-type", FORM)
    .send(&app)
    .await
    .accepted();
    let event = archived_event(&app, ok.id).await;
    assert_eq!(event["payload"], json!({"action": "opened"}));
    assert_eq!(event["action"], "opened");
    app.stop().await;
}

#[tokio::test]
async fn nesting_of_128_is_accepted_and_129_refused() {
    let app = TestApp::spawn().await;
    for body in [nested_objects(128), nested_arrays(128)] {
        let ok = Webhook::github("push", body).send(&app).await.accepted();
        archived_event(&app, ok.id).await;
    }
    for body in [nested_objects(129), nested_arrays(129)] {
        Webhook::github("push", body)
            .send(&app)
            .await
            .refused(400, "invalid_body");
    }
    assert_eq!(archived_ids(&app).await.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn missing_malformed_or_wrong_signatures_are_refused() {
    let app = TestApp::spawn().await;
    let gh = Webhook::github("pull_request", GITHUB_PR);
    let good_hex = gh.header_str("x-hub-signature-256").unwrap()[7..].to_string();
    let other_body = Webhook::github("pull_request", &b"{}"[..])
        .header_str("x-hub-signature-256")
        .unwrap();
    let now_s = now_ms() / 1000;
    let slack = Webhook::slack(SLACK_MESSAGE, "application/json");
    let std_hook = Webhook::standard("msg_sig", INTERNAL_BUILD);
    let cases: Vec<(&str, Webhook)> = vec![
        ("github: missing", gh.clone().without("x-hub-signature-256")),
        (
            "github: empty",
            gh.clone().header("x-hub-signature-256", ""),
        ),
        (
            "github: no prefix",
            gh.clone().header("x-hub-signature-256", good_hex.clone()),
        ),
        (
            "github: sha1 prefix",
            gh.clone()
                .header("x-hub-signature-256", format!("sha1={good_hex}")),
        ),
        (
            "github: not hex",
            gh.clone()
                .header("x-hub-signature-256", format!("sha256={}", "zz".repeat(32))),
        ),
        (
            "github: short",
            gh.clone()
                .header("x-hub-signature-256", format!("sha256={}", &good_hex[..62])),
        ),
        (
            "github: long",
            gh.clone()
                .header("x-hub-signature-256", format!("sha256={good_hex}00")),
        ),
        (
            "github: another body's",
            gh.clone().header("x-hub-signature-256", other_body),
        ),
        (
            "github: wrong secret",
            Webhook::github_with("wrong", "pull_request", GITHUB_PR),
        ),
        (
            "github: body changed",
            Webhook {
                body: GITHUB_PR[..GITHUB_PR.len() - 2].to_vec(),
                ..gh.clone()
            },
        ),
        (
            "linear: missing",
            Webhook::linear(LINEAR_ISSUE, Some(now_ms())).without("linear-signature"),
        ),
        (
            "linear: github style",
            Webhook::linear(LINEAR_ISSUE, Some(now_ms())).header(
                "linear-signature",
                github::sign(LINEAR_SECRET.as_bytes(), LINEAR_ISSUE),
            ),
        ),
        (
            "linear: wrong secret",
            Webhook::linear(LINEAR_ISSUE, Some(now_ms()))
                .header("linear-signature", linear::sign(b"wrong", LINEAR_ISSUE)),
        ),
        ("slack: missing", slack.clone().without("x-slack-signature")),
        (
            "slack: timestamp missing",
            slack.clone().without("x-slack-request-timestamp"),
        ),
        (
            "slack: signed for another timestamp",
            slack
                .clone()
                .header("x-slack-request-timestamp", (now_s - 1).to_string()),
        ),
        (
            "slack: v1 prefix",
            slack.clone().header(
                "x-slack-signature",
                slack::sign(SLACK_SECRET.as_bytes(), now_s, SLACK_MESSAGE).replace("v0=", "v1="),
            ),
        ),
        (
            "slack: wrong secret",
            slack
                .clone()
                .header(
                    "x-slack-signature",
                    slack::sign(b"wrong", now_s, SLACK_MESSAGE),
                )
                .header("x-slack-request-timestamp", now_s.to_string()),
        ),
        (
            "internal: no credentials",
            Webhook::bare("internal", INTERNAL_BUILD).header("content-type", "application/json"),
        ),
        (
            "internal: signature missing",
            std_hook.clone().without("webhook-signature"),
        ),
        (
            "internal: id missing",
            std_hook.clone().without("webhook-id"),
        ),
        (
            "internal: timestamp missing",
            std_hook.clone().without("webhook-timestamp"),
        ),
        (
            "internal: signed for another id",
            std_hook.clone().header("webhook-id", "msg_other"),
        ),
        (
            "internal: version 2 only",
            std_hook.clone().header(
                "webhook-signature",
                std_hook
                    .header_str("webhook-signature")
                    .unwrap()
                    .replace("v1,", "v2,"),
            ),
        ),
        (
            "internal: not base64",
            std_hook.clone().header("webhook-signature", "v1,!!!!"),
        ),
        (
            "internal: wrong secret",
            Webhook::standard_with(
                &event_router::providers::standard::generate_secret(),
                "msg_sig",
                now_s,
                INTERNAL_BUILD,
            ),
        ),
        (
            "internal: bearer without key",
            Webhook::bearer("", INTERNAL_BUILD).header("authorization", "Bearer "),
        ),
        (
            "internal: basic auth",
            Webhook::bare("internal", INTERNAL_BUILD).header("authorization", "Basic YTpi"),
        ),
        (
            "internal: admin key is not an agent key",
            Webhook::bearer(ADMIN_KEY, INTERNAL_BUILD),
        ),
    ];
    for (what, w) in cases {
        let a = w.send(&app).await;
        assert_eq!(
            a.status,
            401,
            "{what}: {}",
            String::from_utf8_lossy(&a.bytes)
        );
        let msg = a.refused(401, "invalid_signature");
        assert_eq!(msg, "Invalid webhook signature", "{what}");
    }
    assert_archive_empty(&app).await;
    app.stop().await;
}

/// A correctly signed Linear webhook with no timestamp at all (no `Linear-Timestamp`, no
/// `webhookTimestamp`) is not a replay but a request Linear did not send: `401
/// invalid_signature`, saying the timestamp is missing (issue #32). A present but unreadable
/// one stays `stale_timestamp`.
#[tokio::test]
async fn a_linear_webhook_without_any_timestamp_is_an_invalid_signature_saying_so() {
    let app = TestApp::spawn().await;
    let mut body: Value = serde_json::from_slice(LINEAR_ISSUE).unwrap();
    body.as_object_mut().unwrap().remove("webhookTimestamp");
    let untimed = serde_json::to_vec(&body).unwrap();
    let a = Webhook::linear(untimed.clone(), None).send(&app).await;
    let message = a.refused(401, "invalid_signature");
    assert!(
        message.starts_with("Invalid webhook signature")
            && message.contains("timestamp is missing")
            && message.contains("Linear-Timestamp")
            && message.contains("webhookTimestamp"),
        "{message}"
    );
    // The body's timestamp alone is enough; an unreadable header, or the body's 0, is not
    // "missing" but outside the window.
    body["webhookTimestamp"] = json!(now_ms());
    Webhook::linear(serde_json::to_vec(&body).unwrap(), None)
        .send(&app)
        .await
        .accepted();
    Webhook::linear(untimed, None)
        .header("linear-timestamp", "soon")
        .send(&app)
        .await
        .refused(401, "stale_timestamp");
    Webhook::linear(LINEAR_ISSUE, None)
        .send(&app)
        .await
        .refused(401, "stale_timestamp");
    let (_, v) = app.admin_get("/admin/events?source=linear").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
    app.stop().await;
}

#[tokio::test]
async fn timestamps_outside_the_window_are_stale() {
    let app = TestApp::spawn().await;
    let now = now_ms();
    let mut old_body: Value = serde_json::from_slice(LINEAR_ISSUE).unwrap();
    old_body["webhookTimestamp"] = json!(now - 61_000);
    let old_body = serde_json::to_vec(&old_body).unwrap();
    let cases: Vec<(&str, Webhook)> = vec![
        (
            "linear header 61 s old",
            Webhook::linear(LINEAR_ISSUE, Some(now - 61_000)),
        ),
        (
            "linear header 61 s ahead",
            Webhook::linear(LINEAR_ISSUE, Some(now + 61_000)),
        ),
        ("linear body 61 s old", Webhook::linear(old_body, None)),
        (
            "slack 301 s old",
            Webhook::slack_at(SLACK_MESSAGE, "application/json", now / 1000 - 301),
        ),
        (
            "slack 301 s ahead",
            Webhook::slack_at(SLACK_MESSAGE, "application/json", now / 1000 + 302),
        ),
        (
            "standard 301 s old",
            Webhook::standard_at("msg_old", now / 1000 - 301, INTERNAL_BUILD),
        ),
        (
            "standard 301 s ahead",
            Webhook::standard_at("msg_new", now / 1000 + 302, INTERNAL_BUILD),
        ),
    ];
    for (what, w) in cases {
        let a = w.send(&app).await;
        assert_eq!(
            a.status,
            401,
            "{what}: {}",
            String::from_utf8_lossy(&a.bytes)
        );
        a.refused(401, "stale_timestamp");
    }
    assert_archive_empty(&app).await;

    // Just inside each window is accepted.
    let now = now_ms();
    Webhook::linear(LINEAR_ISSUE, Some(now - 50_000))
        .send(&app)
        .await
        .accepted();
    Webhook::slack_at(SLACK_MESSAGE, "application/json", now / 1000 - 290)
        .send(&app)
        .await
        .accepted();
    Webhook::standard_at("msg_ok", now / 1000 - 290, INTERNAL_BUILD)
        .send(&app)
        .await
        .accepted();
    assert_eq!(archived_ids(&app).await.len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn unknown_source_is_404() {
    let app = TestApp::spawn().await;
    for source in ["nope", "GitHub", "githubx", "internal2"] {
        Webhook::github("push", GITHUB_PR)
            .to(source)
            .send(&app)
            .await
            .refused(404, "unknown_source");
    }
    assert_archive_empty(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn source_without_a_secret_is_503() {
    let app = TestApp::spawn_with(|cfg| {
        cfg.sources.get_mut("github").unwrap().secret = None;
        cfg.sources.get_mut("slack").unwrap().secret = None;
        cfg.sources.get_mut("internal").unwrap().secret = None;
        cfg.agent_api_key = None;
    })
    .await;
    let cases = [
        Webhook::github("push", GITHUB_PR),
        Webhook::github("push", GITHUB_PR).without("x-hub-signature-256"),
        Webhook::slack(SLACK_MESSAGE, "application/json"),
        Webhook::standard("msg_1", INTERNAL_BUILD),
        Webhook::bearer(AGENT_KEY, INTERNAL_BUILD),
    ];
    for w in cases {
        w.send(&app).await.refused(503, "source_not_configured");
    }
    // The sources that do have a secret still work.
    Webhook::linear(LINEAR_ISSUE, Some(now_ms()))
        .send(&app)
        .await
        .accepted();
    assert_eq!(archived_ids(&app).await.len(), 1);
    app.stop().await;
}

/// A JSON object of exactly `len` bytes.
fn body_of_len(len: usize) -> Vec<u8> {
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(len - 10));
    assert_eq!(body.len(), len);
    body.into_bytes()
}

#[tokio::test]
async fn body_over_max_event_size_is_413() {
    let app = TestApp::spawn_with(|cfg| cfg.max_event_size = 1024).await;
    Webhook::github("push", body_of_len(1024))
        .send(&app)
        .await
        .accepted();
    let a = Webhook::github("push", body_of_len(1025)).send(&app).await;
    a.refused(413, "payload_too_large");
    let a = Webhook::github("push", body_of_len(200_000))
        .send(&app)
        .await;
    a.refused(413, "payload_too_large");
    // Form bodies count their encoded bytes.
    let form_body = format!("payload={}", "%20".repeat(400)).into_bytes();
    Webhook::github("push", form_body)
        .header("content-type", FORM)
        .send(&app)
        .await
        .refused(413, "payload_too_large");
    assert_eq!(archived_ids(&app).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_refused_without_reading_it_all() {
    const CHUNK: usize = 16 * 1024;
    const OFFERED: usize = 64 * 1024 * 1024;
    const BOUND: usize = 16 * 1024 * 1024;
    let app = TestApp::spawn_with(|cfg| cfg.max_event_size = 1024).await;
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    // A body of unknown length that counts what the client pulls from it; a server that read it
    // all before answering would pull every one of the 64 MiB.
    let chunks = futures_util::stream::unfold(0usize, move |sent| {
        let counter = counter.clone();
        async move {
            if sent >= OFFERED {
                return None;
            }
            counter.fetch_add(CHUNK, Ordering::SeqCst);
            let chunk = if sent == 0 {
                let mut c = b"{\"pad\":\"".to_vec();
                c.resize(CHUNK, b'x');
                c
            } else {
                vec![b'x'; CHUNK]
            };
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), sent + CHUNK))
        }
    });
    let send = app
        .client
        .post(app.url("/webhook/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", Uuid::new_v4().to_string())
        .header(
            "x-hub-signature-256",
            github::sign(GITHUB_SECRET.as_bytes(), b""),
        )
        .body(reqwest::Body::wrap_stream(chunks))
        .send();
    let r = tokio::time::timeout(Duration::from_secs(20), send)
        .await
        .expect("the 413 arrives without the whole body being sent")
        .expect("the client gets the answer");
    let a = Answer::read(r).await;
    let sent = pulled.load(Ordering::SeqCst);
    eprintln!("413 after the client produced {sent} bytes");
    a.refused(413, "payload_too_large");
    assert!(
        sent < BOUND,
        "the client had to produce {sent} bytes before the 413 (limit 1024)"
    );
    assert_archive_empty(&app).await;
    app.stop().await;
}

/// What a malformed request must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status and code, in the contract's error form.
    Code(u16, &'static str),
    /// Some 4xx in the contract's error form.
    Refused,
    /// Refused by the HTTP layer before any handler: some 4xx, any body.
    Transport,
    /// Either accepted (and then readable from the archive) or 400 invalid_body.
    AcceptedOrInvalid,
}

const BODY: Expect = Expect::Code(400, "invalid_body");
const SIG: Expect = Expect::Code(401, "invalid_signature");
const NO_SOURCE: Expect = Expect::Code(404, "unknown_source");

#[tokio::test]
async fn malformed_input_never_breaks_the_server() {
    use Expect::{AcceptedOrInvalid, Refused, Transport};
    let app = TestApp::spawn().await;
    let json = "application/json";
    let gh = |body: &[u8]| Webhook::github("push", body.to_vec());
    let pr = || gh(GITHUB_PR);
    let linear = || Webhook::linear(LINEAR_ISSUE, Some(now_ms()));
    let slack = || Webhook::slack(SLACK_MESSAGE, json);
    let standard = || Webhook::standard("msg_u", INTERNAL_BUILD);
    let now_s = now_ms() / 1000;
    let digits = format!("{{\"n\":{}}}", "9".repeat(5000));
    let long = format!("sha256={}", "a".repeat(64 * 1024));
    let mut many_headers = pr().header("x-hub-signature-256", "sha256=00");
    for i in 0..80 {
        many_headers = many_headers.header(&format!("x-extra-{i}"), "v");
    }
    let mut too_many_headers = pr();
    for i in 0..2000 {
        too_many_headers = too_many_headers.header(&format!("x-extra-{i}"), "v");
    }
    let deep_arrays = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let open_only = "[{\"a\":".repeat(5_000);

    // Requests to their own source's path.
    #[rustfmt::skip]
    let requests: Vec<(&str, Webhook, Expect)> = vec![
        // Bodies, correctly signed.
        ("invalid UTF-8 in JSON", gh(b"{\"a\":\"\xc3\x28\"}"), BODY),
        ("overlong UTF-8 in JSON", gh(b"{\"a\":\"\xc0\xaf\"}"), BODY),
        ("invalid UTF-8 in a form", Webhook::slack(&b"command=/x&text=\xff"[..], FORM), BODY),
        ("truncated JSON", gh(&GITHUB_PR[..100]), BODY),
        ("unterminated string", gh(b"{\"a\":\"abc"), BODY),
        ("10,000 nested arrays", gh(deep_arrays.as_bytes()), BODY),
        ("10,000 nested objects", gh(deep_objects.as_bytes()), BODY),
        ("10,000 unclosed", gh(open_only.as_bytes()), BODY),
        ("10,000 nested, unsigned", gh(deep_arrays.as_bytes()).without("x-hub-signature-256"), SIG),
        ("huge exponent", gh(b"{\"n\":1e999999}"), AcceptedOrInvalid),
        ("huge negative", gh(b"{\"n\":-1e400}"), AcceptedOrInvalid),
        ("5,000 digits", gh(digits.as_bytes()), AcceptedOrInvalid),
        ("tiny exponent", gh(b"{\"n\":1e-999999}"), AcceptedOrInvalid),
        ("raw NUL in a string", gh(b"{\"a\":\"x\x00y\"}"), BODY),
        ("NULs only", gh(&[0u8; 1000]), BODY),
        ("NUL in a form payload", gh(b"payload=%00").header("content-type", FORM), BODY),
        ("lone surrogate escape", gh(b"{\"a\":\"\\ud800\"}"), BODY),
        // Empty bodies, signed, on every source.
        ("github empty", gh(b""), BODY),
        ("linear empty", Webhook::linear(Vec::new(), Some(now_ms())), BODY),
        ("slack empty JSON", Webhook::slack(Vec::new(), json), BODY),
        ("slack empty form", Webhook::slack(Vec::new(), FORM), BODY),
        ("internal empty", Webhook::standard("msg_e", Vec::new()), BODY),
        ("internal empty, bearer", Webhook::bearer(AGENT_KEY, Vec::new()), BODY),
        ("empty, unsigned", Webhook::bare("github", Vec::new()), SIG),
        // Headers.
        ("64 KiB signature", pr().header("x-hub-signature-256", long.clone()), SIG),
        ("64 KiB junk header", many_headers.clone().header("x-junk", long.clone()), SIG),
        ("80 extra headers", many_headers, SIG),
        ("2,000 headers", too_many_headers, Transport),
        ("NUL in a header", pr().header("x-junk", &b"a\x00b"[..]), Transport),
        ("non-UTF-8 github signature", pr().header("x-hub-signature-256", &b"sha256=\xff\xfe"[..]), SIG),
        ("non-UTF-8 linear signature", linear().header("linear-signature", &b"\xff\xfe"[..]), SIG),
        ("non-UTF-8 linear timestamp", linear().header("linear-timestamp", &b"\xff1"[..]), Refused),
        ("non-UTF-8 slack signature", slack().header("x-slack-signature", &b"v0=\xff"[..]), SIG),
        ("non-UTF-8 slack timestamp", slack().header("x-slack-request-timestamp", &b"\xff\xfe"[..]), SIG),
        ("huge slack timestamp", slack().header("x-slack-request-timestamp", "9".repeat(30)), SIG),
        ("negative slack timestamp", slack().header("x-slack-request-timestamp", format!("-{now_s}")), SIG),
        ("non-UTF-8 webhook-signature", standard().header("webhook-signature", &b"v1,\xff\xfe"[..]), SIG),
        ("non-UTF-8 webhook-id", standard().header("webhook-id", &b"\xff\xfe"[..]), SIG),
        ("non-UTF-8 webhook-timestamp", standard().header("webhook-timestamp", &b"\xff"[..]), SIG),
        ("non-UTF-8 bearer key", Webhook::bearer(AGENT_KEY, INTERNAL_BUILD).header("authorization", &b"Bearer \xff\xfe"[..]), SIG),
        ("non-UTF-8 content type", pr().header("content-type", &b"application/\xffjson"[..]), BODY),
        ("non-UTF-8 event header", pr().header("x-github-event", &b"pu\xffsh"[..]), Refused),
        ("no event header", pr().without("x-github-event"), Refused),
    ];
    // A signed GitHub request to odd paths.
    #[rustfmt::skip]
    let paths: Vec<(&str, String, Expect)> = vec![
        ("unknown source", "/webhook/nope".into(), NO_SOURCE),
        ("NUL in the source", "/webhook/gith%00ub".into(), NO_SOURCE),
        ("invalid UTF-8 source", "/webhook/%FF%FE".into(), NO_SOURCE),
        ("dot-dot source", "/webhook/%2e%2e%2fhealth".into(), NO_SOURCE),
        ("CRLF in the source", "/webhook/a%0d%0aX-Injected:%20yes".into(), NO_SOURCE),
        ("bidi override source", "/webhook/%E2%80%AEbuhtig".into(), NO_SOURCE),
        ("bad percent escape", "/webhook/%zz".into(), NO_SOURCE),
        ("8,000-char source", format!("/webhook/{}", "s".repeat(8000)), NO_SOURCE),
        ("extra segment", "/webhook/github/extra".into(), Refused),
        ("no source", "/webhook/".into(), Refused),
    ];
    let cases = requests
        .into_iter()
        .map(|(what, w, expect)| {
            let path = format!("/webhook/{}", w.source);
            (what, w, path, expect)
        })
        .chain(
            paths
                .into_iter()
                .map(|(what, path, expect)| (what, pr(), path, expect)),
        );

    // Every case runs, and every miss is reported together at the end.
    let mut accepted = Vec::new();
    let mut problems = Vec::new();
    for (what, w, path, expect) in cases {
        let a = w.send_raw(app.addr, path.as_bytes()).await;
        let show = format!(
            "{} {}",
            a.status,
            String::from_utf8_lossy(&a.bytes[..a.bytes.len().min(200)])
        );
        if a.header("x-injected").is_some() {
            problems.push(format!("{what}: a header was injected: {:?}", a.headers));
        }
        let verdict = match expect {
            Expect::Code(status, code) => a.check_refused(status, Some(code)),
            Refused if (400..500).contains(&a.status) => a.check_refused(a.status, None),
            Transport if (400..500).contains(&a.status) => Ok(()),
            Refused | Transport => Err("expected a 4xx".to_string()),
            AcceptedOrInvalid if a.status == 200 => {
                accepted.push(a.accepted().id);
                Ok(())
            }
            AcceptedOrInvalid => a.check_refused(400, Some("invalid_body")),
        };
        if let Err(e) = verdict {
            problems.push(format!("{what} ({expect:?}): {e}; got {show}"));
        }
        if let Some(msg) = a
            .json_opt()
            .and_then(|v| v["error"].as_str().map(String::from))
            && (msg.len() >= 1024 || msg.chars().any(char::is_control))
        {
            problems.push(format!("{what}: the error echoes raw input: {msg:?}"));
        }
    }

    // The server is still up, still ingests, and kept only what it accepted, readable.
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    for id in &accepted {
        let ev = archived_event(&app, *id).await;
        assert!(ev["payload"].is_object());
    }
    let mut stored = archived_ids(&app).await;
    stored.sort();
    accepted.sort();
    assert_eq!(stored, accepted, "only accepted requests are stored");
    pr().send(&app).await.accepted();
    app.stop().await;

    assert!(
        problems.is_empty(),
        "{} malformed requests were not refused in the contract's form:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// `/health` names the deployment when `environment` [`ENVIRONMENT`] is set, and leaves it out
/// when it is not.
#[tokio::test]
async fn health_names_the_environment_when_one_is_set() {
    let app = TestApp::spawn_with(|c| c.environment = Some("staging".into())).await;
    let v: serde_json::Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["environment"], "staging", "{v}");
    app.stop().await;
    let app = TestApp::spawn().await;
    let v: serde_json::Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v.get("environment").is_none(), "{v}");
    assert_eq!(v["status"], "ok");
    app.stop().await;
}
