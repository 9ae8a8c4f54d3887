//! Providers described in the config file instead of code (`[sources.NAME]` with
//! `scheme = "hmac"`, `"token"` or `"basic"`): the generic recipe for every provider not in the
//! catalog. docs/providers.md, "Any other provider", is the user's reference.
//!
//! - `hmac`: `header` holds `prefix` + the `encoding` (hex or base64) of the HMAC (`algorithm`
//!   sha1, sha256 or sha512) of `signed`, a template of `{body}`, `{timestamp}` (the value of
//!   `timestamp_header`, Unix seconds, within `tolerance_secs`) and `{id}` (the value of
//!   `id_header`) with literal text between them.
//! - `token`: `header` equals the secret.
//! - `basic`: `Authorization: Basic` with the secret as `user:password`.
//!
//! Each declares where the event's type comes from (`type_header` or `type_path`) and,
//! optionally, its delivery id (`id_header`). A recipe is built once, when the config is read,
//! and lives as long as the program (`Box::leak`): sources are `&'static dyn Provider`, as the
//! catalog's are, so the hot path does not change for them.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use http::HeaderMap;
use ring::hmac;

use super::signature::{SecretError, VerifyError, ct_eq, parse_timestamp, within_window};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, header_str,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

/// The scheme names a recipe answers to.
pub const SCHEMES: &[&str] = &["hmac", "token", "basic"];

/// The longest signature value read (hex of SHA-512 is 128 characters); anything longer is
/// refused before decoding.
const MAX_SIGNATURE_LEN: usize = 256;

/// The text of `[sources.NAME]`'s recipe keys, as written (validated by [`Recipe::build`]).
#[derive(Debug, Clone, Default)]
pub struct RecipeSpec {
    pub header: Option<String>,
    pub algorithm: Option<String>,
    pub encoding: Option<String>,
    pub prefix: Option<String>,
    pub signed: Option<String>,
    pub timestamp_header: Option<String>,
    pub tolerance_secs: Option<u64>,
    pub id_header: Option<String>,
    pub type_header: Option<String>,
    pub type_path: Option<String>,
}

impl RecipeSpec {
    /// The keys a recipe reads (besides `scheme`, `secret_env`, `identifier_field`).
    pub const KEYS: &[&str] = &[
        "header",
        "algorithm",
        "encoding",
        "prefix",
        "signed",
        "timestamp_header",
        "tolerance_secs",
        "id_header",
        "type_header",
        "type_path",
    ];

    fn is_empty_beyond(&self, allowed: &[&str]) -> Result<(), String> {
        let given = [
            ("header", self.header.is_some()),
            ("algorithm", self.algorithm.is_some()),
            ("encoding", self.encoding.is_some()),
            ("prefix", self.prefix.is_some()),
            ("signed", self.signed.is_some()),
            ("timestamp_header", self.timestamp_header.is_some()),
            ("tolerance_secs", self.tolerance_secs.is_some()),
        ];
        match given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            Some((k, _)) => Err(format!("{k} is not used by this scheme")),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Body,
    Timestamp,
    Id,
    Text(String),
}

#[derive(Debug)]
enum Kind {
    Hmac {
        header: &'static str,
        algorithm: hmac::Algorithm,
        encoding: Encoding,
        prefix: String,
        signed: Vec<Part>,
        timestamp: Option<(&'static str, u64)>,
    },
    Token {
        header: &'static str,
    },
    Basic,
}

#[derive(Debug, Clone, Copy)]
enum TypeFrom {
    Header(&'static str),
    Path,
}

/// A provider described by a config-declared source.
#[derive(Debug)]
pub struct Recipe {
    scheme: &'static str,
    kind: Kind,
    id_header: Option<&'static str>,
    type_from: TypeFrom,
    probes: &'static [Probe],
    signature_headers: &'static [&'static str],
}

const TYPE: Field = Field::new(0);

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// A header name as the recipe reads it: lowercase, and a valid name.
fn header_name(key: &str, name: &str) -> Result<&'static str, String> {
    let lower = name.trim().to_ascii_lowercase();
    http::HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| format!("{key}: {name:?} is not a header name"))?;
    Ok(leak(lower))
}

fn parse_template(t: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("signed: an unclosed {{ in {t:?}"))?;
        parts.push(match &rest[open + 1..open + close] {
            "body" => Part::Body,
            "timestamp" => Part::Timestamp,
            "id" => Part::Id,
            other => {
                return Err(format!(
                    "signed: unknown placeholder {{{other}}} (known: {{body}}, {{timestamp}}, {{id}})"
                ));
            }
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    if parts.iter().filter(|p| **p == Part::Body).count() != 1 {
        return Err(format!(
            "signed: {t:?} must contain {{body}} exactly once (a signature that does not cover the body proves nothing about it)"
        ));
    }
    Ok(parts)
}

impl Recipe {
    /// Builds the recipe of `scheme` (one of [`SCHEMES`]) from the source's keys.
    pub fn build(scheme: &str, spec: &RecipeSpec) -> Result<&'static Recipe, String> {
        let scheme: &'static str = SCHEMES
            .iter()
            .copied()
            .find(|s| *s == scheme)
            .ok_or_else(|| format!("{scheme:?} is not a recipe scheme"))?;
        let id_header = spec
            .id_header
            .as_deref()
            .map(|h| header_name("id_header", h))
            .transpose()?;
        let (type_from, probes): (TypeFrom, &'static [Probe]) =
            match (&spec.type_header, &spec.type_path) {
                (Some(h), None) => (TypeFrom::Header(header_name("type_header", h)?), &[]),
                (None, Some(path)) => {
                    let path = path.strip_prefix("payload.").unwrap_or(path);
                    if path.is_empty() || path.split('.').any(str::is_empty) {
                        return Err(format!(
                            "type_path: {path:?} is not a dot path such as \"payload.event.type\""
                        ));
                    }
                    let segments: Vec<&'static str> =
                        path.split('.').map(|s| leak(s.to_string())).collect();
                    let segments: &'static [&'static str] = Box::leak(segments.into_boxed_slice());
                    (
                        TypeFrom::Path,
                        Box::leak(vec![(segments, TYPE)].into_boxed_slice()),
                    )
                }
                (Some(_), Some(_)) => {
                    return Err("give type_header or type_path, not both".into());
                }
                (None, None) => {
                    return Err(
                        "type_header or type_path is required: where the event's type comes from"
                            .into(),
                    );
                }
            };
        let kind = match scheme {
            "hmac" => {
                let header = header_name(
                    "header",
                    spec.header
                        .as_deref()
                        .ok_or("header is required: the header holding the signature")?,
                )?;
                let algorithm = match spec.algorithm.as_deref().unwrap_or("sha256") {
                    "sha1" => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                    "sha256" => hmac::HMAC_SHA256,
                    "sha512" => hmac::HMAC_SHA512,
                    other => {
                        return Err(format!(
                            "algorithm: {other:?} (expected \"sha1\", \"sha256\" or \"sha512\")"
                        ));
                    }
                };
                let encoding = match spec.encoding.as_deref().unwrap_or("hex") {
                    "hex" => Encoding::Hex,
                    "base64" => Encoding::Base64,
                    other => {
                        return Err(format!(
                            "encoding: {other:?} (expected \"hex\" or \"base64\")"
                        ));
                    }
                };
                let signed = parse_template(spec.signed.as_deref().unwrap_or("{body}"))?;
                let timestamp = match &spec.timestamp_header {
                    Some(h) => Some((
                        header_name("timestamp_header", h)?,
                        spec.tolerance_secs.unwrap_or(300),
                    )),
                    None if spec.tolerance_secs.is_some() => {
                        return Err("tolerance_secs needs a timestamp_header".into());
                    }
                    None => None,
                };
                if signed.contains(&Part::Timestamp) && timestamp.is_none() {
                    return Err("signed uses {timestamp}: set timestamp_header".into());
                }
                if signed.contains(&Part::Id) && id_header.is_none() {
                    return Err("signed uses {id}: set id_header".into());
                }
                Kind::Hmac {
                    header,
                    algorithm,
                    encoding,
                    prefix: spec.prefix.clone().unwrap_or_default(),
                    signed,
                    timestamp,
                }
            }
            "token" => {
                spec.is_empty_beyond(&["header"])?;
                Kind::Token {
                    header: header_name(
                        "header",
                        spec.header
                            .as_deref()
                            .ok_or("header is required: the header holding the token")?,
                    )?,
                }
            }
            _ => {
                spec.is_empty_beyond(&[])?;
                Kind::Basic
            }
        };
        let signature_headers: &'static [&'static str] = match &kind {
            Kind::Hmac { header, .. } | Kind::Token { header } => {
                Box::leak(vec![*header].into_boxed_slice())
            }
            Kind::Basic => &[],
        };
        Ok(Box::leak(Box::new(Recipe {
            scheme,
            kind,
            id_header,
            type_from,
            probes,
            signature_headers,
        })))
    }

    fn value<'a>(req: &Request<'a>, name: &str) -> Option<&'a [u8]> {
        req.header(name).map(<[u8]>::trim_ascii)
    }
}

/// A signature value decoded, if it is one (bounded, so a huge header costs nothing).
fn decode(encoding: Encoding, text: &[u8]) -> Option<Vec<u8>> {
    if text.is_empty() || text.len() > MAX_SIGNATURE_LEN {
        return None;
    }
    match encoding {
        Encoding::Hex => hex::decode(text).ok(),
        Encoding::Base64 => STANDARD_PAD_INDIFFERENT.decode(text).ok(),
    }
}

impl Provider for Recipe {
    fn name(&self) -> &'static str {
        self.scheme
    }

    fn builtin(&self) -> Option<Builtin> {
        None
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        self.signature_headers
    }

    fn parse_secrets(&self, list: &str) -> Result<Secrets, SecretError> {
        match &self.kind {
            Kind::Hmac { algorithm, .. } => {
                SecretSet::hmac_from_list_for(list, &[*algorithm]).map(Secrets::Hmac)
            }
            Kind::Token { .. } | Kind::Basic => {
                let tokens: Vec<Vec<u8>> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.as_bytes().to_vec())
                    .collect();
                if tokens.is_empty() {
                    Err(SecretError::Empty)
                } else {
                    Ok(Secrets::Tokens(tokens))
                }
            }
        }
    }

    fn replay_window(&self) -> Option<std::time::Duration> {
        match &self.kind {
            Kind::Hmac {
                timestamp: Some((_, secs)),
                ..
            } => Some(std::time::Duration::from_secs(*secs)),
            _ => None,
        }
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
        match (&self.kind, secrets) {
            (
                Kind::Hmac {
                    header,
                    encoding,
                    prefix,
                    signed,
                    timestamp,
                    ..
                },
                Some(Secrets::Hmac(set)),
            ) => {
                let Some(mac) = Self::value(req, header)
                    .and_then(|v| v.strip_prefix(prefix.as_bytes()))
                    .and_then(|v| decode(*encoding, v))
                else {
                    return INVALID;
                };
                let ts = timestamp.map(|(h, _)| Self::value(req, h));
                let id = self.id_header.map(|h| Self::value(req, h));
                let mut parts: Vec<&[u8]> = Vec::with_capacity(signed.len());
                for part in signed {
                    parts.push(match part {
                        Part::Body => req.body,
                        Part::Text(t) => t.as_bytes(),
                        Part::Timestamp => match ts {
                            Some(Some(v)) => v,
                            _ => return INVALID,
                        },
                        Part::Id => match id {
                            Some(Some(v)) => v,
                            _ => return INVALID,
                        },
                    });
                }
                if !set.any_mac(&parts, |m| ct_eq(m, &mac)) {
                    return INVALID;
                }
                // The window is checked after the signature: only a genuine request is stale.
                match timestamp {
                    Some((h, secs)) => {
                        let ts = Self::value(req, h)
                            .and_then(parse_timestamp)
                            .ok_or(VerifyError::InvalidSignature)?;
                        within_window(ts, req.now_ms / 1000, *secs)
                    }
                    None => Ok(()),
                }
            }
            (Kind::Token { header }, Some(Secrets::Tokens(tokens))) => {
                let Some(given) = Self::value(req, header) else {
                    return INVALID;
                };
                // Every token is compared, so the time taken does not say which one matched.
                let matched = tokens
                    .iter()
                    .fold(false, |found, t| ct_eq(t, given) | found);
                if matched { Ok(()) } else { INVALID }
            }
            (Kind::Basic, Some(Secrets::Tokens(tokens))) => {
                // No credentials longer than the longest secret are decoded.
                let longest = tokens.iter().map(Vec::len).max().unwrap_or(0);
                let Some(credentials) = Self::value(req, "authorization")
                    .and_then(|v| {
                        v.get(..6)
                            .filter(|s| s.eq_ignore_ascii_case(b"basic "))
                            .map(|_| v[6..].trim_ascii())
                    })
                    .filter(|b64| b64.len() <= longest.div_ceil(3) * 4)
                    .and_then(|b64| STANDARD_PAD_INDIFFERENT.decode(b64).ok())
                else {
                    return INVALID;
                };
                let matched = tokens
                    .iter()
                    .fold(false, |found, t| ct_eq(t, &credentials) | found);
                if matched { Ok(()) } else { INVALID }
            }
            _ => INVALID,
        }
    }

    fn probes(&self) -> &'static [Probe] {
        self.probes
    }

    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event_type = match self.type_from {
            TypeFrom::Header(h) => header_str(headers, h)
                .ok_or_else(|| BodyError(format!("missing {h} header (the event's type)")))?,
            TypeFrom::Path => fields.str(TYPE).filter(|t| !t.is_empty()).ok_or_else(|| {
                BodyError("the body has no string at the source's type_path".into())
            })?,
        };
        Ok(Classified {
            event_type: event_type.to_string(),
            action: None,
            delivery_id: self
                .id_header
                .and_then(|h| header_str(headers, h))
                .map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        if let Some(h) = self.id_header {
            out.header(h, uuid::Uuid::new_v4().to_string());
        }
        if let TypeFrom::Header(h) = self.type_from {
            out.header(h, opts.event.unwrap_or("test"));
        }
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        match &self.kind {
            Kind::Hmac {
                header,
                algorithm,
                encoding,
                prefix,
                signed,
                timestamp,
            } => {
                let ts = (opts.now_ms / 1000).to_string();
                if let Some((h, _)) = timestamp {
                    out.header(h, ts.clone());
                }
                let id = match self.id_header {
                    Some(h) => match out.get(h) {
                        Some(id) => id.to_string(),
                        None => {
                            let id = uuid::Uuid::new_v4().to_string();
                            out.header(h, id.clone());
                            id
                        }
                    },
                    None => String::new(),
                };
                let key = hmac::Key::new(*algorithm, secret.as_bytes());
                let mut ctx = hmac::Context::with_key(&key);
                for part in signed {
                    ctx.update(match part {
                        Part::Body => &out.body,
                        Part::Text(t) => t.as_bytes(),
                        Part::Timestamp => ts.as_bytes(),
                        Part::Id => id.as_bytes(),
                    });
                }
                let tag = ctx.sign();
                let mac = match encoding {
                    Encoding::Hex => hex::encode(tag.as_ref()),
                    Encoding::Base64 => STANDARD.encode(tag.as_ref()),
                };
                out.header(header, format!("{prefix}{mac}"));
            }
            Kind::Token { header } => out.header(header, secret),
            Kind::Basic => out.header(
                "authorization",
                format!("Basic {}", STANDARD.encode(secret.as_bytes())),
            ),
        }
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/recipe-test.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{RequestLine, github, slack};

    fn spec(f: impl FnOnce(&mut RecipeSpec)) -> RecipeSpec {
        let mut s = RecipeSpec {
            type_header: Some("X-Event".into()),
            ..Default::default()
        };
        f(&mut s);
        s
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn check(
        r: &Recipe,
        secret: &str,
        h: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), VerifyError> {
        let req = Request {
            source: "acme",
            line: RequestLine::post("/webhook/acme"),
            public_url: None,
            headers: h,
            body,
            now_ms,
            agent_key: &|_| false,
        };
        r.verify(&req, Some(&r.parse_secrets(secret).unwrap()))
    }

    /// GitHub's scheme as a recipe accepts what GitHub signs (its published vector).
    #[test]
    fn github_written_as_a_recipe_verifies_githubs_published_vector() {
        let r = Recipe::build(
            "hmac",
            &spec(|s| {
                s.header = Some("X-Hub-Signature-256".into());
                s.prefix = Some("sha256=".into());
                s.id_header = Some("X-GitHub-Delivery".into());
            }),
        )
        .unwrap();
        let body = b"Hello, World!";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(github::sign(b"It's a Secret to Everybody", body), sig);
        let h = headers(&[("x-hub-signature-256", sig)]);
        assert_eq!(check(r, "It's a Secret to Everybody", &h, body, 0), Ok(()));
        assert_eq!(
            check(r, "It's a Secret to Everybody", &h, b"Hello, World?", 0),
            Err(VerifyError::InvalidSignature)
        );
        // Rotation: any secret of the list.
        assert_eq!(
            check(r, "old, It's a Secret to Everybody", &h, body, 0),
            Ok(())
        );
        assert_eq!(
            check(r, "another", &h, body, 0),
            Err(VerifyError::InvalidSignature)
        );
        // Without the prefix, or without the header.
        let bare = headers(&[("x-hub-signature-256", &sig[7..])]);
        assert_eq!(
            check(r, "It's a Secret to Everybody", &bare, body, 0),
            Err(VerifyError::InvalidSignature)
        );
        assert_eq!(
            check(r, "It's a Secret to Everybody", &HeaderMap::new(), body, 0),
            Err(VerifyError::InvalidSignature)
        );
    }

    /// Slack's scheme as a recipe: `v0:{timestamp}:{body}` with a 300 s window.
    #[test]
    fn slack_written_as_a_recipe_verifies_slacks_signatures_and_window() {
        let r = Recipe::build(
            "hmac",
            &spec(|s| {
                s.header = Some("X-Slack-Signature".into());
                s.prefix = Some("v0=".into());
                s.signed = Some("v0:{timestamp}:{body}".into());
                s.timestamp_header = Some("X-Slack-Request-Timestamp".into());
                s.tolerance_secs = Some(300);
            }),
        )
        .unwrap();
        assert_eq!(r.replay_window(), Some(std::time::Duration::from_secs(300)));
        let body = b"token=x&team_id=T1";
        let ts = 1_531_420_618i64;
        let sig = slack::sign(b"8f742231b10e8888abcd99yyyzzz85a5", ts, body);
        let h = headers(&[
            ("x-slack-signature", &sig),
            ("x-slack-request-timestamp", &ts.to_string()),
        ]);
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        assert_eq!(check(r, secret, &h, body, ts * 1000), Ok(()));
        assert_eq!(check(r, secret, &h, body, (ts + 300) * 1000), Ok(()));
        assert_eq!(
            check(r, secret, &h, body, (ts + 301) * 1000),
            Err(VerifyError::StaleTimestamp)
        );
        // A timestamp changed after signing is not genuine: invalid, not stale.
        let moved = headers(&[
            ("x-slack-signature", &sig),
            ("x-slack-request-timestamp", &(ts + 1).to_string()),
        ]);
        assert_eq!(
            check(r, secret, &moved, body, ts * 1000),
            Err(VerifyError::InvalidSignature)
        );
    }

    #[test]
    fn other_algorithms_encodings_and_the_id_sign_what_they_verify() {
        for (algorithm, encoding) in [
            ("sha1", "hex"),
            ("sha1", "base64"),
            ("sha256", "base64"),
            ("sha512", "hex"),
            ("sha512", "base64"),
        ] {
            let r = Recipe::build(
                "hmac",
                &spec(|s| {
                    s.header = Some("X-Sig".into());
                    s.algorithm = Some(algorithm.into());
                    s.encoding = Some(encoding.into());
                    s.signed = Some("{id}.{timestamp}.{body}".into());
                    s.id_header = Some("X-Id".into());
                    s.timestamp_header = Some("X-Ts".into());
                }),
            )
            .unwrap();
            let mut out = Outgoing {
                headers: Vec::new(),
                body: br#"{"a":1}"#.to_vec(),
                url: None,
            };
            let opts = SendOptions {
                event: Some("thing.done"),
                secret: Some("k"),
                agent_key: None,
                now_ms: 1_700_000_000_000,
            };
            r.compose(&mut out, &opts).unwrap();
            r.sign(&mut out, &opts).unwrap();
            let pairs: Vec<(&str, &str)> = out
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let h = headers(&pairs);
            assert_eq!(
                check(r, "k", &h, &out.body, opts.now_ms),
                Ok(()),
                "{algorithm}/{encoding}"
            );
            assert_eq!(
                check(r, "k2", &h, &out.body, opts.now_ms),
                Err(VerifyError::InvalidSignature)
            );
            // The id is signed: another id is refused.
            let mut other = pairs.clone();
            other.retain(|(k, _)| *k != "x-id");
            other.push(("x-id", "another"));
            assert_eq!(
                check(r, "k", &headers(&other), &out.body, opts.now_ms),
                Err(VerifyError::InvalidSignature)
            );
            let fields = crate::event::Fields::default();
            let c = r.classify(&h, &fields).unwrap();
            assert_eq!(c.event_type, "thing.done");
            assert_eq!(c.delivery_id.as_deref(), out.get("x-id"));
        }
    }

    #[test]
    fn token_and_basic_compare_the_secret() {
        let token = Recipe::build("token", &spec(|s| s.header = Some("X-Token".into()))).unwrap();
        let h = headers(&[("x-token", "tok-2")]);
        assert_eq!(check(token, "tok-1, tok-2", &h, b"{}", 0), Ok(()));
        assert_eq!(
            check(token, "tok-1", &h, b"{}", 0),
            Err(VerifyError::InvalidSignature)
        );
        assert_eq!(
            check(token, "tok-1", &HeaderMap::new(), b"{}", 0),
            Err(VerifyError::InvalidSignature)
        );
        let basic = Recipe::build("basic", &spec(|_| {})).unwrap();
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]); // user:pass
        assert_eq!(check(basic, "user:pass", &h, b"{}", 0), Ok(()));
        let lower = headers(&[("authorization", "basic dXNlcjpwYXNz")]);
        assert_eq!(check(basic, "user:pass", &lower, b"{}", 0), Ok(()));
        for bad in [
            "Basic dXNlcjpwYXNzMQ==",
            "Bearer dXNlcjpwYXNz",
            "Basic !!!",
            "Basic",
        ] {
            let h = headers(&[("authorization", bad)]);
            assert_eq!(
                check(basic, "user:pass", &h, b"{}", 0),
                Err(VerifyError::InvalidSignature),
                "{bad}"
            );
        }
        let mut out = Outgoing::default();
        let opts = SendOptions {
            event: None,
            secret: Some("user:pass"),
            agent_key: None,
            now_ms: 0,
        };
        basic.sign(&mut out, &opts).unwrap();
        assert_eq!(out.get("authorization"), Some("Basic dXNlcjpwYXNz"));
    }

    #[test]
    fn a_recipe_that_cannot_work_is_refused_with_the_reason() {
        let err =
            |scheme: &str, f: fn(&mut RecipeSpec)| Recipe::build(scheme, &spec(f)).unwrap_err();
        assert!(err("hmac", |_| {}).contains("header is required"));
        assert!(
            err("hmac", |s| {
                s.header = Some("x".into());
                s.algorithm = Some("md5".into());
            })
            .contains("algorithm")
        );
        assert!(
            err("hmac", |s| {
                s.header = Some("x".into());
                s.signed = Some("{timestamp}".into());
            })
            .contains("{body}")
        );
        assert!(
            err("hmac", |s| {
                s.header = Some("x".into());
                s.signed = Some("{timestamp}.{body}".into());
            })
            .contains("timestamp_header")
        );
        assert!(
            err("hmac", |s| {
                s.header = Some("x".into());
                s.signed = Some("{nonce}{body}".into());
            })
            .contains("unknown placeholder")
        );
        assert!(
            err("hmac", |s| {
                s.header = Some("bad header".into());
            })
            .contains("not a header name")
        );
        assert!(err("token", |s| s.header = None).contains("header is required"));
        assert!(err("basic", |s| s.header = Some("x".into())).contains("not used"));
        assert!(
            err("hmac", |s| {
                s.header = Some("x".into());
                s.type_path = Some("payload.kind".into());
            })
            .contains("not both")
        );
        assert!(
            Recipe::build(
                "token",
                &RecipeSpec {
                    header: Some("x".into()),
                    ..Default::default()
                }
            )
            .unwrap_err()
            .contains("type_header or type_path is required")
        );
    }
}
