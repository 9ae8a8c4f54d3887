//! Handshakes and signed URLs of hubspot, square, twilio and meta, black-box.
//!
//! Meta's `GET /webhook/meta` check is answered with its challenge as text/plain when the verify
//! token is `META_VERIFY_TOKEN`, refused `403 invalid_verify_token` otherwise and
//! `400 bad_request` without its parameters, and stores nothing. The providers that sign the URL
//! they call (hubspot, square, twilio) are accepted when signed for the URL the router rebuilds
//! from `Host`, or for the source's `public_url` when it has one (and then refused when signed for
//! another), and Twilio's JSON bodies through the `bodySHA256` they add to the URL.

use event_router::config::Secret;
use event_router::providers::signed_url::query_of;
use event_router::providers::{Outgoing, Provider, SendOptions, by_source};
use serde_json::Value;

use crate::support::*;

const VERIFY_TOKEN: &str = "meta-verify-token-for-tests";

async fn stored(app: &TestApp, source: &str) -> usize {
    let (status, list) = app
        .admin_get(&format!("/admin/events?source={source}&limit=500"))
        .await;
    assert_eq!(status, 200, "{list}");
    list["items"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_get_check_echoes_the_challenge_for_the_verify_token_only() {
    let app = TestApp::spawn_with(|c| {
        let meta = c.sources.get_mut("meta").unwrap();
        meta.secret = Some(Secret("meta-app-secret".into()));
        meta.verify_token = Some(Secret(VERIFY_TOKEN.into()));
    })
    .await;
    let get = |query: String| {
        let app = &app;
        async move {
            let r = app
                .client
                .get(app.url(&format!("/webhook/meta{query}")))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (status, ct, r.text().await.unwrap())
        }
    };

    let (status, ct, body) = get(format!(
        "?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
    ))
    .await;
    assert_eq!((status, body.as_str()), (200, "1158201444"));
    assert!(ct.unwrap().starts_with("text/plain"));

    let (status, _, body) =
        get("?hub.mode=subscribe&hub.verify_token=wrong-token&hub.challenge=1158201444".into())
            .await;
    assert_eq!(status, 403, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["success"], false);
    assert_eq!(v["code"], "invalid_verify_token");
    assert!(!body.contains("1158201444"));

    for query in [
        String::new(),
        "?hub.mode=subscribe&hub.challenge=1".into(),
        format!("?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}"),
        format!("?hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"),
    ] {
        let (status, _, body) = get(query.clone()).await;
        assert_eq!(status, 400, "{query}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], "bad_request", "{query}");
    }

    // Answered, never stored.
    assert_eq!(stored(&app, "meta").await, 0);
    // Other sources take no GET; unknown ones are unknown.
    let (status, _, body) = get(String::new()).await;
    assert_eq!(status, 400, "{body}");
    let r = app
        .client
        .get(app.url("/webhook/github"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = app
        .client
        .get(app.url("/webhook/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_get_check_without_a_verify_token_is_refused() {
    let app = TestApp::spawn_with(|c| {
        c.sources.get_mut("meta").unwrap().secret = Some(Secret("meta-app-secret".into()));
    })
    .await;
    let r = app
        .client
        .get(app.url("/webhook/meta?hub.mode=subscribe&hub.verify_token=&hub.challenge=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    app.stop().await;
}

/// `p`'s sample, composed and signed for `url` (the URL the provider was given).
fn signed_for(p: &dyn Provider, secret: &str, url: &str) -> Outgoing {
    let mut out = Outgoing {
        headers: vec![("content-type".into(), "application/json".into())],
        body: p.sample().as_bytes().to_vec(),
        url: Some(url.to_string()),
    };
    let opts = SendOptions {
        event: None,
        secret: Some(secret),
        agent_key: None,
        now_ms: now_ms(),
    };
    p.compose(&mut out, &opts).unwrap();
    p.sign(&mut out, &opts).unwrap();
    out
}

async fn post(app: &TestApp, path: &str, out: &Outgoing, extra: &[(&str, &str)]) -> (u16, Value) {
    let path = match out.url.as_deref().and_then(query_of) {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut req = app.client.post(app.url(&path)).body(out.body.clone());
    for (k, v) in &out.headers {
        req = req.header(k, v);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_signing_providers_are_checked_against_the_url_they_called() {
    const PUBLIC: &str = "https://hooks.example.com/in";
    let sources = ["hubspot", "square", "twilio"];
    let app = TestApp::spawn_with(|c| {
        for s in sources {
            c.sources.get_mut(s).unwrap().secret = Some(Secret(format!("{s}-secret")));
        }
        // Twilio behind a proxy that moved it: the URL Twilio was given.
        c.sources.get_mut("twilio").unwrap().public_url = Some(format!("{PUBLIC}/twilio"));
    })
    .await;
    for s in ["hubspot", "square"] {
        let p = by_source(s).unwrap();
        let secret = format!("{s}-secret");
        // No public_url: the URL rebuilt from Host and the path (scheme guessed).
        let here = app.url(&format!("/webhook/{s}"));
        let (status, v) = post(
            &app,
            &format!("/webhook/{s}"),
            &signed_for(p, &secret, &here),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{s}: {v}");
        // Signed for the https URL a proxy received, and told so by X-Forwarded-Proto.
        let https = here.replacen("http://", "https://", 1);
        let out = signed_for(p, &secret, &https);
        let (status, v) = post(
            &app,
            &format!("/webhook/{s}"),
            &out,
            &[("x-forwarded-proto", "https")],
        )
        .await;
        assert_eq!(status, 200, "{s}: {v}");
        let (status, v) = post(
            &app,
            &format!("/webhook/{s}"),
            &out,
            &[("x-forwarded-proto", "http")],
        )
        .await;
        assert_eq!(
            (status, v["code"].as_str()),
            (401, Some("invalid_signature")),
            "{s}"
        );
        // Signed for another URL.
        let other = signed_for(p, &secret, "https://elsewhere.example.com/webhook/x");
        let (status, v) = post(&app, &format!("/webhook/{s}"), &other, &[]).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (401, Some("invalid_signature")),
            "{s}"
        );
    }

    let twilio = by_source("twilio").unwrap();
    let public = format!("{PUBLIC}/twilio");
    // A form, signed for public_url, accepted whatever path it arrives on.
    let form = signed_for(twilio, "twilio-secret", &public);
    let (status, v) = post(&app, "/webhook/twilio", &form, &[]).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = post(&app, "/webhook/twilio", &form, &[]).await;
    assert_eq!((status, v["duplicate"].as_bool()), (200, Some(true)), "{v}");
    let (_, event) = app
        .admin_get(&format!("/admin/events/{}", v["eventId"].as_str().unwrap()))
        .await;
    assert_eq!(event["event"]["type"], "message", "{event}");
    assert_eq!(event["event"]["action"], "received", "{event}");
    assert_eq!(event["event"]["payload"]["Body"], "Is the deploy finished?");
    // Signed for the router's own URL instead: not what Twilio was given.
    let here = signed_for(twilio, "twilio-secret", &app.url("/webhook/twilio"));
    let (status, v) = post(&app, "/webhook/twilio", &here, &[]).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("invalid_signature"))
    );
    // JSON as it is: the URL carries bodySHA256, checked against the body.
    let mut json = Outgoing {
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"EventType":"onMessageAdded","AccountSid":"AC1"}"#.to_vec(),
        url: Some(public.clone()),
    };
    let opts = SendOptions {
        event: None,
        secret: Some("twilio-secret"),
        agent_key: None,
        now_ms: now_ms(),
    };
    twilio.sign(&mut json, &opts).unwrap();
    assert!(json.url.as_deref().unwrap().contains("bodySHA256="));
    let (status, v) = post(&app, "/webhook/twilio", &json, &[]).await;
    assert_eq!(status, 200, "{v}");
    json.body = br#"{"EventType":"onMessageAdded","AccountSid":"AC2"}"#.to_vec();
    let (status, v) = post(&app, "/webhook/twilio", &json, &[]).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("invalid_signature"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hubspot_batch_is_stored_as_its_array() {
    let app = TestApp::spawn_with(|c| {
        c.sources.get_mut("hubspot").unwrap().secret = Some(Secret("hubspot-secret".into()));
    })
    .await;
    let p = by_source("hubspot").unwrap();
    let out = signed_for(p, "hubspot-secret", &app.url("/webhook/hubspot"));
    let (status, v) = post(&app, "/webhook/hubspot", &out, &[]).await;
    assert_eq!(status, 200, "{v}");
    let (_, event) = app
        .admin_get(&format!("/admin/events/{}", v["eventId"].as_str().unwrap()))
        .await;
    let e = &event["event"];
    assert_eq!(e["type"], "contact.propertyChange", "{event}");
    assert_eq!(e["action"], "lifecyclestage");
    assert_eq!(e["metadata"]["identifier"], "62515");
    let sample: Value = serde_json::from_str(p.sample()).unwrap();
    assert_eq!(e["payload"], sample);
    app.stop().await;
}
