//! Every provider in the registry, black-box: its own sample, composed and signed as
//! `event-router send` does (the provider's `compose` and `sign`), posted to a real server with
//! the provider's built-in source enabled. Accepted; a redelivery answered as a duplicate when
//! the provider gives a delivery id; a tampered signature, another secret, missing signature
//! headers and (for providers that sign a timestamp) a request signed outside the window
//! refused with the contract's codes; and a source without its secret `503
//! source_not_configured`. Handshakes, which differ per provider, have tests of their own.

use event_router::config::Secret;
use event_router::ingest::{Prepared, Source, prepare};
use event_router::providers::{
    Outgoing, PROVIDERS, Provider, RequestLine, SendOptions, signed_url, standard,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::support::*;

/// Ed25519 secret keys (seed, then public key; tests/vectors/discord.py and another) and P-256
/// PKCS#8 private keys (tests/vectors/sendgrid.py and another).
const DISCORD_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
const DISCORD_OTHER_KEY: &str = "6465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182830bbc346a57667c380120bd9c7fd7e51d2c5fdfea37cd2f5bf405b2c6bf6f2d78";
const SENDGRID_KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgHy49TFtqeYgBI0VniavN7w8eLTxLWml4h5altMPS4fChRANCAAT1/vsXo2JTnCd5nGMXrk/PZFCJpD+1je3GIH3Q+hMkgxUDrAAaEtWlxCiRXt+Cok6MH0y87wOclAvcm3364Vly";
const SENDGRID_OTHER_KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgACorLC0uLzAxMjM0NTY3ODk6Ozw9Pj9AQUJDREVGR0ihRANCAARrWPxKbg2vA8bA6GWqb7vC5rFyzi0X7tfAhf7CeF+1tb3SzCdedfQHvVaLhEKbvdYWBYrXcqERqA5UtpTCXbHE";

/// The secret the server is given for `p`'s source, and the one a sender signs with (they
/// differ for public-key schemes: the server holds the public key).
fn secrets(p: &dyn Provider) -> (String, String) {
    match p.name() {
        "standard" | "svix" => (INTERNAL_SECRET.into(), INTERNAL_SECRET.into()),
        // Public-key schemes: the variable takes the provider's public key, or (for `send`
        // and tests) the private key, of which it keeps the public half.
        "discord" => (DISCORD_KEY.into(), DISCORD_KEY.into()),
        "sendgrid" => (SENDGRID_KEY.into(), SENDGRID_KEY.into()),
        _ => {
            let s = format!("{}-provider-secret", p.name());
            (s.clone(), s)
        }
    }
}

/// Another secret of the same form, which the server does not know.
fn other_secret(p: &dyn Provider) -> String {
    match p.name() {
        "standard" | "svix" => "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3".into(),
        "discord" => DISCORD_OTHER_KEY.into(),
        "sendgrid" => SENDGRID_OTHER_KEY.into(),
        _ => format!("{}-other-secret", p.name()),
    }
}

fn source_of(p: &dyn Provider) -> &'static str {
    p.builtin().expect("a built-in source").source
}

/// `p`'s sample, composed and signed with `secret` at `now_ms`.
fn signed(p: &dyn Provider, secret: &str, now_ms: i64) -> Outgoing {
    let mut out = Outgoing {
        headers: Vec::new(),
        body: p.sample().as_bytes().to_vec(),
        // The URL the providers that sign it (hubspot, square, twilio) were given: the
        // sources' `public_url` in the tests below.
        url: Some(public_url(source_of(p))),
    };
    let opts = SendOptions {
        event: None,
        secret: Some(secret),
        agent_key: None,
        now_ms,
    };
    p.compose(&mut out, &opts).unwrap();
    p.sign(&mut out, &opts).unwrap();
    out
}

/// The `public_url` the tests give each built-in source.
fn public_url(source: &str) -> String {
    format!("https://hooks.example.com/webhook/{source}")
}

/// The path a signed webhook is posted to: with the query its provider signed (Twilio's
/// `bodySHA256` on a JSON body).
fn path_of(source: &str, out: &Outgoing) -> String {
    match out.url.as_deref().and_then(signed_url::query_of) {
        Some(q) => format!("/webhook/{source}?{q}"),
        None => format!("/webhook/{source}"),
    }
}

fn header_map(out: &Outgoing) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in &out.headers {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// The delivery id the router reads from this request (its dedupe key), from the same pure
/// stage the server runs.
fn delivery_id(p: &'static dyn Provider, server_secret: &str, out: &Outgoing) -> Option<String> {
    let source = Source::new(
        source_of(p),
        p,
        Some(p.parse_secrets(server_secret).unwrap()),
        None,
    )
    .with_public_url(Some(public_url(source_of(p))));
    let path = path_of(source_of(p), out);
    match prepare(
        &source,
        RequestLine::post(&path),
        &header_map(out),
        &out.body,
        "127.0.0.1",
        now_ms(),
        &|_| false,
        &mut event_router::event::new_event_id,
    ) {
        Ok(Prepared::Event { head, .. }) => head.delivery_id,
        Ok(Prepared::Handshake(h)) => panic!("{p:?}: its sample is a handshake: {h:?}"),
        Err(e) => panic!("{p:?}: its signed sample is refused: {e:?}"),
    }
}

/// The ids of the events stored for `source`, newest first.
async fn stored_ids(app: &TestApp, source: &str) -> Vec<String> {
    let (status, v) = app
        .admin_get(&format!("/admin/events?source={source}&limit=500"))
        .await;
    assert_eq!(status, 200, "{v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

async fn post(app: &TestApp, source: &str, out: &Outgoing) -> (u16, Value) {
    let r = app
        .client
        .post(app.url(&path_of(source, out)))
        .headers(header_map(out))
        .body(out.body.clone())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Flips one character of a signature header's value (a hex or base64 digit, or any
/// character) so that it still parses as the provider's format where it can.
fn tamper(out: &mut Outgoing, p: &dyn Provider) -> bool {
    for (k, v) in out.headers.iter_mut() {
        if !p.signature_headers().contains(&k.as_str()) {
            continue;
        }
        let mut bytes = v.clone().into_bytes();
        // The last alphanumeric character: inside the MAC, past any `sha256=`/`v1,` prefix.
        if let Some(i) = bytes.iter().rposition(u8::is_ascii_alphanumeric) {
            bytes[i] = match bytes[i] {
                b'0' => b'1',
                b'a' => b'b',
                b'A' => b'B',
                _ => b'0',
            };
            *v = String::from_utf8(bytes).unwrap();
            return true;
        }
    }
    false
}

fn assert_refused(p: &dyn Provider, what: &str, answer: &(u16, Value), code: &str) {
    assert_eq!(answer.0, 401, "{p:?} {what}: {}", answer.1);
    assert_eq!(answer.1["code"], code, "{p:?} {what}: {}", answer.1);
    assert_eq!(answer.1["success"], false, "{p:?} {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_is_accepted_as_it_signs_and_refused_otherwise() {
    let app = TestApp::spawn_with(|c| {
        for p in PROVIDERS {
            let Some(b) = p.builtin() else { continue };
            if p.name() == standard::Standard.name() {
                continue; // `internal`: test_config's secret
            }
            let source = c.sources.get_mut(b.source).unwrap();
            source.secret = Some(Secret(secrets(*p).0));
            source.public_url = Some(public_url(b.source));
        }
    })
    .await;
    let mut checked = Vec::new();
    for &p in PROVIDERS {
        let Some(_) = p.builtin() else { continue };
        let source = source_of(p);
        let (server_secret, signer) = secrets(p);

        // Accepted, stored, and found in the archive under its source (a provider that reads
        // the answer, Discord, gets its own: the event is found by listing the source).
        let out = signed(p, &signer, now_ms());
        let before = stored_ids(&app, source).await;
        let first = post(&app, source, &out).await;
        assert_eq!(first.0, 200, "{p:?}: {}", first.1);
        let after = stored_ids(&app, source).await;
        assert_eq!(after.len(), before.len() + 1, "{p:?}: one event stored");
        let id = after[0].clone();
        match first.1.get("success") {
            Some(_) => {
                assert_eq!(first.1["success"], true, "{p:?}");
                assert_eq!(first.1["eventId"], id.as_str(), "{p:?}");
            }
            None => assert_eq!(p.name(), "discord", "{p:?} answered {}", first.1),
        }
        let (status, stored) = app.admin_get(&format!("/admin/events/{id}")).await;
        assert_eq!(status, 200, "{p:?}: {stored}");
        assert_eq!(stored["event"]["source"], source, "{p:?}: {stored}");
        // No signature header is archived.
        let kept = &stored["event"]["metadata"]["headers"];
        for h in p.signature_headers() {
            assert!(kept.get(*h).is_none(), "{p:?}: {h} archived: {kept}");
        }

        // The same delivery again: a duplicate of the first, where the provider gives a
        // delivery id; else a second event.
        let again = post(&app, source, &out).await;
        assert_eq!(again.0, 200, "{p:?}: {}", again.1);
        let now_stored = stored_ids(&app, source).await;
        match delivery_id(p, &server_secret, &out) {
            Some(_) => {
                assert_eq!(
                    now_stored.len(),
                    after.len(),
                    "{p:?}: a redelivery stored again"
                );
                if again.1.get("success").is_some() {
                    assert_eq!(again.1["duplicate"], true, "{p:?}: {}", again.1);
                    assert_eq!(again.1["eventId"], id.as_str(), "{p:?}");
                } else {
                    assert_eq!(again.1, first.1, "{p:?}: the same answer again");
                }
            }
            None => assert_eq!(now_stored.len(), after.len() + 1, "{p:?}"),
        }

        // A signature changed in one character.
        let mut tampered = signed(p, &signer, now_ms());
        if tamper(&mut tampered, p) {
            let answer = post(&app, source, &tampered).await;
            assert_refused(p, "tampered signature", &answer, "invalid_signature");
        }
        // Signed with a secret the server does not have.
        let answer = post(&app, source, &signed(p, &other_secret(p), now_ms())).await;
        assert_refused(p, "another secret", &answer, "invalid_signature");
        // Without its signature headers.
        let mut bare = signed(p, &signer, now_ms());
        bare.headers
            .retain(|(k, _)| !p.signature_headers().contains(&k.as_str()));
        if bare.headers.len() < out.headers.len() {
            let answer = post(&app, source, &bare).await;
            assert_refused(p, "no signature header", &answer, "invalid_signature");
        }
        // Signed, but further in the past than the provider's window.
        if let Some(window) = p.replay_window() {
            let then = now_ms() - window.as_millis() as i64 - 60_000;
            let answer = post(&app, source, &signed(p, &signer, then)).await;
            assert_refused(p, "outside the window", &answer, "stale_timestamp");
        }
        checked.push(source);
    }
    assert_eq!(
        checked.len(),
        PROVIDERS.iter().filter(|p| p.builtin().is_some()).count()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_its_secret_is_not_configured() {
    // Only the agent key: every built-in source but `internal` (which takes agent keys) has no
    // secret.
    let app = TestApp::spawn_with(|c| {
        for s in c.sources.values_mut() {
            s.secret = None;
        }
    })
    .await;
    for &p in PROVIDERS {
        let Some(b) = p.builtin() else { continue };
        if b.source == standard::INTERNAL {
            continue;
        }
        let out = signed(p, &secrets(p).1, now_ms());
        let (status, v) = post(&app, b.source, &out).await;
        assert_eq!(status, 503, "{p:?}: {v}");
        assert_eq!(v["code"], "source_not_configured", "{p:?}: {v}");
    }
    app.stop().await;
}

/// Two catalog providers written as config recipes (docs/providers.md, "Any other provider"):
/// what GitHub and Slack sign is accepted by the recipe sources too, deduped by the recipe's
/// id header, the recipe's signature header is not archived, and a tampered or stale request is
/// refused as the catalog provider's would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_providers_written_as_recipes_verify_the_same_requests() {
    use event_router::config::SourceConfig;
    use event_router::providers::recipe::{Recipe, RecipeSpec};
    use event_router::providers::{github, slack};

    let gh = Recipe::build(
        "hmac",
        &RecipeSpec {
            header: Some("X-Hub-Signature-256".into()),
            prefix: Some("sha256=".into()),
            id_header: Some("X-GitHub-Delivery".into()),
            type_header: Some("X-GitHub-Event".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let sl = Recipe::build(
        "hmac",
        &RecipeSpec {
            header: Some("X-Slack-Signature".into()),
            prefix: Some("v0=".into()),
            signed: Some("v0:{timestamp}:{body}".into()),
            timestamp_header: Some("X-Slack-Request-Timestamp".into()),
            tolerance_secs: Some(300),
            type_path: Some("payload.event.type".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let app = TestApp::spawn_with(|c| {
        for (name, provider) in [("gh-recipe", gh as &dyn Provider), ("slack-recipe", sl)] {
            c.sources.insert(
                name.into(),
                SourceConfig {
                    provider,
                    secret_env: vec![],
                    secret: Some(Secret("recipe-secret".into())),
                    identifier_field: None,
                    public_url: None,
                    verify_token: None,
                    retention_days: None,
                },
            );
        }
    })
    .await;

    // GitHub's own signer, GitHub's headers.
    let body = br#"{"action":"opened","number":7}"#.to_vec();
    let delivery = uuid::Uuid::new_v4().to_string();
    let gh_request = |sig: String| Outgoing {
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-github-event".into(), "pull_request".into()),
            ("x-github-delivery".into(), delivery.clone()),
            ("x-hub-signature-256".into(), sig),
        ],
        body: body.clone(),
        url: None,
    };
    let ok = gh_request(github::sign(b"recipe-secret", &body));
    let first = post(&app, "gh-recipe", &ok).await;
    assert_eq!(first.0, 200, "{}", first.1);
    let id = first.1["eventId"].as_str().unwrap().to_string();
    let (_, stored) = app.admin_get(&format!("/admin/events/{id}")).await;
    assert_eq!(stored["event"]["type"], "pull_request", "{stored}");
    assert_eq!(stored["event"]["deliveryId"], delivery.as_str(), "{stored}");
    assert!(
        stored["event"]["metadata"]["headers"]
            .get("x-hub-signature-256")
            .is_none(),
        "{stored}"
    );
    let again = post(&app, "gh-recipe", &ok).await;
    assert_eq!(again.1["duplicate"], true, "{}", again.1);
    let wrong = post(
        &app,
        "gh-recipe",
        &gh_request(github::sign(b"other", &body)),
    )
    .await;
    assert_eq!(wrong.0, 401);
    assert_eq!(wrong.1["code"], "invalid_signature");

    // Slack's own signer; the type read from the body.
    let body = br#"{"type":"event_callback","event":{"type":"app_mention"}}"#.to_vec();
    let slack_request = |ts: i64| Outgoing {
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-slack-request-timestamp".into(), ts.to_string()),
            (
                "x-slack-signature".into(),
                slack::sign(b"recipe-secret", ts, &body),
            ),
        ],
        body: body.clone(),
        url: None,
    };
    let now = now_ms() / 1000;
    let answer = post(&app, "slack-recipe", &slack_request(now)).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let id = answer.1["eventId"].as_str().unwrap().to_string();
    let (_, stored) = app.admin_get(&format!("/admin/events/{id}")).await;
    assert_eq!(stored["event"]["type"], "app_mention", "{stored}");
    let stale = post(&app, "slack-recipe", &slack_request(now - 400)).await;
    assert_eq!(stale.0, 401, "{}", stale.1);
    assert_eq!(stale.1["code"], "stale_timestamp");
    app.stop().await;
}

/// `HEAD /webhook/{source}` answers `200` for a known source, configured or not (Intercom checks
/// that an endpoint is reachable this way before saving it), and `404` for another name; it
/// stores nothing.
#[tokio::test]
async fn a_head_request_checks_that_a_source_is_reachable() {
    let app = TestApp::spawn_with(|c| {
        c.sources.get_mut("intercom").unwrap().secret = None;
    })
    .await;
    for (source, want) in [("intercom", 200), ("github", 200), ("nope", 404)] {
        let r = app
            .client
            .head(app.url(&format!("/webhook/{source}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{source}");
    }
    let (_, v) = app.admin_get("/admin/events?limit=10").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "{v}");
    app.stop().await;
}
