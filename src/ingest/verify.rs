//! Provider signature schemes (GitHub, Linear, Slack, Standard Webhooks) on raw body bytes, in constant time.
//!
//! Every function here takes header values as raw bytes: a header may hold
//! anything, so parsing never assumes UTF-8 and never panics. Whatever is
//! wrong with a signature header (missing, empty, malformed, wrong) yields the
//! same `InvalidSignature`, so a caller learns nothing about which part failed.
//!
//! Hex signatures (GitHub, Linear, Slack) are accepted in either case: the
//! providers send lowercase, but hex is case-insensitive by definition and
//! rejecting uppercase would only break hand-written test requests.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// Replay window of Linear webhooks, in milliseconds (inclusive).
pub const LINEAR_WINDOW_MS: u64 = 60_000;
/// Replay window of Slack and Standard Webhooks, in seconds (inclusive).
pub const TIMESTAMP_WINDOW_SECS: u64 = 300;

const SHA256_LEN: usize = 32;
/// Unpadded base64 of 32 bytes is 43 characters, padded 44; anything longer
/// cannot be one of our MACs, so it is skipped before any decoding work.
const MAX_B64_SIG_LEN: usize = 44;
const STANDARD_SECRET_PREFIX: &str = "whsec_";
const STANDARD_SECRET_BYTES: usize = 24;

/// Why a configured secret could not be used. Never carries the secret itself,
/// so the message is safe to log or print at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no secret given")]
    Empty,
    /// `position` is 1-based and counts every comma-separated entry as written,
    /// empty ones included, so an operator can find it in the variable.
    #[error("secret #{position} is not valid base64")]
    InvalidBase64 { position: usize },
    #[error("secret #{position} decodes to an empty key")]
    EmptyKey { position: usize },
}

/// One or more HMAC-SHA256 keys of a source; several during a rotation, when a
/// signature made with any of them is accepted.
#[derive(Clone)]
pub struct SecretSet {
    keys: Vec<hmac::Key>,
}

impl SecretSet {
    /// Comma-separated secrets as in an env variable ("a,b"); whitespace around
    /// each trimmed; empty entries ignored. For the HMAC schemes (github,
    /// linear, slack) the secret's UTF-8 bytes are the key.
    pub fn hmac_from_list(list: &str) -> Result<SecretSet, SecretError> {
        Self::from_entries(list, |_, secret| Ok(secret.as_bytes().to_vec()))
    }

    /// Standard Webhooks: each entry is base64 with an optional `whsec_`
    /// prefix; the decoded bytes are the key.
    pub fn standard_from_list(list: &str) -> Result<SecretSet, SecretError> {
        Self::from_entries(list, decode_standard_secret)
    }

    /// Keys given directly as bytes (e.g. secrets kept in the store).
    pub fn from_keys<I, K>(keys: I) -> Result<SecretSet, SecretError>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let keys: Vec<_> = keys
            .into_iter()
            .filter(|k| !k.as_ref().is_empty())
            .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()))
            .collect();
        if keys.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(SecretSet { keys })
    }

    fn from_entries(
        list: &str,
        decode: impl Fn(usize, &str) -> Result<Vec<u8>, SecretError>,
    ) -> Result<SecretSet, SecretError> {
        let mut keys = Vec::new();
        for (index, entry) in list.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let bytes = decode(index + 1, entry)?;
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, &bytes));
        }
        if keys.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(SecretSet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a set is only built with at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.keys.len();
        write!(f, "SecretSet({n} key{})", if n == 1 { "" } else { "s" })
    }
}

fn decode_standard_secret(position: usize, secret: &str) -> Result<Vec<u8>, SecretError> {
    let b64 = secret
        .strip_prefix(STANDARD_SECRET_PREFIX)
        .unwrap_or(secret);
    // Padding is optional: generated secrets (24 bytes) never need it, and
    // hand-made ones are sometimes written without.
    let key = STANDARD_PAD_INDIFFERENT
        .decode(b64)
        .map_err(|_| SecretError::InvalidBase64 { position })?;
    if key.is_empty() {
        return Err(SecretError::EmptyKey { position });
    }
    Ok(key)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("Invalid webhook signature")]
    InvalidSignature,
    #[error("Webhook timestamp outside the allowed window")]
    StaleTimestamp,
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn verify_github(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let hex = signature
        .map(<[u8]>::trim_ascii)
        .and_then(|s| s.strip_prefix(b"sha256="))
        .ok_or(VerifyError::InvalidSignature)?;
    let mac = decode_hex_mac(hex)?;
    verify_body_mac(secrets, body, &mac)
}

/// Linear: `Linear-Signature: <hex HMAC-SHA256(secret, body)>`. The replay
/// window is checked separately by [`check_linear_timestamp`], because its
/// fallback timestamp lives in the JSON body that only the caller parses.
pub fn verify_linear(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let hex = signature
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    let mac = decode_hex_mac(hex)?;
    verify_body_mac(secrets, body, &mac)
}

/// Linear replay window: the `Linear-Timestamp` header (ms since epoch) if
/// present, else the body's `webhookTimestamp` (ms); within 60 s of `now_ms`
/// (inclusive). A header that is present but unparsable does not fall back
/// to the body: the sender said something we cannot trust.
pub fn check_linear_timestamp(
    header: Option<&[u8]>,
    body_ts_ms: Option<i64>,
    now_ms: i64,
) -> Result<(), VerifyError> {
    let ts = match header {
        Some(h) => parse_timestamp(h),
        None => body_ts_ms.filter(|ts| *ts >= 0),
    }
    .ok_or(VerifyError::StaleTimestamp)?;
    within_window(ts, now_ms, LINEAR_WINDOW_MS)
}

/// Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:" + ts + ":" + body)>`
/// with `X-Slack-Request-Timestamp` (seconds) within 300 s of `now_secs`.
/// The signature is checked before the window so that only a genuine (if
/// replayed) request can learn it was stale.
pub fn verify_slack(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    timestamp: Option<&[u8]>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let hex = signature
        .map(<[u8]>::trim_ascii)
        .and_then(|s| s.strip_prefix(b"v0="))
        .ok_or(VerifyError::InvalidSignature)?;
    let mac = decode_hex_mac(hex)?;
    let ts_raw = timestamp
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    let ts = parse_timestamp(ts_raw).ok_or(VerifyError::InvalidSignature)?;

    // The raw header bytes are what Slack signed (not a re-formatted number).
    let matched = secrets.keys.iter().any(|key| {
        let tag = mac_of(key, &[b"v0:", ts_raw, b":", body]);
        bool::from(tag.as_ref().ct_eq(&mac))
    });
    if !matched {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts, now_secs, TIMESTAMP_WINDOW_SECS)
}

/// Standard Webhooks: `webhook-id`, `webhook-timestamp` (seconds, within
/// 300 s), `webhook-signature` = space-separated `v1,<base64>` entries of
/// HMAC-SHA256(key, id + "." + ts + "." + body); any entry may match any key,
/// entries of other versions are ignored. A missing id or a malformed
/// timestamp is `InvalidSignature`; the window is checked after the
/// signature, as for Slack.
pub fn verify_standard(
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

    // Keys outer, entries inner: the body is MACed once per key, while
    // re-decoding a 44-byte entry per key is negligible and needs no heap.
    let matched = secrets.keys.iter().any(|key| {
        let tag = mac_of(key, &[id, b".", ts_raw, b".", body]);
        v1_entries(header).any(|entry| bool::from(tag.as_ref().ct_eq(&entry)))
    });
    if !matched {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts, now_secs, TIMESTAMP_WINDOW_SECS)
}

/// The decoded MACs of the well-formed `v1` entries of a `webhook-signature`
/// header; malformed entries are skipped, as they can never match.
fn v1_entries(header: &[u8]) -> impl Iterator<Item = [u8; SHA256_LEN]> + '_ {
    header
        .split(|b| *b == b' ')
        .filter_map(|entry| entry.strip_prefix(b"v1,"))
        .filter_map(decode_b64_mac)
}

fn decode_b64_mac(b64: &[u8]) -> Option<[u8; SHA256_LEN]> {
    if b64.len() > MAX_B64_SIG_LEN {
        return None;
    }
    // One spare byte: the decoder wants room for its length estimate.
    let mut buf = [0u8; SHA256_LEN + 1];
    match STANDARD_PAD_INDIFFERENT.decode_slice(b64, &mut buf) {
        Ok(SHA256_LEN) => {
            let mut mac = [0u8; SHA256_LEN];
            mac.copy_from_slice(&buf[..SHA256_LEN]);
            Some(mac)
        }
        _ => None,
    }
}

fn decode_hex_mac(hex: &[u8]) -> Result<[u8; SHA256_LEN], VerifyError> {
    let mut mac = [0u8; SHA256_LEN];
    hex::decode_to_slice(hex, &mut mac).map_err(|_| VerifyError::InvalidSignature)?;
    Ok(mac)
}

/// `ring::hmac::verify` compares in constant time; stopping at the first
/// matching key only reveals which key a genuine sender used.
fn verify_body_mac(secrets: &SecretSet, body: &[u8], mac: &[u8]) -> Result<(), VerifyError> {
    if secrets
        .keys
        .iter()
        .any(|key| hmac::verify(key, body, mac).is_ok())
    {
        Ok(())
    } else {
        Err(VerifyError::InvalidSignature)
    }
}

/// Feeds the parts to one HMAC context instead of concatenating them, so a
/// large body is never copied.
fn mac_of(key: &hmac::Key, parts: &[&[u8]]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    for part in parts {
        ctx.update(part);
    }
    ctx.sign()
}

/// ASCII digits only (no sign, no spaces, not empty); `None` on anything else
/// or on overflow, so absurd values are rejected rather than wrapped.
fn parse_timestamp(raw: &[u8]) -> Option<i64> {
    if raw.is_empty() {
        return None;
    }
    raw.iter().try_fold(0i64, |acc, &b| {
        let digit = b.is_ascii_digit().then(|| i64::from(b - b'0'))?;
        acc.checked_mul(10)?.checked_add(digit)
    })
}

fn within_window(ts: i64, now: i64, window: u64) -> Result<(), VerifyError> {
    // abs_diff cannot overflow, whatever the two values.
    if ts.abs_diff(now) <= window {
        Ok(())
    } else {
        Err(VerifyError::StaleTimestamp)
    }
}

/// `sha256=<hex>`, the value of GitHub's `X-Hub-Signature-256`.
pub fn sign_github(secret: &[u8], body: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), body);
    let mut out = String::with_capacity(7 + 2 * SHA256_LEN);
    out.push_str("sha256=");
    push_hex(&mut out, tag.as_ref());
    out
}

/// `<hex>`, the value of Linear's `Linear-Signature`.
pub fn sign_linear(secret: &[u8], body: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), body);
    let mut out = String::with_capacity(2 * SHA256_LEN);
    push_hex(&mut out, tag.as_ref());
    out
}

/// `v0=<hex>`, the value of Slack's `X-Slack-Signature` for a request sent
/// with `X-Slack-Request-Timestamp: <timestamp>`.
pub fn sign_slack(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ts_buf = [0u8; 20];
    let tag = mac_of(
        &key,
        &[b"v0:", format_i64(timestamp, &mut ts_buf), b":", body],
    );
    let mut out = String::with_capacity(3 + 2 * SHA256_LEN);
    out.push_str("v0=");
    push_hex(&mut out, tag.as_ref());
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Decimal text of `n` in a stack buffer: the signed content must use the
/// exact digits sent in the timestamp header, without a heap String.
fn format_i64(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut v = n.unsigned_abs();
    let mut start = buf.len();
    loop {
        start -= 1;
        // `v % 10` is below 10, so the cast cannot truncate.
        buf[start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        start -= 1;
        buf[start] = b'-';
    }
    &buf[start..]
}

/// Signs outbound deliveries with an agent's Standard Webhooks secret. The key
/// is prepared once and reused for every delivery to that agent.
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
        let key = decode_standard_secret(1, secret)?;
        Ok(StandardSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// `v1,<base64>` of HMAC(key, msg_id + "." + timestamp + "." + body); one
    /// allocation, for the returned String.
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
/// If the operating system's random source fails, which leaves no safe way to
/// make a secret.
pub fn generate_standard_secret() -> String {
    let mut bytes = [0u8; STANDARD_SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source failed");
    let mut out = String::with_capacity(STANDARD_SECRET_PREFIX.len() + 32);
    out.push_str(STANDARD_SECRET_PREFIX);
    STANDARD.encode_string(bytes, &mut out);
    out
}

/// Constant-time equality for API keys and tokens. Different lengths are
/// simply unequal (the length of a key is not treated as secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GH_SECRET: &str = "It's a Secret to Everybody";
    const GH_BODY: &[u8] = b"Hello, World!";
    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_TS: i64 = 1531420618;
    const SLACK_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

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

    fn hmac_set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn std_set(list: &str) -> SecretSet {
        SecretSet::standard_from_list(list).unwrap()
    }

    fn gh(set: &SecretSet, sig: &[u8]) -> Result<(), VerifyError> {
        verify_github(set, Some(sig), GH_BODY)
    }

    fn slack(set: &SecretSet, sig: &[u8], ts: &[u8], now: i64) -> Result<(), VerifyError> {
        verify_slack(set, Some(sig), Some(ts), SLACK_BODY, now)
    }

    fn sw(set: &SecretSet, sig: &str, now: i64) -> Result<(), VerifyError> {
        let ts = SW_TS.to_string();
        verify_standard(
            set,
            Some(SW_ID.as_bytes()),
            Some(ts.as_bytes()),
            Some(sig.as_bytes()),
            SW_BODY,
            now,
        )
    }

    // --- secrets ---

    #[test]
    fn hmac_list_trims_and_skips_empty_entries() {
        assert_eq!(hmac_set(" a , b ,, ").len(), 2);
        assert_eq!(hmac_set(GH_SECRET).len(), 1);
        assert_eq!(
            SecretSet::hmac_from_list("").unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(
            SecretSet::hmac_from_list(" , ,").unwrap_err(),
            SecretError::Empty
        );
        // Trimmed: a secret with surrounding spaces in the variable still verifies.
        assert_eq!(
            gh(&hmac_set(&format!("  {GH_SECRET}  ")), GH_SIG.as_bytes()),
            Ok(())
        );
    }

    #[test]
    fn standard_list_accepts_prefix_or_plain_and_names_the_bad_entry() {
        let set =
            std_set("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(set.len(), 2);
        let err =
            SecretSet::standard_from_list("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,,not base64!")
                .unwrap_err();
        assert_eq!(err, SecretError::InvalidBase64 { position: 3 });
        let msg = err.to_string();
        assert!(msg.contains("#3") && !msg.contains("not base64"), "{msg}");
        assert_eq!(
            SecretSet::standard_from_list("whsec_").unwrap_err(),
            SecretError::EmptyKey { position: 1 }
        );
        assert_eq!(
            SecretSet::standard_from_list(" ").unwrap_err(),
            SecretError::Empty
        );
    }

    #[test]
    fn debug_never_prints_secrets() {
        let set = hmac_set("supersecret1,supersecret2");
        assert_eq!(format!("{set:?}"), "SecretSet(2 keys)");
        assert_eq!(format!("{:?}", hmac_set("x")), "SecretSet(1 key)");
        let signer = StandardSigner::from_secret(SW_SECRET).unwrap();
        assert!(!format!("{signer:?}").contains("MfKQ"));
    }

    #[test]
    fn from_keys_skips_empty_keys() {
        let set = SecretSet::from_keys([GH_SECRET.as_bytes(), b""]).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(gh(&set, GH_SIG.as_bytes()), Ok(()));
        assert_eq!(
            SecretSet::from_keys(Vec::<Vec<u8>>::new()).unwrap_err(),
            SecretError::Empty
        );
    }

    // --- GitHub ---

    #[test]
    fn github_published_vector() {
        assert_eq!(sign_github(GH_SECRET.as_bytes(), GH_BODY), GH_SIG);
        assert_eq!(gh(&hmac_set(GH_SECRET), GH_SIG.as_bytes()), Ok(()));
    }

    #[test]
    fn github_rejects_missing_malformed_and_wrong() {
        let set = hmac_set(GH_SECRET);
        assert_eq!(verify_github(&set, None, GH_BODY), INVALID);
        assert_eq!(gh(&set, b""), INVALID);
        assert_eq!(gh(&set, b"sha256="), INVALID);
        // Right hex, no or wrong prefix.
        assert_eq!(gh(&set, &GH_SIG.as_bytes()[7..]), INVALID);
        assert_eq!(
            gh(&set, GH_SIG.replace("sha256=", "sha1=").as_bytes()),
            INVALID
        );
        // Bad hex digit, odd length, too short, too long.
        assert_eq!(gh(&set, GH_SIG.replace("757", "75g").as_bytes()), INVALID);
        assert_eq!(gh(&set, &GH_SIG.as_bytes()[..GH_SIG.len() - 1]), INVALID);
        assert_eq!(gh(&set, &GH_SIG.as_bytes()[..GH_SIG.len() - 2]), INVALID);
        assert_eq!(gh(&set, format!("{GH_SIG}00").as_bytes()), INVALID);
        // Non-UTF-8 bytes and a huge value.
        assert_eq!(gh(&set, b"sha256=\xff\xfe\x80\x00"), INVALID);
        let mut non_utf8 = GH_SIG.as_bytes().to_vec();
        non_utf8[10] = 0xc3;
        assert_eq!(gh(&set, &non_utf8), INVALID);
        assert_eq!(gh(&set, &vec![b'a'; 1 << 20]), INVALID);
        // Wrong MAC, wrong body, wrong secret.
        assert_eq!(gh(&set, GH_SIG.replace("17", "18").as_bytes()), INVALID);
        assert_eq!(
            verify_github(&set, Some(GH_SIG.as_bytes()), b"Hello, World"),
            INVALID
        );
        assert_eq!(gh(&hmac_set("another"), GH_SIG.as_bytes()), INVALID);
    }

    #[test]
    fn github_accepts_uppercase_hex_and_surrounding_whitespace() {
        let set = hmac_set(GH_SECRET);
        let upper = format!("sha256={}", GH_SIG[7..].to_uppercase());
        assert_eq!(gh(&set, upper.as_bytes()), Ok(()));
        assert_eq!(gh(&set, format!(" {GH_SIG}\t").as_bytes()), Ok(()));
    }

    #[test]
    fn github_rotation() {
        let sig = sign_github(b"new", GH_BODY);
        assert_eq!(gh(&hmac_set("old,new"), sig.as_bytes()), Ok(()));
        assert_eq!(gh(&hmac_set("new,old"), sig.as_bytes()), Ok(()));
        assert_eq!(
            gh(
                &hmac_set("old,new"),
                sign_github(b"old", GH_BODY).as_bytes()
            ),
            Ok(())
        );
        assert_eq!(
            gh(
                &hmac_set("old,new"),
                sign_github(b"other", GH_BODY).as_bytes()
            ),
            INVALID
        );
    }

    // --- Linear ---

    #[test]
    fn linear_signature() {
        let set = hmac_set("lin_wh_secret");
        let body = br#"{"type":"Issue","webhookTimestamp":1764170000123}"#;
        let sig = sign_linear(b"lin_wh_secret", body);
        assert_eq!(sig.len(), 64);
        // Same MAC as GitHub's, without the prefix.
        assert_eq!(
            sign_linear(GH_SECRET.as_bytes(), GH_BODY),
            GH_SIG["sha256=".len()..]
        );
        assert_eq!(verify_linear(&set, Some(sig.as_bytes()), body), Ok(()));
        assert_eq!(
            verify_linear(&set, Some(sig.to_uppercase().as_bytes()), body),
            Ok(())
        );
        assert_eq!(verify_linear(&set, None, body), INVALID);
        assert_eq!(verify_linear(&set, Some(b""), body), INVALID);
        assert_eq!(
            verify_linear(&set, Some(format!("sha256={sig}").as_bytes()), body),
            INVALID
        );
        assert_eq!(
            verify_linear(&set, Some(&sig.as_bytes()[1..]), body),
            INVALID
        );
        assert_eq!(verify_linear(&set, Some(b"\xff\xff"), body), INVALID);
        assert_eq!(verify_linear(&set, Some(sig.as_bytes()), b"{}"), INVALID);
        assert_eq!(
            verify_linear(&hmac_set("a, lin_wh_secret"), Some(sig.as_bytes()), body),
            Ok(())
        );
        assert_eq!(
            verify_linear(&hmac_set("a,b"), Some(sig.as_bytes()), body),
            INVALID
        );
    }

    #[test]
    fn linear_timestamp_window() {
        let now = 1_764_170_000_000;
        let h = |ts: i64| ts.to_string();
        assert_eq!(
            check_linear_timestamp(Some(h(now).as_bytes()), None, now),
            Ok(())
        );
        assert_eq!(
            check_linear_timestamp(Some(h(now - 60_000).as_bytes()), None, now),
            Ok(())
        );
        assert_eq!(
            check_linear_timestamp(Some(h(now + 60_000).as_bytes()), None, now),
            Ok(())
        );
        assert_eq!(
            check_linear_timestamp(Some(h(now - 60_001).as_bytes()), None, now),
            STALE
        );
        assert_eq!(
            check_linear_timestamp(Some(h(now + 60_001).as_bytes()), None, now),
            STALE
        );
        // Body fallback, only without a header.
        assert_eq!(
            check_linear_timestamp(None, Some(now - 60_000), now),
            Ok(())
        );
        assert_eq!(check_linear_timestamp(None, Some(now + 60_001), now), STALE);
        assert_eq!(
            check_linear_timestamp(Some(h(now).as_bytes()), Some(0), now),
            Ok(())
        );
        assert_eq!(
            check_linear_timestamp(Some(h(0).as_bytes()), Some(now), now),
            STALE
        );
        // Nothing, unparsable, negative, absurd.
        assert_eq!(check_linear_timestamp(None, None, now), STALE);
        assert_eq!(check_linear_timestamp(Some(b""), Some(now), now), STALE);
        assert_eq!(check_linear_timestamp(Some(b"soon"), None, now), STALE);
        assert_eq!(check_linear_timestamp(Some(b"-1"), None, now), STALE);
        assert_eq!(
            check_linear_timestamp(Some(b"+1764170000000"), None, now),
            STALE
        );
        assert_eq!(check_linear_timestamp(Some(b"1.5e12"), None, now), STALE);
        assert_eq!(
            check_linear_timestamp(Some(b"99999999999999999999999999"), None, now),
            STALE
        );
        assert_eq!(check_linear_timestamp(None, Some(i64::MIN), now), STALE);
        assert_eq!(check_linear_timestamp(None, Some(-5), 0), STALE);
        assert_eq!(
            check_linear_timestamp(None, Some(i64::MAX), i64::MIN),
            STALE
        );
    }

    // --- Slack ---

    #[test]
    fn slack_published_vector() {
        assert_eq!(
            sign_slack(SLACK_SECRET.as_bytes(), SLACK_TS, SLACK_BODY),
            SLACK_SIG
        );
        assert_eq!(
            slack(
                &hmac_set(SLACK_SECRET),
                SLACK_SIG.as_bytes(),
                b"1531420618",
                SLACK_TS
            ),
            Ok(())
        );
    }

    #[test]
    fn slack_window_is_inclusive_and_checked_after_the_signature() {
        let set = hmac_set(SLACK_SECRET);
        let ok = |now| slack(&set, SLACK_SIG.as_bytes(), b"1531420618", now);
        assert_eq!(ok(SLACK_TS + 300), Ok(()));
        assert_eq!(ok(SLACK_TS - 300), Ok(()));
        assert_eq!(ok(SLACK_TS + 301), STALE);
        assert_eq!(ok(SLACK_TS - 301), STALE);
        // A forged request never hears that its timestamp was stale.
        let forged = sign_slack(b"guess", SLACK_TS, SLACK_BODY);
        assert_eq!(
            slack(&set, forged.as_bytes(), b"1531420618", SLACK_TS + 10_000),
            INVALID
        );
    }

    #[test]
    fn slack_rejects_missing_malformed_and_wrong() {
        let set = hmac_set(SLACK_SECRET);
        let ts = b"1531420618".as_slice();
        assert_eq!(
            verify_slack(&set, None, Some(ts), SLACK_BODY, SLACK_TS),
            INVALID
        );
        assert_eq!(
            verify_slack(&set, Some(SLACK_SIG.as_bytes()), None, SLACK_BODY, SLACK_TS),
            INVALID
        );
        assert_eq!(slack(&set, b"", ts, SLACK_TS), INVALID);
        assert_eq!(slack(&set, b"v0=", ts, SLACK_TS), INVALID);
        assert_eq!(
            slack(&set, &SLACK_SIG.as_bytes()[3..], ts, SLACK_TS),
            INVALID
        );
        assert_eq!(
            slack(
                &set,
                SLACK_SIG.replace("v0=", "v1=").as_bytes(),
                ts,
                SLACK_TS
            ),
            INVALID
        );
        assert_eq!(
            slack(&set, &SLACK_SIG.as_bytes()[..66], ts, SLACK_TS),
            INVALID
        );
        assert_eq!(slack(&set, b"v0=\xff\xfe", ts, SLACK_TS), INVALID);
        // Timestamps: empty, non-numeric, negative, signed, overflowing, non-UTF-8.
        for bad in [
            b"".as_slice(),
            b"abc",
            b"-1531420618",
            b"+1531420618",
            b"1531420618.0",
            b"99999999999999999999",
            b"\xff1531420618",
        ] {
            assert_eq!(
                slack(&set, SLACK_SIG.as_bytes(), bad, SLACK_TS),
                INVALID,
                "{bad:?}"
            );
        }
        // Timestamp other than the signed one, body changed, wrong secret.
        assert_eq!(
            slack(&set, SLACK_SIG.as_bytes(), b"1531420619", SLACK_TS),
            INVALID
        );
        assert_eq!(
            verify_slack(
                &set,
                Some(SLACK_SIG.as_bytes()),
                Some(ts),
                b"token=x",
                SLACK_TS
            ),
            INVALID
        );
        assert_eq!(
            slack(&hmac_set("nope"), SLACK_SIG.as_bytes(), ts, SLACK_TS),
            INVALID
        );
    }

    #[test]
    fn slack_uppercase_hex_and_rotation() {
        let upper = format!("v0={}", SLACK_SIG[3..].to_uppercase());
        let set = hmac_set(&format!("old-secret,{SLACK_SECRET}"));
        assert_eq!(
            slack(&set, upper.as_bytes(), b"1531420618", SLACK_TS),
            Ok(())
        );
        assert_eq!(
            slack(
                &hmac_set("a,b"),
                SLACK_SIG.as_bytes(),
                b"1531420618",
                SLACK_TS
            ),
            INVALID
        );
    }

    // --- Standard Webhooks ---

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
            verify_standard(
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
        let v = |id, ts, sig| verify_standard(&set, id, ts, sig, SW_BODY, SW_TS);
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
        let other = generate_standard_secret();
        let both = std_set(&format!("{other},{SW_SECRET}"));
        assert_eq!(both.len(), 2);
        assert_eq!(sw(&both, SW_SIG, SW_TS), Ok(()));
        let by_other = StandardSigner::from_secret(&other)
            .unwrap()
            .sign(SW_ID, SW_TS, SW_BODY);
        assert_eq!(sw(&both, &by_other, SW_TS), Ok(()));
        let neither = std_set(&format!(
            "{},{}",
            generate_standard_secret(),
            generate_standard_secret()
        ));
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
        let a = generate_standard_secret();
        let b = generate_standard_secret();
        assert_ne!(a, b);
        let raw = STANDARD.decode(a.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(raw.len(), 24);
        assert!(StandardSigner::from_secret(&a).is_ok());
    }

    // --- helpers ---

    #[test]
    fn ct_eq_compares_content_and_length() {
        assert!(ct_eq(b"key-123", b"key-123"));
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"key-123", b"key-124"));
        assert!(!ct_eq(b"key-123", b"key-1234"));
        assert!(!ct_eq(b"", b"x"));
    }

    #[test]
    fn timestamps_parse_digits_only() {
        assert_eq!(parse_timestamp(b"0"), Some(0));
        assert_eq!(parse_timestamp(b"0001531420618"), Some(1531420618));
        assert_eq!(parse_timestamp(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_timestamp(b"9223372036854775808"), None);
        for bad in [
            b"".as_slice(),
            b" 1",
            b"1 ",
            b"-0",
            b"+1",
            b"1_000",
            b"\xff",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn format_i64_matches_display() {
        for n in [0, 7, -7, 10, SLACK_TS, -SW_TS, i64::MAX, i64::MIN] {
            let mut buf = [0u8; 20];
            assert_eq!(format_i64(n, &mut buf), n.to_string().as_bytes());
        }
    }

    // --- properties ---

    fn hmac_secret() -> impl Strategy<Value = String> {
        // No commas or surrounding whitespace: one entry of an env list.
        "[A-Za-z0-9_!@#$%^&*()=+./-]{1,48}"
    }

    fn other_timestamp(ts: i64) -> impl Strategy<Value = i64> {
        (1i64..100_000).prop_map(move |d| if ts > d { ts - d } else { ts + d })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_hex_and_b64_parsing_never_panics(
            sig in proptest::collection::vec(any::<u8>(), 0..200),
            ts in proptest::collection::vec(any::<u8>(), 0..30),
        ) {
            let set = hmac_set("k");
            let std = std_set(SW_SECRET);
            prop_assert_eq!(verify_github(&set, Some(&sig), b"x"), INVALID);
            prop_assert_eq!(verify_linear(&set, Some(&sig), b"x"), INVALID);
            prop_assert!(verify_slack(&set, Some(&sig), Some(&ts), b"x", 0).is_err());
            prop_assert!(verify_standard(&std, Some(b"id"), Some(&ts), Some(&sig), b"x", 0).is_err());
            let _ = check_linear_timestamp(Some(&ts), None, 0);
        }

        #[test]
        fn prop_github(
            secret in hmac_secret(),
            other in hmac_secret(),
            body in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<prop::sample::Index>(),
            xor in 1u8..,
        ) {
            let set = hmac_set(&secret);
            let sig = sign_github(secret.as_bytes(), &body);
            prop_assert_eq!(verify_github(&set, Some(sig.as_bytes()), &body), Ok(()));
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= xor;
                prop_assert_eq!(verify_github(&set, Some(sig.as_bytes()), &tampered), INVALID);
            }
            if other != secret {
                prop_assert_eq!(verify_github(&hmac_set(&other), Some(sig.as_bytes()), &body), INVALID);
            }
        }

        #[test]
        fn prop_linear(
            secret in hmac_secret(),
            other in hmac_secret(),
            body in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<prop::sample::Index>(),
            xor in 1u8..,
            now in 0i64..4_000_000_000_000,
            skew in -60_000i64..=60_000,
            beyond in 60_001i64..1_000_000_000,
        ) {
            let set = hmac_set(&secret);
            let sig = sign_linear(secret.as_bytes(), &body);
            prop_assert_eq!(verify_linear(&set, Some(sig.as_bytes()), &body), Ok(()));
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= xor;
                prop_assert_eq!(verify_linear(&set, Some(sig.as_bytes()), &tampered), INVALID);
            }
            if other != secret {
                prop_assert_eq!(verify_linear(&hmac_set(&other), Some(sig.as_bytes()), &body), INVALID);
            }
            let ts = now + skew;
            prop_assert_eq!(check_linear_timestamp(Some(ts.to_string().as_bytes()), None, now), Ok(()));
            prop_assert_eq!(check_linear_timestamp(None, Some(ts), now), Ok(()));
            prop_assert_eq!(check_linear_timestamp(None, Some(now + beyond), now), STALE);
            prop_assert_eq!(check_linear_timestamp(None, Some(now - beyond), now), STALE);
        }

        #[test]
        fn prop_slack(
            secret in hmac_secret(),
            other in hmac_secret(),
            body in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<prop::sample::Index>(),
            xor in 1u8..,
            ts in 0i64..10_000_000_000,
            changed_ts in (0i64..10_000_000_000).prop_flat_map(other_timestamp),
        ) {
            let set = hmac_set(&secret);
            let sig = sign_slack(secret.as_bytes(), ts, &body);
            let ts_h = ts.to_string();
            let v = |set: &SecretSet, ts_h: &str, body: &[u8]| {
                verify_slack(set, Some(sig.as_bytes()), Some(ts_h.as_bytes()), body, ts)
            };
            prop_assert_eq!(v(&set, &ts_h, &body), Ok(()));
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= xor;
                prop_assert_eq!(v(&set, &ts_h, &tampered), INVALID);
            }
            if changed_ts != ts {
                prop_assert_eq!(v(&set, &changed_ts.to_string(), &body), INVALID);
            }
            if other != secret {
                prop_assert_eq!(v(&hmac_set(&other), &ts_h, &body), INVALID);
            }
        }

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
                verify_standard(
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
