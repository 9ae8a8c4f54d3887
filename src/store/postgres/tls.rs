//! TLS to PostgreSQL, configured in the connection string as libpq configures it: `sslmode`
//! (`disable`, `prefer` — the default —, `require`, `verify-ca`, `verify-full`) and
//! `sslrootcert` (a PEM file of trusted CA certificates), in the URL form
//! (`postgres://…?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem`) or the key=value form.
//!
//! tokio-postgres itself knows `disable`, `prefer` and `require`, and negotiates TLS through a
//! connector; the connector here is `tokio-postgres-rustls` (rustls with ring, as the rest of the
//! binary; it also gives SCRAM channel binding). What libpq adds on top, this module adds:
//!
//! - `verify-full`: the server's certificate must chain to a trusted root and name the host;
//! - `verify-ca`: it must chain to a trusted root (any name);
//! - `require` or `prefer` with `sslrootcert`: as `verify-ca` (libpq does the same);
//! - `require` or `prefer` without it: encrypted, the certificate not checked (libpq's meaning;
//!   use `verify-full` against an active attacker).
//!
//! The trusted roots are `sslrootcert`'s certificates when it is given, the public web roots
//! (webpki) otherwise; libpq instead reads `~/.postgresql/root.crt`. `sslcert` and `sslkey`
//! (PEM) give a client certificate for servers that ask for one; libpq's default files under
//! `~/.postgresql/` are not read, and encrypted keys (`sslpassword`) are not supported.

use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector every PostgreSQL connection of this process uses.
pub type Tls = MakeRustlsConnect;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Not at all (`prefer`, `require` without `sslrootcert`): encryption only.
    Nothing,
    /// The chain, not the name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// Parses a connection string (URL or key=value) with libpq's TLS options, into the
/// tokio-postgres configuration and the TLS connector to connect with. Errors name what is
/// wrong; they never contain the password.
pub fn connect_options(conn: &str) -> Result<(tokio_postgres::Config, Tls), String> {
    let mut options = Options::parse(conn)?;
    let mode = options.take("sslmode");
    let root_cert = options.take("sslrootcert");
    let client_cert = match (options.take("sslcert"), options.take("sslkey")) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("sslcert and sslkey go together: give both or neither".into()),
    };
    if options.take("sslpassword").is_some() {
        return Err("sslpassword (an encrypted sslkey) is not supported: decrypt the key".into());
    }
    let (pg_mode, verify) = match mode.as_deref() {
        None | Some("prefer") => ("prefer", Verify::Nothing),
        Some("disable") => ("disable", Verify::Nothing),
        Some("allow") => return Err("sslmode=allow is not supported; use prefer".into()),
        Some("require") => ("require", Verify::Nothing),
        Some("verify-ca") => ("require", Verify::Chain),
        Some("verify-full") => ("require", Verify::Full),
        Some(other) => {
            return Err(format!(
                "invalid sslmode {other:?}: expected disable, prefer, require, verify-ca or \
                 verify-full"
            ));
        }
    };
    // libpq: with a root certificate file, require (and prefer) check the chain.
    let verify = match (verify, &root_cert) {
        (Verify::Nothing, Some(_)) if pg_mode != "disable" => Verify::Chain,
        (v, _) => v,
    };
    options.set("sslmode", pg_mode);
    let mut config = options
        .render()
        .parse::<tokio_postgres::Config>()
        .map_err(|e| super::pg_message(&e))?;
    // PostgreSQL never speaks TLS on a Unix socket, and libpq ignores sslmode there.
    let hosts = config.get_hosts();
    if !hosts.is_empty()
        && hosts
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
    {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    let tls = client_config(verify, root_cert.as_deref(), client_cert)?;
    Ok((config, MakeRustlsConnect::new(tls)))
}

fn client_config(
    verify: Verify,
    root_cert: Option<&str>,
    client_cert: Option<(String, String)>,
) -> Result<rustls::ClientConfig, String> {
    let provider = crate::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let roots = || -> Result<Arc<rustls::RootCertStore>, String> {
        let Some(path) = root_cert else {
            return Ok(Arc::new(rustls::RootCertStore::from_iter(
                webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
            )));
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("sslrootcert {path} holds no PEM certificate"));
        }
        let mut store = rustls::RootCertStore::empty();
        for cert in certs {
            store
                .add(cert)
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
        }
        Ok(Arc::new(store))
    };
    let builder = match verify {
        Verify::Full => builder.with_root_certificates(roots()?),
        Verify::Chain | Verify::Nothing => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots()?, provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LibpqVerifier {
                    inner,
                    check_chain: verify == Verify::Chain,
                }))
        }
    };
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certified = crate::tls::load_certified_key(cert.as_ref(), key.as_ref())
                .map_err(|e| format!("sslcert/sslkey: {e}"))?;
            builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::new(certified))))
        }
    };
    // PostgreSQL 17's direct TLS negotiation (sslnegotiation=direct) requires this ALPN name;
    // servers before it ignore the extension.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The one client certificate `sslcert`/`sslkey` name, offered whenever the server asks.
#[derive(Debug)]
struct ClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `verify-ca` (the chain, any name) and the unchecked modes. Handshake signatures are always
/// verified: the unchecked modes trust whoever holds the key of the certificate offered, not
/// whoever merely replays it.
#[derive(Debug)]
struct LibpqVerifier {
    inner: Arc<WebPkiServerVerifier>,
    check_chain: bool,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.check_chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A connection string taken apart into its options, so that the ones tokio-postgres does not
/// know can be taken out and the rest handed to it.
///
/// Hand-written: tokio-postgres keeps its parser private, and refuses options it does not know.
/// The grammar is its own (`Config::from_str`): a URL `postgres[ql]://…?k=v&k=v` (percent-encoded
/// values), or `key=value` pairs separated by whitespace, a value either bare or in single quotes,
/// with backslash escapes in both.
struct Options {
    /// The URL up to its query (`None`: the key=value form).
    url_base: Option<String>,
    pairs: Vec<(String, String)>,
}

impl Options {
    fn parse(conn: &str) -> Result<Options, String> {
        if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
            let (base, query) = match conn.split_once('?') {
                Some((base, query)) => (base, query),
                None => (conn, ""),
            };
            let mut pairs = Vec::new();
            for part in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = part.split_once('=').unwrap_or((part, ""));
                let decode = |s: &str| {
                    percent_decode_str(s)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| "the database URL's query is not UTF-8".to_string())
                };
                pairs.push((decode(k)?, decode(v)?));
            }
            return Ok(Options {
                url_base: Some(base.to_string()),
                pairs,
            });
        }
        let mut pairs = Vec::new();
        let mut chars = conn.chars().peekable();
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
                key.push(c);
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.next() != Some('=') {
                return Err(format!("option {key:?} has no '=' and value"));
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            let mut value = String::new();
            if chars.next_if_eq(&'\'').is_some() {
                loop {
                    match chars.next() {
                        None => return Err(format!("option {key:?}: unterminated quoted value")),
                        Some('\'') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => value.push(c),
                            None => return Err(format!("option {key:?}: dangling backslash")),
                        },
                        Some(c) => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    if c == '\\' {
                        match chars.next() {
                            Some(c) => value.push(c),
                            None => return Err(format!("option {key:?}: dangling backslash")),
                        }
                    } else {
                        value.push(c);
                    }
                }
            }
            pairs.push((key, value));
        }
        Ok(Options {
            url_base: None,
            pairs,
        })
    }

    /// Removes every occurrence of `key`, returning the last value (the one that counts).
    fn take(&mut self, key: &str) -> Option<String> {
        let mut last = None;
        self.pairs.retain(|(k, v)| {
            if k == key {
                last = Some(v.clone());
                false
            } else {
                true
            }
        });
        last
    }

    fn set(&mut self, key: &str, value: &str) {
        self.take(key);
        self.pairs.push((key.to_string(), value.to_string()));
    }

    fn render(&self) -> String {
        match &self.url_base {
            Some(base) => {
                use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
                // RFC 3986's unreserved characters stay as they are.
                const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
                    .remove(b'-')
                    .remove(b'.')
                    .remove(b'_')
                    .remove(b'~');
                let mut out = base.clone();
                for (i, (k, v)) in self.pairs.iter().enumerate() {
                    out.push(if i == 0 { '?' } else { '&' });
                    out.extend(utf8_percent_encode(k, COMPONENT));
                    out.push('=');
                    out.extend(utf8_percent_encode(v, COMPONENT));
                }
                out
            }
            None => {
                let mut out = String::new();
                for (k, v) in &self.pairs {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push_str(k);
                    out.push_str("='");
                    for c in v.chars() {
                        if c == '\'' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('\'');
                }
                out
            }
        }
    }
}

/// The key=value form with the value of `password` replaced by `***` (the URL form is
/// `redact_url`'s).
pub(super) fn redact_key_value(conn: &str) -> String {
    match Options::parse(conn) {
        Ok(mut options) => {
            for (k, v) in &mut options.pairs {
                if k == "password" {
                    *v = "***".into();
                }
            }
            options.render()
        }
        // Unparseable: say nothing of it rather than risk repeating a password.
        Err(_) => "(unparseable connection string)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(conn: &str) -> String {
        let mut o = Options::parse(conn).unwrap();
        o.take("sslrootcert");
        o.render()
    }

    #[test]
    fn url_options_are_taken_out_and_the_rest_kept() {
        assert_eq!(
            rendered(
                "postgres://u:p%40ss@h:5/db?sslrootcert=%2Ftmp%2Fca.pem&application_name=a%20b"
            ),
            "postgres://u:p%40ss@h:5/db?application_name=a%20b"
        );
        assert_eq!(rendered("postgres://h/db"), "postgres://h/db");
        let mut o = Options::parse("postgresql://h/db?sslrootcert=%2Ftmp%2Fca%20x.pem").unwrap();
        assert_eq!(o.take("sslrootcert").as_deref(), Some("/tmp/ca x.pem"));
    }

    #[test]
    fn key_value_options_are_taken_out_and_quoted_back() {
        let conn = r"host=h  user = u password='it\'s a \\ secret' sslrootcert=/tmp/ca\ x.pem";
        let mut o = Options::parse(conn).unwrap();
        assert_eq!(o.take("sslrootcert").as_deref(), Some("/tmp/ca x.pem"));
        let back = o.render();
        assert_eq!(back, r"host='h' user='u' password='it\'s a \\ secret'");
        let config: tokio_postgres::Config = back.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's a \\ secret"[..]));
        for bad in ["host", "host='h", "host=h\\"] {
            assert!(Options::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modes_map_onto_what_tokio_postgres_knows() {
        use tokio_postgres::config::SslMode;
        let mode = |conn: &str| connect_options(conn).map(|(c, _)| c.get_ssl_mode());
        assert_eq!(mode("postgres://h/db"), Ok(SslMode::Prefer));
        assert_eq!(
            mode("postgres://h/db?sslmode=disable"),
            Ok(SslMode::Disable)
        );
        assert_eq!(mode("host=h sslmode=verify-ca"), Ok(SslMode::Require));
        assert_eq!(
            mode("postgres://h/db?sslmode=verify-full"),
            Ok(SslMode::Require)
        );
        let err = mode("postgres://h/db?sslmode=verify").unwrap_err();
        assert!(err.contains("invalid sslmode \"verify\""), "{err}");
        assert!(mode("postgres://h/db?sslmode=allow").is_err());
        let err = mode("postgres://h/db?sslmode=require&sslcert=/c.pem").unwrap_err();
        assert!(err.contains("sslcert and sslkey go together"), "{err}");
        let err = mode("postgres://h/db?sslcert=/c.pem&sslkey=/k.pem&sslpassword=x").unwrap_err();
        assert!(err.contains("sslpassword"), "{err}");
        let err = mode("postgres://h/db?sslcert=/nonexistent/c.pem&sslkey=/k.pem").unwrap_err();
        assert!(
            err.contains("sslcert/sslkey: cannot read the certificate"),
            "{err}"
        );
        let err =
            mode("postgres://h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(
            err.contains("cannot read sslrootcert /nonexistent/ca.pem"),
            "{err}"
        );
    }

    use crate::store::postgres::testing::{self, fresh_database_or_skip};
    use crate::store::postgres::{PgOptions, PgStore};
    use crate::store::{ClusterStore, Store};

    fn with_params(url: &str, params: &str) -> String {
        format!("{url}{}{params}", if url.contains('?') { '&' } else { '?' })
    }

    /// Whether the session `client` is on is encrypted, as the server sees it.
    async fn encrypted(client: &tokio_postgres::Client) -> bool {
        client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// A plain connection to `url`'s server, and whether that server has TLS on (a server
    /// without it cannot show any of this: the test says so and passes).
    async fn plain_admin(url: &str) -> Option<tokio_postgres::Client> {
        let (client, conn) = testing::connect(&with_params(url, "sslmode=disable"))
            .await
            .unwrap();
        tokio::spawn(conn);
        let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if ssl != "on" {
            eprintln!("skipping: the test server has ssl = {ssl}");
            return None;
        }
        assert!(!encrypted(&client).await, "sslmode=disable used TLS");
        Some(client)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_and_its_listener_connect_over_tls_by_default() {
        let Some((url, _db)) = fresh_database_or_skip().await else {
            return;
        };
        let Some(admin) = plain_admin(&url).await else {
            return;
        };
        // No sslmode: libpq's default, prefer, which takes TLS where the server offers it.
        let store = PgStore::open(&url, PgOptions::default()).await.unwrap();
        let _notices = store.listen().await.unwrap();
        store.ping().await.unwrap();
        let (sessions, encrypted): (i64, i64) = admin
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl)
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.datname = current_database() AND a.application_name = 'event-router'",
                &[],
            )
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert!(
            sessions >= 2,
            "a pooled and the LISTEN connection: {sessions}"
        );
        assert_eq!(encrypted, sessions);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_modes_check_the_servers_certificate() {
        let server = testing::server_url();
        if testing::connect(&server).await.is_err() && std::env::var_os("CI").is_none() {
            eprintln!(
                "skipping a PostgreSQL test: no server at {}",
                redact(&server)
            );
            return;
        }
        let Some(admin) = plain_admin(&server).await else {
            return;
        };
        // The server's own certificate (Debian's is self-signed for "localhost") serves as the
        // trusted root, when it is readable here and the server is this machine.
        let cert_file: String = admin
            .query_one("SHOW ssl_cert_file", &[])
            .await
            .unwrap()
            .get(0);
        let by_ip = server.contains("@127.0.0.1") || server.contains("//127.0.0.1");
        if !by_ip || std::fs::read(&cert_file).is_err() {
            eprintln!("skipping: the server's certificate {cert_file} is not this machine's");
            return;
        }
        let by_name = server.replacen("127.0.0.1", "localhost", 1);
        let root = format!("sslrootcert={cert_file}");
        let connect = |url: String| async move {
            match testing::connect(&url).await {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    Ok(encrypted(&client).await)
                }
                Err(e) => Err(e),
            }
        };
        let full = format!("sslmode=verify-full&{root}");
        assert_eq!(connect(with_params(&by_name, &full)).await, Ok(true));
        // The certificate names "localhost", not the address.
        let err = connect(with_params(&server, &full)).await.unwrap_err();
        assert!(err.contains("certificate not valid for name"), "{err}");
        // verify-ca checks the chain only; so does require given a root certificate.
        for mode in ["verify-ca", "require", "prefer"] {
            let params = format!("sslmode={mode}&{root}");
            assert_eq!(
                connect(with_params(&server, &params)).await,
                Ok(true),
                "{mode}"
            );
        }
        // Not signed by a trusted root: the public ones, or another certificate given.
        let err = connect(with_params(&by_name, "sslmode=verify-full"))
            .await
            .unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other-ca.pem");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&other, ca.cert.pem()).unwrap();
        for mode in ["verify-ca", "require"] {
            let params = format!("sslmode={mode}&sslrootcert={}", other.display());
            let err = connect(with_params(&server, &params)).await.unwrap_err();
            assert!(err.contains("certificate"), "{mode}: {err}");
        }
        // require without a root certificate encrypts and checks nothing (libpq's meaning).
        assert_eq!(
            connect(with_params(&server, "sslmode=require")).await,
            Ok(true)
        );
    }

    #[tokio::test]
    async fn a_unix_socket_connects_in_the_clear_as_libpq_does() {
        // PostgreSQL refuses TLS on Unix sockets, and libpq ignores sslmode there.
        let dir = "/var/run/postgresql";
        if !std::path::Path::new(dir).join(".s.PGSQL.5432").exists() {
            eprintln!("skipping: no PostgreSQL socket in {dir}");
            return;
        }
        for mode in ["prefer", "require", "verify-full"] {
            let url = format!("postgres:///postgres?host={dir}&user=postgres&sslmode={mode}");
            let (client, conn) = testing::connect(&url).await.unwrap();
            tokio::spawn(conn);
            assert!(!encrypted(&client).await, "{mode}");
        }
    }

    /// A certificate authority made for one test.
    struct TestCa {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        pem: String,
    }

    impl TestCa {
        fn new(name: &str) -> TestCa {
            use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let pem = params.self_signed(&key).unwrap().pem();
            TestCa {
                issuer: rcgen::Issuer::new(params, key),
                pem,
            }
        }

        /// A certificate for `name` and its key, as PEM files in `dir`: (cert, key, cert DER).
        fn issue(&self, dir: &std::path::Path, name: &str) -> (String, String, Vec<u8>) {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let (c, k) = (
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            let path = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
            (path(c), path(k), cert.der().to_vec())
        }
    }

    /// Answers one connection as PostgreSQL answers a TLS request (`S`), then finishes the
    /// handshake as `localhost`, requiring a client certificate signed by `client_ca`. Gives
    /// the certificate the client presented (`None`: the handshake failed).
    async fn one_tls_handshake(
        dir: &std::path::Path,
        server_ca: &TestCa,
        client_ca: &TestCa,
    ) -> (u16, tokio::task::JoinHandle<Option<Vec<u8>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let provider = crate::tls::provider();
        let (cert, key, _) = server_ca.issue(dir, "localhost");
        let chain = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(client_ca.pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
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
    async fn a_client_certificate_is_presented_when_given() {
        let dir = tempfile::tempdir().unwrap();
        let (server_ca, client_ca) = (TestCa::new("server ca"), TestCa::new("client ca"));
        let root = dir.path().join("server-ca.pem");
        std::fs::write(&root, &server_ca.pem).unwrap();
        let (cert, key, der) = client_ca.issue(dir.path(), "event-router");
        let (_, other_key, _) = client_ca.issue(dir.path(), "someone-else");
        let mixed = format!("postgres://er@localhost/db?sslcert={cert}&sslkey={other_key}");
        let Err(err) = connect_options(&mixed) else {
            panic!("a key of another certificate was taken");
        };
        assert!(err.contains("cannot be used"), "{err}");
        for with_cert in [true, false] {
            let (port, server) = one_tls_handshake(dir.path(), &server_ca, &client_ca).await;
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

    fn redact(url: &str) -> String {
        crate::store::postgres::redact_url(url)
    }

    #[test]
    fn a_key_value_password_is_redacted() {
        let r = redact_key_value("host=h password='s3cret value' user=u");
        assert!(!r.contains("s3cret"), "{r}");
        assert!(r.contains("password='***'"), "{r}");
        assert_eq!(
            redact_key_value("host='h"),
            "(unparseable connection string)"
        );
    }
}
