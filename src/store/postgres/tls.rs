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
//!   use `verify-full` against an active attacker). `prefer` also connects in the clear to a
//!   server (or an attacker) that answers it has no TLS;
//! - `sslrootcert=system` (libpq 16): the public web roots, and `verify-full`.
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
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector every PostgreSQL connection of this process uses.
pub type Tls = MakeRustlsConnect;

/// A connection's stream under that connector (TLS or not, as negotiated).
pub type Stream = <Tls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

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
    use tokio_postgres::config::{Host, SslMode};
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
    // libpq 16: `sslrootcert=system` trusts the system's roots (here the public web roots) and
    // means verify-full.
    let system_roots = root_cert.as_deref() == Some("system");
    let (ssl_mode, verify) = match mode.as_deref() {
        None if system_roots => (SslMode::Require, Verify::Full),
        None | Some("prefer") => (SslMode::Prefer, Verify::Nothing),
        Some("disable") => (SslMode::Disable, Verify::Nothing),
        Some("allow") => return Err("sslmode=allow is not supported; use prefer".into()),
        Some("require") => (SslMode::Require, Verify::Nothing),
        Some("verify-ca") => (SslMode::Require, Verify::Chain),
        Some("verify-full") => (SslMode::Require, Verify::Full),
        Some(_) => {
            return Err(
                "invalid sslmode: expected disable, prefer, require, verify-ca or verify-full"
                    .into(),
            );
        }
    };
    if system_roots && verify != Verify::Full {
        return Err("sslrootcert=system needs sslmode=verify-full (or no sslmode)".into());
    }
    let root_file = root_cert.filter(|_| !system_roots);
    // libpq: with a root certificate file, require (and prefer) check the chain.
    let verify = match (verify, &root_file) {
        (Verify::Nothing, Some(_)) => Verify::Chain,
        (v, _) => v,
    };
    if let Some((key, _, at)) = options
        .pairs
        .iter()
        .find(|(k, _, _)| !TOKIO_OPTIONS.contains(&k.as_str()))
    {
        return Err(if LIBPQ_OPTIONS.contains(&key.as_str()) {
            format!("the option {key} is not supported")
        } else {
            format!("an unknown option at byte {at} (not shown: it may be part of a password)")
        });
    }
    let mut config = options
        .render()
        .parse::<tokio_postgres::Config>()
        .map_err(|e| super::pg_message(&e))?;
    // Set here rather than in the text: what was asked for is what is used.
    config.ssl_mode(ssl_mode);
    if config.get_hosts().is_empty() {
        // Addresses only: each is also the name the handshake checks (without a name
        // tokio-postgres refuses TLS outright, even for prefer).
        let addresses: Vec<String> = config
            .get_hostaddrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
        for address in addresses {
            config.host(&address);
        }
    } else if !config.get_hostaddrs().is_empty()
        && config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, Host::Unix(_)))
        && config.get_ssl_mode() != SslMode::Disable
    {
        // The connection is TCP to the hostaddr, and TLS needs a host name to check, which a
        // socket path is not (tokio-postgres would refuse the handshake at every connect).
        return Err(
            "a Unix-socket host with a hostaddr cannot use TLS: give the server's \
                    name as host, or sslmode=disable"
                .into(),
        );
    } else if config
        .get_hosts()
        .iter()
        .all(|h| matches!(h, Host::Unix(_)))
    {
        // PostgreSQL never speaks TLS on a Unix socket, and libpq ignores sslmode there.
        config.ssl_mode(SslMode::Disable);
    }
    let tls = if config.get_ssl_mode() == SslMode::Disable {
        // Never used: no file is read for it.
        client_config(Verify::Nothing, None, None)?
    } else {
        client_config(verify, root_file.as_deref(), client_cert)?
    };
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
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
        let mut store = rustls::RootCertStore::empty();
        crate::tls::add_pem_roots(&mut store, &pem)
            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
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
    /// Key, value, and the byte where the key starts in the string given.
    pairs: Vec<(String, String, usize)>,
}

/// The options tokio-postgres 0.7 knows (`Config::param`); any other is refused by position,
/// since a key that is not an option may be a piece of a misplaced password.
const TOKIO_OPTIONS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// libpq options this module reads, or that libpq knows and this build does not support: named
/// in errors (they are no secret), unlike unknown keys.
const LIBPQ_OPTIONS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "sslcertmode",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requiressl",
    "require_auth",
    "gssencmode",
    "gsslib",
    "krbsrvname",
    "passfile",
    "service",
    "client_encoding",
    "fallback_application_name",
    "replication",
];

impl Options {
    fn parse(conn: &str) -> Result<Options, String> {
        if let Some(prefix) = url_prefix_len(conn) {
            // As tokio-postgres (and libpq) read a URL: the user info runs to the first '@'
            // (a password may hold '?' or '/'), and the query starts at the first '?' after it.
            let first_at = conn[prefix..].find('@').map(|at| prefix + at);
            if let Some(at) = first_at
                && let Some(slash) = conn[prefix..at].find('/')
                && conn[prefix + slash..at].contains('?')
            {
                // tokio-postgres would take "host/db?…" for a user name and what follows the
                // '@' for the host, so an '@' in the query (user=app@server) moves the
                // connection elsewhere and drops the options before it, sslmode included.
                return Err(format!(
                    "the database URL has an '@' after its query starts (byte {at}): write '@' \
                     in the query as %40 (and '/' and '?' in a password as %2F and %3F)"
                ));
            }
            let from = first_at.map_or(prefix, |at| at + 1);
            let (base, query, query_at) = match conn[from..].find('?') {
                Some(q) => (&conn[..from + q], &conn[from + q + 1..], from + q + 1),
                None => (conn, "", conn.len()),
            };
            let mut pairs = Vec::new();
            let mut at = query_at;
            for part in query.split('&').filter(|_| !query.is_empty()) {
                let Some((k, v)) = part.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                    return Err(format!(
                        "the database URL's query is malformed at byte {at}"
                    ));
                };
                let decode = |s: &str| {
                    percent_decode_str(s)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| format!("the database URL's query is not UTF-8 at byte {at}"))
                };
                pairs.push((decode(k)?, decode(v)?, at));
                at += part.len() + 1;
            }
            return Ok(Options {
                url_base: Some(base.to_string()),
                pairs,
            });
        }
        // Errors give a position, not text: a malformed string may be a password split apart.
        let malformed = |at: usize| format!("the connection string is malformed at byte {at}");
        let mut pairs = Vec::new();
        let mut chars = conn.char_indices().peekable();
        let skip_space = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        };
        loop {
            skip_space(&mut chars);
            let Some(&(key_at, _)) = chars.peek() else {
                break;
            };
            let mut key = String::new();
            while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
                key.push(c);
            }
            if key.is_empty() {
                // tokio-postgres would silently drop everything from here on.
                return Err(malformed(key_at));
            }
            skip_space(&mut chars);
            match chars.next() {
                Some((_, '=')) => {}
                other => return Err(malformed(other.map_or(conn.len(), |(at, _)| at))),
            }
            skip_space(&mut chars);
            let mut value = String::new();
            if let Some((quote_at, _)) = chars.next_if(|(_, c)| *c == '\'') {
                loop {
                    match chars.next() {
                        None => return Err(malformed(quote_at)),
                        Some((_, '\'')) => break,
                        Some((at, '\\')) => match chars.next() {
                            Some((_, c)) => value.push(c),
                            None => return Err(malformed(at)),
                        },
                        Some((_, c)) => value.push(c),
                    }
                }
            } else {
                // tokio-postgres refuses an empty bare value.
                match chars.peek() {
                    Some((_, c)) if !c.is_whitespace() => {}
                    other => return Err(malformed(other.map_or(conn.len(), |(at, _)| *at))),
                }
                while let Some((at, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                    if c == '\\' {
                        match chars.next() {
                            Some((_, c)) => value.push(c),
                            None => return Err(malformed(at)),
                        }
                    } else {
                        value.push(c);
                    }
                }
            }
            pairs.push((key, value, key_at));
        }
        Ok(Options {
            url_base: None,
            pairs,
        })
    }

    /// Removes every occurrence of `key`, returning the last value (the one that counts).
    fn take(&mut self, key: &str) -> Option<String> {
        let mut last = None;
        self.pairs.retain(|(k, v, _)| {
            if k == key {
                last = Some(v.clone());
                false
            } else {
                true
            }
        });
        last
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
                for (i, (k, v, _)) in self.pairs.iter().enumerate() {
                    out.push(if i == 0 { '?' } else { '&' });
                    out.extend(utf8_percent_encode(k, COMPONENT));
                    out.push('=');
                    out.extend(utf8_percent_encode(v, COMPONENT));
                }
                out
            }
            None => {
                let mut out = String::new();
                for (k, v, _) in &self.pairs {
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

/// The length of the URL prefix tokio-postgres recognises (`None`: the key=value form).
fn url_prefix_len(conn: &str) -> Option<usize> {
    ["postgres://", "postgresql://"]
        .into_iter()
        .find(|p| conn.starts_with(p))
        .map(str::len)
}

/// The connection string with every password in it replaced by `***`, for messages and logs.
///
/// More is hidden than tokio-postgres would take for a password, never less: in a URL whose
/// user info has a password, everything from it to the last '@' of the whole string; in the
/// query, the values of `password` and `sslpassword`, and after them every part that is not a
/// known option (an unencoded '&' splits a password into parts).
pub(super) fn redact(conn: &str) -> String {
    let Some(prefix) = url_prefix_len(conn) else {
        return redact_key_value(conn);
    };
    let rest = &conn[prefix..];
    let mut out = conn[..prefix].to_string();
    match (rest.find('@'), rest.rfind('@')) {
        (Some(first), Some(last)) if rest[..first].contains(':') => {
            let colon = rest[..first].find(':').unwrap_or(first);
            out.push_str(&rest[..colon]);
            out.push_str(":***");
            out.push_str(&rest[last..]);
        }
        _ => out.push_str(rest),
    }
    let Some(q) = out[prefix..].find('?').map(|q| prefix + q) else {
        return out;
    };
    let mut hiding = false;
    let parts: Vec<String> = out[q + 1..]
        .split('&')
        .map(|part| {
            let key = part.split_once('=').map(|(k, _)| k);
            let decoded = key.map(|k| percent_decode_str(k).decode_utf8_lossy().into_owned());
            match (key, decoded.as_deref()) {
                (Some(k), Some("password" | "sslpassword")) => {
                    hiding = true;
                    format!("{k}=***")
                }
                (Some(_), Some(d)) if TOKIO_OPTIONS.contains(&d) || LIBPQ_OPTIONS.contains(&d) => {
                    hiding = false;
                    part.to_string()
                }
                _ if hiding => "***".to_string(),
                _ => part.to_string(),
            }
        })
        .collect();
    format!("{}?{}", &out[..q], parts.join("&"))
}

/// The key=value form with the value of `password` replaced by `***`.
fn redact_key_value(conn: &str) -> String {
    match Options::parse(conn) {
        Ok(mut options) => {
            for (k, v, _) in &mut options.pairs {
                if k == "password" || k == "sslpassword" {
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
        assert!(
            err.starts_with("invalid sslmode: expected disable"),
            "{err}"
        );
        // sslrootcert=system: the public roots, verify-full.
        assert_eq!(
            mode("postgres://h/db?sslrootcert=system"),
            Ok(SslMode::Require)
        );
        let err = mode("postgres://h/db?sslrootcert=system&sslmode=require").unwrap_err();
        assert!(err.contains("needs sslmode=verify-full"), "{err}");
        // A Unix socket is in the clear, unless a hostaddr makes the connection TCP.
        assert_eq!(
            mode("postgres://%2Fvar%2Frun%2Fpostgresql/db?sslmode=verify-full"),
            Ok(SslMode::Disable)
        );
        assert_eq!(
            mode("postgres://%2Fvar%2Frun%2Fpostgresql/db?hostaddr=10.0.0.5&sslmode=disable"),
            Ok(SslMode::Disable)
        );
        // Off: the files named are not read.
        assert_eq!(
            mode("postgres://h/db?sslmode=disable&sslrootcert=/nonexistent/ca.pem"),
            Ok(SslMode::Disable)
        );
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
            skip_outside_ci(&format!("the test server has ssl = {ssl}"));
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
            skip_outside_ci(&format!(
                "the server's certificate {cert_file} is not this machine's"
            ));
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
            skip_outside_ci(&format!("no PostgreSQL socket in {dir}"));
            return;
        }
        for mode in ["prefer", "require", "verify-full"] {
            let url = format!("postgres:///postgres?host={dir}&user=postgres&sslmode={mode}");
            let (client, conn) = testing::connect(&url).await.unwrap();
            tokio::spawn(conn);
            assert!(!encrypted(&client).await, "{mode}");
        }
    }

    /// A test that cannot show what it is for here says so and passes, except under CI, whose
    /// PostgreSQL (the machine's own: TLS on, a socket, its certificate readable) must let it.
    fn skip_outside_ci(why: &str) {
        assert!(
            std::env::var_os("CI").is_none(),
            "{why}: under CI this test must run"
        );
        eprintln!("skipping: {why}");
    }

    fn redact(url: &str) -> String {
        crate::store::postgres::redact_url(url)
    }

    #[test]
    fn urls_are_read_as_tokio_postgres_reads_them() {
        // A '?' in the password belongs to it, not to the query.
        let (config, _) = connect_options("postgres://app:pa?ss@db/er?sslmode=require").unwrap();
        assert_eq!(config.get_password(), Some(&b"pa?ss"[..]));
        assert_eq!(config.get_dbname(), Some("er"));
        assert_eq!(
            config.get_hosts(),
            &[tokio_postgres::config::Host::Tcp("db".into())]
        );
        // Addresses only: each address is also the host name the handshake checks.
        let (config, _) = connect_options("postgres:///db?hostaddr=127.0.0.1").unwrap();
        assert_eq!(
            config.get_hosts(),
            &[tokio_postgres::config::Host::Tcp("127.0.0.1".into())]
        );
    }

    #[test]
    fn strings_tokio_postgres_would_misread_are_refused_without_repeating_them() {
        let refused = |conn: &str, expected: &str| {
            let Err(err) = connect_options(conn) else {
                panic!("{conn} was taken");
            };
            assert!(err.contains(expected), "{conn}: {err}");
            for secret in ["xyzzy", "qwerty", "s3cret", "srv"] {
                assert!(!err.contains(secret), "{conn}: {err}");
            }
        };
        // An '@' in the query: tokio-postgres would connect to "srv" without the sslmode.
        refused(
            "postgres://h/db?sslmode=verify-full&user=app@srv",
            "has an '@' after its query starts",
        );
        // Pieces of a password split by an unencoded '&' or '@…?' are not named.
        refused("postgres://app:p@ss?xyzzy@db/er", "malformed at byte");
        let at = |prefix: &str| format!("at byte {}", prefix.len());
        refused(
            "postgres://db/er?password=ab&qwerty=ef",
            &at("postgres://db/er?password=ab&"),
        );
        refused("host=h password=ab s3cret=x", &at("host=h password=ab "));
        refused(
            "postgres://db/er?sslcrl=/x",
            "the option sslcrl is not supported",
        );
        refused(
            "postgres://db/er?sslmode=require&&port=1",
            &at("postgres://db/er?sslmode=require&"),
        );
        refused("host=h port=", &at("host=h port="));
        // A socket path has no name for TLS to check.
        refused(
            "postgres://%2Fvar%2Frun%2Fpostgresql/db?hostaddr=10.0.0.5",
            "cannot use TLS",
        );
    }

    #[test]
    fn malformed_key_value_strings_are_refused_without_repeating_them() {
        // tokio-postgres would drop everything after an empty key, sslmode included.
        let Err(err) = connect_options("host=h =x sslmode=verify-full") else {
            panic!("an empty key was taken");
        };
        assert_eq!(err, "the connection string is malformed at byte 7");
        let Err(err) = connect_options("password=two words host=h") else {
            panic!("a split value was taken");
        };
        assert!(!err.contains("words"), "{err}");
    }

    #[test]
    fn every_password_is_redacted() {
        for (conn, secret) in [
            ("postgres://app:pa?ss@db/er", "pa?ss"),
            ("postgres://app:p@ss@db/er?x=1", "p@ss"),
            ("postgres://db/er?pass%77ord=s3cret", "s3cret"),
            ("postgres://db/er?sslmode=require&password=s3cret", "s3cret"),
            ("host=h application_name=http://x password=s3cret", "s3cret"),
            ("postgres://db/er?password=s@cret", "s@cret"),
            ("postgres://app:p@ss?word@db/er", "word"),
            ("postgres://db/er?password=ab&cd=ef&port=5432", "cd=ef"),
            ("postgres://db/er?sslpassword=s3cret", "s3cret"),
            ("host=h sslpassword=s3cret", "s3cret"),
        ] {
            let r = redact(conn);
            assert!(!r.contains(secret), "{conn} -> {r}");
            assert!(r.contains("***"), "{conn} -> {r}");
        }
        assert_eq!(
            redact("postgres://app:p@ss@db/er?x=1"),
            "postgres://app:***@db/er?x=1"
        );
        assert_eq!(redact("postgres://db/er?x=1"), "postgres://db/er?x=1");
        assert_eq!(
            redact("postgres://db/er?password=ab&cd=ef&port=5432"),
            "postgres://db/er?password=***&***&port=5432"
        );
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
