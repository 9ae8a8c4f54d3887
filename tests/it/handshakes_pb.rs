//! The handshake-like requests of the providers of branch `pb` (sentry … mailgun), through a real
//! server. Of them only Notion has one: its first request to a new subscription is
//! `{"verification_token": "…"}`, unsigned, and it is stored (not answered and dropped) so that
//! the operator can read the token, which is the secret to configure.

use event_router::config::Secret;
use event_router::providers::notion;
use serde_json::json;

use crate::signed::*;
use crate::support::*;

const PLACEHOLDER: &str = "not-yet-known";
const TOKEN: &str = "secret_tMrlL1qK5vuQAh1b6cZGhFChZTSYJlce98V0pYn7yBl";

async fn with_notion_secret(secret: &str) -> TestApp {
    let secret = secret.to_string();
    TestApp::spawn_with(move |c| {
        c.sources.get_mut("notion").unwrap().secret = Some(Secret(secret));
    })
    .await
}

fn unsigned(body: impl Into<Vec<u8>>) -> Webhook {
    Webhook::bare("notion", body).header("content-type", "application/json")
}

#[tokio::test]
async fn notion_verification_token_is_stored_unsigned_for_the_operator_to_read() {
    let app = with_notion_secret(PLACEHOLDER).await;
    let body = json!({ "verification_token": TOKEN }).to_string();
    let ok = unsigned(body.clone()).send(&app).await.accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_eq!(ev["source"], "notion");
    assert_eq!(ev["type"], notion::VERIFICATION);
    assert!(ev["deliveryId"].is_null(), "{ev}");
    assert_eq!(ev["payload"]["verification_token"], TOKEN);
    let (items, _) = list_events(&app, "source=notion&type=verification").await;
    assert_eq!(items.len(), 1);

    // Anything else unsigned is refused: another key beside the token, another event, a
    // token under a (wrong) signature.
    for other in [
        json!({ "verification_token": TOKEN, "type": "page.created" }),
        json!({ "type": "page.created", "id": "1" }),
    ] {
        unsigned(other.to_string())
            .send(&app)
            .await
            .refused(401, "invalid_signature");
    }
    unsigned(body)
        .header("x-notion-signature", notion::sign(b"wrong", b"x"))
        .send(&app)
        .await
        .refused(401, "invalid_signature");
    let (items, _) = list_events(&app, "source=notion").await;
    assert_eq!(items.len(), 1, "{items:?}");
    app.stop().await;
}

#[tokio::test]
async fn notion_events_are_signed_with_the_token_once_it_is_configured() {
    let app = with_notion_secret(TOKEN).await;
    let page = br#"{"id":"367cba44-b6f3-4c92-81e7-6a2e9659efd4","type":"page.created","workspace_id":"w1","entity":{"id":"p1","type":"page"}}"#;
    let ok = unsigned(page.to_vec())
        .header("x-notion-signature", notion::sign(TOKEN.as_bytes(), page))
        .send(&app)
        .await
        .accepted();
    let ev = archived_event(&app, ok.id).await;
    assert_eq!(ev["type"], "page.created");
    assert_eq!(ev["deliveryId"], "367cba44-b6f3-4c92-81e7-6a2e9659efd4");
    assert_eq!(ev["metadata"]["identifier"], "w1");
    assert!(
        ev["metadata"]["headers"]
            .get("x-notion-signature")
            .is_none()
    );
    unsigned(page.to_vec())
        .send(&app)
        .await
        .refused(401, "invalid_signature");
    app.stop().await;
}

#[tokio::test]
async fn notion_without_a_secret_is_not_configured_even_for_the_token() {
    // The placeholder is needed: an unconfigured source answers 503 before any provider code.
    let app = TestApp::spawn().await;
    unsigned(json!({ "verification_token": TOKEN }).to_string())
        .send(&app)
        .await
        .refused(503, "source_not_configured");
    assert_archive_empty(&app).await;
    app.stop().await;
}
