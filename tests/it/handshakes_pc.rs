//! The handshakes and provider-specific answers of twitch, zoom, discord and asana, and
//! sendgrid's array bodies, over HTTP against the real server: each handshake is answered and
//! stores nothing.

use event_router::config::Secret;
use event_router::providers::{self, Outgoing, Provider, SendOptions};
use ring::hmac;
use serde_json::{Value, json};

use crate::signed::*;
use crate::support::*;

const TWITCH_SECRET: &str = "twitch-test-secret-0123";
const ZOOM_SECRET: &str = "zoom-test-secret-token";
const DISCORD_PUBLIC: &str = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
const DISCORD_SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
const SENDGRID_PUBLIC: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9f77F6NiU5wneZxjF65Pz2RQiaQ/tY3txiB90PoTJIMVA6wAGhLVpcQokV7fgqJOjB9MvO8DnJQL3Jt9+uFZcg==";
const SENDGRID_PRIVATE: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgHy49TFtqeYgBI0VniavN7w8eLTxLWml4h5altMPS4fChRANCAAT1/vsXo2JTnCd5nGMXrk/PZFCJpD+1je3GIH3Q+hMkgxUDrAAaEtWlxCiRXt+Cok6MH0y87wOclAvcm3364Vly";
const ASANA_SECRET: &str = "b537207f20cbfa02357cf448134da559e8bd39d61597dcd5631b8012eae53e81";

async fn spawn(sources: &[(&'static str, &'static str)]) -> TestApp {
    let sources = sources.to_vec();
    TestApp::spawn_with(move |c| {
        for (name, secret) in sources {
            c.sources.get_mut(name).unwrap().secret = Some(Secret(secret.into()));
        }
    })
    .await
}

/// `body` signed by `source`'s provider as `send` signs it, with `extra` headers set first
/// (they may be signed, as Twitch's message id is).
fn signed(
    source: &str,
    secret: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let p = providers::by_source(source).unwrap();
    let mut out = Outgoing {
        headers: extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_vec(),
        url: None,
    };
    p.sign(
        &mut out,
        &SendOptions {
            event: None,
            secret: Some(secret),
            agent_key: None,
            now_ms: now_ms(),
        },
    )
    .unwrap();
    out.headers
}

async fn post(
    app: &TestApp,
    source: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(&format!("/webhook/{source}")))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    req.send().await.unwrap()
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn twitch_verification_is_answered_with_the_challenge_as_text() {
    let app = spawn(&[("twitch", TWITCH_SECRET)]).await;
    let body = json!({"challenge": "pogchamp-kappa-360noscope-vohiyo",
        "subscription": {"id": "f1c2a387", "type": "channel.follow", "version": "2"}})
    .to_string();
    let headers = signed(
        "twitch",
        TWITCH_SECRET,
        body.as_bytes(),
        &[
            (
                "twitch-eventsub-message-id",
                "e76c6bd4-55c9-4987-8304-da1588d8988b",
            ),
            (
                "twitch-eventsub-message-type",
                "webhook_callback_verification",
            ),
        ],
    );
    let r = post(&app, "twitch", &headers, body.as_bytes()).await;
    assert_eq!(r.status(), 200);
    assert!(
        content_type(&r).starts_with("text/plain"),
        "{}",
        content_type(&r)
    );
    assert_eq!(r.text().await.unwrap(), "pogchamp-kappa-360noscope-vohiyo");
    // Unsigned, it is refused.
    let unsigned: Vec<_> = headers
        .into_iter()
        .filter(|(k, _)| k != "twitch-eventsub-message-signature")
        .collect();
    assert_eq!(
        post(&app, "twitch", &unsigned, body.as_bytes())
            .await
            .status(),
        401
    );
    assert_archive_empty(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn zoom_url_validation_is_answered_with_the_encrypted_token() {
    let app = spawn(&[("zoom", ZOOM_SECRET)]).await;
    let body = json!({"payload": {"plainToken": "qgg8vlvZRS6UYooatFL8Aw"},
        "event_ts": 1654503849680u64, "event": "endpoint.url_validation"})
    .to_string();
    let headers = signed("zoom", ZOOM_SECRET, body.as_bytes(), &[]);
    let r = post(&app, "zoom", &headers, body.as_bytes()).await;
    assert_eq!(r.status(), 200);
    let key = hmac::Key::new(hmac::HMAC_SHA256, ZOOM_SECRET.as_bytes());
    let token = hex::encode(hmac::sign(&key, b"qgg8vlvZRS6UYooatFL8Aw").as_ref());
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": token})
    );
    assert_archive_empty(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn discord_ping_is_answered_and_interactions_get_a_deferred_answer() {
    let app = spawn(&[("discord", DISCORD_PUBLIC)]).await;
    let ping =
        br#"{"application_id":"1196823712383795210","id":"1","type":1,"token":"t","version":1}"#;
    let r = post(
        &app,
        "discord",
        &signed("discord", DISCORD_SECRET, ping, &[]),
        ping,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"type": 1}));
    assert_archive_empty(&app).await;

    // A slash command: stored, answered with a deferred response, the rate-limit headers kept.
    let sample = providers::discord::Discord.sample().as_bytes();
    let headers = signed("discord", DISCORD_SECRET, sample, &[]);
    let r = post(&app, "discord", &headers, sample).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().contains_key("x-ratelimit-limit"),
        "{:?}",
        r.headers()
    );
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"type": 5}));
    // The same interaction again: the same answer, stored once.
    let r = post(&app, "discord", &headers, sample).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"type": 5}));
    let (items, _) = list_events(&app, "limit=10").await;
    assert_eq!(items.len(), 1, "{items:?}");

    // A button: a deferred update.
    let button = br#"{"type":3,"id":"1329051734958002299","guild_id":"1","data":{"custom_id":"approve","component_type":2}}"#;
    let r = post(
        &app,
        "discord",
        &signed("discord", DISCORD_SECRET, button, &[]),
        button,
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"type": 6}));
    app.stop().await;
}

#[tokio::test]
async fn asana_hook_secret_is_echoed_even_before_the_secret_is_set() {
    // No ASANA_WEBHOOK_SECRET yet: the handshake is answered, events are not.
    let app = TestApp::spawn().await;
    let r = app
        .client
        .post(app.url("/webhook/asana"))
        .header("x-hook-secret", ASANA_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-hook-secret"], ASANA_SECRET);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    // Asana's API never shows the secret again: it is kept for the operator, owner-only.
    assert_handed_over(&app, ASANA_SECRET);
    let sample = providers::asana::Asana.sample().as_bytes();
    let r = post(
        &app,
        "asana",
        &signed("asana", ASANA_SECRET, sample, &[]),
        sample,
    )
    .await;
    assert_eq!(r.status(), 503);
    assert_archive_empty(&app).await;
    app.stop().await;

    // Configured: still answered (a second webhook has a secret of its own), and the empty
    // heartbeat batch is answered without being stored.
    let app = spawn(&[("asana", ASANA_SECRET)]).await;
    let r = app
        .client
        .post(app.url("/webhook/asana"))
        .header("x-hook-secret", "another-webhooks-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-hook-secret"], "another-webhooks-secret");
    assert_handed_over(&app, "another-webhooks-secret");
    let heartbeat = br#"{"events":[]}"#;
    let r = post(
        &app,
        "asana",
        &signed("asana", ASANA_SECRET, heartbeat, &[]),
        heartbeat,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_archive_empty(&app).await;
    let r = post(
        &app,
        "asana",
        &signed("asana", ASANA_SECRET, sample, &[]),
        sample,
    )
    .await;
    assert_eq!(r.status(), 200);
    let (items, _) = list_events(&app, "limit=10").await;
    assert_eq!(items.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn sendgrid_array_bodies_are_stored_as_they_came() {
    let app = spawn(&[("sendgrid", SENDGRID_PUBLIC)]).await;
    let sample = providers::sendgrid::SendGrid.sample().as_bytes();
    let r = post(
        &app,
        "sendgrid",
        &signed("sendgrid", SENDGRID_PRIVATE, sample, &[]),
        sample,
    )
    .await;
    assert_eq!(r.status(), 200);
    let id: uuid::Uuid = r.json::<Value>().await.unwrap()["eventId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ev = archived_event(&app, id).await;
    assert_eq!(ev["type"], "events");
    assert_eq!(ev["deliveryId"], "ZGVsaXZlcmVkLTAtMjQ5NDc2NjQtMA");
    assert_eq!(
        ev["payload"],
        serde_json::from_slice::<Value>(sample).unwrap()
    );
    // A body that is neither object nor array is still refused.
    let r = post(
        &app,
        "sendgrid",
        &signed("sendgrid", SENDGRID_PRIVATE, b"1", &[]),
        b"1",
    )
    .await;
    assert_eq!(r.status(), 400);
    app.stop().await;
}

/// The secret the last Asana handshake handed over is in `DATA_DIR/handshake-secrets/asana`,
/// readable by the owner only, in a directory only the owner can enter.
fn assert_handed_over(app: &TestApp, secret: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = app.dir.path().join("handshake-secrets");
    let file = dir.join("asana");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().last(), Some(secret), "{text}");
    assert!(
        text.starts_with("# x-hook-secret of the last handshake"),
        "{text}"
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&dir), 0o700);
}
