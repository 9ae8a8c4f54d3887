//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the regression test
//! `tests/it/fuzz_regressions.rs` (which includes this file), so that a saved crash input replays
//! through exactly the code that found it. They use event_router's public API only.
//!
//! Each target takes arbitrary bytes and panics only when a property breaks: the code under test
//! must never panic, recurse without bound or allocate hugely, and its answers are checked against
//! a reference model written here from the documented rules (for the verifiers: an HMAC computed
//! independently and compared as text). The fuzz build caps single allocations (see
//! `fuzz/src/lib.rs`) and libFuzzer limits time and memory per input.
//!
//! Inputs are NUL-separated fields, `ctrl \0 field \0 … \0 body`, the last field taking the rest
//! of the input (NULs included), so that seed files can be written by hand and the fuzzer reaches
//! the code behind the header parsing. `ctrl` holds small choices (which key signs, which edit is
//! made to a genuine signature, clock skew), read a byte at a time, 0 once used up. A missing field
//! is an absent header. Each target documents its layout.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use http::{HeaderMap, HeaderName, HeaderValue};
use ring::hmac;
use serde::Deserialize as _;
use serde_json::{Map, Value};

use event_router::event::{self, BodyKind, FormBody, MAX_DEPTH};
use event_router::ingest::{IngestError, Prepared, Source, prepare};
use event_router::providers::recipe::{Recipe, RecipeSpec};
use event_router::providers::standard::StandardSigner;
use event_router::providers::{
    self, Outgoing, Provider, Request, SecretError, SecretSet, Secrets, SendOptions, VerifyError,
    github, gitlab, hubspot, intercom, linear, mailgun, notion, paddle, pagerduty, shopify, slack,
    square, standard, stripe, twilio, twitch, vercel, zendesk,
};

/// The provider whose signature lives in the body (Mailgun): its `sign` writes into the body
/// and needs a JSON object.
const BODY_SIGNED: &str = "mailgun";
use event_router::rules::condition::Condition;
use event_router::rules::model::{FilterCondition, Operator};
use event_router::rules::path::{FieldPath, MAX_SEGMENTS, Memo, PrefixTable};

/// A fuzz target: panics when a property breaks.
pub type Target = fn(&[u8]);

/// Every target by name; the names are those of `fuzz/fuzz_targets/*.rs` and of the directories
/// under `fuzz/corpus/` and `tests/fuzz_regressions/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("verify", verify),
    ("decode_body", decode_body),
    ("field_path", field_path),
    ("ingest_prepare", ingest_prepare),
    ("recipe", recipe),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A fixed clock, so that a saved input replays the same way on any day (ms since the epoch).
const NOW_MS: i64 = 1_700_000_000_000;
const NOW_SECS: i64 = NOW_MS / 1000;
/// Keys beyond this many are checked by the secret-list parsers only, not used to verify: each
/// key costs an HMAC of the body per verification.
const MAX_KEYS: usize = 4;
/// Used when the secrets field yields no key, so the verifiers are still exercised.
const FALLBACK_KEY: &[u8] = b"fuzz-fallback-secret";

// --- input reading ---

/// The NUL-separated fields of an input.
struct Fields<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8]) -> Self {
        Fields { rest: Some(data) }
    }

    /// The next field, up to the next NUL; `None` once the input is used up.
    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match rest.iter().position(|&b| b == 0) {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }

    /// Everything left, NULs included.
    fn rest(self) -> &'a [u8] {
        self.rest.unwrap_or_default()
    }
}

/// Small choices, a byte at a time.
struct Ctrl<'a>(&'a [u8]);

impl Ctrl<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::from(u16::from_le_bytes([self.byte(), self.byte()])) % n
    }

    fn i16(&mut self) -> i64 {
        i64::from(i16::from_le_bytes([self.byte(), self.byte()]))
    }

    fn i64(&mut self) -> i64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        i64::from_le_bytes(b)
    }

    /// A clock: usually the fixed one, sometimes anything at all (the window arithmetic must
    /// not overflow whatever the values).
    fn clock(&mut self, fixed: i64) -> i64 {
        match self.byte() % 8 {
            0 => self.i64(),
            1 => i64::MIN,
            2 => i64::MAX,
            3 => 0,
            _ => fixed,
        }
    }
}

/// A change to a header value chosen by the fuzzer. The verifiers must judge the result exactly
/// as the reference model does, whatever it became.
fn edit(ctrl: &mut Ctrl<'_>, value: &mut Vec<u8>) {
    let len = value.len();
    let at = |ctrl: &mut Ctrl<'_>, n: usize| if n == 0 { 0 } else { ctrl.below(n) };
    match ctrl.byte() % 9 {
        0 => {}
        1 if len > 0 => {
            let i = at(ctrl, len);
            value[i] ^= 1 << (ctrl.byte() % 8);
        }
        2 => value.make_ascii_uppercase(),
        3 => {
            let ws = [b' ', b'\t', b'\r', b'\n', 0x0c, 0x0b][ctrl.below(6)];
            value.insert(0, ws);
            value.push(ws);
        }
        4 => value.truncate(at(ctrl, len + 1)),
        5 => {
            let i = at(ctrl, len + 1);
            let b = ctrl.byte();
            value.insert(i, b);
        }
        6 if len > 0 => {
            let i = at(ctrl, len);
            value.remove(i);
        }
        7 if len > 0 => {
            let i = at(ctrl, len);
            value[i] = ctrl.byte();
        }
        8 => value.insert(0, b'0'),
        _ => {}
    }
}

// --- reference model of the signature schemes ---

/// HMAC-SHA256 of the concatenated parts, as lowercase hex.
fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(hmac_raw(key, parts))
}

fn hmac_raw(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let message = parts.concat();
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &message)
        .as_ref()
        .to_vec()
}

/// Decimal digits only, not empty, fitting an i64.
fn digits(raw: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(raw).ok()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn within(ts: i64, now: i64, window: u64) -> Result<(), VerifyError> {
    if (i128::from(ts) - i128::from(now)).unsigned_abs() <= u128::from(window) {
        Ok(())
    } else {
        Err(VerifyError::StaleTimestamp)
    }
}

/// Whether one of `keys` signed `parts` as the hex `sig` (either case).
fn hex_signed(keys: &[Vec<u8>], sig: &[u8], parts: &[&[u8]]) -> bool {
    keys.iter()
        .any(|k| sig.eq_ignore_ascii_case(hmac_hex(k, parts).as_bytes()))
}

fn github_expected(keys: &[Vec<u8>], sig: Option<&[u8]>, body: &[u8]) -> Result<(), VerifyError> {
    let ok = sig
        .map(<[u8]>::trim_ascii)
        .and_then(|s| s.strip_prefix(b"sha256="))
        .is_some_and(|hex| hex_signed(keys, hex, &[body]));
    ok.then_some(()).ok_or(VerifyError::InvalidSignature)
}

fn linear_expected(keys: &[Vec<u8>], sig: Option<&[u8]>, body: &[u8]) -> Result<(), VerifyError> {
    let ok = sig
        .map(<[u8]>::trim_ascii)
        .is_some_and(|hex| hex_signed(keys, hex, &[body]));
    ok.then_some(()).ok_or(VerifyError::InvalidSignature)
}

fn linear_ts_expected(
    header: Option<&[u8]>,
    body_ts: Option<i64>,
    now_ms: i64,
) -> Result<(), VerifyError> {
    let ts = match (header, body_ts) {
        (Some(h), _) => digits(h),
        (None, Some(t)) => Some(t).filter(|t| *t >= 0),
        // No timestamp at all: not a replay, a request Linear did not send.
        (None, None) => return Err(VerifyError::MissingTimestamp(linear::MISSING)),
    };
    within(
        ts.ok_or(VerifyError::StaleTimestamp)?,
        now_ms,
        linear::WINDOW_MS,
    )
}

fn slack_expected(
    keys: &[Vec<u8>],
    sig: Option<&[u8]>,
    ts: Option<&[u8]>,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let invalid = Err(VerifyError::InvalidSignature);
    let Some(hex) = sig
        .map(<[u8]>::trim_ascii)
        .and_then(|s| s.strip_prefix(b"v0="))
    else {
        return invalid;
    };
    let Some(ts_raw) = ts.map(<[u8]>::trim_ascii) else {
        return invalid;
    };
    let Some(t) = digits(ts_raw) else {
        return invalid;
    };
    if !hex_signed(keys, hex, &[b"v0:", ts_raw, b":", body]) {
        return invalid;
    }
    within(t, now, slack::WINDOW_SECS)
}

fn standard_expected(
    keys: &[Vec<u8>],
    id: Option<&[u8]>,
    ts: Option<&[u8]>,
    sig: Option<&[u8]>,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let invalid = Err(VerifyError::InvalidSignature);
    let Some(id) = id.map(<[u8]>::trim_ascii).filter(|id| !id.is_empty()) else {
        return invalid;
    };
    let Some(ts_raw) = ts.map(<[u8]>::trim_ascii) else {
        return invalid;
    };
    let Some(t) = digits(ts_raw) else {
        return invalid;
    };
    let Some(sig) = sig else {
        return invalid;
    };
    let macs: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| hmac_raw(k, &[id, b".", ts_raw, b".", body]))
        .collect();
    let matched = sig
        .split(|b| *b == b' ')
        .filter_map(|e| e.strip_prefix(b"v1,"))
        .filter_map(|b64| STANDARD_PAD_INDIFFERENT.decode(b64).ok())
        .any(|mac| macs.contains(&mac));
    if !matched {
        return invalid;
    }
    within(t, now, standard::WINDOW_SECS)
}

/// Checks a constructed set against the number of keys the documented rules give.
fn check_set(set: &Result<SecretSet, SecretError>, expected: &Result<Vec<Vec<u8>>, SecretError>) {
    match (set, expected) {
        (Ok(set), Ok(keys)) => {
            assert!(!keys.is_empty());
            assert_eq!(set.len(), keys.len(), "key count");
            assert!(!set.is_empty());
        }
        (Err(got), Err(want)) => assert_eq!(got, want),
        (got, want) => panic!("secret set {got:?}, expected {want:?}"),
    }
}

fn no_keys(keys: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, SecretError> {
    if keys.is_empty() {
        Err(SecretError::Empty)
    } else {
        Ok(keys)
    }
}

/// The set of HMAC keys a provider parsed.
fn hmac_set(secrets: Result<Secrets, SecretError>) -> Result<SecretSet, SecretError> {
    secrets.map(|s| match s {
        Secrets::Hmac(set) => set,
        other => panic!("an HMAC provider parsed {other:?}"),
    })
}

/// The HMAC keys a secrets field gives, either as an env-variable list (`SecretSet::hmac_from_list`,
/// and the provider's own parser) or as raw comma-separated bytes (`SecretSet::from_keys`), after
/// checking the constructors against the documented rules; capped at [`MAX_KEYS`], never empty.
fn hmac_keys(provider: &dyn Provider, ctrl: &mut Ctrl<'_>, field: &[u8]) -> Vec<Vec<u8>> {
    let expected = if ctrl.flag() {
        let raw: Vec<&[u8]> = field.split(|&b| b == b',').collect();
        let expected = no_keys(
            raw.iter()
                .filter(|k| !k.is_empty())
                .map(|k| k.to_vec())
                .collect(),
        );
        check_set(&SecretSet::from_keys(raw), &expected);
        expected
    } else {
        let list = String::from_utf8_lossy(field);
        let expected = no_keys(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        );
        check_set(&SecretSet::hmac_from_list(&list), &expected);
        check_set(&hmac_set(provider.parse_secrets(&list)), &expected);
        expected
    };
    capped(expected.unwrap_or_default())
}

/// The keys a Standard Webhooks secret list gives (`whsec_` prefix optional, base64 with or
/// without padding), with the error the documented rules give for a bad list.
fn standard_list_expected(list: &str) -> Result<Vec<Vec<u8>>, SecretError> {
    let mut keys = Vec::new();
    for (i, entry) in list.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        keys.push(standard_secret_expected(i + 1, entry)?);
    }
    no_keys(keys)
}

fn standard_secret_expected(position: usize, secret: &str) -> Result<Vec<u8>, SecretError> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = STANDARD_PAD_INDIFFERENT
        .decode(b64)
        .map_err(|_| SecretError::InvalidBase64 { position })?;
    if key.is_empty() {
        return Err(SecretError::EmptyKey { position });
    }
    Ok(key)
}

fn capped(mut keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    keys.truncate(MAX_KEYS);
    if keys.is_empty() {
        keys.push(FALLBACK_KEY.to_vec());
    }
    keys
}

fn key_set(keys: &[Vec<u8>]) -> SecretSet {
    SecretSet::from_keys(keys).expect("keys are never empty")
}

/// A copy of `body` with one byte changed.
fn tampered(ctrl: &mut Ctrl<'_>, body: &[u8]) -> Option<Vec<u8>> {
    if body.is_empty() {
        return None;
    }
    let mut out = body.to_vec();
    let i = ctrl.below(out.len());
    out[i] ^= ctrl.byte() | 1;
    Some(out)
}

/// `hex` with the digit at a chosen position (from `start`) replaced by a digit of another value.
fn other_hex_digit(ctrl: &mut Ctrl<'_>, sig: &str, start: usize) -> Vec<u8> {
    let mut out = sig.as_bytes().to_vec();
    let i = start + ctrl.below(out.len() - start);
    let value = char::from(out[i]).to_digit(16).expect("hex digit");
    let other = (value + 1 + ctrl.below(15) as u32) % 16;
    out[i] = char::from_digit(other, 16).expect("below 16") as u8;
    out
}

// --- models of the stripe, gitlab, shopify, paddle, pagerduty and zendesk schemes ---
// (svix is `standard::verify` under other header names: the standard model covers it.)

/// A header the model judges: the fuzzer's own (`raw`), none, or a genuine one (`good`) edited
/// once or twice, sometimes behind the fuzzer's own entries (`sep` between them).
fn chosen_header(
    ctrl: &mut Ctrl<'_>,
    raw: Option<&[u8]>,
    good: String,
    sep: u8,
) -> Option<Vec<u8>> {
    match ctrl.byte() % 4 {
        0 => raw.map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = good.into_bytes();
            edit(ctrl, &mut v);
            if ctrl.flag() {
                edit(ctrl, &mut v);
            }
            if ctrl.flag() {
                let mut with = raw.unwrap_or_default().to_vec();
                with.push(sep);
                with.extend_from_slice(&v);
                v = with;
            }
            Some(v)
        }
    }
}

/// The `key=value` items of a header split on `sep`, each trimmed, split at the first `=`.
fn kv_items(header: &[u8], sep: u8) -> Vec<(&[u8], &[u8])> {
    header
        .split(|b| *b == sep)
        .filter_map(|item| {
            let item = item.trim_ascii();
            let at = item.iter().position(|b| *b == b'=')?;
            Some((&item[..at], &item[at + 1..]))
        })
        .collect()
}

/// A `t=…,v1=…`-shaped header (Stripe, Paddle): the first `ts_key` item's digits, re-formatted,
/// `joiner`, the body, MACed by some key, equal to some `mac_key` item's hex; then the window.
#[allow(clippy::too_many_arguments)]
fn listed_expected(
    keys: &[Vec<u8>],
    header: Option<&[u8]>,
    body: &[u8],
    now: i64,
    (sep, ts_key, mac_key, joiner): (u8, &[u8], &[u8], &[u8]),
    window: u64,
) -> Result<(), VerifyError> {
    let invalid = Err(VerifyError::InvalidSignature);
    let Some(header) = header else {
        return invalid;
    };
    let items = kv_items(header, sep);
    let Some(t) = items
        .iter()
        .find(|(k, _)| *k == ts_key)
        .and_then(|(_, v)| digits(v))
    else {
        return invalid;
    };
    let t_text = t.to_string();
    let macs: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| hmac_raw(k, &[t_text.as_bytes(), joiner, body]))
        .collect();
    let matched = items
        .iter()
        .filter(|(k, _)| *k == mac_key)
        .filter_map(|(_, v)| hex::decode(v).ok())
        .any(|mac| macs.contains(&mac));
    if !matched {
        return invalid;
    }
    within(t, now, window)
}

const STRIPE_SHAPE: (u8, &[u8], &[u8], &[u8]) = (b',', b"t", b"v1", b".");
const PADDLE_SHAPE: (u8, &[u8], &[u8], &[u8]) = (b';', b"ts", b"h1", b":");

/// Stripe (`stripe::verify`) and Paddle (`paddle::verify`): every key's signature verifies at
/// the window's edge and is stale past it; a changed body never verifies; any header, or a
/// genuine one edited or behind the fuzzer's entries, is judged as [`listed_expected`] judges
/// it, by the module and through the registry.
fn timestamped_list_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    type Verify = fn(&SecretSet, Option<&[u8]>, &[u8], i64) -> Result<(), VerifyError>;
    type Sign = fn(&[u8], i64, &[u8]) -> String;
    let (name, verify, sign, shape, window): (&'static str, Verify, Sign, _, u64) =
        if provider.name() == "stripe" {
            (
                "stripe-signature",
                stripe::verify,
                stripe::sign,
                STRIPE_SHAPE,
                stripe::WINDOW_SECS,
            )
        } else {
            (
                "paddle-signature",
                paddle::verify,
                paddle::sign,
                PADDLE_SHAPE,
                paddle::WINDOW_SECS,
            )
        };
    let keys = hmac_keys(provider, ctrl, secrets);
    let set = key_set(&keys);
    let now = ctrl.clock(NOW_SECS);
    let ts = now.saturating_add(ctrl.i16() / 64).max(0);
    let w = window as i64;
    for key in &keys {
        let sig = sign(key, ts, body);
        let at = |now| verify(&set, Some(sig.as_bytes()), body, now);
        assert_eq!(at(ts), Ok(()));
        if let Some(late) = ts.checked_add(w) {
            assert_eq!(at(late), Ok(()));
        }
        if let Some(late) = ts.checked_add(w + 1) {
            assert_eq!(at(late), Err(VerifyError::StaleTimestamp));
        }
    }
    let good = sign(&keys[ctrl.below(keys.len())], ts, body);
    if let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            verify(&set, Some(good.as_bytes()), &other, ts),
            Err(VerifyError::InvalidSignature)
        );
    }
    let header = chosen_header(ctrl, raw(headers, name), good, shape.0);
    let header = header.as_deref();
    assert_eq!(
        verify(&set, header, body, now),
        listed_expected(&keys, header, body, now, shape, window),
        "{name} {:?}, now {now}",
        header.map(String::from_utf8_lossy)
    );
    let now_ms = now.saturating_mul(1000);
    through_registry(
        provider,
        &keys,
        &[(name, header)],
        body,
        now_ms,
        listed_expected(&keys, header, body, now_ms / 1000, shape, window),
    );
}

/// PagerDuty (`pagerduty::verify`): comma-separated `v1=<hex>` entries, any may match.
fn pagerduty_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    let expected = |keys: &[Vec<u8>], header: Option<&[u8]>| {
        let macs: Vec<Vec<u8>> = keys.iter().map(|k| hmac_raw(k, &[body])).collect();
        let ok = header.is_some_and(|h| {
            h.split(|b| *b == b',')
                .filter_map(|e| e.trim_ascii().strip_prefix(b"v1="))
                .filter_map(|hex| hex::decode(hex).ok())
                .any(|mac| macs.contains(&mac))
        });
        ok.then_some(()).ok_or(VerifyError::InvalidSignature)
    };
    let keys = hmac_keys(provider, ctrl, secrets);
    let set = key_set(&keys);
    for key in &keys {
        let sig = pagerduty::sign(key, body);
        assert_eq!(pagerduty::verify(&set, Some(sig.as_bytes()), body), Ok(()));
    }
    let good = pagerduty::sign(&keys[ctrl.below(keys.len())], body);
    if let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            pagerduty::verify(&set, Some(good.as_bytes()), &other),
            Err(VerifyError::InvalidSignature)
        );
    }
    let header = chosen_header(ctrl, raw(headers, "x-pagerduty-signature"), good, b',');
    let header = header.as_deref();
    let want = expected(&keys, header);
    assert_eq!(pagerduty::verify(&set, header, body), want);
    through_registry(
        provider,
        &keys,
        &[("x-pagerduty-signature", header)],
        body,
        NOW_MS,
        want,
    );
}

/// Shopify (`shopify::verify`): base64 (padding optional) of the body's HMAC.
fn shopify_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    let keys = hmac_keys(provider, ctrl, secrets);
    let set = key_set(&keys);
    let expected = |header: Option<&[u8]>| {
        let ok = header
            .map(<[u8]>::trim_ascii)
            .and_then(|b64| STANDARD_PAD_INDIFFERENT.decode(b64).ok())
            .is_some_and(|mac| keys.iter().any(|k| hmac_raw(k, &[body]) == mac));
        ok.then_some(()).ok_or(VerifyError::InvalidSignature)
    };
    for key in &keys {
        let sig = shopify::sign(key, body);
        assert_eq!(shopify::verify(&set, Some(sig.as_bytes()), body), Ok(()));
    }
    let good = shopify::sign(&keys[ctrl.below(keys.len())], body);
    if let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            shopify::verify(&set, Some(good.as_bytes()), &other),
            Err(VerifyError::InvalidSignature)
        );
    }
    let header = chosen_header(ctrl, raw(headers, "x-shopify-hmac-sha256"), good, b' ');
    let header = header.as_deref();
    let want = expected(header);
    assert_eq!(shopify::verify(&set, header, body), want);
    through_registry(
        provider,
        &keys,
        &[("x-shopify-hmac-sha256", header)],
        body,
        NOW_MS,
        want,
    );
}

/// GitLab (`gitlab::verify`): the token, trimmed, is exactly one of the secrets. The set holds
/// SHA-256 digests of the secrets, as `gitlab::secrets_from_list` builds it.
fn gitlab_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    _body: &[u8],
) {
    let keys = hmac_keys(provider, ctrl, secrets);
    let digests: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| {
            ring::digest::digest(&ring::digest::SHA256, k)
                .as_ref()
                .to_vec()
        })
        .collect();
    let set = key_set(&digests);
    let expected = |token: Option<&[u8]>| {
        let ok = token
            .map(<[u8]>::trim_ascii)
            .is_some_and(|t| !t.is_empty() && keys.iter().any(|k| k == t));
        ok.then_some(()).ok_or(VerifyError::InvalidSignature)
    };
    for key in keys.iter().filter(|k| k.trim_ascii() == k.as_slice()) {
        assert_eq!(gitlab::verify(&set, Some(key)), Ok(()));
    }
    let good = String::from_utf8_lossy(&keys[ctrl.below(keys.len())]).into_owned();
    let token = chosen_header(ctrl, raw(headers, "x-gitlab-token"), good, b' ');
    let token = token.as_deref();
    let want = expected(token);
    assert_eq!(gitlab::verify(&set, token), want, "token {token:?}");
    through_registry(
        provider,
        &digests,
        &[("x-gitlab-token", token)],
        b"",
        NOW_MS,
        want,
    );
}

/// An RFC 3339 date-time, by a regular expression and a day count: seconds since the epoch.
fn rfc3339_expected(s: &[u8]) -> Option<i64> {
    let re = regex::bytes::Regex::new(
        r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|([+-])([0-9]{2}):([0-9]{2}))$",
    )
    .expect("a valid regex");
    let c = re.captures(s)?;
    let n = |i: usize| -> i64 {
        std::str::from_utf8(&c[i])
            .expect("digits")
            .parse()
            .expect("digits")
    };
    let (year, month, day, hour, minute, second) = (n(1), n(2), n(3), n(4), n(5), n(6));
    let leap = |y: i64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = |y: i64, m: i64| match m {
        2 if leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=12).contains(&month) || day < 1 || day > month_days(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let offset = match c.get(9) {
        None => 0,
        Some(sign) => {
            let (h, m) = (n(10), n(11));
            if h > 23 || m > 59 {
                return None;
            }
            if sign.as_bytes() == b"-" {
                -(h * 3600 + m * 60)
            } else {
                h * 3600 + m * 60
            }
        }
    };
    let mut days = 0i64;
    for y in year.min(1970)..year.max(1970) {
        days += if leap(y) { 366 } else { 365 };
    }
    if year < 1970 {
        days = -days;
    }
    for m in 1..month {
        days += month_days(year, m);
    }
    days += day - 1;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Zendesk (`zendesk::verify`): base64 of the HMAC of the timestamp header as sent, then the
/// body; the timestamp (RFC 3339) within 300 s.
fn zendesk_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    let expected = |keys: &[Vec<u8>], sig: Option<&[u8]>, ts: Option<&[u8]>, now: i64| {
        let invalid = Err(VerifyError::InvalidSignature);
        let Some(mac) = sig
            .map(<[u8]>::trim_ascii)
            .and_then(|b64| STANDARD_PAD_INDIFFERENT.decode(b64).ok())
        else {
            return invalid;
        };
        let Some(ts_raw) = ts.map(<[u8]>::trim_ascii) else {
            return invalid;
        };
        let Some(t) = rfc3339_expected(ts_raw) else {
            return invalid;
        };
        if !keys.iter().any(|k| hmac_raw(k, &[ts_raw, body]) == mac) {
            return invalid;
        }
        within(t, now, zendesk::WINDOW_SECS)
    };
    let keys = hmac_keys(provider, ctrl, secrets);
    let set = key_set(&keys);
    let now = ctrl.clock(NOW_SECS);
    let ts = now
        .saturating_add(ctrl.i16() / 64)
        .clamp(0, 253_402_300_000);
    let ts_text = zendesk::format_rfc3339(ts).expect("a year below 10000");
    assert_eq!(rfc3339_expected(ts_text.as_bytes()), Some(ts));
    assert_eq!(zendesk::parse_rfc3339(ts_text.as_bytes()), Some(ts));
    for key in &keys {
        let sig = zendesk::sign(key, &ts_text, body);
        let at = |now| {
            zendesk::verify(
                &set,
                Some(sig.as_bytes()),
                Some(ts_text.as_bytes()),
                body,
                now,
            )
        };
        assert_eq!(at(ts), Ok(()));
        assert_eq!(at(ts + 300), Ok(()));
        assert_eq!(at(ts + 301), Err(VerifyError::StaleTimestamp));
    }
    let good = zendesk::sign(&keys[ctrl.below(keys.len())], &ts_text, body);
    let sig = chosen_header(
        ctrl,
        raw(headers, "x-zendesk-webhook-signature"),
        good,
        b' ',
    );
    let ts_raw = raw(headers, "x-zendesk-webhook-signature-timestamp");
    let ts_header = chosen_header(ctrl, ts_raw, ts_text, b' ');
    let (sig, ts_header) = (sig.as_deref(), ts_header.as_deref());
    if let Some(t) = ts_header {
        assert_eq!(
            zendesk::parse_rfc3339(t.trim_ascii()),
            rfc3339_expected(t.trim_ascii())
        );
    }
    assert_eq!(
        zendesk::verify(&set, sig, ts_header, body, now),
        expected(&keys, sig, ts_header, now),
        "signature {:?}, timestamp {:?}, now {now}",
        sig.map(String::from_utf8_lossy),
        ts_header.map(String::from_utf8_lossy)
    );
    let now_ms = now.saturating_mul(1000);
    through_registry(
        provider,
        &keys,
        &[
            ("x-zendesk-webhook-signature", sig),
            ("x-zendesk-webhook-signature-timestamp", ts_header),
        ],
        body,
        now_ms,
        expected(&keys, sig, ts_header, now_ms / 1000),
    );
}

/// Twitch EventSub: `sha256=<hex>` of id + timestamp + body, the RFC 3339 timestamp (ms) within
/// the window; anything wrong with a header is `InvalidSignature`, the window is judged last.
fn twitch_expected(
    keys: &[Vec<u8>],
    id: Option<&[u8]>,
    ts: Option<&[u8]>,
    sig: Option<&[u8]>,
    body: &[u8],
    now_ms: i64,
) -> Result<(), VerifyError> {
    let invalid = Err(VerifyError::InvalidSignature);
    let Some(hex) = sig
        .map(<[u8]>::trim_ascii)
        .and_then(|s| s.strip_prefix(b"sha256="))
    else {
        return invalid;
    };
    let Some(id) = id.map(<[u8]>::trim_ascii).filter(|i| !i.is_empty()) else {
        return invalid;
    };
    let Some(ts_raw) = ts.map(<[u8]>::trim_ascii) else {
        return invalid;
    };
    let Some(t) = rfc3339_ms_reference(ts_raw) else {
        return invalid;
    };
    if !hex_signed(keys, hex, &[id, ts_raw, body]) {
        return invalid;
    }
    within(t, now_ms, twitch::WINDOW_SECS * 1000)
}

/// RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, `t` or a space for `T`, `z` for `Z`) in ms
/// since the epoch, fractions beyond ms dropped; days counted from year 0 with a month table,
/// not as the module counts them.
fn rfc3339_ms_reference(raw: &[u8]) -> Option<i64> {
    fn number(b: &[u8]) -> Option<i64> {
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(b.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    }
    if raw.len() < 20
        || raw[4] != b'-'
        || raw[7] != b'-'
        || !matches!(raw[10], b'T' | b't' | b' ')
        || raw[13] != b':'
        || raw[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (
        number(&raw[0..4])?,
        number(&raw[5..7])?,
        number(&raw[8..10])?,
    );
    let (h, mi, s) = (
        number(&raw[11..13])?,
        number(&raw[14..16])?,
        number(&raw[17..19])?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &raw[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let mut three = frac[..n.min(3)].to_vec();
        three.resize(3, b'0');
        ms = number(&three)?;
        rest = &frac[n..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let (oh, om) = (number(&[*oh1, *oh2])?, number(&[*om1, *om2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            if *sign == b'+' {
                oh * 3600 + om * 60
            } else {
                -(oh * 3600 + om * 60)
            }
        }
        _ => return None,
    };
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let leaps_before = |y: i64| (y + 3) / 4 - (y + 99) / 100 + (y + 399) / 400;
    const BEFORE_MONTH: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let days_from_0 = |y: i64, mo: i64, d: i64| {
        365 * y
            + leaps_before(y)
            + BEFORE_MONTH[(mo - 1) as usize]
            + i64::from(mo > 2 && leap(y))
            + d
            - 1
    };
    let days = days_from_0(y, mo, d) - days_from_0(1970, 1, 1);
    Some((days * 86_400 + h * 3600 + mi * 60 + s - offset) * 1000 + ms)
}

/// Twitch EventSub (`twitch::verify`): every key's signature verifies within the 10-minute
/// window and is stale outside it; a changed body, id or MAC never verifies; any message id,
/// timestamp and signature headers, or genuine ones edited, are judged as the reference model
/// judges them, by the module and through the registry.
fn twitch_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    const ID: &str = "twitch-eventsub-message-id";
    const TS: &str = "twitch-eventsub-message-timestamp";
    const SIG: &str = "twitch-eventsub-message-signature";
    /// 9999-12-31T23:59:59.999Z, the last instant with a four-digit year.
    const LAST_MS: i64 = 253_402_300_799_999;
    let keys = hmac_keys(provider, ctrl, secrets);
    let set = key_set(&keys);
    let verify = |id: Option<&[u8]>, ts: Option<&[u8]>, sig: Option<&[u8]>, body: &[u8], now| {
        twitch::verify(&set, id, ts, sig, body, now)
    };

    let now = ctrl.clock(NOW_MS);
    let ts = now
        .clamp(0, LAST_MS)
        .saturating_add(ctrl.i16() * 1000)
        .clamp(0, LAST_MS);
    let ts_text = twitch::format_rfc3339_ms(ts);
    assert_eq!(
        rfc3339_ms_reference(ts_text.as_bytes()),
        Some(ts),
        "{ts_text}"
    );
    let id = "e76c6bd4-55c9-4987-8304-da1588d8988b";
    let (id_b, ts_b) = (Some(id.as_bytes()), Some(ts_text.as_bytes()));
    let window = twitch::WINDOW_SECS as i64 * 1000;
    for key in &keys {
        let sig = twitch::sign(key, id, &ts_text, body);
        let at = |now| verify(id_b, ts_b, Some(sig.as_bytes()), body, now);
        assert_eq!(at(ts), Ok(()));
        assert_eq!(at(ts - window), Ok(()));
        assert_eq!(at(ts + window), Ok(()));
        assert_eq!(at(ts + window + 1), Err(VerifyError::StaleTimestamp));
        assert_eq!(at(ts - window - 1), Err(VerifyError::StaleTimestamp));
    }
    let good = twitch::sign(&keys[ctrl.below(keys.len())], id, &ts_text, body);
    if let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            verify(id_b, ts_b, Some(good.as_bytes()), &other, ts),
            Err(VerifyError::InvalidSignature)
        );
    }
    let wrong = other_hex_digit(ctrl, &good, "sha256=".len());
    assert_eq!(
        verify(id_b, ts_b, Some(&wrong), body, ts),
        Err(VerifyError::InvalidSignature)
    );
    assert_eq!(
        verify(Some(b"another-id"), ts_b, Some(good.as_bytes()), body, ts),
        Err(VerifyError::InvalidSignature)
    );

    let pick = |ctrl: &mut Ctrl<'_>, name: &str, genuine: &str| match ctrl.byte() % 4 {
        0 => raw(headers, name).map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = genuine.as_bytes().to_vec();
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let id_h = pick(ctrl, ID, id);
    let ts_h = pick(ctrl, TS, &ts_text);
    let sig_h = pick(ctrl, SIG, &good);
    let (id_h, ts_h, sig_h) = (id_h.as_deref(), ts_h.as_deref(), sig_h.as_deref());
    let expected = twitch_expected(&keys, id_h, ts_h, sig_h, body, now);
    assert_eq!(
        verify(id_h, ts_h, sig_h, body, now),
        expected,
        "id {:?}, timestamp {:?}, signature {:?}, now {now}",
        id_h.map(String::from_utf8_lossy),
        ts_h.map(String::from_utf8_lossy),
        sig_h.map(String::from_utf8_lossy)
    );
    through_registry(
        provider,
        &keys,
        &[(ID, id_h), (TS, ts_h), (SIG, sig_h)],
        body,
        now,
        expected,
    );
}

// --- the verifier target ---

/// A reference model: checks one provider's verifier (its module's functions, and the provider
/// through the registry) against the documented scheme. Arguments: the provider, the choices,
/// the secrets field, the request's headers and its body.
type Model = fn(&'static dyn Provider, &mut Ctrl<'_>, &[u8], &HeaderMap, &[u8]);

/// The reference models, by provider name. A provider without one is still fuzzed by the
/// checks every provider gets (see [`verify`]); a new signature scheme deserves one.
const MODELS: &[(&str, Model)] = &[
    ("github", github_model),
    ("linear", linear_model),
    ("slack", slack_model),
    ("standard", standard_model),
    ("stripe", timestamped_list_model),
    ("gitlab", gitlab_model),
    ("shopify", shopify_model),
    ("paddle", timestamped_list_model),
    ("pagerduty", pagerduty_model),
    ("zendesk", zendesk_model),
    ("twitch", twitch_model),
    ("intercom", sha1_model),
    ("vercel", sha1_model),
    ("mailgun", mailgun_model),
    ("hubspot", hubspot_model),
    ("square", square_model),
    ("twilio", twilio_model),
];

/// Every provider's verifier. Layout: `P ctrl \0 secrets \0 headers \0 body`: the first byte
/// picks the provider (`PROVIDERS[P % n]`, in the registry's order), headers are `name: value`
/// lines; a missing header is an absent one.
///
/// For every provider: parsing the secret list and verifying any request never panic; a source
/// without secrets accepts nothing; a body signed as the provider signs it (`Provider::sign`,
/// with each secret of the list) verifies, and signing leaves the body alone. A provider with a
/// reference model ([`MODELS`]) is also judged against it.
pub fn verify(data: &[u8]) {
    let (pick, rest) = data.split_first().map_or((0, &[][..]), |(p, r)| (*p, r));
    let provider = providers::PROVIDERS[usize::from(pick) % providers::PROVIDERS.len()];
    let mut fields = Fields::new(rest);
    let mut ctrl = Ctrl(fields.next().unwrap_or_default());
    let secrets = fields.next().unwrap_or_default();
    let headers = header_lines(fields.next().unwrap_or_default());
    let body = fields.rest();
    if let Some((_, model)) = MODELS.iter().find(|(name, _)| *name == provider.name()) {
        model(provider, &mut ctrl, secrets, &headers, body);
    }
    any_provider(provider, secrets, &headers, body);
}

/// The URL a source named `fuzz` was given (`public_url`), which the providers that sign the
/// URL sign.
const PUBLIC_URL: &str = "https://router.example.com/webhook/fuzz";

/// A test webhook of `body`, to be signed: the request's `Content-Type` (which tells Twilio's
/// signature a form from JSON), and the URL it is sent to.
fn unsigned(headers: &HeaderMap, body: &[u8]) -> Outgoing {
    let mut out = Outgoing {
        headers: Vec::new(),
        body: body.to_vec(),
        url: Some(PUBLIC_URL.to_string()),
    };
    if let Some(ct) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        out.header("content-type", ct);
    }
    out
}

/// The path a signed webhook is posted to: with the query its provider signed (Twilio's
/// `bodySHA256`).
fn signed_path(out: &Outgoing) -> String {
    match out.url.as_deref().and_then(providers::signed_url::query_of) {
        Some(q) => format!("/webhook/fuzz?{q}"),
        None => "/webhook/fuzz".to_string(),
    }
}

/// A request to a source named `fuzz` (so no agent key stands in for a signature), at `now_ms`.
fn request<'a>(headers: &'a HeaderMap, body: &'a [u8], now_ms: i64) -> Request<'a> {
    Request {
        source: "fuzz",
        line: providers::RequestLine::post("/webhook/fuzz"),
        public_url: Some(PUBLIC_URL),
        headers,
        body,
        now_ms,
        agent_key: &|_| false,
    }
}

/// What holds for every provider, whatever its scheme.
fn any_provider(provider: &dyn Provider, secrets: &[u8], headers: &HeaderMap, body: &[u8]) {
    assert!(
        provider
            .verify(&request(headers, body, NOW_MS), None)
            .is_err(),
        "{provider:?} verified a request without secrets"
    );
    let list = String::from_utf8_lossy(secrets);
    let Ok(parsed) = provider.parse_secrets(&list) else {
        return;
    };
    assert!(!parsed.is_empty());
    // Judged by the models; here it only must not panic.
    let _ = provider.verify(&request(headers, body, NOW_MS), Some(&parsed));
    let entries = list.split(',').map(str::trim).filter(|s| !s.is_empty());
    for secret in entries.take(MAX_KEYS) {
        let mut out = unsigned(headers, body);
        let opts = SendOptions {
            event: None,
            secret: Some(secret),
            agent_key: None,
            now_ms: NOW_MS,
        };
        // A public-key scheme cannot sign with what verifies it; Mailgun signs only a JSON
        // object, into which it writes its signature.
        if provider.sign(&mut out, &opts).is_err() {
            continue;
        }
        let mut signed = headers.clone();
        if provider.name() != BODY_SIGNED {
            assert_eq!(out.body, body, "{provider:?}: signing changed the body");
        }
        for (name, value) in &out.headers {
            signed.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                HeaderValue::from_str(value).expect("a valid header value"),
            );
        }
        // After the headers `sign` kept (the fuzzer's content type among them): the body
        // Mailgun's signing made is JSON.
        if provider.name() == BODY_SIGNED {
            signed.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let path = signed_path(&out);
        let mut req = request(&signed, &out.body, NOW_MS);
        req.line = providers::RequestLine::post(&path);
        assert_eq!(
            provider.verify(&req, Some(&parsed)),
            Ok(()),
            "{provider:?} refused its own signature"
        );
    }
}

/// `provider.verify`, through the registry, on a request carrying `headers`, agrees with the
/// module's verifier (`expected`). A value that is no valid header value cannot be sent: then
/// there is no such request to make.
fn through_registry(
    provider: &dyn Provider,
    keys: &[Vec<u8>],
    headers: &[(&'static str, Option<&[u8]>)],
    body: &[u8],
    now_ms: i64,
    expected: Result<(), VerifyError>,
) {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let Some(v) = value {
            let Ok(v) = HeaderValue::from_bytes(v) else {
                return;
            };
            map.insert(*name, v);
        }
    }
    let secrets = Secrets::Hmac(key_set(keys));
    assert_eq!(
        provider.verify(&request(&map, body, now_ms), Some(&secrets)),
        expected,
        "{provider:?} through the registry, headers {map:?}"
    );
}

/// A base64 MAC of 32 bytes (padding optional, at most 44 characters, whitespace around it
/// trimmed), as the URL-signing providers send them.
fn b64_mac32(sig: Option<&[u8]>) -> Option<Vec<u8>> {
    let sig = sig?.trim_ascii();
    if sig.len() > 44 {
        return None;
    }
    STANDARD_PAD_INDIFFERENT
        .decode(sig)
        .ok()
        .filter(|m| m.len() == 32)
}

/// Square: base64 HMAC-SHA256 of `url` followed by the body.
fn square_expected(
    keys: &[Vec<u8>],
    sig: Option<&[u8]>,
    url: &str,
    body: &[u8],
) -> Result<(), VerifyError> {
    let ok = b64_mac32(sig).is_some_and(|mac| {
        keys.iter()
            .any(|k| hmac_raw(k, &[url.as_bytes(), body]) == mac)
    });
    ok.then_some(()).ok_or(VerifyError::InvalidSignature)
}

/// HubSpot decodes these escapes (either case) in the URI it signs.
fn hubspot_uri(url: &str) -> String {
    let mut out = url.to_string();
    for (code, c) in [
        ("3A", ":"),
        ("2F", "/"),
        ("3F", "?"),
        ("40", "@"),
        ("21", "!"),
        ("24", "$"),
        ("27", "'"),
        ("28", "("),
        ("29", ")"),
        ("2A", "*"),
        ("2C", ","),
        ("3B", ";"),
    ] {
        out = out.replace(&format!("%{code}"), c);
        out = out.replace(&format!("%{}", code.to_ascii_lowercase()), c);
    }
    out
}

/// HubSpot v3: base64 HMAC-SHA256 of method + URI (decoded, or as received) + body + the
/// timestamp header's text, then the timestamp (ms) within 300 s.
fn hubspot_expected(
    keys: &[Vec<u8>],
    sig: Option<&[u8]>,
    ts: Option<&[u8]>,
    url: &str,
    body: &[u8],
    now_ms: i64,
) -> Result<(), VerifyError> {
    let invalid = Err(VerifyError::InvalidSignature);
    let Some(mac) = b64_mac32(sig) else {
        return invalid;
    };
    let Some(ts_raw) = ts.map(<[u8]>::trim_ascii) else {
        return invalid;
    };
    let Some(t) = digits(ts_raw) else {
        return invalid;
    };
    let decoded = hubspot_uri(url);
    let signed = [decoded.as_str(), url].iter().any(|uri| {
        keys.iter()
            .any(|k| hmac_raw(k, &[b"POST", uri.as_bytes(), body, ts_raw]) == mac)
    });
    if !signed {
        return invalid;
    }
    within(t, now_ms, hubspot::WINDOW_MS)
}

/// Square (`square::verify`): every key's signature of the body sent to the source's
/// `public_url` verifies; a changed body or another URL never does; the fuzzer's
/// `x-square-hmacsha256-signature`, or a genuine one it edited, is judged as the reference model
/// judges it, by the module and through the registry.
fn square_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    let keys = hmac_keys(provider, ctrl, secrets);
    let set = key_set(&keys);
    let urls = [PUBLIC_URL.to_string()];
    for key in &keys {
        let sig = square::sign(key, PUBLIC_URL, body);
        assert_eq!(
            square::verify(&set, Some(sig.as_bytes()), &urls, body),
            Ok(())
        );
        assert_eq!(
            square::verify(
                &set,
                Some(sig.as_bytes()),
                &[format!("{PUBLIC_URL}/")],
                body
            ),
            Err(VerifyError::InvalidSignature)
        );
    }
    let good = square::sign(&keys[ctrl.below(keys.len())], PUBLIC_URL, body);
    if let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            square::verify(&set, Some(good.as_bytes()), &urls, &other),
            Err(VerifyError::InvalidSignature)
        );
    }
    let header = match ctrl.byte() % 4 {
        0 => raw(headers, "x-square-hmacsha256-signature").map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = good.into_bytes();
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let header = header.as_deref();
    let expected = square_expected(&keys, header, PUBLIC_URL, body);
    assert_eq!(square::verify(&set, header, &urls, body), expected);
    through_registry(
        provider,
        &keys,
        &[("x-square-hmacsha256-signature", header)],
        body,
        NOW_MS,
        expected,
    );
}

/// HubSpot (`hubspot::verify`): every key's signature verifies at the window's edges and is
/// stale past them; a changed body, timestamp or URL never verifies; the fuzzer's
/// `X-HubSpot-Signature-v3` and `X-HubSpot-Request-Timestamp`, or genuine ones it edited, are
/// judged as the reference model judges them, by the module and through the registry (whose
/// URL is the source's `public_url`).
fn hubspot_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    let keys = hmac_keys(provider, ctrl, secrets);
    let set = key_set(&keys);
    let urls = [PUBLIC_URL.to_string()];
    let ts = ctrl.clock(NOW_MS).max(0);
    let ts_text = ts.to_string();
    let window = hubspot::WINDOW_MS as i64;
    let verify = |sig: Option<&[u8]>, ts_h: Option<&[u8]>, body: &[u8], now: i64| {
        hubspot::verify(&set, sig, ts_h, "POST", &urls, body, now)
    };
    for key in &keys {
        let sig = hubspot::sign(key, "POST", PUBLIC_URL, body, &ts_text);
        let at = |now| verify(Some(sig.as_bytes()), Some(ts_text.as_bytes()), body, now);
        assert_eq!(at(ts), Ok(()));
        if let Some(late) = ts.checked_add(window) {
            assert_eq!(at(late), Ok(()));
        }
        if let Some(late) = ts.checked_add(window + 1) {
            assert_eq!(at(late), Err(VerifyError::StaleTimestamp));
        }
    }
    let good = hubspot::sign(
        &keys[ctrl.below(keys.len())],
        "POST",
        PUBLIC_URL,
        body,
        &ts_text,
    );
    if let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            verify(Some(good.as_bytes()), Some(ts_text.as_bytes()), &other, ts),
            Err(VerifyError::InvalidSignature)
        );
    }
    let sig = match ctrl.byte() % 4 {
        0 => raw(headers, "x-hubspot-signature-v3").map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = good.into_bytes();
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let ts_header = match ctrl.byte() % 4 {
        0 => raw(headers, "x-hubspot-request-timestamp").map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = ts_text.into_bytes();
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let (sig, ts_header) = (sig.as_deref(), ts_header.as_deref());
    let now = ctrl.clock(NOW_MS);
    let expected = hubspot_expected(&keys, sig, ts_header, PUBLIC_URL, body, now);
    assert_eq!(verify(sig, ts_header, body, now), expected);
    through_registry(
        provider,
        &keys,
        &[
            ("x-hubspot-signature-v3", sig),
            ("x-hubspot-request-timestamp", ts_header),
        ],
        body,
        now,
        expected,
    );
}

/// Twilio: base64 HMAC-SHA1 (or HMAC-SHA256) of the URL, with or without its default port,
/// followed by a form's fields sorted by name then value (distinct pairs), each name then value;
/// a body that is not a form is signed through the URL alone, whose `bodySHA256` must be the
/// body's SHA-256.
fn twilio_expected(
    keys: &[Vec<u8>],
    sig: Option<&[u8]>,
    form: bool,
    url: &str,
    body: &[u8],
) -> Result<(), VerifyError> {
    let invalid = Err(VerifyError::InvalidSignature);
    let Some(sig) = sig.map(<[u8]>::trim_ascii).filter(|s| s.len() <= 44) else {
        return invalid;
    };
    let Ok(mac) = STANDARD_PAD_INDIFFERENT.decode(sig) else {
        return invalid;
    };
    let params = if form {
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        pairs.sort();
        pairs.dedup();
        pairs
            .into_iter()
            .flat_map(|(k, v)| [k, v])
            .collect::<String>()
    } else {
        let query = url.split_once('?').map_or("", |(_, q)| q);
        let hash = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "bodySHA256")
            .and_then(|(_, v)| hex::decode(v.as_bytes()).ok());
        let digest = ring::digest::digest(&ring::digest::SHA256, body);
        if hash.as_deref() != Some(digest.as_ref()) {
            return invalid;
        }
        String::new()
    };
    // This model's URLs have no port: Twilio may have signed the default one.
    let with_port = url.replacen("example.com/", "example.com:443/", 1);
    let signed = [url, with_port.as_str()].iter().any(|u| {
        keys.iter().any(|k| {
            let message = [u.as_bytes(), params.as_bytes()].concat();
            [hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, hmac::HMAC_SHA256]
                .into_iter()
                .any(|alg| hmac::sign(&hmac::Key::new(alg, k), &message).as_ref() == mac.as_slice())
        })
    });
    if signed { Ok(()) } else { invalid }
}

/// Twilio (`twilio::verify`): every key's signature of a form, or of a JSON body through the
/// URL's `bodySHA256`, verifies, with the default port too; a changed body never does; the
/// fuzzer's `X-Twilio-Signature`, or a genuine one it edited, is judged as the reference model
/// judges it, by the module and through the registry. Twilio's secrets are keys of HMAC-SHA1 and
/// HMAC-SHA256, so they are read here rather than by [`hmac_keys`].
fn twilio_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    let list = String::from_utf8_lossy(secrets);
    let entries: Vec<Vec<u8>> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.as_bytes().to_vec())
        .collect();
    match provider.parse_secrets(&list) {
        Ok(parsed) => assert_eq!(
            parsed.len(),
            2 * entries.len(),
            "a key per secret and algorithm"
        ),
        Err(e) => assert_eq!((e, entries.len()), (SecretError::Empty, 0)),
    }
    let keys = capped(entries);
    let joined: Vec<String> = keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let Ok(Secrets::Hmac(set)) = provider.parse_secrets(&joined.join(",")) else {
        panic!("twilio parses its own keys");
    };
    let form = ctrl.flag();
    let url = if form {
        PUBLIC_URL.to_string()
    } else {
        let hash = ring::digest::digest(&ring::digest::SHA256, body);
        format!("{PUBLIC_URL}?bodySHA256={}", hex::encode(hash))
    };
    let urls = [url.clone()];
    let signed_body = form.then_some(body);
    for key in &keys {
        let sig = twilio::sign(key, &url, signed_body);
        assert_eq!(
            twilio::verify(&set, Some(sig.as_bytes()), form, &urls, body),
            Ok(())
        );
        let port = [url.replacen("example.com/", "example.com:443/", 1)];
        assert_eq!(
            twilio::verify(&set, Some(sig.as_bytes()), form, &port, body),
            Ok(())
        );
    }
    let good = twilio::sign(&keys[ctrl.below(keys.len())], &url, signed_body);
    if !form && let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            twilio::verify(&set, Some(good.as_bytes()), form, &urls, &other),
            Err(VerifyError::InvalidSignature)
        );
    }
    let header = match ctrl.byte() % 4 {
        0 => raw(headers, "x-twilio-signature").map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = good.into_bytes();
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let header = header.as_deref();
    let expected = twilio_expected(&keys, header, form, &url, body);
    assert_eq!(twilio::verify(&set, header, form, &urls, body), expected);

    // Through the registry: the content type says form or not, the query is as received.
    let mut map = HeaderMap::new();
    if let Some(h) = header {
        let Ok(v) = HeaderValue::from_bytes(h) else {
            return;
        };
        map.insert("x-twilio-signature", v);
    }
    let ct = if form {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    map.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    let path = match url.split_once('?') {
        Some((_, q)) => format!("/webhook/fuzz?{q}"),
        None => "/webhook/fuzz".to_string(),
    };
    let mut req = request(&map, body, NOW_MS);
    req.line = providers::RequestLine::post(&path);
    assert_eq!(
        provider.verify(&req, Some(&Secrets::Hmac(set.clone()))),
        expected,
        "twilio through the registry"
    );
}

/// A header's raw value.
fn raw<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get(name).map(HeaderValue::as_bytes)
}

/// GitHub (`github::verify`): every key's own signature verifies (in either hex case); a changed
/// body or another hex digit never does; and the fuzzer's `X-Hub-Signature-256`, or a genuine
/// one it edited, is judged as the reference model judges it, by the module and through the
/// registry.
fn github_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    let keys = hmac_keys(provider, ctrl, secrets);
    let raw_sig = raw(headers, "x-hub-signature-256");
    let set = key_set(&keys);
    let verify = |sig: Option<&[u8]>, body: &[u8]| github::verify(&set, sig, body);

    for key in &keys {
        let sig = github::sign(key, body);
        assert_eq!(verify(Some(sig.as_bytes()), body), Ok(()));
        let upper = format!("sha256={}", sig["sha256=".len()..].to_ascii_uppercase());
        assert_eq!(verify(Some(upper.as_bytes()), body), Ok(()));
    }
    let good = github::sign(&keys[ctrl.below(keys.len())], body);
    if let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            verify(Some(good.as_bytes()), &other),
            Err(VerifyError::InvalidSignature)
        );
    }
    let wrong = other_hex_digit(ctrl, &good, "sha256=".len());
    assert_eq!(
        verify(Some(&wrong), body),
        Err(VerifyError::InvalidSignature)
    );

    let header = match ctrl.byte() % 4 {
        0 => raw_sig.map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = good.into_bytes();
            edit(ctrl, &mut v);
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let header = header.as_deref();
    let expected = github_expected(&keys, header, body);
    assert_eq!(
        verify(header, body),
        expected,
        "signature {:?}",
        header.map(String::from_utf8_lossy)
    );
    through_registry(
        provider,
        &keys,
        &[("x-hub-signature-256", header)],
        body,
        NOW_MS,
        expected,
    );
}

/// HMAC-SHA1 of `body`, as lowercase hex.
fn hmac_sha1_hex(key: &[u8], body: &[u8]) -> String {
    hex::encode(hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key),
        body,
    ))
}

/// Intercom (`X-Hub-Signature: sha1=<hex>`) and Vercel (`x-vercel-signature: <hex>`), HMAC-SHA1
/// of the body (`intercom::verify`, `vercel::verify`): every key's signature verifies in either
/// hex case; a changed body or hex digit never does; the fuzzer's header, or a genuine one it
/// edited, is judged as the reference model judges it, by the module and through the registry.
/// The keys come from the provider's own list parser (SHA-1 keys), capped at [`MAX_KEYS`].
fn sha1_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    let (name, prefix): (&'static str, &str) = if provider.name() == "intercom" {
        ("x-hub-signature", "sha1=")
    } else {
        ("x-vercel-signature", "")
    };
    let list = String::from_utf8_lossy(secrets);
    let mut keys: Vec<Vec<u8>> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .take(MAX_KEYS)
        .map(|s| s.as_bytes().to_vec())
        .collect();
    if keys.is_empty() {
        keys.push(FALLBACK_KEY.to_vec());
    }
    let joined = keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect::<Vec<_>>()
        .join(",");
    let set = SecretSet::hmac_sha1_from_list(&joined).expect("non-empty keys");
    assert_eq!(set.len(), keys.len());
    let verify = |sig: Option<&[u8]>, body: &[u8]| match provider.name() {
        "intercom" => intercom::verify(&set, sig, body),
        _ => vercel::verify(&set, sig, body),
    };
    let sign = |key: &[u8]| format!("{prefix}{}", hmac_sha1_hex(key, body));

    for key in &keys {
        let sig = sign(key);
        assert_eq!(verify(Some(sig.as_bytes()), body), Ok(()));
        let upper = format!("{prefix}{}", sig[prefix.len()..].to_ascii_uppercase());
        assert_eq!(verify(Some(upper.as_bytes()), body), Ok(()));
    }
    let good = sign(&keys[ctrl.below(keys.len())]);
    if let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            verify(Some(good.as_bytes()), &other),
            Err(VerifyError::InvalidSignature)
        );
    }
    let wrong = other_hex_digit(ctrl, &good, prefix.len());
    assert_eq!(
        verify(Some(&wrong), body),
        Err(VerifyError::InvalidSignature)
    );

    let header = match ctrl.byte() % 4 {
        0 => raw(headers, name).map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = good.into_bytes();
            edit(ctrl, &mut v);
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let header = header.as_deref();
    let ok = header
        .map(<[u8]>::trim_ascii)
        .and_then(|s| s.strip_prefix(prefix.as_bytes()))
        .is_some_and(|hex| {
            keys.iter()
                .any(|k| hex.eq_ignore_ascii_case(hmac_sha1_hex(k, body).as_bytes()))
        });
    let expected = ok.then_some(()).ok_or(VerifyError::InvalidSignature);
    assert_eq!(
        verify(header, body),
        expected,
        "signature {:?}",
        header.map(String::from_utf8_lossy)
    );
    let mut map = HeaderMap::new();
    if let Some(v) = header {
        let Ok(v) = HeaderValue::from_bytes(v) else {
            return;
        };
        map.insert(name, v);
    }
    assert_eq!(
        provider.verify(
            &request(&map, body, NOW_MS),
            Some(&Secrets::Hmac(set.clone()))
        ),
        expected,
        "{provider:?} through the registry, headers {map:?}"
    );
}

/// Mailgun (`mailgun::verify`, signature fields inside the body): a signature block made from
/// the fuzzer's token (the body's first bytes), a timestamp near a fuzzed clock, a key of the
/// list, then edited (timestamp and MAC), is judged as the reference model judges it (hex
/// HMAC-SHA256 of the trimmed timestamp + token, 900 s window checked after the MAC), by the
/// module, and through the registry inside a JSON body.
fn mailgun_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    _headers: &HeaderMap,
    body: &[u8],
) {
    let keys = hmac_keys(provider, ctrl, secrets);
    let set = key_set(&keys);
    let now = ctrl.clock(NOW_SECS);
    let ts = now.saturating_add(ctrl.i16() * 32);
    let token = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
    let mut mac = hmac_hex(
        &keys[ctrl.below(keys.len())],
        &[ts.to_string().as_bytes(), token.as_bytes()],
    )
    .into_bytes();
    if ctrl.flag() {
        edit(ctrl, &mut mac);
    }
    let mut ts_text = ts.to_string().into_bytes();
    if ctrl.flag() {
        edit(ctrl, &mut ts_text);
    }
    let parts = mailgun::SignatureParts {
        timestamp: String::from_utf8_lossy(&ts_text).into_owned(),
        token,
        signature: String::from_utf8_lossy(&mac).into_owned(),
        parent_signature: None,
    };

    let ts_raw = parts.timestamp.trim().as_bytes();
    let signed = !parts.token.is_empty()
        && parts.token.len() <= 256
        && hex_signed(
            &keys,
            parts.signature.trim().as_bytes(),
            &[ts_raw, parts.token.as_bytes()],
        );
    let expected = match digits(ts_raw) {
        Some(t) if signed => within(t, now, mailgun::WINDOW_SECS),
        _ => Err(VerifyError::InvalidSignature),
    };
    assert_eq!(
        mailgun::verify(&set, &parts, now),
        expected,
        "{parts:?} at {now}"
    );

    let Some(now_ms) = now.checked_mul(1000) else {
        return;
    };
    let json = serde_json::to_vec(&serde_json::json!({
        "signature": {
            "timestamp": parts.timestamp,
            "token": parts.token,
            "signature": parts.signature,
        },
        "event-data": {"event": "delivered"},
    }))
    .expect("serializable");
    assert_eq!(
        provider.verify(
            &request(&HeaderMap::new(), &json, now_ms),
            Some(&Secrets::Hmac(set.clone()))
        ),
        expected,
        "{provider:?} through the registry, {parts:?} at {now}"
    );
}

/// Linear (`linear::verify` and `linear::check_timestamp`): as for GitHub, with
/// `Linear-Signature`, and the replay window (`Linear-Timestamp` in ms, else the body's
/// `webhookTimestamp`) is judged as the reference model judges it, for any clock, by the module
/// and through the registry.
fn linear_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    let keys = hmac_keys(provider, ctrl, secrets);
    let raw_sig = raw(headers, "linear-signature");
    let raw_ts = raw(headers, "linear-timestamp");
    let set = key_set(&keys);
    let verify = |sig: Option<&[u8]>, body: &[u8]| linear::verify(&set, sig, body);

    for key in &keys {
        let sig = linear::sign(key, body);
        assert_eq!(verify(Some(sig.as_bytes()), body), Ok(()));
        assert_eq!(
            verify(Some(sig.to_ascii_uppercase().as_bytes()), body),
            Ok(())
        );
    }
    let good = linear::sign(&keys[ctrl.below(keys.len())], body);
    if let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            verify(Some(good.as_bytes()), &other),
            Err(VerifyError::InvalidSignature)
        );
    }
    let wrong = other_hex_digit(ctrl, &good, 0);
    assert_eq!(
        verify(Some(&wrong), body),
        Err(VerifyError::InvalidSignature)
    );

    let header = match ctrl.byte() % 4 {
        0 => raw_sig.map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = good.into_bytes();
            edit(ctrl, &mut v);
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let header = header.as_deref();
    let expected = linear_expected(&keys, header, body);
    assert_eq!(
        verify(header, body),
        expected,
        "signature {:?}",
        header.map(String::from_utf8_lossy)
    );
    through_registry(
        provider,
        &keys,
        &[("linear-signature", header)],
        body,
        NOW_MS,
        expected,
    );

    // The replay window.
    let now = ctrl.clock(NOW_MS);
    let near = now.saturating_add(ctrl.i16() * 4);
    let ts_header = match ctrl.byte() % 4 {
        0 => raw_ts.map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = near.to_string().into_bytes();
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let body_ts = match ctrl.byte() % 4 {
        0 => serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("webhookTimestamp").and_then(Value::as_i64)),
        1 => Some(near),
        2 => Some(ctrl.i64()),
        _ => None,
    };
    let ts_header = ts_header.as_deref();
    assert_eq!(
        linear::check_timestamp(ts_header, body_ts, now),
        linear_ts_expected(ts_header, body_ts, now),
        "timestamp {:?}, body {body_ts:?}, now {now}",
        ts_header.map(String::from_utf8_lossy)
    );

    // Through the registry: the header, else the body's own `webhookTimestamp` as probed.
    let mut map = HeaderMap::new();
    if let Some(h) = ts_header {
        let Ok(v) = HeaderValue::from_bytes(h) else {
            return;
        };
        map.insert("linear-timestamp", v);
    }
    let payload = event::parse_json_object(body).ok();
    let body_ts = payload
        .as_ref()
        .and_then(|v| v.get("webhookTimestamp"))
        .and_then(Value::as_i64);
    let spec = event::ProbeSpec::new(provider.probes(), None);
    let fields = payload
        .as_ref()
        .map(|v| spec.read_value(v))
        .unwrap_or_default();
    assert_eq!(
        provider.verify_payload(&request(&map, body, now), &fields),
        linear_ts_expected(ts_header, body_ts, now),
        "through the registry: timestamp {:?}, body {body_ts:?}, now {now}",
        ts_header.map(String::from_utf8_lossy)
    );
}

/// Slack (`slack::verify`): every key's signature verifies within the 300 s window and is stale
/// just outside it; a changed body, timestamp or hex digit never verifies; any
/// `X-Slack-Signature` and `X-Slack-Request-Timestamp`, or genuine ones edited, are judged as the
/// reference model judges them, by the module and through the registry.
fn slack_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    let keys = hmac_keys(provider, ctrl, secrets);
    let raw_sig = raw(headers, "x-slack-signature");
    let raw_ts = raw(headers, "x-slack-request-timestamp");
    let set = key_set(&keys);
    let verify = |sig: Option<&[u8]>, ts: Option<&[u8]>, body: &[u8], now: i64| {
        slack::verify(&set, sig, ts, body, now)
    };

    let now = ctrl.clock(NOW_SECS);
    // Slack timestamps are never negative: the header accepts digits only.
    let ts = now.saturating_add(ctrl.i16() / 64).max(0);
    let ts_text = ts.to_string();
    let window = slack::WINDOW_SECS as i64;
    for key in &keys {
        let sig = slack::sign(key, ts, body);
        let at = |now| verify(Some(sig.as_bytes()), Some(ts_text.as_bytes()), body, now);
        assert_eq!(at(ts), Ok(()));
        if let (Some(early), Some(late)) = (ts.checked_sub(window), ts.checked_add(window)) {
            assert_eq!(at(early), Ok(()));
            assert_eq!(at(late), Ok(()));
        }
        if let Some(late) = ts.checked_add(window + 1) {
            assert_eq!(at(late), Err(VerifyError::StaleTimestamp));
        }
        if let Some(early) = ts.checked_sub(window + 1) {
            assert_eq!(at(early), Err(VerifyError::StaleTimestamp));
        }
    }
    let good = slack::sign(&keys[ctrl.below(keys.len())], ts, body);
    let ts_b = Some(ts_text.as_bytes());
    if let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            verify(Some(good.as_bytes()), ts_b, &other, ts),
            Err(VerifyError::InvalidSignature)
        );
    }
    let wrong = other_hex_digit(ctrl, &good, "v0=".len());
    assert_eq!(
        verify(Some(&wrong), ts_b, body, ts),
        Err(VerifyError::InvalidSignature)
    );
    if let Some(other_ts) = ts.checked_add(1 + ctrl.below(300) as i64) {
        assert_eq!(
            verify(
                Some(good.as_bytes()),
                Some(other_ts.to_string().as_bytes()),
                body,
                ts
            ),
            Err(VerifyError::InvalidSignature)
        );
    }

    let sig = match ctrl.byte() % 4 {
        0 => raw_sig.map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = good.into_bytes();
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let ts_header = match ctrl.byte() % 4 {
        0 => raw_ts.map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = ts_text.into_bytes();
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let (sig, ts_header) = (sig.as_deref(), ts_header.as_deref());
    assert_eq!(
        verify(sig, ts_header, body, now),
        slack_expected(&keys, sig, ts_header, body, now),
        "signature {:?}, timestamp {:?}, now {now}",
        sig.map(String::from_utf8_lossy),
        ts_header.map(String::from_utf8_lossy)
    );
    // The registry's clock is in ms: the same instant where it fits.
    let now_ms = now.saturating_mul(1000);
    through_registry(
        provider,
        &keys,
        &[
            ("x-slack-signature", sig),
            ("x-slack-request-timestamp", ts_header),
        ],
        body,
        now_ms,
        slack_expected(&keys, sig, ts_header, body, now_ms / 1000),
    );
}

/// Standard Webhooks (`standard::verify`, `standard::secrets_from_list` and `StandardSigner`):
/// the secret-list and signer constructors follow the documented rules (errors included); every
/// key's signature verifies within the window, among decoys, and is stale outside it; a changed
/// body, id, timestamp or MAC never verifies; any `webhook-id`, `webhook-timestamp` and
/// `webhook-signature`, or genuine ones edited, are judged as the reference model judges them, by
/// the module and through the registry.
fn standard_model(
    provider: &'static dyn Provider,
    ctrl: &mut Ctrl<'_>,
    secrets: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) {
    let raw_id = raw(headers, "webhook-id");
    let raw_ts = raw(headers, "webhook-timestamp");
    let raw_sig = raw(headers, "webhook-signature");

    let list = String::from_utf8_lossy(secrets);
    let expected = standard_list_expected(&list);
    check_set(&standard::secrets_from_list(&list), &expected);
    check_set(&hmac_set(provider.parse_secrets(&list)), &expected);
    let signer = StandardSigner::from_secret(&list);
    let signer_expected = match list.trim() {
        "" => Err(SecretError::Empty),
        s => standard_secret_expected(1, s).map(drop),
    };
    assert_eq!(
        signer.as_ref().map(drop).map_err(Clone::clone),
        signer_expected
    );

    let keys = capped(if ctrl.flag() {
        expected.unwrap_or_default()
    } else {
        // Raw keys, as the store would hand them over.
        secrets
            .split(|&b| b == b',')
            .filter(|k| !k.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    });
    let set = key_set(&keys);
    let signers: Vec<StandardSigner> = keys
        .iter()
        .map(|k| StandardSigner::from_secret(&format!("whsec_{}", STANDARD.encode(k))))
        .collect::<Result<_, _>>()
        .expect("a base64 key is a valid secret");
    let verify = |id: Option<&[u8]>, ts: Option<&[u8]>, sig: Option<&[u8]>, body: &[u8], now| {
        standard::verify(&set, id, ts, sig, body, now)
    };

    let now = ctrl.clock(NOW_SECS);
    let ts = now.saturating_add(ctrl.i16() / 64).max(0);
    let ts_text = ts.to_string();
    let id = match raw_id.map(std::str::from_utf8) {
        Some(Ok(id)) if !id.is_empty() && id.trim() == id => id,
        _ => "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
    };
    let decoys = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v2,abc v1,";
    let window = standard::WINDOW_SECS as i64;
    for signer in &signers {
        let sig = signer.sign(id, ts, body);
        assert!(sig.starts_with("v1,") && sig.len() == 3 + 44, "{sig}");
        let among = format!("{decoys} {sig} {decoys}");
        for header in [&sig, &among] {
            let at = |now| {
                verify(
                    Some(id.as_bytes()),
                    Some(ts_text.as_bytes()),
                    Some(header.as_bytes()),
                    body,
                    now,
                )
            };
            assert_eq!(at(ts), Ok(()));
            if let Some(late) = ts.checked_add(window) {
                assert_eq!(at(late), Ok(()));
            }
            if let Some(late) = ts.checked_add(window + 1) {
                assert_eq!(at(late), Err(VerifyError::StaleTimestamp));
            }
        }
    }
    let good = signers[ctrl.below(signers.len())].sign(id, ts, body);
    let (id_b, ts_b) = (Some(id.as_bytes()), Some(ts_text.as_bytes()));
    let invalid = Err(VerifyError::InvalidSignature);
    if let Some(other) = tampered(ctrl, body) {
        assert_eq!(
            verify(id_b, ts_b, Some(good.as_bytes()), &other, ts),
            invalid
        );
    }
    let other_id = format!("{id}x");
    assert_eq!(
        verify(
            Some(other_id.as_bytes()),
            ts_b,
            Some(good.as_bytes()),
            body,
            ts
        ),
        invalid
    );
    if let Some(other_ts) = ts.checked_add(1 + ctrl.below(300) as i64) {
        let other_ts = other_ts.to_string();
        assert_eq!(
            verify(
                id_b,
                Some(other_ts.as_bytes()),
                Some(good.as_bytes()),
                body,
                ts
            ),
            invalid
        );
    }
    let mut mac = STANDARD.decode(&good["v1,".len()..]).expect("own base64");
    let i = ctrl.below(mac.len());
    mac[i] ^= ctrl.byte() | 1;
    let wrong = format!("v1,{}", STANDARD.encode(&mac));
    assert_eq!(
        verify(id_b, ts_b, Some(wrong.as_bytes()), body, ts),
        invalid
    );

    let id_header = match ctrl.byte() % 4 {
        0 => raw_id.map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = id.as_bytes().to_vec();
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let ts_header = match ctrl.byte() % 4 {
        0 => raw_ts.map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = ts_text.into_bytes();
            edit(ctrl, &mut v);
            Some(v)
        }
    };
    let sig = match ctrl.byte() % 4 {
        0 => raw_sig.map(<[u8]>::to_vec),
        1 => None,
        _ => {
            let mut v = good.into_bytes();
            edit(ctrl, &mut v);
            if ctrl.flag() {
                // The genuine entry among the fuzzer's own.
                let mut with = raw_sig.unwrap_or_default().to_vec();
                with.push(b' ');
                with.extend_from_slice(&v);
                v = with;
            }
            Some(v)
        }
    };
    let (id_h, ts_h, sig) = (id_header.as_deref(), ts_header.as_deref(), sig.as_deref());
    assert_eq!(
        verify(id_h, ts_h, sig, body, now),
        standard_expected(&keys, id_h, ts_h, sig, body, now),
        "id {:?}, timestamp {:?}, signature {:?}, now {now}",
        id_h.map(String::from_utf8_lossy),
        ts_h.map(String::from_utf8_lossy),
        sig.map(String::from_utf8_lossy)
    );
    let now_ms = now.saturating_mul(1000);
    through_registry(
        provider,
        &keys,
        &[
            ("webhook-id", id_h),
            ("webhook-timestamp", ts_h),
            ("webhook-signature", sig),
        ],
        body,
        now_ms,
        standard_expected(&keys, id_h, ts_h, sig, body, now_ms / 1000),
    );
}

// --- the decoder ---

/// Nesting depth of a value (a scalar is 0, `{}` is 1).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Above this many opening brackets the reference parse (unbounded recursion) is not run: it
/// would risk the stack. The code under test is still run and its answer checked for shape.
const REFERENCE_MAX_BRACKETS: usize = 512;

/// What `event::parse_json_object` must answer, worked out independently: any JSON text whose
/// value is an object nested at most [`MAX_DEPTH`] deep is accepted as that value, anything else
/// refused. `None` when the input has too many brackets to run the reference safely.
fn json_object_expected(bytes: &[u8]) -> Option<Option<Value>> {
    let brackets = bytes.iter().filter(|b| matches!(b, b'[' | b'{')).count();
    if brackets > REFERENCE_MAX_BRACKETS {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let parsed = Value::deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    Some(match parsed {
        Ok(v @ Value::Object(_)) if depth(&v) <= MAX_DEPTH => Some(v),
        _ => None,
    })
}

fn check_json_object(got: &Result<Value, event::BodyError>, bytes: &[u8]) {
    if let Ok(v) = got {
        assert!(v.is_object(), "accepted a non-object");
        assert!(depth(v) <= MAX_DEPTH, "accepted a body nested too deep");
    }
    if let Some(expected) = json_object_expected(bytes) {
        match (got, expected) {
            (Ok(v), Some(want)) => assert_eq!(*v, want),
            (Err(_), None) => {}
            (got, want) => panic!(
                "JSON {:?}: got {got:?}, expected {want:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }
}

/// What `decode_body(Form, …, form)` must answer: `Some(Ok)`/`Some(Err)`, or `None` when the JSON
/// in a `payload` field is too bracket-heavy for the reference.
fn form_expected(bytes: &[u8], form: FormBody) -> Option<Result<Value, ()>> {
    if std::str::from_utf8(bytes).is_err() || bytes.iter().all(u8::is_ascii_whitespace) {
        return Some(Err(()));
    }
    let pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = form_urlencoded::parse(bytes).collect();
    if let Some((_, json)) = pairs.iter().find(|(k, _)| k == "payload") {
        return json_object_expected(json.as_bytes()).map(|v| v.ok_or(()));
    }
    let map: Map<String, Value> = pairs
        .into_iter()
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    Some(if map.is_empty() || form == FormBody::Payload {
        Err(())
    } else {
        Ok(Value::Object(map))
    })
}

/// What `event::body_kind` must answer for a `Content-Type` value: the media type (before `;`,
/// trimmed, any case) `application/json` or `*/*+json` is JSON, the form type is a form, and
/// anything else, or a value that is not visible ASCII, is refused.
fn body_kind_expected(ct: Option<&HeaderValue>) -> Option<BodyKind> {
    let Some(ct) = ct else {
        return Some(BodyKind::Json);
    };
    let bytes = ct.as_bytes();
    if !bytes
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?.to_ascii_lowercase();
    let essence = text.split(';').next().unwrap_or("").trim();
    let suffixed = essence
        .strip_suffix("+json")
        .is_some_and(|head| head.contains('/'));
    if essence == "application/json" || suffixed {
        Some(BodyKind::Json)
    } else if essence == "application/x-www-form-urlencoded" {
        Some(BodyKind::Form)
    } else {
        None
    }
}

/// `event::body_kind` and `event::decode_body` (JSON and form). Layout: `ctrl \0 content-type \0
/// body`; an absent content-type field is an absent header; the first `ctrl` byte nests the body
/// that many levels deeper (mod 140) for a second JSON check.
///
/// The content type is classified as the reference says; each decoder accepts exactly the bodies
/// the reference accepts, with the same value, and nothing nested deeper than 128.
pub fn decode_body(data: &[u8]) {
    let mut fields = Fields::new(data);
    let mut ctrl = Ctrl(fields.next().unwrap_or_default());
    let ct = fields.next();
    let body = fields.rest();

    let mut headers = HeaderMap::new();
    let ct_value = ct.and_then(|ct| HeaderValue::from_bytes(ct).ok());
    if let Some(v) = &ct_value {
        headers.insert(http::header::CONTENT_TYPE, v.clone());
    }
    let kind = event::body_kind(&headers);
    assert_eq!(
        kind.as_ref().ok().copied(),
        body_kind_expected(ct_value.as_ref()),
        "content type {ct_value:?}: {kind:?}"
    );

    // A JSON body reads the same whatever the provider's form rule.
    let json = event::decode_body(BodyKind::Json, body, FormBody::Payload);
    if let Ok(d) = &json {
        assert!(d.raw_json);
    }
    check_probe(&json, body);
    check_json_object(&json.map(|d| d.payload), body);
    // The same body nested in up to 139 objects: any body the fuzzer finds is thereby also tried
    // at the 128-level limit, where the depth check has to be exact.
    let levels = usize::from(ctrl.byte()) % 140;
    if levels > 0 {
        let mut nested = b"{\"a\":".repeat(levels);
        nested.extend_from_slice(body);
        nested.resize(nested.len() + levels, b'}');
        check_json_object(&event::parse_json_object(&nested), &nested);
    }

    for rule in [FormBody::PayloadOrFields, FormBody::Payload] {
        let form = event::decode_body(BodyKind::Form, body, rule);
        if let Ok(d) = &form {
            assert!(!d.raw_json);
            assert!(d.payload.is_object());
            assert!(depth(&d.payload) <= MAX_DEPTH);
        }
        if let Some(expected) = form_expected(body, rule) {
            match (&form, expected) {
                (Ok(d), Ok(want)) => assert_eq!(d.payload, want),
                (Err(_), Err(())) => {}
                (got, want) => panic!(
                    "form {:?} ({rule:?}): got {got:?}, expected {want:?}",
                    String::from_utf8_lossy(body)
                ),
            }
        }
    }
}

/// Identifier paths the probe is tried with, one per provider in turn.
const PROBE_IDENTIFIERS: [Option<&str>; 4] = [
    Some("payload.sender.login"),
    Some("payload.data.0.id"),
    Some("payload.a"),
    Some("payload.event.type"),
];

/// What the probe of every provider's fields (and some identifier paths) must answer: the
/// decoder's verdict, its error message, and the fields read from its value.
fn check_probe(decoded: &Result<event::Decoded, event::BodyError>, body: &[u8]) {
    for (i, provider) in providers::PROVIDERS.iter().enumerate() {
        let ident = PROBE_IDENTIFIERS[i % PROBE_IDENTIFIERS.len()];
        let spec = event::ProbeSpec::new(provider.probes(), ident);
        let probed = event::probe_json_object(body, &spec);
        match (decoded, &probed) {
            (Ok(d), Ok(p)) => {
                assert!(p.raw_json);
                if let Some(v) = &p.payload {
                    assert_eq!(*v, d.payload);
                }
                assert_eq!(p.fields, spec.read_value(&d.payload), "{provider:?} fields");
            }
            (Err(want), Err(got)) => assert_eq!(got, want),
            (want, got) => panic!(
                "probe of {:?}: got {got:?}, expected {want:?}",
                String::from_utf8_lossy(body)
            ),
        }
    }
}

// --- the filter path parser and conditions ---

/// What `FieldPath::parse` must accept: non-empty, dot-separated, no segment empty or with
/// surrounding whitespace, at most [`MAX_SEGMENTS`] segments.
fn path_expected(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').count() <= MAX_SEGMENTS
        && path.split('.').all(|s| !s.is_empty() && s.trim() == s)
}

/// An event from bytes: a JSON object as ingest accepts it, else any JSON value serde's default
/// nesting limit allows, else the bytes as a string.
fn event_value(bytes: &[u8]) -> Value {
    event::parse_json_object(bytes)
        .or_else(|_| serde_json::from_slice(bytes))
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn condition(
    field: &str,
    operator: Operator,
    value: Value,
    case_sensitive: bool,
) -> FilterCondition {
    FilterCondition {
        field: field.to_string(),
        operator,
        value,
        case_sensitive,
        negate: false,
    }
}

/// A piece of `s` between two char boundaries chosen by the fuzzer.
fn substring<'s>(ctrl: &mut Ctrl<'_>, s: &'s str) -> &'s str {
    let bounds: Vec<usize> = (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect();
    let a = bounds[ctrl.below(bounds.len())];
    let b = bounds[ctrl.below(bounds.len())];
    &s[a.min(b)..a.max(b)]
}

/// `FieldPath::parse`, `FieldPath::get`/`any`, `Condition::compile`/`holds` and the shared-prefix
/// memo. Layout: `ctrl \0 path \0 literal \0 event`, the literal and the event as JSON (an event
/// that is not JSON is a string).
///
/// The parser accepts exactly the documented paths and keeps the text; the value `get` finds is
/// the one leaf `any` visits; a condition compiled from the fuzzer's operator and literal holds
/// the same through the memo and inverts with `negate`; and conditions built from the value found
/// (`equals` it, `in` a list with it, `contains` a piece of it, a `regex` of it, `exists`) hold,
/// in either case mode, while `gt`/`lt` it do not.
pub fn field_path(data: &[u8]) {
    let mut fields = Fields::new(data);
    let mut ctrl = Ctrl(fields.next().unwrap_or_default());
    let path = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let literal = fields.next();
    let event = event_value(fields.rest());

    let parsed = FieldPath::parse(&path);
    assert_eq!(parsed.is_ok(), path_expected(&path), "{path:?}: {parsed:?}");
    let Ok(fp) = parsed else {
        return;
    };
    assert_eq!(fp.as_str(), path);
    assert_eq!(fp.to_string(), path);

    let exact = fp.get(&event);
    let (mut leaves, mut saw_exact) = (0usize, false);
    fp.any(&event, &mut |leaf| {
        leaves += 1;
        saw_exact |= matches!((leaf, exact), (Some(l), Some(e)) if std::ptr::eq(l, e));
        false
    });
    assert!(leaves >= 1, "any() must look at least once");
    if exact.is_some() {
        assert!(
            saw_exact && leaves == 1,
            "get() found a value any() did not"
        );
    }

    // The fuzzer's own condition.
    let operator = Operator::ALL[ctrl.below(Operator::ALL.len())];
    let literal = literal
        .and_then(|l| serde_json::from_slice(l).ok())
        .unwrap_or_else(|| {
            Value::String(String::from_utf8_lossy(literal.unwrap_or_default()).into())
        });
    let mut own = condition(&path, operator, literal, ctrl.flag());
    let mut conditions: Vec<(Condition, bool)> = Vec::new();
    if let Ok(c) = Condition::compile(&own) {
        let holds = c.holds(&event);
        own.negate = true;
        let negated = Condition::compile(&own).expect("compiled once already");
        assert_eq!(negated.holds(&event), !holds, "negate must invert");
        conditions.push((c, holds));
        conditions.push((negated, !holds));
    }

    // Conditions that must hold (or not) by what the path finds.
    if let Some(v) = exact {
        // One case mode per input: compiling regexes is most of this target's cost.
        {
            let case_sensitive = ctrl.flag();
            let mut must = |op, value: Value, want: bool| {
                let c = Condition::compile(&condition(&path, op, value.clone(), case_sensitive))
                    .unwrap_or_else(|e| panic!("{op:?} {value}: {e:?}"));
                assert_eq!(c.holds(&event), want, "{path} {op:?} {value} on {event}");
                conditions.push((c, want));
            };
            must(Operator::Equals, v.clone(), true);
            must(
                Operator::In,
                Value::Array(vec![Value::Null, v.clone()]),
                true,
            );
            must(Operator::Exists, Value::Bool(true), true);
            must(Operator::Exists, Value::Bool(false), false);
            match v {
                Value::String(s) => {
                    let piece = substring(&mut ctrl, s);
                    must(Operator::Contains, Value::String(piece.into()), true);
                    must(Operator::Gt, v.clone(), false);
                    must(Operator::Lt, v.clone(), false);
                    let pattern = format!("^(?:{})$", regex::escape(s));
                    // Compiling a regex is most of this target's cost: done for every other
                    // input, and not for long strings (short ones reach the same code). A
                    // pattern over the size limit is refused, which is fine; compiled, it
                    // must match.
                    let compiled = (s.len() <= 256 && ctrl.flag()).then(|| {
                        Condition::compile(&condition(
                            &path,
                            Operator::Regex,
                            Value::String(pattern),
                            case_sensitive,
                        ))
                    });
                    if let Some(Ok(c)) = compiled {
                        assert!(c.holds(&event), "{path} regex of {s:?}");
                        conditions.push((c, true));
                    }
                }
                Value::Number(_) => {
                    must(Operator::Gt, v.clone(), false);
                    must(Operator::Lt, v.clone(), false);
                }
                Value::Array(items) if !items.is_empty() => {
                    let item = items[ctrl.below(items.len())].clone();
                    must(Operator::Contains, item, true);
                }
                _ => {}
            }
        }
    }

    // Through a shared-prefix memo (with the path's own prefixes also linked), every condition
    // answers as it does alone.
    let mut table = PrefixTable::default();
    let segments: Vec<&str> = path.split('.').collect();
    let mut prefixes: Vec<FieldPath> = (1..segments.len())
        .filter_map(|n| FieldPath::parse(&segments[..n].join(".")).ok())
        .collect();
    for p in &mut prefixes {
        table.link(p);
    }
    for (c, _) in &mut conditions {
        c.link(&mut table);
    }
    let mut memo = Memo::new(&table, &event);
    for (c, want) in &conditions {
        assert_eq!(c.holds(&event), *want);
        assert_eq!(c.holds_memo(&mut memo), *want, "memo disagrees on {c:?}");
    }
}

// --- the whole pure ingest stage ---

const AGENT_BEARER: &[u8] = b"Bearer fuzz-agent-key";
/// A secret every HMAC provider's parser takes: base64 (Standard Webhooks), and as text an HMAC
/// key.
const SOURCE_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The source's secret for `provider`: for public-key schemes a private key, which their parser
/// takes too (it keeps the public half) and with which `sign` signs.
fn source_secret(provider: &dyn Provider) -> &'static str {
    match provider.name() {
        // Ed25519 secret key (seed, then public key), hex.
        "discord" => {
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
        }
        // P-256 private key, base64 PKCS#8 DER.
        "sendgrid" => {
            "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgHy49TFtqeYgBI0VniavN7w8eLTxLWml4h5altMPS4fChRANCAAT1/vsXo2JTnCd5nGMXrk/PZFCJpD+1je3GIH3Q+hMkgxUDrAAaEtWlxCiRXt+Cok6MH0y87wOclAvcm3364Vly"
        }
        _ => SOURCE_SECRET,
    }
}
const IDENTIFIER_FIELDS: [Option<&str>; 5] = [
    None,
    Some("payload.sender.login"),
    Some("payload.user_id"),
    Some("payload.data.0.id"),
    Some("metadata.clientIp"),
];
/// Headers that carry credentials besides the providers' signature headers.
const CREDENTIALS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// `name: value` lines; lines that are no valid header are skipped.
fn header_lines(field: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in field.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    headers
}

/// `ingest::prepare`: verify, decode, classify and normalize. Layout: `ctrl \0 headers \0 body`,
/// headers as `name: value` lines.
///
/// `ctrl` picks the provider (from the registry), whether the source is the provider's built-in
/// one, and whether the harness signs the request properly (as the provider does, at the current
/// time). A request it signed is never refused for its signature; one it did not sign is always
/// refused (seeds carry no valid signature, and the fuzzer cannot forge one), except on
/// `internal` with the right agent key. A signed request is refused as stale only when the
/// provider's check of the decoded body says so (Linear's body timestamp, which the fuzzer
/// chose). An accepted event has the documented shape, keeps no credential header, classifies
/// as its parsed payload does, and its archived text (the provider's JSON spliced in) parses
/// back to the same event.
pub fn ingest_prepare(data: &[u8]) {
    let mut fields = Fields::new(data);
    let mut ctrl = Ctrl(fields.next().unwrap_or_default());
    let mut headers = header_lines(fields.next().unwrap_or_default());
    let body = fields.rest();

    let provider = providers::PROVIDERS[ctrl.below(providers::PROVIDERS.len())];
    let builtin = provider.builtin().filter(|_| ctrl.flag());
    let sign = ctrl.byte() % 4 != 0;
    let body_clock = ctrl.flag();
    let identifier_field = IDENTIFIER_FIELDS[ctrl.below(IDENTIFIER_FIELDS.len())];
    let secrets = provider
        .parse_secrets(source_secret(provider))
        .expect("valid fixed secret");
    let source = Source::new(
        builtin.map_or("fuzz", |b| b.source),
        provider,
        Some(secrets),
        identifier_field.map(str::to_string),
    )
    .with_public_url(Some(PUBLIC_URL.to_string()));

    // Mailgun writes its signature into the body, and signs only a JSON object: its signed
    // requests carry the body it made.
    let mut signed_body = None;
    let mut path = "/webhook/fuzz".to_string();
    if sign {
        let mut out = unsigned(&headers, body);
        let opts = providers::SendOptions {
            event: None,
            secret: Some(source_secret(provider)),
            agent_key: None,
            now_ms: NOW_MS,
        };
        if provider.name() == BODY_SIGNED {
            if provider.sign(&mut out, &opts).is_ok() {
                signed_body = Some(std::mem::take(&mut out.body));
            }
        } else {
            provider.sign(&mut out, &opts).expect("signs any body");
            assert_eq!(out.body, body, "signing changed the body");
        }
        path = signed_path(&out);
        for (name, value) in &out.headers {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                HeaderValue::from_str(value).expect("a signature is a valid header value"),
            );
        }
        // The body Mailgun's signing made is JSON, whatever the fuzzer's content type said
        // (set after the headers `sign` kept, which carry the fuzzer's).
        if signed_body.is_some() {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        // Linear's replay window is the `Linear-Timestamp` header, else the body's timestamp:
        // stamp the header (so most signed requests get past the window), or leave the body's,
        // which the fuzzer chose, to decide.
        if provider.name() == "linear" {
            if body_clock {
                headers.remove("linear-timestamp");
            } else {
                headers.insert(
                    "linear-timestamp",
                    HeaderValue::from_str(&NOW_MS.to_string()).expect("digits"),
                );
            }
        }
    }
    let sign = sign && (provider.name() != BODY_SIGNED || signed_body.is_some());
    let body: &[u8] = signed_body.as_deref().unwrap_or(body);
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .filter(|_| source.name == standard::INTERNAL)
        .map(|v| v.as_bytes() == AGENT_BEARER);
    // Notion's verification request (`{"verification_token": …}`, no signature header) is
    // taken unsigned, by design.
    let notion_verification = provider.name() == "notion"
        && !headers.contains_key("x-notion-signature")
        && notion::is_verification(body);
    let authentic = bearer.unwrap_or(sign) || notion_verification;

    let id = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    let result = prepare(
        &source,
        providers::RequestLine::post(&path),
        &headers,
        body,
        "203.0.113.7",
        NOW_MS,
        &|key| key == AGENT_BEARER,
        &mut || (id, NOW_MS),
    );
    let prepared = match result {
        Err(e) => {
            match (authentic, &e) {
                (false, IngestError::InvalidSignature) | (true, IngestError::InvalidBody(_)) => {}
                (true, IngestError::StaleTimestamp | IngestError::MissingTimestamp(_)) => {
                    // Only from the decoded body: the headers were signed just now (Linear's
                    // header left out, the body's timestamp old, or absent).
                    let spec = event::ProbeSpec::new(provider.probes(), None);
                    let fields = event::body_kind(&headers)
                        .and_then(|kind| {
                            event::probe_body_as(
                                kind,
                                body,
                                &spec,
                                provider.form_body(),
                                provider.json_body(),
                            )
                        })
                        .expect("a stale body decodes")
                        .fields;
                    let req = providers::Request {
                        source: &source.name,
                        line: providers::RequestLine::post(&path),
                        public_url: Some(PUBLIC_URL),
                        headers: &headers,
                        body,
                        now_ms: NOW_MS,
                        agent_key: &|_| false,
                    };
                    let expected = match e {
                        IngestError::MissingTimestamp(m) => VerifyError::MissingTimestamp(m),
                        _ => VerifyError::StaleTimestamp,
                    };
                    assert_eq!(
                        provider.verify_payload(&req, &fields),
                        Err(expected),
                        "{e:?}, but not by the body"
                    );
                }
                _ => panic!("{provider:?} refused with {e:?}, authentic: {authentic}"),
            }
            return;
        }
        Ok(p) => p,
    };
    assert!(authentic, "an unsigned request was accepted");
    let (head, mut event, raw_json, payload_deferred) = match prepared {
        Prepared::Handshake(_) => return,
        Prepared::Event {
            head,
            event,
            raw_json,
            payload_deferred,
        } => (head, event, raw_json, payload_deferred),
    };
    assert_eq!(event["id"], head.id.to_string());
    assert_eq!(event["source"], source.name.as_str());
    assert_eq!(event["type"], head.event_type.as_str());
    assert_eq!(event["timestamp"], NOW_MS);
    // The archived text is the same whether or not the payload was parsed at ingest.
    let text = event::serialize_event(&event, raw_json.then_some(body));
    if payload_deferred {
        assert!(raw_json, "only a JSON body's payload is deferred");
        assert!(event["payload"].is_null());
        event::materialize_payload(&mut event, body);
        assert_eq!(
            text,
            event::serialize_event(&event, Some(body)),
            "materializing changed the archived text"
        );
    }
    assert!(
        event["payload"].is_object()
            || (event["payload"].is_array()
                && provider.json_body() == event::JsonBody::ObjectOrArray),
        "payload {}",
        event["payload"]
    );
    // The probe read the same fields a parsed payload gives.
    let spec = event::ProbeSpec::new(provider.probes(), None);
    let classified = provider
        .classify(&headers, &spec.read_value(&event["payload"]))
        .expect("classified from the parsed payload too");
    assert_eq!(classified.event_type, head.event_type);
    assert_eq!(classified.action, head.action);
    assert_eq!(classified.delivery_id, head.delivery_id);
    if let Some(path) = identifier_field
        && path.starts_with("payload.")
    {
        let want = event::identifier(&event, Some(path), "203.0.113.7");
        assert_eq!(
            event["metadata"]["identifier"],
            want.as_str(),
            "identifier {path}"
        );
    }
    let metadata = &event["metadata"];
    assert!(
        metadata["identifier"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "identifier {}",
        metadata["identifier"]
    );
    let kept = metadata["headers"].as_object().expect("headers object");
    assert!(kept.len() <= 64);
    for (name, value) in kept {
        assert!(
            !CREDENTIALS.contains(&name.as_str())
                && !providers::signature_headers().contains(&name.as_str()),
            "kept {name}"
        );
        assert!(value.as_str().is_some_and(|v| v.len() <= 1024));
    }

    // The event is one level deeper than the payload: past serde's default limit at most by one.
    let mut de = serde_json::Deserializer::from_slice(&text);
    de.disable_recursion_limit();
    let back = Value::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .unwrap_or_else(|e| {
            let text = String::from_utf8_lossy(&text);
            panic!("archived text does not parse: {e}: {text}")
        });
    assert_eq!(back, event, "archived text differs from the event");
}

// --- recipes ---

/// Config-declared providers (`scheme = "hmac"`, `"token"`, `"basic"`). Layout:
/// `ctrl \0 header \0 signed \0 prefix \0 secrets \0 headers \0 body`: `ctrl` picks the scheme,
/// algorithm, encoding and which optional headers the recipe has; the text fields are the
/// recipe's `header`, `signed` template and `prefix`, as an operator could write anything.
///
/// Building a recipe from any text never panics (it is refused with a reason or built); for a
/// built one, parsing any secret list and verifying any request never panic; a request signed
/// as the recipe signs it (`send`) verifies with each secret, also at the edge of the window;
/// for `hmac` (whose signature covers the body) the same request with a byte of the body
/// changed does not; and one signed just outside the window is stale, never accepted.
pub fn recipe(data: &[u8]) {
    let mut fields = Fields::new(data);
    let mut ctrl = Ctrl(fields.next().unwrap_or_default());
    let text = |f: Option<&[u8]>| String::from_utf8_lossy(f.unwrap_or_default()).into_owned();
    let header = text(fields.next());
    let signed = text(fields.next());
    let prefix = text(fields.next());
    let secrets = fields.next().unwrap_or_default();
    let headers = header_lines(fields.next().unwrap_or_default());
    let body = fields.rest();

    let scheme = ["hmac", "token", "basic"][ctrl.below(3)];
    let mut spec = RecipeSpec {
        type_header: Some("x-type".into()),
        ..Default::default()
    };
    if scheme != "basic" {
        spec.header = Some(header);
    }
    if scheme == "hmac" {
        spec.algorithm = Some(["sha1", "sha256", "sha512", "md5"][ctrl.below(4)].into());
        spec.encoding = Some(["hex", "base64", "b32"][ctrl.below(3)].into());
        spec.signed = ctrl.flag().then_some(signed);
        spec.prefix = ctrl.flag().then_some(prefix);
        if ctrl.flag() {
            spec.timestamp_header = Some("x-ts".into());
            spec.tolerance_secs = Some(1 + ctrl.below(600) as u64);
        }
    }
    if ctrl.flag() {
        spec.id_header = Some("x-id".into());
    }
    let Ok(recipe) = Recipe::build(scheme, &spec) else {
        return;
    };
    let provider: &dyn Provider = recipe;
    assert!(
        provider
            .verify(&request(&headers, body, NOW_MS), None)
            .is_err(),
        "a recipe verified a request without secrets"
    );
    let list = String::from_utf8_lossy(secrets);
    let Ok(parsed) = provider.parse_secrets(&list) else {
        return;
    };
    let _ = provider.verify(&request(&headers, body, NOW_MS), Some(&parsed));
    let window_ms = provider
        .replay_window()
        .map(|w| i64::try_from(w.as_millis()).expect("a small window"));
    for secret in list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .take(MAX_KEYS)
    {
        for (at, expected) in [
            (NOW_MS, Ok(())),
            (NOW_MS - window_ms.unwrap_or(0), Ok(())),
            (
                NOW_MS - window_ms.unwrap_or(0) - 1_000,
                if window_ms.is_some() {
                    Err(VerifyError::StaleTimestamp)
                } else {
                    Ok(())
                },
            ),
        ] {
            let mut out = Outgoing {
                headers: Vec::new(),
                body: body.to_vec(),
                url: None,
            };
            let opts = SendOptions {
                event: Some("fuzz"),
                secret: Some(secret),
                agent_key: None,
                now_ms: at,
            };
            provider.compose(&mut out, &opts).expect("compose");
            provider
                .sign(&mut out, &opts)
                .expect("a recipe signs with any secret");
            assert_eq!(out.body, body, "signing changed the body");
            let mut map = HeaderMap::new();
            let mut sendable = true;
            for (name, value) in &out.headers {
                match (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    (Ok(n), Ok(v)) => {
                        map.insert(n, v);
                    }
                    // A prefix or token no header can carry cannot be sent at all.
                    _ => sendable = false,
                }
            }
            if !sendable {
                continue;
            }
            // A value with spaces around it is trimmed by HTTP: the request a client could
            // really send.
            let trimmed = out.headers.iter().all(|(_, v)| v.trim() == v.as_str());
            if !trimmed {
                continue;
            }
            assert_eq!(
                provider.verify(&request(&map, body, NOW_MS), Some(&parsed)),
                expected,
                "{scheme}: a request signed at {at} with {secret:?}"
            );
            if scheme == "hmac"
                && expected.is_ok()
                && let Some(changed) = tampered(&mut ctrl, body)
            {
                assert_eq!(
                    provider.verify(&request(&map, &changed, NOW_MS), Some(&parsed)),
                    Err(VerifyError::InvalidSignature),
                    "{scheme}: a changed body verified"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_on_nul_and_the_last_takes_the_rest() {
        let mut f = Fields::new(b"a\0\0b\0c\0d");
        assert_eq!(f.next(), Some(&b"a"[..]));
        assert_eq!(f.next(), Some(&b""[..]));
        assert_eq!(f.next(), Some(&b"b"[..]));
        assert_eq!(f.rest(), b"c\0d");
        let mut f = Fields::new(b"x");
        assert_eq!(f.next(), Some(&b"x"[..]));
        assert_eq!(f.next(), None);
        assert_eq!(f.rest(), b"");
    }

    #[test]
    fn ctrl_reads_zero_when_used_up() {
        let mut c = Ctrl(&[7, 1]);
        assert_eq!(c.byte(), 7);
        assert!(c.flag());
        assert_eq!(c.byte(), 0);
        assert_eq!(c.below(5), 0);
    }

    #[test]
    fn the_reference_models_accept_genuine_signatures() {
        let keys = vec![b"k1".to_vec(), b"k2".to_vec()];
        let sig = github::sign(b"k2", b"body");
        assert_eq!(
            github_expected(&keys, Some(sig.as_bytes()), b"body"),
            Ok(())
        );
        assert!(github_expected(&keys, Some(sig.as_bytes()), b"other").is_err());
        let sig = slack::sign(b"k1", NOW_SECS, b"body");
        let ts = NOW_SECS.to_string();
        let slack = |now| {
            slack_expected(
                &keys,
                Some(sig.as_bytes()),
                Some(ts.as_bytes()),
                b"body",
                now,
            )
        };
        assert_eq!(slack(NOW_SECS + 300), Ok(()));
        assert_eq!(slack(NOW_SECS + 301), Err(VerifyError::StaleTimestamp));
        let sig = StandardSigner::from_secret(&format!("whsec_{}", STANDARD.encode(b"k1")))
            .unwrap()
            .sign("msg_1", NOW_SECS, b"body");
        let header = format!("v1,AAAA {sig}");
        assert_eq!(
            standard_expected(
                &keys,
                Some(b"msg_1"),
                Some(ts.as_bytes()),
                Some(header.as_bytes()),
                b"body",
                NOW_SECS
            ),
            Ok(())
        );
        assert_eq!(
            linear_ts_expected(None, Some(NOW_MS - 60_000), NOW_MS),
            Ok(())
        );
        assert_eq!(
            linear_ts_expected(Some(b"-1"), Some(NOW_MS), NOW_MS),
            Err(VerifyError::StaleTimestamp)
        );
    }

    #[test]
    fn the_json_reference_enforces_the_depth_limit() {
        let ok = format!("{}{{}}{}", "{\"a\":".repeat(127), "}".repeat(127));
        assert!(json_object_expected(ok.as_bytes()).unwrap().is_some());
        let deep = format!("{}{{}}{}", "{\"a\":".repeat(128), "}".repeat(128));
        assert_eq!(json_object_expected(deep.as_bytes()), Some(None));
        assert_eq!(json_object_expected(b"[]"), Some(None));
        assert_eq!(json_object_expected("[".repeat(600).as_bytes()), None);
    }

    #[test]
    fn every_target_accepts_empty_and_garbage_input() {
        for (_, target) in TARGETS {
            target(b"");
            target(b"\0\0\0\0\0\0");
            target(b"\xff\xfe\0\xff\0{\0[");
        }
    }
}
