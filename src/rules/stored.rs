//! How rules are kept in the store: the wire model's JSON plus server-side fields (an agent's
//! API-key hash), and the preparation of an agent before it is written.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ValidationError;
use super::model::Agent;
use crate::crypto::hash_api_key;
use crate::providers::standard::{StandardSigner, generate_secret};

/// The field in an agent's stored JSON that holds the hash of its API key.
pub const API_KEY_HASH: &str = "apiKeyHash";

/// Parses a stored rule, dropping server-side fields the wire model does not have.
pub fn parse_stored<T: DeserializeOwned>(body: &str) -> Result<T, String> {
    let mut v: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if let Value::Object(m) = &mut v {
        m.remove(API_KEY_HASH);
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Validates an agent and prepares its stored form: a generated secret when none is given (or
/// the existing one kept on replace), and the API key replaced by its hash.
pub fn prepare_agent(
    mut agent: Agent,
    existing: Option<&str>,
) -> Result<(Agent, String), ValidationError> {
    let (old_secret, old_hash) = match existing.and_then(|b| serde_json::from_str::<Value>(b).ok())
    {
        Some(v) => (
            v.get("secret").and_then(Value::as_str).map(str::to_string),
            v.get(API_KEY_HASH)
                .and_then(Value::as_str)
                .map(str::to_string),
        ),
        None => (None, None),
    };
    match &agent.secret {
        Some(s) => {
            StandardSigner::from_secret(s).map_err(|e| {
                ValidationError::new(
                    "secret",
                    format!("not a Standard Webhooks secret (whsec_ + base64): {e}"),
                )
            })?;
        }
        None => agent.secret = Some(old_secret.unwrap_or_else(generate_secret)),
    }
    let hash = match agent.api_key.take() {
        Some(k) if k.len() < 16 => {
            return Err(ValidationError::new(
                "apiKey",
                "must be at least 16 characters",
            ));
        }
        Some(k) => Some(hash_api_key(k.as_bytes())),
        None => old_hash,
    };
    let mut v =
        serde_json::to_value(&agent).map_err(|e| ValidationError::new("body", e.to_string()))?;
    if let (Some(h), Value::Object(m)) = (hash, &mut v) {
        m.insert(API_KEY_HASH.into(), Value::String(h));
    }
    Ok((agent, v.to_string()))
}
