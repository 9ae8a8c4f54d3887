//! What the providers' signature schemes share: HMAC-SHA256 key sets with rotation, MAC decoding
//! (hex, base64), constant-time comparison (`crate::crypto::ct_eq`), timestamps and replay
//! windows.
//!
//! Every function here takes header values as raw bytes: a header may hold anything, so parsing
//! never assumes UTF-8 and never panics. Whatever is wrong with a signature header (missing,
//! empty, malformed, wrong) yields the same `InvalidSignature`, so a caller learns nothing about
//! which part failed.
//!
//! Hex signatures are accepted in either case: the providers send lowercase, but hex is
//! case-insensitive by definition and rejecting uppercase would only break hand-written test
//! requests.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use ring::hmac;

pub use crate::crypto::ct_eq;

/// The length of an HMAC-SHA256 MAC.
pub const SHA256_LEN: usize = 32;
/// Unpadded base64 of 32 bytes is 43 characters, padded 44; anything longer cannot be one of
/// our MACs, so it is skipped before any decoding work.
pub const MAX_B64_SIG_LEN: usize = 44;

/// Why a configured secret could not be used. Never carries the secret itself, so the message
/// is safe to log or print at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no secret given")]
    Empty,
    /// `position` is 1-based and counts every comma-separated entry as written, empty ones
    /// included, so an operator can find it in the variable.
    #[error("secret #{position} is not valid base64")]
    InvalidBase64 { position: usize },
    #[error("secret #{position} decodes to an empty key")]
    EmptyKey { position: usize },
    /// A public-key scheme's entry that is not a key of its form (`expected` says which).
    #[error("secret #{position} is not {expected}")]
    InvalidKey {
        position: usize,
        expected: &'static str,
    },
}

/// Why a request's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("Invalid webhook signature")]
    InvalidSignature,
    #[error("Webhook timestamp outside the allowed window")]
    StaleTimestamp,
    /// No timestamp at all where the scheme needs one (`0` says where it is expected): the
    /// request is not one the provider sent, so it is a signature failure, not a replay.
    #[error("Invalid webhook signature: no timestamp ({0})")]
    MissingTimestamp(&'static str),
}

/// One or more HMAC-SHA256 keys of a source; several during a rotation, when a signature made
/// with any of them is accepted.
#[derive(Clone)]
pub struct SecretSet {
    keys: Vec<hmac::Key>,
}

impl SecretSet {
    /// Comma-separated secrets as in an env variable ("a,b"); whitespace around each trimmed;
    /// empty entries ignored. The secret's UTF-8 bytes are the key (GitHub, Linear, Slack).
    pub fn hmac_from_list(list: &str) -> Result<SecretSet, SecretError> {
        Self::from_list(list, |_, secret| Ok(secret.as_bytes().to_vec()))
    }

    /// Comma-separated secrets, each turned into a key by `decode` (given its 1-based position
    /// in the list, empty entries counted, and the trimmed entry); empty entries ignored.
    pub fn from_list(
        list: &str,
        decode: impl Fn(usize, &str) -> Result<Vec<u8>, SecretError>,
    ) -> Result<SecretSet, SecretError> {
        Self::from_list_for(&[hmac::HMAC_SHA256], list, decode)
    }

    /// Comma-separated secrets whose UTF-8 bytes are HMAC-SHA1 keys (Intercom, Vercel): as
    /// [`SecretSet::hmac_from_list`], for the providers that still sign with SHA-1.
    /// `verify_body` and `any_mac` then compare SHA-1 MACs (20 bytes).
    pub fn hmac_sha1_from_list(list: &str) -> Result<SecretSet, SecretError> {
        Self::hmac_from_list_for(list, &[hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY])
    }

    /// `hmac_from_list` with each secret a key of each of `algorithms`: one algorithm other
    /// than SHA-256 (a config recipe's SHA-1 or SHA-512), or several (Twilio: HMAC-SHA1, and
    /// HMAC-SHA256 for its shared keys). A MAC of one algorithm never matches another's, whose
    /// length differs; `len` counts a key per secret and algorithm.
    pub fn hmac_from_list_for(
        list: &str,
        algorithms: &[hmac::Algorithm],
    ) -> Result<SecretSet, SecretError> {
        Self::from_list_for(algorithms, list, |_, secret| Ok(secret.as_bytes().to_vec()))
    }

    fn from_list_for(
        algorithms: &[hmac::Algorithm],
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
            for algorithm in algorithms {
                keys.push(hmac::Key::new(*algorithm, &bytes));
            }
        }
        if keys.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(SecretSet { keys })
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

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a set is only built with at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `mac` is some key's HMAC of `body`. `ring::hmac::verify` compares in constant
    /// time; stopping at the first matching key only reveals which key a genuine sender used.
    pub fn verify_body(&self, body: &[u8], mac: &[u8]) -> Result<(), VerifyError> {
        if self
            .keys
            .iter()
            .any(|key| hmac::verify(key, body, mac).is_ok())
        {
            Ok(())
        } else {
            Err(VerifyError::InvalidSignature)
        }
    }

    /// The keys, in the order given (a provider whose answer is keyed, such as Zoom's
    /// handshake, uses the one that verified the request).
    pub fn keys(&self) -> &[hmac::Key] {
        &self.keys
    }

    /// Whether `matches` accepts some key's HMAC of the concatenated `parts` (the body is MACed
    /// once per key; `matches` must compare in constant time, e.g. with [`ct_eq`]).
    pub fn any_mac(&self, parts: &[&[u8]], mut matches: impl FnMut(&[u8]) -> bool) -> bool {
        self.keys
            .iter()
            .any(|key| matches(mac_of(key, parts).as_ref()))
    }
}

impl fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.keys.len();
        write!(f, "SecretSet({n} key{})", if n == 1 { "" } else { "s" })
    }
}

/// Comma-separated public keys (several during a rotation), each turned into the key's bytes by
/// `decode` (given its 1-based position, empty entries counted, and the trimmed entry); empty
/// entries ignored, at least one required.
pub fn public_keys_from_list(
    list: &str,
    decode: impl Fn(usize, &str) -> Result<Vec<u8>, SecretError>,
) -> Result<Vec<Vec<u8>>, SecretError> {
    let mut keys = Vec::new();
    for (index, entry) in list.split(',').enumerate() {
        let entry = entry.trim();
        if !entry.is_empty() {
            keys.push(decode(index + 1, entry)?);
        }
    }
    if keys.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(keys)
}

/// A hex MAC (either case) of exactly 32 bytes.
pub fn decode_hex_mac(hex: &[u8]) -> Result<[u8; SHA256_LEN], VerifyError> {
    let mut mac = [0u8; SHA256_LEN];
    hex::decode_to_slice(hex, &mut mac).map_err(|_| VerifyError::InvalidSignature)?;
    Ok(mac)
}

/// A base64 MAC (padding optional) of exactly 32 bytes; `None` for anything else.
pub fn decode_b64_mac(b64: &[u8]) -> Option<[u8; SHA256_LEN]> {
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

/// Feeds the parts to one HMAC context instead of concatenating them, so a large body is never
/// copied.
pub fn mac_of(key: &hmac::Key, parts: &[&[u8]]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    for part in parts {
        ctx.update(part);
    }
    ctx.sign()
}

/// `prefix` followed by the lowercase hex HMAC-SHA256 of the concatenated `parts` under
/// `secret`: how GitHub, Linear and Slack write their signatures.
pub fn hex_signature(prefix: &str, secret: &[u8], parts: &[&[u8]]) -> String {
    let tag = mac_of(&hmac::Key::new(hmac::HMAC_SHA256, secret), parts);
    let mut out = String::with_capacity(prefix.len() + 2 * SHA256_LEN);
    out.push_str(prefix);
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

/// ASCII digits only (no sign, no spaces, not empty); `None` on anything else or on overflow,
/// so absurd values are rejected rather than wrapped.
pub fn parse_timestamp(raw: &[u8]) -> Option<i64> {
    if raw.is_empty() {
        return None;
    }
    raw.iter().try_fold(0i64, |acc, &b| {
        let digit = b.is_ascii_digit().then(|| i64::from(b - b'0'))?;
        acc.checked_mul(10)?.checked_add(digit)
    })
}

/// `ts` within `window` of `now` (inclusive, in whatever unit both are given).
pub fn within_window(ts: i64, now: i64, window: u64) -> Result<(), VerifyError> {
    // abs_diff cannot overflow, whatever the two values.
    if ts.abs_diff(now) <= window {
        Ok(())
    } else {
        Err(VerifyError::StaleTimestamp)
    }
}

/// Decimal text of `n` in a stack buffer: the signed content must use the exact digits sent in
/// the timestamp header, without a heap String.
pub fn format_i64(n: i64, buf: &mut [u8; 20]) -> &[u8] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::github;

    const GH_SECRET: &str = "It's a Secret to Everybody";
    const GH_BODY: &[u8] = b"Hello, World!";
    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn hmac_set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn gh(set: &SecretSet, sig: &[u8]) -> Result<(), VerifyError> {
        github::verify(set, Some(sig), GH_BODY)
    }

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
    fn debug_never_prints_secrets() {
        let set = hmac_set("supersecret1,supersecret2");
        assert_eq!(format!("{set:?}"), "SecretSet(2 keys)");
        assert_eq!(format!("{:?}", hmac_set("x")), "SecretSet(1 key)");
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
        for n in [0, 7, -7, 10, 1531420618, -1614265330, i64::MAX, i64::MIN] {
            let mut buf = [0u8; 20];
            assert_eq!(format_i64(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
