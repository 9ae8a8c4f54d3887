//! Query strings, parsed so that every error is ours to word: pairs, integers, and the opaque
//! cursors of paginated lists.

use base64::Engine as _;
use uuid::Uuid;

use super::error::{ApiError, ApiResult};

/// Query parameters as `(name, value)` pairs, so that every parse error is ours to word.
pub fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub fn parse_int(name: &str, v: &str) -> ApiResult<i64> {
    v.trim()
        .parse::<i64>()
        .map_err(|_| ApiError::bad_request(format!("{name} must be an integer")))
}

pub fn encode_cursor(id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

pub fn decode_cursor(s: &str) -> ApiResult<Uuid> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .ok_or_else(|| ApiError::bad_request("cursor is not one this server issued"))
}
