//! SendGrid (Twilio SendGrid) signed Event Webhook: `X-Twilio-Email-Event-Webhook-Signature`,
//! the base64 ECDSA P-256 SHA-256 signature (ASN.1 DER) of
//! `X-Twilio-Email-Event-Webhook-Timestamp` + body, verified with the public key SendGrid shows
//! (base64 DER SubjectPublicKeyInfo), as SendGrid documents
//! (<https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features>)
//! and its SDKs verify (sendgrid-python's `EventWebhook.verify_signature`).
//!
//! Keys: `SENDGRID_WEBHOOK_SECRET` holds the verification key as SendGrid shows it (the PEM
//! armour may be left on); several, comma-separated, during a rotation. `send` signs, so it
//! needs a private key: `--secret` is then a P-256 private key as base64 PKCS#8 DER (what
//! `openssl pkcs8 -topk8 -nocrypt -outform DER | base64` gives). The router accepts that form
//! too and uses only its public key, so one value serves both sides of a test.
//!
//! The body is a JSON array, a batch of events (`Provider::json_body`), stored as it came. Its
//! type is `events`, whatever the batch holds, because a batch mixes kinds (`delivered`,
//! `open`, `bounce` …): rules look into `payload` for them. The action is the event's kind when
//! the batch holds one event. The delivery id is the first event's `sg_event_id`, which a
//! redelivered batch repeats.
//!
//! Window: SendGrid names none, and its SDKs check none; it retries a failed batch for up to 24
//! hours without saying whether a retry is signed anew, so the router refuses only timestamps
//! more than 25 hours away (older replays of a batch are duplicates by `sg_event_id` anyway).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use http::HeaderMap;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};

use super::signature::{
    SecretError, VerifyError, parse_timestamp, public_keys_from_list, within_window,
};
use super::{Builtin, Outgoing, Provider, Request, Secrets, SendOptions, SignError};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

/// Replay window of SendGrid batches, in seconds (inclusive); see the module's comment.
pub const WINDOW_SECS: u64 = 25 * 3600;

pub struct SendGrid;

const FIRST_EVENT: Field = Field::new(0);
const FIRST_ID: Field = Field::new(1);
const SECOND_EVENT: Field = Field::new(2);
const SIGNATURE: &str = "x-twilio-email-event-webhook-signature";
const TIMESTAMP: &str = "x-twilio-email-event-webhook-timestamp";

/// The DER SubjectPublicKeyInfo of a P-256 key up to its uncompressed point (`04 || X || Y`):
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (66 bytes) }.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const POINT_LEN: usize = 65;
/// A DER ECDSA P-256 signature is at most 72 bytes: 96 base64 characters.
const MAX_SIGNATURE_B64: usize = 96;

impl Provider for SendGrid {
    fn name(&self) -> &'static str {
        "sendgrid"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "sendgrid",
            secret_env: &["SENDGRID_WEBHOOK_SECRET"],
            // Events carry no account id: the client address.
            identifier: None,
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn parse_secrets(&self, list: &str) -> Result<Secrets, SecretError> {
        public_keys_from_list(list, |position, entry| {
            public_point_of(entry).ok_or(SecretError::InvalidKey {
                position,
                expected: "a P-256 public key (base64 DER, as SendGrid shows it) or private key \
                           (base64 PKCS#8 DER)",
            })
        })
        .map(Secrets::PublicKeys)
    }

    fn replay_window(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(WINDOW_SECS))
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        let Some(Secrets::PublicKeys(points)) = secrets else {
            return Err(VerifyError::InvalidSignature);
        };
        verify(
            points,
            req.header(SIGNATURE),
            req.header(TIMESTAMP),
            req.body,
            req.now_ms / 1000,
        )
    }

    fn json_body(&self) -> crate::event::JsonBody {
        crate::event::JsonBody::ObjectOrArray
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["0", "event"], FIRST_EVENT),
            (&["0", "sg_event_id"], FIRST_ID),
            (&["1", "event"], SECOND_EVENT),
        ]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let single = fields.get(SECOND_EVENT).is_none();
        Ok(Classified {
            event_type: "events".into(),
            action: fields
                .str(FIRST_EVENT)
                .filter(|_| single)
                .map(str::to_string),
            delivery_id: fields.str(FIRST_ID).map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, _: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "SendGrid Event API");
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let pair = key_pair(opts.secret()?).ok_or_else(|| {
            SignError(
                "SendGrid signs with its private key: give a P-256 private key as base64 PKCS#8 \
                 DER; the router's SENDGRID_WEBHOOK_SECRET holds only the public key"
                    .into(),
            )
        })?;
        let ts = (opts.now_ms / 1000).to_string();
        let signature = sign(&pair, &ts, &out.body)?;
        out.header(TIMESTAMP, ts);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/sendgrid-events.json")
    }
}

/// The base64 DER of an entry, PEM armour and whitespace removed.
fn der_of(entry: &str) -> Option<Vec<u8>> {
    let b64: String = entry
        .lines()
        .filter(|l| !l.trim_start().starts_with("-----"))
        .flat_map(str::split_whitespace)
        .collect();
    STANDARD_PAD_INDIFFERENT.decode(b64).ok()
}

/// The uncompressed public point of a public key (SubjectPublicKeyInfo) or of a private key
/// (PKCS#8).
fn public_point_of(entry: &str) -> Option<Vec<u8>> {
    let der = der_of(entry)?;
    if let Some(point) = der.strip_prefix(P256_SPKI_PREFIX)
        && point.len() == POINT_LEN
    {
        // ring checks that the point is on the curve when it verifies (a point that is not
        // verifies nothing).
        return Some(point.to_vec());
    }
    key_pair(entry).map(|p| p.public_key().as_ref().to_vec())
}

fn key_pair(secret: &str) -> Option<EcdsaKeyPair> {
    let der = der_of(secret)?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &SystemRandom::new()).ok()
}

/// The base64 DER signature over timestamp + body with any of the public points; the timestamp
/// (seconds) within the window of `now_secs`, checked after the signature.
pub fn verify(
    points: &[Vec<u8>],
    signature: Option<&[u8]>,
    timestamp: Option<&[u8]>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let b64 = signature
        .map(<[u8]>::trim_ascii)
        .filter(|s| s.len() <= MAX_SIGNATURE_B64)
        .ok_or(VerifyError::InvalidSignature)?;
    let sig = STANDARD_PAD_INDIFFERENT
        .decode(b64)
        .map_err(|_| VerifyError::InvalidSignature)?;
    let ts_raw = timestamp
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    let ts = parse_timestamp(ts_raw).ok_or(VerifyError::InvalidSignature)?;
    // ECDSA verification takes the message in one piece.
    let mut message = Vec::with_capacity(ts_raw.len() + body.len());
    message.extend_from_slice(ts_raw);
    message.extend_from_slice(body);
    let genuine = points.iter().any(|point| {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(&message, &sig)
            .is_ok()
    });
    if !genuine {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts, now_secs, WINDOW_SECS)
}

/// The base64 `X-Twilio-Email-Event-Webhook-Signature` of timestamp + body.
pub fn sign(pair: &EcdsaKeyPair, timestamp: &str, body: &[u8]) -> Result<String, SignError> {
    let mut message = timestamp.as_bytes().to_vec();
    message.extend_from_slice(body);
    let sig = pair
        .sign(&SystemRandom::new(), &message)
        .map_err(|_| SignError("ECDSA signing failed".into()))?;
    Ok(STANDARD.encode(sig.as_ref()))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/sendgrid.py: sendgrid-python's own test vector (sendgrid 6.12.5) ...
    const SDK_PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";
    const SDK_SIGNATURE: &str = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM=";
    const SDK_TS: i64 = 1600112502;
    const SDK_PAYLOAD: &[u8] = b"[{\"email\":\"hello@world.com\",\"event\":\"dropped\",\"reason\":\"Bounced Address\",\"sg_event_id\":\"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA\",\"sg_message_id\":\"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0\",\"smtp-id\":\"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>\",\"timestamp\":1600112492}]\r\n";
    // ... the SDK's "bad key" ...
    const OTHER_PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA==";
    // ... and a pair of our own (cryptography 51.0.1), its signature checked by the SDK.
    pub const OWN_PRIVATE_KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgHy49TFtqeYgBI0VniavN7w8eLTxLWml4h5altMPS4fChRANCAAT1/vsXo2JTnCd5nGMXrk/PZFCJpD+1je3GIH3Q+hMkgxUDrAAaEtWlxCiRXt+Cok6MH0y87wOclAvcm3364Vly";
    const OWN_PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9f77F6NiU5wneZxjF65Pz2RQiaQ/tY3txiB90PoTJIMVA6wAGhLVpcQokV7fgqJOjB9MvO8DnJQL3Jt9+uFZcg==";
    const OWN_TS: i64 = 1700000005;
    const OWN_BODY: &[u8] = br#"[{"email":"ada@example.com","event":"delivered","sg_event_id":"ZGVsaXZlcmVkLTAtMjQ","timestamp":1700000000}]"#;
    const OWN_SIGNATURE: &str = "MEUCICU1rv6AvrCA7Vc3MUasPz7IoxRQdXLEBqq60rdS8ANjAiEAlNJM6qyeTTiAflt3Q1nmqYcJ8weZHNKEWUJLti4PWts=";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn points(list: &str) -> Vec<Vec<u8>> {
        match SendGrid.parse_secrets(list).unwrap() {
            Secrets::PublicKeys(p) => p,
            Secrets::Hmac(_) | Secrets::Tokens(_) => unreachable!(),
        }
    }

    fn v(p: &[Vec<u8>], sig: &str, ts: &str, body: &[u8], now: i64) -> Result<(), VerifyError> {
        verify(p, Some(sig.as_bytes()), Some(ts.as_bytes()), body, now)
    }

    #[test]
    fn sendgrid_sdk_vector() {
        let p = points(SDK_PUBLIC_KEY);
        assert_eq!(
            v(&p, SDK_SIGNATURE, "1600112502", SDK_PAYLOAD, SDK_TS),
            Ok(())
        );
        // The SDK's own refusals: another key, another payload, another timestamp.
        assert_eq!(
            v(
                &points(OTHER_PUBLIC_KEY),
                SDK_SIGNATURE,
                "1600112502",
                SDK_PAYLOAD,
                SDK_TS
            ),
            INVALID
        );
        assert_eq!(
            v(&p, SDK_SIGNATURE, "1600112502", b"payload", SDK_TS),
            INVALID
        );
        assert_eq!(
            v(&p, SDK_SIGNATURE, "timestamp", SDK_PAYLOAD, SDK_TS),
            INVALID
        );
        let sdk_bad_sig = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0=";
        assert_eq!(
            v(&p, sdk_bad_sig, "1600112502", SDK_PAYLOAD, SDK_TS),
            INVALID
        );
    }

    #[test]
    fn sendgrid_own_pair_signs_and_verifies() {
        let p = points(OWN_PUBLIC_KEY);
        assert_eq!(v(&p, OWN_SIGNATURE, "1700000005", OWN_BODY, OWN_TS), Ok(()));
        // The private key's public half is the public key.
        assert_eq!(points(OWN_PRIVATE_KEY), p);
        let pair = key_pair(OWN_PRIVATE_KEY).unwrap();
        let ours = sign(&pair, "1700000005", OWN_BODY).unwrap();
        assert_eq!(v(&p, &ours, "1700000005", OWN_BODY, OWN_TS), Ok(()));
        // PEM armour is accepted.
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{OWN_PUBLIC_KEY}\n-----END PUBLIC KEY-----");
        assert_eq!(points(&pem), p);
    }

    #[test]
    fn sendgrid_refusals_rotation_and_window() {
        let p = points(OWN_PUBLIC_KEY);
        let ts = "1700000005";
        let mut changed = OWN_BODY.to_vec();
        changed[4] ^= 1;
        assert_eq!(v(&p, OWN_SIGNATURE, ts, &changed, OWN_TS), INVALID);
        assert_eq!(
            v(&points(SDK_PUBLIC_KEY), OWN_SIGNATURE, ts, OWN_BODY, OWN_TS),
            INVALID
        );
        let both = points(&format!("{SDK_PUBLIC_KEY},{OWN_PUBLIC_KEY}"));
        assert_eq!(v(&both, OWN_SIGNATURE, ts, OWN_BODY, OWN_TS), Ok(()));
        assert_eq!(
            verify(&p, None, Some(ts.as_bytes()), OWN_BODY, OWN_TS),
            INVALID
        );
        assert_eq!(
            verify(&p, Some(OWN_SIGNATURE.as_bytes()), None, OWN_BODY, OWN_TS),
            INVALID
        );
        let long = "A".repeat(200);
        for bad in ["", "!!!!", &OWN_SIGNATURE[4..], &long, "MEUCIQ=="] {
            assert_eq!(v(&p, bad, ts, OWN_BODY, OWN_TS), INVALID, "{bad}");
        }
        assert_eq!(
            v(&p, OWN_SIGNATURE, "1700000006", OWN_BODY, OWN_TS),
            INVALID
        );
        let w = WINDOW_SECS as i64;
        assert_eq!(v(&p, OWN_SIGNATURE, ts, OWN_BODY, OWN_TS + w), Ok(()));
        assert_eq!(v(&p, OWN_SIGNATURE, ts, OWN_BODY, OWN_TS - w), Ok(()));
        assert_eq!(
            v(&p, OWN_SIGNATURE, ts, OWN_BODY, OWN_TS + w + 1),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            v(&p, OWN_SIGNATURE, ts, OWN_BODY, OWN_TS - w - 1),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            v(
                &points(SDK_PUBLIC_KEY),
                OWN_SIGNATURE,
                ts,
                OWN_BODY,
                OWN_TS + 10 * w
            ),
            INVALID
        );
    }

    #[test]
    fn sendgrid_keys_parse_strictly() {
        for bad in ["", "not base64!", "AAAA", &OWN_PUBLIC_KEY[..40]] {
            assert!(SendGrid.parse_secrets(bad).is_err(), "{bad}");
        }
        // A point that is not on the curve verifies nothing.
        let mut spki = STANDARD.decode(OWN_PUBLIC_KEY).unwrap();
        let last = spki.len() - 1;
        spki[last] ^= 1;
        let off_curve = points(&STANDARD.encode(&spki));
        assert_eq!(
            v(&off_curve, OWN_SIGNATURE, "1700000005", OWN_BODY, OWN_TS),
            INVALID
        );
        let mut out = Outgoing::default();
        let opts = SendOptions {
            event: None,
            secret: Some(OWN_PUBLIC_KEY),
            agent_key: None,
            now_ms: 0,
        };
        assert!(SendGrid.sign(&mut out, &opts).is_err());
    }

    fn fields(body: &Value) -> Fields<'static> {
        ProbeSpec::new(SendGrid.probes(), None).read_value(body)
    }

    #[test]
    fn classify_batches() {
        let one = json!([{"event": "dropped", "sg_event_id": "e1"}]);
        assert_eq!(
            SendGrid.classify(&HeaderMap::new(), &fields(&one)).unwrap(),
            Classified {
                event_type: "events".into(),
                action: Some("dropped".into()),
                delivery_id: Some("e1".into()),
            }
        );
        let sample: Value = serde_json::from_str(SendGrid.sample()).unwrap();
        let two = SendGrid
            .classify(&HeaderMap::new(), &fields(&sample))
            .unwrap();
        assert_eq!(two.event_type, "events");
        assert_eq!(two.action, None);
        assert_eq!(
            two.delivery_id.as_deref(),
            Some("ZGVsaXZlcmVkLTAtMjQ5NDc2NjQtMA")
        );
        let empty = SendGrid
            .classify(&HeaderMap::new(), &fields(&json!([])))
            .unwrap();
        assert_eq!((empty.action, empty.delivery_id), (None, None));
    }

    #[test]
    fn array_bodies_are_probed_and_kept_as_they_came() {
        let spec = ProbeSpec::new(SendGrid.probes(), None);
        let p = crate::event::probe_json(SDK_PAYLOAD, &spec, crate::event::JsonBody::ObjectOrArray)
            .unwrap();
        assert!(p.payload.is_none() && p.raw_json);
        assert_eq!(p.fields.str(FIRST_EVENT), Some("dropped"));
        // Objects still pass; scalars do not; other providers still refuse arrays.
        assert!(
            crate::event::probe_json(b"{\"a\":1}", &spec, crate::event::JsonBody::ObjectOrArray)
                .is_ok()
        );
        assert!(
            crate::event::probe_json(b"1", &spec, crate::event::JsonBody::ObjectOrArray).is_err()
        );
        assert!(crate::event::probe_json(b"[1]", &spec, crate::event::JsonBody::Object).is_err());
        assert!(crate::event::probe_json_object(SDK_PAYLOAD, &spec).is_err());
    }
}
