//! Svix (what Clerk, Resend, Brex and many others send): Standard Webhooks under Svix's header
//! names, `svix-id`, `svix-timestamp` within 300 s, `svix-signature` with space-separated
//! `v1,<base64 HMAC-SHA256(key, id + "." + ts + "." + body)>` entries; secrets are
//! `whsec_<base64>`. The verification is `standard::verify`, unchanged; as Svix's own SDKs do,
//! the `webhook-*` names are read when the `svix-*` ones are absent.
//!
//! The event type is the body's `type` (`user.created`), the action the part after its last
//! dot; `svix-id` (the same on every retry of a message) is the delivery id. Payloads differ
//! per sender, so the default rate-limit identifier is the client address.

use http::HeaderMap;

use super::signature::{SecretError, VerifyError};
use super::standard::{self, StandardSigner};
use super::{
    Builtin, Outgoing, Provider, Request, Secrets, SendOptions, SignError, header_str, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct Svix;

const TYPE: Field = Field::new(0);
const ID: [&str; 2] = ["svix-id", "webhook-id"];
const TIMESTAMP: [&str; 2] = ["svix-timestamp", "webhook-timestamp"];
const SIGNATURE: [&str; 2] = ["svix-signature", "webhook-signature"];

impl Provider for Svix {
    fn name(&self) -> &'static str {
        "svix"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "svix",
            secret_env: &["SVIX_WEBHOOK_SECRET"],
            identifier: None,
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &SIGNATURE
    }

    fn parse_secrets(&self, list: &str) -> Result<Secrets, SecretError> {
        standard::secrets_from_list(list).map(Secrets::Hmac)
    }

    fn replay_window(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(standard::WINDOW_SECS))
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        let first = |names: [&str; 2]| req.header(names[0]).or_else(|| req.header(names[1]));
        standard::verify(
            hmac_keys(secrets)?,
            first(ID),
            first(TIMESTAMP),
            first(SIGNATURE),
            req.body,
            req.now_ms / 1000,
        )
    }

    fn probes(&self) -> &'static [Probe] {
        &[(&["type"], TYPE)]
    }

    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event_type = fields
            .str(TYPE)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| BodyError("a Svix message needs a string \"type\" field".into()))?;
        let id = header_str(headers, ID[0]).or_else(|| header_str(headers, ID[1]));
        Ok(Classified {
            event_type: event_type.to_string(),
            action: super::stripe::last_segment(event_type, '.'),
            delivery_id: id.map(str::to_string),
        })
    }

    /// A fresh `svix-id`, and `--event` as the body's `type`.
    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "Svix-Webhooks/1.0");
        out.header(ID[0], new_message_id());
        match opts.event {
            Some(t) => super::stripe::stamp_body(out, &[(&["type"][..], t.into())]),
            None => Ok(()),
        }
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        let signer = StandardSigner::from_secret(secret)
            .map_err(|e| SignError(format!("the secret is not a Svix secret: {e}")))?;
        let id = match out.get(ID[0]) {
            Some(id) => id.to_string(),
            None => {
                let id = new_message_id();
                out.header(ID[0], id.clone());
                id
            }
        };
        let ts = opts.now_ms / 1000;
        out.header(TIMESTAMP[0], ts.to_string());
        let signature = signer.sign(&id, ts, &out.body);
        out.header(SIGNATURE[0], signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/svix-user.created.json")
    }
}

fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/svix.py (the svix SDK's Webhook.sign).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_2mJ6hYbU7Kq1xVZ0bWlNcEyRtAo";
    const TS: i64 = 1733580000;
    const BODY: &[u8] = br#"{"data":{"id":"user_29w83sxmDNGwOuEthce5gg56FcC","object":"user"},"object":"event","type":"user.created"}"#;
    const SIGNATURE_V: &str = "v1,Ny2ZFFlHsudf+kShzlKW3NyUrAfwcA1ad5X9odtyWfM=";

    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
    const STALE: Result<(), VerifyError> = Err(VerifyError::StaleTimestamp);

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn check(
        secret: &str,
        headers: &HeaderMap,
        body: &[u8],
        now_secs: i64,
    ) -> Result<(), VerifyError> {
        let secrets = Svix.parse_secrets(secret).unwrap();
        Svix.verify(
            &Request {
                source: "svix",
                line: super::super::RequestLine::post("/webhook/svix"),
                public_url: None,
                headers,
                body,
                now_ms: now_secs * 1000,
                agent_key: &|_| true,
            },
            Some(&secrets),
        )
    }

    fn signed(sig: &str) -> HeaderMap {
        let ts = TS.to_string();
        hdrs(&[
            ("svix-id", MSG_ID),
            ("svix-timestamp", &ts),
            ("svix-signature", sig),
        ])
    }

    #[test]
    fn svix_sdk_vector() {
        let signer = StandardSigner::from_secret(SECRET).unwrap();
        assert_eq!(signer.sign(MSG_ID, TS, BODY), SIGNATURE_V);
        assert_eq!(check(SECRET, &signed(SIGNATURE_V), BODY, TS), Ok(()));
        // Among other entries, as during a rotation on Svix's side.
        let several = format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {SIGNATURE_V}");
        assert_eq!(check(SECRET, &signed(&several), BODY, TS), Ok(()));
        // The `webhook-*` names, as Svix's SDKs accept them.
        let ts = TS.to_string();
        let standard_names = hdrs(&[
            ("webhook-id", MSG_ID),
            ("webhook-timestamp", &ts),
            ("webhook-signature", SIGNATURE_V),
        ]);
        assert_eq!(check(SECRET, &standard_names, BODY, TS), Ok(()));
    }

    #[test]
    fn svix_rejects_missing_malformed_and_wrong() {
        let ts = TS.to_string();
        assert_eq!(check(SECRET, &hdrs(&[]), BODY, TS), INVALID);
        let no_id = hdrs(&[("svix-timestamp", &ts), ("svix-signature", SIGNATURE_V)]);
        assert_eq!(check(SECRET, &no_id, BODY, TS), INVALID);
        let no_ts = hdrs(&[("svix-id", MSG_ID), ("svix-signature", SIGNATURE_V)]);
        assert_eq!(check(SECRET, &no_ts, BODY, TS), INVALID);
        let no_sig = hdrs(&[("svix-id", MSG_ID), ("svix-timestamp", &ts)]);
        assert_eq!(check(SECRET, &no_sig, BODY, TS), INVALID);
        for bad in [
            "",
            "v1,",
            "v1,%%%",
            "v2,Ny2ZFFlHsudf+kShzlKW3NyUrAfwcA1ad5X9odtyWfM=",
        ] {
            assert_eq!(check(SECRET, &signed(bad), BODY, TS), INVALID, "{bad}");
        }
        let mut body = BODY.to_vec();
        body[3] ^= 1;
        assert_eq!(check(SECRET, &signed(SIGNATURE_V), &body, TS), INVALID);
        let other = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        assert_eq!(check(other, &signed(SIGNATURE_V), BODY, TS), INVALID);
        // The agent key that `internal` takes is no signature here.
        let bearer = hdrs(&[("authorization", "Bearer k")]);
        assert_eq!(check(SECRET, &bearer, BODY, TS), INVALID);
    }

    #[test]
    fn svix_rotation_and_window() {
        let both = format!("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD,{SECRET}");
        assert_eq!(check(&both, &signed(SIGNATURE_V), BODY, TS), Ok(()));
        assert_eq!(check(SECRET, &signed(SIGNATURE_V), BODY, TS + 300), Ok(()));
        assert_eq!(check(SECRET, &signed(SIGNATURE_V), BODY, TS - 300), Ok(()));
        assert_eq!(check(SECRET, &signed(SIGNATURE_V), BODY, TS + 301), STALE);
        assert_eq!(check(SECRET, &signed(SIGNATURE_V), BODY, TS - 301), STALE);
    }

    #[test]
    fn classify_reads_type_and_svix_id() {
        let spec = ProbeSpec::new(Svix.probes(), None);
        let sample: serde_json::Value = serde_json::from_str(Svix.sample()).unwrap();
        let c = Svix
            .classify(&hdrs(&[("svix-id", MSG_ID)]), &spec.read_value(&sample))
            .unwrap();
        assert_eq!(c.event_type, "user.created");
        assert_eq!(c.action.as_deref(), Some("created"));
        assert_eq!(c.delivery_id.as_deref(), Some(MSG_ID));
        let c = Svix
            .classify(
                &hdrs(&[("webhook-id", "msg_2")]),
                &spec.read_value(&json!({"type": "email.delivered"})),
            )
            .unwrap();
        assert_eq!(c.delivery_id.as_deref(), Some("msg_2"));
        assert!(
            Svix.classify(&hdrs(&[]), &spec.read_value(&json!({"data": {}})))
                .is_err()
        );
    }
}
