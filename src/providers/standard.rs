//! Standard Webhooks (the built-in source `internal`): `webhook-id`, `webhook-timestamp` within
//! 300 s, `webhook-signature` with space-separated `v1,<base64 HMAC-SHA256>` entries; secrets are
//! `whsec_<base64>`. `internal` also accepts an agent key in `Authorization: Bearer`.
//!
//! The router signs its own deliveries to agents the same way ([`StandardSigner`]).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use http::HeaderMap;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::signature::{
    MAX_B64_SIG_LEN, SHA256_LEN, SecretError, VerifyError, ct_eq, decode_b64_mac, format_i64,
    mac_of, parse_timestamp, within_window,
};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, header_str,
    hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

/// Replay window of Standard Webhooks, in seconds (inclusive).
pub const WINDOW_SECS: u64 = 300;
/// The built-in source, the one that also takes agent keys.
pub const INTERNAL: &str = "internal";

const SECRET_PREFIX: &str = "whsec_";
const SECRET_BYTES: usize = 24;

pub struct Standard;

const TYPE: Field = Field::new(0);
const ACTION: Field = Field::new(1);
const ID: &str = "webhook-id";
const TIMESTAMP: &str = "webhook-timestamp";
const SIGNATURE: &str = "webhook-signature";

impl Provider for Standard {
    fn name(&self) -> &'static str {
        "standard"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: INTERNAL,
            secret_env: &["INTERNAL_WEBHOOK_SECRET"],
            identifier: None,
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn parse_secrets(&self, list: &str) -> Result<Secrets, SecretError> {
        secrets_from_list(list).map(Secrets::Hmac)
    }

    fn replay_window(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(WINDOW_SECS))
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        // On `internal`, an agent key stands in for a signature; a wrong one is refused even
        // when the request is also signed.
        if req.source == INTERNAL
            && let Some(auth) = req.header(http::header::AUTHORIZATION.as_str())
        {
            return if (req.agent_key)(auth) {
                Ok(())
            } else {
                Err(VerifyError::InvalidSignature)
            };
        }
        verify(
            hmac_keys(secrets)?,
            req.header(ID),
            req.header(TIMESTAMP),
            req.header(SIGNATURE),
            req.body,
            req.now_ms / 1000,
        )
    }

    fn probes(&self) -> &'static [Probe] {
        &[(&["type"], TYPE), (&["action"], ACTION)]
    }

    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event_type = fields
            .str(TYPE)
            .filter(|t| !t.is_empty())
            .or_else(|| header_str(headers, "x-event-type"))
            .ok_or_else(|| {
                BodyError(
                    "an internal event needs a string \"type\" field or an X-Event-Type header"
                        .into(),
                )
            })?;
        Ok(Classified {
            event_type: event_type.to_string(),
            action: fields.str(ACTION).map(str::to_string),
            delivery_id: header_str(headers, ID).map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        if let Some(t) = opts.event {
            out.header("x-event-type", t);
        }
        out.header(ID, new_message_id());
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        // The id is part of what is signed: the one composed, or a new one.
        let id = match out.get(ID) {
            Some(id) => id.to_string(),
            None => {
                let id = new_message_id();
                out.header(ID, id.clone());
                id
            }
        };
        match (opts.secret, opts.agent_key) {
            (Some(secret), _) => {
                let ts = opts.now_ms / 1000;
                let signer = StandardSigner::from_secret(secret).map_err(|e| {
                    SignError(format!("the secret is not a Standard Webhooks secret: {e}"))
                })?;
                out.header(TIMESTAMP, ts.to_string());
                let signature = signer.sign(&id, ts, &out.body);
                out.header(SIGNATURE, signature);
            }
            (None, Some(key)) => out.header("authorization", format!("Bearer {key}")),
            (None, None) => {
                return Err(SignError(
                    "no secret: pass --secret, or set INTERNAL_WEBHOOK_SECRET or AGENT_API_KEY"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/internal-build.json")
    }
}

fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

/// Comma-separated Standard Webhooks secrets: each entry is base64 with an optional `whsec_`
/// prefix; the decoded bytes are the key.
pub fn secrets_from_list(list: &str) -> Result<SecretSet, SecretError> {
    SecretSet::from_list(list, decode_secret)
}

fn decode_secret(position: usize, secret: &str) -> Result<Vec<u8>, SecretError> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    // Padding is optional: generated secrets (24 bytes) never need it, and hand-made ones are
    // sometimes written without.
    let key = STANDARD_PAD_INDIFFERENT
        .decode(b64)
        .map_err(|_| SecretError::InvalidBase64 { position })?;
    if key.is_empty() {
        return Err(SecretError::EmptyKey { position });
    }
    Ok(key)
}

/// `webhook-id`, `webhook-timestamp` (seconds, within 300 s), `webhook-signature` =
/// space-separated `v1,<base64>` entries of HMAC-SHA256(key, id + "." + ts + "." + body); any
/// entry may match any key, entries of other versions are ignored. A missing id or a malformed
/// timestamp is `InvalidSignature`; the window is checked after the signature, as for Slack.
pub fn verify(
    secrets: &SecretSet,
    id: Option<&[u8]>,
    timestamp: Option<&[u8]>,
    signature: Option<&[u8]>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let id = id
        .map(<[u8]>::trim_ascii)
        .filter(|id| !id.is_empty())
        .ok_or(VerifyError::InvalidSignature)?;
    let ts_raw = timestamp
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    let ts = parse_timestamp(ts_raw).ok_or(VerifyError::InvalidSignature)?;
    let header = signature.ok_or(VerifyError::InvalidSignature)?;

    // Keys outer, entries inner: the body is MACed once per key, while re-decoding a 44-byte
    // entry per key is negligible and needs no heap.
    let matched = secrets.any_mac(&[id, b".", ts_raw, b".", body], |tag| {
        v1_entries(header).any(|entry| ct_eq(tag, &entry))
    });
    if !matched {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts, now_secs, WINDOW_SECS)
}

/// The decoded MACs of the well-formed `v1` entries of a `webhook-signature` header; malformed
/// entries are skipped, as they can never match.
fn v1_entries(header: &[u8]) -> impl Iterator<Item = [u8; SHA256_LEN]> + '_ {
    header
        .split(|b| *b == b' ')
        .filter_map(|entry| entry.strip_prefix(b"v1,"))
        .filter_map(decode_b64_mac)
}

/// Signs with a Standard Webhooks secret: the router's deliveries to an agent, and `send` to
/// `internal`. The key is prepared once and reused for every delivery to that agent.
#[derive(Clone)]
pub struct StandardSigner {
    key: hmac::Key,
}

impl StandardSigner {
    /// `whsec_<base64>` or plain base64.
    pub fn from_secret(secret: &str) -> Result<Self, SecretError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(SecretError::Empty);
        }
        let key = decode_secret(1, secret)?;
        Ok(StandardSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// `v1,<base64>` of HMAC(key, msg_id + "." + timestamp + "." + body); one allocation, for
    /// the returned String.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut ts_buf = [0u8; 20];
        let ts = format_i64(timestamp, &mut ts_buf);
        let tag = mac_of(&self.key, &[msg_id.as_bytes(), b".", ts, b".", body]);
        let mut out = String::with_capacity(3 + MAX_B64_SIG_LEN);
        out.push_str("v1,");
        STANDARD.encode_string(tag.as_ref(), &mut out);
        out
    }
}

impl fmt::Debug for StandardSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StandardSigner(..)")
    }
}

/// A new random Standard Webhooks secret: `whsec_<base64 of 24 random bytes>`.
///
/// # Panics
/// If the operating system's random source fails, which leaves no safe way to make a secret.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source failed");
    let mut out = String::with_capacity(SECRET_PREFIX.len() + 32);
    out.push_str(SECRET_PREFIX);
    STANDARD.encode_string(bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::ProbeSpec;

    // From the standard-webhooks repository's library tests (Python, JS, Go).
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1614265330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    // The same tests' "invalid signature": the valid one with its last byte changed.
    const SW_SIG_NEAR_MISS: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
    // Signatures the same tests use as never-matching decoys.
    const SW_DECOY: &str = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
    const SW_DECOY_V2: &str = "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";

    // From the standard-webhooks repository's Rust library test.
    const SW2_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SW2_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const SW2_TS: i64 = 1649367553;
    const SW2_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SW2_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
    const SW2_DECOYS: [&str; 3] = [
        "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ=",
        "v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=",
        "v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=",
    ];

    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
    const STALE: Result<(), VerifyError> = Err(VerifyError::StaleTimestamp);

    fn std_set(list: &str) -> SecretSet {
        secrets_from_list(list).unwrap()
    }

    fn sw(set: &SecretSet, sig: &str, now: i64) -> Result<(), VerifyError> {
        let ts = SW_TS.to_string();
        verify(
            set,
            Some(SW_ID.as_bytes()),
            Some(ts.as_bytes()),
            Some(sig.as_bytes()),
            SW_BODY,
            now,
        )
    }

    #[test]
    fn standard_list_accepts_prefix_or_plain_and_names_the_bad_entry() {
        let set =
            std_set("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(set.len(), 2);
        let err =
            secrets_from_list("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,,not base64!").unwrap_err();
        assert_eq!(err, SecretError::InvalidBase64 { position: 3 });
        let msg = err.to_string();
        assert!(msg.contains("#3") && !msg.contains("not base64"), "{msg}");
        assert_eq!(
            secrets_from_list("whsec_").unwrap_err(),
            SecretError::EmptyKey { position: 1 }
        );
        assert_eq!(secrets_from_list(" ").unwrap_err(), SecretError::Empty);
    }

    #[test]
    fn debug_never_prints_secrets() {
        let signer = StandardSigner::from_secret(SW_SECRET).unwrap();
        assert!(!format!("{signer:?}").contains("MfKQ"));
    }

    #[test]
    fn standard_published_vectors() {
        let signer = StandardSigner::from_secret(SW_SECRET).unwrap();
        assert_eq!(signer.sign(SW_ID, SW_TS, SW_BODY), SW_SIG);
        let plain = StandardSigner::from_secret(&SW_SECRET["whsec_".len()..]).unwrap();
        assert_eq!(plain.sign(SW_ID, SW_TS, SW_BODY), SW_SIG);
        assert_eq!(sw(&std_set(SW_SECRET), SW_SIG, SW_TS), Ok(()));
        assert_eq!(sw(&std_set(&SW_SECRET[6..]), SW_SIG, SW_TS), Ok(()));
        assert_eq!(sw(&std_set(SW_SECRET), SW_SIG_NEAR_MISS, SW_TS), INVALID);
        assert_eq!(sw(&std_set(SW_SECRET), SW_DECOY, SW_TS), INVALID);

        let signer2 = StandardSigner::from_secret(SW2_SECRET).unwrap();
        assert_eq!(signer2.sign(SW2_ID, SW2_TS, SW2_BODY), SW2_SIG);
        let verify2 = |sig: &str| {
            verify(
                &std_set(SW2_SECRET),
                Some(SW2_ID.as_bytes()),
                Some(SW2_TS.to_string().as_bytes()),
                Some(sig.as_bytes()),
                SW2_BODY,
                SW2_TS,
            )
        };
        assert_eq!(verify2(SW2_SIG), Ok(()));
        let with = format!(
            "{} {} {SW2_SIG} {}",
            SW2_DECOYS[0], SW2_DECOYS[1], SW2_DECOYS[2]
        );
        assert_eq!(verify2(&with), Ok(()));
        assert_eq!(verify2(&SW2_DECOYS.join(" ")), INVALID);
        assert_eq!(
            verify2("v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU="),
            INVALID
        );
    }

    #[test]
    fn standard_multiple_entries_and_versions() {
        let set = std_set(SW_SECRET);
        let multi = format!("{SW_DECOY} {SW_DECOY_V2} {SW_SIG} {SW_DECOY}");
        assert_eq!(sw(&set, &multi, SW_TS), Ok(()));
        let last = format!("{SW_DECOY} {SW_DECOY_V2} {SW_DECOY} {SW_SIG}");
        assert_eq!(sw(&set, &last, SW_TS), Ok(()));
        // The right MAC under another version is ignored.
        let v2 = SW_SIG.replace("v1,", "v2,");
        assert_eq!(sw(&set, &v2, SW_TS), INVALID);
        assert_eq!(sw(&set, &format!("{v2} {SW_DECOY}"), SW_TS), INVALID);
        // Extra spaces between entries are harmless.
        assert_eq!(
            sw(&set, &format!("  {SW_DECOY}   {SW_SIG}  "), SW_TS),
            Ok(())
        );
        // Unpadded base64 of the right MAC is the same MAC.
        assert_eq!(sw(&set, SW_SIG.trim_end_matches('='), SW_TS), Ok(()));
    }

    #[test]
    fn standard_rejects_missing_and_malformed() {
        let set = std_set(SW_SECRET);
        let ts = SW_TS.to_string();
        let (id, ts, sig) = (SW_ID.as_bytes(), ts.as_bytes(), SW_SIG.as_bytes());
        let v = |id, ts, sig| verify(&set, id, ts, sig, SW_BODY, SW_TS);
        assert_eq!(v(Some(id), Some(ts), Some(sig)), Ok(()));
        assert_eq!(v(None, Some(ts), Some(sig)), INVALID);
        assert_eq!(v(Some(b""), Some(ts), Some(sig)), INVALID);
        assert_eq!(v(Some(id), None, Some(sig)), INVALID);
        assert_eq!(v(Some(id), Some(b"hello"), Some(sig)), INVALID);
        assert_eq!(v(Some(id), Some(b"-1614265330"), Some(sig)), INVALID);
        assert_eq!(v(Some(id), Some(b"1614265330\xff"), Some(sig)), INVALID);
        assert_eq!(v(Some(id), Some(b"1614265331"), Some(sig)), INVALID);
        assert_eq!(v(Some(b"msg_other"), Some(ts), Some(sig)), INVALID);
        for bad in [
            b"".as_slice(),
            b"v1,",
            b"v1",
            b",",
            b"v1,dawfeoifkpqwoekfpqoekf",
            &sig[..8],
            &sig[3..],
            b"v1,!!!!",
            b"v1,\xff\xfe\xfd",
            b"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=AAAA",
            // 33 bytes of base64: one byte too many for a SHA-256 MAC.
            b"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OEA",
        ] {
            assert_eq!(v(Some(id), Some(ts), Some(bad)), INVALID, "{bad:?}");
        }
        assert_eq!(v(Some(id), Some(ts), None), INVALID);
        let huge = "v1,AAAA ".repeat(20_000);
        assert_eq!(v(Some(id), Some(ts), Some(huge.as_bytes())), INVALID);
    }

    #[test]
    fn standard_window_is_inclusive() {
        let set = std_set(SW_SECRET);
        assert_eq!(sw(&set, SW_SIG, SW_TS + 300), Ok(()));
        assert_eq!(sw(&set, SW_SIG, SW_TS - 300), Ok(()));
        assert_eq!(sw(&set, SW_SIG, SW_TS + 301), STALE);
        assert_eq!(sw(&set, SW_SIG, SW_TS - 301), STALE);
        assert_eq!(sw(&set, SW_DECOY, SW_TS + 301), INVALID);
    }

    #[test]
    fn standard_rotation() {
        let other = generate_secret();
        let both = std_set(&format!("{other},{SW_SECRET}"));
        assert_eq!(both.len(), 2);
        assert_eq!(sw(&both, SW_SIG, SW_TS), Ok(()));
        let by_other = StandardSigner::from_secret(&other)
            .unwrap()
            .sign(SW_ID, SW_TS, SW_BODY);
        assert_eq!(sw(&both, &by_other, SW_TS), Ok(()));
        let neither = std_set(&format!("{},{}", generate_secret(), generate_secret()));
        assert_eq!(sw(&neither, SW_SIG, SW_TS), INVALID);
        assert_eq!(sw(&neither, &by_other, SW_TS), INVALID);
    }

    #[test]
    fn signer_rejects_bad_secrets() {
        assert_eq!(
            StandardSigner::from_secret("").unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(
            StandardSigner::from_secret("whsec_%%%").unwrap_err(),
            SecretError::InvalidBase64 { position: 1 }
        );
        assert_eq!(
            StandardSigner::from_secret("whsec_").unwrap_err(),
            SecretError::EmptyKey { position: 1 }
        );
    }

    #[test]
    fn generated_secrets_are_24_random_bytes() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        let raw = STANDARD.decode(a.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(raw.len(), 24);
        assert!(StandardSigner::from_secret(&a).is_ok());
    }

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn classify_reads_the_body_type_or_the_header() {
        let spec = ProbeSpec::new(Standard.probes(), None);
        let int = Standard
            .classify(
                &hdrs(&[("x-event-type", "build.done"), ("webhook-id", "msg_1")]),
                &spec.read_value(&serde_json::json!({"x": 1})),
            )
            .unwrap();
        assert_eq!(int.event_type, "build.done");
        assert_eq!(int.delivery_id.as_deref(), Some("msg_1"));
        let body = spec.read_value(&serde_json::json!({"type": "deploy", "action": "done"}));
        let int = Standard
            .classify(&hdrs(&[("x-event-type", "build.done")]), &body)
            .unwrap();
        assert_eq!(int.event_type, "deploy");
        assert_eq!(int.action.as_deref(), Some("done"));
        assert!(Standard.classify(&hdrs(&[]), &Fields::default()).is_err());
    }

    #[test]
    fn internal_takes_an_agent_key_in_place_of_a_signature() {
        let secrets = Standard.parse_secrets(SW_SECRET).unwrap();
        let bearer = hdrs(&[("authorization", "Bearer k")]);
        let req = |source, headers| Request {
            line: super::super::RequestLine::post("/webhook/x"),
            public_url: None,
            source,
            headers,
            body: SW_BODY,
            now_ms: SW_TS * 1000,
            agent_key: &|key| key == b"Bearer k",
        };
        assert_eq!(Standard.verify(&req(INTERNAL, &bearer), None), Ok(()));
        assert_eq!(
            Standard.verify(&req(INTERNAL, &bearer), Some(&secrets)),
            Ok(())
        );
        let wrong = hdrs(&[("authorization", "Bearer x")]);
        assert_eq!(Standard.verify(&req(INTERNAL, &wrong), None), INVALID);
        // A wrong key is refused even beside a valid signature.
        let ts = SW_TS.to_string();
        let signed_wrong = hdrs(&[
            ("authorization", "Bearer x"),
            ("webhook-id", SW_ID),
            ("webhook-timestamp", &ts),
            ("webhook-signature", SW_SIG),
        ]);
        assert_eq!(
            Standard.verify(&req(INTERNAL, &signed_wrong), Some(&secrets)),
            INVALID
        );
        // Only on `internal`: another source of this scheme needs its signature.
        assert_eq!(
            Standard.verify(&req("acme", &bearer), Some(&secrets)),
            INVALID
        );
        let mut signed = signed_wrong.clone();
        signed.remove("authorization");
        assert_eq!(
            Standard.verify(&req("acme", &signed), Some(&secrets)),
            Ok(())
        );
    }

    fn other_timestamp(ts: i64) -> impl Strategy<Value = i64> {
        (1i64..100_000).prop_map(move |d| if ts > d { ts - d } else { ts + d })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_standard(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            other in proptest::collection::vec(any::<u8>(), 1..64),
            id in "[A-Za-z0-9_]{1,40}",
            body in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<prop::sample::Index>(),
            xor in 1u8..,
            ts in 0i64..10_000_000_000,
            changed_ts in (0i64..10_000_000_000).prop_flat_map(other_timestamp),
            skew in -300i64..=300,
        ) {
            let secret = format!("whsec_{}", STANDARD.encode(&key));
            let set = std_set(&secret);
            let sig = StandardSigner::from_secret(&secret).unwrap().sign(&id, ts, &body);
            let v = |set: &SecretSet, ts: i64, body: &[u8]| {
                verify(
                    set,
                    Some(id.as_bytes()),
                    Some(ts.to_string().as_bytes()),
                    Some(sig.as_bytes()),
                    body,
                    ts + skew,
                )
            };
            prop_assert_eq!(v(&set, ts, &body), Ok(()));
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= xor;
                prop_assert_eq!(v(&set, ts, &tampered), INVALID);
            }
            if changed_ts != ts {
                prop_assert_eq!(v(&set, changed_ts, &body), INVALID);
            }
            if other != key {
                let other_set = std_set(&STANDARD.encode(&other));
                prop_assert_eq!(v(&other_set, ts, &body), INVALID);
            }
        }
    }
}
