//! Twilio: `X-Twilio-Signature: <base64 HMAC-SHA1(auth token, URL + params)>`, where URL is the
//! full URL Twilio called (`public_url` with the query as received, else rebuilt from `Host`:
//! see `signed_url`), tried with and without the default port as Twilio's SDKs do, and params
//! a form body's fields sorted by name (then value), each name followed by its value. A body
//! that is not a form (JSON) is signed through the URL alone, which then carries `bodySHA256`,
//! the hex SHA-256 of the body, checked too; a JSON body without it is refused. A Webhook Setting
//! with a shared key (public beta) may sign with HMAC-SHA256: both are accepted, with the same
//! secrets. Twilio signs no timestamp: no replay window.
//!
//! Form bodies are plain fields (an SMS, a call, a status callback), decoded into a JSON object
//! of strings. Type: `EventType` when there is one (Conversations, TaskRouter, …), else `call`
//! (a `CallSid`; action `CallStatus`), else `message` (a `MessageSid`; action `MessageStatus`,
//! else `SmsStatus`), else a JSON body's `type`, else `webhook`. Delivery id:
//! `I-Twilio-Idempotency-Token`, the same on Twilio's retries.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use http::HeaderMap;
use ring::{digest, hmac};

use super::signature::{VerifyError, ct_eq, mac_of};
use super::signed_url::{called_urls, query_of, signing_url};
use super::{
    Builtin, Outgoing, Provider, Request, SecretError, SecretSet, Secrets, SendOptions, SignError,
    header_str, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, FormBody, Probe};

pub struct Twilio;

const EVENT_TYPE: Field = Field::new(0);
const CALL_SID: Field = Field::new(1);
const CALL_STATUS: Field = Field::new(2);
const MESSAGE_SID: Field = Field::new(3);
const MESSAGE_STATUS: Field = Field::new(4);
const SMS_STATUS: Field = Field::new(5);
const TYPE: Field = Field::new(6);
const SIGNATURE: &str = "x-twilio-signature";
const IDEMPOTENCY: &str = "i-twilio-idempotency-token";
/// The longest base64 of a MAC we check (HMAC-SHA256, padded).
const MAX_SIG_LEN: usize = 44;

impl Provider for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "twilio",
            secret_env: &["TWILIO_WEBHOOK_SECRET"],
            identifier: Some("payload.AccountSid"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    /// Auth tokens (or shared-key secrets), each a key of HMAC-SHA1 and of HMAC-SHA256.
    fn parse_secrets(&self, list: &str) -> Result<Secrets, SecretError> {
        SecretSet::hmac_from_list_for(
            list,
            &[hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, hmac::HMAC_SHA256],
        )
        .map(Secrets::Hmac)
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(
            hmac_keys(secrets)?,
            req.header(SIGNATURE),
            is_form(req.headers),
            &called_urls(req),
            req.body,
        )
    }

    fn form_body(&self) -> FormBody {
        FormBody::PayloadOrFields
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["EventType"], EVENT_TYPE),
            (&["CallSid"], CALL_SID),
            (&["CallStatus"], CALL_STATUS),
            (&["MessageSid"], MESSAGE_SID),
            (&["MessageStatus"], MESSAGE_STATUS),
            (&["SmsStatus"], SMS_STATUS),
            (&["type"], TYPE),
        ]
    }

    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let (event_type, action) = if let Some(t) = fields.str(EVENT_TYPE) {
            (t, None)
        } else if fields.str(CALL_SID).is_some() {
            ("call", fields.str(CALL_STATUS))
        } else if fields.str(MESSAGE_SID).is_some() {
            (
                "message",
                fields.str(MESSAGE_STATUS).or(fields.str(SMS_STATUS)),
            )
        } else if let Some(t) = fields.str(TYPE) {
            (t, None)
        } else {
            ("webhook", None)
        };
        Ok(Classified {
            event_type: event_type.to_string(),
            action: action.map(str::to_string),
            delivery_id: header_str(headers, IDEMPOTENCY).map(str::to_string),
        })
    }

    /// Twilio posts forms: a flat JSON object (the sample) is sent as the form of its fields.
    fn compose(&self, out: &mut Outgoing, _opts: &SendOptions<'_>) -> Result<(), SignError> {
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&out.body) {
            let scalar = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            };
            let fields: Option<Vec<(String, String)>> = map
                .iter()
                .map(|(k, v)| scalar(v).map(|v| (k.clone(), v)))
                .collect();
            if let Some(fields) = fields {
                let mut form = form_urlencoded::Serializer::new(String::new());
                for (k, v) in &fields {
                    form.append_pair(k, v);
                }
                out.body = form.finish().into_bytes();
                out.headers.retain(|(k, _)| k != "content-type");
                out.header("content-type", "application/x-www-form-urlencoded");
            }
        }
        out.header("user-agent", "TwilioProxy/1.1");
        out.header(IDEMPOTENCY, uuid::Uuid::new_v4().to_string());
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        let mut url = signing_url(out.url.as_deref(), "twilio")?.to_string();
        let form = out.get("content-type").is_some_and(essence_is_form);
        if !form {
            let hash = hex::encode(digest::digest(&digest::SHA256, &out.body));
            url.push(if query_of(&url).is_some() { '&' } else { '?' });
            url.push_str("bodySHA256=");
            url.push_str(&hash);
        }
        let signature = sign(secret.as_bytes(), &url, form.then_some(out.body.as_slice()));
        out.url = Some(url);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/twilio-message.json")
    }
}

fn essence_is_form(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|e| {
        e.trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

/// Whether the request's body is a form (else Twilio signed the URL with `bodySHA256`).
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(essence_is_form)
}

/// A form's fields sorted by name then value, distinct pairs once (as Twilio's SDK signs them),
/// each name followed by its value.
fn sorted_params(body: &[u8]) -> Vec<u8> {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut out = Vec::with_capacity(body.len());
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// The URL with the default port added (when it has none) or removed (when it has one): Twilio
/// may have signed either.
fn port_variant(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host_end = authority
        .rfind(':')
        .filter(|&i| !authority[i..].contains(']'));
    let authority = match host_end {
        Some(i) => authority[..i].to_string(),
        None => {
            let port = match scheme.to_ascii_lowercase().as_str() {
                "https" => 443,
                "http" => 80,
                _ => return None,
            };
            format!("{authority}:{port}")
        }
    };
    Some(format!("{scheme}://{authority}{tail}"))
}

/// The `bodySHA256` of a URL's query, as 32 bytes.
fn body_hash_param(url: &str) -> Option<[u8; 32]> {
    let query = query_of(url)?;
    let (_, hex) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "bodySHA256")?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex.as_bytes(), &mut hash).ok()?;
    Some(hash)
}

/// `X-Twilio-Signature` of a request sent to one of `urls`: a form's sorted fields signed with
/// the URL, or any other body through the URL's `bodySHA256`.
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    form: bool,
    urls: &[String],
    body: &[u8],
) -> Result<(), VerifyError> {
    let mac = signature
        .map(<[u8]>::trim_ascii)
        .filter(|s| s.len() <= MAX_SIG_LEN)
        .and_then(|s| STANDARD_PAD_INDIFFERENT.decode(s).ok())
        .filter(|m| m.len() == 20 || m.len() == 32)
        .ok_or(VerifyError::InvalidSignature)?;
    let params = if form {
        sorted_params(body)
    } else {
        Vec::new()
    };
    let body_hash = digest::digest(&digest::SHA256, body);
    let signed = urls.iter().any(|url| {
        if !form && !body_hash_param(url).is_some_and(|h| ct_eq(&h, body_hash.as_ref())) {
            return false;
        }
        std::iter::once(url.clone())
            .chain(port_variant(url))
            .any(|u| secrets.any_mac(&[u.as_bytes(), &params], |tag| ct_eq(tag, &mac)))
    });
    if signed {
        Ok(())
    } else {
        Err(VerifyError::InvalidSignature)
    }
}

/// `X-Twilio-Signature` (HMAC-SHA1) of a request to `url` with `form` as its form body (`None`:
/// a JSON body, whose `bodySHA256` the URL already carries).
pub fn sign(secret: &[u8], url: &str, form: Option<&[u8]>) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let params = form.map(sorted_params).unwrap_or_default();
    STANDARD.encode(mac_of(&key, &[url.as_bytes(), &params]).as_ref())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::event::{BodyKind, ProbeSpec, probe_body};
    use crate::providers::RequestLine;

    // tests/vectors/twilio.py (twilio 9.13.0, RequestValidator); the first is Twilio's
    // documented example.
    const DOC_TOKEN: &str = "12345";
    const DOC_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const DOC_FORM: &str = "To=%2B18005551212&From=%2B12349013030&Digits=1234&Caller=%2B12349013030&CallSid=CA1234567890ABCDE";
    const DOC_SIG: &str = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
    const TOKEN: &str = "9a3f0c1e5b7d2468ace0bdf13579ace0";
    const URL: &str = "https://hooks.example.com/webhook/twilio";
    const JSON_BODY: &str = r#"{"AccountSid":"AC00000000000000000000000000000000","MessageSid":"SM11111111111111111111111111111111","MessageStatus":"delivered"}"#;
    const JSON_URL: &str = "https://hooks.example.com/webhook/twilio?bodySHA256=1598615ae48f29df550ec91c149372bd971f9854e201409d0245f115929b4cf0";
    const JSON_SIG: &str = "KLKHm5PQ9YrBA7RsATxQ0Keb/Zw=";
    const SHA256_SIG: &str = "eoS2u2fQ65eP8nU0OkbI/BIRWE0jNE4ajzy2EIkp0XA=";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn set(list: &str) -> SecretSet {
        match Twilio.parse_secrets(list).unwrap() {
            Secrets::Hmac(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn form(set: &SecretSet, sig: &str, url: &str, body: &str) -> Result<(), VerifyError> {
        verify(
            set,
            Some(sig.as_bytes()),
            true,
            &[url.to_string()],
            body.as_bytes(),
        )
    }

    fn json(set: &SecretSet, sig: &str, url: &str, body: &str) -> Result<(), VerifyError> {
        verify(
            set,
            Some(sig.as_bytes()),
            false,
            &[url.to_string()],
            body.as_bytes(),
        )
    }

    #[test]
    fn twilio_documented_and_sdk_vectors() {
        assert_eq!(
            sign(DOC_TOKEN.as_bytes(), DOC_URL, Some(DOC_FORM.as_bytes())),
            DOC_SIG
        );
        assert_eq!(form(&set(DOC_TOKEN), DOC_SIG, DOC_URL, DOC_FORM), Ok(()));
        // The default port, which Twilio may or may not have signed.
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        assert_eq!(form(&set(DOC_TOKEN), DOC_SIG, with_port, DOC_FORM), Ok(()));
        // JSON: the URL with bodySHA256 alone is signed.
        assert_eq!(sign(TOKEN.as_bytes(), JSON_URL, None), JSON_SIG);
        assert_eq!(json(&set(TOKEN), JSON_SIG, JSON_URL, JSON_BODY), Ok(()));
        // A shared key signing with HMAC-SHA256.
        let doc_form_at_url = DOC_FORM;
        assert_eq!(form(&set(TOKEN), SHA256_SIG, URL, doc_form_at_url), Ok(()));
    }

    fn through(
        public_url: Option<&str>,
        path: &str,
        headers: &[(&'static str, &str)],
        body: &str,
    ) -> Result<(), VerifyError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        let secrets = Twilio.parse_secrets(TOKEN).unwrap();
        Twilio.verify(
            &Request {
                source: "twilio",
                line: RequestLine::post(path),
                public_url,
                headers: &map,
                body: body.as_bytes(),
                now_ms: 0,
                agent_key: &|_| false,
            },
            Some(&secrets),
        )
    }

    #[test]
    fn through_the_trait_with_public_url_or_host() {
        let json_path = &JSON_URL["https://hooks.example.com".len()..];
        let sig = [(SIGNATURE, JSON_SIG), ("content-type", "application/json")];
        assert_eq!(through(Some(URL), json_path, &sig, JSON_BODY), Ok(()));
        let host = [
            (SIGNATURE, JSON_SIG),
            ("content-type", "application/json"),
            ("host", "hooks.example.com"),
        ];
        assert_eq!(through(None, json_path, &host, JSON_BODY), Ok(()));
        // The same body without its bodySHA256 in the URL: nothing signs the body.
        assert_eq!(
            through(Some(URL), "/webhook/twilio", &sig, JSON_BODY),
            INVALID
        );
        // A form content type: the params are signed, not the hash.
        let as_form = [
            (SIGNATURE, JSON_SIG),
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
        ];
        assert_eq!(through(Some(URL), json_path, &as_form, JSON_BODY), INVALID);
        let form_sig = sign(TOKEN.as_bytes(), URL, Some(DOC_FORM.as_bytes()));
        let form_headers = [
            (SIGNATURE, form_sig.as_str()),
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
        ];
        assert_eq!(
            through(Some(URL), "/webhook/twilio", &form_headers, DOC_FORM),
            Ok(())
        );
    }

    #[test]
    fn twilio_rejects_missing_malformed_and_wrong() {
        let s = set(DOC_TOKEN);
        assert_eq!(
            verify(&s, None, true, &[DOC_URL.to_string()], DOC_FORM.as_bytes()),
            INVALID
        );
        assert_eq!(
            verify(&s, Some(DOC_SIG.as_bytes()), true, &[], DOC_FORM.as_bytes()),
            INVALID
        );
        for bad in [
            "",
            "!!!!",
            &DOC_SIG[..20],
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
        ] {
            assert_eq!(form(&s, bad, DOC_URL, DOC_FORM), INVALID, "{bad}");
        }
        // A changed field, an extra field, another URL, query or scheme, another token.
        assert_eq!(
            form(&s, DOC_SIG, DOC_URL, &DOC_FORM.replace("1234&", "1235&")),
            INVALID
        );
        assert_eq!(
            form(&s, DOC_SIG, DOC_URL, &format!("{DOC_FORM}&x=1")),
            INVALID
        );
        assert_eq!(
            form(
                &s,
                DOC_SIG,
                "https://mycompany.com/myapp.php?foo=1",
                DOC_FORM
            ),
            INVALID
        );
        assert_eq!(
            form(&s, DOC_SIG, &DOC_URL.replace("https", "http"), DOC_FORM),
            INVALID
        );
        assert_eq!(form(&set("54321"), DOC_SIG, DOC_URL, DOC_FORM), INVALID);
        // JSON: a changed body no longer has the URL's hash; a bad or missing hash.
        let t = set(TOKEN);
        assert_eq!(
            json(&t, JSON_SIG, JSON_URL, &format!("{JSON_BODY} ")),
            INVALID
        );
        assert_eq!(json(&t, JSON_SIG, URL, JSON_BODY), INVALID);
        let bad_hash = JSON_URL.replace("=1598", "=zz98");
        assert_eq!(json(&t, JSON_SIG, &bad_hash, JSON_BODY), INVALID);
    }

    #[test]
    fn field_order_does_not_matter_and_rotation() {
        let reordered = "CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";
        assert_eq!(form(&set(DOC_TOKEN), DOC_SIG, DOC_URL, reordered), Ok(()));
        let both = set(&format!("old-token,{DOC_TOKEN}"));
        assert_eq!(both.len(), 4, "a key per token and algorithm");
        assert_eq!(form(&both, DOC_SIG, DOC_URL, DOC_FORM), Ok(()));
    }

    #[test]
    fn port_variants() {
        assert_eq!(
            port_variant("https://a.com/x?y").as_deref(),
            Some("https://a.com:443/x?y")
        );
        assert_eq!(
            port_variant("http://a.com").as_deref(),
            Some("http://a.com:80")
        );
        assert_eq!(
            port_variant("https://a.com:8443/x").as_deref(),
            Some("https://a.com/x")
        );
        assert_eq!(
            port_variant("https://[::1]/x").as_deref(),
            Some("https://[::1]:443/x")
        );
        assert_eq!(port_variant("no-scheme"), None);
    }

    fn classify(v: &Value, headers: &HeaderMap) -> Classified {
        let spec = ProbeSpec::new(Twilio.probes(), None);
        Twilio.classify(headers, &spec.read_value(v)).unwrap()
    }

    #[test]
    fn classify_messages_calls_and_events() {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY, HeaderValue::from_static("ba8f3c0e-1/0"));
        let sample: Value = serde_json::from_str(Twilio.sample()).unwrap();
        let sms = classify(&sample, &headers);
        assert_eq!(
            sms,
            Classified {
                event_type: "message".into(),
                action: Some("received".into()),
                delivery_id: Some("ba8f3c0e-1/0".into()),
            }
        );
        let none = HeaderMap::new();
        let status = classify(
            &json!({"MessageSid": "SM1", "SmsStatus": "sent", "MessageStatus": "delivered"}),
            &none,
        );
        assert_eq!(
            (status.event_type.as_str(), status.action.as_deref()),
            ("message", Some("delivered"))
        );
        let call = classify(&json!({"CallSid": "CA1", "CallStatus": "ringing"}), &none);
        assert_eq!(
            (call.event_type.as_str(), call.action.as_deref()),
            ("call", Some("ringing"))
        );
        let conv = classify(
            &json!({"EventType": "onMessageAdded", "MessageSid": "IM1"}),
            &none,
        );
        assert_eq!(
            (conv.event_type.as_str(), conv.action),
            ("onMessageAdded", None)
        );
        let typed = classify(&json!({"type": "com.twilio.messaging.message.sent"}), &none);
        assert_eq!(typed.event_type, "com.twilio.messaging.message.sent");
        assert_eq!(
            classify(&json!({"AccountSid": "AC1"}), &none).event_type,
            "webhook"
        );
        assert_eq!(classify(&json!({}), &none).delivery_id, None);
    }

    #[test]
    fn compose_sends_the_sample_as_a_form_and_sign_signs_it() {
        let mut out = Outgoing {
            headers: vec![("content-type".into(), "application/json".into())],
            body: Twilio.sample().as_bytes().to_vec(),
            url: Some(URL.into()),
        };
        let opts = SendOptions {
            event: None,
            secret: Some(TOKEN),
            agent_key: None,
            now_ms: 0,
        };
        Twilio.compose(&mut out, &opts).unwrap();
        assert_eq!(
            out.get("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let spec = ProbeSpec::new(Twilio.probes(), None);
        let p = probe_body(BodyKind::Form, &out.body, &spec, Twilio.form_body()).unwrap();
        let sample: Value = serde_json::from_str(Twilio.sample()).unwrap();
        assert_eq!(p.payload.as_ref(), Some(&sample));
        Twilio.sign(&mut out, &opts).unwrap();
        assert_eq!(
            out.url.as_deref(),
            Some(URL),
            "a form adds nothing to the URL"
        );
        let sig = out.get(SIGNATURE).unwrap();
        assert_eq!(
            form(
                &set(TOKEN),
                sig,
                URL,
                std::str::from_utf8(&out.body).unwrap()
            ),
            Ok(())
        );
        // JSON as it is: bodySHA256 added to the URL, which is signed.
        let mut raw = Outgoing {
            headers: Vec::new(),
            body: JSON_BODY.as_bytes().to_vec(),
            url: Some(URL.into()),
        };
        Twilio.sign(&mut raw, &opts).unwrap();
        assert_eq!(raw.url.as_deref(), Some(JSON_URL));
        assert_eq!(raw.get(SIGNATURE), Some(JSON_SIG));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_twilio(
            secret in "[A-Za-z0-9]{1,40}",
            other in "[A-Za-z0-9]{1,40}",
            fields in proptest::collection::vec(("[A-Za-z]{1,8}", "[ -~]{0,12}"), 0..6),
            body in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut f = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &fields {
                f.append_pair(k, v);
            }
            let form_body = f.finish();
            let sig = sign(secret.as_bytes(), URL, Some(form_body.as_bytes()));
            prop_assert_eq!(form(&set(&secret), &sig, URL, &form_body), Ok(()));
            if other != secret {
                prop_assert_eq!(form(&set(&other), &sig, URL, &form_body), INVALID);
            }
            let url = format!("{URL}?bodySHA256={}", hex::encode(digest::digest(&digest::SHA256, &body)));
            let sig = sign(secret.as_bytes(), &url, None);
            let v = |b: &[u8]| verify(&set(&secret), Some(sig.as_bytes()), false, std::slice::from_ref(&url), b);
            prop_assert_eq!(v(&body), Ok(()));
            let mut tampered = body.clone();
            tampered.push(b'x');
            prop_assert_eq!(v(&tampered), INVALID);
        }
    }
}
