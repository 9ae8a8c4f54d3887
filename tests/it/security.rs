//! Transport and storage security (API.md section 11): authentication throttling, HTTPS,
//! extra CA certificates for deliveries, secrets and payloads encrypted at rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::delivery::{Admin, agent, only_type, policy, post_routed, post_routed_to, route};
use crate::signed::Webhook;
use crate::support::{ADMIN_KEY, AGENT_KEY, ChildServer, TestApp};

async fn status_and_body(r: reqwest::Response) -> (StatusCode, Option<String>, Value) {
    let status = r.status();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

#[tokio::test]
async fn admin_auth_failures_are_throttled_but_the_right_key_still_works() {
    let app = TestApp::spawn().await;
    for i in 1..=100 {
        let r = app
            .client
            .get(app.url("/admin/routes"))
            .bearer_auth(format!("wrong-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    let r = app
        .client
        .get(app.url("/admin/routes"))
        .bearer_auth("wrong-101")
        .send()
        .await
        .unwrap();
    let (status, retry_after, body) = status_and_body(r).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "too_many_failures");
    assert!(body["error"].is_string());
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    // A missing key is a failure too.
    let r = app
        .client
        .get(app.url("/queue/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // The right key is always accepted.
    let r = app
        .client
        .get(app.url("/admin/routes"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The throttle is per address across admin and agent authentication: a wrong stream key
    // from the same address is refused with 429 as well, the right one opens the stream.
    let r = app
        .client
        .get(app.url("/stream/sse?agentId=*"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

#[tokio::test]
async fn agent_auth_failures_are_throttled_on_streams_and_internal_webhooks() {
    let app = TestApp::spawn().await;
    for i in 1..=100 {
        let r = app
            .client
            .get(app.url("/stream/sse?agentId=nobody"))
            .bearer_auth(format!("wrong-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    let r = app
        .client
        .post(app.url("/webhook/internal"))
        .bearer_auth("wrong")
        .header("content-type", "application/json")
        .body(r#"{"type":"ping"}"#)
        .send()
        .await
        .unwrap();
    let (status, retry_after, body) = status_and_body(r).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "too_many_failures");
    assert!(retry_after.is_some());
    // The agent key still posts internal events.
    let r = app
        .client
        .post(app.url("/webhook/internal"))
        .bearer_auth(AGENT_KEY)
        .header("content-type", "application/json")
        .body(r#"{"type":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    app.stop().await;
}

// ---- HTTPS ----

/// A certificate authority made for one test, issuing certificates for 127.0.0.1 / localhost.
struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate and its key (PEM), written to `dir` as cert.pem / key.pem.
    fn issue_into(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }
}

async fn health(client: &reqwest::Client, base: &str) -> Result<u16, reqwest::Error> {
    client
        .get(format!("{base}/health"))
        .send()
        .await
        .map(|r| r.status().as_u16())
}

#[tokio::test]
async fn https_is_served_with_the_configured_certificate_and_reloaded() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new("event-router test CA");
    let (cert, key) = ca.issue_into(certs.path());
    let app = TestApp::spawn_with(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;
    let base = format!("https://{}", app.addr);
    let trusting = ca.client();
    assert_eq!(health(&trusting, &base).await.unwrap(), 200);
    // A signed webhook over HTTPS.
    let a = Webhook::github(
        "push",
        br#"{"ref":"main","sender":{"login":"octocat"}}"#.to_vec(),
    )
    .send_to(&trusting, &base)
    .await
    .accepted();
    let (status, v) = Admin {
        client: trusting.clone(),
        base: base.clone(),
    }
    .get(&format!("/admin/events/{}", a.id))
    .await;
    assert_eq!(status, 200, "{v}");
    // A client that does not trust the CA is refused at the handshake.
    let err = health(&reqwest::Client::new(), &base).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    // Plain HTTP on the HTTPS port gets no answer.
    assert!(health(&reqwest::Client::new(), &app.base).await.is_err());

    // Reload: a certificate from another CA replaces the first for new connections, while a
    // connection opened before keeps working.
    let ca2 = TestCa::new("second test CA");
    ca2.issue_into(certs.path());
    assert!(app.server().reload_tls().unwrap());
    assert_eq!(health(&ca2.client(), &base).await.unwrap(), 200);
    assert_eq!(
        health(&trusting, &base).await.unwrap(),
        200,
        "the pooled connection survives"
    );
    assert!(health(&ca.client(), &base).await.is_err());
    // A broken file on reload keeps the certificate in use.
    std::fs::write(certs.path().join("key.pem"), "not a key").unwrap();
    assert!(app.server().reload_tls().is_err());
    assert_eq!(health(&ca2.client(), &base).await.unwrap(), 200);
    app.stop().await;
}

#[tokio::test]
async fn tls_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::test_config(dir.path());
    cfg.tls_cert = Some(dir.path().join("missing.pem"));
    cfg.tls_key = Some(dir.path().join("missing-key.pem"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = event_router::start(cfg, listener).await.err().unwrap();
    assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
}

// ---- a client certificate for PostgreSQL ----

/// Answers one connection as PostgreSQL answers a TLS request (`S`), then finishes the
/// handshake as `localhost` (a certificate from `server_ca`), requiring a client certificate
/// signed by `client_ca`. Gives the certificate the client presented (`None`: the handshake
/// failed).
async fn one_postgres_tls_handshake(
    dir: &Path,
    server_ca: &TestCa,
    client_ca: &TestCa,
) -> (u16, tokio::task::JoinHandle<Option<Vec<u8>>>) {
    use rustls_pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = event_router::tls::provider();
    let (cert, key) = server_ca.issue_into(dir);
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    event_router::tls::add_pem_roots(&mut roots, client_ca.pem.as_bytes()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.ok()?;
        let mut request = [0u8; 8];
        stream.read_exact(&mut request).await.ok()?;
        // Length 8, then the SSLRequest code 80877103.
        assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47]);
        stream.write_all(b"S").await.ok()?;
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(config))
            .accept(stream)
            .await
            .ok()?;
        let (_, session) = tls.get_ref();
        Some(session.peer_certificates()?.first()?.to_vec())
    });
    (port, task)
}

#[tokio::test]
async fn a_postgres_client_certificate_is_presented_when_given() {
    use event_router::store::postgres::tls::connect_options;
    use rustls_pki_types::pem::PemObject as _;
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (server_ca, client_ca) = (TestCa::new("server ca"), TestCa::new("client ca"));
    let root = dirs[0].path().join("server-ca.pem");
    std::fs::write(&root, &server_ca.pem).unwrap();
    let (cert, key) = client_ca.issue_into(dirs[1].path());
    let der = rustls_pki_types::CertificateDer::from_pem_file(&cert)
        .unwrap()
        .to_vec();
    let (_, other_key) = client_ca.issue_into(dirs[2].path());
    let (cert, key, other_key) = (cert.display(), key.display(), other_key.display());
    let mixed = format!("postgres://er@localhost/db?sslcert={cert}&sslkey={other_key}");
    let Err(err) = connect_options(&mixed) else {
        panic!("a key of another certificate was taken");
    };
    assert!(err.contains("cannot be used"), "{err}");
    for with_cert in [true, false] {
        let (port, server) =
            one_postgres_tls_handshake(dirs[3].path(), &server_ca, &client_ca).await;
        let mut url = format!(
            "postgres://er@localhost:{port}/db?sslmode=verify-full&sslrootcert={}",
            root.display()
        );
        if with_cert {
            url.push_str(&format!("&sslcert={cert}&sslkey={key}"));
        }
        let (mut config, tls) = connect_options(&url).unwrap();
        config.connect_timeout(std::time::Duration::from_secs(5));
        // The fake server stops after the handshake, so the connection itself fails.
        let client = tokio::spawn(async move { config.connect(tls).await.map(|_| ()) });
        let presented = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        assert!(client.await.unwrap().is_err());
        match with_cert {
            true => assert_eq!(presented.as_deref(), Some(&der[..])),
            false => assert_eq!(presented, None),
        }
    }
}

// ---- extra CA certificates for deliveries ----

/// An HTTPS agent endpoint with a certificate from `ca`; counts what it receives.
async fn https_receiver(ca: &TestCa, dir: &Path) -> (String, Arc<AtomicUsize>) {
    let (cert, key) = ca.issue_into(dir);
    let store = event_router::tls::CertStore::load(&cert, &key).unwrap();
    let config = store.server_config().unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener =
        event_router::tls::TlsListener::new(tcp, config, CancellationToken::new()).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "ok"
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("https://{addr}/hook"), hits)
}

async fn route_to(app: &TestApp, url: &str) {
    route_at(&app.base, url).await;
}

async fn route_at(base: &str, url: &str) {
    let admin = Admin::at(base);
    admin.create_agent(agent("tls-agent", url, json!({}))).await;
    admin
        .create_route(route(
            "to-tls",
            &["tls-agent"],
            policy(1, "fixed", 10, 10),
            only_type("push"),
        ))
        .await;
}

#[tokio::test]
async fn deliveries_trust_extra_ca_certs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agents' private CA");
    let (url, hits) = https_receiver(&ca, dir.path()).await;
    let ca_file = dir.path().join("extra-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let app = TestApp::spawn_with(|c| c.extra_ca_certs = Some(ca_file.clone())).await;
    route_to(&app, &url).await;
    let id = post_routed(&app, "push", 1).await;
    let d = Admin::of(&app).wait_status(id, "delivered").await;
    assert_eq!(d["attempts"], 1, "{d}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    app.stop().await;
}

/// `extra_ca_certs` is trusted "in addition to the system roots" (API.md section 11): a CA in
/// the system's store is trusted without it. The store here is `SSL_CERT_FILE`, which the
/// binary reads as OpenSSL does; the real binary, so that the variable is its own.
#[tokio::test]
async fn deliveries_trust_the_system_roots() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("a CA in the system store");
    let (url, hits) = https_receiver(&ca, dir.path()).await;
    let bundle = dir.path().join("system-bundle.pem");
    std::fs::write(&bundle, &ca.pem).unwrap();
    let server = ChildServer::start(
        &dir.path().join("data"),
        &[("SSL_CERT_FILE", bundle.to_str().unwrap())],
    )
    .await;
    route_at(&server.base, &url).await;
    let id = post_routed_to(&reqwest::Client::new(), &server.base, "push", 1).await;
    let d = Admin::at(&server.base).wait_status(id, "delivered").await;
    assert_eq!(d["attempts"], 1, "{d}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_extra_ca_certs_the_attempt_fails_with_a_certificate_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agents' private CA");
    let (url, hits) = https_receiver(&ca, dir.path()).await;
    let app = TestApp::spawn().await;
    route_to(&app, &url).await;
    let id = post_routed(&app, "push", 1).await;
    let d = Admin::of(&app).wait_status(id, "dead").await;
    let error = d["attemptLog"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.to_ascii_lowercase().contains("certificate"),
        "attempt error: {error}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    app.stop().await;
}

#[tokio::test]
async fn an_unreadable_extra_ca_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::test_config(dir.path());
    let bad = dir.path().join("bad-ca.pem");
    std::fs::write(&bad, "no certificates here").unwrap();
    cfg.extra_ca_certs = Some(bad);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = event_router::start(cfg, listener).await.err().unwrap();
    assert!(format!("{err:#}").contains("extra_ca_certs"), "{err:#}");
}

// ---- secrets and payloads at rest ----

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "HxweHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";

/// Every byte of the database and its WAL (and anything else SQLite left beside it); on
/// PostgreSQL, every row of every table as text.
fn raw_store_bytes(dir: &Path) -> Vec<u8> {
    if let Some(url) = crate::support::database_for(dir) {
        return crate::support::postgres_dump(&url);
    }
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("event-router.db") {
            all.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(!all.is_empty(), "no database files in {}", dir.display());
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn secrets_and_payloads_are_encrypted_at_rest() {
    let with_key = |key: &'static str| {
        move |c: &mut event_router::Config| {
            c.encryption_key = Some(event_router::config::Secret(key.into()));
            c.encrypt_payloads = true;
        }
    };
    let app = TestApp::spawn_with(with_key(KEY_A)).await;
    let admin = Admin::of(&app);
    let agent_key = "an-agents-own-api-key-0123456789";
    // One agent with a generated secret, one with a chosen secret and its own API key.
    admin
        .create_agent(agent(
            "gen",
            &format!("http://127.0.0.1:{}/x", crate::delivery::closed_port()),
            json!({}),
        ))
        .await;
    admin
        .create_agent(json!({"id": "chosen", "name": "chosen", "secret": crate::delivery::CHOSEN_SECRET, "apiKey": agent_key}))
        .await;
    admin
        .create_route(route(
            "r",
            &["gen", "chosen"],
            policy(1, "fixed", 10, 10),
            only_type("push"),
        ))
        .await;
    let secrets = [
        admin.agent_secret("gen").await,
        admin.agent_secret("chosen").await,
    ];
    let marker = "payload-marker-7f3a9c";
    let body = json!({"ref": marker, "sender": {"login": "octocat"}}).to_string();
    let a = Webhook::github("push", body.into_bytes())
        .send_to(&app.client, &app.base)
        .await
        .accepted();
    let dir = app.stop().await;

    let raw = raw_store_bytes(dir.path());
    for s in &secrets {
        let b64 = s.trim_start_matches("whsec_");
        assert!(!contains(&raw, b64), "an agent secret is stored in clear");
    }
    assert!(!contains(&raw, marker), "a payload is stored in clear");
    assert!(!contains(&raw, agent_key), "an API key is stored in clear");
    assert!(contains(&raw, "enc:v1:"));

    // The same key reads everything back.
    let app = TestApp::spawn_in(dir, with_key(KEY_A)).await;
    let admin = Admin::of(&app);
    assert_eq!(admin.agent_secret("gen").await, secrets[0]);
    assert_eq!(admin.agent_secret("chosen").await, secrets[1]);
    let v = admin.event(a.id).await;
    assert_eq!(v["event"]["payload"]["ref"], marker, "{v}");
    // (The router's own events, such as a dead letter's, are listed too: GitHub's only.)
    let (status, list) = admin.get("/admin/events?source=github&limit=10").await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["payload"]["ref"], marker, "{list}");
    let dir = app.stop().await;

    // Another key refuses to start, saying why.
    let mut cfg = crate::support::test_config(dir.path());
    with_key(KEY_B)(&mut cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = event_router::start(cfg, listener).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("encryption key does not match"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_key_is_generated_into_the_data_dir_when_none_is_given() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(json!({"id": "s", "name": "s", "secret": crate::delivery::CHOSEN_SECRET}))
        .await;
    let dir = app.stop().await;
    let mode = std::fs::metadata(dir.path().join("encryption.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let raw = raw_store_bytes(dir.path());
    assert!(!contains(
        &raw,
        crate::delivery::CHOSEN_SECRET.trim_start_matches("whsec_")
    ));
    // Restarting on the same data dir reads the secret back.
    let app = TestApp::spawn_in(dir, |_| {}).await;
    assert_eq!(
        Admin::of(&app).agent_secret("s").await,
        crate::delivery::CHOSEN_SECRET
    );
    app.stop().await;
}

#[tokio::test]
async fn rotate_key_re_encrypts_everything_under_the_new_key() {
    let with_key = |key: &'static str| {
        move |c: &mut event_router::Config| {
            c.encryption_key = Some(event_router::config::Secret(key.into()));
            c.encrypt_payloads = true;
        }
    };
    let app = TestApp::spawn_with(with_key(KEY_A)).await;
    let admin = Admin::of(&app);
    admin
        .create_agent(json!({"id": "s", "name": "s", "secret": crate::delivery::CHOSEN_SECRET}))
        .await;
    let marker = "rotation-marker-51c2";
    let body = json!({"ref": marker, "sender": {"login": "octocat"}}).to_string();
    let a = Webhook::github("push", body.into_bytes())
        .send_to(&app.client, &app.base)
        .await
        .accepted();
    let dir = app.stop().await;

    let mut cfg = crate::support::test_config(dir.path());
    with_key(KEY_A)(&mut cfg);
    let r = event_router::cli::rotate_key::rotate_key(&cfg, KEY_B)
        .await
        .unwrap();
    assert_eq!(r.agents, 1, "{r:?}");
    assert!(r.bodies >= 1, "{r:?}");
    // Running it again (as after an interruption) changes nothing and does not fail.
    let again = event_router::cli::rotate_key::rotate_key(&cfg, KEY_B)
        .await
        .unwrap();
    assert_eq!((again.agents, again.bodies), (0, 0));

    // The old key no longer opens the store; the new one reads everything back.
    let mut old_cfg = crate::support::test_config(dir.path());
    with_key(KEY_A)(&mut old_cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    assert!(event_router::start(old_cfg, listener).await.is_err());
    let app = TestApp::spawn_in(dir, with_key(KEY_B)).await;
    let admin = Admin::of(&app);
    assert_eq!(
        admin.agent_secret("s").await,
        crate::delivery::CHOSEN_SECRET
    );
    assert_eq!(admin.event(a.id).await["event"]["payload"]["ref"], marker);
    app.stop().await;
}

#[tokio::test]
async fn rotate_key_command_updates_the_generated_key_file() {
    let app = TestApp::spawn().await;
    Admin::of(&app)
        .create_agent(json!({"id": "s", "name": "s", "secret": crate::delivery::CHOSEN_SECRET}))
        .await;
    let dir = app.stop().await;
    let out = tokio::process::Command::new(crate::support::binary())
        .arg("rotate-key")
        .arg("--data-dir")
        .arg(dir.path())
        .env_clear()
        .envs(crate::support::database_for(dir.path()).map(|u| ("DATABASE_URL", u)))
        .env("NEW_ENCRYPTION_KEY", KEY_B)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("1 agent secrets"), "{stderr}");
    assert!(
        !stderr.contains(KEY_B),
        "the key is never printed: {stderr}"
    );
    let file = std::fs::read_to_string(dir.path().join("encryption.key")).unwrap();
    assert_eq!(file.trim(), KEY_B);
    let app = TestApp::spawn_in(dir, |_| {}).await;
    assert_eq!(
        Admin::of(&app).agent_secret("s").await,
        crate::delivery::CHOSEN_SECRET
    );
    app.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("first CA");
    let (cert, key) = ca.issue_into(dir.path());
    let port = crate::delivery::closed_port();
    let mut child = tokio::process::Command::new(crate::support::binary())
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_clear()
        .env("ADMIN_API_KEY", ADMIN_KEY)
        .env("TLS_CERT", &cert)
        .env("TLS_KEY", &key)
        .env("LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let first = ca.client();
    crate::support::wait_for(std::time::Duration::from_secs(20), || async {
        health(&first, &base).await.ok().filter(|s| *s == 200)
    })
    .await;
    let ca2 = TestCa::new("second CA");
    ca2.issue_into(dir.path());
    let pid = child.id().unwrap().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    let second = ca2.client();
    crate::support::wait_for(std::time::Duration::from_secs(10), || async {
        health(&second, &base).await.ok().filter(|s| *s == 200)
    })
    .await;
    // Still running (SIGHUP did not stop it), and SIGTERM still stops it cleanly.
    assert!(child.try_wait().unwrap().is_none());
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Refusals written by the HTTP layer itself, not by a handler, are in the contract's envelope
/// too: an admin body over the limit (`413`) and a WebSocket request without its upgrade.
#[tokio::test]
async fn framework_refusals_are_in_the_envelope() {
    let app = TestApp::spawn().await;
    let big = format!("{{\"id\":\"a\",\"name\":\"{}\"}}", "x".repeat(3 << 20));
    let r = app
        .client
        .post(app.url("/admin/agents"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["code"], "payload_too_large", "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    // Nothing was created.
    let (status, _) = app.admin_get("/admin/agents/a").await;
    assert_eq!(status, 404);

    let r = app
        .client
        .get(app.url(&format!("/stream/ws?agentId=x&apiKey={AGENT_KEY}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["success"], false, "{v}");
    assert!(v["code"].is_string(), "{v}");
    app.stop().await;
}
