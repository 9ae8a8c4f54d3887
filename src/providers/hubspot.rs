//! HubSpot (webhooks of a public or private app, signature v3):
//! `X-HubSpot-Signature-v3: <base64 HMAC-SHA256(client secret, method + uri + body + ts)>` with
//! `X-HubSpot-Request-Timestamp: <ms>`, within 300 s. `uri` is the full URL HubSpot called
//! (`public_url`, else rebuilt from `Host`: see `signed_url`) with the URL-encoded characters
//! HubSpot's docs list decoded (`%3A` → `:`, `%2F` → `/`, …); the URL as received is tried too.
//!
//! The body is a JSON array of up to 100 events (a batch), stored as it came. The event's
//! `type` is the first event's `subscriptionType` (`contact.propertyChange`), its `action` the
//! first event's `propertyName`. HubSpot sends no delivery id and says `eventId` is not
//! guaranteed unique, and a retried batch may be grouped differently: a batch of one event is
//! deduped on `subscriptionId:eventId:occurredAt`; a larger batch is not deduped (a key taken
//! from its first event could drop the others on a regrouped retry).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use ring::hmac;

use super::signature::{
    VerifyError, ct_eq, decode_b64_mac, mac_of, parse_timestamp, within_window,
};
use super::signed_url::{called_urls, signing_url};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, JsonBody, Leaf, Probe};

/// Replay window of HubSpot requests, in ms (inclusive).
pub const WINDOW_MS: u64 = 300_000;

pub struct HubSpot;

const SUBSCRIPTION_TYPE: Field = Field::new(0);
const PROPERTY_NAME: Field = Field::new(1);
const EVENT_ID: Field = Field::new(2);
const SUBSCRIPTION_ID: Field = Field::new(3);
const OCCURRED_AT: Field = Field::new(4);
const SECOND_EVENT_ID: Field = Field::new(5);
const SIGNATURE: &str = "x-hubspot-signature-v3";
const TIMESTAMP: &str = "x-hubspot-request-timestamp";

impl Provider for HubSpot {
    fn name(&self) -> &'static str {
        "hubspot"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "hubspot",
            secret_env: &["HUBSPOT_WEBHOOK_SECRET"],
            // The HubSpot account (portal) the batch is about.
            identifier: Some("payload.0.portalId"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        // v1/v2 (`X-HubSpot-Signature`) are still sent beside v3.
        &["x-hubspot-signature", SIGNATURE]
    }

    fn replay_window(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(WINDOW_MS))
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        let set = hmac_keys(secrets)?;
        verify(
            set,
            req.header(SIGNATURE),
            req.header(TIMESTAMP),
            req.line.method,
            &called_urls(req),
            req.body,
            req.now_ms,
        )
    }

    fn json_body(&self) -> JsonBody {
        JsonBody::ObjectOrArray
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["0", "subscriptionType"], SUBSCRIPTION_TYPE),
            (&["0", "propertyName"], PROPERTY_NAME),
            (&["0", "eventId"], EVENT_ID),
            (&["0", "subscriptionId"], SUBSCRIPTION_ID),
            (&["0", "occurredAt"], OCCURRED_AT),
            (&["1", "eventId"], SECOND_EVENT_ID),
        ]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event_type = fields.str(SUBSCRIPTION_TYPE).ok_or_else(|| {
            BodyError("a HubSpot webhook is an array of events with a subscriptionType".into())
        })?;
        let delivery_id = match (
            text(fields, SUBSCRIPTION_ID),
            text(fields, EVENT_ID),
            text(fields, OCCURRED_AT),
            fields.get(SECOND_EVENT_ID),
        ) {
            (Some(sub), Some(event), Some(at), None) => Some(format!("{sub}:{event}:{at}")),
            _ => None,
        };
        Ok(Classified {
            event_type: event_type.to_string(),
            action: fields.str(PROPERTY_NAME).map(str::to_string),
            delivery_id,
        })
    }

    fn compose(&self, out: &mut Outgoing, _opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header(
            "user-agent",
            "HubSpot Connect 2.0 (http://dev.hubspot.com/)",
        );
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        let url = signing_url(out.url.as_deref(), "hubspot")?.to_string();
        let ts = opts.now_ms.to_string();
        let signature = sign(secret.as_bytes(), "POST", &url, &out.body, &ts);
        out.header(TIMESTAMP, ts);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/hubspot-contact_property_change.json")
    }
}

/// A probed scalar as text (HubSpot's ids are numbers).
fn text(fields: &Fields<'_>, f: Field) -> Option<String> {
    match fields.get(f)? {
        Leaf::Str(s) => Some(s.to_string()),
        Leaf::Num(n) => Some(n.to_string()),
    }
}

/// The characters HubSpot decodes in the URI before signing, as its docs list them.
const DECODED: [(&[u8; 2], u8); 12] = [
    (b"3A", b':'),
    (b"2F", b'/'),
    (b"3F", b'?'),
    (b"40", b'@'),
    (b"21", b'!'),
    (b"24", b'$'),
    (b"27", b'\''),
    (b"28", b'('),
    (b"29", b')'),
    (b"2A", b'*'),
    (b"2C", b','),
    (b"3B", b';'),
];

/// `uri` with the listed `%XX` escapes (either case) decoded; others are left as they are.
pub fn decode_uri(uri: &str) -> String {
    let bytes = uri.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Some((_, c)) = DECODED
                .iter()
                .find(|(code, _)| hex.eq_ignore_ascii_case(&code[..]))
        {
            out.push(*c);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    // Only ASCII escapes were replaced by ASCII characters.
    String::from_utf8(out).unwrap_or_else(|_| uri.to_string())
}

/// Signature v3 of a request to one of `urls` (the URLs it may have been sent to), with
/// `X-HubSpot-Request-Timestamp` (ms) within 300 s of `now_ms`, checked after the signature.
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    timestamp: Option<&[u8]>,
    method: &str,
    urls: &[String],
    body: &[u8],
    now_ms: i64,
) -> Result<(), VerifyError> {
    let mac = signature
        .map(<[u8]>::trim_ascii)
        .and_then(decode_b64_mac)
        .ok_or(VerifyError::InvalidSignature)?;
    let ts_raw = timestamp
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    let ts = parse_timestamp(ts_raw).ok_or(VerifyError::InvalidSignature)?;
    let signed = urls.iter().any(|url| {
        let decoded = decode_uri(url);
        let mut uris = vec![decoded.as_str()];
        if decoded != *url {
            uris.push(url.as_str());
        }
        uris.into_iter().any(|uri| {
            secrets.any_mac(&[method.as_bytes(), uri.as_bytes(), body, ts_raw], |tag| {
                ct_eq(tag, &mac)
            })
        })
    });
    if !signed {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts, now_ms, WINDOW_MS)
}

/// The value of `X-HubSpot-Signature-v3` for a request to `url` sent with
/// `X-HubSpot-Request-Timestamp: <timestamp>`: HubSpot signs the URI decoded.
pub fn sign(secret: &[u8], method: &str, url: &str, body: &[u8], timestamp: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let uri = decode_uri(url);
    let tag = mac_of(
        &key,
        &[
            method.as_bytes(),
            uri.as_bytes(),
            body,
            timestamp.as_bytes(),
        ],
    );
    STANDARD.encode(tag.as_ref())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::event::ProbeSpec;
    use crate::providers::RequestLine;

    // tests/vectors/hubspot.py (hubspot-api-client 12.0.0).
    const SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    const BODY: &str = r#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#;
    const TS: &str = "1764170000123";
    const NOW: i64 = 1764170000123;
    const SIG_PLAIN: &str = "IjFNPKrOuPVbHkZPcZFtTJd1L/QWxgX5F59jHDkl6hk=";
    const SIG_DECODED: &str = "TJ1QImN8fEFnYDApybC69Fmzq7az1NPTTdDmlSvNr8E=";
    const URL: &str = "https://hooks.example.com/webhook/hubspot";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
    const STALE: Result<(), VerifyError> = Err(VerifyError::StaleTimestamp);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn check(
        set: &SecretSet,
        sig: &str,
        ts: &str,
        url: &str,
        body: &str,
        now: i64,
    ) -> Result<(), VerifyError> {
        verify(
            set,
            Some(sig.as_bytes()),
            Some(ts.as_bytes()),
            "POST",
            &[url.to_string()],
            body.as_bytes(),
            now,
        )
    }

    /// Through the trait: a request line, headers and a `public_url` or `Host`.
    fn through(
        public_url: Option<&str>,
        path: &str,
        headers: &[(&'static str, &str)],
        now: i64,
    ) -> Result<(), VerifyError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        let secrets = HubSpot.parse_secrets(SECRET).unwrap();
        HubSpot.verify(
            &Request {
                source: "hubspot",
                line: RequestLine::post(path),
                public_url,
                headers: &map,
                body: BODY.as_bytes(),
                now_ms: now,
                agent_key: &|_| false,
            },
            Some(&secrets),
        )
    }

    #[test]
    fn hubspot_sdk_vectors() {
        assert_eq!(
            sign(SECRET.as_bytes(), "POST", URL, BODY.as_bytes(), TS),
            SIG_PLAIN
        );
        assert_eq!(check(&set(SECRET), SIG_PLAIN, TS, URL, BODY, NOW), Ok(()));
        // Received with %3A and %2F escaped: HubSpot signed them decoded (%20 stays).
        let escaped = format!("{URL}?state=a%3Ab%2fc&x=%20");
        assert_eq!(
            sign(SECRET.as_bytes(), "POST", &escaped, BODY.as_bytes(), TS),
            SIG_DECODED
        );
        assert_eq!(
            check(&set(SECRET), SIG_DECODED, TS, &escaped, BODY, NOW),
            Ok(())
        );
        // Through the trait: public_url with the query as received, or Host + the path.
        let sig = [(SIGNATURE, SIG_DECODED), (TIMESTAMP, TS)];
        assert_eq!(
            through(
                Some(URL),
                "/webhook/hubspot?state=a%3Ab%2Fc&x=%20",
                &sig,
                NOW
            ),
            Ok(())
        );
        let host = [
            (SIGNATURE, SIG_PLAIN),
            (TIMESTAMP, TS),
            ("host", "hooks.example.com"),
        ];
        assert_eq!(through(None, "/webhook/hubspot", &host, NOW), Ok(()));
        let http = [
            (SIGNATURE, SIG_PLAIN),
            (TIMESTAMP, TS),
            ("host", "hooks.example.com"),
            ("x-forwarded-proto", "http"),
        ];
        assert_eq!(through(None, "/webhook/hubspot", &http, NOW), INVALID);
        // Neither public_url nor Host: no URL to check.
        assert_eq!(
            through(
                None,
                "/webhook/hubspot",
                &[(SIGNATURE, SIG_PLAIN), (TIMESTAMP, TS)],
                NOW
            ),
            INVALID
        );
    }

    #[test]
    fn uri_decoding_is_the_listed_characters_only() {
        assert_eq!(
            decode_uri("https://a/b%3a%2F%3F%40%21%24%27%28%29%2A%2C%3B%20%25%2"),
            "https://a/b:/?@!$'()*,;%20%25%2"
        );
        assert_eq!(decode_uri("%"), "%");
        assert_eq!(decode_uri("é%3A"), "é:");
    }

    #[test]
    fn hubspot_rejects_missing_malformed_and_wrong() {
        let s = set(SECRET);
        let v = |sig: Option<&[u8]>, ts: Option<&[u8]>, method: &str, body: &str| {
            verify(
                &s,
                sig,
                ts,
                method,
                &[URL.to_string()],
                body.as_bytes(),
                NOW,
            )
        };
        let sig = Some(SIG_PLAIN.as_bytes());
        let ts = Some(TS.as_bytes());
        assert_eq!(v(sig, ts, "POST", BODY), Ok(()));
        assert_eq!(v(None, ts, "POST", BODY), INVALID);
        assert_eq!(v(sig, None, "POST", BODY), INVALID);
        assert_eq!(v(Some(b""), ts, "POST", BODY), INVALID);
        assert_eq!(v(Some(b"not base64!"), ts, "POST", BODY), INVALID);
        assert_eq!(
            v(Some(&SIG_PLAIN.as_bytes()[..20]), ts, "POST", BODY),
            INVALID
        );
        assert_eq!(v(Some(b"\xff\xfe"), ts, "POST", BODY), INVALID);
        // Another method, body, URL, timestamp or secret.
        assert_eq!(v(sig, ts, "PUT", BODY), INVALID);
        assert_eq!(v(sig, ts, "POST", &BODY.replace("62515", "62516")), INVALID);
        assert_eq!(
            check(
                &s,
                SIG_PLAIN,
                TS,
                "https://hooks.example.com/webhook/other",
                BODY,
                NOW
            ),
            INVALID
        );
        assert_eq!(
            check(&s, SIG_PLAIN, "1764170000124", URL, BODY, NOW),
            INVALID
        );
        for bad in [
            "",
            "abc",
            "-1764170000123",
            "1764170000123.0",
            "99999999999999999999",
        ] {
            assert_eq!(check(&s, SIG_PLAIN, bad, URL, BODY, NOW), INVALID, "{bad}");
        }
        assert_eq!(check(&set("other"), SIG_PLAIN, TS, URL, BODY, NOW), INVALID);
        assert_eq!(
            HubSpot.verify(
                &Request {
                    source: "hubspot",
                    line: RequestLine::post("/webhook/hubspot"),
                    public_url: Some(URL),
                    headers: &HeaderMap::new(),
                    body: BODY.as_bytes(),
                    now_ms: NOW,
                    agent_key: &|_| false,
                },
                None,
            ),
            INVALID
        );
    }

    #[test]
    fn hubspot_rotation_and_window() {
        let both = set(&format!("old-secret,{SECRET}"));
        assert_eq!(check(&both, SIG_PLAIN, TS, URL, BODY, NOW), Ok(()));
        let at = |now| check(&both, SIG_PLAIN, TS, URL, BODY, now);
        assert_eq!(at(NOW + 300_000), Ok(()));
        assert_eq!(at(NOW - 300_000), Ok(()));
        assert_eq!(at(NOW + 300_001), STALE);
        assert_eq!(at(NOW - 300_001), STALE);
        // A forged request never hears that it was stale.
        let forged = sign(b"guess", "POST", URL, BODY.as_bytes(), TS);
        assert_eq!(
            check(&both, &forged, TS, URL, BODY, NOW + 10_000_000),
            INVALID
        );
    }

    fn probed(body: &str) -> Fields<'static> {
        let spec = ProbeSpec::new(HubSpot.probes(), Some("payload.0.portalId"));
        let p = crate::event::probe_json(body.as_bytes(), &spec, JsonBody::ObjectOrArray).unwrap();
        assert!(p.payload.is_none(), "probed without parsing");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(p.fields, spec.read_value(&v));
        spec.read_value(&v)
    }

    #[test]
    fn classify_batches() {
        let one = HubSpot
            .classify(&HeaderMap::new(), &probed(HubSpot.sample()))
            .unwrap();
        assert_eq!(
            one,
            Classified {
                event_type: "contact.propertyChange".into(),
                action: Some("lifecyclestage".into()),
                delivery_id: Some("2881778:1964325087:1764169990123".into()),
            }
        );
        let creation = HubSpot.classify(&HeaderMap::new(), &probed(BODY)).unwrap();
        assert_eq!(creation.event_type, "contact.creation");
        assert_eq!(creation.action, None);
        assert_eq!(
            creation.delivery_id.as_deref(),
            Some("12345:1:1564113600000")
        );
        // A batch of two: typed by its first event, not deduped.
        let two = json!([
            {"eventId": 7, "subscriptionId": 1, "occurredAt": 5, "subscriptionType": "deal.creation", "portalId": 9},
            {"eventId": 8, "subscriptionId": 1, "occurredAt": 6, "subscriptionType": "deal.deletion", "portalId": 9}
        ]);
        let c = HubSpot
            .classify(&HeaderMap::new(), &probed(&two.to_string()))
            .unwrap();
        assert_eq!(
            (c.event_type.as_str(), c.delivery_id),
            ("deal.creation", None)
        );
        for bad in ["[]", r#"[{"eventId":1}]"#, r#"{"subscriptionType":"x"}"#] {
            assert!(
                HubSpot.classify(&HeaderMap::new(), &probed(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_array_body_is_decoded_as_it_came_and_identified_by_portal() {
        let spec = ProbeSpec::new(HubSpot.probes(), Some("payload.0.portalId"));
        let p = crate::event::probe_body_as(
            crate::event::BodyKind::Json,
            HubSpot.sample().as_bytes(),
            &spec,
            HubSpot.form_body(),
            HubSpot.json_body(),
        )
        .unwrap();
        assert!(p.raw_json);
        assert_eq!(
            p.fields.get(Field::IDENTIFIER),
            Some(&Leaf::Num(62515.into()))
        );
        // Only where the provider allows it: other providers still refuse arrays.
        assert!(crate::event::probe_json_object(b"[1]", &spec).is_err());
        assert!(crate::event::probe_json(b"1", &spec, JsonBody::ObjectOrArray).is_err());
        let mut event = json!({"payload": null});
        crate::event::materialize_payload(&mut event, HubSpot.sample().as_bytes());
        assert!(event["payload"].is_array());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_hubspot(
            secret in "[A-Za-z0-9_-]{1,40}",
            other in "[A-Za-z0-9_-]{1,40}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            flip in any::<prop::sample::Index>(),
            ts in 0i64..10_000_000_000_000,
            query in "[a-z0-9=&%:/]{0,20}",
        ) {
            let url = format!("https://h.example.com/webhook/hubspot?{query}");
            let ts_s = ts.to_string();
            let sig = sign(secret.as_bytes(), "POST", &url, &body, &ts_s);
            let v = |set: &SecretSet, body: &[u8]| verify(
                set, Some(sig.as_bytes()), Some(ts_s.as_bytes()), "POST", std::slice::from_ref(&url), body, ts,
            );
            prop_assert_eq!(v(&set(&secret), &body), Ok(()));
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= 1;
                prop_assert_eq!(v(&set(&secret), &tampered), INVALID);
            }
            if other != secret {
                prop_assert_eq!(v(&set(&other), &body), INVALID);
            }
        }
    }
}
