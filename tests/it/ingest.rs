//! Ingest through the real server: every source's happy path, secret rotation, dedupe and
//! concurrent commits (API.md sections 2–4).

use std::collections::HashSet;

use event_router::config::Secret;
use futures_util::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::signed::*;
use crate::support::*;

const GITHUB_PR: &[u8] = include_bytes!("../../examples/github-pull_request.json");
const LINEAR_ISSUE: &[u8] = include_bytes!("../../examples/linear-issue.json");
const SLACK_MESSAGE: &[u8] = include_bytes!("../../examples/slack-message.json");
const INTERNAL_BUILD: &[u8] = include_bytes!("../../examples/internal-build.json");

fn parsed(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// The example body with `key` set to `value`.
fn with_field(bytes: &[u8], key: &str, value: Value) -> Vec<u8> {
    let mut v = parsed(bytes);
    v[key] = value;
    serde_json::to_vec(&v).unwrap()
}

fn form(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn signed_github_webhook_is_stored_and_readable() {
    let app = TestApp::spawn().await;
    let w = Webhook::github("pull_request", GITHUB_PR);
    let delivery = w.header_str("x-github-delivery").unwrap();
    let signature = w.header_str("x-hub-signature-256").unwrap();
    let before = now_ms();
    let ok = w.send(&app).await.accepted();
    let after = now_ms();
    assert!(
        (before - 1..=after + 1).contains(&ok.timestamp),
        "{ok:?} not within the request"
    );
    assert!(ok.processed, "no filters are configured, so it passes them");
    assert!(
        !ok.routed,
        "no agent is configured, so nothing will receive it"
    );

    let ev = archived_event(&app, ok.id).await;
    assert_event_shape(&ev, ok.id, "github", GITHUB_PR.len());
    assert_eq!(ev["type"], "pull_request");
    assert_eq!(ev["action"], "opened");
    assert_eq!(ev["deliveryId"], delivery.as_str());
    assert!((before - 1..=after + 1).contains(&ev["timestamp"].as_i64().unwrap()));
    assert_eq!(ev["payload"], parsed(GITHUB_PR));
    assert_eq!(ev["metadata"]["identifier"], "octocat");
    let headers = &ev["metadata"]["headers"];
    assert_eq!(headers["x-github-event"], "pull_request");
    assert_eq!(headers["x-github-delivery"], delivery.as_str());
    assert_eq!(headers["content-type"], "application/json");
    assert!(
        !ev.to_string().contains(&signature[7..]),
        "the signature is kept somewhere in the event"
    );
    let (status, full) = app.admin_get(&format!("/admin/events/{}", ok.id)).await;
    assert_eq!(status, 200);
    assert_eq!(full["filtered"], false);
    assert_eq!(full["deliveries"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn github_form_encoded_payload_is_the_event_payload() {
    let app = TestApp::spawn().await;
    let json_text = std::str::from_utf8(GITHUB_PR).unwrap();
    let body = form(&[("payload", json_text)]);
    let w = Webhook::github("pull_request", body.clone()).header("content-type", FORM);
    let ok = w.send(&app).await.accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_event_shape(&ev, ok.id, "github", body.len());
    assert_eq!(ev["payload"], parsed(GITHUB_PR));
    assert_eq!(ev["type"], "pull_request");
    assert_eq!(ev["action"], "opened");
    assert_eq!(ev["metadata"]["identifier"], "octocat");
    app.stop().await;
}

#[tokio::test]
async fn github_ping_is_accepted_as_type_ping() {
    let app = TestApp::spawn().await;
    let body = serde_json::to_vec(&json!({
        "zen": "Keep it logically awesome.",
        "hook_id": 12345678,
        "hook": {"type": "Repository", "id": 12345678, "events": ["*"], "active": true},
        "sender": {"login": "octocat", "id": 1}
    }))
    .unwrap();
    let ok = Webhook::github("ping", body.clone())
        .send(&app)
        .await
        .accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_event_shape(&ev, ok.id, "github", body.len());
    assert_eq!(ev["type"], "ping");
    assert_eq!(ev["action"], Value::Null, "a ping has no action");
    assert_eq!(ev["payload"]["zen"], "Keep it logically awesome.");
    app.stop().await;
}

#[tokio::test]
async fn linear_with_timestamp_header() {
    let app = TestApp::spawn().await;
    let w = Webhook::linear(LINEAR_ISSUE, Some(now_ms()));
    let delivery = w.header_str("linear-delivery").unwrap();
    let ok = w.send(&app).await.accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_event_shape(&ev, ok.id, "linear", LINEAR_ISSUE.len());
    assert_eq!(ev["type"], "issue");
    assert_eq!(ev["action"], "create");
    assert_eq!(ev["deliveryId"], delivery.as_str());
    assert_eq!(ev["payload"], parsed(LINEAR_ISSUE));
    assert_eq!(
        ev["metadata"]["identifier"],
        "2a8a4b2c-8f1e-4a1b-9c3d-1f2e3d4c5b6a"
    );
    assert!(ev["metadata"]["headers"].get("linear-signature").is_none());
    assert_eq!(
        ev["metadata"]["headers"]["linear-delivery"],
        delivery.as_str()
    );
    app.stop().await;
}

#[tokio::test]
async fn linear_with_body_webhook_timestamp_only_and_camel_case_type() {
    let app = TestApp::spawn().await;
    let mut v = parsed(LINEAR_ISSUE);
    v["webhookTimestamp"] = json!(now_ms() - 5_000);
    v["type"] = json!("IssueLabel");
    v["action"] = json!("update");
    let body = serde_json::to_vec(&v).unwrap();
    let ok = Webhook::linear(body.clone(), None)
        .send(&app)
        .await
        .accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_event_shape(&ev, ok.id, "linear", body.len());
    assert_eq!(ev["type"], "issue_label");
    assert_eq!(ev["action"], "update");
    assert_eq!(ev["payload"], v);
    app.stop().await;
}

#[tokio::test]
async fn slack_event_callback_type_and_subtype() {
    let app = TestApp::spawn().await;
    let ok = Webhook::slack(SLACK_MESSAGE, "application/json")
        .send(&app)
        .await
        .accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_event_shape(&ev, ok.id, "slack", SLACK_MESSAGE.len());
    assert_eq!(ev["type"], "message");
    assert_eq!(ev["action"], Value::Null, "no subtype, no action");
    assert_eq!(ev["deliveryId"], "Ev123ABC456");
    assert_eq!(ev["metadata"]["identifier"], "T123ABC456");
    assert_eq!(ev["payload"], parsed(SLACK_MESSAGE));
    assert!(ev["metadata"]["headers"].get("x-slack-signature").is_none());

    let mut v = parsed(SLACK_MESSAGE);
    v["event_id"] = json!("Ev0002");
    v["event"]["subtype"] = json!("bot_message");
    let body = serde_json::to_vec(&v).unwrap();
    let ok = Webhook::slack(body.clone(), "application/json")
        .send(&app)
        .await
        .accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_event_shape(&ev, ok.id, "slack", body.len());
    assert_eq!(ev["type"], "message");
    assert_eq!(ev["action"], "bot_message");
    assert_eq!(ev["deliveryId"], "Ev0002");
    app.stop().await;
}

#[tokio::test]
async fn slack_interactivity_form_payload() {
    let app = TestApp::spawn().await;
    let inner = json!({
        "type": "block_actions",
        "team": {"id": "T9TEAM", "domain": "acme"},
        "user": {"id": "U1", "username": "ana"},
        "actions": [{"action_id": "approve", "type": "button", "value": "yes"}],
        "trigger_id": "123.456.abc"
    });
    let body = form(&[("payload", &inner.to_string())]);
    let ok = Webhook::slack(body.clone(), FORM)
        .send(&app)
        .await
        .accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_event_shape(&ev, ok.id, "slack", body.len());
    assert_eq!(ev["type"], "block_actions");
    assert_eq!(ev["payload"], inner);
    assert_eq!(ev["deliveryId"], Value::Null, "no event_id, no delivery id");
    assert_eq!(
        ev["metadata"]["identifier"], "T9TEAM",
        "no payload.team_id: the identifier is payload.team.id"
    );
    app.stop().await;
}

#[tokio::test]
async fn slack_slash_command_form_fields() {
    let app = TestApp::spawn().await;
    let fields = [
        ("token", "gIkuvaNzQIHg97ATvDxqgjtO"),
        ("team_id", "T0001"),
        ("team_domain", "example"),
        ("channel_id", "C2147483705"),
        ("user_id", "U2147483697"),
        ("command", "/deploy"),
        ("text", "prod now & then"),
        ("response_url", "https://hooks.slack.com/commands/1234/5678"),
        ("trigger_id", "13345224609.738474920.8088930838d88f008e0"),
    ];
    let body = form(&fields);
    let ok = Webhook::slack(body.clone(), FORM)
        .send(&app)
        .await
        .accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_event_shape(&ev, ok.id, "slack", body.len());
    assert_eq!(ev["type"], "slash_command");
    assert_eq!(ev["action"], "/deploy");
    let expected: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    assert_eq!(ev["payload"], Value::Object(expected));
    assert_eq!(ev["metadata"]["identifier"], "T0001");
    app.stop().await;
}

#[tokio::test]
async fn slack_url_verification_answers_the_challenge_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P";
    let body = json!({"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge,
                      "type": "url_verification"})
    .to_string();
    let a = Webhook::slack(body.clone(), "application/json")
        .send(&app)
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), json!({ "challenge": challenge }));
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    // Unsigned, it is refused like any other request.
    let a = Webhook::slack(body, "application/json")
        .without("x-slack-signature")
        .send(&app)
        .await;
    a.refused(401, "invalid_signature");
    assert_archive_empty(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn internal_standard_webhooks_signature() {
    let app = TestApp::spawn().await;
    let ok = Webhook::standard("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", INTERNAL_BUILD)
        .send(&app)
        .await
        .accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_event_shape(&ev, ok.id, "internal", INTERNAL_BUILD.len());
    assert_eq!(ev["type"], "build.completed");
    assert_eq!(ev["action"], "succeeded");
    assert_eq!(ev["deliveryId"], "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
    assert_eq!(ev["payload"], parsed(INTERNAL_BUILD));
    assert_eq!(ev["metadata"]["identifier"], "127.0.0.1");
    assert_eq!(
        ev["metadata"]["headers"]["webhook-id"],
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
    );

    // Several space-separated signatures: any one that matches is enough.
    let w = Webhook::standard("msg_two", INTERNAL_BUILD);
    let good = w.header_str("webhook-signature").unwrap();
    let w = w.header(
        "webhook-signature",
        format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v2,xyz {good}"),
    );
    w.send(&app).await.accepted();
    app.stop().await;
}

#[tokio::test]
async fn internal_secret_without_whsec_prefix_is_accepted() {
    let bare = INTERNAL_SECRET.strip_prefix("whsec_").unwrap().to_string();
    let app = TestApp::spawn_with(|cfg| {
        cfg.sources.get_mut("internal").unwrap().secret = Some(Secret(bare.clone()));
    })
    .await;
    Webhook::standard("msg_bare", INTERNAL_BUILD)
        .send(&app)
        .await
        .accepted();
    app.stop().await;
}

#[tokio::test]
async fn internal_with_agent_key_and_type_from_body_or_header() {
    let app = TestApp::spawn().await;
    // No `type` in the body: the X-Event-Type header names it.
    let body = br#"{"job": 42, "status": "started"}"#;
    let ok = Webhook::bearer(AGENT_KEY, body.to_vec())
        .header("x-event-type", "deploy.started")
        .send(&app)
        .await
        .accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_event_shape(&ev, ok.id, "internal", body.len());
    assert_eq!(ev["type"], "deploy.started");
    assert_eq!(ev["deliveryId"], Value::Null);
    assert!(!ev.to_string().contains(AGENT_KEY), "the agent key is kept");

    // The body's `type` wins over the header.
    let ok = Webhook::bearer(AGENT_KEY, INTERNAL_BUILD)
        .header("x-event-type", "ignored.type")
        .send(&app)
        .await
        .accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_eq!(ev["type"], "build.completed");

    // A wrong key is a bad signature.
    Webhook::bearer("not-the-agent-key", INTERNAL_BUILD)
        .send(&app)
        .await
        .refused(401, "invalid_signature");
    app.stop().await;
}

#[tokio::test]
async fn internal_is_enabled_by_the_agent_key_alone() {
    let app = TestApp::spawn_with(|cfg| {
        cfg.sources.get_mut("internal").unwrap().secret = None;
    })
    .await;
    Webhook::bearer(AGENT_KEY, INTERNAL_BUILD)
        .send(&app)
        .await
        .accepted();
    // Without a secret, a Standard Webhooks signature cannot verify.
    Webhook::standard("msg_1", INTERNAL_BUILD)
        .send(&app)
        .await
        .refused(401, "invalid_signature");
    app.stop().await;
}

#[tokio::test]
async fn rotation_accepts_every_listed_secret_and_no_other() {
    let second = event_router::providers::standard::generate_secret();
    let internal_list = format!("{INTERNAL_SECRET}, {second}");
    let app = TestApp::spawn_with(|cfg| {
        cfg.sources.get_mut("github").unwrap().secret =
            Some(Secret("old-secret,new-secret".into()));
        cfg.sources.get_mut("internal").unwrap().secret = Some(Secret(internal_list.clone()));
    })
    .await;
    let a = Webhook::github_with("old-secret", "push", GITHUB_PR)
        .send(&app)
        .await
        .accepted();
    let b = Webhook::github_with("new-secret", "push", GITHUB_PR)
        .send(&app)
        .await
        .accepted();
    let msg = Webhook::github_with("third-secret", "push", GITHUB_PR)
        .send(&app)
        .await
        .refused(401, "invalid_signature");
    assert_eq!(msg, "Invalid webhook signature");
    // The whole list as one secret is not a secret either.
    Webhook::github_with("old-secret,new-secret", "push", GITHUB_PR)
        .send(&app)
        .await
        .refused(401, "invalid_signature");

    let ts = now_ms() / 1000;
    let c = Webhook::standard_with(INTERNAL_SECRET, "msg_a", ts, INTERNAL_BUILD)
        .send(&app)
        .await
        .accepted();
    let d = Webhook::standard_with(&second, "msg_b", ts, INTERNAL_BUILD)
        .send(&app)
        .await
        .accepted();
    let third = event_router::providers::standard::generate_secret();
    Webhook::standard_with(&third, "msg_c", ts, INTERNAL_BUILD)
        .send(&app)
        .await
        .refused(401, "invalid_signature");

    let mut stored = archived_ids(&app).await;
    stored.sort();
    let mut expected = vec![a.id, b.id, c.id, d.id];
    expected.sort();
    assert_eq!(stored, expected);
    app.stop().await;
}

#[tokio::test]
async fn github_redelivery_is_a_duplicate_of_the_original() {
    let app = TestApp::spawn().await;
    let w = Webhook::github("pull_request", GITHUB_PR);
    let first = w.send(&app).await.accepted();
    let again = w.send(&app).await.duplicate();
    assert_eq!(again.id, first.id);
    assert_eq!(again.processed, first.processed);
    assert_eq!(again.routed, first.routed);
    // A redelivery with a different body (re-signed) is still the same delivery.
    let changed = Webhook::github("pull_request", with_field(GITHUB_PR, "number", json!(1)))
        .header(
            "x-github-delivery",
            w.header_str("x-github-delivery").unwrap(),
        );
    assert_eq!(changed.send(&app).await.duplicate().id, first.id);
    assert_eq!(archived_ids(&app).await, vec![first.id]);
    app.stop().await;
}

#[tokio::test]
async fn the_same_delivery_id_on_another_source_is_not_a_duplicate() {
    let app = TestApp::spawn().await;
    let shared = Uuid::new_v4().to_string();
    let gh = Webhook::github("issues", GITHUB_PR)
        .header("x-github-delivery", shared.clone())
        .send(&app)
        .await
        .accepted();
    let lin = Webhook::linear(LINEAR_ISSUE, Some(now_ms()))
        .header("linear-delivery", shared.clone())
        .send(&app)
        .await
        .accepted();
    assert_ne!(gh.id, lin.id);
    assert_eq!(archived_ids(&app).await, vec![lin.id, gh.id]);
    app.stop().await;
}

#[tokio::test]
async fn dedupe_survives_a_restart_on_the_same_data_dir() {
    let app = TestApp::spawn().await;
    let w = Webhook::github("pull_request", GITHUB_PR);
    let first = w.send(&app).await.accepted();
    let dir = app.stop().await;

    let app = TestApp::spawn_in(dir, |_| {}).await;
    let again = w.send(&app).await.duplicate();
    assert_eq!(again.id, first.id);
    assert_eq!(archived_ids(&app).await, vec![first.id]);
    app.stop().await;
}

#[tokio::test]
async fn slack_dedupes_by_body_event_id() {
    let app = TestApp::spawn().await;
    let first = Webhook::slack(SLACK_MESSAGE, "application/json")
        .send(&app)
        .await
        .accepted();
    // Slack retries carry a new timestamp and signature, but the same event_id.
    let retry = Webhook::slack_at(SLACK_MESSAGE, "application/json", now_ms() / 1000 - 2)
        .header("x-slack-retry-num", "1")
        .send(&app)
        .await
        .duplicate();
    assert_eq!(retry.id, first.id);
    let other = Webhook::slack(
        with_field(SLACK_MESSAGE, "event_id", json!("Ev999")),
        "application/json",
    )
    .send(&app)
    .await
    .accepted();
    assert_ne!(other.id, first.id);
    // Slash commands have no event id: the same one twice is two events.
    let cmd = form(&[("command", "/deploy"), ("text", "x"), ("team_id", "T1")]);
    let c1 = Webhook::slack(cmd.clone(), FORM)
        .send(&app)
        .await
        .accepted();
    let c2 = Webhook::slack(cmd, FORM).send(&app).await.accepted();
    assert_ne!(c1.id, c2.id);
    assert_eq!(archived_ids(&app).await.len(), 4);
    app.stop().await;
}

#[tokio::test]
async fn internal_dedupes_by_webhook_id() {
    let app = TestApp::spawn().await;
    let first = Webhook::standard("msg_same", INTERNAL_BUILD)
        .send(&app)
        .await
        .accepted();
    let again = Webhook::standard_at("msg_same", now_ms() / 1000 - 1, INTERNAL_BUILD)
        .send(&app)
        .await
        .duplicate();
    assert_eq!(again.id, first.id);
    let other = Webhook::standard("msg_other", INTERNAL_BUILD)
        .send(&app)
        .await
        .accepted();
    assert_ne!(other.id, first.id);
    assert_eq!(archived_ids(&app).await, vec![other.id, first.id]);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_webhooks_are_all_committed() {
    let app = TestApp::spawn().await;
    let sends = (0..200).map(|i| {
        let body = with_field(GITHUB_PR, "number", json!(i));
        let app = &app;
        async move { Webhook::github("pull_request", body).send(app).await }
    });
    let answers = join_all(sends).await;
    let ids: HashSet<Uuid> = answers.iter().map(|a| a.accepted().id).collect();
    assert_eq!(ids.len(), 200, "every answer has its own event id");
    let stored: HashSet<Uuid> = archived_ids(&app).await.into_iter().collect();
    assert_eq!(stored, ids);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_redeliveries_store_one_event() {
    let app = TestApp::spawn().await;
    let w = Webhook::github("pull_request", GITHUB_PR);
    let answers = join_all((0..20).map(|_| w.send(&app))).await;
    let mut originals = 0;
    let mut ids = HashSet::new();
    for a in &answers {
        let v = a.json();
        let ok = if v.get("duplicate").is_some() {
            a.duplicate()
        } else {
            originals += 1;
            a.accepted()
        };
        ids.insert(ok.id);
    }
    assert_eq!(originals, 1, "exactly one answer is the original");
    assert_eq!(ids.len(), 1, "every answer names the same event: {ids:?}");
    assert_eq!(
        archived_ids(&app).await,
        ids.into_iter().collect::<Vec<_>>()
    );
    app.stop().await;
}
